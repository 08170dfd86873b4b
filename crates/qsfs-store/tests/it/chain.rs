//! The engine's side of the storage chain: segment read times, recovery manifests, restore
//! from a cold tier, compaction of offloaded segments, write backpressure and age sealing.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use qsfs_core::{Backend, Credential, Error, Health, Mode, NamespaceProperty, Result, Store};
use qsfs_store::{cold_key, Durability, Engine, EngineConfig, EngineObserver, Manifest};

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

/// Counts observer calls by kind.
#[derive(Default)]
struct Counter {
    lines: Mutex<Vec<String>>,
    throttles: AtomicU64,
}

impl EngineObserver for Counter {
    fn on_segment_sealed(&self, ns: &str, segment: u32, _path: &Path) {
        self.lines
            .lock()
            .unwrap()
            .push(format!("sealed {ns} {segment}"));
    }
    fn on_segment_removed(&self, ns: &str, segment: u32) {
        self.lines
            .lock()
            .unwrap()
            .push(format!("removed {ns} {segment}"));
    }
    fn on_namespace_updated(&self, ns: &str) {
        self.lines.lock().unwrap().push(format!("updated {ns}"));
    }
    fn throttle(&self, ns: &str) {
        self.throttles.fetch_add(1, Ordering::SeqCst);
        self.lines.lock().unwrap().push(format!("throttle {ns}"));
    }
}

