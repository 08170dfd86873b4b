//! Write your own storage backend: implement [`Backend`] for a toy in-memory store (a `HashMap`
//! behind a `Mutex`), prove it correct with the conformance suite every qsfs backend passes, then
//! put four of them under the backup [`Pipeline`] (encryption + 2+2 erasure coding).
//!
//! Run: `cargo run --example custom_backend`

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use qsfs::backup::crypto::{KdfParams, KeySource};
use qsfs::backup::{Pipeline, Settings};
use qsfs::core::{check_object_key, slice_range, Backend, Error, Health, Result};

/// A blob store in a `HashMap`. Whole-blob replacement under a lock makes `put` atomic.
#[derive(Debug, Default)]
struct MapBackend {
    name: String,
    blobs: Mutex<HashMap<String, Bytes>>,
}

impl MapBackend {
    fn blobs(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Bytes>>> {
        self.blobs
            .lock()
            .map_err(|_| Error::Unavailable(format!("{}: lock poisoned", self.name)))
    }
}

#[async_trait]
impl Backend for MapBackend {
    fn name(&self) -> String {
        format!("map:{}", self.name)
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        check_object_key(key)?;
        self.blobs()?.insert(key.to_string(), data);
        Ok(())
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        check_object_key(key)?;
        let found = self.blobs()?.get(key).cloned();
        found.ok_or_else(|| Error::NotFound(format!("{key} on {}", self.name())))
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        Ok(slice_range(&self.get(key).await?, range))
    }
    async fn delete(&self, key: &str) -> Result<()> {
        check_object_key(key)?;
        self.blobs()?.remove(key);
        Ok(())
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        check_object_key(key)?;
        Ok(self.blobs()?.contains_key(key))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .blobs()?
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.sort();
        Ok(keys)
    }
    async fn health(&self) -> Health {
        let t = Instant::now();
        match self.blobs() {
            Ok(_) => Health::up(t.elapsed()),
            Err(e) => Health::down(e.to_string()),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // 1. The conformance suite panics with a description on the first broken rule.
    qsfs::core::testing::backend::run(&MapBackend::default()).await;

    // 2. Four of them under the pipeline: any two may be lost.
    let leaves: Vec<Arc<MapBackend>> = (0..4)
        .map(|i| {
            Arc::new(MapBackend {
                name: format!("d{i}"),
                ..Default::default()
            })
        })
        .collect();
    let data: Vec<Arc<dyn Backend>> = leaves
        .iter()
        .map(|b| b.clone() as Arc<dyn Backend>)
        .collect();
    let meta: Vec<Arc<dyn Backend>> = (0..3)
        .map(|i| {
            Arc::new(MapBackend {
                name: format!("m{i}"),
                ..Default::default()
            }) as _
        })
        .collect();
    // Cheap key derivation keeps the example fast; use the defaults for real repositories.
    let settings = Settings {
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        ..Settings::default()
    };
    let pipeline = Pipeline::open(
        settings,
        vec![data],
        meta,
        &KeySource::passphrase("example passphrase"),
    )
    .await?;

    let payload = Bytes::from(
        (0..100_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    pipeline.put("docs/report.bin", payload.clone()).await?;
    // The leaves hold only encrypted shards, never the plaintext.
    let stored = leaves[0]
        .blobs()?
        .values()
        .any(|b| b.windows(64).any(|w| w == &payload[..64]));
    assert!(!stored, "a shard holds plaintext");

    // Lose two of the four leaves entirely: the object still reads back intact.
    leaves[1].blobs()?.clear();
    leaves[3].blobs()?.clear();
    assert_eq!(pipeline.get("docs/report.bin").await?, payload);
    assert_eq!(
        pipeline.get_range("docs/report.bin", 10..20).await?,
        payload.slice(10..20)
    );

    println!(
        "custom_backend: ok (conformance passed, {} bytes survived losing 2 of 4 backends)",
        payload.len()
    );
    Ok(())
}
