//! The engine's side of the storage chain: segment read times, recovery manifests, restore
//! from a cold tier, compaction of offloaded segments, write backpressure and age sealing.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use qsfs_core::{Backend, Error, Health, Result, Store};
use qsfs_store::{cold_key, Durability, Engine, EngineConfig};

fn cfg() -> EngineConfig {
    EngineConfig {
        durability: Durability::None,
        max_segment_size: 64 * 1024,
        ..EngineConfig::default()
    }
}

fn val(key: u32, round: u32) -> Vec<u8> {
    let mut v = vec![0u8; 1000 + (key as usize % 7) * 100];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (key as usize * 31 + round as usize * 7 + i) as u8;
    }
    v
}

/// An in-memory cold tier that counts whole-object and range reads.
#[derive(Debug, Default)]
struct MemBackend {
    objects: Mutex<BTreeMap<String, Bytes>>,
    gets: AtomicU64,
    range_gets: AtomicU64,
}

#[async_trait]
impl Backend for MemBackend {
    fn name(&self) -> String {
        "memory".into()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.objects.lock().unwrap().insert(key.to_string(), data);
        Ok(())
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.range_gets.fetch_add(1, Ordering::SeqCst);
        let all = self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        let end = (range.end as usize).min(all.len());
        let start = (range.start as usize).min(end);
        Ok(all.slice(start..end))
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.objects.lock().unwrap().contains_key(key))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
    async fn health(&self) -> Health {
        Health::up(Duration::ZERO)
    }
}

impl MemBackend {
    fn put_file(&self, key: &str, path: &Path) {
        let data = std::fs::read(path).unwrap();
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_string(), Bytes::from(data));
    }
}

/// Copies every sealed local segment of `ns` to the cold tier and offloads it.
fn offload_all(e: &Engine, cold: &MemBackend, ns: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    for s in e.segments(ns).unwrap() {
        if s.sealed && !s.offloaded {
            cold.put_file(&cold_key(ns, s.id), &s.path);
            e.offload_segment(ns, s.id).unwrap();
            ids.push(s.id);
        }
    }
    ids
}

#[test]
fn segments_remember_when_they_were_last_read() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    for k in 0..200u32 {
        e.set("default", Some(&k.to_le_bytes()), &val(k, 0))
            .unwrap();
    }
    let before = e.segments("default").unwrap();
    assert!(before.len() >= 3);
    assert!(before.iter().all(|s| s.last_read == 0), "nothing read yet");
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    e.get("default", &0u32.to_le_bytes()).unwrap().unwrap();
    let after = e.segments("default").unwrap();
    let first = &after[0];
    assert!(first.last_read >= t0, "{} < {t0}", first.last_read);
    assert!(
        after[1..].iter().all(|s| s.last_read == 0),
        "others untouched"
    );
    // Offloading keeps the read time (eviction order must not restart).
    let cold = Arc::new(MemBackend::default());
    drop(e);
    let e = Engine::open(
        dir.path(),
        EngineConfig {
            cold_tier: Some(cold.clone()),
            ..cfg()
        },
    )
    .unwrap();
    assert!(
        e.segments("default")
            .unwrap()
            .iter()
            .all(|s| s.last_read == 0),
        "since open"
    );
    e.get("default", &0u32.to_le_bytes()).unwrap().unwrap();
    let read = e.segments("default").unwrap()[0].last_read;
    assert!(read > 0);
    offload_all(&e, &cold, "default");
    let s0 = &e.segments("default").unwrap()[0];
    assert!(s0.offloaded);
    assert_eq!(s0.last_read, read);
}
