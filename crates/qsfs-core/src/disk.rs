//! The figures of the disk holding a path, and of the room a store's namespace has left: what the
//! engine's low-space mode and a filesystem's reserve are measured against.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Size, free and available bytes of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes of the filesystem.
    pub total: u64,
    /// Free bytes (root may use them all).
    pub free: u64,
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
}

impl DiskSpace {
    /// The disk holding `path`.
    pub fn of(path: &Path) -> Result<DiskSpace> {
        let st = nix::sys::statvfs::statvfs(path)
            .map_err(|e| Error::io(format!("statvfs {}", path.display()), e.into()))?;
        let frag = st.fragment_size();
        Ok(DiskSpace {
            total: st.blocks().saturating_mul(frag),
            free: st.blocks_free().saturating_mul(frag),
            available: st.blocks_available().saturating_mul(frag),
        })
    }
}

/// The room a store's namespace has left, and the figures behind it ([`crate::Store::space`]).
///
/// A namespace may grow until either its own limit (0-db's `maxsize`, counted in live payload
/// bytes) or the disk holding the store's data is full, whichever comes first. All namespaces
/// of one store share that disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSpace {
    /// The namespace's limit in live payload bytes, if it has one.
    pub limit: Option<u64>,
    /// Live payload bytes of the namespace (what the limit counts).
    pub used: u64,
    /// Bytes a writer may still use on the disk holding the store's data.
    pub disk_free: u64,
    /// Size of that disk, when the store tells it (0-db's NSINFO does not).
    pub disk_total: Option<u64>,
}

impl StoreSpace {
    /// Bytes the namespace may still grow by: what is left under the limit, and never more than
    /// the disk has free.
    pub fn available(&self) -> u64 {
        match self.limit {
            Some(limit) => limit.saturating_sub(self.used).min(self.disk_free),
            None => self.disk_free,
        }
    }

    /// The size a filesystem in the namespace reports: the limit if there is one, else the
    /// disk's size, else (a disk of unknown size) what is used plus what is free.
    pub fn total(&self) -> u64 {
        match (self.limit, self.disk_total) {
            (Some(limit), _) => limit,
            (None, Some(total)) => total,
            (None, None) => self.used.saturating_add(self.disk_free),
        }
    }
}

/// The reserve kept on a disk of `total` bytes when `at_most` is asked for: never more than a
/// quarter of the disk, so a small disk is not all reserve.
pub fn reserve_on(at_most: u64, total: u64) -> u64 {
    at_most.min(total / 4)
}

/// Bytes that may still be written before a reserve, and when they were measured: what the
/// engine's write reserve and a filesystem's reserve admit writes against without measuring the
/// disk (or asking a server) for every one.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpaceBudget(Option<(Instant, u64)>);

impl SpaceBudget {
    /// How long a measured budget is trusted while writes are taken from it.
    pub const TRUSTED: Duration = Duration::from_secs(1);

    /// Takes `adding` bytes from the budget. While it is younger than [`Self::TRUSTED`] and holds
    /// them nothing is measured; otherwise `writable()` (what may be written beyond the reserve
    /// now) is. `Ok(false)` if they do not fit even then: the budget is dropped, so the next
    /// request measures again and sees at once any space that came back.
    pub fn take<E>(
        &mut self,
        adding: u64,
        writable: impl FnOnce() -> std::result::Result<u64, E>,
    ) -> std::result::Result<bool, E> {
        if let Some((at, left)) = self.0 {
            if at.elapsed() < Self::TRUSTED && left >= adding {
                self.0 = Some((at, left - adding));
                return Ok(true);
            }
        }
        let left = writable()?;
        if left < adding {
            self.0 = None;
            return Ok(false);
        }
        self.0 = Some((Instant::now(), left - adding));
        Ok(true)
    }

    /// The bytes left, if measured (for tests and status).
    pub fn left(&self) -> Option<u64> {
        self.0.map(|(_, left)| left)
    }

    /// A budget of `left` bytes measured now.
    pub fn measured_now(left: u64) -> SpaceBudget {
        SpaceBudget(Some((Instant::now(), left)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_trusted_while_it_lasts_and_measured_again_before_a_refusal() {
        let mut b = SpaceBudget::default();
        assert_eq!(b.take(10, || Ok::<_, ()>(25)), Ok(true));
        assert_eq!(
            b.take(15, || -> std::result::Result<u64, ()> {
                panic!("measured")
            }),
            Ok(true)
        );
        assert_eq!(b.left(), Some(0));
        // Short: measured again, and still short, so dropped.
        assert_eq!(b.take(1, || Ok::<_, ()>(0)), Ok(false));
        assert_eq!(b.left(), None);
        // Space came back: seen at once.
        assert_eq!(b.take(1, || Ok::<_, ()>(5)), Ok(true));
        assert_eq!(b.take(1, || Err("gone")), Ok(true), "trusted, not asked");
        assert_eq!(reserve_on(64, 400), 64);
        assert_eq!(reserve_on(u64::MAX, 400), 100);
    }

    #[test]
    fn a_store_space_is_bounded_by_its_limit_and_its_disk() {
        let s = StoreSpace {
            limit: Some(100),
            used: 60,
            disk_free: 1000,
            disk_total: Some(5000),
        };
        assert_eq!((s.available(), s.total()), (40, 100));
        let s = StoreSpace { disk_free: 10, ..s };
        assert_eq!(s.available(), 10, "the disk fills first");
        let s = StoreSpace { used: 150, ..s };
        assert_eq!(s.available(), 0, "a limit lowered below what is used");
        let s = StoreSpace {
            limit: None,
            used: 60,
            disk_free: 1000,
            disk_total: Some(5000),
        };
        assert_eq!((s.available(), s.total()), (1000, 5000));
        let s = StoreSpace {
            disk_total: None,
            ..s
        };
        assert_eq!(
            s.total(),
            1060,
            "used plus free when the disk's size is unknown"
        );
    }

    #[test]
    fn a_directory_has_figures_in_order_and_a_missing_path_is_an_error() {
        let dir = std::env::temp_dir();
        let d = DiskSpace::of(&dir).expect("statvfs of the temp dir");
        assert!(
            d.available <= d.free && d.free <= d.total && d.total > 0,
            "{d:?}"
        );
        assert!(DiskSpace::of(Path::new("/no/such/dir/for/qsfs")).is_err());
    }
}
