//! The fetch-back cache: only the stripes a range needs, one fetch per stripe however many
//! readers wait for it, and never wrong data from damaged shards.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use crate::common;

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use qsfs_backup::backends::Memory;
use qsfs_backup::tier::{FetchCache, TierMetrics};
use qsfs_backup::Pipeline;
use qsfs_core::{Backend, Health, Result};

/// A memory backend that counts shard reads.
#[derive(Debug)]
struct Counting {
    inner: Memory,
    gets: Arc<AtomicUsize>,
}

#[async_trait]
impl Backend for Counting {
    fn name(&self) -> String {
        self.inner.name()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.inner.put(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get_range(key, range).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list(prefix).await
    }
    async fn health(&self) -> Health {
        self.inner.health().await
    }
}

const STRIPE: usize = 4096;

struct Rig {
    data: Vec<Memory>,
    gets: Arc<AtomicUsize>,
    cache: Arc<FetchCache>,
    metrics: Arc<TierMetrics>,
    object: Vec<u8>,
}

async fn rig() -> Rig {
    let gets = Arc::new(AtomicUsize::new(0));
    let data: Vec<Memory> = (0..4).map(|i| Memory::new(format!("d{i}"))).collect();
    let meta: Vec<Arc<dyn Backend>> = (0..3)
        .map(|i| Arc::new(Memory::new(format!("m{i}"))) as Arc<dyn Backend>)
        .collect();
    let group: Vec<Arc<dyn Backend>> = data
        .iter()
        .map(|m| {
            Arc::new(Counting {
                inner: m.clone(),
                gets: gets.clone(),
            }) as Arc<dyn Backend>
        })
        .collect();
    let pipeline = Pipeline::open(
        common::settings(2, 2, STRIPE),
        vec![group],
        meta,
        &common::key(),
    )
    .await
    .unwrap();
    let object = common::random_bytes(10 * STRIPE + 100, 5);
    pipeline
        .put("segments/00/0000000001.seg", Bytes::from(object.clone()))
        .await
        .unwrap();
    let metrics = Arc::new(TierMetrics::default());
    let cache = Arc::new(FetchCache::new(
        Arc::new(pipeline),
        1 << 20,
        metrics.clone(),
    ));
    gets.store(0, Ordering::SeqCst);
    Rig {
        data,
        gets,
        cache,
        metrics,
        object,
    }
}

const KEY: &str = "segments/00/0000000001.seg";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_of_one_stripe_share_one_fetch() {
    let r = rig().await;
    let readers: Vec<_> = (0..16u64)
        .map(|i| {
            let c = r.cache.clone();
            tokio::spawn(async move {
                c.get_range(KEY, 2 * 4096 + i * 10..2 * 4096 + i * 10 + 50)
                    .await
            })
        })
        .collect();
    for (i, h) in readers.into_iter().enumerate() {
        let a = 2 * STRIPE + i * 10;
        assert_eq!(h.await.unwrap().unwrap(), r.object[a..a + 50]);
    }
    // k = 2 data shards of one stripe: one fetch round.
    assert_eq!(r.gets.load(Ordering::SeqCst), 2);
    assert_eq!(TierMetrics::get(&r.metrics.cache_misses), 1);
    assert_eq!(TierMetrics::get(&r.metrics.cache_hits), 15);
}

#[tokio::test]
async fn a_range_read_fetches_only_its_stripes() {
    let r = rig().await;
    // Bytes 3.5 .. 6.5 stripes: stripes 3, 4, 5 and 6.
    let a = 3 * STRIPE + STRIPE / 2;
    let b = 6 * STRIPE + STRIPE / 2;
    let got = r.cache.get_range(KEY, a as u64..b as u64).await.unwrap();
    assert_eq!(got, r.object[a..b]);
    assert_eq!(r.gets.load(Ordering::SeqCst), 4 * 2);
    // Served again from the cache; the tail past the end is clipped.
    let got = r.cache.get_range(KEY, a as u64..b as u64).await.unwrap();
    assert_eq!(got, r.object[a..b]);
    assert_eq!(r.gets.load(Ordering::SeqCst), 4 * 2);
    let end = r.object.len() as u64;
    let got = r.cache.get_range(KEY, end - 10..end + 1000).await.unwrap();
    assert_eq!(got, r.object[r.object.len() - 10..]);
    assert_eq!(r.gets.load(Ordering::SeqCst), 5 * 2);
}

#[tokio::test]
async fn damaged_shards_decode_or_fail_never_wrong_data() {
    let r = rig().await;
    // One bad data shard of stripe 1: rebuilt from parity.
    let flip = |m: &Memory, needle: &str| {
        for k in m.keys() {
            if k.contains(needle) {
                assert!(m.tamper(&k, |v| v[10] ^= 0xff));
            }
        }
    };
    flip(&r.data[0], "/00000001.000");
    flip(&r.data[1], "/00000001.000");
    let s1 = STRIPE as u64..2 * STRIPE as u64;
    let got = r.cache.get_range(KEY, s1.clone()).await.unwrap();
    assert_eq!(got, r.object[STRIPE..2 * STRIPE]);
    // Three of four shards of stripe 2 damaged: an error, not data.
    for m in &r.data {
        for shard in ["000", "001", "002"] {
            flip(m, &format!("/00000002.{shard}"));
        }
    }
    let s2 = 2 * STRIPE as u64..3 * STRIPE as u64;
    assert!(r.cache.get_range(KEY, s2).await.is_err());
    // And a cached good stripe stays good.
    assert_eq!(
        r.cache.get_range(KEY, s1).await.unwrap(),
        r.object[STRIPE..2 * STRIPE]
    );
}
