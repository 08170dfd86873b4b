//! Segment lifecycle: compaction, sealing notifications, offload to a cold tier and reads back
//! from it, and a full disk.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use qsfs_core::{Backend, Error, Health, Result, Store};
use qsfs_store::{cold_key, Durability, Engine, EngineConfig, EngineObserver};

fn cfg() -> EngineConfig {
    EngineConfig {
        durability: Durability::None,
        max_segment_size: 256 * 1024,
        ..EngineConfig::default()
    }
}

/// [`cfg`] with `cold` as the cold tier.
fn cold_cfg(cold: &Arc<ColdProbe>) -> EngineConfig {
    EngineConfig {
        cold_tier: Some(cold.clone()),
        ..cfg()
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn val(key: u32, round: u32) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (key as usize * 31 + round as usize * 7 + i) as u8;
    }
    v
}

#[test]
fn compaction_returns_space_and_keeps_live_values_and_retained_history() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        history_retention: Some(Duration::from_secs(3600)),
        ..cfg()
    };
    let e = Engine::open(dir.path(), config.clone()).unwrap();
    let now = qsfs_core::now();
    let keys = 50u32;
    for round in 0..20u32 {
        // The first 18 rounds are old history, the last two recent.
        let ts = if round < 18 { now - 10 * 3600 } else { now };
        for k in 0..keys {
            e.set_at("default", Some(&k.to_le_bytes()), &val(k, round), Some(ts))
                .unwrap();
        }
    }
    e.delete("default", &0u32.to_le_bytes()).unwrap();
    e.rotate("default").unwrap();
    let before = e.stats("default").unwrap();
    assert!(before.disk_bytes > 20 * 49 * 4096, "{}", before.disk_bytes);
    let report = e.compact("default").unwrap();
    assert!(!report.segments.is_empty());
    assert!(report.records_dropped > 0);
    let after = e.stats("default").unwrap();
    // Live data: 49 keys; retained history: one recent older version per key.
    let needed = 2 * 49 * (4096 + 64 + 4) + 2 * (64 + 4) + 4096 + 64 + 4;
    assert!(
        after.disk_bytes < needed as u64 * 12 / 10 + 256 * 1024,
        "disk {} vs needed {needed}",
        after.disk_bytes
    );
    assert!(
        dir_bytes(&dir.path().join("ns/default")) < before.disk_bytes / 4,
        "files really removed"
    );
    let check = |e: &Engine| {
        for k in 1..keys {
            let key = k.to_le_bytes();
            assert_eq!(e.get("default", &key).unwrap().unwrap().value, val(k, 19));
            let live = e.history("default", &key, None).unwrap();
            let prev = e.history("default", &key, live.previous).unwrap();
            assert_eq!(prev.value, val(k, 18), "retained history intact");
            assert_eq!(
                prev.previous, None,
                "history older than the retention is gone"
            );
        }
        assert!(
            e.get("default", &0u32.to_le_bytes()).unwrap().is_none(),
            "a deleted key stays deleted"
        );
    };
    check(&e);
    drop(e);
    let e = Engine::open(dir.path(), config.clone()).unwrap();
    check(&e);
    drop(e);
    std::fs::remove_file(dir.path().join("ns/default/index")).unwrap();
    let e = Engine::open(dir.path(), config).unwrap();
    check(&e);
}

