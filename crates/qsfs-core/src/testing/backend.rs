//! Conformance suite for [`Backend`]: every contract written in the trait's documentation,
//! checked against a live implementation.
//!
//! Call [`run`] from the implementation's own tests with an empty backend (it only touches keys
//! under `conformance/` and removes them again, so a shared backend works too):
//!
//! ```text
//! #[tokio::test]
//! async fn conformance() {
//!     qsfs_core::testing::backend::run(&MyBackend::new()).await;
//! }
//! ```
//!
//! Failures panic with a message naming the broken contract and the backend.

use bytes::Bytes;
use rand::{Rng, SeedableRng};

use crate::backend::{Backend, HealthStatus};
use crate::error::Error;

/// The size of the "large" blob the suite stores: big enough to cross the stripe, chunk and
/// buffer sizes of every implementation we have (several MiB), small enough to keep tests fast.
pub const LARGE_BLOB: usize = 5 * 1024 * 1024 + 13;

fn blob(seed: u64, len: usize) -> Bytes {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    Bytes::from(v)
}

/// Runs every check of the suite against `b`. Panics on the first broken contract.
pub async fn run(b: &dyn Backend) {
    run_with_longest_key(b, crate::MAX_KEY_LEN).await;
}

/// [`run`] for a store that cannot hold keys of the full length the contract allows (a file
/// name limit below it, say): the longest key it stores is `longest` bytes instead of 255.
/// Longer keys than the contract allows must still be refused.
pub async fn run_with_longest_key(b: &dyn Backend, longest: usize) {
    let name = b.name();
    assert!(!name.is_empty(), "backend name must not be empty");
    health(b).await;
    round_trip(b).await;
    absent(b).await;
    replace(b).await;
    verify(b).await;
    ranges(b).await;
    delete_idempotent(b).await;
    listing(b).await;
    bad_keys(b, longest).await;
    cleanup(b).await;
}

async fn health(b: &dyn Backend) {
    let h = b.health().await;
    assert_eq!(
        h.status,
        HealthStatus::Up,
        "{}: a fresh backend should be Up: {}",
        b.name(),
        h.detail
    );
}

async fn round_trip(b: &dyn Backend) {
    let cases: [(&str, Bytes); 4] = [
        ("conformance/empty", Bytes::new()),
        ("conformance/one", Bytes::from_static(b"x")),
        ("conformance/small.bin", blob(1, 4097)),
        ("conformance/large/blob-1", blob(2, LARGE_BLOB)),
    ];
    for (key, data) in &cases {
        b.put(key, data.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: put {key}: {e}", b.name()));
        assert!(
            b.exists(key).await.expect("exists"),
            "{}: {key} must exist after put",
            b.name()
        );
    }
    for (key, data) in &cases {
        let got = b
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("{}: get {key}: {e}", b.name()));
        assert_eq!(
            got.len(),
            data.len(),
            "{}: {key}: length after round trip",
            b.name()
        );
        assert!(
            got == *data,
            "{}: {key}: bytes differ after round trip",
            b.name()
        );
        assert_eq!(
            b.size(key).await.expect("size"),
            Some(data.len() as u64),
            "{}: {key}: size",
            b.name()
        );
    }
}

async fn absent(b: &dyn Backend) {
    let key = "conformance/never-written";
    match b.get(key).await {
        Err(Error::NotFound(_)) => {}
        other => panic!(
            "{}: get of an absent key must be NotFound, got {other:?}",
            b.name()
        ),
    }
    match b.get_range(key, 0..10).await {
        Err(Error::NotFound(_)) => {}
        other => panic!(
            "{}: get_range of an absent key must be NotFound, got {other:?}",
            b.name()
        ),
    }
    assert!(
        !b.exists(key).await.expect("exists"),
        "{}: absent key reported as existing",
        b.name()
    );
    assert_eq!(
        b.size(key).await.expect("size"),
        None,
        "{}: size of an absent key",
        b.name()
    );
}

