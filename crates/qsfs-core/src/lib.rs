//! # qsfs-core: the seams of the qsfs stack
//!
//! qsfs is a stack of layers, each talking to the one below through a trait defined here:
//!
//! ```text
//! FUSE filesystem ──Cache──► Store ──► Engine ──Backend──► Pipeline ──Backend×N──► LocalDir / Zdb / Memory
//! ```
//!
//! * [`Store`]: a namespaced, append-only key-value store with history (the embedded engine, or
//!   any 0-db-compatible server through a client).
//! * [`Cache`]: the write-back block cache a filesystem keeps in front of a Store.
//! * [`Backend`]: an async blob store; the backup pipeline is itself a Backend over N others.
//!
//! This crate holds only those traits, the shared types and limits, the one [`Error`] type every
//! layer converts into, and (behind the `testing` feature) the conformance suites that define
//! what a correct implementation of each trait is.
//!
//! ```
//! use qsfs_core::{Store, SetOutcome, Result};
//!
//! /// Works with the embedded engine and with a remote 0-db server alike.
//! fn remember(store: &dyn Store, note: &[u8]) -> Result<Vec<u8>> {
//!     match store.set("default", Some(b"note"), note)? {
//!         SetOutcome::Written { key } | SetOutcome::Unchanged { key } => Ok(key),
//!     }
//! }
//!
//! assert!(qsfs_core::NamespaceName::new("photos").is_ok());
//! assert!(qsfs_core::NamespaceName::new("../etc").is_err());
//! ```

pub mod backend;
pub mod cache;
pub mod disk;
pub mod error;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;

pub use backend::{check_object_key, same_bytes, slice_range, Backend, Health, HealthStatus};
pub use cache::{BlockId, Cache, CacheStats};
pub use disk::{reserve_on, DiskSpace, SpaceBudget, StoreSpace};
pub use error::{Error, ReadOnlyReason, Result};
pub use store::Store;
pub use types::*;
