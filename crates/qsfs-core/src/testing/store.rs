//! Conformance suite for [`Store`]: what every store must do, checked against a fresh store per
//! check. The embedded engine and every client of a 0-db-compatible server run it:
//!
//! ```text
//! #[test]
//! fn engine_conforms() {
//!     qsfs_core::testing::store::run(|| make_a_fresh_store());
//! }
//! ```
//!
//! `make` must return a store with nothing but an empty `default` namespace, on which namespace
//! administration (create, delete, set properties) is allowed. Each check panics with a message
//! naming the contract it found broken.

use std::collections::BTreeSet;

use crate::{
    Credential, Error, Mode, NamespaceProperty, ReadOnlyReason, ScanOrder, SetOutcome, Store,
    VersionId, DEFAULT_NAMESPACE, MAX_KEY_LEN, MAX_VALUE_LEN,
};

/// One named check of the suite.
pub type Check<S> = (&'static str, fn(&S));

/// Every check, by name, so a store that cannot pass one yet can run the others explicitly.
pub fn checks<S: Store>() -> Vec<Check<S>> {
    vec![
        (
            "default namespace and listing",
            namespaces_list_and_default::<S>,
        ),
        ("namespace names are validated", namespace_names::<S>),
        ("namespace create and delete", namespace_lifecycle::<S>),
        ("user mode set/get/update", user_set_get::<S>),
        ("identical set writes nothing", identical_set::<S>),
        (
            "limits give TooLarge and empty keys InvalidArgument",
            limits::<S>,
        ),
        (
            "explicit timestamps, meta, exists, check",
            timestamps_and_meta::<S>,
        ),
        ("delete appends a tombstone", delete_semantics::<S>),
        ("sequential mode", seq_mode::<S>),
        ("scan order, paging and cursors", scan_contract::<S>),
        (
            "scan cursor survives update and delete",
            scan_cursor_survives_changes::<S>,
        ),
        ("history chain, also after delete", history_chain::<S>),
        (
            "history refuses versions of another key",
            history_foreign_version::<S>,
        ),
        ("passwords", passwords::<S>),
        ("maxsize", max_size::<S>),
        ("space figures are consistent", space::<S>),
        ("worm", worm::<S>),
        ("lock and freeze", lock_and_freeze::<S>),
        ("public flag and info", public_and_info::<S>),
        ("flush empties the namespace", flush::<S>),
        ("namespaces are isolated", isolation::<S>),
        ("concurrent writers and readers", concurrency::<S>),
    ]
}

/// Runs every check, each on a fresh store from `make`.
pub fn run<S: Store, F: Fn() -> S>(make: F) {
    for (name, check) in checks::<S>() {
        let store = make();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&store)));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("Store conformance check {name:?} failed: {msg}");
        }
    }
}

fn ok<T>(r: crate::Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error {e:?}"),
    }
}

fn value_of<S: Store>(s: &S, ns: &str, key: &[u8]) -> Option<Vec<u8>> {
    ok(s.get(ns, key), "get").map(|e| e.value)
}

fn fresh_ns<S: Store>(s: &S, name: &str) -> String {
    ok(s.namespace_create(name), "namespace_create");
    name.to_string()
}

