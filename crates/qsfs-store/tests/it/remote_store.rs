//! The Store conformance suite of qsfs-core, run against the remote client talking to a real
//! `qsfs serve` server (over a real engine) on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use crate::server_util;

use std::sync::Mutex;

use qsfs_core::Store;
use qsfs_store::remote::{ZdbClient, ZdbConfig};
use qsfs_store::server::ServerConfig;
use server_util::TestServer;

fn fresh(servers: &Mutex<Vec<TestServer>>, secure: bool) -> ZdbClient {
    let srv = TestServer::start(ServerConfig::default());
    let mut cfg = ZdbConfig::new(srv.addr.to_string());
    cfg.secure = secure;
    let client = ZdbClient::connect(cfg).expect("connect");
    servers.lock().expect("lock").push(srv);
    client
}

fn run_suite(secure: bool) {
    let servers = Mutex::new(Vec::new());
    let mut ran = 0;
    for (name, check) in qsfs_core::testing::store::checks::<ZdbClient>() {
        let c = fresh(&servers, secure);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&c)));
        assert!(
            r.is_ok(),
            "Store conformance check {name:?} failed against the remote client"
        );
        ran += 1;
    }
    assert!(ran >= 21, "the suite shrank: {ran} checks");
}

#[test]
fn remote_client_passes_the_store_conformance_suite() {
    run_suite(true);
}

#[test]
fn remote_client_with_plain_passwords_passes_the_suite() {
    run_suite(false);
}

#[test]
fn history_over_the_wire_without_the_deleted_flag() {
    let servers = Mutex::new(Vec::new());
    let c = fresh(&servers, true);
    c.set_at("default", Some(b"h"), b"v1", Some(100)).unwrap();
    c.set_at("default", Some(b"h"), b"v2", Some(101)).unwrap();
    let live = c.history("default", b"h", None).unwrap();
    assert_eq!((live.value.as_slice(), live.timestamp), (&b"v2"[..], 101));
    let v1 = c.history("default", b"h", live.previous).unwrap();
    assert_eq!(
        (v1.value.as_slice(), v1.timestamp, v1.previous),
        (&b"v1"[..], 100, None)
    );
    c.delete_at("default", b"h", Some(200)).unwrap();
    assert!(c.history("default", b"h", None).unwrap_err().is_not_found());
    assert_eq!(
        c.history("default", b"h", live.previous).unwrap().value,
        b"v1"
    );
    c.set("default", Some(b"other"), b"x").unwrap();
    assert!(matches!(
        c.history("default", b"other", live.previous),
        Err(qsfs_core::Error::InvalidArgument(_))
    ));
}

#[test]
fn urls_passwords_pipelining_and_mget() {
    let srv = TestServer::start(ServerConfig::default());
    let admin = ZdbClient::connect(ZdbConfig::new(srv.addr.to_string())).unwrap();
    admin.namespace_create("priv").unwrap();
    admin
        .namespace_set(
            "priv",
            qsfs_core::NamespaceProperty::Password(Some("s3cret".into())),
        )
        .unwrap();
    admin
        .namespace_set("priv", qsfs_core::NamespaceProperty::Public(false))
        .unwrap();
    // Without the password the namespace is refused.
    let anon = ZdbClient::from_url(&format!("zdb://{}/default", srv.addr)).unwrap();
    assert!(matches!(
        anon.get("priv", b"k"),
        Err(qsfs_core::Error::PermissionDenied(_))
    ));
    let c = ZdbClient::from_url(&format!("zdb://s3cret@{}/priv", srv.addr)).unwrap();
    c.set("priv", Some(b"k"), b"v").unwrap();
    assert_eq!(c.get("priv", b"k").unwrap().unwrap().value, b"v");
    // A wrong password fails at connect time.
    let wrong = ZdbClient::from_url(&format!("zdb://nope@{}/priv", srv.addr));
    assert!(
        matches!(wrong, Err(qsfs_core::Error::PermissionDenied(_))),
        "{wrong:?}"
    );
    // MGET of many keys (several requests of at most 1000 keys, pipelined).
    let keys: Vec<Vec<u8>> = (0..2500).map(|i| format!("m{i}").into_bytes()).collect();
    let reqs: Vec<Vec<Vec<u8>>> = keys
        .iter()
        .map(|k| vec![b"SET".to_vec(), k.clone(), k.repeat(3)])
        .collect();
    let replies = c.pipeline("priv", &reqs, true).unwrap();
    assert_eq!(replies.len(), keys.len());
    let mut ask: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    ask.push(b"missing");
    let got = c.mget("priv", &ask).unwrap();
    assert_eq!(got.len(), 2501);
    for (k, v) in keys.iter().zip(&got) {
        assert_eq!(v.as_deref(), Some(k.repeat(3).as_slice()));
    }
    assert_eq!(got[2500], None);
}

#[test]
fn reconnects_after_the_server_restarts() {
    let mut srv = TestServer::start(ServerConfig::default());
    let addr = srv.addr;
    let c = ZdbClient::connect(ZdbConfig::new(addr.to_string())).unwrap();
    c.set("default", Some(b"a"), b"1").unwrap();
    // Stop the server, start a new one on the same port over the same engine directory.
    srv.stop();
    let engine = srv.engine.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cfg = ServerConfig {
        tcp: Some(addr),
        ..ServerConfig::default()
    };
    let handle = rt.block_on(async move {
        qsfs_store::server::Server::bind(std::sync::Arc::new(engine), cfg)
            .await
            .unwrap()
            .spawn()
    });
    // The pooled connection is dead; the client reconnects with back-off.
    assert_eq!(c.get("default", b"a").unwrap().unwrap().value, b"1");
    rt.block_on(handle.shutdown()).unwrap();
    // With no server at all, the error is transient (retryable), after the retries.
    let err = c.get("default", b"a").unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    // A listener that accepts and then says nothing.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hold = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(800));
        drop(s);
    });
    let mut cfg = ZdbConfig::new(addr.to_string());
    cfg.io_timeout = std::time::Duration::from_millis(200);
    cfg.retries = 0;
    let start = std::time::Instant::now();
    let err = ZdbClient::connect(cfg).unwrap_err();
    assert!(matches!(err, qsfs_core::Error::Timeout(_)), "{err:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    hold.join().unwrap();
    // Nothing listening at all: unavailable (retryable), not a hang.
    let mut cfg = ZdbConfig::new(addr.to_string());
    cfg.retries = 1;
    let err = ZdbClient::connect(cfg).unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}
