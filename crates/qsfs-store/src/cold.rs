//! The bridge from the synchronous engine to the asynchronous cold tier.
//!
//! The engine is synchronous and may be called from any thread, including a thread of the
//! caller's own tokio runtime, where `block_on` would panic. So the cold tier gets a small runtime
//! of its own; a read is spawned there and the calling thread waits on a channel with a time-out.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qsfs_core::{Backend, Error, Result};

/// Cold-tier object key of a segment: `segments/<hex of namespace name>/<id, 10 digits>.seg`.
/// The name is hex-encoded because namespace names may hold bytes object keys may not.
pub fn cold_key(ns: &str, segment: u32) -> String {
    format!("segments/{}/{segment:010}.seg", hex::encode(ns.as_bytes()))
}

/// A cold tier with its private runtime.
pub(crate) struct ColdTier {
    backend: Arc<dyn Backend>,
    runtime: Option<tokio::runtime::Runtime>,
    timeout: Duration,
}

impl std::fmt::Debug for ColdTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ColdTier({})", self.backend.name())
    }
}

impl ColdTier {
    /// Wraps `backend`.
    pub fn new(backend: Arc<dyn Backend>, timeout: Duration) -> Result<ColdTier> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("qsfs-cold-tier")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start cold-tier runtime", e))?;
        Ok(ColdTier {
            backend,
            runtime: Some(runtime),
            timeout,
        })
    }

    fn run<T: Send + 'static>(
        &self,
        what: String,
        f: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let rt = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Unavailable("cold tier shut down".into()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        match rx.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Error::Timeout(what)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(Error::Unavailable(format!("{what}: cold-tier task failed")))
            }
        }
    }

    /// Bytes `range` of `key`, exactly: a short answer is an error, not a short read.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let b = self.backend.clone();
        let k = key.to_string();
        let want = range.end - range.start;
        let r = range.clone();
        let data = self.run(
            format!("cold tier {} {key}", self.backend.name()),
            async move { b.get_range(&k, r).await },
        )?;
        if data.len() as u64 != want {
            return Err(Error::corrupt(
                format!("cold tier {} {key} @ {}", self.backend.name(), range.start),
                format!("asked for {want} bytes, got {}", data.len()),
            ));
        }
        Ok(data)
    }

    /// The whole object.
    pub fn get(&self, key: &str) -> Result<Bytes> {
        let b = self.backend.clone();
        let k = key.to_string();
        self.run(
            format!("cold tier {} {key}", self.backend.name()),
            async move { b.get(&k).await },
        )
    }

    /// True if the object exists.
    pub fn exists(&self, key: &str) -> Result<bool> {
        let b = self.backend.clone();
        let k = key.to_string();
        self.run(
            format!("cold tier {} {key}", self.backend.name()),
            async move { b.exists(&k).await },
        )
    }
}

impl Drop for ColdTier {
    fn drop(&mut self) {
        // Dropping a runtime inside an async context panics; shutting it down in the background
        // does not, and the engine may be dropped from a task.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