fn namespaces_list_and_default<S: Store>(s: &S) {
    let list = ok(s.namespace_list(), "namespace_list");
    assert_eq!(
        list.first().map(String::as_str),
        Some(DEFAULT_NAMESPACE),
        "default comes first: {list:?}"
    );
    ok(s.namespace_create("zeta"), "create zeta");
    ok(s.namespace_create("alpha"), "create alpha");
    let list = ok(s.namespace_list(), "namespace_list");
    assert_eq!(list[0], DEFAULT_NAMESPACE);
    let set: BTreeSet<_> = list.iter().cloned().collect();
    assert!(set.contains("zeta") && set.contains("alpha"), "{list:?}");
    assert_eq!(set.len(), list.len(), "no duplicates: {list:?}");
    assert!(
        matches!(s.get("missing-ns", b"k"), Err(Error::NotFound(_))),
        "unknown namespace is NotFound"
    );
    assert!(matches!(
        s.set("missing-ns", Some(b"k"), b"v"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        s.namespace_info("missing-ns"),
        Err(Error::NotFound(_))
    ));
}

fn namespace_names<S: Store>(s: &S) {
    for bad in ["", ".", "..", "a/b", "../x", "nul\0"] {
        let r = s.namespace_create(bad);
        assert!(
            matches!(r, Err(Error::InvalidArgument(_))),
            "name {bad:?} must be refused, got {r:?}"
        );
    }
    let long = "n".repeat(129);
    assert!(
        matches!(s.namespace_create(&long), Err(Error::TooLarge { .. })),
        "129-byte name is TooLarge"
    );
    ok(
        s.namespace_create(&"n".repeat(128)),
        "128-byte name is fine",
    );
    ok(
        s.namespace_create("with space ü"),
        "spaces and UTF-8 are fine",
    );
}

fn namespace_lifecycle<S: Store>(s: &S) {
    let ns = fresh_ns(s, "life");
    assert!(matches!(
        s.namespace_create("life"),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.namespace_create(DEFAULT_NAMESPACE),
        Err(Error::AlreadyExists(_))
    ));
    ok(s.set(&ns, Some(b"k"), b"v"), "set");
    ok(s.namespace_delete(&ns), "delete");
    assert!(!ok(s.namespace_list(), "list").contains(&ns));
    assert!(matches!(s.get(&ns, b"k"), Err(Error::NotFound(_))));
    assert!(matches!(s.namespace_delete(&ns), Err(Error::NotFound(_))));
    assert!(
        s.namespace_delete(DEFAULT_NAMESPACE).is_err(),
        "default cannot be deleted"
    );
    assert!(ok(s.namespace_list(), "list").contains(&DEFAULT_NAMESPACE.to_string()));
    // A re-created namespace starts empty.
    ok(s.namespace_create(&ns), "re-create");
    assert_eq!(
        value_of(s, &ns, b"k"),
        None,
        "re-created namespace must be empty"
    );
}

fn user_set_get<S: Store>(s: &S) {
    let d = DEFAULT_NAMESPACE;
    assert_eq!(value_of(s, d, b"nope"), None);
    let out = ok(s.set(d, Some(b"key"), b"one"), "set");
    assert_eq!(
        out,
        SetOutcome::Written {
            key: b"key".to_vec()
        }
    );
    assert_eq!(value_of(s, d, b"key").as_deref(), Some(&b"one"[..]));
    assert!(ok(s.set(d, Some(b"key"), b"two"), "update").written());
    assert_eq!(value_of(s, d, b"key").as_deref(), Some(&b"two"[..]));
    // Binary keys and values, empty value, maximal key.
    let bin_key = [0u8, 255, 10, 13, 0];
    ok(s.set(d, Some(&bin_key), &[0, 1, 2, 0]), "binary");
    assert_eq!(value_of(s, d, &bin_key), Some(vec![0, 1, 2, 0]));
    ok(s.set(d, Some(b"empty"), b""), "empty value");
    assert_eq!(value_of(s, d, b"empty"), Some(Vec::new()));
    let max_key = vec![b'k'; MAX_KEY_LEN];
    ok(s.set(d, Some(&max_key), b"max"), "255-byte key");
    assert_eq!(value_of(s, d, &max_key).as_deref(), Some(&b"max"[..]));
    let big = (0..MAX_VALUE_LEN)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>();
    ok(s.set(d, Some(b"big"), &big), "8 MiB value");
    assert!(
        value_of(s, d, b"big") == Some(big),
        "8 MiB value comes back intact"
    );
}

fn identical_set<S: Store>(s: &S) {
    let d = DEFAULT_NAMESPACE;
    ok(s.set(d, Some(b"k"), b"same"), "set");
    let ts = ok(s.meta(d, b"k"), "meta").map(|m| m.timestamp);
    let before = ok(s.history(d, b"k", None), "history");
    assert_eq!(
        ok(s.set(d, Some(b"k"), b"same"), "identical"),
        SetOutcome::Unchanged { key: b"k".to_vec() }
    );
    let after = ok(s.history(d, b"k", None), "history");
    assert_eq!(before, after, "an identical set must not add a version");
    assert_eq!(ok(s.meta(d, b"k"), "meta").map(|m| m.timestamp), ts);
    // Same length, different bytes is a real write.
    assert!(ok(s.set(d, Some(b"k"), b"sane"), "different").written());
    // After a delete the same value is written again.
    ok(s.delete(d, b"k"), "delete");
    assert!(ok(s.set(d, Some(b"k"), b"sane"), "set after delete").written());
}

fn limits<S: Store>(s: &S) {
    let d = DEFAULT_NAMESPACE;
    let long = vec![b'x'; MAX_KEY_LEN + 1];
    assert!(
        matches!(s.set(d, Some(&long), b"v"), Err(Error::TooLarge { .. })),
        "256-byte key"
    );
    let big = vec![0u8; MAX_VALUE_LEN + 1];
    assert!(
        matches!(s.set(d, Some(b"k"), &big), Err(Error::TooLarge { .. })),
        "8 MiB + 1 value"
    );
    assert!(
        matches!(s.set(d, Some(b""), b"v"), Err(Error::InvalidArgument(_))),
        "empty key in user mode"
    );
    assert!(
        matches!(s.set(d, None, b"v"), Err(Error::InvalidArgument(_))),
        "no key in user mode"
    );
    assert!(
        matches!(s.delete(d, b""), Err(Error::InvalidArgument(_))),
        "delete of empty key"
    );
    // Nothing was written by the refused calls, and the store still works.
    assert_eq!(ok(s.namespace_info(d), "info").entries, 0);
    ok(s.set(d, Some(b"k"), b"v"), "set after errors");
    assert_eq!(value_of(s, d, b"k").as_deref(), Some(&b"v"[..]));
}

fn timestamps_and_meta<S: Store>(s: &S) {
    let d = DEFAULT_NAMESPACE;
    ok(s.set_at(d, Some(b"t"), b"12345", Some(1_000_000)), "set_at");
    let e = ok(s.get(d, b"t"), "get").expect("present");
    assert_eq!(e.timestamp, 1_000_000);
    let m = ok(s.meta(d, b"t"), "meta").expect("present");
    assert_eq!(
        (m.key.as_slice(), m.length, m.timestamp),
        (&b"t"[..], 5, 1_000_000)
    );
    assert!(ok(s.exists(d, b"t"), "exists"));
    assert!(!ok(s.exists(d, b"u"), "exists"));
    assert_eq!(ok(s.meta(d, b"u"), "meta"), None);
    assert_eq!(ok(s.check(d, b"t"), "check"), Some(true));
    assert_eq!(ok(s.check(d, b"u"), "check"), None);
    let before = crate::now();
    ok(s.set(d, Some(b"n"), b"x"), "set");
    let ts = ok(s.get(d, b"n"), "get").expect("present").timestamp;
    assert!(
        ts >= before.saturating_sub(1) && ts <= crate::now() + 1,
        "set uses the current time: {ts}"
    );
    ok(s.delete_at(d, b"t", Some(2_000_000)), "delete_at");
    let h = ok(
        s.history(d, b"t", None).map(Some).or_else(|e| {
            if e.is_not_found() {
                Ok(None)
            } else {
                Err(e)
            }
        }),
        "history",
    );
    assert!(h.is_none(), "history(None) of a deleted key is NotFound");
    assert_eq!(ok(s.check(d, b"t"), "check"), None);
}

fn delete_semantics<S: Store>(s: &S) {
    let d = DEFAULT_NAMESPACE;
    assert!(
        matches!(s.delete(d, b"never"), Err(Error::NotFound(_))),
        "delete of a missing key"
    );
    ok(s.set(d, Some(b"k"), b"v"), "set");
    ok(s.set(d, Some(b"other"), b"o"), "set");
    ok(s.delete(d, b"k"), "delete");
    assert_eq!(value_of(s, d, b"k"), None);
    assert!(!ok(s.exists(d, b"k"), "exists"));
    assert!(
        matches!(s.delete(d, b"k"), Err(Error::NotFound(_))),
        "second delete"
    );
    assert_eq!(ok(s.namespace_info(d), "info").entries, 1);
    assert_eq!(ok(s.namespace_info(d), "info").data_bytes, 1);
    let page = ok(s.scan(d, None, 100, ScanOrder::Forward), "scan");
    assert_eq!(
        page.entries
            .iter()
            .map(|m| m.key.clone())
            .collect::<Vec<_>>(),
        vec![b"other".to_vec()]
    );
    assert_eq!(value_of(s, d, b"other").as_deref(), Some(&b"o"[..]));
}

fn seq_mode<S: Store>(s: &S) {
    let ns = fresh_ns(s, "seq");
    ok(
        s.namespace_set(&ns, NamespaceProperty::Mode(Mode::Seq)),
        "set mode seq",
    );
    assert_eq!(ok(s.namespace_info(&ns), "info").mode, Mode::Seq);
    let id0 = ok(s.set(&ns, None, b"zero"), "alloc").key().to_vec();
    let id1 = ok(s.set(&ns, None, b"one"), "alloc").key().to_vec();
    assert_eq!(
        id0,
        0u64.to_le_bytes(),
        "ids start at 0, 8-byte little-endian"
    );
    assert_eq!(id1, 1u64.to_le_bytes());
    assert!(ok(s.set(&ns, Some(&id0), b"zero v2"), "update live id").written());
    assert_eq!(value_of(s, &ns, &id0).as_deref(), Some(&b"zero v2"[..]));
    let id2 = ok(s.set(&ns, None, b"two"), "alloc").key().to_vec();
    let n = u64::from_le_bytes(id2.clone().try_into().expect("8-byte id"));
    assert!(n > 1, "a new id is never one handed out before: {n}");
    let never = (n + 1000).to_le_bytes();
    assert!(
        matches!(
            s.set(&ns, Some(&never), b"x"),
            Err(Error::InvalidArgument(_))
        ),
        "ids cannot be invented"
    );
    assert!(
        matches!(
            s.set(&ns, Some(b"abc"), b"x"),
            Err(Error::InvalidArgument(_))
        ),
        "a non-id key"
    );
    ok(s.delete(&ns, &id1), "delete id");
    assert!(
        matches!(
            s.set(&ns, Some(&id1), b"again"),
            Err(Error::InvalidArgument(_))
        ),
        "deleted id is not rewritable"
    );
    let id3 = ok(s.set(&ns, None, b"three"), "alloc").key().to_vec();
    let all: BTreeSet<Vec<u8>> = [id0.clone(), id1.clone(), id2.clone(), id3.clone()]
        .into_iter()
        .collect();
    assert_eq!(all.len(), 4, "no id handed out twice");
    assert_eq!(
        ok(s.set(&ns, Some(&id3), b"three"), "identical"),
        SetOutcome::Unchanged { key: id3.clone() }
    );
    let keys: Vec<Vec<u8>> = ok(s.scan(&ns, None, 100, ScanOrder::Forward), "scan")
        .entries
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        keys,
        vec![id0, id2, id3],
        "scan returns the live ids in write order"
    );
    // Mode cannot change once written.
    assert!(s
        .namespace_set(&ns, NamespaceProperty::Mode(Mode::User))
        .is_err());
    assert_eq!(ok(s.namespace_info(&ns), "info").mode, Mode::Seq);
}