#[test]
fn compaction_runs_alongside_readers_and_writers() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    for round in 0..6u32 {
        for k in 0..100u32 {
            e.set("default", Some(&k.to_le_bytes()), &val(k, round))
                .unwrap();
        }
    }
    e.rotate("default").unwrap();
    let latest: Arc<Mutex<BTreeMap<u32, u32>>> =
        Arc::new(Mutex::new((0..100).map(|k| (k, 5)).collect()));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stop = &stop;
    std::thread::scope(|s| {
        for t in 0..2u32 {
            let e = e.clone();
            s.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for k in (t..100).step_by(7) {
                        let got = e.get("default", &k.to_le_bytes()).unwrap().unwrap().value;
                        assert!(
                            (0..50).any(|r| got == val(k, r)),
                            "reader saw a value that was never written"
                        );
                    }
                }
            });
        }
        let writer = {
            let e = e.clone();
            let latest = latest.clone();
            s.spawn(move || {
                for round in 6..12u32 {
                    for k in (0..100u32).filter(|k| k % 3 == 0) {
                        e.set("default", Some(&k.to_le_bytes()), &val(k, round))
                            .unwrap();
                        latest.lock().unwrap().insert(k, round);
                    }
                }
            })
        };
        for _ in 0..3 {
            e.compact_with("default", 1.0).unwrap();
        }
        writer.join().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    for (k, r) in latest.lock().unwrap().iter() {
        assert_eq!(
            e.get("default", &k.to_le_bytes()).unwrap().unwrap().value,
            val(*k, *r)
        );
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl EngineObserver for Recorder {
    fn on_segment_sealed(&self, ns: &str, segment: u32, path: &Path) {
        assert!(path.exists(), "a sealed segment is there when announced");
        self.0
            .lock()
            .unwrap()
            .push(format!("sealed {ns} {segment}"));
    }
    fn on_segment_removed(&self, ns: &str, segment: u32) {
        self.0
            .lock()
            .unwrap()
            .push(format!("removed {ns} {segment}"));
    }
    fn on_namespace_created(&self, ns: &str) {
        self.0.lock().unwrap().push(format!("created {ns}"));
    }
    fn on_namespace_updated(&self, ns: &str) {
        self.0.lock().unwrap().push(format!("updated {ns}"));
    }
    fn on_namespace_deleted(&self, ns: &str) {
        self.0.lock().unwrap().push(format!("deleted {ns}"));
    }
}

#[test]
fn observer_hears_the_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let e = Engine::open(
        dir.path(),
        EngineConfig {
            observer: Some(rec.clone()),
            ..cfg()
        },
    )
    .unwrap();
    e.namespace_create("n").unwrap();
    e.namespace_set("n", qsfs_core::NamespaceProperty::Worm(true))
        .unwrap();
    e.set("n", Some(b"k"), b"v").unwrap();
    e.rotate("n").unwrap();
    e.compact_with("n", 1.0).unwrap();
    e.namespace_delete("n").unwrap();
    assert_eq!(
        *rec.0.lock().unwrap(),
        vec![
            "created n",
            "updated n",
            "sealed n 0",
            "removed n 0",
            "deleted n"
        ],
    );
    // Size-based sealing is announced too.
    for i in 0..100u32 {
        e.set("default", Some(&i.to_le_bytes()), &val(i, 0))
            .unwrap();
    }
    assert!(rec
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|l| l == "sealed default 0"));
}

