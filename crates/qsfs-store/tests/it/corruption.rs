//! Broken-state fixtures: a flipped byte in the middle of a segment, a segment cut mid-record,
//! a deleted or damaged index snapshot. The engine opens, reports what is damaged, refuses to
//! serve damaged values and serves everything else.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use qsfs_core::{Error, Store};
use qsfs_store::{Durability, Engine, EngineConfig};

fn cfg() -> EngineConfig {
    EngineConfig {
        durability: Durability::None,
        max_segment_size: 8 * 1024,
        ..EngineConfig::default()
    }
}

fn value(i: u32) -> Vec<u8> {
    format!("value number {i} ").repeat(20).into_bytes()
}

/// 60 keys over several segments; returns the engine directory.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    for i in 0..60u32 {
        e.set("default", Some(format!("key{i}").as_bytes()), &value(i))
            .unwrap();
    }
    assert!(e.segments("default").unwrap().len() >= 3);
    dir
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join("ns/default").join(format!("{id:010}.seg"))
}

/// Offset of the value of `key` inside its segment file, found by searching the file.
fn find(dir: &Path, needle: &[u8]) -> (u32, u64) {
    for id in 0..100 {
        let Ok(data) = std::fs::read(segment_path(dir, id)) else {
            continue;
        };
        if let Some(pos) = data.windows(needle.len()).position(|w| w == needle) {
            return (id, pos as u64);
        }
    }
    panic!("not found");
}

fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, at).unwrap();
}

fn assert_others_intact(e: &Engine, except: &[u32]) {
    for i in (0..60u32).filter(|i| !except.contains(i)) {
        let got = e
            .get("default", format!("key{i}").as_bytes())
            .unwrap()
            .map(|x| x.value);
        assert_eq!(got, Some(value(i)), "key{i}");
    }
}