fn collect_scan<S: Store>(s: &S, ns: &str, limit: usize, order: ScanOrder) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..10_000 {
        let page = ok(s.scan(ns, cursor.as_ref(), limit, order), "scan");
        assert!(page.entries.len() <= limit, "page larger than limit");
        out.extend(page.entries.into_iter().map(|m| m.key));
        match page.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
    panic!("scan did not end");
}

fn scan_contract<S: Store>(s: &S) {
    let d = DEFAULT_NAMESPACE;
    assert!(ok(s.scan(d, None, 10, ScanOrder::Forward), "empty scan")
        .entries
        .is_empty());
    let keys: Vec<Vec<u8>> = (0..30u32)
        .map(|i| format!("key{i:02}").into_bytes())
        .collect();
    // Write in a non-sorted order so write order and key order differ.
    let mut order: Vec<usize> = (0..30).map(|i| (i * 7) % 30).collect();
    for &i in &order {
        ok(
            s.set_at(
                d,
                Some(&keys[i]),
                format!("v{i}").as_bytes(),
                Some(1000 + i as u64),
            ),
            "set",
        );
    }
    // Updating a key moves it to the end; deleting removes it.
    ok(s.set(d, Some(&keys[order[0]]), b"updated"), "update");
    let moved = order.remove(0);
    order.push(moved);
    ok(s.delete(d, &keys[order[3]]), "delete");
    order.remove(3);
    let expect: Vec<Vec<u8>> = order.iter().map(|i| keys[*i].clone()).collect();
    for limit in [1, 4, 29, 100] {
        assert_eq!(
            collect_scan(s, d, limit, ScanOrder::Forward),
            expect,
            "forward scan, limit {limit}"
        );
        let mut rev = expect.clone();
        rev.reverse();
        assert_eq!(
            collect_scan(s, d, limit, ScanOrder::Reverse),
            rev,
            "reverse scan, limit {limit}"
        );
    }
    let page = ok(s.scan(d, None, 3, ScanOrder::Forward), "scan");
    assert_eq!(
        page.entries[1].length,
        format!("v{}", order[1]).len() as u64
    );
    assert_eq!(page.entries[1].timestamp, 1000 + order[1] as u64);
    // cursor_after resumes right after a key.
    let c = ok(s.cursor_after(d, &expect[10]), "cursor_after");
    assert_eq!(c.0.len(), 17, "engine cursors are 17 bytes");
    let rest = ok(s.scan(d, Some(&c), 1000, ScanOrder::Forward), "scan");
    assert_eq!(
        rest.entries
            .iter()
            .map(|m| m.key.clone())
            .collect::<Vec<_>>(),
        expect[11..].to_vec()
    );
    assert!(rest.next.is_none());
    assert!(matches!(
        s.cursor_after(d, b"absent"),
        Err(Error::NotFound(_))
    ));
    assert!(
        s.scan(
            d,
            Some(&crate::Cursor(vec![0xEE; 17])),
            10,
            ScanOrder::Forward
        )
        .is_err(),
        "garbage cursor"
    );
}

