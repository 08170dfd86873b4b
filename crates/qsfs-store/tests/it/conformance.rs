//! The Store conformance suite of qsfs-core, run against the engine.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use qsfs_store::{Durability, Engine, EngineConfig};

#[test]
fn engine_passes_the_store_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    qsfs_core::testing::store::run(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = EngineConfig {
            durability: Durability::None,
            max_segment_size: 1 << 20,
            ..EngineConfig::default()
        };
        let e = Engine::open(dir.path(), cfg).expect("open");
        dirs.lock().expect("lock").push(dir);
        e
    });
}

#[test]
fn engine_passes_the_suite_with_every_write_synced_and_tiny_segments() {
    let dirs = std::sync::Mutex::new(Vec::new());
    qsfs_core::testing::store::run(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = EngineConfig {
            durability: Durability::EveryWrite,
            max_segment_size: 4096,
            ..EngineConfig::default()
        };
        let e = Engine::open(dir.path(), cfg).expect("open");
        dirs.lock().expect("lock").push(dir);
        e
    });
}

#[test]
fn engine_passes_the_suite_with_group_commit() {
    let dirs = std::sync::Mutex::new(Vec::new());
    qsfs_core::testing::store::run(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = EngineConfig {
            durability: Durability::Group,
            ..EngineConfig::default()
        };
        let e = Engine::open(dir.path(), cfg).expect("open");
        dirs.lock().expect("lock").push(dir);
        e
    });
}
