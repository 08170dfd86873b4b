//! Rebuilding an engine directory from the backends alone.

use std::path::Path;
use std::time::{Duration, Instant};

use qsfs_core::{Backend, Error, Result};
use qsfs_store::{Engine, Manifest};
use serde::{Deserialize, Serialize};

use super::SEAL_KEY;
use crate::pipeline::Pipeline;

/// What [`recover`] rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverReport {
    /// Namespaces restored.
    pub namespaces: u64,
    /// Segments they reference (all left in the backends, fetched on read).
    pub segments: u64,
    /// Bytes of those segments.
    pub logical_bytes: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Creates the engine directory `engine_dir` (absent or empty) from the manifests and the seal
/// key in the backends. Reads the manifest objects and the key only, never segment data, so
/// the time does not depend on how much data there is; every segment stays in the backends and
/// is fetched when read.
pub async fn recover(pipeline: &Pipeline, engine_dir: &Path) -> Result<RecoverReport> {
    let start = Instant::now();
    let names = pipeline.list("manifests/").await?;
    let fetched = futures::future::join_all(names.iter().map(|n| pipeline.get(n))).await;
    let mut manifests = Vec::with_capacity(names.len());
    for (name, bytes) in names.iter().zip(fetched) {
        let bytes = bytes?;
        let m = Manifest::from_bytes(&bytes)?;
        if super::manifest_key(&m.namespace) != *name {
            return Err(Error::corrupt(
                name.clone(),
                format!("holds the manifest of namespace {:?}", m.namespace),
            ));
        }
        manifests.push(m);
    }
    if manifests.is_empty() {
        return Err(Error::NotFound(
            "no namespace manifest in the backends: nothing to recover".into(),
        ));
    }
    let key = match pipeline.get(SEAL_KEY).await {
        Ok(k) => zeroize::Zeroizing::new(k.to_vec()),
        Err(Error::NotFound(_)) => {
            return Err(Error::NotFound(format!(
                "{SEAL_KEY} is not in the backends: the tier never finished its first upload"
            )))
        }
        Err(e) => return Err(e),
    };
    let dir = engine_dir.to_path_buf();
    let report = RecoverReport {
        namespaces: manifests.len() as u64,
        segments: manifests.iter().map(|m| m.segments.len() as u64).sum(),
        logical_bytes: manifests
            .iter()
            .flat_map(|m| m.segments.iter().map(|s| s.1))
            .sum(),
        elapsed: Duration::ZERO,
    };
    tokio::task::spawn_blocking(move || Engine::restore(&dir, &key, &manifests))
        .await
        .map_err(|e| Error::Unavailable(format!("restore task: {e}")))??;
    Ok(RecoverReport {
        elapsed: start.elapsed(),
        ..report
    })
}