fn scan_cursor_survives_changes<S: Store>(s: &S) {
    let d = DEFAULT_NAMESPACE;
    for i in 0..10u8 {
        ok(s.set(d, Some(&[b'k', i]), &[i]), "set");
    }
    let page = ok(s.scan(d, None, 4, ScanOrder::Forward), "scan");
    let next = page.next.expect("more to come");
    // The key the cursor points after is updated, another one deleted.
    ok(s.set(d, Some(&[b'k', 3]), b"new"), "update cursor key");
    ok(s.delete(d, &[b'k', 5]), "delete");
    let rest = collect_from(s, d, next);
    let mut expect: Vec<Vec<u8>> = [4u8, 6, 7, 8, 9].iter().map(|i| vec![b'k', *i]).collect();
    expect.push(vec![b'k', 3]);
    assert_eq!(
        rest, expect,
        "resume after the cursor key, which moved to the end"
    );
    // Same with a delete of the cursor key.
    let c = ok(s.cursor_after(d, &[b'k', 6]), "cursor_after");
    ok(s.delete(d, &[b'k', 6]), "delete cursor key");
    let rest = collect_from(s, d, c);
    assert_eq!(
        rest,
        vec![vec![b'k', 7], vec![b'k', 8], vec![b'k', 9], vec![b'k', 3]]
    );
}

