//! Space comes back: after unlink, truncate and overwrite, the blocks are deleted from the store,
//! so the engine's compaction removes them from disk. And a filesystem that asks its store for
//! its space (`Capacity::Store`) keeps a reserve inside it.

use crate::common;

use qsfs_core::{NamespaceProperty, Store};
use qsfs_fuse::layout::ROOT_INO;
use qsfs_fuse::{Capacity, Fs, FsConfig, FsError};
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

/// A limit on the filesystem's block namespace is its size: statfs reports it, writes are refused
/// with ENOSPC while a reserve is left under it (so the store never answers "no space" to a
/// flush), deleting works on the full filesystem and gives the space back.
#[test]
fn a_block_namespace_limit_is_the_size_and_the_reserve_keeps_room_to_delete() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
    let store: Arc<dyn Store> = engine.clone();
    let config = FsConfig {
        capacity: Capacity::Store,
        reserve: MIB,
        ..common::config()
    };
    let mut fs = Fs::open(store, config).unwrap();
    let block = fs.namespaces().block.clone();
    engine
        .namespace_set(&block, NamespaceProperty::MaxSize(8 * MIB))
        .unwrap();
    let st = fs.statfs().unwrap();
    assert_eq!(st.blocks * u64::from(st.bsize), 8 * MIB, "{st:?}");
    assert_eq!(
        st.bavail * u64::from(st.bsize),
        7 * MIB,
        "the reserve is left out: {st:?}"
    );

    let chunk = vec![5u8; MIB as usize];
    let (attr, fh) = fs.create(ROOT_INO, b"big", 0o644, 0, 0, 0).unwrap();
    let mut written = 0u64;
    let refused = loop {
        match fs.write(attr.ino, fh, written, &chunk) {
            Ok(n) => written += u64::from(n),
            Err(e) => break e,
        }
        assert!(written <= 8 * MIB, "never refused");
    };
    assert!(
        matches!(refused, FsError::Errno(libc::ENOSPC)),
        "{refused:?}"
    );
    assert!(written <= 7 * MIB, "{written} bytes admitted");
    fs.sync().expect("everything admitted reaches the store");
    fs.release(attr.ino, fh).unwrap();
    fs.forget(attr.ino, 1);
    fs.unlink(ROOT_INO, b"big")
        .expect("deleting on a full filesystem");
    fs.sync().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let (attr, fh) = fs.create(ROOT_INO, b"again", 0o644, 0, 0, 0).unwrap();
    fs.write(attr.ino, fh, 0, &chunk)
        .expect("writing works again");
    fs.sync().unwrap();
    let st = fs.statfs().unwrap();
    assert!(st.bavail * u64::from(st.bsize) >= 5 * MIB, "{st:?}");
}

/// Fails the `n`th store write from when it is armed (`fail_at` > 0), once.
struct FailNthWrite {
    fail_at: std::sync::atomic::AtomicI64,
}

impl common::Hooks for FailNthWrite {
    fn before_write(&self) -> qsfs_core::Result<()> {
        use std::sync::atomic::Ordering;
        if self.fail_at.fetch_sub(1, Ordering::SeqCst) == 1 {
            return Err(qsfs_core::Error::Unavailable(
                "injected write failure".into(),
            ));
        }
        Ok(())
    }
}

/// A flush that fails while it frees unlinked files keeps every file it has not freed yet
/// queued, so the next flush frees them all: none of their blocks waits for the next mount.
#[test]
fn a_flush_failing_while_it_frees_keeps_the_rest_to_free() {
    use std::sync::atomic::Ordering;
    let files = 5;
    for fail_at in 1..=3 * files + 4 {
        let tmp = tempfile::tempdir().unwrap();
        let store = common::Hooked::new(
            common::open_engine(&tmp.path().join("engine")),
            FailNthWrite {
                fail_at: (-1).into(),
            },
        );
        let mut fs = Fs::open(store.clone(), common::config()).unwrap();
        let ns = fs.namespaces().block.clone();
        let blocks = || store.namespace_info(&ns).unwrap().entries;
        for f in 0..files {
            let name = format!("f{f}");
            let (attr, fh) = fs
                .create(ROOT_INO, name.as_bytes(), 0o644, 0, 0, 0)
                .unwrap();
            for b in 0..3u64 {
                fs.write(attr.ino, fh, b << 20, &[f as u8 + 1; 4096])
                    .unwrap();
            }
            fs.release(attr.ino, fh).unwrap();
            fs.forget(attr.ino, 1);
        }
        fs.sync().unwrap();
        assert_eq!(blocks(), 3 * files as u64, "every file has its blocks");
        for f in 0..files {
            fs.unlink(ROOT_INO, format!("f{f}").as_bytes()).unwrap();
        }
        store.hooks.fail_at.store(fail_at as i64, Ordering::SeqCst);
        let failed = fs.flush_all().is_err();
        store.hooks.fail_at.store(-1, Ordering::SeqCst);
        fs.flush_all().unwrap();
        assert_eq!(
            blocks(),
            0,
            "write {fail_at} failed (flush failed: {failed}); blocks of unlinked files remain"
        );
        fs.shutdown().unwrap();
    }
}
