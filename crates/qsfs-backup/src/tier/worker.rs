//! The offload worker: uploads, verification, manifests, cold deletes, GC.

use std::sync::Arc;

use qsfs_store::Engine;

use super::Shared;

/// The worker thread's body.
pub(crate) fn run(_shared: Arc<Shared>) {}

/// True when nothing is left to upload.
pub(crate) fn is_idle(_shared: &Shared, _engine: &Engine) -> bool {
    false
}
