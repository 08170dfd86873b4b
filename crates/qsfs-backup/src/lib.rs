//! # qsfs-backup: encrypted, erasure-coded backup spread over many backends
//!
//! Where it sits in the stack:
//!
//! ```text
//! FUSE → Store → Engine ──Backend──► Pipeline ──Backend × N──► LocalDir / Zdb / Memory
//!                                    (this crate)              (leaves; this crate has two)
//! ```
//!
//! The [`Pipeline`] cuts each object into fixed-size stripes; every stripe is compressed (zstd,
//! kept only when it shrinks), encrypted with AES-256-GCM-SIV under a random per-object key
//! (associated data binds object id, stripe index and version), cut into k data + m parity
//! shards with Reed-Solomon, and each shard, checksummed with SHA-256, goes to a distinct
//! backend chosen by the group-aware [`placement`] policy. An encrypted, authenticated
//! [`metadata`] record per object (its path bound in, a version counter against rollback) is
//! replicated over the metadata backends and read with a quorum. Any m shards of a stripe may be
//! lost or corrupt; [`ops`] offers check, rebuild, scrub, list, status, delete and gc on top.
//!
//! The pipeline is itself a [`qsfs_core::Backend`], so the engine's cold tier can use it like
//! any leaf:
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use qsfs_backup::backends::Memory;
//! use qsfs_backup::crypto::{KdfParams, KeySource};
//! use qsfs_backup::{Pipeline, Settings};
//! use qsfs_core::Backend;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let data: Vec<Arc<dyn Backend>> = (0..4).map(|i| Arc::new(Memory::new(format!("d{i}"))) as _).collect();
//! let meta: Vec<Arc<dyn Backend>> = (0..3).map(|i| Arc::new(Memory::new(format!("m{i}"))) as _).collect();
//! let settings = Settings { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..Settings::default() };
//! let key = KeySource::passphrase("correct horse battery staple");
//! let backup = Pipeline::open(settings, vec![data], meta, &key).await?;
//!
//! backup.put("segments/00000001", Bytes::from_static(b"sealed segment bytes")).await?;
//! assert_eq!(backup.get_range("segments/00000001", 7..14).await?, Bytes::from_static(b"segment"));
//! assert_eq!(backup.list("segments/").await?, vec!["segments/00000001".to_string()]);
//! # Ok::<(), qsfs_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! The [`tier`] module joins the engine to the pipeline for the storage chain: verified
//! offload of sealed segments, eviction under a local cap, fetch-back by stripe, deletion of
//! cold objects no recovery manifest references, and [`tier::recover`] (see `docs/tier.md`).
//!
//! Files, directories and repository-wide maintenance go through [`ops`] and a [`config::Config`]
//! (qsfs TOML, or a 0-stor v2 config read unchanged); the `qsfs backup` command is a thin layer
//! over them. See `docs/backup.md` for formats and guarantees.

pub mod backends;
pub mod codec;
pub mod config;
mod cpu;
pub mod crypto;
pub mod error;
pub mod metadata;
pub mod node;
pub mod ops;
pub mod pipeline;
pub mod placement;
pub mod progress;
pub mod stripe;
pub mod tier;

pub use error::BackupError;
pub use pipeline::{Pipeline, Settings};
