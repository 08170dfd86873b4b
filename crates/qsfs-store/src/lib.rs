//! # qsfs-store: the append-only key-value engine
//!
//! qsfs is a stack: FUSE → **Store** → **Engine** → Backend (Pipeline) → Backends. This crate is
//! the Engine: an embedded, namespaced, append-only key-value store on local disk that implements
//! [`qsfs_core::Store`], with history, 0-db's user and sequential key modes, namespace properties
//! (password, public, maxsize, worm, lock, freeze), crash safety and online compaction. Its data
//! lives in segment files; a full segment is sealed (immutable), which lets the backup tier copy
//! it away ([`EngineObserver`]) and the engine fetch it back on demand from a cold tier
//! ([`qsfs_core::Backend`]). The on-disk format is documented byte by byte in
//! `docs/engine-format.md`.
//!
//! How it works, in one paragraph per concern:
//!
//! * **Data**: each namespace appends records (key, value, timestamp, flags, link to the previous
//!   version, checksums) to its current segment; a full or old segment is sealed and never
//!   changes again (`segment.rs`).
//! * **Index**: the newest version of every key lives in memory, with a checksummed snapshot on
//!   disk so that opening replays only the tail; it is always rebuildable from the segments
//!   alone (`index.rs`).
//! * **Crash safety**: a record is written with one `pwrite` before `set` returns, synced as
//!   [`Durability`] says; on open a torn tail is found by checksum and cut off, and damage in
//!   the middle is reported and never served ([`qsfs_core::Error::Corrupt`] names the file and
//!   offset).
//! * **Concurrency**: [`Engine`] is `Send + Sync` and cheap to clone. Reads run in parallel
//!   (positioned reads on shared file handles); writes are serialised per namespace only.
//! * **Lifecycle**: [`EngineObserver`] hears about sealed and removed segments; a sealed
//!   segment can be offloaded ([`Engine::offload_segment`]) and is then read back, byte range by
//!   byte range, from the cold tier set in [`EngineConfig::cold_tier`]; compaction
//!   ([`Engine::compact`]) rewrites sealed segments that hold mostly superseded data, fetching
//!   offloaded ones whole from the cold tier.
//! * **Recovery**: seals also persist a [`Manifest`] (the namespace's properties, its sealed
//!   segments and the index over them; seals by size only now and then once the index is
//!   large, [`Engine::seal_all`] always); with the manifests and the sealing key
//!   ([`Engine::export_seal_key`]), [`Engine::restore`] rebuilds an engine directory whose
//!   segments all live in the cold tier, without reading any segment data.
//!
//! ```
//! use qsfs_core::{Mode, NamespaceProperty, Store};
//! use qsfs_store::{Engine, EngineConfig};
//!
//! # fn main() -> qsfs_core::Result<()> {
//! let dir = tempfile::tempdir().map_err(|e| qsfs_core::Error::io("tempdir", e))?;
//! let engine = Engine::open(dir.path(), EngineConfig::default())?;
//!
//! // User mode: the caller picks keys. Setting the same value again writes nothing.
//! engine.set("default", Some(b"greeting"), b"hello")?;
//! assert!(!engine.set("default", Some(b"greeting"), b"hello")?.written());
//! engine.set("default", Some(b"greeting"), b"hello, world")?;
//! assert_eq!(engine.get("default", b"greeting")?.map(|e| e.value), Some(b"hello, world".to_vec()));
//!
//! // History survives updates and deletes.
//! engine.delete("default", b"greeting")?;
//! assert!(engine.get("default", b"greeting")?.is_none());
//!
//! // Sequential mode: the engine chooses 8-byte little-endian ids.
//! engine.namespace_create("blocks")?;
//! engine.namespace_set("blocks", NamespaceProperty::Mode(Mode::Seq))?;
//! let id = engine.set("blocks", None, b"block 0")?.key().to_vec();
//! assert_eq!(id, 0u64.to_le_bytes());
//! # Ok(())
//! # }
//! ```

mod cold;
mod compaction;
mod config;
mod descriptor;
mod engine;
mod error;
mod index;
mod manifest;
mod namespace;
mod password;
pub mod remote;
mod reserve;
mod segment;
pub mod server;

pub use cold::cold_key;
pub use compaction::{spawn_compactor, CompactionReport};
pub use config::{Durability, EngineConfig};
pub use engine::{Engine, EngineObserver};
pub use error::EngineError;
pub use manifest::Manifest;
pub use namespace::{NamespaceStats, RawRecord, SegmentStats};
pub use segment::{set_max_open_segment_files, DEFAULT_MAX_OPEN_SEGMENT_FILES};
