//! An in-memory backend for tests, with switches that simulate a dead or hanging node.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use qsfs_core::{check_object_key, slice_range, Backend, Error, Health, Result};

const UP: u8 = 0;
const DOWN: u8 = 1;
const HANG: u8 = 2;
const FULL: u8 = 3;

/// A blob store in memory. Clones share the same contents and switches, so a test can keep a
/// handle to a backend it gave to a pipeline and break it later.
#[derive(Clone, Debug)]
pub struct Memory {
    name: String,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    blobs: Mutex<BTreeMap<String, Bytes>>,
    mode: AtomicU8,
    lists: AtomicUsize,
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new("memory")
    }
}

impl Memory {
    /// An empty, healthy backend called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Memory {
            name: name.into(),
            inner: Arc::new(Inner::default()),
        }
    }

    /// The same blobs under another name: one backend reached by another spelling of its
    /// address, as a config edited or read from elsewhere gives it.
    pub fn renamed(&self, name: impl Into<String>) -> Self {
        Memory {
            name: name.into(),
            inner: self.inner.clone(),
        }
    }

    /// Makes every call fail with [`Error::Unavailable`] (`true`) or work again (`false`).
    pub fn set_down(&self, down: bool) {
        self.inner
            .mode
            .store(if down { DOWN } else { UP }, Ordering::SeqCst);
    }

    /// Makes every call, including [`Backend::health`], wait forever, like a node that accepts
    /// connections and never answers.
    pub fn set_hanging(&self, hang: bool) {
        self.inner
            .mode
            .store(if hang { HANG } else { UP }, Ordering::SeqCst);
    }

    /// Makes every write fail with [`Error::NoSpace`] (`true`) while reads go on, like a node
    /// whose disk is full, or work again (`false`).
    pub fn set_full(&self, full: bool) {
        self.inner
            .mode
            .store(if full { FULL } else { UP }, Ordering::SeqCst);
    }

    /// Number of blobs held.
    pub fn len(&self) -> usize {
        self.inner.blobs.lock().len()
    }

    /// True if no blob is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times it was asked to list keys (a listing is what a 0-db node answers by
    /// scanning every key it holds).
    pub fn list_calls(&self) -> usize {
        self.inner.lists.load(Ordering::SeqCst)
    }

    /// Every key held, whatever the switches say (for tests that inspect placement).
    pub fn keys(&self) -> Vec<String> {
        self.inner.blobs.lock().keys().cloned().collect()
    }

    /// Changes a stored blob in place, bypassing the switches (for corruption tests).
    pub fn tamper(&self, key: &str, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut blobs = self.inner.blobs.lock();
        match blobs.get_mut(key) {
            Some(b) => {
                let mut v = b.to_vec();
                f(&mut v);
                *b = Bytes::from(v);
                true
            }
            None => false,
        }
    }

    /// Removes every blob (a node that came back with empty storage).
    pub fn wipe(&self) {
        self.inner.blobs.lock().clear();
    }

    async fn gate(&self) -> Result<()> {
        match self.inner.mode.load(Ordering::SeqCst) {
            UP | FULL => Ok(()),
            DOWN => Err(Error::Unavailable(format!("{} is down", self.name))),
            _ => {
                // A node that never answers: only a caller's timeout ends this.
                std::future::pending::<()>().await;
                Err(Error::Timeout(self.name.clone()))
            }
        }
    }
}

#[async_trait]
impl Backend for Memory {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        check_object_key(key)?;
        self.gate().await?;
        if self.inner.mode.load(Ordering::SeqCst) == FULL {
            return Err(Error::NoSpace(format!("{} is full", self.name)));
        }
        self.inner.blobs.lock().insert(key.to_string(), data);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        check_object_key(key)?;
        self.gate().await?;
        self.inner
            .blobs
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("{}: {key}", self.name)))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let all = self.get(key).await?;
        Ok(slice_range(&all, range))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_object_key(key)?;
        self.gate().await?;
        self.inner.blobs.lock().remove(key);
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        check_object_key(key)?;
        self.gate().await?;
        Ok(self.inner.blobs.lock().contains_key(key))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        check_object_key(key)?;
        self.gate().await?;
        Ok(self.inner.blobs.lock().get(key).map(|b| b.len() as u64))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.lists.fetch_add(1, Ordering::SeqCst);
        self.gate().await?;
        let blobs = self.inner.blobs.lock();
        Ok(blobs
            .range(prefix.to_string()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn health(&self) -> Health {
        let start = Instant::now();
        match self.gate().await {
            Ok(()) => {
                let used: u64 = self
                    .inner
                    .blobs
                    .lock()
                    .values()
                    .map(|b| b.len() as u64)
                    .sum();
                let mut h = Health::up(start.elapsed().max(Duration::from_nanos(1)));
                h.used_bytes = Some(used);
                h
            }
            Err(e) => Health::down(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        qsfs_core::testing::backend::run(&Memory::new("mem")).await;
    }

    #[tokio::test]
    async fn down_switch() {
        let m = Memory::new("m");
        m.put("a", Bytes::from_static(b"1")).await.expect("put");
        m.set_down(true);
        assert!(m.get("a").await.expect_err("down").is_retryable());
        assert_eq!(m.health().await.status, qsfs_core::HealthStatus::Down);
        m.set_down(false);
        assert_eq!(
            m.get("a").await.expect("up again"),
            Bytes::from_static(b"1")
        );
    }

    #[tokio::test]
    async fn hanging_never_answers() {
        let m = Memory::new("m");
        m.set_hanging(true);
        let r = tokio::time::timeout(Duration::from_millis(50), m.get("a")).await;
        assert!(r.is_err(), "a hanging backend must not answer");
    }
}