async fn replace(b: &dyn Backend) {
    let key = "conformance/replace";
    b.put(key, blob(3, 100_000)).await.expect("put first");
    let second = blob(4, 10);
    b.put(key, second.clone()).await.expect("put replacement");
    assert_eq!(
        b.size(key).await.expect("size"),
        Some(10),
        "{}: size after a replacement",
        b.name()
    );
    assert_eq!(
        b.get(key).await.expect("get"),
        second,
        "{}: replace must leave the new blob only",
        b.name()
    );
    // A replacement by a larger blob, then by an empty one.
    let third = blob(5, 70_001);
    b.put(key, third.clone()).await.expect("put larger");
    assert_eq!(
        b.get(key).await.expect("get"),
        third,
        "{}: replace by a larger blob",
        b.name()
    );
    b.put(key, Bytes::new()).await.expect("put empty");
    assert!(
        b.get(key).await.expect("get").is_empty(),
        "{}: replace by an empty blob",
        b.name()
    );
    let keys = b.list("conformance/replace").await.expect("list");
    assert_eq!(
        keys,
        vec![key.to_string()],
        "{}: a replaced blob is listed once",
        b.name()
    );
}

/// `verify` accepts exactly the bytes stored: not other bytes of the same length, nor a
/// shorter or longer blob, nor an absent key.
async fn verify(b: &dyn Backend) {
    let key = "conformance/verify";
    for data in [blob(6, 4097), blob(7, LARGE_BLOB), Bytes::new()] {
        b.put(key, data.clone()).await.expect("put");
        b.verify(key, &data)
            .await
            .unwrap_or_else(|e| panic!("{}: verify of the blob just stored: {e}", b.name()));
        if data.is_empty() {
            continue;
        }
        let mut flipped = data.to_vec();
        flipped[data.len() / 2] ^= 0x20;
        let others = [
            Bytes::from(flipped),
            data.slice(..data.len() - 1),
            Bytes::from([&data[..], b"!"].concat()),
        ];
        for other in &others {
            match b.verify(key, other).await {
                Err(Error::Corrupt { .. }) => {}
                r => panic!(
                    "{}: verify against {} bytes that are not the {} stored must be Corrupt, got {r:?}",
                    b.name(),
                    other.len(),
                    data.len()
                ),
            }
        }
    }
    // put_verified, as a new key and as a replacement (a 0-db node: one round trip).
    b.delete(key).await.expect("delete");
    for (i, new) in [(9, true), (10, false)] {
        let data = blob(i, 70_001);
        b.put_verified(key, data.clone(), new)
            .await
            .unwrap_or_else(|e| panic!("{}: put_verified (new: {new}): {e}", b.name()));
        assert!(
            b.get(key).await.expect("get") == data,
            "{}: put_verified (new: {new})",
            b.name()
        );
    }
    match b.verify("conformance/never-written", &blob(8, 10)).await {
        Err(Error::NotFound(_)) => {}
        r => panic!(
            "{}: verify of an absent key must be NotFound, got {r:?}",
            b.name()
        ),
    }
    b.delete(key).await.expect("delete");
}

