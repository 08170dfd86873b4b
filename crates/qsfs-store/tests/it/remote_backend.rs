//! The Backend conformance suite of qsfs-core against the 0-db Backend adapter, on user-mode
//! and seq-mode namespaces of a real server, plus the transparent splitting of large blobs.

#![allow(clippy::unwrap_used)]

use crate::server_util;

use std::sync::Arc;

use bytes::Bytes;
use qsfs_core::{Backend, Mode, NamespaceProperty, Store};
use qsfs_store::remote::{ZdbBackend, ZdbClient, ZdbConfig};
use qsfs_store::server::ServerConfig;
use server_util::TestServer;

fn backend(srv: &TestServer, ns: &str, mode: Mode) -> ZdbBackend {
    let admin = ZdbClient::connect(ZdbConfig::new(srv.addr.to_string())).unwrap();
    if ns != "default" {
        admin.namespace_create(ns).unwrap();
        admin
            .namespace_set(ns, NamespaceProperty::Mode(mode))
            .unwrap();
    }
    let client = ZdbClient::from_url(&format!("zdb://{}/{ns}", srv.addr)).unwrap();
    let b = ZdbBackend::new(Arc::new(client)).unwrap();
    assert_eq!(b.mode(), mode);
    b
}

fn blob(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_mode_adapter_passes_the_backend_suite() {
    let srv = tokio::task::spawn_blocking(|| TestServer::start(ServerConfig::default()))
        .await
        .unwrap();
    let b = backend(&srv, "users", Mode::User);
    qsfs_core::testing::backend::run(&b).await;
    tokio::task::spawn_blocking(move || drop(srv))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_mode_adapter_passes_the_backend_suite() {
    let srv = tokio::task::spawn_blocking(|| TestServer::start(ServerConfig::default()))
        .await
        .unwrap();
    let b = backend(&srv, "seqdata", Mode::Seq);
    qsfs_core::testing::backend::run(&b).await;
    tokio::task::spawn_blocking(move || drop(srv))
        .await
        .unwrap();
}

async fn big_blobs(mode: Mode) {
    let srv = tokio::task::spawn_blocking(|| TestServer::start(ServerConfig::default()))
        .await
        .unwrap();
    let b = backend(&srv, "big", mode);
    let big = blob(20 * 1024 * 1024 + 5, 1);
    b.put("shard/one", big.clone()).await.unwrap();
    assert!(b.get("shard/one").await.unwrap() == big);
    assert_eq!(
        b.get_range("shard/one", 9_000_000..9_000_010)
            .await
            .unwrap(),
        big.slice(9_000_000..9_000_010)
    );
    // Replacing with a small blob, then a different big one: old chunks go away.
    b.put("shard/one", Bytes::from_static(b"small"))
        .await
        .unwrap();
    assert_eq!(
        b.get("shard/one").await.unwrap(),
        Bytes::from_static(b"small")
    );
    let big2 = blob(9 * 1024 * 1024, 7);
    b.put("shard/one", big2.clone()).await.unwrap();
    assert!(b.get("shard/one").await.unwrap() == big2);
    assert_eq!(b.list("").await.unwrap(), vec!["shard/one".to_string()]);
    let info = srv.engine.namespace_info("big").unwrap();
    assert!(
        info.data_bytes < 10 * 1024 * 1024 + 4096,
        "old chunks were not deleted: {info:?}"
    );
    // A fresh adapter (new process) finds the blob again.
    let again = backend_reopen(&srv, "big");
    assert!(again.get("shard/one").await.unwrap() == big2);
    b.delete("shard/one").await.unwrap();
    assert!(!b.exists("shard/one").await.unwrap());
    assert_eq!(srv.engine.namespace_info("big").unwrap().entries, 0);
    tokio::task::spawn_blocking(move || drop(srv))
        .await
        .unwrap();
}

fn backend_reopen(srv: &TestServer, ns: &str) -> ZdbBackend {
    let client = ZdbClient::from_url(&format!("zdb://{}/{ns}", srv.addr)).unwrap();
    ZdbBackend::new(Arc::new(client)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_over_8_mib_are_split_and_joined_in_user_mode() {
    big_blobs(Mode::User).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_over_8_mib_are_split_and_joined_in_seq_mode() {
    big_blobs(Mode::Seq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_values_are_detected() {
    let srv = tokio::task::spawn_blocking(|| TestServer::start(ServerConfig::default()))
        .await
        .unwrap();
    let b = backend(&srv, "dmg", Mode::User);
    b.put("x", Bytes::from_static(b"hello world"))
        .await
        .unwrap();
    // Someone rewrites the value behind the adapter's back, keeping the header.
    let mut v = srv.engine.get("dmg", b"x").unwrap().unwrap().value;
    let last = v.len() - 1;
    v[last] ^= 1;
    srv.engine.set("dmg", Some(b"x"), &v).unwrap();
    assert!(matches!(
        b.get("x").await,
        Err(qsfs_core::Error::Corrupt { .. })
    ));
    let h = b.health().await;
    assert_eq!(h.status, qsfs_core::HealthStatus::Up);
    assert!(h.free_bytes.unwrap_or(0) > 0);
    tokio::task::spawn_blocking(move || drop(srv))
        .await
        .unwrap();
}

/// Health reports the namespace's bytes and the disk's free space from NSINFO, and a locked
/// namespace as degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_tells_used_and_free_bytes_and_a_lock() {
    let srv = tokio::task::spawn_blocking(|| TestServer::start(ServerConfig::default()))
        .await
        .unwrap();
    let b = backend(&srv, "hl", Mode::User);
    let before = b.health().await;
    assert_eq!(before.status, qsfs_core::HealthStatus::Up);
    b.put("x", Bytes::from(vec![7u8; 100_000])).await.unwrap();
    let after = b.health().await;
    let used = |h: &qsfs_core::Health| h.used_bytes.expect("NSINFO tells the namespace's size");
    assert!(
        used(&after) >= used(&before) + 100_000,
        "{after:?} after {before:?}"
    );
    assert!(after.free_bytes.expect("NSINFO tells the free space") > 0);
    let admin = ZdbClient::connect(ZdbConfig::new(srv.addr.to_string())).unwrap();
    admin
        .namespace_set("hl", NamespaceProperty::Lock(true))
        .unwrap();
    let locked = b.health().await;
    assert_eq!(
        locked.status,
        qsfs_core::HealthStatus::Degraded,
        "{locked:?}"
    );
    assert_eq!(locked.detail, "namespace locked");
    tokio::task::spawn_blocking(move || drop(srv))
        .await
        .unwrap();
}

/// Sizes around the client's direct-read threshold (64 KiB) and the adapter's 8 MiB split, each
/// written twice (the second SET of an identical value is answered nil, which is success).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_puts_round_trip_at_every_size() {
    let srv = tokio::task::spawn_blocking(|| TestServer::start(ServerConfig::default()))
        .await
        .unwrap();
    let b = backend(&srv, "sizes", Mode::User);
    let max = qsfs_core::MAX_VALUE_LEN;
    let k64 = 64 * 1024;
    for (i, len) in [
        0,
        1,
        48,
        k64 - 6,
        k64 - 5,
        k64 - 4,
        k64,
        1 << 20,
        max - 5,
        max - 4,
    ]
    .into_iter()
    .enumerate()
    {
        let v = blob(len, i as u8);
        for _ in 0..2 {
            b.put("k", v.clone()).await.unwrap();
            let got = b.get("k").await.unwrap();
            assert!(got == v, "{len} bytes");
        }
    }
    // A 48-byte blob is stored as 53 bytes, a manifest's length: replacing it must not mistake
    // it for one, and replacing a split blob must still find and delete its chunks.
    b.put("k", blob(48, 9)).await.unwrap();
    b.put("k", blob(48, 10)).await.unwrap();
    assert!(b.get("k").await.unwrap() == blob(48, 10));
    b.put("k", blob(max, 11)).await.unwrap();
    b.put("k", blob(3, 12)).await.unwrap();
    assert!(b.get("k").await.unwrap() == blob(3, 12));
    assert_eq!(b.list("").await.unwrap(), vec!["k".to_string()]);
    assert_eq!(srv.engine.namespace_info("sizes").unwrap().entries, 1);
    tokio::task::spawn_blocking(move || drop(srv))
        .await
        .unwrap();
}

/// A SET cut off in the middle of its value (a writer killed mid-put) leaves the old value,
/// and the next put over it is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_put_leaves_the_old_value_and_a_new_put_succeeds() {
    use std::io::{Read, Write};
    let srv = tokio::task::spawn_blocking(|| TestServer::start(ServerConfig::default()))
        .await
        .unwrap();
    let b = backend(&srv, "cut", Mode::User);
    let old = blob(300_000, 1);
    b.put("k", old.clone()).await.unwrap();
    let addr = srv.addr;
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"*2\r\n$6\r\nSELECT\r\n$3\r\ncut\r\n").unwrap();
        let mut reply = [0u8; 5];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK\r\n");
        s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000005\r\n\x00abcd")
            .unwrap();
        s.write_all(&vec![7u8; 400_000]).unwrap();
    })
    .await
    .unwrap();
    assert!(b.get("k").await.unwrap() == old);
    let new = blob(1_000_000, 2);
    b.put("k", new.clone()).await.unwrap();
    assert!(b.get("k").await.unwrap() == new);
    tokio::task::spawn_blocking(move || drop(srv))
        .await
        .unwrap();
}

/// Many puts and gets of big and small values at once over the pooled connections, and
/// pipelined replies mixing both: a reply read straight from the socket must leave every
/// connection at a reply boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_big_and_small_values_stay_in_step() {
    let srv = tokio::task::spawn_blocking(|| TestServer::start(ServerConfig::default()))
        .await
        .unwrap();
    let b = backend(&srv, "many", Mode::User);
    let sizes = |i: usize| [10, 200_000, 70_000, 1, 600_000][i % 5];
    for round in 0..3u8 {
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    let key = format!("k{i}");
                    let v = blob(sizes(i), round.wrapping_add(i as u8));
                    b.put(&key, v.clone()).await.unwrap();
                    for _ in 0..2 {
                        assert!(b.get(&key).await.unwrap() == v, "{key} round {round}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let client = ZdbClient::from_url(&format!("zdb://{}/many", srv.addr)).unwrap();
    let reqs: Vec<Vec<Vec<u8>>> = (0..10)
        .map(|i| vec![b"GET".to_vec(), format!("k{i}").into_bytes()])
        .collect();
    let replies = tokio::task::spawn_blocking(move || client.pipeline("many", &reqs, true))
        .await
        .unwrap()
        .unwrap();
    for (i, r) in replies.into_iter().enumerate() {
        let qsfs_store::server::resp::Reply::Bulk(v) = r else {
            panic!("k{i}: {r:?}");
        };
        // Stored values carry the adapter's 5-byte header.
        assert!(
            v.slice(5..) == blob(sizes(i), 2u8.wrapping_add(i as u8)),
            "k{i}"
        );
    }
    tokio::task::spawn_blocking(move || drop(srv))
        .await
        .unwrap();
}
