//! The one error type every qsfs layer converts into.
//!
//! # Error policy
//!
//! Each variant is something a caller can act on:
//!
//! * **Permanent, caller's fault**: [`Error::InvalidArgument`], [`Error::TooLarge`],
//!   [`Error::AlreadyExists`], [`Error::NotFound`]. Retrying the same call gives the same answer.
//! * **Permanent, policy**: [`Error::PermissionDenied`], [`Error::ReadOnly`] (with the
//!   [`ReadOnlyReason`]), [`Error::NoSpace`]. The call may succeed after an operator changes
//!   something (a password, a property, free space).
//! * **Data problems**: [`Error::Corrupt`] always names *where* (file and offset, backend and
//!   shard, ...). qsfs never returns wrong data silently: a failed checksum is this error.
//! * **Transient**: [`Error::Unavailable`] and [`Error::Timeout`] are worth a retry with back-off
//!   ([`Error::is_retryable`]); a backend that is down or slow reports these.
//! * [`Error::Io`] wraps an operating-system error that fits nothing above.
//!
//! Each crate has its own narrower error enum that converts into this one with `From`, so a
//! program that embeds several layers handles a single type.

use std::fmt;

/// Result alias used across qsfs.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a write was refused on something that can otherwise be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReadOnlyReason {
    /// The caller's session only has read access (e.g. a public namespace selected without
    /// its password).
    Session,
    /// The namespace is in write-once mode: no overwrite, no delete.
    Worm,
    /// The namespace is temporarily locked: reads work, writes do not.
    Locked,
    /// The namespace is frozen: neither reads nor writes work.
    Frozen,
    /// The object is sealed or offloaded and immutable.
    Sealed,
}

impl fmt::Display for ReadOnlyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadOnlyReason::Session => "read-only session",
            ReadOnlyReason::Worm => "write-once (worm) mode",
            ReadOnlyReason::Locked => "locked",
            ReadOnlyReason::Frozen => "frozen",
            ReadOnlyReason::Sealed => "sealed",
        })
    }
}

/// The error type of every qsfs trait and crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key, namespace, object or file does not exist (or was deleted).
    #[error("not found: {0}")]
    NotFound(String),
    /// Something with this name already exists and may not be replaced.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The caller lacks the right (wrong or missing password, not admin, ...).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The target refuses writes for the given reason.
    #[error("{what} is {reason}")]
    ReadOnly {
        /// Why writes are refused.
        reason: ReadOnlyReason,
        /// What was being written (a namespace name, a path, ...).
        what: String,
    },
    /// A quota or the disk is full.
    #[error("no space left: {0}")]
    NoSpace(String),
    /// Stored data failed its checksum or does not parse. `location` says where, so an operator
    /// can find it (for example `segment default/00000003.seg @ 4096`).
    #[error("corrupt data at {location}: {detail}")]
    Corrupt {
        /// Where the corruption was found.
        location: String,
        /// What is wrong there.
        detail: String,
    },
    /// A value, key or name is larger than its limit.
    #[error("{what} too large: {len} bytes, limit {max}")]
    TooLarge {
        /// What was too large ("key", "value", "namespace name").
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The request is malformed (empty key where one is needed, a name with `/`, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A dependency (backend, remote server, cold tier) cannot be reached now. Retryable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A dependency did not answer in time. Retryable.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The operation is not supported by this implementation or in this mode.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An operating-system I/O error that fits no other variant.
    #[error("i/o error: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True for errors that may go away if the same call is retried later (with back-off).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout(_))
    }

    /// True if this is [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    /// The message without its kind's prefix (`unavailable: `, `timed out: `), for an error
    /// quoted inside another of the same kind: "unavailable: node is down (refused)" rather
    /// than "unavailable: node is down (unavailable: refused)".
    pub fn detail(&self) -> String {
        match self {
            Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::PermissionDenied(m)
            | Error::NoSpace(m)
            | Error::InvalidArgument(m)
            | Error::Unavailable(m)
            | Error::Timeout(m)
            | Error::Unsupported(m) => m.clone(),
            other => other.to_string(),
        }
    }

    /// Wraps an I/O error with what was being done, mapping the kinds that have a variant of
    /// their own (a full disk becomes [`Error::NoSpace`], a missing file [`Error::NotFound`]).
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        match source.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(context),
            std::io::ErrorKind::StorageFull => Error::NoSpace(format!("{context}: {source}")),
            std::io::ErrorKind::TimedOut => Error::Timeout(format!("{context}: {source}")),
            std::io::ErrorKind::PermissionDenied => {
                Error::PermissionDenied(format!("{context}: {source}"))
            }
            _ if source.raw_os_error() == Some(28) => {
                Error::NoSpace(format!("{context}: {source}"))
            }
            _ => Error::Io { context, source },
        }
    }

    /// Builds a [`Error::Corrupt`].
    pub fn corrupt(location: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            location: location.into(),
            detail: detail.into(),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io("i/o", e)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn detail_drops_the_kind_only() {
        use super::Error;
        assert_eq!(
            Error::Unavailable("node refused".into()).detail(),
            "node refused"
        );
        assert_eq!(Error::Timeout("put took 2s".into()).detail(), "put took 2s");
        let io = Error::io("open f", std::io::Error::from_raw_os_error(21));
        assert_eq!(io.detail(), io.to_string());
    }

    use super::*;

    #[test]
    fn full_disk_maps_to_no_space() {
        let e = Error::io("append", std::io::Error::from_raw_os_error(28));
        assert!(matches!(e, Error::NoSpace(_)), "{e:?}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn unavailable_is_retryable() {
        assert!(Error::Unavailable("node 3".into()).is_retryable());
        assert!(!Error::NotFound("k".into()).is_retryable());
    }

    #[test]
    fn corrupt_names_location() {
        let e = Error::corrupt("seg 3 @ 4096", "crc mismatch");
        assert_eq!(e.to_string(), "corrupt data at seg 3 @ 4096: crc mismatch");
    }
}