impl Counter {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

#[test]
fn manifests_follow_seals_flushes_and_property_changes() {
    let dir = tempfile::tempdir().unwrap();
    let obs = Arc::new(Counter::default());
    let config = EngineConfig {
        observer: Some(obs.clone()),
        ..cfg()
    };
    let e = Engine::open(dir.path(), config.clone()).unwrap();
    // A namespace never sealed: its manifest exists, empty.
    e.namespace_create("n").unwrap();
    let m0 = e.manifest("n").unwrap();
    assert_eq!((m0.namespace.as_str(), m0.sealed_through), ("n", None));
    assert!(m0.segments.is_empty());
    assert!(matches!(e.manifest("nope"), Err(Error::NotFound(_))));

    for k in 0..100u32 {
        e.set("n", Some(&k.to_le_bytes()), &val(k, 0)).unwrap();
    }
    let m1 = e.manifest("n").unwrap();
    assert!(m1.generation > m0.generation);
    let through = m1.sealed_through.unwrap();
    assert_eq!(m1.segments.last().unwrap().0, through);
    let stats = e.segments("n").unwrap();
    for (id, len) in &m1.segments {
        let s = stats.iter().find(|s| s.id == *id).unwrap();
        assert!(s.sealed);
        assert_eq!(s.length, *len);
    }
    // A property change bumps the generation and is announced.
    obs.take();
    e.namespace_set("n", NamespaceProperty::MaxSize(1 << 30))
        .unwrap();
    let m2 = e.manifest("n").unwrap();
    assert!(m2.generation > m1.generation);
    assert_eq!(m2.sealed_through, m1.sealed_through);
    assert_eq!(obs.take(), vec!["updated n"]);
    // Compaction does not touch the manifest (it is the state at a seal) except through the
    // seals its copies cause.
    for k in 0..100u32 {
        e.set("n", Some(&k.to_le_bytes()), &val(k, 1)).unwrap();
    }
    let m3 = e.manifest("n").unwrap();
    obs.take();
    let r = e.compact_with("n", 0.9).unwrap();
    assert!(!r.segments.is_empty());
    let seals = obs
        .take()
        .iter()
        .filter(|l| l.starts_with("sealed"))
        .count() as u64;
    let m4 = e.manifest("n").unwrap();
    if seals == 0 {
        assert_eq!(m4.to_bytes(), m3.to_bytes());
    } else {
        assert!(m4.generation > m3.generation);
    }
    let r = e.compact_with("n", 0.0).unwrap();
    assert!(r.segments.is_empty());
    let m4b = e.manifest("n").unwrap();
    assert_eq!(
        m4b.to_bytes(),
        m4.to_bytes(),
        "nothing to compact, nothing written"
    );
    // It survives a restart, and generations keep growing.
    drop(e);
    let e = Engine::open(dir.path(), config.clone()).unwrap();
    let m5 = e.manifest("n").unwrap();
    assert_eq!(m5.to_bytes(), m4.to_bytes());
    e.rotate("n").unwrap();
    let m6 = e.manifest("n").unwrap();
    assert!(m6.generation > m5.generation);
    // A flush leaves an empty manifest, so recovery cannot resurrect flushed data.
    obs.take();
    e.flush_namespace("n").unwrap();
    let m7 = e.manifest("n").unwrap();
    assert!(m7.generation > m6.generation);
    assert_eq!(m7.sealed_through, None);
    assert!(m7.segments.is_empty());
    assert!(obs.take().contains(&"updated n".to_string()));
    drop(e);
    let e = Engine::open(dir.path(), config).unwrap();
    assert_eq!(e.manifest("n").unwrap().to_bytes(), m7.to_bytes());
    assert!(e.local_bytes() > 0);
    // A namespace deleted and created again moves past the old generations.
    e.namespace_delete("n").unwrap();
    e.namespace_create("n").unwrap();
    assert!(e.manifest("n").unwrap().generation > m7.generation);
    // The exported bytes decode to the same manifest.
    let back = Manifest::from_bytes(&m6.to_bytes()).unwrap();
    assert_eq!(back.generation, m6.generation);
    assert_eq!(back.segments, m6.segments);
}

fn secure(e: &Engine, ns: &str, password: &str) -> bool {
    use sha1::Digest;
    let digest = hex::encode(sha1::Sha1::digest(
        format!("abcdef0123456789:{password}").as_bytes(),
    ));
    e.namespace_authenticate(
        ns,
        Credential::Challenge {
            nonce: "abcdef0123456789",
            digest: &digest,
        },
    )
    .unwrap()
}

#[test]
fn restore_from_manifests_serves_everything_from_the_cold_tier() {
    let src = tempfile::tempdir().unwrap();
    let cold = Arc::new(MemBackend::default());
    let config = EngineConfig {
        cold_tier: Some(cold.clone()),
        ..cfg()
    };
    let e = Engine::open(src.path(), config.clone()).unwrap();
    e.namespace_create("seq").unwrap();
    e.namespace_set("seq", NamespaceProperty::Mode(Mode::Seq))
        .unwrap();
    e.namespace_create("secret").unwrap();
    e.namespace_set(
        "secret",
        NamespaceProperty::Password(Some("hunter2".into())),
    )
    .unwrap();
    e.namespace_set("secret", NamespaceProperty::Public(false))
        .unwrap();
    // Never sealed: restored with its properties and nothing else.
    e.namespace_create("fresh").unwrap();
    e.namespace_set("fresh", NamespaceProperty::MaxSize(12345))
        .unwrap();
    e.set("fresh", Some(b"unsealed"), b"x").unwrap();
    // User keys over several segments, with history and deletions.
    for round in 0..3u32 {
        for k in 0..120u32 {
            if round == 0 || k % 3 == round {
                e.set("default", Some(&k.to_le_bytes()), &val(k, round))
                    .unwrap();
            }
        }
    }
    for k in (0..120u32).filter(|k| k % 10 == 9) {
        e.delete("default", &k.to_le_bytes()).unwrap();
    }
    let mut seq_ids = Vec::new();
    for k in 0..150u32 {
        seq_ids.push(e.set("seq", None, &val(k, 0)).unwrap().key().to_vec());
    }
    for k in 0..80u32 {
        e.set("secret", Some(format!("s{k}").as_bytes()), &val(k, 5))
            .unwrap();
    }
    for ns in ["default", "seq", "secret"] {
        e.rotate(ns).unwrap();
        assert!(e.segments(ns).unwrap().iter().filter(|s| s.sealed).count() >= 2);
    }
    // The tier's job: every sealed segment to the cold tier, some evicted locally.
    for ns in ["default", "seq", "secret"] {
        for s in e
            .segments(ns)
            .unwrap()
            .iter()
            .filter(|s| s.sealed && !s.offloaded)
        {
            cold.put_file(&cold_key(ns, s.id), &s.path);
        }
    }
    offload_all(&e, &cold, "default");
    let manifests: Vec<Vec<u8>> = e
        .namespace_list()
        .unwrap()
        .iter()
        .map(|ns| e.manifest(ns).unwrap().to_bytes())
        .collect();
    let key = e.export_seal_key().unwrap();
    assert_eq!(key.len(), 32);
    // After the last seal: by design not in any manifest.
    e.set("default", Some(b"late"), b"lost").unwrap();
    drop(e);

    let dst = tempfile::tempdir().unwrap();
    let dir = dst.path().join("engine");
    let manifests: Vec<Manifest> = manifests
        .iter()
        .map(|b| Manifest::from_bytes(b).unwrap())
        .collect();
    Engine::restore(&dir, &key, &manifests).unwrap();
    assert!(
        matches!(
            Engine::restore(&dir, &key, &manifests),
            Err(Error::InvalidArgument(_))
        ),
        "a non-empty directory is refused"
    );
    let gets = cold.gets.load(Ordering::SeqCst);
    let ranges = cold.range_gets.load(Ordering::SeqCst);
    let t = Instant::now();
    let e = Engine::open(&dir, config).unwrap();
    assert_eq!(
        cold.gets.load(Ordering::SeqCst),
        gets,
        "open fetched no whole segment"
    );
    assert_eq!(
        cold.range_gets.load(Ordering::SeqCst),
        ranges,
        "open read no segment data"
    );
    eprintln!("open after restore: {:?}", t.elapsed());
    for ns in ["default", "seq", "secret"] {
        assert!(e
            .segments(ns)
            .unwrap()
            .iter()
            .filter(|s| s.sealed)
            .all(|s| s.offloaded));
    }

    for k in 0..120u32 {
        let got = e.get("default", &k.to_le_bytes()).unwrap();
        if k % 10 == 9 {
            assert!(got.is_none(), "key {k} was deleted");
            continue;
        }
        let round = if k % 3 != 0 { k % 3 } else { 0 };
        assert_eq!(got.unwrap().value, val(k, round), "key {k}");
        if round > 0 {
            let live = e.history("default", &k.to_le_bytes(), None).unwrap();
            let old = e
                .history("default", &k.to_le_bytes(), live.previous)
                .unwrap();
            assert_eq!(old.value, val(k, 0), "history of key {k}");
        }
    }
    assert!(e.get("default", b"late").unwrap().is_none());
    for (k, id) in seq_ids.iter().enumerate() {
        assert_eq!(e.get("seq", id).unwrap().unwrap().value, val(k as u32, 0));
    }
    // Sequential ids continue after the restored ones.
    let next = e.set("seq", None, b"new").unwrap().key().to_vec();
    assert_eq!(next, (seq_ids.len() as u64).to_le_bytes());
    assert_eq!(e.get("seq", &next).unwrap().unwrap().value, b"new");
    // Passwords, plain and SECURE, and properties.
    assert!(e
        .namespace_authenticate("secret", Credential::Plain("hunter2"))
        .unwrap());
    assert!(!e
        .namespace_authenticate("secret", Credential::Plain("wrong"))
        .unwrap());
    assert!(secure(&e, "secret", "hunter2"));
    assert!(!secure(&e, "secret", "wrong"));
    assert!(!e.namespace_info("secret").unwrap().public);
    assert_eq!(e.namespace_info("fresh").unwrap().max_size, 12345);
    assert!(e.get("fresh", b"unsealed").unwrap().is_none());
    e.set("fresh", Some(b"new"), b"y").unwrap();
    for k in 0..80u32 {
        assert_eq!(
            e.get("secret", format!("s{k}").as_bytes())
                .unwrap()
                .unwrap()
                .value,
            val(k, 5)
        );
    }
    // New writes work and seal into fresh segment ids.
    for k in 0..120u32 {
        e.set("default", Some(&k.to_le_bytes()), &val(k, 9))
            .unwrap();
    }
    for k in 0..120u32 {
        assert_eq!(
            e.get("default", &k.to_le_bytes()).unwrap().unwrap().value,
            val(k, 9)
        );
    }
    let before = manifests.iter().find(|m| m.namespace == "default").unwrap();
    let after = e.manifest("default").unwrap();
    assert!(after.generation > before.generation);
    assert!(after.sealed_through > before.sealed_through);
    // Reads came by range only.
    assert_eq!(cold.gets.load(Ordering::SeqCst), gets);
    assert!(cold.range_gets.load(Ordering::SeqCst) > ranges);
    drop(e);
    // Bad input is refused.
    let other = dst.path().join("other");
    assert!(Engine::restore(&other, &key[..31], &manifests).is_err());
    let twice = [manifests[0].clone(), manifests[0].clone()];
    assert!(matches!(
        Engine::restore(&other, &key, &twice),
        Err(Error::InvalidArgument(_))
    ));
    // Nothing was left behind: a corrected restore into the same place works.
    Engine::restore(&other, &key, &manifests).unwrap();
}

#[test]
fn compaction_rewrites_offloaded_segments_from_the_cold_tier() {
    let dir = tempfile::tempdir().unwrap();
    let cold = Arc::new(MemBackend::default());
    let obs = Arc::new(Counter::default());
    let config = EngineConfig {
        cold_tier: Some(cold.clone()),
        observer: Some(obs.clone()),
        ..cfg()
    };
    let e = Engine::open(dir.path(), config.clone()).unwrap();
    for k in 0..200u32 {
        e.set("default", Some(&k.to_le_bytes()), &val(k, 0))
            .unwrap();
    }
    e.rotate("default").unwrap();
    let offloaded = offload_all(&e, &cold, "default");
    assert!(offloaded.len() >= 3);
    // A cold copy with a damaged header is left alone by compaction.
    let damaged = offloaded[1];
    {
        let mut objects = cold.objects.lock().unwrap();
        let key = cold_key("default", damaged);
        let mut bytes = objects.get(&key).unwrap().to_vec();
        bytes[3] ^= 0xff; // the segment header's magic
        objects.insert(key.clone(), Bytes::from(bytes));
    }
    // Overwrite most keys: the offloaded segments now hold mostly dead data.
    for k in (0..200u32).filter(|k| k % 10 != 0) {
        e.set("default", Some(&k.to_le_bytes()), &val(k, 1))
            .unwrap();
    }
    obs.take();
    let gets = cold.gets.load(Ordering::SeqCst);
    let r = e.compact("default").unwrap();
    assert!(cold.gets.load(Ordering::SeqCst) > gets, "fetched whole");
    let removed: Vec<String> = obs
        .take()
        .into_iter()
        .filter(|l| l.starts_with("removed"))
        .collect();
    for id in &offloaded {
        let line = format!("removed default {id}");
        if *id == damaged {
            assert!(!r.segments.contains(id), "damaged cold copy compacted");
            assert!(!removed.contains(&line));
        } else {
            assert!(
                r.segments.contains(id),
                "offloaded segment {id} not compacted: {r:?}"
            );
            assert!(removed.contains(&line), "{removed:?}");
        }
    }
    let segs = e.segments("default").unwrap();
    assert!(segs.iter().any(|s| s.id == damaged && s.offloaded));
    for id in offloaded.iter().filter(|id| **id != damaged) {
        assert!(
            !segs.iter().any(|s| s.id == *id),
            "segment {id} still listed"
        );
    }
    // Every live key still reads without the removed cold copies.
    for id in offloaded.iter().filter(|id| **id != damaged) {
        cold.objects
            .lock()
            .unwrap()
            .remove(&cold_key("default", *id));
    }
    let check = |e: &Engine| {
        for k in 0..200u32 {
            let want = if k % 10 == 0 { val(k, 0) } else { val(k, 1) };
            match e.get("default", &k.to_le_bytes()) {
                Ok(Some(v)) => assert_eq!(v.value, want, "key {k}"),
                // Live records in the damaged segment stay there.
                Err(Error::Corrupt { .. }) if k % 10 == 0 => {}
                other => panic!("key {k}: {other:?}"),
            }
        }
    };
    check(&e);
    drop(e);
    // The descriptor forgot them: reopening (index rebuilt from segments) needs none of them.
    std::fs::remove_file(dir.path().join("ns/default/index")).unwrap();
    let e = Engine::open(dir.path(), config).unwrap();
    let segs = e.segments("default").unwrap();
    for id in offloaded.iter().filter(|id| **id != damaged) {
        assert!(
            !segs.iter().any(|s| s.id == *id),
            "segment {id} back after reopen"
        );
    }
}

#[test]
fn writes_that_seal_call_throttle() {
    let dir = tempfile::tempdir().unwrap();
    let obs = Arc::new(Counter::default());
    let e = Engine::open(
        dir.path(),
        EngineConfig {
            observer: Some(obs.clone()),
            ..cfg()
        },
    )
    .unwrap();
    for k in 0..200u32 {
        e.set("default", Some(&k.to_le_bytes()), &val(k, 0))
            .unwrap();
    }
    let sealed = e
        .segments("default")
        .unwrap()
        .iter()
        .filter(|s| s.sealed)
        .count() as u64;
    assert!(sealed >= 2);
    assert_eq!(obs.throttles.load(Ordering::SeqCst), sealed);
    // After the seal is announced, on the writer's thread.
    let lines = obs.take();
    let first_throttle = lines.iter().position(|l| l == "throttle default").unwrap();
    assert_eq!(lines[first_throttle - 1], "sealed default 0");
    // Deletes that seal throttle too; a rotation does not.
    e.rotate("default").unwrap();
    assert_eq!(obs.throttles.load(Ordering::SeqCst), sealed);
    // Fill the new segment almost to its limit without sealing it.
    let mut f = 1000u32;
    while e.stats("default").unwrap().current_offset + 2 * 1700 < 64 * 1024 {
        e.set("default", Some(&f.to_le_bytes()), &val(f, 0))
            .unwrap();
        f += 1;
    }
    assert_eq!(obs.throttles.load(Ordering::SeqCst), sealed);
    let mut k = 0u32;
    while obs.throttles.load(Ordering::SeqCst) == sealed {
        e.delete("default", &k.to_le_bytes()).unwrap();
        k += 1;
        assert!(k < 200, "deletes never sealed");
    }
    // The observer may call back into the engine: no lock is held.
    struct Reentrant(Mutex<Option<Engine>>, AtomicU64);
    impl EngineObserver for Reentrant {
        fn throttle(&self, ns: &str) {
            if let Some(e) = self.0.lock().unwrap().as_ref() {
                e.set(ns, Some(b"from-throttle"), b"x").unwrap();
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    drop(e);
    let obs = Arc::new(Reentrant(Mutex::new(None), AtomicU64::new(0)));
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(
        dir.path(),
        EngineConfig {
            observer: Some(obs.clone()),
            ..cfg()
        },
    )
    .unwrap();
    *obs.0.lock().unwrap() = Some(e.clone());
    for k in 0..100u32 {
        e.set("default", Some(&k.to_le_bytes()), &val(k, 0))
            .unwrap();
    }
    *obs.0.lock().unwrap() = None;
    assert!(obs.1.load(Ordering::SeqCst) > 0);
}

#[test]
fn idle_segments_are_sealed_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let obs = Arc::new(Counter::default());
    let e = Engine::open(
        dir.path(),
        EngineConfig {
            observer: Some(obs.clone()),
            max_segment_age: Some(Duration::from_millis(300)),
            max_segment_size: 1 << 20,
            ..cfg()
        },
    )
    .unwrap();
    e.namespace_create("idle").unwrap();
    e.set("default", Some(b"k"), b"v").unwrap();
    let m0 = e.manifest("default").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !obs.take().contains(&"sealed default 0".to_string()) {
        assert!(
            Instant::now() < deadline,
            "an idle non-empty segment was never sealed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Sealed by the background thread: a new manifest, no throttle.
    let m1 = e.manifest("default").unwrap();
    assert!(m1.generation > m0.generation);
    assert_eq!(m1.sealed_through, Some(0));
    assert_eq!(obs.throttles.load(Ordering::SeqCst), 0);
    // Empty segments are never sealed, however long they wait.
    std::thread::sleep(Duration::from_millis(900));
    let lines = obs.take();
    assert!(!lines.iter().any(|l| l.starts_with("sealed")), "{lines:?}");
    assert_eq!(e.segments("idle").unwrap().len(), 1);
    assert_eq!(e.segments("default").unwrap().len(), 2);
    assert_eq!(e.get("default", b"k").unwrap().unwrap().value, b"v");
}

#[test]
fn missing_or_stale_manifests_are_rewritten_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    for k in 0..100u32 {
        e.set("default", Some(&k.to_le_bytes()), &val(k, 0))
            .unwrap();
    }
    drop(e);
    // A directory from before manifests: the unsealed tail is sealed so a manifest covers it.
    let path = dir.path().join("ns/default/manifest");
    std::fs::remove_file(&path).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    let m = e.manifest("default").unwrap();
    let current = e.stats("default").unwrap().current_segment;
    assert_eq!(m.sealed_through, Some(current - 1));
    assert_eq!(e.stats("default").unwrap().current_offset, 32);
    for k in 0..100u32 {
        assert_eq!(
            e.get("default", &k.to_le_bytes()).unwrap().unwrap().value,
            val(k, 0)
        );
    }
    // A flush interrupted before its manifest was written: the old manifest would bring the
    // flushed data back, so it is replaced.
    let before_flush = std::fs::read(&path).unwrap();
    e.flush_namespace("default").unwrap();
    drop(e);
    std::fs::write(&path, &before_flush).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    let m2 = e.manifest("default").unwrap();
    assert_eq!(m2.sealed_through, None);
    assert!(m2.segments.is_empty());
    assert!(m2.generation > m.generation);
    drop(e);
    // A damaged manifest is replaced with a larger generation.
    let mut bad = std::fs::read(&path).unwrap();
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    let m3 = e.manifest("default").unwrap();
    assert!(m3.generation > m2.generation);
}

/// The backup tier in miniature: copies every sealed segment to the cold tier when announced.
struct Copier {
    cold: Arc<MemBackend>,
    seals: AtomicU64,
    throttles: AtomicU64,
}

impl EngineObserver for Copier {
    fn on_segment_sealed(&self, ns: &str, segment: u32, path: &Path) {
        self.cold.put_file(&cold_key(ns, segment), path);
        self.seals.fetch_add(1, Ordering::SeqCst);
    }
    fn throttle(&self, _ns: &str) {
        self.throttles.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone)]
enum ChainOp {
    Set(u8, Vec<u8>),
    Delete(u8),
    Rotate,
    Flush,
    Compact,
    Offload,
    Reopen,
}

fn chain_op() -> impl Strategy<Value = ChainOp> {
    prop_oneof![
        12 => (0u8..12, proptest::collection::vec(0u8..3, 0..400)).prop_map(|(k, v)| ChainOp::Set(k, v)),
        3 => (0u8..12).prop_map(ChainOp::Delete),
        1 => Just(ChainOp::Rotate),
        1 => Just(ChainOp::Flush),
        2 => Just(ChainOp::Compact),
        2 => Just(ChainOp::Offload),
        1 => Just(ChainOp::Reopen),
    ]
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever happened, restoring from the latest manifest gives exactly the state at the
    /// last seal that captured one (seals by size skip it once the index outweighs the data
    /// sealed since: 12 keys of up to 400 bytes in 4 KiB segments do), even after the cold
    /// tier dropped every segment the manifest does not name (the tier's garbage collection
    /// rule).
    #[test]
    fn restore_gives_the_state_at_the_last_seal(ops in proptest::collection::vec(chain_op(), 1..80)) {
        let src = tempfile::tempdir().unwrap();
        let cold = Arc::new(MemBackend::default());
        let copier = Arc::new(Copier { cold: cold.clone(), seals: AtomicU64::new(0), throttles: AtomicU64::new(0) });
        let config = EngineConfig {
            max_segment_size: 4096,
            cold_tier: Some(cold.clone()),
            observer: Some(copier.clone()),
            compaction_threshold: 0.6,
            ..cfg()
        };
        let mut e = Engine::open(src.path(), config.clone()).unwrap();
        let ns = "default";
        let mut model: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        let mut sealed: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        let generation = |e: &Engine| e.manifest(ns).unwrap().generation;
        for op in ops {
            let throttles = copier.throttles.load(Ordering::SeqCst);
            let seals = copier.seals.load(Ordering::SeqCst);
            let before = model.clone();
            let (gen_before, sealed_before) = (generation(&e), sealed.clone());
            match op {
                ChainOp::Set(k, v) => {
                    e.set(ns, Some(&[k]), &v).unwrap();
                    model.insert(k, v);
                }
                ChainOp::Delete(k) => {
                    match e.delete(ns, &[k]) {
                        Ok(()) => { model.remove(&k); }
                        Err(Error::NotFound(_)) => prop_assert!(!model.contains_key(&k)),
                        Err(other) => panic!("{other:?}"),
                    }
                }
                ChainOp::Rotate => {
                    e.rotate(ns).unwrap();
                    sealed = model.clone();
                }
                ChainOp::Flush => {
                    e.flush_namespace(ns).unwrap();
                    model.clear();
                    sealed.clear();
                }
                ChainOp::Compact => {
                    e.compact(ns).unwrap();
                    if copier.seals.load(Ordering::SeqCst) != seals {
                        sealed = model.clone();
                    }
                }
                ChainOp::Offload => {
                    for s in e.segments(ns).unwrap() {
                        if s.sealed && !s.offloaded {
                            e.offload_segment(ns, s.id).unwrap();
                        }
                    }
                }
                ChainOp::Reopen => {
                    drop(e);
                    e = Engine::open(src.path(), config.clone()).unwrap();
                }
            }
            if copier.throttles.load(Ordering::SeqCst) != throttles {
                // The write sealed the segment before its own record went in.
                sealed = before;
            }
            if generation(&e) == gen_before {
                // Sealed, perhaps, but no manifest captured: the last one still stands.
                sealed = sealed_before;
            }
        }
        let manifest = Manifest::from_bytes(&e.manifest(ns).unwrap().to_bytes()).unwrap();
        let key = e.export_seal_key().unwrap();
        drop(e);
        // Garbage collection: only what the manifest names stays in the cold tier.
        let keep: Vec<String> = manifest.segments.iter().map(|(id, _)| cold_key(ns, *id)).collect();
        cold.objects.lock().unwrap().retain(|k, _| keep.contains(k));
        let dst = tempfile::tempdir().unwrap();
        Engine::restore(dst.path(), &key, &[manifest]).unwrap();
        let e = Engine::open(dst.path(), EngineConfig { observer: None, ..config }).unwrap();
        for k in 0..12u8 {
            let got = e.get(ns, &[k]).unwrap().map(|v| v.value);
            prop_assert_eq!(got.as_ref(), sealed.get(&k), "key {}", k);
        }
        prop_assert_eq!(e.namespace_info(ns).unwrap().entries, sealed.len() as u64);
    }
}

/// A cut is one instant across namespaces: a filesystem's change spans several of them (data,
/// then the map that points at it), and a restore must never pair a new map with old data.
#[test]
fn seal_all_cuts_every_namespace_at_one_instant() {
    let src = tempfile::tempdir().unwrap();
    let cold = Arc::new(MemBackend::default());
    let config = EngineConfig {
        cold_tier: Some(cold.clone()),
        ..cfg()
    };
    let e = Engine::open(src.path(), config.clone()).unwrap();
    e.namespace_create("map").unwrap();
    // "data" fills segments (sealing on its own by size); "map" points at the newest round.
    let mut cut = None;
    for round in 0..6u32 {
        for k in 0..40u32 {
            e.set("default", Some(&k.to_le_bytes()), &val(k, round))
                .unwrap();
        }
        e.set("map", Some(b"round"), &round.to_le_bytes()).unwrap();
        if round == 3 {
            cut = Some(e.seal_all().unwrap());
        }
    }
    let cut = cut.unwrap();
    let names: Vec<&str> = cut.iter().map(|m| m.namespace.as_str()).collect();
    assert_eq!(names, ["default", "map"], "a cut holds every namespace");
    // Every segment a cut names goes to the cold tier (what the backup tier does).
    for m in &cut {
        for (id, _) in &m.segments {
            let path = e
                .segments(&m.namespace)
                .unwrap()
                .into_iter()
                .find(|s| s.id == *id)
                .unwrap()
                .path;
            cold.put_file(&cold_key(&m.namespace, *id), &path);
        }
    }
    let key = e.export_seal_key().unwrap();
    drop(e);
    let dst = tempfile::tempdir().unwrap();
    let dir = dst.path().join("engine");
    Engine::restore(&dir, &key, &cut).unwrap();
    let r = Engine::open(&dir, config).unwrap();
    let round = r.get("map", b"round").unwrap().unwrap().value;
    assert_eq!(round, 3u32.to_le_bytes(), "the map is from the cut");
    for k in 0..40u32 {
        let v = r.get("default", &k.to_le_bytes()).unwrap().unwrap().value;
        assert_eq!(v, val(k, 3), "data of key {k} is from the cut");
    }
}

// ----- seals off the writer's thread (Periodic/Group durability) ----------------------------

/// Segments small enough that a seal happens every few dozen writes.
fn sealing_cfg(durability: Durability) -> EngineConfig {
    EngineConfig {
        durability,
        max_segment_size: 16 * 1024,
        ..EngineConfig::default()
    }
}

/// Remembers every seal it is told of, with the segment's length at that moment, and counts
/// the seals writes made (`throttle` is called on the writer's thread right after a write that
/// sealed, waiting for nothing).
#[derive(Default)]
struct SealLog {
    sealed: Mutex<BTreeMap<(String, u32), u64>>,
    by_writes: Mutex<BTreeMap<String, u64>>,
    print: bool,
}

impl EngineObserver for SealLog {
    fn on_segment_sealed(&self, ns: &str, segment: u32, path: &Path) {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        self.sealed
            .lock()
            .unwrap()
            .insert((ns.to_string(), segment), len);
        if self.print {
            println!("@sealed {ns} {segment} {len}");
        }
    }
    fn throttle(&self, ns: &str) {
        *self
            .by_writes
            .lock()
            .unwrap()
            .entry(ns.to_string())
            .or_default() += 1;
    }
}

impl SealLog {
    /// Seals of `ns` announced so far.
    fn announced(&self, ns: &str) -> u64 {
        self.sealed
            .lock()
            .unwrap()
            .keys()
            .filter(|(n, _)| n == ns)
            .count() as u64
    }
    /// Seals of `ns` that writes made so far.
    fn by_writes(&self, ns: &str) -> u64 {
        self.by_writes.lock().unwrap().get(ns).copied().unwrap_or(0)
    }
}

fn round_key(round: u32, i: u32) -> Vec<u8> {
    format!("r{round}-{i}").into_bytes()
}

/// The child side of [`killed_around_seals_loses_no_synced_write`]: writes round `round` into
/// the engine at `dir` until killed, printing what is synced.
fn seal_child(dir: &Path, round: u32) {
    let log = Arc::new(SealLog {
        print: true,
        ..SealLog::default()
    });
    let e = Engine::open(
        dir,
        EngineConfig {
            observer: Some(log.clone()),
            ..sealing_cfg(Durability::Periodic(Duration::from_secs(1)))
        },
    )
    .unwrap();
    // Bounded, should the parent die without killing it.
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..200_000u32 {
        if Instant::now() > deadline {
            return;
        }
        e.set("default", Some(&round_key(round, i)), &val(i, round))
            .unwrap();
        // Between syncs nothing waits for the seal thread (`stats` would), so the kill finds
        // seals in flight.
        if i % 25 == 24 {
            let before = log.by_writes("default");
            Store::sync(&e).unwrap();
            // Every seal made before the sync began was announced before it returned.
            let heard = log.announced("default");
            println!("@synced {i} {before} {heard}");
        }
    }
}

/// Reads every key of rounds `..=round` acknowledged by a sync (`synced[r]`: the last synced
/// index of round r) from `e`.
fn check_synced(e: &Engine, synced: &[Option<u32>], what: &str) {
    for (round, last) in synced.iter().enumerate() {
        let Some(last) = *last else { continue };
        for i in 0..=last {
            let got = e
                .get("default", &round_key(round as u32, i))
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: synced key {i} of round {round} is lost"));
            assert_eq!(
                got.value,
                val(i, round as u32),
                "{what}: key {i} of round {round}"
            );
        }
    }
}

/// kill -9 of a writing process at moments when seals are in flight on the seal thread, over
/// several rounds on one directory: every write a sync acknowledged survives, the index is
/// rebuilt without damage, every segment announced sealed is sealed with the length announced,
/// every seal before a sync was announced before it returned, and a recovery cut taken after
/// the crashes restores everything from a cold tier.
#[test]
fn killed_around_seals_loses_no_synced_write() {
    if let Ok(dir) = std::env::var("QSFS_SEAL_CHILD") {
        let round = std::env::var("QSFS_SEAL_ROUND").unwrap().parse().unwrap();
        seal_child(Path::new(&dir), round);
        return;
    }
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("engine");
    let mut synced: Vec<Option<u32>> = Vec::new();
    for round in 0..6u32 {
        /// Kills the child if the parent panics before it does.
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "chain::killed_around_seals_loses_no_synced_write",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("QSFS_SEAL_CHILD", &dir)
            .env("QSFS_SEAL_ROUND", round.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut child = Reap(child);
        let mut last = None;
        let mut announced = BTreeMap::new();
        let mut syncs = 0u32;
        let mut killed = false;
        let kill_after = 2 + round;
        for line in out.lines() {
            let line = line.unwrap();
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.first().copied() {
                Some("@synced") => {
                    let i: u32 = f[1].parse().unwrap();
                    let before: u64 = f[2].parse().unwrap();
                    let heard: u64 = f[3].parse().unwrap();
                    assert!(
                        heard >= before,
                        "round {round}: a sync returned when {heard} of the {before} seals made before it were announced"
                    );
                    last = Some(i);
                    syncs += 1;
                    if !killed && syncs == kill_after {
                        // Some 2-3 seals (16 KiB segments, 1-2 KiB values) happen between two
                        // syncs; a kill at a varying moment in there lands in some seal's I/O.
                        std::thread::sleep(Duration::from_micros(200 + 450 * u64::from(round)));
                        child.0.kill().unwrap();
                        killed = true;
                    }
                }
                Some("@sealed") => {
                    announced.insert(f[2].parse::<u32>().unwrap(), f[3].parse::<u64>().unwrap());
                }
                _ => {}
            }
        }
        let status = child.0.wait().unwrap();
        assert!(
            killed && !status.success(),
            "round {round}: child ended by itself: {status}"
        );
        assert!(last.is_some(), "round {round}: nothing was synced");
        synced.push(last);

        let e = Engine::open(
            &dir,
            sealing_cfg(Durability::Periodic(Duration::from_secs(1))),
        )
        .unwrap();
        check_synced(&e, &synced, &format!("after kill {round}"));
        assert_eq!(e.verify("default").unwrap(), Vec::<String>::new());
        let stats = e.stats("default").unwrap();
        assert_eq!(stats.damage, Vec::<String>::new(), "round {round}");
        for (id, len) in &announced {
            let s = stats.segments.iter().find(|s| s.id == *id).unwrap();
            assert!(s.sealed, "round {round}: segment {id} was announced sealed");
            assert_eq!(
                s.length, *len,
                "round {round}: sealed segment {id} changed length"
            );
        }
    }

    // A recovery cut after the crashes restores every synced write from the cold tier alone.
    let cold = Arc::new(MemBackend::default());
    let config = EngineConfig {
        cold_tier: Some(cold.clone()),
        ..sealing_cfg(Durability::Periodic(Duration::from_secs(1)))
    };
    let e = Engine::open(&dir, config.clone()).unwrap();
    let cut = e.seal_all().unwrap();
    for m in &cut {
        let segs = e.segments(&m.namespace).unwrap();
        for (id, len) in &m.segments {
            let s = segs.iter().find(|s| s.id == *id).unwrap();
            assert!(s.sealed && s.length == *len, "{s:?} in the cut as {len}");
            cold.put_file(&cold_key(&m.namespace, *id), &s.path);
        }
    }
    let key = e.export_seal_key().unwrap();
    drop(e);
    let dst = tempfile::tempdir().unwrap();
    let restored = dst.path().join("engine");
    Engine::restore(&restored, &key, &cut).unwrap();
    let r = Engine::open(&restored, config).unwrap();
    check_synced(&r, &synced, "restored from the cut");
}

/// Writers on two namespaces seal often while other threads sync, take recovery cuts and
/// offload sealed segments: a segment is reported sealed only once its seal is done and
/// announced-or-about-to-be, a sync returns only after every earlier seal was announced, every
/// cut names only sealed segments, and the last cut restores every key's last value.
#[test]
fn seals_off_the_writer_keep_syncs_cuts_and_offloads_consistent() {
    for durability in [
        Durability::Periodic(Duration::from_millis(50)),
        Durability::Group,
    ] {
        let src = tempfile::tempdir().unwrap();
        let cold = Arc::new(MemBackend::default());
        let log = Arc::new(SealLog::default());
        let config = EngineConfig {
            cold_tier: Some(cold.clone()),
            observer: Some(log.clone()),
            ..sealing_cfg(durability)
        };
        let e = Engine::open(src.path(), config.clone()).unwrap();
        e.namespace_create("other").unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rounds = 12u32;
        let writers: Vec<_> = ["default", "other"]
            .into_iter()
            .map(|ns| {
                let e = e.clone();
                std::thread::spawn(move || {
                    for round in 0..rounds {
                        for k in 0..60u32 {
                            e.set(ns, Some(&k.to_le_bytes()), &val(k, round)).unwrap();
                        }
                    }
                })
            })
            .collect();
        let syncer = {
            let (e, log, stop) = (e.clone(), log.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let before: Vec<u64> = ["default", "other"]
                        .iter()
                        .map(|ns| log.by_writes(ns))
                        .collect();
                    Store::sync(&e).unwrap();
                    for (ns, before) in ["default", "other"].iter().zip(before) {
                        let heard = log.announced(ns);
                        assert!(
                            heard >= before,
                            "{ns}: a sync returned when {heard} of the {before} seals made before it were announced"
                        );
                    }
                }
            })
        };
        let offloader = {
            let (e, cold, stop) = (e.clone(), cold.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut cuts = 0u32;
                let mut last = None;
                while !stop.load(Ordering::Acquire) {
                    let cut = e.seal_all().unwrap();
                    cuts += 1;
                    for m in &cut {
                        let segs = e.segments(&m.namespace).unwrap();
                        for (id, len) in &m.segments {
                            let s = segs.iter().find(|s| s.id == *id).unwrap();
                            assert!(s.sealed && s.length == *len, "{s:?} in a cut as {len}");
                            if !s.offloaded {
                                cold.put_file(&cold_key(&m.namespace, *id), &s.path);
                                e.offload_segment(&m.namespace, *id).unwrap();
                            }
                        }
                    }
                    last = Some(cut);
                }
                (cuts, last)
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Release);
        syncer.join().unwrap();
        let (cuts, _) = offloader.join().unwrap();
        assert!(cuts > 0);
        // Once a sync returns, every segment reported sealed was announced with its length.
        Store::sync(&e).unwrap();
        for ns in ["default", "other"] {
            for s in e.segments(ns).unwrap().iter().filter(|s| s.sealed) {
                let heard = log
                    .sealed
                    .lock()
                    .unwrap()
                    .get(&(ns.to_string(), s.id))
                    .copied();
                // 0: offloaded before the observer looked at the file.
                assert!(
                    heard.is_some_and(|l| l == 0 || l == s.length),
                    "{ns} segment {} ({} bytes) announced as {heard:?}",
                    s.id,
                    s.length
                );
            }
        }
        let cut = e.seal_all().unwrap();
        for m in &cut {
            let segs = e.segments(&m.namespace).unwrap();
            for (id, _) in &m.segments {
                let s = segs.iter().find(|s| s.id == *id).unwrap();
                if !s.offloaded {
                    cold.put_file(&cold_key(&m.namespace, *id), &s.path);
                }
            }
        }
        let key = e.export_seal_key().unwrap();
        drop(e);
        // The original directory reopens with every last value ...
        let again = Engine::open(src.path(), config.clone()).unwrap();
        for ns in ["default", "other"] {
            for k in 0..60u32 {
                let v = again.get(ns, &k.to_le_bytes()).unwrap().unwrap().value;
                assert_eq!(v, val(k, rounds - 1), "{ns} key {k} after reopen");
            }
        }
        drop(again);
        // ... and so does a restore from the last cut.
        let dst = tempfile::tempdir().unwrap();
        let restored = dst.path().join("engine");
        Engine::restore(&restored, &key, &cut).unwrap();
        let r = Engine::open(
            &restored,
            EngineConfig {
                observer: None,
                ..config
            },
        )
        .unwrap();
        for ns in ["default", "other"] {
            for k in 0..60u32 {
                let v = r.get(ns, &k.to_le_bytes()).unwrap().unwrap().value;
                assert_eq!(v, val(k, rounds - 1), "{ns} key {k} restored from the cut");
            }
        }
    }
}
