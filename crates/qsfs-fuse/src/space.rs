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
//! The space is measured where [`Capacity`] says: the local disk holding the engine
//! ([`Capacity::Disk`]), or the store itself ([`Capacity::Store`]: [`Store::space`] of the
//! filesystem's block namespace, which a 0-db server answers from NSINFO). A fixed capacity, and
//! a store that cannot tell its space, have no reserve.

use qsfs_core::{DiskSpace, SpaceBudget, Store, StoreSpace};
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{FsError, FsResult};
use crate::fs::Capacity;

/// The reserve on a disk of `total` bytes for [`crate::FsConfig::reserve`] `at_most`: never more
/// than a quarter of the disk.
pub fn reserve_bytes(at_most: u64, total: u64) -> u64 {
    qsfs_core::reserve_on(at_most, total)
}

/// Asks a store how much room the filesystem has: [`Store::space`] of one namespace.
type AskSpace = Box<dyn Fn() -> qsfs_core::Result<Option<StoreSpace>> + Send + Sync>;

/// Where space is measured.
enum Source {
    /// A fixed capacity: nothing to measure, no reserve.
    Fixed,
    /// The local disk holding this path.
    Disk(PathBuf),
    /// The store, which tells (or not) how much its namespace may still grow by.
    Store(AskSpace),
}

/// Size, free and available bytes of what the filesystem lives on, as measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Measured {
    /// Bytes of the disk (or the namespace's limit).
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Bytes that may still be written.
    pub available: u64,
}

impl From<DiskSpace> for Measured {
    fn from(d: DiskSpace) -> Measured {
        Measured {
            total: d.total,
            free: d.free,
            available: d.available,
        }
    }
}

impl From<StoreSpace> for Measured {
    fn from(s: StoreSpace) -> Measured {
        // A server reports only what a writer may still use: that is free and available both.
        Measured {
            total: s.total(),
            free: s.available(),
            available: s.available(),
        }
    }
}

/// The reserve of one filesystem, and its running budget.
pub(crate) struct Reserve {
    source: Source,
    at_most: u64,
    /// Bytes that may still be admitted before the reserve.
    budget: SpaceBudget,
}

impl std::fmt::Debug for Reserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Fixed => "fixed".to_string(),
            Source::Disk(p) => format!("disk {}", p.display()),
            Source::Store(_) => "store".to_string(),
        };
        f.debug_struct("Reserve")
            .field("source", &source)
            .field("at_most", &self.at_most)
            .field("budget", &self.budget)
            .finish()
    }
}

impl Reserve {
    /// The reserve of a filesystem whose figures come from `capacity`: `at_most` bytes, and
    /// never more than a quarter of the disk. With [`Capacity::Store`] the space of namespace
    /// `ns` of `store` is asked: the block namespace, where the file data goes (all of the
    /// filesystem's namespaces share the server's disk; a limit set on the block namespace is
    /// the filesystem's size).
    pub(crate) fn new(
        capacity: &Capacity,
        at_most: u64,
        store: &Arc<dyn Store>,
        ns: &str,
    ) -> Reserve {
        let source = match capacity {
            Capacity::Disk(path) => Source::Disk(path.clone()),
            Capacity::Fixed(_) => Source::Fixed,
            Capacity::Store => {
                let (store, ns) = (Arc::clone(store), ns.to_string());
                Source::Store(Box::new(move || store.space(&ns)))
            }
        };
        Reserve::with_source(source, at_most)
    }

    fn with_source(source: Source, at_most: u64) -> Reserve {
        Reserve {
            source,
            at_most,
            budget: SpaceBudget::default(),
        }
    }

    /// The bytes kept back on a disk of `total` bytes.
    pub(crate) fn bytes(&self, total: u64) -> u64 {
        reserve_bytes(self.at_most, total)
    }

    /// The figures now, `None` when there is nothing to measure (a fixed capacity, a store
    /// that cannot tell).
    pub(crate) fn measured(&self) -> FsResult<Option<Measured>> {
        Ok(match &self.source {
            Source::Fixed => None,
            Source::Disk(path) => Some(DiskSpace::of(path)?.into()),
            Source::Store(ask) => ask()?.map(Measured::from),
        })
    }

    /// What `statfs` reports with `dirty` bytes still to be written: total, free and available
    /// bytes, the reserve left out of the available ones; `None` as for [`Reserve::measured`].
    pub(crate) fn statfs(&self, dirty: u64) -> FsResult<Option<Measured>> {
        Ok(self.measured()?.map(|m| Measured {
            total: m.total,
            // Dirty blocks are as good as written; the reserve is not for writing.
            free: m.free.saturating_sub(dirty),
            available: m
                .available
                .saturating_sub(dirty)
                .saturating_sub(self.bytes(m.total)),
        }))
    }

    /// Admits a request that adds about `adding` bytes while `dirty()` bytes are still on their
    /// way to the store; `ENOSPC` if it would eat into the reserve. The space is measured at
    /// most once a second while the budget lasts, and always before a refusal.
    /// `dirty` is asked only when the space is measured, not for requests the budget covers.
    pub(crate) fn admit(&mut self, adding: u64, dirty: impl FnOnce() -> u64) -> FsResult<()> {
        if matches!(self.source, Source::Fixed) {
            return Ok(());
        }
        let mut budget = self.budget;
        let fits = budget.take(adding, || self.measure(dirty()))?;
        self.budget = budget;
        match fits {
            true => Ok(()),
            false => Err(FsError::Errno(libc::ENOSPC)),
        }
    }

