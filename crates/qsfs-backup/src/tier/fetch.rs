//! The engine's cold tier: range reads over the pipeline, stripe by stripe, with a shared cache.
//!
//! A read of bytes `a..b` of a segment object fetches only the stripes covering them. Decoded
//! stripes are kept in a byte-weighted cache keyed by (object id, stripe): the object id
//! changes whenever a name is stored again, so a cached stripe can never be stale data of a
//! replaced object. Records are cached by name, since a segment object never changes; a read
//! that fails drops the cached record and tries once more with a fresh one (the object may
//! have been stored again, with new shards). Concurrent readers of one stripe share a single
//! fetch. Every stripe is verified by the pipeline (shard SHA-256s, AEAD, plaintext checksum)
//! before it is cached, so corrupt shards decode through Reed-Solomon or fail: never wrong data.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;
use qsfs_core::{check_object_key, Backend, Error, Health, Result};

use super::metrics::TierMetrics;
use crate::metadata::ObjectRecord;
use crate::pipeline::Pipeline;

/// Records kept (they are small; segment objects are few).
const RECORD_CAPACITY: u64 = 16 * 1024;

/// The fetch-back cache: a [`Backend`] over a [`Pipeline`] for the engine's cold tier.
pub struct FetchCache {
    pipeline: Arc<Pipeline>,
    records: Cache<String, Arc<ObjectRecord>>,
    stripes: Cache<([u8; 16], u64), Bytes>,
    metrics: Arc<TierMetrics>,
}

impl std::fmt::Debug for FetchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchCache")
            .field("stripes", &self.stripes.entry_count())
            .field("bytes", &self.stripes.weighted_size())
            .finish()
    }
}

/// A shared error back as an owned one, keeping its kind (the engine tells "not found" from
/// "unavailable").
fn unshare(e: Arc<Error>) -> Error {
    match Arc::try_unwrap(e) {
        Ok(e) => e,
        Err(a) => match &*a {
            Error::NotFound(s) => Error::NotFound(s.clone()),
            Error::Timeout(s) => Error::Timeout(s.clone()),
            Error::InvalidArgument(s) => Error::InvalidArgument(s.clone()),
            Error::Corrupt { location, detail } => Error::Corrupt {
                location: location.clone(),
                detail: detail.clone(),
            },
            other => Error::Unavailable(other.to_string()),
        },
    }
}

impl FetchCache {
    /// A cache over `pipeline` keeping up to `capacity_bytes` of decoded stripes.
    pub fn new(pipeline: Arc<Pipeline>, capacity_bytes: u64, metrics: Arc<TierMetrics>) -> Self {
        FetchCache {
            pipeline,
            records: Cache::builder().max_capacity(RECORD_CAPACITY).build(),
            stripes: Cache::builder()
                .max_capacity(capacity_bytes)
                .weigher(|_, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .build(),
            metrics,
        }
    }

    /// Forgets the record of `key` (it was stored again or deleted).
    pub async fn invalidate(&self, key: &str) {
        self.records.invalidate(key).await;
    }

    async fn record(&self, key: &str) -> Result<Arc<ObjectRecord>> {
        let p = self.pipeline.clone();
        let k = key.to_string();
        self.records
            .entry(key.to_string())
            .or_try_insert_with(async move { p.record(&k).await.map(Arc::new) })
            .await
            .map(|e| e.into_value())
            .map_err(unshare)
    }

    async fn stripe(&self, rec: &Arc<ObjectRecord>, i: u64) -> Result<Bytes> {
        let p = self.pipeline.clone();
        let r = rec.clone();
        let entry = self
            .stripes
            .entry((rec.object_id, i))
            .or_try_insert_with(async move { p.read_stripe(&r, i).await })
            .await
            .map_err(unshare)?;
        if entry.is_fresh() {
            TierMetrics::add(&self.metrics.cache_misses, 1);
            TierMetrics::add(&self.metrics.bytes_fetched, entry.value().len() as u64);
        } else {
            TierMetrics::add(&self.metrics.cache_hits, 1);
        }
        Ok(entry.into_value())
    }

    async fn read(&self, rec: &Arc<ObjectRecord>, range: Range<u64>) -> Result<Bytes> {
        let start = range.start.min(rec.size);
        let end = range.end.min(rec.size).max(start);
        if start == end {
            return Ok(Bytes::new());
        }
        let ss = u64::from(rec.stripe_size);
        let (first, last) = (start / ss, (end - 1) / ss);
        if first == last {
            let s = self.stripe(rec, first).await?;
            let a = (start - first * ss) as usize;
            let b = ((end - first * ss) as usize).min(s.len());
            return Ok(s.slice(a.min(b)..b));
        }
        let stripes =
            futures::future::try_join_all((first..=last).map(|i| self.stripe(rec, i))).await?;
        let mut out = Vec::with_capacity((end - start) as usize);
        for (n, s) in stripes.iter().enumerate() {
            let base = (first + n as u64) * ss;
            let a = start.saturating_sub(base) as usize;
            let b = ((end - base) as usize).min(s.len());
            out.extend_from_slice(&s[a.min(b)..b]);
        }
        Ok(Bytes::from(out))
    }
}

#[async_trait]
impl Backend for FetchCache {
    fn name(&self) -> String {
        format!("fetch-cache({})", self.pipeline.name())
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let r = self.pipeline.put(key, data).await;
        self.invalidate(key).await;
        r
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        // Whole objects (segment restores) are rare and big: streamed and verified as a whole
        // by the pipeline rather than pushed through the stripe cache.
        self.pipeline.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        check_object_key(key)?;
        let rec = self.record(key).await?;
        match self.read(&rec, range.clone()).await {
            Ok(b) => Ok(b),
            Err(e) => {
                tracing::debug!(key, error = %e, "cold read failed; retrying with a fresh record");
                self.invalidate(key).await;
                let fresh = self.record(key).await?;
                self.read(&fresh, range).await
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let r = self.pipeline.delete(key).await;
        self.invalidate(key).await;
        r
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.pipeline.exists(key).await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        self.pipeline.size(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.pipeline.list(prefix).await
    }

    async fn health(&self) -> Health {
        self.pipeline.health().await
    }
}
