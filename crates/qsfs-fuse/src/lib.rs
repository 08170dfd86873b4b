//! # qsfs-fuse: a POSIX filesystem over any qsfs Store
//!
//! The top of the stack: **FUSE** → Store → Engine → Backend(Pipeline) → Backends. The kernel
//! sends file operations to [`fuse::QsfsFuse`], a thin translation layer over [`Fs`], which keeps
//! inodes, directory entries, listing pages, block maps, xattrs and file blocks in their own
//! Store namespaces ([`layout`], documented in `docs/fs-layout.md`). A write-back
//! [`BlockCache`] (the `qsfs_core::Cache` implementation) shapes what reaches the append-only
//! Store: whole blocks, written once per flush.
//!
//! Only `Store` trait operations are used, so the same filesystem runs on the embedded engine,
//! on `qsfs serve`, or on an original 0-db server.
//!
//! ```no_run
//! use std::{path::Path, sync::Arc};
//! use qsfs_fuse::{mount, Fs, FsConfig, MountOptions};
//!
//! fn serve(store: Arc<dyn qsfs_core::Store>, dir: &Path) -> anyhow::Result<()> {
//!     let fs = Fs::open(store, FsConfig::default())?;
//!     let mounted = mount(fs, dir, &MountOptions::default())?;
//!     std::fs::write(dir.join("hello.txt"), b"hi")?;
//!     mounted.unmount()?; // flushes and syncs everything
//!     Ok(())
//! }
//! ```

pub mod acl;
pub mod cache;
pub mod error;
pub mod fetch;
pub mod fs;
pub mod fsck;
pub mod fuse;
pub mod journal;
pub mod layout;
pub mod mount;
pub mod space;
pub mod stats;
pub mod timeout;
pub mod unmount;

pub use cache::BlockCache;
pub use error::{errno, FsError, FsResult};
pub use fs::{Capacity, Fs, FsConfig, UNKNOWN_CAPACITY};
pub use fsck::{check as fsck_check, FsckReport};
pub use mount::{mount, Mount, MountOptions, Stopper};
pub use stats::{FsStats, FsStatsSnapshot, Op};
pub use timeout::TimeoutStore;
