//! [`FsStats`]: operation counters of a mounted filesystem, read lock-free by a metrics endpoint
//! while the mount runs.
//!
//! The counters live in the filesystem's [`crate::BlockCache`] (which counts its own hits and
//! misses), so a caller takes them with [`Fs::stats`] before handing the `Fs` to
//! [`crate::mount()`] and keeps reading them afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::fs::Fs;

/// The families FUSE operations are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `lookup`.
    Lookup,
    /// `getattr`, `access`, `opendir`.
    Getattr,
    /// `setattr`.
    Setattr,
    /// `read`.
    Read,
    /// `write`.
    Write,
    /// `create`, `mknod`, `symlink`, `link`.
    Create,
    /// `unlink`.
    Unlink,
    /// `mkdir`.
    Mkdir,
    /// `rmdir`.
    Rmdir,
    /// `rename`.
    Rename,
    /// `readdir`, `readdirplus`.
    Readdir,
    /// `fsync`, `fsyncdir`, `flush`.
    Fsync,
    /// Everything else (open, release, xattrs, statfs, fallocate, lseek, readlink).
    Other,
}

impl Op {
    /// Every family, in a fixed order.
    pub const ALL: [Op; 13] = [
        Op::Lookup,
        Op::Getattr,
        Op::Setattr,
        Op::Read,
        Op::Write,
        Op::Create,
        Op::Unlink,
        Op::Mkdir,
        Op::Rmdir,
        Op::Rename,
        Op::Readdir,
        Op::Fsync,
        Op::Other,
    ];

    /// The family's name as a metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Read => "read",
            Op::Write => "write",
            Op::Create => "create",
            Op::Unlink => "unlink",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Rename => "rename",
            Op::Readdir => "readdir",
            Op::Fsync => "fsync",
            Op::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Monotonic counters of one filesystem since it was opened.
#[derive(Debug, Default)]
pub struct FsStats {
    ops: [AtomicU64; 13],
    errors: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

/// A point-in-time copy of [`FsStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsStatsSnapshot {
    /// Operations per family, in [`Op::ALL`] order.
    pub ops: [(Op, u64); 13],
    /// Operations that failed (a missing name or attribute, ENOENT/ENODATA, is not counted).
    pub errors: u64,
    /// Bytes returned by `read`.
    pub bytes_read: u64,
    /// Bytes accepted by `write`.
    pub bytes_written: u64,
    /// Block reads answered from the block cache.
    pub cache_hits: u64,
    /// Block reads that went to the Store.
    pub cache_misses: u64,
}

impl FsStats {
    /// Counts one operation of family `op`.
    pub fn op(&self, op: Op) {
        self.ops[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed operation (not the absence of a name or attribute, which is an
    /// answer).
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts bytes returned by a read.
    pub fn read_bytes(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes accepted by a write.
    pub fn written_bytes(&self, n: u64) {
        self.bytes_written.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a block cache hit.
    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a block cache miss.
    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Operations of family `op` so far.
    pub fn ops(&self, op: Op) -> u64 {
        self.ops[op.index()].load(Ordering::Relaxed)
    }

    /// The current values.
    pub fn snapshot(&self) -> FsStatsSnapshot {
        let mut ops = [(Op::Other, 0); 13];
        for (slot, op) in ops.iter_mut().zip(Op::ALL) {
            *slot = (op, self.ops(op));
        }
        FsStatsSnapshot {
            ops,
            errors: self.errors.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            cache_misses: self.cache_misses.load(Ordering::Relaxed),
        }
    }
}

impl Fs {
    /// The filesystem's counters; they keep counting after the `Fs` is mounted.
    pub fn stats(&self) -> Arc<FsStats> {
        self.cache().counters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{mount, FsConfig, MountOptions};
    use qsfs_store::{Engine, EngineConfig};

    #[test]
    fn counters_move_with_operations_on_a_real_mount() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn qsfs_core::Store> =
            Arc::new(Engine::open(dir.path().join("engine"), EngineConfig::default()).unwrap());
        let fs = Fs::open(store, FsConfig::default()).unwrap();
        let stats = fs.stats();
        let before = stats.snapshot();
        assert_eq!(before.bytes_written, 0);
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = mount(fs, &mnt, &MountOptions::default()).unwrap();
        std::fs::create_dir(mnt.join("d")).unwrap();
        let data = vec![7u8; 300_000];
        std::fs::write(mnt.join("d/f"), &data).unwrap();
        assert_eq!(std::fs::read(mnt.join("d/f")).unwrap(), data);
        assert!(std::fs::metadata(mnt.join("missing")).is_err());
        let before_errors = stats.snapshot().errors;
        assert_eq!(before_errors, 0, "a missing name is not an error");
        // Removing a non-empty directory is.
        assert!(std::fs::remove_dir(mnt.join("d")).is_err());
        std::fs::remove_file(mnt.join("d/f")).unwrap();
        std::fs::remove_dir(mnt.join("d")).unwrap();
        let after = stats.snapshot();
        mounted.unmount().unwrap();

        let n = |op: Op| after.ops.iter().find(|(o, _)| *o == op).map(|x| x.1);
        assert_eq!(n(Op::Mkdir), Some(1));
        assert_eq!(n(Op::Rmdir), Some(2));
        assert_eq!(n(Op::Unlink), Some(1));
        assert!(n(Op::Create) >= Some(1));
        assert!(n(Op::Write) >= Some(1));
        assert!(n(Op::Lookup) >= Some(1));
        assert_eq!(after.bytes_written, data.len() as u64);
        // The kernel may read ahead past what was asked, never less than the file.
        assert!(after.bytes_read >= data.len() as u64);
        // The failed rmdir.
        assert_eq!(after.errors, 1);
        // Written blocks are still cached when read back.
        assert!(after.cache_hits >= 1);
    }

    #[test]
    fn op_order_matches_indices() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
        }
    }
}