#[test]
fn offloaded_segments_are_read_from_the_cold_tier() {
    let dir = tempfile::tempdir().unwrap();
    let cold = Arc::new(ColdProbe::default());
    let config = cold_cfg(&cold);
    let e = Engine::open(dir.path(), config.clone()).unwrap();
    for k in 0..200u32 {
        e.set("default", Some(&k.to_le_bytes()), &val(k, 0))
            .unwrap();
    }
    e.set("default", Some(&0u32.to_le_bytes()), &val(0, 1))
        .unwrap();
    let sealed: Vec<_> = e
        .segments("default")
        .unwrap()
        .into_iter()
        .filter(|s| s.sealed)
        .collect();
    assert!(sealed.len() >= 2);
    // Offloading what the cold tier does not have is refused: it would lose the only copy.
    assert!(matches!(
        e.offload_segment("default", sealed[0].id),
        Err(Error::InvalidArgument(_))
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    for s in &sealed {
        let data = std::fs::read(&s.path).unwrap();
        rt.block_on(cold.put(&cold_key("default", s.id), Bytes::from(data)))
            .unwrap();
        e.offload_segment("default", s.id).unwrap();
        assert!(!s.path.exists(), "local file removed");
    }
    assert!(
        e.offload_segment("default", e.stats("default").unwrap().current_segment)
            .is_err(),
        "current is not sealed"
    );
    let check_all = |e: &Engine| {
        for k in 0..200u32 {
            let want = if k == 0 { val(0, 1) } else { val(k, 0) };
            assert_eq!(
                e.get("default", &k.to_le_bytes()).unwrap().unwrap().value,
                want
            );
        }
        // History into offloaded segments works too.
        let live = e.history("default", &0u32.to_le_bytes(), None).unwrap();
        assert_eq!(
            e.history("default", &0u32.to_le_bytes(), live.previous)
                .unwrap()
                .value,
            val(0, 0)
        );
    };
    check_all(&e);
    // Raw reads walk offloaded segments too, and end with a clean end-of-segment.
    let first = &sealed[0];
    let mut off = 32;
    let mut records = 0;
    while let Some(r) = e.read_raw("default", first.id, off).unwrap() {
        off = r.next_offset;
        records += 1;
    }
    assert_eq!(off, first.size, "walked to the recorded end");
    assert!(records > 0);
    let stats = e.segments("default").unwrap();
    assert!(stats
        .iter()
        .filter(|s| s.offloaded)
        .all(|s| s.size == 0 && s.length > 0));
    drop(e);
    // Reopen, and rebuild the index from segments, some of them only in the cold tier.
    std::fs::remove_file(dir.path().join("ns/default/index")).unwrap();
    let e = Engine::open(dir.path(), config).unwrap();
    assert!(
        e.segments("default")
            .unwrap()
            .iter()
            .filter(|s| s.offloaded)
            .count()
            >= 2
    );
    check_all(&e);
    drop(e);

    // Without a cold tier: a clear Unavailable for offloaded data, everything else served.
    let e = Engine::open(dir.path(), cfg()).unwrap();
    let mut unavailable = 0;
    for k in 0..200u32 {
        match e.get("default", &k.to_le_bytes()) {
            Ok(Some(v)) => assert_eq!(v.value, if k == 0 { val(0, 1) } else { val(k, 0) }),
            Err(Error::Unavailable(msg)) => {
                assert!(msg.contains("offloaded"), "{msg}");
                unavailable += 1;
            }
            other => panic!("key {k}: {other:?}"),
        }
    }
    assert!(unavailable > 0);
    assert!(
        e.exists("default", &5u32.to_le_bytes()).unwrap(),
        "the index is local"
    );
    drop(e);

    // Restoring brings the file back for good.
    let e = Engine::open(dir.path(), cold_cfg(&cold)).unwrap();
    for s in &sealed {
        e.restore_segment("default", s.id).unwrap();
    }
    drop(e);
    let e = Engine::open(dir.path(), cfg()).unwrap();
    for k in 1..200u32 {
        assert_eq!(
            e.get("default", &k.to_le_bytes()).unwrap().unwrap().value,
            val(k, 0)
        );
    }
}

#[test]
fn raw_records_walk_a_segment_including_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    e.set_at("default", Some(b"a"), b"1", Some(10)).unwrap();
    e.set_at("default", Some(b"a"), b"2", Some(11)).unwrap();
    e.delete_at("default", b"a", Some(12)).unwrap();
    let seg = e.stats("default").unwrap().current_segment;
    let mut off = 32;
    let mut seen = Vec::new();
    while let Some(r) = e.read_raw("default", seg, off).unwrap() {
        seen.push((
            r.key.clone(),
            r.value.clone(),
            r.deleted,
            r.timestamp,
            r.previous.is_some(),
        ));
        assert_eq!(r.value_crc, crc32c::crc32c(&r.value));
        off = r.next_offset;
    }
    assert_eq!(
        seen,
        vec![
            (b"a".to_vec(), b"1".to_vec(), false, 10, false),
            (b"a".to_vec(), b"2".to_vec(), false, 11, true),
            (b"a".to_vec(), vec![], true, 12, true),
        ]
    );
    assert!(e.read_raw("default", seg, 5).is_err(), "inside the header");
    assert!(e.read_raw("default", 99, 32).is_err(), "no such segment");
}

/// Mounts a 1 MiB tmpfs (we run as root, like CI) so the disk really fills up.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new() -> Tmpfs {
        Tmpfs::sized("1m")
    }

    fn sized(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mount a tmpfs (the test suite runs as root)");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn full_disk_is_a_typed_error_and_loses_nothing() {
    let fs = Tmpfs::new();
    let root = fs.0.path().join("engine");
    let config = EngineConfig {
        max_segment_size: 64 * 1024,
        ..cfg()
    };
    let e = Engine::open(&root, config.clone()).unwrap();
    let mut written = Vec::new();
    let err = loop {
        let k = written.len() as u32;
        match e.set("default", Some(&k.to_le_bytes()), &val(k, 3)) {
            Ok(_) => written.push(k),
            Err(e) => break e,
        }
        assert!(written.len() < 1000, "a 1 MiB disk cannot hold 4 MiB");
    };
    assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
    assert!(written.len() > 50);
    // Still usable: reads work, and the refused write left nothing behind.
    for k in &written {
        assert_eq!(
            e.get("default", &k.to_le_bytes()).unwrap().unwrap().value,
            val(*k, 3)
        );
    }
    // Free space (delete and compact) and write again.
    for k in &written[..written.len() / 2] {
        e.delete("default", &k.to_le_bytes()).unwrap_or_else(|err| {
            // A tombstone may itself not fit; that is a typed error too.
            assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
        });
    }
    drop(e);
    let e = Engine::open(&root, config).unwrap();
    for k in &written {
        let got = e.get("default", &k.to_le_bytes()).unwrap();
        if let Some(v) = got {
            assert_eq!(v.value, val(*k, 3));
        } else {
            assert!(
                *k < written[written.len() / 2],
                "only deleted keys may be absent"
            );
        }
    }
    e.compact_with("default", 1.0).unwrap_or_else(|err| {
        assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
        Default::default()
    });
    let last = written[written.len() - 1];
    assert_eq!(
        e.get("default", &last.to_le_bytes())
            .unwrap()
            .unwrap()
            .value,
        val(last, 3)
    );
}