fn flipped_value_byte(drop_index: bool) {
    let dir = fixture();
    let (seg, off) = find(dir.path(), &value(7));
    flip(&segment_path(dir.path(), seg), off + 10);
    if drop_index {
        std::fs::remove_file(dir.path().join("ns/default/index")).unwrap();
    }
    let e = Engine::open(dir.path(), cfg()).unwrap();
    match e.get("default", b"key7").unwrap_err() {
        Error::Corrupt { location, .. } => {
            assert!(
                location.contains(&format!("{seg:010}.seg")),
                "location names the segment: {location}"
            )
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(e.check("default", b"key7").unwrap(), Some(false));
    assert!(
        e.exists("default", b"key7").unwrap(),
        "the key is known, its value is damaged"
    );
    assert_others_intact(&e, &[7]);
    if drop_index {
        let damage = e.stats("default").unwrap().damage;
        assert_eq!(
            damage.len(),
            1,
            "the rebuild reports the damage: {damage:?}"
        );
        assert!(damage[0].contains(&format!("{seg:010}.seg")), "{damage:?}");
    }
    // Still writable; writing the key again repairs it, also across a reopen.
    e.set("default", Some(b"key7"), b"repaired").unwrap();
    e.set("default", Some(b"new"), b"n").unwrap();
    drop(e);
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(
        e.get("default", b"key7").unwrap().unwrap().value,
        b"repaired"
    );
    assert_eq!(e.get("default", b"new").unwrap().unwrap().value, b"n");
    assert_others_intact(&e, &[7]);
}

#[test]
fn flipped_value_byte_with_index() {
    flipped_value_byte(false);
}

#[test]
fn flipped_value_byte_rebuilding_the_index() {
    flipped_value_byte(true);
}

/// A large value is read with a `pread` of its own after its header (not the same read): a
/// flipped byte in it, at its start or at its end, is still caught, and its neighbours read.
#[test]
fn a_flipped_byte_in_a_large_value_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let big = |i: u8| -> Vec<u8> { (0..200_000u32).map(|j| (j % 251) as u8 ^ i).collect() };
    let e = Engine::open(dir.path(), EngineConfig::default()).unwrap();
    for i in 0..3u8 {
        e.set("default", Some(&[b'k', i]), &big(i)).unwrap();
    }
    drop(e);
    let (seg, off) = find(dir.path(), &big(1));
    for at in [off, off + 199_999] {
        flip(&segment_path(dir.path(), seg), at);
        let e = Engine::open(dir.path(), EngineConfig::default()).unwrap();
        assert!(
            matches!(e.get("default", b"k\x01"), Err(Error::Corrupt { .. })),
            "damage at {at} caught"
        );
        for i in [0u8, 2] {
            assert_eq!(e.get("default", &[b'k', i]).unwrap().unwrap().value, big(i));
        }
        drop(e);
        flip(&segment_path(dir.path(), seg), at);
        let e = Engine::open(dir.path(), EngineConfig::default()).unwrap();
        assert_eq!(e.get("default", b"k\x01").unwrap().unwrap().value, big(1));
    }
}

#[test]
fn older_versions_stay_reachable_past_a_corrupt_live_value() {
    let dir = fixture();
    {
        let e = Engine::open(dir.path(), cfg()).unwrap();
        e.set("default", Some(b"key3"), b"second version of key3")
            .unwrap();
    }
    let (seg, off) = find(dir.path(), b"second version of key3");
    flip(&segment_path(dir.path(), seg), off + 2);
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert!(matches!(
        e.history("default", b"key3", None),
        Err(Error::Corrupt { .. })
    ));
    // The live record's header is intact: its link to the older version is still readable.
    let before = e.version_before("default", b"key3", None).unwrap();
    let old = e.history("default", b"key3", before).unwrap();
    assert_eq!(old.value, value(3));
}

#[test]
fn flipped_header_byte_is_reported() {
    let dir = fixture();
    let (seg, off) = find(dir.path(), b"key21");
    // A byte of the record header just before the key.
    flip(&segment_path(dir.path(), seg), off - 20);
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert!(matches!(
        e.get("default", b"key21"),
        Err(Error::Corrupt { .. })
    ));
    assert_others_intact(&e, &[21]);
    drop(e);
    std::fs::remove_file(dir.path().join("ns/default/index")).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    // Rebuilt from the segments: the damaged header is mended enough to know its key, so the
    // key reports the damage (it read as absent before); reported, everything else found.
    assert_eq!(e.stats("default").unwrap().damage.len(), 1);
    assert!(matches!(
        e.get("default", b"key21"),
        Err(Error::Corrupt { .. })
    ));
    assert_others_intact(&e, &[21]);
}

/// A damaged byte anywhere in the header or key of a key's newest record, found while the
/// index is rebuilt from the segments (after a crash, or with the snapshot lost): reads of the
/// key report the damage and never serve the version before it as if it were the newest
/// (they did, with `CHECK` saying all was well). In a sealed segment and as the last record of
/// the current one, which is not cut off as a torn write.
#[test]
fn a_damaged_newest_header_never_lets_an_older_version_through() {
    for last in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path(), cfg()).unwrap();
        e.set("default", Some(b"acct"), b"balance=100-OLD").unwrap();
        e.set("default", Some(b"filler"), &value(1)).unwrap();
        e.set("default", Some(b"acct"), b"balance=999-NEW").unwrap();
        if !last {
            e.set("default", Some(b"filler2"), &value(2)).unwrap();
        }
        drop(e);
        let (seg, off) = find(dir.path(), b"balance=999-NEW");
        let path = segment_path(dir.path(), seg);
        let record = off - 4 - 64;
        for at in record..off {
            flip(&path, at);
            let _ = std::fs::remove_file(dir.path().join("ns/default/index"));
            let e = Engine::open(dir.path(), cfg()).unwrap();
            let got = e.get("default", b"acct");
            assert!(
                matches!(got, Err(Error::Corrupt { .. })),
                "byte {} of the record (last: {last}): {:?}",
                at - record,
                got.map(|v| v.map(|v| String::from_utf8_lossy(&v.value).into_owned()))
            );
            assert_eq!(
                e.get("default", b"filler").unwrap().unwrap().value,
                value(1)
            );
            drop(e);
            flip(&path, at);
        }
        let e = Engine::open(dir.path(), cfg()).unwrap();
        assert_eq!(
            e.get("default", b"acct").unwrap().unwrap().value,
            b"balance=999-NEW"
        );
    }
}

