//! The figures of the disk holding a path: what the engine's low-space mode and a filesystem's
//! reserve are measured against.

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

#[cfg(test)]
mod tests {
    use super::*;

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
