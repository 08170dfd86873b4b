//! Behaviour of the engine that the Store conformance suite does not cover: persistence,
//! sealing, offload, properties that only an embedded engine has.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use qsfs_core::{Error, Mode, NamespaceProperty, ReadOnlyReason, ScanOrder, Store};
use qsfs_store::{Durability, Engine, EngineConfig};

fn cfg() -> EngineConfig {
    EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    }
}

#[test]
fn values_survive_reopen_with_and_without_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(dir.path(), cfg()).unwrap();
        for i in 0..100u32 {
            e.set(
                "default",
                Some(format!("k{i}").as_bytes()),
                format!("v{i}").as_bytes(),
            )
            .unwrap();
        }
        e.delete("default", b"k5").unwrap();
    }
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(e.get("default", b"k7").unwrap().unwrap().value, b"v7");
    assert!(e.get("default", b"k5").unwrap().is_none());
    drop(e);
    std::fs::remove_file(dir.path().join("ns/default/index")).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(e.get("default", b"k99").unwrap().unwrap().value, b"v99");
    assert!(e.get("default", b"k5").unwrap().is_none());
    assert_eq!(e.namespace_info("default").unwrap().entries, 99);
}

#[test]
fn second_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _e = Engine::open(dir.path(), cfg()).unwrap();
    let err = Engine::open(dir.path(), cfg()).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("already in use"));
}

#[test]
fn foreign_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), b"data").unwrap();
    let err = Engine::open(dir.path(), cfg()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(
        std::fs::read(dir.path().join("precious.txt")).unwrap(),
        b"data"
    );
}

#[test]
fn foreign_namespace_directory_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    drop(Engine::open(dir.path(), cfg()).unwrap());
    std::fs::create_dir(dir.path().join("ns/stranger")).unwrap();
    std::fs::write(dir.path().join("ns/stranger/file"), b"x").unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(e.namespace_list().unwrap(), vec!["default".to_string()]);
    let err = e.namespace_create("stranger").unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
    assert_eq!(
        std::fs::read(dir.path().join("ns/stranger/file")).unwrap(),
        b"x"
    );
}

#[test]
fn seq_mode_ids_burn_on_update_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(dir.path(), cfg()).unwrap();
        e.namespace_create("s").unwrap();
        e.namespace_set("s", NamespaceProperty::Mode(Mode::Seq))
            .unwrap();
        assert_eq!(e.set("s", None, b"a").unwrap().key(), 0u64.to_le_bytes());
        assert_eq!(e.set("s", None, b"b").unwrap().key(), 1u64.to_le_bytes());
        assert!(e
            .set("s", Some(&0u64.to_le_bytes()), b"a2")
            .unwrap()
            .written());
        assert_eq!(e.set("s", None, b"c").unwrap().key(), 3u64.to_le_bytes());
        // The burned id reads as nothing and cannot be invented.
        assert!(e.get("s", &2u64.to_le_bytes()).unwrap().is_none());
        let err = e.set("s", Some(&2u64.to_le_bytes()), b"x").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        e.delete("s", &1u64.to_le_bytes()).unwrap();
        assert!(matches!(
            e.set("s", Some(&1u64.to_le_bytes()), b"again"),
            Err(Error::InvalidArgument(_))
        ));
        // Mode cannot change once written.
        assert!(e
            .namespace_set("s", NamespaceProperty::Mode(Mode::User))
            .is_err());
    }
    for drop_index in [false, true] {
        if drop_index {
            std::fs::remove_file(dir.path().join("ns/s/index")).unwrap();
        }
        let e = Engine::open(dir.path(), cfg()).unwrap();
        assert_eq!(
            e.get("s", &0u64.to_le_bytes()).unwrap().unwrap().value,
            b"a2"
        );
        assert_eq!(
            e.set("s", None, b"d").unwrap().key(),
            (4 + u64::from(drop_index)).to_le_bytes()
        );
    }
}

#[test]
fn rotation_seals_and_data_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(
        dir.path(),
        EngineConfig {
            max_segment_size: 64 * 1024,
            ..cfg()
        },
    )
    .unwrap();
    let v = vec![7u8; 10_000];
    for i in 0..40u32 {
        e.set("default", Some(&i.to_le_bytes()), &v).unwrap();
    }
    let segs = e.segments("default").unwrap();
    assert!(segs.len() >= 6, "{segs:?}");
    assert!(segs[..segs.len() - 1]
        .iter()
        .all(|s| s.sealed && s.size <= 64 * 1024 + 11_000));
    for i in 0..40u32 {
        assert_eq!(
            e.get("default", &i.to_le_bytes()).unwrap().unwrap().value,
            v
        );
    }
    e.rotate("default").unwrap();
    assert_eq!(e.segments("default").unwrap().len(), segs.len() + 1);
}

