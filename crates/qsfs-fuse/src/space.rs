//! The reserve: disk space the filesystem keeps back for the work that gives space back.
//!
//! The store under the filesystem is append-only: deleting a file appends tombstones and
//! metadata, and the engine's compaction copies live data forward before it removes a segment.
//! Both need free disk. A filesystem that let writes use the last byte would be stuck once full:
//! `rm` could not record the delete, and nothing could be compacted. So requests that add data
//! (write, create, mkdir, link, setxattr, fallocate, copy_file_range) fail with `ENOSPC` once
//! they would leave less than the reserve available, while requests that remove data are never
//! refused; `statfs` reports the available space without the reserve, so `df` shows what can
//! still be written.
//!
//! Only a filesystem on a local disk ([`Capacity::Disk`]) has a reserve: a remote store's disk
//! is the server's business.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use qsfs_core::DiskSpace;

use crate::error::{FsError, FsResult};
use crate::fs::Capacity;

/// How long a measured budget is trusted while requests are admitted against it.
const REFRESH: Duration = Duration::from_secs(1);

/// The reserve on a disk of `total` bytes for [`crate::FsConfig::reserve`] `at_most`: never more
/// than a quarter of the disk.
pub fn reserve_bytes(at_most: u64, total: u64) -> u64 {
    at_most.min(total / 4)
}

/// The reserve of one filesystem, and its running budget.
#[derive(Debug)]
pub(crate) struct Reserve {
    disk: Option<PathBuf>,
    at_most: u64,
    /// Bytes that may still be admitted, and when that was measured.
    budget: Option<(Instant, u64)>,
}

impl Reserve {
    /// The reserve of a filesystem whose figures come from `capacity`: `at_most` bytes, and
    /// never more than a quarter of the disk.
    pub(crate) fn new(capacity: &Capacity, at_most: u64) -> Reserve {
        let disk = match capacity {
            Capacity::Disk(path) => Some(path.clone()),
            Capacity::Fixed(_) => None,
        };
        Reserve {
            disk,
            at_most,
            budget: None,
        }
    }

    /// The bytes kept back on a disk of `total` bytes.
    pub(crate) fn bytes(&self, total: u64) -> u64 {
        reserve_bytes(self.at_most, total)
    }

    /// Admits a request that adds about `adding` bytes while `dirty()` bytes are still on their
    /// way to the store; `ENOSPC` if it would eat into the reserve. The disk is measured at
    /// most once a second while the budget lasts, and always before a refusal.
    /// `dirty` is asked only when the disk is measured, not for requests the budget covers.
    pub(crate) fn admit(&mut self, adding: u64, dirty: impl FnOnce() -> u64) -> FsResult<()> {
        if self.disk.is_none() {
            return Ok(());
        }
        if let Some((at, left)) = self.budget {
            if at.elapsed() < REFRESH && left >= adding {
                self.budget = Some((at, left - adding));
                return Ok(());
            }
        }
        let left = self.measure(dirty())?;
        if left < adding {
            self.budget = None;
            return Err(FsError::Errno(libc::ENOSPC));
        }
        self.budget = Some((Instant::now(), left - adding));
        Ok(())
    }

    /// What may still be written on the disk with `dirty` bytes to come, beyond the reserve.
    fn measure(&self, dirty: u64) -> FsResult<u64> {
        let Some(path) = &self.disk else {
            return Ok(u64::MAX);
        };
        let disk = DiskSpace::of(path)?;
        Ok(disk
            .available
            .saturating_sub(dirty)
            .saturating_sub(self.bytes(disk.total)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_is_at_most_a_quarter_of_the_disk() {
        let r = Reserve::new(&Capacity::Fixed(0), 64 << 20);
        assert_eq!(r.bytes(1 << 40), 64 << 20);
        assert_eq!(r.bytes(100 << 20), 25 << 20);
        assert_eq!(r.bytes(0), 0);
    }

    #[test]
    fn a_fixed_capacity_admits_everything() {
        let mut r = Reserve::new(&Capacity::Fixed(1), 64 << 20);
        assert!(r.admit(u64::MAX, || u64::MAX).is_ok());
    }

    #[test]
    fn the_budget_runs_down_and_a_refusal_measures_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Reserve::new(&Capacity::Disk(dir.path().to_path_buf()), 0);
        let available = DiskSpace::of(dir.path()).unwrap().available;
        r.admit(1, || 0).unwrap();
        let (_, left) = r.budget.unwrap();
        assert!(left < available, "{left} of {available}");
        r.budget = Some((Instant::now(), 10));
        assert!(r.admit(10, || 0).is_ok(), "the budget is trusted");
        // More than the budget: the disk is measured, and it does not hold that much.
        let err = r
            .admit(available.saturating_add(1 << 30), || 0)
            .unwrap_err();
        assert!(matches!(err, FsError::Errno(libc::ENOSPC)), "{err:?}");
        // Dirty bytes count as written.
        assert!(matches!(
            r.admit(1, || u64::MAX),
            Err(FsError::Errno(libc::ENOSPC))
        ));
    }
}