#[test]
fn current_segment_cut_mid_record_loses_only_that_record() {
    let dir = fixture();
    let current = {
        let e = Engine::open(dir.path(), cfg()).unwrap();
        e.stats("default").unwrap().current_segment
    };
    let path = segment_path(dir.path(), current);
    let len = std::fs::metadata(&path).unwrap().len();
    // Cut the last record (key59) in half, as a crash during its write would.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 150).unwrap();
    drop(f);
    for drop_index in [true, false] {
        if drop_index {
            std::fs::remove_file(dir.path().join("ns/default/index")).unwrap();
        }
        let e = Engine::open(dir.path(), cfg()).unwrap();
        assert_eq!(
            e.get("default", b"key59").unwrap(),
            None,
            "a torn record is never served"
        );
        assert_others_intact(&e, &[59]);
        // New writes go after the last valid record, never after garbage.
        e.set("default", Some(b"after"), b"crash").unwrap();
        drop(e);
        let e = Engine::open(dir.path(), cfg()).unwrap();
        assert_eq!(e.get("default", b"after").unwrap().unwrap().value, b"crash");
        assert_eq!(e.stats("default").unwrap().damage, Vec::<String>::new());
        e.delete("default", b"after").unwrap();
    }
}

#[test]
fn garbage_appended_to_current_segment_is_cut() {
    let dir = fixture();
    let current = Engine::open(dir.path(), cfg())
        .unwrap()
        .stats("default")
        .unwrap()
        .current_segment;
    let path = segment_path(dir.path(), current);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0u8; 4096]).unwrap();
    drop(f);
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_others_intact(&e, &[]);
    e.set("default", Some(b"x"), b"y").unwrap();
    drop(e);
    std::fs::remove_file(dir.path().join("ns/default/index")).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(e.get("default", b"x").unwrap().unwrap().value, b"y");
    assert_others_intact(&e, &[]);
}

#[test]
fn sealed_segment_cut_mid_record_is_reported() {
    let dir = fixture();
    let path = segment_path(dir.path(), 0);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    std::fs::remove_file(dir.path().join("ns/default/index")).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    let damage = e.stats("default").unwrap().damage;
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert!(damage[0].contains("0000000000.seg"), "{damage:?}");
    // The cut record is gone; every other key is served.
    let lost: Vec<u32> = (0..60)
        .filter(|i| !e.exists("default", format!("key{i}").as_bytes()).unwrap())
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_others_intact(&e, &lost);
}

#[test]
fn deleted_or_damaged_index_is_rebuilt() {
    let dir = fixture();
    let index = dir.path().join("ns/default/index");
    std::fs::remove_file(&index).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_others_intact(&e, &[]);
    drop(e);
    assert!(index.exists(), "closing writes a fresh snapshot");
    let len = std::fs::metadata(&index).unwrap().len();
    flip(&index, len / 2);
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_others_intact(&e, &[]);
    drop(e);
    std::fs::write(&index, b"not an index").unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_others_intact(&e, &[]);
}

