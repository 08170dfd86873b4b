//! Errors of the filesystem layer, and the one function that turns any of them into an errno.
//!
//! Policy: a POSIX answer the filesystem itself decides (no such name, not empty, exists, ...) is
//! [`FsError::Errno`]. Anything the Store says is carried as [`FsError::Store`] and becomes an
//! errno in [`errno`] alone. A store failure is never reported as `ENOENT`: an outage or a lost
//! record must not look like a deletion, so those become `EIO`.

use libc::c_int;

/// An error of a filesystem operation.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A POSIX error decided by the filesystem (`ENOENT`, `ENOTEMPTY`, ...).
    #[error("errno {0}")]
    Errno(c_int),
    /// The Store failed.
    #[error(transparent)]
    Store(#[from] qsfs_core::Error),
    /// The operation needs a record from the Store and was run in the mode that must not wait
    /// for one ([`crate::Fs::without_fetch`]); it changed nothing and is run again once the
    /// record is fetched. Never reaches the kernel.
    #[error("needs a record from the store")]
    WouldWait,
}

impl FsError {
    /// A record that does not decode or whose checksum fails.
    pub fn corrupt(what: &str, detail: impl Into<String>) -> Self {
        FsError::Store(qsfs_core::Error::corrupt(what, detail))
    }
}

impl From<FsError> for qsfs_core::Error {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Store(e) => e,
            FsError::Errno(n) => qsfs_core::Error::Io {
                context: "filesystem".into(),
                source: std::io::Error::from_raw_os_error(n),
            },
            FsError::WouldWait => qsfs_core::Error::Io {
                context: "filesystem".into(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            },
        }
    }
}

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

/// The errno the kernel gets for `e`.
pub fn errno(e: &FsError) -> c_int {
    use qsfs_core::Error as E;
    match e {
        FsError::Errno(n) => *n,
        FsError::WouldWait => libc::EIO,
        FsError::Store(e) => match e {
            E::AlreadyExists(_) => libc::EEXIST,
            E::PermissionDenied(_) => libc::EACCES,
            E::ReadOnly { .. } => libc::EROFS,
            E::NoSpace(_) => libc::ENOSPC,
            E::InvalidArgument(_) => libc::EINVAL,
            E::Unsupported(_) => libc::EOPNOTSUPP,
            E::TooLarge { .. } => libc::EFBIG,
            E::Io { source, .. } => match source.raw_os_error() {
                Some(n) if n != libc::ENOENT && n != 0 => n,
                _ => libc::EIO,
            },
            // NotFound from a Store call means a record the layout needs is gone; Corrupt,
            // Unavailable and Timeout are failures of the store: all are EIO, never ENOENT.
            _ => libc::EIO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_outage_is_eio_not_enoent() {
        let down = FsError::Store(qsfs_core::Error::Unavailable("store".into()));
        assert_eq!(errno(&down), libc::EIO);
        let gone = FsError::Store(qsfs_core::Error::NotFound("ns".into()));
        assert_eq!(errno(&gone), libc::EIO);
        let late = FsError::Store(qsfs_core::Error::Timeout("get".into()));
        assert_eq!(errno(&late), libc::EIO);
        let io = FsError::Store(qsfs_core::Error::Io {
            context: "x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert_eq!(errno(&io), libc::EIO);
    }

    #[test]
    fn policy_errors_keep_their_meaning() {
        assert_eq!(errno(&FsError::Errno(libc::ENOTEMPTY)), libc::ENOTEMPTY);
        assert_eq!(
            errno(&FsError::Store(qsfs_core::Error::NoSpace("disk".into()))),
            libc::ENOSPC
        );
        let ro = qsfs_core::Error::ReadOnly {
            reason: qsfs_core::ReadOnlyReason::Locked,
            what: "ns".into(),
        };
        assert_eq!(errno(&FsError::Store(ro)), libc::EROFS);
    }
}
