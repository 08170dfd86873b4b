//! Space comes back: after unlink, truncate and overwrite, the blocks are deleted from the store,
//! so the engine's compaction removes them from disk.

use crate::common;

use qsfs_core::Store;
use qsfs_fuse::layout::ROOT_INO;
use qsfs_fuse::Fs;
use qsfs_store::{Engine, EngineConfig};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn deleted_and_overwritten_blocks_leave_the_disk_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        max_segment_size: 1 << 20,
        history_retention: Some(Duration::ZERO),
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::open(dir.path(), config).unwrap());
    let store: Arc<dyn Store> = engine.clone();
    let mut fs = Fs::open(store, common::config()).unwrap();
    let ns = fs.namespaces().block.clone();
    let disk = |e: &Engine| e.namespace_info(&ns).unwrap().disk_bytes;
    let compact = |e: &Engine| {
        for n in e.namespace_list().unwrap() {
            e.compact_with(&n, 1.0).unwrap();
        }
    };

    let chunk = vec![7u8; 1 << 20];
    let keep = fs.create(ROOT_INO, b"keep", 0o644, 0, 0, 0).unwrap().0.ino;
    let (doomed_attr, doomed_fh) = fs.create(ROOT_INO, b"doomed", 0o644, 0, 0, 0).unwrap();
    let doomed = doomed_attr.ino;
    for i in 0..8u64 {
        fs.write(keep, 0, i << 20, &chunk).unwrap();
        fs.write(doomed, 0, i << 20, &chunk).unwrap();
    }
    fs.sync().unwrap();
    compact(&engine);
    let full = disk(&engine);
    assert!(full >= 16 << 20, "16 MiB of blocks stored, disk has {full}");

    // Overwrite `keep` entirely (old versions become garbage), truncate it to half, and unlink
    // `doomed` (no handle open, no kernel reference).
    for i in 0..8u64 {
        fs.write(keep, 0, i << 20, &vec![9u8; 1 << 20]).unwrap();
    }
    fs.sync().unwrap();
    fs.setattr(
        keep,
        qsfs_fuse::fs::SetAttr {
            size: Some(4 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    fs.release(doomed, doomed_fh).unwrap();
    fs.forget(doomed, 1);
    fs.unlink(ROOT_INO, b"doomed").unwrap();
    fs.sync().unwrap();
    // Fill one more segment so the ones holding garbage are sealed.
    let filler = fs
        .create(ROOT_INO, b"filler", 0o644, 0, 0, 0)
        .unwrap()
        .0
        .ino;
    fs.write(filler, 0, 0, &chunk).unwrap();
    fs.write(filler, 0, 1 << 20, &chunk).unwrap();
    fs.sync().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    compact(&engine);
    compact(&engine);
    let after = disk(&engine);
    eprintln!("block namespace on disk: {full} bytes before, {after} after");
    assert!(
        after < (8 << 20),
        "live data is 4 MiB (keep) + 2 MiB (filler); disk still holds {after} bytes of blocks"
    );
    let mut buf = fs.read(keep, 0, (4 << 20) - 10, 10).unwrap();
    assert_eq!(buf, vec![9u8; 10]);
    buf = fs.read(keep, 0, 4 << 20, 10).unwrap();
    assert!(buf.is_empty(), "truncated");
    fs.shutdown().unwrap();
}