/// A disk filled to its low mark, then 2 of every 5 values deleted: every segment stays 60 %
/// live (above the 0.5 threshold) and the retention keeps the deleted versions, so only the
/// compactor's low-space mode gives the space back. Every other value survives, and the space
/// given back takes new writes.
#[test]
fn a_low_disk_gets_space_back_from_deleted_data() {
    const LOW: u64 = 1 << 20;
    let fs = Tmpfs::sized("6m");
    let root = fs.0.path().join("engine");
    let config = EngineConfig {
        max_segment_size: 128 * 1024,
        history_retention: Some(Duration::from_secs(3600)),
        low_space: Some(LOW),
        ..cfg()
    };
    let engine = Arc::new(Engine::open(&root, config.clone()).unwrap());
    assert_eq!(engine.low_space().unwrap(), LOW);
    let available = |e: &Engine| e.disk_space().unwrap().available;
    let mut written = Vec::new();
    // Like a filesystem keeping a reserve: writes stop at the low mark, before the disk is full.
    while available(&engine) > LOW / 2 {
        let k = written.len() as u32;
        engine
            .set("default", Some(&k.to_le_bytes()), &val(k, 5))
            .unwrap();
        written.push(k);
    }
    let deleted = |k: u32| k % 5 < 2;
    let mut freed = 0;
    for k in written.iter().copied().filter(|&k| deleted(k)) {
        engine.delete("default", &k.to_le_bytes()).unwrap();
        freed += 4096;
    }
    engine.rotate("default").unwrap();
    let low = available(&engine);
    assert_eq!(
        engine.compact("default").unwrap(),
        Default::default(),
        "the threshold compaction alone frees nothing here"
    );

    qsfs_store::spawn_compactor(&engine, Duration::from_millis(20), |ns| ns == "default").unwrap();
    // Poll (bounded) until most of the deleted bytes are back; no timing is asserted.
    let want = low + freed * 3 / 4;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while available(&engine) < want {
        assert!(
            std::time::Instant::now() < deadline,
            "no space came back: {} bytes available, {want} wanted",
            available(&engine)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The space takes new writes; then everything reads back, after a reopen too.
    let more: Vec<u32> = (written.len() as u32..).take(200).collect();
    for &k in &more {
        engine
            .set("default", Some(&k.to_le_bytes()), &val(k, 5))
            .unwrap();
    }
    let check = |e: &Engine| {
        for &k in written.iter().chain(&more) {
            let got = e.get("default", &k.to_le_bytes()).unwrap();
            if deleted(k) && k < written.len() as u32 {
                assert!(got.is_none(), "key {k} was deleted");
            } else {
                assert_eq!(got.expect("a live key").value, val(k, 5), "key {k}");
            }
        }
    };
    check(&engine);
    drop(engine);
    // The compactor thread holds the engine only while it works.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let engine = loop {
        match Engine::open(&root, config.clone()) {
            Ok(e) => break e,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    check(&engine);
}

/// Sets keys 0..100 of `default` `rounds` times over (`val(key, round)`), then seals.
fn overwrite_and_seal(engine: &Engine, rounds: u32) {
    for round in 0..rounds {
        for key in 0..100u32 {
            engine
                .set("default", Some(&key.to_le_bytes()), &val(key, round))
                .unwrap();
        }
    }
    engine.rotate("default").unwrap();
}

/// The background compactor rewrites a segment only once it was last written at least the
/// retention ago: before, its history was still protected, a rewrite copied it all forward
/// and left the copy as dead as before, to be rewritten again at every round.
#[test]
fn background_compaction_waits_until_a_segment_is_past_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        history_retention: Some(Duration::from_secs(2)),
        ..cfg()
    };
    let engine = Engine::open(dir.path(), config).unwrap();
    overwrite_and_seal(&engine, 4);
    assert_eq!(
        engine.compact_settled("default").unwrap(),
        Default::default(),
        "young segments are left for later"
    );
    // Timestamps are whole seconds: past the retention for sure.
    std::thread::sleep(Duration::from_millis(3100));
    let r = engine.compact_settled("default").unwrap();
    assert!(!r.segments.is_empty(), "{r:?}");
    assert!(
        r.records_dropped >= 300,
        "superseded versions dropped: {r:?}"
    );
    for key in 0..100u32 {
        let got = engine.get("default", &key.to_le_bytes()).unwrap().unwrap();
        assert_eq!(got.value, val(key, 3));
    }
}

/// Without a history retention every version must stay: a low-space pass would only copy them
/// all forward again (and again every second), so it does nothing.
#[test]
fn without_a_retention_a_low_disk_rewrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        history_retention: None,
        low_space: Some(u64::MAX),
        ..cfg()
    };
    let engine = Engine::open(dir.path(), config).unwrap();
    overwrite_and_seal(&engine, 3);
    let before = engine.stats("default").unwrap().segments;
    assert_eq!(engine.reclaim("default").unwrap(), Default::default());
    assert_eq!(engine.stats("default").unwrap().segments, before);
    let first = engine
        .history("default", &7u32.to_le_bytes(), None)
        .unwrap();
    let older = engine
        .history("default", &7u32.to_le_bytes(), first.previous)
        .unwrap();
    assert_eq!(older.value, val(7, 1), "history is all there");
}