#[test]
fn worm_lock_freeze_and_maxsize() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    e.namespace_create("w").unwrap();
    e.namespace_set("w", NamespaceProperty::Worm(true)).unwrap();
    e.set("w", Some(b"k"), b"v").unwrap();
    for r in [
        e.set("w", Some(b"k"), b"v").map(|_| ()),
        e.set("w", Some(b"k"), b"x").map(|_| ()),
        e.delete("w", b"k"),
    ] {
        assert!(
            matches!(
                r,
                Err(Error::ReadOnly {
                    reason: ReadOnlyReason::Worm,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    e.namespace_set("w", NamespaceProperty::Lock(true)).unwrap();
    assert!(matches!(
        e.set("w", Some(b"n"), b"v"),
        Err(Error::ReadOnly {
            reason: ReadOnlyReason::Locked,
            ..
        })
    ));
    assert_eq!(e.get("w", b"k").unwrap().unwrap().value, b"v");
    e.namespace_set("w", NamespaceProperty::Freeze(true))
        .unwrap();
    assert!(matches!(
        e.get("w", b"k"),
        Err(Error::ReadOnly {
            reason: ReadOnlyReason::Frozen,
            ..
        })
    ));
    e.namespace_set("w", NamespaceProperty::Lock(false))
        .unwrap();
    assert!(e.get("w", b"k").is_ok());

    e.namespace_create("m").unwrap();
    e.namespace_set("m", NamespaceProperty::MaxSize(10))
        .unwrap();
    e.set("m", Some(b"a"), b"123456").unwrap();
    assert!(matches!(
        e.set("m", Some(b"b"), b"12345"),
        Err(Error::NoSpace(_))
    ));
    // Replacing a value is credited exactly.
    e.set("m", Some(b"a"), b"1234567890").unwrap();
    assert!(matches!(
        e.set("m", Some(b"a"), b"12345678901"),
        Err(Error::NoSpace(_))
    ));
    drop(e);
    // Lock and freeze are not persisted; worm and maxsize are.
    let e = Engine::open(dir.path(), cfg()).unwrap();
    let info = e.namespace_info("w").unwrap();
    assert!(info.worm && !info.locked && !info.frozen);
    assert_eq!(e.namespace_info("m").unwrap().max_size, 10);
}

#[test]
fn scan_pages_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    for i in 0..25u8 {
        e.set("default", Some(&[b'k', i]), &[i]).unwrap();
    }
    e.set("default", Some(&[b'k', 0]), b"moved").unwrap();
    let mut fwd = Vec::new();
    let mut cur = None;
    loop {
        let page = e
            .scan("default", cur.as_ref(), 7, ScanOrder::Forward)
            .unwrap();
        fwd.extend(page.entries.iter().map(|m| m.key[1]));
        match page.next {
            Some(c) => cur = Some(c),
            None => break,
        }
    }
    let mut expect: Vec<u8> = (1..25).collect();
    expect.push(0);
    assert_eq!(fwd, expect);
    let rev = e.scan("default", None, 100, ScanOrder::Reverse).unwrap();
    expect.reverse();
    assert_eq!(
        rev.entries.iter().map(|m| m.key[1]).collect::<Vec<_>>(),
        expect
    );
    assert!(rev.next.is_none());
}

#[test]
fn old_segments_are_sealed_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    struct Obs(std::sync::Arc<std::sync::Mutex<Vec<u32>>>);
    impl qsfs_store::EngineObserver for Obs {
        fn on_segment_sealed(&self, _ns: &str, segment: u32, _path: &std::path::Path) {
            self.0.lock().unwrap().push(segment);
        }
    }
    let config = EngineConfig {
        max_segment_age: Some(std::time::Duration::from_millis(50)),
        observer: Some(std::sync::Arc::new(Obs(sealed.clone()))),
        ..cfg()
    };
    let e = Engine::open(dir.path(), config).unwrap();
    // An empty segment is never sealed for age.
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert!(sealed.lock().unwrap().is_empty());
    e.set("default", Some(b"k"), b"v").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sealed.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        *sealed.lock().unwrap(),
        vec![0],
        "the background thread sealed the old segment"
    );
    assert_eq!(e.get("default", b"k").unwrap().unwrap().value, b"v");
}

#[test]
fn identical_set_on_a_damaged_value_writes_a_repair() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    e.set("default", Some(b"k"), b"precious value").unwrap();
    drop(e);
    let seg = dir.path().join("ns/default/0000000000.seg");
    let mut data = std::fs::read(&seg).unwrap();
    let pos = data.windows(8).position(|w| w == b"precious").unwrap();
    data[pos] ^= 1;
    std::fs::write(&seg, data).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert!(matches!(e.get("default", b"k"), Err(Error::Corrupt { .. })));
    assert!(e
        .set("default", Some(b"k"), b"precious value")
        .unwrap()
        .written());
    assert_eq!(
        e.get("default", b"k").unwrap().unwrap().value,
        b"precious value"
    );
}