    /// What may still be written with `dirty` bytes to come, beyond the reserve.
    fn measure(&self, dirty: u64) -> FsResult<u64> {
        Ok(self.statfs(dirty)?.map_or(u64::MAX, |m| m.available))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_is_at_most_a_quarter_of_the_disk() {
        let r = Reserve::with_source(Source::Fixed, 64 << 20);
        assert_eq!(r.bytes(1 << 40), 64 << 20);
        assert_eq!(r.bytes(100 << 20), 25 << 20);
        assert_eq!(r.bytes(0), 0);
    }

    #[test]
    fn a_fixed_capacity_admits_everything() {
        let mut r = Reserve::with_source(Source::Fixed, 64 << 20);
        assert!(r.admit(u64::MAX, || u64::MAX).is_ok());
    }

    #[test]
    fn the_budget_runs_down_and_a_refusal_measures_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Reserve::with_source(Source::Disk(dir.path().to_path_buf()), 0);
        let available = DiskSpace::of(dir.path()).unwrap().available;
        r.admit(1, || 0).unwrap();
        let left = r.budget.left().unwrap();
        assert!(left < available, "{left} of {available}");
        r.budget = SpaceBudget::measured_now(10);
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

    /// A store's space as a test sets it, and how often it was asked.
    #[derive(Default)]
    struct Fake {
        space: parking_lot::Mutex<Option<StoreSpace>>,
        asked: std::sync::atomic::AtomicU64,
    }

    fn over(fake: &Arc<Fake>, at_most: u64) -> Reserve {
        let fake = Arc::clone(fake);
        let ask: AskSpace = Box::new(move || {
            fake.asked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(*fake.space.lock())
        });
        Reserve::with_source(Source::Store(ask), at_most)
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn statfs_over_a_store_is_its_disk_or_its_limit_less_dirty_bytes_and_the_reserve() {
        let fake = Arc::new(Fake::default());
        let r = over(&fake, 64 * MIB);
        assert_eq!(r.statfs(0).unwrap(), None, "a store that cannot tell");
        // No limit, a disk of known size: the disk.
        *fake.space.lock() = Some(StoreSpace {
            limit: None,
            used: 10 * MIB,
            disk_free: 50 * MIB,
            disk_total: Some(96 * MIB),
        });
        let m = r.statfs(2 * MIB).unwrap().unwrap();
        assert_eq!(m.total, 96 * MIB);
        assert_eq!(m.free, 48 * MIB, "dirty bytes are as good as written");
        assert_eq!(
            m.available,
            24 * MIB,
            "less the reserve, a quarter of 96 MiB"
        );
        // A disk of unknown size: used plus free.
        let was = fake.space.lock().unwrap();
        *fake.space.lock() = Some(StoreSpace {
            disk_total: None,
            ..was
        });
        assert_eq!(r.statfs(0).unwrap().unwrap().total, 60 * MIB);
        // A limit: the limit is the size, and what is left under it is free.
        *fake.space.lock() = Some(StoreSpace {
            limit: Some(400 * MIB),
            used: 100 * MIB,
            disk_free: 1 << 40,
            disk_total: Some(2 << 40),
        });
        let m = r.statfs(0).unwrap().unwrap();
        assert_eq!(
            (m.total, m.free, m.available),
            (400 * MIB, 300 * MIB, 236 * MIB)
        );
    }

    #[test]
    fn the_reserve_over_a_store_refuses_before_the_last_bytes_and_asks_at_most_once_a_second() {
        let fake = Arc::new(Fake::default());
        let mut r = over(&fake, 16 * MIB);
        // A store that cannot tell admits everything.
        assert!(r.admit(1 << 40, || 0).is_ok());
        *fake.space.lock() = Some(StoreSpace {
            limit: Some(100 * MIB),
            used: 60 * MIB,
            disk_free: 1 << 40,
            disk_total: None,
        });
        r.budget = SpaceBudget::default();
        let before = fake.asked.load(std::sync::atomic::Ordering::Relaxed);
        // 40 MiB left under the limit, 16 MiB of it kept back: 24 MiB may be written.
        for _ in 0..24 {
            r.admit(MIB, || 0).unwrap();
        }
        let asked = fake.asked.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert_eq!(asked, 1, "the budget is trusted within a second");
        // The budget is spent, so the store is asked again: it holds those 24 MiB now.
        let was = fake.space.lock().unwrap();
        *fake.space.lock() = Some(StoreSpace {
            used: 84 * MIB,
            ..was
        });
        let err = r.admit(MIB, || 0).unwrap_err();
        assert!(matches!(err, FsError::Errno(libc::ENOSPC)), "{err:?}");
        // Dirty bytes count as written.
        assert!(matches!(
            r.admit(MIB, || 24 * MIB),
            Err(FsError::Errno(libc::ENOSPC))
        ));
        // Deleted data comes back: writes are admitted again.
        let was = fake.space.lock().unwrap();
        *fake.space.lock() = Some(StoreSpace {
            used: 30 * MIB,
            ..was
        });
        assert!(r.admit(MIB, || 0).is_ok());
        // A store too small for the whole reserve keeps a quarter of it back.
        *fake.space.lock() = Some(StoreSpace {
            limit: Some(8 * MIB),
            used: 0,
            disk_free: 1 << 40,
            disk_total: None,
        });
        r.budget = SpaceBudget::default();
        assert!(r.admit(6 * MIB + 1, || 0).is_err());
        assert!(r.admit(6 * MIB, || 0).is_ok());
    }
}