fn collect_from<S: Store>(s: &S, ns: &str, first: crate::Cursor) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cursor = Some(first);
    while let Some(c) = cursor {
        let page = ok(s.scan(ns, Some(&c), 2, ScanOrder::Forward), "scan");
        out.extend(page.entries.into_iter().map(|m| m.key));
        cursor = page.next;
    }
    out
}

fn history_chain<S: Store>(s: &S) {
    let d = DEFAULT_NAMESPACE;
    for (i, v) in [&b"v1"[..], b"v2", b"v3"].iter().enumerate() {
        ok(s.set_at(d, Some(b"h"), v, Some(100 + i as u64)), "set");
    }
    ok(s.set(d, Some(b"other"), b"x"), "set other");
    let live = ok(s.history(d, b"h", None), "history");
    assert_eq!(
        (live.value.as_slice(), live.timestamp, live.deleted),
        (&b"v3"[..], 102, false)
    );
    let p2 = live.previous.expect("v2 exists");
    let v2 = ok(s.history(d, b"h", Some(p2)), "history v2");
    assert_eq!((v2.value.as_slice(), v2.timestamp), (&b"v2"[..], 101));
    // version_before follows the same links as history.
    assert_eq!(ok(s.version_before(d, b"h", None), "before live"), Some(p2));
    assert_eq!(
        ok(s.version_before(d, b"h", Some(p2)), "before v2"),
        v2.previous
    );
    let v1 = ok(s.history(d, b"h", v2.previous), "history v1");
    assert_eq!((v1.value.as_slice(), v1.timestamp), (&b"v1"[..], 100));
    assert_eq!(v1.previous, None, "v1 is the oldest");
    // After a delete: the live form is NotFound, older versions stay reachable.
    ok(s.delete_at(d, b"h", Some(200)), "delete");
    assert!(matches!(s.history(d, b"h", None), Err(Error::NotFound(_))));
    let again = ok(s.history(d, b"h", Some(p2)), "history after delete");
    assert_eq!(again.value, b"v2");
    // A set after the delete continues the chain through the tombstone.
    ok(
        s.set_at(d, Some(b"h"), b"v4", Some(300)),
        "set after delete",
    );
    let live = ok(s.history(d, b"h", None), "history");
    assert_eq!(live.value, b"v4");
    let tomb = ok(s.history(d, b"h", live.previous), "tombstone");
    assert!(
        tomb.deleted && tomb.value.is_empty(),
        "the previous version is the tombstone"
    );
    assert_eq!(tomb.timestamp, 200);
    let v3 = ok(s.history(d, b"h", tomb.previous), "v3");
    assert_eq!(v3.value, b"v3");
    assert!(matches!(
        s.history(d, b"absent", None),
        Err(Error::NotFound(_))
    ));
}

fn history_foreign_version<S: Store>(s: &S) {
    let d = DEFAULT_NAMESPACE;
    ok(s.set(d, Some(b"secret"), b"s1"), "set");
    ok(s.set(d, Some(b"secret"), b"s2"), "set");
    ok(s.set(d, Some(b"sec"), b"p1"), "set");
    ok(s.set(d, Some(b"sec"), b"p2"), "set");
    let secret_old = ok(s.history(d, b"secret", None), "history")
        .previous
        .expect("old");
    // "sec" is a prefix of "secret": 0-db's defect would serve s1 here.
    for key in [&b"sec"[..], b"other", b"secret2"] {
        if key != b"sec" {
            ok(s.set(d, Some(key), b"x"), "set");
        }
        let r = s.history(d, key, Some(secret_old));
        assert!(
            matches!(r, Err(Error::InvalidArgument(_))),
            "history of {key:?} at another key's version: {r:?}"
        );
    }
    // Made-up version ids are refused, not served.
    for raw in [[0u8; 8], [0xff; 8], [1, 0, 0, 0, 0, 0, 0, 0]] {
        let r = s.history(d, b"secret", Some(VersionId(raw)));
        assert!(
            r.is_err(),
            "made-up version {raw:?} must be refused, got {r:?}"
        );
    }
}

