//! The qsfs root directory (`~/.threefold` by default) that holds config, engine data and the
//! default local backends.

use std::path::PathBuf;

/// Resolves the root: `--root`, else `QSFS_ROOT` (handled by clap's `env`), else
/// `~/.threefold`.
pub fn resolve(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".threefold")
    })
}