#[test]
fn passwords_persist_and_never_hit_the_disk_in_plain() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "Zq9-very-secret-pw";
    {
        let e = Engine::open(dir.path(), cfg()).unwrap();
        e.namespace_create("p").unwrap();
        e.namespace_set("p", NamespaceProperty::Password(Some(secret.into())))
            .unwrap();
        e.set("p", Some(b"k"), b"v").unwrap();
    }
    fn scan(dir: &std::path::Path, needle: &[u8]) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                scan(&p, needle);
            } else {
                let data = std::fs::read(&p).unwrap();
                assert!(
                    !data.windows(needle.len()).any(|w| w == needle),
                    "password in plain text in {}",
                    p.display()
                );
            }
        }
    }
    scan(dir.path(), secret.as_bytes());
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert!(e
        .namespace_authenticate("p", qsfs_core::Credential::Plain(secret))
        .unwrap());
    assert!(!e
        .namespace_authenticate("p", qsfs_core::Credential::Plain("nope"))
        .unwrap());
    use sha1::Digest;
    let digest = hex::encode(sha1::Sha1::digest(
        format!("abcdef0123456789:{secret}").as_bytes(),
    ));
    let c = qsfs_core::Credential::Challenge {
        nonce: "abcdef0123456789",
        digest: &digest,
    };
    assert!(
        e.namespace_authenticate("p", c).unwrap(),
        "SECURE challenge works after a restart"
    );
    // Clearing rewrites the descriptor: nothing of the old password remains.
    e.namespace_set("p", NamespaceProperty::Password(None))
        .unwrap();
    let desc = std::fs::read(dir.path().join("ns/p/namespace")).unwrap();
    assert!(
        !desc.windows(7).any(|w| w == b"$argon2"),
        "the hash is gone too"
    );
}

#[test]
fn single_mode_engine_refuses_other_modes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(dir.path(), cfg()).unwrap();
        e.namespace_create("u").unwrap();
        e.set("u", Some(b"k"), b"v").unwrap();
    }
    let seq_only = EngineConfig {
        single_mode: Some(Mode::Seq),
        default_mode: Mode::Seq,
        ..cfg()
    };
    let err = Engine::open(dir.path(), seq_only.clone()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), seq_only).unwrap();
    e.namespace_create("s").unwrap();
    assert_eq!(e.namespace_info("s").unwrap().mode, Mode::Seq);
    assert!(matches!(
        e.namespace_set("s", NamespaceProperty::Mode(Mode::User)),
        Err(Error::Unsupported(_))
    ));
    assert_eq!(e.set("s", None, b"x").unwrap().key(), 0u64.to_le_bytes());
}

