//! The Backend conformance suite of qsfs-core against the 0-db Backend adapter, on user-mode
//! and seq-mode namespaces of a real server, plus the transparent splitting of large blobs.

#![allow(clippy::unwrap_used)]

mod server_util;

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
