//! The figures of the disk holding a path, and of the room a store's namespace has left: what the
//! engine's low-space mode and a filesystem's reserve are measured against.

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
