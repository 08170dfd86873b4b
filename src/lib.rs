//! # qsfs
//!
//! A filesystem with practically unlimited space: a FUSE mount whose data lives in an append-only
//! key-value engine on local disk, whose sealed data files are encrypted (AES-256-GCM-SIV),
//! erasure-coded (Reed-Solomon) and spread over many storage nodes, so the local disk is only a
//! cache and losing some nodes loses nothing.
//!
//! This facade re-exports the layers so one dependency gives all of them:
//!
//! * [`core`]: the `Store`, `Cache` and `Backend` traits, shared types and the error type;
//! * [`store`]: the embedded engine and the 0-db-compatible RESP server and client;
//! * [`backup`]: the encrypt + erasure-code + spread pipeline and its backends;
//! * [`fuse`]: the filesystem.
//!
//! ```
//! use qsfs::core::NamespaceName;
//! assert_eq!(NamespaceName::default_ns().as_str(), "default");
//! ```

pub use qsfs_backup as backup;
pub use qsfs_core as core;
pub use qsfs_fuse as fuse;
pub use qsfs_store as store;