#[test]
fn the_background_compactor_gives_space_back_and_only_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        history_retention: Some(Duration::ZERO),
        ..cfg()
    };
    let engine = Arc::new(Engine::open(dir.path(), config).unwrap());
    engine.namespace_create("keep").unwrap();
    for ns in ["default", "keep"] {
        for round in 0..20 {
            for key in 0..20u32 {
                let k = format!("k{key}");
                engine
                    .set(ns, Some(k.as_bytes()), &val(key, round))
                    .unwrap();
            }
        }
        engine.rotate(ns).unwrap();
    }
    let before = |ns: &str| engine.stats(ns).unwrap().disk_bytes;
    let (default_before, keep_before) = (before("default"), before("keep"));

    qsfs_store::spawn_compactor(&engine, Duration::from_millis(20), |ns| ns == "default").unwrap();
    // Poll (bounded) until the compactor has run; no timing is asserted.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while before("default") >= default_before / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the compactor never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(before("default") < default_before / 2, "space came back");
    assert_eq!(
        before("keep"),
        keep_before,
        "an unselected namespace is left alone"
    );
    for key in 0..20u32 {
        let k = format!("k{key}");
        assert_eq!(
            engine.get("default", k.as_bytes()).unwrap().unwrap().value,
            val(key, 19)
        );
    }
    // The thread ends with the engine: dropping the last handle releases the directory lock.
    drop(engine);
    std::thread::sleep(Duration::from_millis(100));
    Engine::open(dir.path(), cfg()).unwrap();
}

/// Puts a saved copy of a segment back when the engine reports it missing (what 0-db's
/// `missing-data` hook does), and records every call.
struct Restorer {
    saved: std::path::PathBuf,
    allow: std::sync::atomic::AtomicBool,
    calls: Mutex<Vec<(String, u32, std::path::PathBuf)>>,
}

impl EngineObserver for Restorer {
    fn on_segment_missing(&self, ns: &str, segment: u32, path: &Path) -> bool {
        self.calls
            .lock()
            .unwrap()
            .push((ns.to_string(), segment, path.to_path_buf()));
        self.allow.load(std::sync::atomic::Ordering::SeqCst)
            && std::fs::copy(&self.saved, path).is_ok()
    }
}

#[test]
fn a_missing_offloaded_segment_is_asked_for_and_read_once_put_back() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.seg");
    let data = dir.path().join("engine");
    let e = Engine::open(&data, cfg()).unwrap();
    e.set("default", Some(b"old"), &val(1, 0)).unwrap();
    e.rotate("default").unwrap();
    e.set("default", Some(b"new"), &val(2, 0)).unwrap();
    let seg = data.join("ns/default/0000000000.seg");
    std::fs::copy(&seg, &saved).unwrap();
    // No cold tier: offloading removes the only local copy, as a hook script deleting an
    // uploaded data file does.
    e.offload_segment("default", 0).unwrap();
    drop(e);
    assert!(!seg.exists());

    let restorer = Arc::new(Restorer {
        saved,
        allow: false.into(),
        calls: Mutex::default(),
    });
    let config = EngineConfig {
        observer: Some(restorer.clone()),
        ..cfg()
    };
    let e = Engine::open(&data, config).unwrap();
    // Not put back: a clear error, never a wrong value; the rest stays readable.
    assert!(matches!(
        e.get("default", b"old"),
        Err(Error::Unavailable(_))
    ));
    assert_eq!(e.get("default", b"new").unwrap().unwrap().value, val(2, 0));
    assert_eq!(
        restorer.calls.lock().unwrap().as_slice(),
        [("default".to_string(), 0, seg.clone())]
    );
    restorer.allow.store(true, Ordering::SeqCst);
    assert_eq!(e.get("default", b"old").unwrap().unwrap().value, val(1, 0));
    assert_eq!(restorer.calls.lock().unwrap().len(), 2);
    // Adopted: later reads use the local file without asking again.
    assert_eq!(e.get("default", b"old").unwrap().unwrap().value, val(1, 0));
    assert_eq!(restorer.calls.lock().unwrap().len(), 2);
    assert!(!e.segments("default").unwrap()[0].offloaded);
    drop(e);
    // After a restart the local file wins over the descriptor's "offloaded".
    let e = Engine::open(&data, cfg()).unwrap();
    assert_eq!(e.get("default", b"old").unwrap().unwrap().value, val(1, 0));
}