async fn ranges(b: &dyn Backend) {
    let key = "conformance/ranges";
    let data = blob(6, 300_000);
    b.put(key, data.clone()).await.expect("put");
    let len = data.len() as u64;
    let cases = [
        (0..0),
        (0..1),
        (0..len),
        (1..len - 1),
        (12_345..200_001),
        (len - 5..len + 100),
        (len..len + 10),
        (len + 50..len + 60),
        #[allow(clippy::reversed_empty_ranges)]
        (100..50),
    ];
    for r in cases {
        let got = b
            .get_range(key, r.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: range {r:?}: {e}", b.name()));
        let want = crate::backend::slice_range(&data, r.clone());
        assert!(
            got == want,
            "{}: range {r:?}: got {} bytes, want {}",
            b.name(),
            got.len(),
            want.len()
        );
    }
    let empty = "conformance/ranges-empty";
    b.put(empty, Bytes::new()).await.expect("put empty");
    assert!(b
        .get_range(empty, 0..10)
        .await
        .expect("range of empty")
        .is_empty());
}

async fn delete_idempotent(b: &dyn Backend) {
    let key = "conformance/delete-me";
    b.put(key, Bytes::from_static(b"bye")).await.expect("put");
    b.delete(key).await.expect("delete");
    assert!(
        !b.exists(key).await.expect("exists"),
        "{}: deleted blob still exists",
        b.name()
    );
    assert!(
        matches!(b.get(key).await, Err(Error::NotFound(_))),
        "{}: deleted blob still readable",
        b.name()
    );
    b.delete(key)
        .await
        .unwrap_or_else(|e| panic!("{}: deleting an absent blob must succeed: {e}", b.name()));
    b.delete("conformance/never-was")
        .await
        .expect("delete of a never-written key");
}

async fn listing(b: &dyn Backend) {
    let keys = [
        "conformance/list/b",
        "conformance/list/a/2",
        "conformance/list/a/1",
        "conformance/list/c.x",
    ];
    for k in keys {
        b.put(k, Bytes::from(k.as_bytes().to_vec()))
            .await
            .expect("put");
    }
    b.put("conformance/lis", Bytes::from_static(b"not under list/"))
        .await
        .expect("put");
    let mut want: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
    want.sort();
    let got = b.list("conformance/list/").await.expect("list");
    assert_eq!(got, want, "{}: list by prefix, sorted", b.name());
    let got = b.list("conformance/list/a/").await.expect("list");
    assert_eq!(
        got,
        vec![
            "conformance/list/a/1".to_string(),
            "conformance/list/a/2".to_string()
        ]
    );
    let got = b.list("conformance/list/zzz").await.expect("list");
    assert!(
        got.is_empty(),
        "{}: list of a prefix with no keys: {got:?}",
        b.name()
    );
    let all = b.list("conformance/").await.expect("list");
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "{}: list must be sorted", b.name());
    assert!(all.contains(&"conformance/lis".to_string()));
    let everything = b.list("").await.expect("list everything");
    assert!(
        everything.len() >= all.len(),
        "{}: empty prefix lists every key",
        b.name()
    );
}

async fn bad_keys(b: &dyn Backend, longest: usize) {
    for bad in ["", "/abs", "a/../b", "a//b", "sp ace", "x/", "a/./b", "ünï"] {
        let res = b.put(bad, Bytes::from_static(b"x")).await;
        assert!(
            matches!(res, Err(Error::InvalidArgument(_))),
            "{}: put with bad key {bad:?} must be InvalidArgument, got {res:?}",
            b.name()
        );
        let res = b.get(bad).await;
        assert!(
            matches!(res, Err(Error::InvalidArgument(_))),
            "{}: get with bad key {bad:?}: {res:?}",
            b.name()
        );
    }
    let long = "k".repeat(256);
    assert!(
        matches!(
            b.put(&long, Bytes::new()).await,
            Err(Error::InvalidArgument(_))
        ),
        "{}: 256-byte key",
        b.name()
    );
    let ok = "k".repeat(longest);
    b.put(&ok, Bytes::from_static(b"max"))
        .await
        .expect("the longest key is allowed");
    assert_eq!(b.get(&ok).await.expect("get"), Bytes::from_static(b"max"));
    b.delete(&ok).await.expect("delete");
}

async fn cleanup(b: &dyn Backend) {
    for k in b.list("conformance/").await.expect("list") {
        b.delete(&k).await.expect("delete");
    }
    assert!(
        b.list("conformance/").await.expect("list").is_empty(),
        "{}: cleanup left keys",
        b.name()
    );
}
