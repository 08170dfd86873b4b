//! Errors of the storage engine.
//!
//! Every engine operation returns [`qsfs_core::Error`]; this enum names the failures that are
//! specific to the engine and converts into it, so callers handle a single type. Which variant
//! of the core error each becomes says how to react: a locked directory is
//! [`qsfs_core::Error::Unavailable`] (another process holds it; retry once it exits), a foreign
//! directory is [`qsfs_core::Error::InvalidArgument`] (point the engine elsewhere), damaged
//! metadata is [`qsfs_core::Error::Corrupt`] (an operator must look).

use std::path::PathBuf;

/// Engine-specific failures.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Another `Engine` (in this or another process) has the directory open.
    #[error("engine directory {0} is already in use by another engine (lock held)")]
    Locked(PathBuf),
    /// The directory holds files that are not a qsfs engine's.
    #[error("{0} is not a qsfs engine directory (non-empty and has no qsfs-engine marker)")]
    NotAnEngineDir(PathBuf),
    /// A directory under `ns/` exists but is not a namespace written by this engine.
    #[error("{0} exists but is not a qsfs namespace directory")]
    ForeignNamespaceDir(PathBuf),
    /// A metadata file of the engine is damaged.
    #[error("{path}: {detail}")]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The configuration is not usable.
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// A namespace was stored in a mode the engine is restricted against.
    #[error("namespace {name} is in {found} mode but this engine only allows {allowed} mode")]
    ModeMismatch {
        /// The namespace.
        name: String,
        /// Its mode.
        found: qsfs_core::Mode,
        /// The only mode allowed.
        allowed: qsfs_core::Mode,
    },
}

impl From<EngineError> for qsfs_core::Error {
    fn from(e: EngineError) -> Self {
        let msg = e.to_string();
        match e {
            EngineError::Locked(_) => qsfs_core::Error::Unavailable(msg),
            EngineError::NotAnEngineDir(_)
            | EngineError::ForeignNamespaceDir(_)
            | EngineError::Config(_)
            | EngineError::ModeMismatch { .. } => qsfs_core::Error::InvalidArgument(msg),
            EngineError::BadMetadata { path, detail } => {
                qsfs_core::Error::corrupt(path.display().to_string(), detail)
            }
        }
    }
}