#[test]
fn the_directory_can_be_opened_again_as_soon_as_the_last_handle_is_dropped() {
    // A background tick (here a periodic fsync every millisecond, and age rotations) may hold
    // the engine when the caller drops it; the drop must still close the directory before it
    // returns, or the next open fails with "lock held".
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::Periodic(Duration::from_millis(1)),
        max_segment_age: Some(Duration::from_millis(4)),
        ..cfg()
    };
    for round in 0..150u32 {
        let e = Engine::open(dir.path(), config.clone())
            .unwrap_or_else(|err| panic!("round {round}: reopen failed: {err}"));
        let other = e.clone();
        for k in 0..8u32 {
            other
                .set("default", Some(&k.to_le_bytes()), &val(k, round))
                .unwrap();
        }
        if round % 3 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(other);
        let got = e.get("default", &7u32.to_le_bytes()).unwrap().unwrap();
        assert_eq!(got.value, val(7, round));
        drop(e);
    }
    let e = Engine::open(dir.path(), cfg()).unwrap();
    let got = e.get("default", &3u32.to_le_bytes()).unwrap().unwrap();
    assert_eq!(got.value, val(3, 149));
}

/// An in-memory cold tier that counts the reads that reach it and can hold them at a gate
/// (open unless closed; a closed gate opens by itself after 10 s, so that a regression fails
/// instead of hanging).
#[derive(Debug, Default)]
struct ColdProbe {
    objects: Mutex<BTreeMap<String, Bytes>>,
    reads: std::sync::atomic::AtomicUsize,
    state: Mutex<(bool, bool)>, // (a read is waiting, the gate is closed)
    changed: std::sync::Condvar,
}

impl ColdProbe {
    fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn close(&self) {
        *self.state.lock().unwrap() = (false, true);
    }
    fn open(&self) {
        self.state.lock().unwrap().1 = false;
        self.changed.notify_all();
    }
    fn is_open(&self) -> bool {
        !self.state.lock().unwrap().1
    }
    fn wait_for_reader(&self) {
        let mut st = self.state.lock().unwrap();
        while !st.0 {
            st = self.changed.wait(st).unwrap();
        }
    }
    fn read(&self, key: &str) -> Result<Bytes> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        {
            let mut st = self.state.lock().unwrap();
            st.0 = true;
            self.changed.notify_all();
            let (mut st, _) = self
                .changed
                .wait_timeout_while(st, Duration::from_secs(10), |s| s.1)
                .unwrap();
            st.1 = false;
        }
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }
}