#[test]
fn deleting_a_namespace_in_use_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    e.namespace_create("gone").unwrap();
    std::thread::scope(|s| {
        let e2 = e.clone();
        s.spawn(move || {
            for i in 0..2000u32 {
                match e2.set("gone", Some(&i.to_le_bytes()), b"v") {
                    Ok(_) => {}
                    Err(Error::NotFound(_)) => return,
                    Err(other) => panic!("{other:?}"),
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(5));
        e.namespace_delete("gone").unwrap();
    });
    assert!(!dir.path().join("ns/gone").exists());
    assert!(matches!(e.get("gone", b"k"), Err(Error::NotFound(_))));
    drop(e);
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(e.namespace_list().unwrap(), vec!["default".to_string()]);
    e.namespace_create("gone").unwrap();
    assert_eq!(e.namespace_info("gone").unwrap().entries, 0);
}

#[test]
fn an_interrupted_namespace_delete_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(dir.path(), cfg()).unwrap();
        e.namespace_create("doomed").unwrap();
        e.set("doomed", Some(b"k"), b"v").unwrap();
    }
    // What a crash between the rename and the removal leaves behind.
    let trash = dir
        .path()
        .join("ns")
        .join(format!(".deleting-{}", hex::encode("doomed")));
    std::fs::rename(dir.path().join("ns/doomed"), &trash).unwrap();
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(e.namespace_list().unwrap(), vec!["default".to_string()]);
    assert!(!trash.exists());
    // A namespace whose real name has that prefix is still a namespace.
    e.namespace_create(".deleting-not-really").unwrap();
    e.set(".deleting-not-really", Some(b"k"), b"v").unwrap();
    drop(e);
    let e = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(
        e.get(".deleting-not-really", b"k").unwrap().unwrap().value,
        b"v"
    );
}

/// Outcome of a set as comparable text: which key was written, unchanged, or which error kind.
fn outcome(r: &qsfs_core::Result<qsfs_core::SetOutcome>) -> String {
    match r {
        Ok(qsfs_core::SetOutcome::Written { key }) => format!("written {key:?}"),
        Ok(qsfs_core::SetOutcome::Unchanged { key }) => format!("unchanged {key:?}"),
        Err(e) => format!("error {:?}", std::mem::discriminant(e)),
    }
}

#[test]
fn set_many_gives_what_sets_one_by_one_give() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let small = || EngineConfig {
        max_segment_size: 16 * 1024,
        ..cfg()
    };
    // Batches with repeated keys, identical values, values too large for the room left in a
    // segment, a size-limited namespace and a sequential one.
    let item = (
        0u8..6,
        prop_oneof![Just(0usize), Just(10), Just(3000), Just(9000)],
        0u8..3,
    );
    let batches = proptest::collection::vec(proptest::collection::vec(item, 1..24), 1..8);
    let mut runner = TestRunner::new(Config {
        cases: 10,
        ..Config::default()
    });
    runner
        .run(&batches, |batches| {
            let (one, many) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let a = Engine::open(one.path(), small()).unwrap();
            let b = Engine::open(many.path(), small()).unwrap();
            for e in [&a, &b] {
                e.namespace_create("limited").unwrap();
                e.namespace_set("limited", NamespaceProperty::MaxSize(20_000))
                    .unwrap();
                e.namespace_create("seq").unwrap();
                e.namespace_set("seq", NamespaceProperty::Mode(Mode::Seq))
                    .unwrap();
            }
            for (n, batch) in batches.iter().enumerate() {
                let ns = ["default", "limited", "seq"][n % 3];
                let items: Vec<(Vec<u8>, Vec<u8>)> = batch
                    .iter()
                    .map(|(k, len, fill)| {
                        let key = if ns == "seq" {
                            if *k < 3 {
                                Vec::new()
                            } else {
                                u64::from(*k - 3).to_le_bytes().to_vec()
                            }
                        } else {
                            vec![b'k', *k]
                        };
                        (key, vec![*fill; *len])
                    })
                    .collect();
                let refs: Vec<(&[u8], &[u8])> = items
                    .iter()
                    .map(|(k, v)| (k.as_slice(), v.as_slice()))
                    .collect();
                let expected: Vec<String> = refs
                    .iter()
                    .map(|(k, v)| outcome(&a.set_at(ns, (!k.is_empty()).then_some(*k), v, None)))
                    .collect();
                let got: Vec<String> = b.set_many(ns, &refs).unwrap().iter().map(outcome).collect();
                prop_assert_eq!(expected, got);
            }
            drop(b);
            let b = Engine::open(many.path(), small()).unwrap();
            for ns in ["default", "limited", "seq"] {
                let keys = |e: &Engine| {
                    let page = e.scan(ns, None, 1000, ScanOrder::Forward).unwrap();
                    page.entries
                        .iter()
                        .map(|m| (m.key.clone(), e.get(ns, &m.key).unwrap().unwrap().value))
                        .collect::<Vec<_>>()
                };
                prop_assert_eq!(keys(&a), keys(&b));
            }
            Ok(())
        })
        .unwrap();
}