#[test]
fn stale_index_naming_a_vanished_segment_is_rebuilt() {
    let dir = fixture();
    let index = dir.path().join("ns/default/index");
    let stale = std::fs::read(&index).unwrap();
    {
        let e = Engine::open(dir.path(), cfg()).unwrap();
        for i in 0..60u32 {
            e.set(
                "default",
                Some(format!("key{i}").as_bytes()),
                &value(i + 1000),
            )
            .unwrap();
        }
        e.compact_with("default", 1.0).unwrap();
    }
    // An old snapshot (from before the compaction removed segment 0) comes back.
    std::fs::write(&index, stale).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    for i in 0..60u32 {
        assert_eq!(
            e.get("default", format!("key{i}").as_bytes())
                .unwrap()
                .unwrap()
                .value,
            value(i + 1000)
        );
    }
}

#[test]
fn verify_finds_damage_the_snapshot_hides() {
    let dir = fixture();
    let (seg, off) = find(dir.path(), &value(33));
    flip(&segment_path(dir.path(), seg), off + 3);
    let e = Engine::open(dir.path(), cfg()).unwrap();
    // Opening from the snapshot does not read sealed segments...
    assert!(e.stats("default").unwrap().damage.is_empty());
    // ...a scrub does.
    let found = e.verify("default").unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(&format!("{seg:010}.seg")), "{found:?}");
    assert_eq!(e.stats("default").unwrap().damage, found);
    assert_others_intact(&e, &[33]);
    // An undamaged namespace verifies clean.
    e.namespace_create("clean").unwrap();
    e.set("clean", Some(b"k"), b"v").unwrap();
    assert!(e.verify("clean").unwrap().is_empty());
}

/// Which of the fixture's keys have their record in segment `id`.
fn keys_in(dir: &Path, id: u32) -> Vec<u32> {
    let data = std::fs::read(segment_path(dir, id)).unwrap();
    (0..60u32)
        .filter(|i| {
            let v = value(*i);
            data.windows(v.len()).any(|w| w == v.as_slice())
        })
        .collect()
}

#[test]
fn newest_segment_whose_header_never_reached_the_disk_is_dropped_not_fatal() {
    // The engine creates a segment without fsyncs when a seal thread runs; a crash before its
    // first sync can leave the file with records but a header of zeros (the pages reached
    // the disk out of order). Nothing in it was acknowledged as durable.
    let dir = fixture();
    let current = {
        let e = Engine::open(dir.path(), cfg()).unwrap();
        e.stats("default").unwrap().current_segment
    };
    let lost = keys_in(dir.path(), current);
    assert!(!lost.is_empty());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), current))
        .unwrap();
    f.write_all_at(&[0u8; 32], 0).unwrap();
    drop(f);
    std::fs::remove_file(dir.path().join("ns/default/index")).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert!(e.stats("default").unwrap().damage.is_empty());
    assert_others_intact(&e, &lost);
    for i in &lost {
        assert_eq!(
            e.get("default", format!("key{i}").as_bytes()).unwrap(),
            None
        );
    }
    e.set("default", Some(b"after"), b"works").unwrap();
    assert_eq!(e.get("default", b"after").unwrap().unwrap().value, b"works");
}

#[test]
fn older_segment_with_a_zeroed_header_is_damage_not_removed() {
    let dir = fixture();
    let path = segment_path(dir.path(), 0);
    let lost = keys_in(dir.path(), 0);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0u8; 32], 0).unwrap();
    drop(f);
    std::fs::remove_file(dir.path().join("ns/default/index")).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(e.stats("default").unwrap().damage.len(), 1);
    assert!(path.exists(), "only the newest segment may be dropped");
    assert_others_intact(&e, &lost);
}

fn value_of(e: &Engine, ns: &str) -> Vec<u8> {
    e.get(ns, b"k").unwrap().unwrap().value.to_vec()
}