#[async_trait]
impl Backend for ColdProbe {
    fn name(&self) -> String {
        "memory".into()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.objects.lock().unwrap().insert(key.to_string(), data);
        Ok(())
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.read(key)
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        let all = self.read(key)?;
        Ok(all.slice(range.start as usize..range.end as usize))
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

/// An engine over a fresh [`ColdProbe`] holding keys 0..100 (round 0): more than one segment,
/// so the first ones are sealed.
fn engine_over_probe_with_100_keys() -> (Engine, Arc<ColdProbe>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cold = Arc::new(ColdProbe::default());
    let e = Engine::open(dir.path(), cold_cfg(&cold)).unwrap();
    for k in 0..100u32 {
        e.set("default", Some(&k.to_le_bytes()), &val(k, 0))
            .unwrap();
    }
    (e, cold, dir)
}

#[test]
fn an_identical_set_over_an_offloaded_value_writes_without_fetching() {
    // Comparing with a value in the cold tier would hold the namespace's writer for a whole
    // fetch; the engine writes a new version instead (always correct) and fetches nothing.
    let (e, cold, _dir) = engine_over_probe_with_100_keys();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for s in e.segments("default").unwrap().iter().filter(|s| s.sealed) {
        let data = Bytes::from(std::fs::read(&s.path).unwrap());
        rt.block_on(cold.put(&cold_key("default", s.id), data))
            .unwrap();
        e.offload_segment("default", s.id).unwrap();
    }
    // Key 1 was among the first written: its segment is sealed and offloaded.
    let segs = e.segments("default").unwrap();
    assert!(segs.iter().filter(|s| s.offloaded).count() >= 1);
    assert!(segs.iter().any(|s| !s.offloaded));
    let key = 1u32.to_le_bytes();
    let reads = || cold.reads();
    assert_eq!(reads(), 0);

    let outcome = e.set("default", Some(&key), &val(1, 0)).unwrap();
    assert!(
        matches!(outcome, qsfs_core::SetOutcome::Written { .. }),
        "{outcome:?}"
    );
    assert_eq!(reads(), 0, "the SET fetched from the cold tier");
    // A local live value is still compared: byte-identical is a no-op.
    let again = e.set("default", Some(&key), &val(1, 0)).unwrap();
    assert!(matches!(again, qsfs_core::SetOutcome::Unchanged { .. }));
    assert_eq!(e.get("default", &key).unwrap().unwrap().value, val(1, 0));
    assert_eq!(
        e.get("default", &2u32.to_le_bytes())
            .unwrap()
            .unwrap()
            .value,
        val(2, 0)
    );
    assert!(reads() >= 1, "key 2 came from the cold tier");
}

#[test]
fn restoring_a_segment_does_not_hold_up_writes_during_the_fetch() {
    let (e, cold, _dir) = engine_over_probe_with_100_keys();
    let first = e.segments("default").unwrap()[0].clone();
    assert!(first.sealed);
    let data = Bytes::from(std::fs::read(&first.path).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(cold.put(&cold_key("default", first.id), data))
        .unwrap();
    e.offload_segment("default", first.id).unwrap();
    cold.close();

    let restorer = {
        let e = e.clone();
        std::thread::spawn(move || e.restore_segment("default", first.id))
    };
    cold.wait_for_reader();
    // The fetch is waiting at the gate: writes to the namespace must not wait with it.
    e.set("default", Some(b"during"), b"the fetch").unwrap();
    assert!(!cold.is_open(), "the write waited for the fetch");
    cold.open();
    restorer.join().unwrap().unwrap();
    assert!(first.path.exists(), "restored to local disk");
    for k in 0..100u32 {
        assert_eq!(
            e.get("default", &k.to_le_bytes()).unwrap().unwrap().value,
            val(k, 0)
        );
    }
    assert_eq!(
        e.get("default", b"during").unwrap().unwrap().value,
        b"the fetch"
    );
}

/// The write reserve of [`small_disk_engine`].
const RESERVE: u64 = 600 * 1024;

/// An engine on a 4 MiB tmpfs (unmounted when the first value drops, after the engine), with segments of
/// `max_segment_size`, a write reserve and a history retention (so low-space compaction runs).
fn small_disk_engine(max_segment_size: u64) -> (Tmpfs, Engine) {
    let fs = Tmpfs::sized("4m");
    let config = EngineConfig {
        max_segment_size,
        history_retention: Some(Duration::from_secs(3600)),
        write_reserve: RESERVE,
        ..cfg()
    };
    let engine = Engine::open(fs.0.path().join("engine"), config).unwrap();
    (fs, engine)
}

/// SETs that fill a disk stop short of the write reserve, so deletes still fit and the low-space
/// compaction has room to copy a segment's live half and free the rest; every live value stays
/// and the space given back takes new SETs. Without the reserve (`write_reserve: 0`) the disk
/// fills to its last page and nothing ever comes back: no segment's live data fits.
#[test]
fn a_disk_filled_by_sets_keeps_room_to_delete_and_give_space_back() {
    let (_fs, engine) = small_disk_engine(512 * 1024);
    let available = |e: &Engine| e.disk_space().unwrap().available;
    let mut written = Vec::new();
    let err = loop {
        let k = written.len() as u32;
        match engine.set("default", Some(&k.to_le_bytes()), &val(k, 1)) {
            Ok(_) => written.push(k),
            Err(e) => break e,
        }
        assert!(written.len() < 2000, "a 4 MiB disk cannot hold 8 MiB");
    };
    assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
    let full = available(&engine);
    assert!(full >= RESERVE - 64 * 1024, "{full} bytes left");
    // A batch is refused too, item by item, and writes nothing.
    let batch = [(&b"b1"[..], &val(1, 2)[..]), (&b"b2"[..], &val(2, 2)[..])];
    let got = engine.set_many("default", &batch).unwrap();
    assert!(
        got.iter().all(|r| matches!(r, Err(Error::NoSpace(_)))),
        "{got:?}"
    );
    for k in written.iter().copied().filter(|k| k % 2 == 0) {
        engine.delete("default", &k.to_le_bytes()).unwrap();
    }
    engine.rotate("default").unwrap();
    reclaim_gives_back(&engine, &written, full, |k| k % 2 == 1);
}

/// Runs the low-space compaction until it gives nothing more, after the keys of `written` (4 KiB
/// values of round 1) that `kept` refuses were deleted from a disk with `full` bytes available:
/// at least half of what was deleted comes back, every kept value reads, and a new SET fits.
fn reclaim_gives_back(engine: &Engine, written: &[u32], full: u64, kept: impl Fn(u32) -> bool) {
    for _ in 0..8 {
        if engine.reclaim("default").unwrap().segments.is_empty() {
            break;
        }
    }
    let back = engine.disk_space().unwrap().available;
    let deleted = written.iter().filter(|k| !kept(**k)).count() as u64 * 4096;
    assert!(
        back >= full + deleted / 2,
        "{back} bytes available after deleting {deleted} (was {full})"
    );
    for &k in written {
        let got = engine.get("default", &k.to_le_bytes()).unwrap();
        assert_eq!(got.map(|e| e.value), kept(k).then(|| val(k, 1)), "key {k}");
    }
    engine
        .set("default", Some(b"after"), &val(9, 9))
        .expect("the space given back takes new SETs");
}

/// A disk filled within the one segment being written (segments larger than the disk) gives
/// back what is deleted: the low-space compaction seals that segment when most of it is dead.
/// Only sealed segments are compacted, so before, nothing came back however much was deleted.
#[test]
fn a_disk_filled_within_one_segment_gives_deleted_space_back() {
    let (_fs, engine) = small_disk_engine(64 << 20);
    let available = |e: &Engine| e.disk_space().unwrap().available;
    let mut written = Vec::new();
    while engine
        .set(
            "default",
            Some(&(written.len() as u32).to_le_bytes()),
            &val(written.len() as u32, 1),
        )
        .is_ok()
    {
        written.push(written.len() as u32);
        assert!(written.len() < 2000, "a 4 MiB disk cannot hold 8 MiB");
    }
    assert_eq!(
        engine.segments("default").unwrap().len(),
        1,
        "all in one segment"
    );
    let full = available(&engine);
    // Nine in ten deleted: what stays fits in the reserve, so the segment can be rewritten.
    for k in written.iter().copied().filter(|k| k % 10 != 0) {
        engine.delete("default", &k.to_le_bytes()).unwrap();
    }
    reclaim_gives_back(&engine, &written, full, |k| k % 10 == 0);
}

/// Copies a directory tree (an engine's files as a crash after its last sync leaves them).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.metadata().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A large index is not rewritten at every seal: with many small keys in small segments the
/// index snapshot soon outweighs a segment, and writing it whole (snapshot and manifest) at
/// every seal wrote many times the data. Seals by size capture the manifest only once the
/// segments sealed since hold 8 times the snapshot; an open replays the segments sealed since
/// (after a crash too), and a cut still captures a manifest that covers every seal.
#[test]
fn a_large_index_is_not_rewritten_at_every_seal() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        max_segment_size: 16 * 1024,
        ..EngineConfig::default()
    };
    let e = Engine::open(dir.path(), config.clone()).unwrap();
    let small = |k: u32| format!("value of key {k}").into_bytes();
    let seals_before = e.seal_count();
    let mut snapshots = 0u64;
    let mut last = (0u64, std::time::SystemTime::UNIX_EPOCH);
    let snapshot = dir.path().join("ns/default/index");
    for k in 0..20_000u32 {
        e.set("default", Some(&k.to_le_bytes()), &small(k)).unwrap();
        if k % 64 == 0 {
            // Each capture rewrites the snapshot file: count the distinct versions seen.
            e.sync().unwrap();
            if let Ok(m) = std::fs::metadata(&snapshot) {
                let now = (m.len(), m.modified().unwrap());
                if now != last {
                    snapshots += 1;
                    last = now;
                }
            }
        }
    }
    e.sync().unwrap();
    let seals = e.seal_count() - seals_before;
    let snapshot_len = std::fs::metadata(&snapshot).unwrap().len();
    eprintln!("{snapshots} snapshots written for {seals} seals; snapshot {snapshot_len} bytes");
    assert!(seals > 60, "only {seals} seals: the test needs many");
    assert!(
        snapshot_len > 8 * 16 * 1024,
        "snapshot {snapshot_len} bytes"
    );
    assert!(
        snapshots >= 2 && snapshots * 4 < seals,
        "{snapshots} snapshots written for {seals} seals"
    );
    let manifest = e.manifest("default").unwrap();
    let sealed = |e: &Engine| {
        e.segments("default")
            .unwrap()
            .iter()
            .filter(|s| s.sealed)
            .map(|s| s.id)
            .max()
    };
    assert!(
        manifest.sealed_through < sealed(&e),
        "the manifest is behind"
    );
    let check = |e: &Engine| {
        for k in 0..20_000u32 {
            let got = e.get("default", &k.to_le_bytes()).unwrap();
            assert_eq!(got.map(|v| v.value), Some(small(k)), "key {k}");
        }
    };
    // A crash now: the snapshot on disk is older than several sealed segments.
    let crashed_dir = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), crashed_dir.path());
    let crashed = Engine::open(crashed_dir.path(), config.clone()).unwrap();
    check(&crashed);
    drop(crashed);
    // A cut captures a manifest covering every sealed segment.
    let cut = e.seal_all().unwrap();
    let m = cut.iter().find(|m| m.namespace == "default").unwrap();
    assert_eq!(m.sealed_through, sealed(&e));
    assert_eq!(e.manifest("default").unwrap().generation, m.generation);
    drop(e);
    let e = Engine::open(dir.path(), config).unwrap();
    check(&e);
}