fn passwords<S: Store>(s: &S) {
    let ns = fresh_ns(s, "locked-up");
    assert!(ok(
        s.namespace_authenticate(&ns, Credential::Plain("anything")),
        "no password accepts all"
    ));
    ok(
        s.namespace_set(&ns, NamespaceProperty::Password(Some("hunter2".into()))),
        "set password",
    );
    assert!(ok(s.namespace_info(&ns), "info").password);
    assert!(ok(
        s.namespace_authenticate(&ns, Credential::Plain("hunter2")),
        "right password"
    ));
    assert!(!ok(
        s.namespace_authenticate(&ns, Credential::Plain("hunter3")),
        "wrong password"
    ));
    assert!(!ok(
        s.namespace_authenticate(&ns, Credential::Plain("")),
        "empty password"
    ));
    let digest = sha1_hex(b"00112233aabbccdd:hunter2");
    let good = Credential::Challenge {
        nonce: "00112233aabbccdd",
        digest: &digest,
    };
    let bad = Credential::Challenge {
        nonce: "00112233aabbccde",
        digest: &digest,
    };
    match s.namespace_authenticate(&ns, good) {
        Ok(true) => assert!(!ok(
            s.namespace_authenticate(&ns, bad),
            "challenge with another nonce"
        )),
        Ok(false) | Err(Error::Unsupported(_)) => {} // a store may not support challenges
        Err(e) => panic!("challenge: {e:?}"),
    }
    let long = "p".repeat(crate::MAX_PASSWORD_LEN + 1);
    assert!(
        s.namespace_set(&ns, NamespaceProperty::Password(Some(long)))
            .is_err(),
        "64-byte password"
    );
    assert!(ok(
        s.namespace_authenticate(&ns, Credential::Plain("hunter2")),
        "old password kept"
    ));
    ok(
        s.namespace_set(&ns, NamespaceProperty::Password(None)),
        "clear password",
    );
    assert!(!ok(s.namespace_info(&ns), "info").password);
    assert!(ok(
        s.namespace_authenticate(&ns, Credential::Plain("whatever")),
        "cleared"
    ));
    assert!(matches!(
        s.namespace_authenticate("nope", Credential::Plain("x")),
        Err(Error::NotFound(_))
    ));
}

