//! The lazily connecting 0-db Backend: passes the Backend conformance suite, and a node that
//! was down when the backend was made is used once it answers.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use qsfs_core::{Backend, HealthStatus};
use qsfs_store::remote::{LazyZdbBackend, RETRY_AFTER};
use qsfs_store::server::{Server, ServerConfig, ServerHandle};
use qsfs_store::{Engine, EngineConfig};

async fn start(dir: &std::path::Path, addr: std::net::SocketAddr) -> (Engine, ServerHandle) {
    let d = dir.to_path_buf();
    let engine = tokio::task::spawn_blocking(move || Engine::open(&d, EngineConfig::default()))
        .await
        .unwrap()
        .unwrap();
    let config = ServerConfig {
        tcp: Some(addr),
        index_root: dir.to_path_buf(),
        data_root: dir.to_path_buf(),
        ..ServerConfig::default()
    };
    let handle = Server::bind(Arc::new(engine.clone()), config)
        .await
        .unwrap()
        .spawn();
    (engine, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_backend_passes_the_backend_suite() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, handle) = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = handle.local_addr.unwrap();
    let b = LazyZdbBackend::new(&addr.to_string(), "default", None).unwrap();
    qsfs_core::testing::backend::run(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_at_first_is_used_once_it_answers() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let b = LazyZdbBackend::new(&addr.to_string(), "default", None).unwrap();
    assert!(b.put("k", Bytes::from_static(b"v1")).await.is_err());
    assert_eq!(b.health().await.status, HealthStatus::Down);

    let dir = tempfile::tempdir().unwrap();
    let (_engine, _handle) = start(dir.path(), addr).await;
    tokio::time::sleep(RETRY_AFTER).await;
    b.put("k", Bytes::from_static(b"v1")).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), Bytes::from_static(b"v1"));
    assert_eq!(b.health().await.status, HealthStatus::Up);
}
