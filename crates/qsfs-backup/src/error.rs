//! Errors of the backup pipeline.
//!
//! # Error policy
//!
//! * [`BackupError::WrongKey`]: the passphrase, key file or hex key does not open the
//!   repository. Permanent; the user must supply the right secret. Converts to
//!   `PermissionDenied`.
//! * [`BackupError::Tampered`]: an authenticated structure (metadata record, stripe) failed its
//!   check although the key is right: swapped, replayed or modified data. Never retried, never
//!   ignored; converts to `Corrupt` naming where.
//! * [`BackupError::Insufficient`]: fewer than k good shards of a stripe. Names every shard that is
//!   missing or bad and where it was expected; converts to `Unavailable` when only unreachable
//!   backends are to blame (retrying later may help) and to `Corrupt` otherwise.
//! * [`BackupError::Placement`] and [`BackupError::Config`]: the policy cannot be met with the
//!   backends given (or reachable); the message says why and which backends are down.
//! * Everything else is a [`qsfs_core::Error`] passed through unchanged (`Core`).
//!
//! Messages never contain key material or backend passwords.

use qsfs_core::Error;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the backup pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The supplied secret does not open the repository's master key.
    #[error("wrong passphrase or key: the repository key cannot be unwrapped")]
    WrongKey,
    /// Authenticated data failed verification (swapped, replayed or modified).
    #[error("tampered or corrupt {what}: {detail}")]
    Tampered {
        /// What failed (e.g. `metadata record meta/ab12…/00000003 on local:/m1`).
        what: String,
        /// Why it is rejected.
        detail: String,
    },
    /// A stripe has fewer than k usable shards.
    #[error("object {object}: stripe {stripe} has {have} usable shards, needs {need}; missing or bad: {missing}")]
    Insufficient {
        /// The object's name.
        object: String,
        /// The stripe index.
        stripe: u64,
        /// Usable shards found.
        have: usize,
        /// Shards needed (k).
        need: usize,
        /// Each missing or bad shard with its backend and reason.
        missing: String,
        /// True when every failure was an unreachable backend (so a retry may help).
        transient: bool,
    },
    /// A repair re-created what it could, but some shards remain lost or unverified.
    #[error("object {object}: partial repair, still degraded: {rewritten} shard(s) re-created, {unplaced} lost shard(s) could not be placed on a healthy backend under the policy, {not_verified} shard(s) not verified (left in place); unreachable backends: {unreachable}")]
    PartialRepair {
        /// The object's name.
        object: String,
        /// Shards re-created.
        rewritten: usize,
        /// Missing or corrupt shards that could not be re-created anywhere.
        unplaced: usize,
        /// Shards on unreachable backends left in place.
        not_verified: usize,
        /// The backends that did not answer, comma-separated.
        unreachable: String,
    },
    /// No placement satisfies the policy.
    #[error("placement impossible: {0}")]
    Placement(String),
    /// The configuration is invalid.
    #[error("invalid backup config: {0}")]
    Config(String),
    /// Not enough metadata backends answered to form a quorum.
    #[error("metadata quorum not reached: {0}")]
    NoQuorum(String),
}

impl From<BackupError> for Error {
    fn from(e: BackupError) -> Self {
        let msg = e.to_string();
        match e {
            BackupError::WrongKey => Error::PermissionDenied(msg),
            BackupError::Tampered { what, detail } => Error::corrupt(what, detail),
            BackupError::Insufficient {
                transient: true, ..
            } => Error::Unavailable(msg),
            BackupError::Insufficient { object, .. } => {
                Error::corrupt(format!("object {object}"), msg)
            }
            BackupError::Placement(_)
            | BackupError::NoQuorum(_)
            | BackupError::PartialRepair { .. } => Error::Unavailable(msg),
            BackupError::Config(_) => Error::InvalidArgument(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_the_kind() {
        assert!(matches!(
            Error::from(BackupError::WrongKey),
            Error::PermissionDenied(_)
        ));
        let e: Error = BackupError::Tampered {
            what: "record x".into(),
            detail: "bad tag".into(),
        }
        .into();
        assert!(matches!(e, Error::Corrupt { .. }));
        let e: Error = BackupError::Insufficient {
            object: "o".into(),
            stripe: 0,
            have: 1,
            need: 2,
            missing: "shard 1 on b: down".into(),
            transient: true,
        }
        .into();
        assert!(e.is_retryable());
        assert!(e.to_string().contains("shard 1 on b"));
    }
}