/// Lowercase hex SHA-1, small and dependency-free (only the suite needs it).
fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                chunk[4 * i],
                chunk[4 * i + 1],
                chunk[4 * i + 2],
                chunk[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

fn max_size<S: Store>(s: &S) {
    let ns = fresh_ns(s, "capped");
    ok(
        s.namespace_set(&ns, NamespaceProperty::MaxSize(100)),
        "maxsize",
    );
    assert_eq!(ok(s.namespace_info(&ns), "info").max_size, 100);
    ok(s.set(&ns, Some(b"a"), &[1; 60]), "60 bytes");
    assert!(
        matches!(s.set(&ns, Some(b"b"), &[2; 41]), Err(Error::NoSpace(_))),
        "101 bytes live"
    );
    ok(s.set(&ns, Some(b"b"), &[2; 40]), "exactly 100 bytes");
    // Replacing a value is credited exactly.
    ok(s.set(&ns, Some(b"a"), &[3; 60]), "same-size replacement");
    assert!(matches!(
        s.set(&ns, Some(b"a"), &[3; 61]),
        Err(Error::NoSpace(_))
    ));
    ok(s.delete(&ns, b"b"), "delete frees space");
    ok(s.set(&ns, Some(b"c"), &[4; 40]), "fits again");
    assert_eq!(ok(s.namespace_info(&ns), "info").data_bytes, 100);
    ok(
        s.namespace_set(&ns, NamespaceProperty::MaxSize(0)),
        "unlimited",
    );
    ok(s.set(&ns, Some(b"d"), &[5; 1000]), "unlimited again");
}

/// A store that tells its space ([`Store::space`] answers `Some`) gives consistent figures: the
/// namespace's limit and live bytes as `namespace_info` has them, free disk within the total.
/// A store that cannot tell answers `None` throughout.
fn space<S: Store>(s: &S) {
    let ns = fresh_ns(s, "spaced");
    let Some(before) = ok(s.space(&ns), "space") else {
        assert_eq!(
            ok(s.space(DEFAULT_NAMESPACE), "space of default"),
            None,
            "a store that cannot tell for one namespace cannot for another"
        );
        return;
    };
    let consistent = |sp: crate::StoreSpace, what: &str| {
        if let Some(total) = sp.disk_total {
            assert!(
                sp.disk_free <= total,
                "{what}: free within the disk: {sp:?}"
            );
        }
        assert_ne!(sp.limit, Some(0), "{what}: no limit is None: {sp:?}");
        assert!(sp.available() <= sp.disk_free, "{what}: {sp:?}");
        assert!(sp.total() >= sp.available(), "{what}: {sp:?}");
    };
    consistent(before, "fresh namespace");
    assert_eq!((before.limit, before.used), (None, 0), "fresh namespace");
    ok(s.set(&ns, Some(b"a"), &[1; 60]), "60 bytes");
    ok(
        s.namespace_set(&ns, NamespaceProperty::MaxSize(100)),
        "maxsize",
    );
    let Some(capped) = ok(s.space(&ns), "space") else {
        panic!("space answered Some, then None");
    };
    consistent(capped, "capped namespace");
    assert_eq!((capped.limit, capped.used), (Some(100), 60), "{capped:?}");
    assert_eq!(capped.total(), 100, "the limit is the size: {capped:?}");
    assert!(capped.available() <= 40, "{capped:?}");
    assert_eq!(
        capped.used,
        ok(s.namespace_info(&ns), "info").data_bytes,
        "used is data_bytes"
    );
    ok(
        s.namespace_set(&ns, NamespaceProperty::MaxSize(0)),
        "unlimited",
    );
    let after = ok(s.space(&ns), "space").map(|sp| sp.limit);
    assert_eq!(after, Some(None), "maxsize 0 is no limit");
    match s.space("missing-ns") {
        Err(Error::NotFound(_)) | Ok(None) => {}
        other => panic!("space of an unknown namespace: {other:?}"),
    }
}

fn worm<S: Store>(s: &S) {
    let ns = fresh_ns(s, "worm");
    ok(s.set(&ns, Some(b"before"), b"v"), "set");
    ok(
        s.namespace_set(&ns, NamespaceProperty::Worm(true)),
        "worm on",
    );
    assert!(ok(s.namespace_info(&ns), "info").worm);
    ok(s.set(&ns, Some(b"new"), b"v"), "new keys are fine");
    for (what, r) in [
        ("overwrite", s.set(&ns, Some(b"new"), b"w").map(|_| ())),
        (
            "identical overwrite",
            s.set(&ns, Some(b"new"), b"v").map(|_| ()),
        ),
        ("delete", s.delete(&ns, b"before")),
    ] {
        assert!(
            matches!(
                r,
                Err(Error::ReadOnly {
                    reason: ReadOnlyReason::Worm,
                    ..
                })
            ),
            "{what} in worm mode: {r:?}"
        );
    }
    assert_eq!(value_of(s, &ns, b"before").as_deref(), Some(&b"v"[..]));
    ok(
        s.namespace_set(&ns, NamespaceProperty::Worm(false)),
        "worm off",
    );
    ok(s.delete(&ns, b"before"), "delete allowed again");
}

fn lock_and_freeze<S: Store>(s: &S) {
    let ns = fresh_ns(s, "lf");
    ok(s.set(&ns, Some(b"k"), b"v"), "set");
    ok(s.namespace_set(&ns, NamespaceProperty::Lock(true)), "lock");
    assert!(ok(s.namespace_info(&ns), "info").locked);
    assert!(matches!(
        s.set(&ns, Some(b"k2"), b"v"),
        Err(Error::ReadOnly {
            reason: ReadOnlyReason::Locked,
            ..
        })
    ));
    assert!(matches!(
        s.delete(&ns, b"k"),
        Err(Error::ReadOnly {
            reason: ReadOnlyReason::Locked,
            ..
        })
    ));
    assert_eq!(
        value_of(s, &ns, b"k").as_deref(),
        Some(&b"v"[..]),
        "reads work while locked"
    );
    ok(
        s.namespace_set(&ns, NamespaceProperty::Lock(false)),
        "unlock",
    );
    ok(s.set(&ns, Some(b"k2"), b"v"), "writable again");
    ok(
        s.namespace_set(&ns, NamespaceProperty::Freeze(true)),
        "freeze",
    );
    let info = ok(s.namespace_info(&ns), "info works while frozen");
    assert!(info.frozen && info.locked);
    assert!(matches!(
        s.set(&ns, Some(b"k3"), b"v"),
        Err(Error::ReadOnly {
            reason: ReadOnlyReason::Frozen,
            ..
        })
    ));
    assert!(s.get(&ns, b"k").is_err(), "no reads while frozen");
    ok(
        s.namespace_set(&ns, NamespaceProperty::Lock(false)),
        "lock(false) also unfreezes",
    );
    assert_eq!(value_of(s, &ns, b"k").as_deref(), Some(&b"v"[..]));
}

fn public_and_info<S: Store>(s: &S) {
    let ns = fresh_ns(s, "pub");
    let info = ok(s.namespace_info(&ns), "info");
    assert_eq!(info.name, ns);
    assert!(info.public, "namespaces are public by default");
    assert_eq!((info.entries, info.data_bytes, info.max_size), (0, 0, 0));
    assert!(!info.password && !info.worm && !info.locked && !info.frozen);
    ok(
        s.namespace_set(&ns, NamespaceProperty::Public(false)),
        "private",
    );
    assert!(!ok(s.namespace_info(&ns), "info").public);
    ok(s.set(&ns, Some(b"a"), b"123"), "set");
    ok(s.set(&ns, Some(b"b"), b"45"), "set");
    ok(s.set(&ns, Some(b"a"), b"6"), "update");
    let info = ok(s.namespace_info(&ns), "info");
    assert_eq!((info.entries, info.data_bytes), (2, 3));
}

fn flush<S: Store>(s: &S) {
    let ns = fresh_ns(s, "fl");
    ok(
        s.namespace_set(&ns, NamespaceProperty::Password(Some("pw".into()))),
        "password",
    );
    ok(
        s.namespace_set(&ns, NamespaceProperty::Public(false)),
        "private",
    );
    for i in 0..20u8 {
        ok(s.set(&ns, Some(&[i + 1]), &[i; 100]), "set");
    }
    ok(s.flush_namespace(&ns), "flush");
    let info = ok(s.namespace_info(&ns), "info");
    assert_eq!((info.entries, info.data_bytes), (0, 0));
    assert!(info.password && !info.public, "properties survive a flush");
    assert_eq!(value_of(s, &ns, &[1]), None);
    assert!(ok(s.scan(&ns, None, 100, ScanOrder::Forward), "scan")
        .entries
        .is_empty());
    assert!(
        s.history(&ns, &[1], None).is_err(),
        "no history after flush"
    );
    ok(s.set(&ns, Some(&[1]), b"fresh"), "usable after flush");
    assert_eq!(value_of(s, &ns, &[1]).as_deref(), Some(&b"fresh"[..]));
}

fn isolation<S: Store>(s: &S) {
    let a = fresh_ns(s, "iso-a");
    let b = fresh_ns(s, "iso-b");
    ok(s.set(&a, Some(b"k"), b"in a"), "set a");
    assert_eq!(value_of(s, &b, b"k"), None);
    ok(s.set(&b, Some(b"k"), b"in b"), "set b");
    assert_eq!(value_of(s, &a, b"k").as_deref(), Some(&b"in a"[..]));
    ok(s.namespace_delete(&b), "delete b");
    assert_eq!(value_of(s, &a, b"k").as_deref(), Some(&b"in a"[..]));
    assert_eq!(value_of(s, DEFAULT_NAMESPACE, b"k"), None);
}

fn concurrency<S: Store>(s: &S) {
    let ns = fresh_ns(s, "conc");
    std::thread::scope(|scope| {
        for t in 0..4u8 {
            let ns = ns.clone();
            scope.spawn(move || {
                for i in 0..50u8 {
                    let key = [t, i];
                    ok(s.set(&ns, Some(&key), &[t, i, 42]), "concurrent set");
                    assert_eq!(
                        value_of(s, &ns, &key),
                        Some(vec![t, i, 42]),
                        "read own write"
                    );
                    if i % 5 == 0 {
                        ok(s.set(DEFAULT_NAMESPACE, Some(&key), b"d"), "set default");
                    }
                }
            });
        }
        scope.spawn(|| {
            for _ in 0..50 {
                let _ = ok(
                    s.scan(&ns, None, 1000, ScanOrder::Forward),
                    "scan during writes",
                );
            }
        });
    });
    assert_eq!(ok(s.namespace_info(&ns), "info").entries, 200);
    assert_eq!(collect_scan(s, &ns, 64, ScanOrder::Forward).len(), 200);
    ok(s.sync(), "sync");
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha1_known_answers() {
        assert_eq!(
            super::sha1_hex(b""),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        assert_eq!(
            super::sha1_hex(b"abc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let long = vec![b'a'; 1000];
        assert_eq!(
            super::sha1_hex(&long),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
    }
}