/// A namespace whose descriptor is damaged, or names another namespace, stays unavailable with
/// an error that says so, and is neither created again nor deleted; the engine opens and every
/// other namespace serves. Once its files are put back it serves again, nothing lost.
#[test]
fn a_damaged_namespace_stays_unavailable_and_the_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(dir.path(), cfg()).unwrap();
        for ns in ["a", "b", "c"] {
            e.namespace_create(ns).unwrap();
            e.set(ns, Some(b"k"), ns.as_bytes()).unwrap();
        }
        e.set("default", Some(b"k"), b"default").unwrap();
    }
    let desc = |ns: &str| dir.path().join("ns").join(ns).join("namespace");
    let (a_desc, c_desc) = (
        std::fs::read(desc("a")).unwrap(),
        std::fs::read(desc("c")).unwrap(),
    );
    std::fs::write(desc("a"), b"not a descriptor").unwrap();
    std::fs::copy(desc("b"), desc("c")).unwrap();
    {
        let e = Engine::open(dir.path(), cfg()).expect("one damaged namespace stops nothing");
        assert_eq!(value_of(&e, "b"), b"b");
        assert_eq!(value_of(&e, "default"), b"default");
        e.set("b", Some(b"k2"), b"still written").unwrap();
        for ns in ["a", "c"] {
            let err = e.get(ns, b"k").unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{ns}: {err:?}");
            assert!(err.to_string().contains("damaged"), "{err}");
            let again = e.namespace_create(ns).unwrap_err();
            assert!(again.to_string().contains("damaged"), "{again}");
            assert!(e.namespace_delete(ns).is_err(), "{ns} deleted");
            assert!(e.set(ns, Some(b"k"), b"x").is_err());
        }
        let list = e.namespace_list().unwrap();
        assert_eq!(list, ["default", "a", "b", "c"]);
        let damaged: Vec<String> = e.damaged_namespaces().into_iter().map(|d| d.0).collect();
        assert_eq!(damaged, ["a", "c"]);
    }
    std::fs::write(desc("a"), a_desc).unwrap();
    std::fs::write(desc("c"), c_desc).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert!(e.damaged_namespaces().is_empty());
    for ns in ["a", "b", "c"] {
        assert_eq!(value_of(&e, ns), ns.as_bytes());
    }
}

/// A damaged default namespace is not replaced by a new empty one: it stays unavailable, its
/// segments untouched.
#[test]
fn a_damaged_default_namespace_is_not_started_afresh() {
    let dir = fixture();
    let desc = dir.path().join("ns/default/namespace");
    let good = std::fs::read(&desc).unwrap();
    std::fs::write(&desc, b"").unwrap();
    {
        let e = Engine::open(dir.path(), cfg()).unwrap();
        let err = e.get("default", b"key1").unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(e.set("default", Some(b"new"), b"x").is_err());
        assert!(segment_path(dir.path(), 0).exists() || segment_path(dir.path(), 1).exists());
        assert_eq!(
            std::fs::read(&desc).unwrap(),
            b"",
            "the descriptor is left as found"
        );
    }
    std::fs::write(&desc, good).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(e.get("default", b"key7").unwrap().unwrap().value, value(7));
}

/// A truncated or emptied `engine.key` is a clear error naming the file and its length, and it
/// is never replaced by a new key (namespace passwords are sealed under it).
#[test]
fn a_damaged_engine_key_is_a_clear_error_and_is_kept() {
    let dir = fixture();
    let key = dir.path().join("engine.key");
    let good = std::fs::read(&key).unwrap();
    for bad in [&b""[..], &good[..31], &[good.as_slice(), b"x"].concat()] {
        std::fs::write(&key, bad).unwrap();
        let Err(err) = Engine::open(dir.path(), cfg()) else {
            panic!("an engine key of {} bytes opened", bad.len());
        };
        let text = err.to_string();
        assert!(text.contains("engine.key"), "{text}");
        assert!(
            text.contains(&format!("{} bytes, not 32", bad.len())),
            "{text}"
        );
        assert_eq!(
            std::fs::read(&key).unwrap(),
            bad,
            "the file is left as it was"
        );
    }
    std::fs::write(&key, &good).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(e.get("default", b"key3").unwrap().unwrap().value, value(3));
}
