//! A crash at every store write of a flush: the store stops accepting writes after the N-th
//! one (as if the process died there), the filesystem is re-opened over what was written,
//! and `fsck` must find it clean with everything synced before intact. N runs over every
//! write the workload makes, so each point of the metadata batch (journal parts, head, each
//! applied record, cleanup) and of the block write-back is a crash point once.

#![allow(clippy::unwrap_used)]

use crate::common;

use qsfs_fuse::fsck::check;
use qsfs_fuse::layout::ROOT_INO;
use qsfs_fuse::{Fs, FsConfig};
use std::sync::atomic::{AtomicI64, Ordering};

/// Lets `left` writes through; every later write fails.
struct Cutoff {
    left: AtomicI64,
}

impl common::Hooks for Cutoff {
    fn before_write(&self) -> qsfs_core::Result<()> {
        if self.left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(qsfs_core::Error::io(
                "cut off",
                std::io::Error::other("the process died here"),
            ));
        }
        Ok(())
    }
}

const BS: u32 = 4096;

fn cfg() -> FsConfig {
    FsConfig {
        block_size: BS,
        ..common::config()
    }
}

fn file(fs: &mut Fs, parent: u64, name: &[u8], bytes: &[u8]) -> qsfs_fuse::FsResult<u64> {
    let (attr, fh) = fs.create(parent, name, 0o644, 0, 0, 0)?;
    fs.write(attr.ino, fh, 0, bytes)?;
    fs.release(attr.ino, fh)?;
    Ok(attr.ino)
}

/// Synced base: /keep (3 blocks), /d/{a, b}. Returns keep's inode.
fn base(fs: &mut Fs) -> u64 {
    let keep = file(fs, ROOT_INO, b"keep", &[5u8; 3 * BS as usize]).unwrap();
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    file(fs, d, b"a", b"aaa").unwrap();
    file(fs, d, b"b", &[9u8; 2 * BS as usize]).unwrap();
    fs.sync().unwrap();
    keep
}

/// Unsynced work of every kind, then a sync: each store write is a crash point.
fn workload(fs: &mut Fs, keep: u64) -> qsfs_fuse::FsResult<()> {
    let d = fs.lookup(ROOT_INO, b"d")?.ino;
    let n = fs.mkdir(ROOT_INO, b"new", 0o755, 0, 0)?.ino;
    for i in 0..5u8 {
        file(fs, n, &[b'f', b'0' + i], &vec![i; 5000])?;
    }
    fs.rename(d, b"a", n, b"moved", 0)?;
    fs.unlink(d, b"b")?;
    let fh = fs.open_file(keep, 0)?;
    fs.write(keep, fh, 3 * u64::from(BS), &[6u8; 100])?;
    fs.release(keep, fh)?;
    fs.setxattr(n, b"user.tag", b"v", 0)?;
    let t = file(fs, ROOT_INO, b"t", &[1u8; 4 * BS as usize])?;
    let set = qsfs_fuse::fs::SetAttr {
        size: Some(u64::from(BS)),
        ..Default::default()
    };
    fs.setattr(t, set)?;
    fs.sync()
}

#[test]
fn a_crash_at_any_write_leaves_a_clean_filesystem() {
    let mut point = 0i64;
    loop {
        // Memory-backed when there is one: each point opens an engine and syncs it a few times.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let engine = common::open_engine(dir.path());
        let cut = common::Hooked::new(
            engine.clone(),
            Cutoff {
                left: AtomicI64::new(i64::MAX),
            },
        );
        let mut fs = Fs::open(cut.clone(), cfg()).unwrap();
        let keep = base(&mut fs);
        cut.left.store(point, Ordering::SeqCst);
        let finished = workload(&mut fs, keep).is_ok();
        fs.abandon();
        drop(fs);

        let mut fs = Fs::open(engine.clone(), cfg()).unwrap();
        let fh = fs.open_file(keep, 0).unwrap();
        let got = fs.read(keep, fh, 0, 4 * BS).unwrap();
        fs.release(keep, fh).unwrap();
        assert!(
            got.len() >= 3 * BS as usize && got[..3 * BS as usize].iter().all(|&b| b == 5),
            "crash at write {point}: the synced file changed"
        );
        fs.shutdown().unwrap();
        drop(fs);
        let report = check(&*engine, "qsfs", false).unwrap();
        assert!(
            report.is_clean(),
            "crash at write {point}: fsck after re-opening: {:#?}",
            report.problems
        );
        if finished {
            eprintln!("{point} crash points");
            assert!(point > 20, "the workload made only {point} writes");
            break;
        }
        point += 1;
    }
}
