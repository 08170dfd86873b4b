//! Client side of the 0-db protocol: use any 0-db server (the original or `qsfs serve`) as a
//! [`qsfs_core::Store`] ([`ZdbClient`]) or as a backup [`qsfs_core::Backend`] ([`ZdbBackend`]).
//!
//! ```no_run
//! use qsfs_core::Store;
//! use qsfs_store::remote::ZdbClient;
//!
//! let client = ZdbClient::from_url("zdb://secret@127.0.0.1:9900/photos")?;
//! client.set("photos", Some(b"cat.jpg"), b"...")?;
//! # Ok::<(), qsfs_core::Error>(())
//! ```

mod backend;
mod client;
mod connector;
mod store;

pub use backend::ZdbBackend;
pub use client::{map_error, redact, ReplyExt, Wire, ZdbClient, ZdbConfig};
pub use connector::{LazyZdbBackend, RETRY_AFTER};
pub use store::{parse_nsinfo, parse_nsinfo_space};
