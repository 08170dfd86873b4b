//! Leaf backends: where shards and metadata records finally live.
//!
//! * [`Memory`]: in-process, for tests; can be switched down or made to hang to simulate failures.
//! * [`LocalDir`]: a directory on a local (or mounted) filesystem, with atomic writes.
//! * 0-db nodes (`zdb://host:port/namespace`) are opened through a [`crate::config::ZdbConnector`]
//!   supplied by the crate that owns the 0-db client.
//! * [`ObjectStoreBackend`]: any `object_store` store; S3-compatible buckets
//!   (`s3://bucket/prefix`) with the cargo feature `s3`.

mod local;
mod memory;
mod object_store;

pub use self::object_store::ObjectStoreBackend;
pub use local::LocalDir;
pub use memory::Memory;
