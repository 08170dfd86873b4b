//! Round trips per shard over real 0-db servers (`qsfs serve`'s server, in process): a new shard
//! is one SET, and the shortcut never skips the clean-up of a chunked blob it replaces.

use std::sync::Arc;

use bytes::Bytes;
use qsfs_backup::crypto::KeySource;
use qsfs_backup::pipeline::{Attrs, Pipeline};
use qsfs_backup::progress::NoProgress;
use qsfs_core::{Backend, Store};
use qsfs_store::remote::{ZdbBackend, ZdbClient, ZdbConfig};
use qsfs_store::server::{Server, ServerConfig, ServerHandle};
use qsfs_store::{Engine, EngineConfig};

use crate::common;

/// A server on 127.0.0.1:0 over a fresh engine, with a `data` namespace.
struct Node {
    addr: String,
    handle: Option<ServerHandle>,
    _engine: Engine,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path(), EngineConfig::default()).expect("engine");
        let config = ServerConfig {
            tcp: Some("127.0.0.1:0".parse().expect("addr")),
            index_root: dir.path().to_path_buf(),
            data_root: dir.path().to_path_buf(),
            ..ServerConfig::default()
        };
        let handle = Server::bind(Arc::new(engine.clone()), config)
            .await
            .expect("bind")
            .spawn();
        let addr = handle.local_addr.expect("tcp address").to_string();
        let admin_addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let admin = ZdbClient::connect(ZdbConfig::new(admin_addr)).expect("connect");
            admin.namespace_create("data").expect("NSNEW");
        })
        .await
        .expect("admin");
        Node {
            addr,
            handle: Some(handle),
            _engine: engine,
            _dir: dir,
        }
    }

    /// A backend on `data` and its client (whose round trips the tests count).
    async fn backend(&self) -> (Arc<ZdbClient>, ZdbBackend) {
        let url = format!("zdb://{}/data", self.addr);
        tokio::task::spawn_blocking(move || {
            let client = Arc::new(ZdbClient::from_url(&url).expect("client"));
            let b = ZdbBackend::new(client.clone()).expect("backend");
            (client, b)
        })
        .await
        .expect("connect")
    }

    async fn keys(&self, client: &Arc<ZdbClient>) -> u64 {
        let c = client.clone();
        tokio::task::spawn_blocking(move || c.namespace_info("data").expect("NSINFO").entries)
            .await
            .expect("nsinfo")
    }

    async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await.expect("shutdown");
        }
    }
}

fn blob(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_is_stored_in_one_round_trip_and_reads_back() {
    let node = Node::start().await;
    let (client, b) = node.backend().await;
    let data = blob(300_000, 7);

    let before = client.round_trips();
    b.put_new("fresh/a", data.clone()).await.expect("put_new");
    assert_eq!(client.round_trips() - before, 1, "put_new: SET only");

    let before = client.round_trips();
    b.put("fresh/b", data.clone()).await.expect("put");
    assert_eq!(client.round_trips() - before, 2, "put: LENGTH, then SET");

    assert_eq!(b.get("fresh/a").await.expect("get a"), data);
    assert_eq!(b.get("fresh/b").await.expect("get b"), data);
    // Stored the same way as by `put`: a later `put` replaces it as usual.
    b.put("fresh/a", blob(10, 1)).await.expect("replace");
    assert_eq!(b.get("fresh/a").await.expect("get a"), blob(10, 1));
    node.stop().await;
}

/// The shortcut is only for one-value blobs: a chunked blob written with `put_new` over a key
/// that holds a chunked blob after all still reads the old manifest and deletes its chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_new_of_a_chunked_blob_still_deletes_the_chunks_it_replaces() {
    let node = Node::start().await;
    let (client, b) = node.backend().await;
    let big = 9 << 20; // two chunks of 8 MiB at most
    b.put("k", blob(big, 1)).await.expect("put");
    let one_blob = node.keys(&client).await;
    assert_eq!(one_blob, 3, "a manifest and two chunks");
    b.put_new("k", blob(big, 2)).await.expect("put_new");
    assert_eq!(b.get("k").await.expect("get"), blob(big, 2));
    assert_eq!(
        b.size("k").await.expect("size"),
        Some(big as u64),
        "from the manifest"
    );
    assert_eq!(
        node.keys(&client).await,
        one_blob,
        "the replaced blob's chunks are gone"
    );
    node.stop().await;
}

/// A pipeline store writes each shard in one round trip: 2+2 over 4 servers, 8 stripes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_costs_one_round_trip_per_shard() {
    let mut nodes = Vec::new();
    let mut clients = Vec::new();
    let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
    for _ in 0..4 {
        let n = Node::start().await;
        let (c, b) = n.backend().await;
        clients.push(c);
        backends.push(Arc::new(b));
        nodes.push(n);
    }
    let meta = vec![Arc::new(qsfs_backup::backends::Memory::new("meta")) as Arc<dyn Backend>];
    let stripe = 64 * 1024;
    let p = Pipeline::open(
        common::settings(2, 2, stripe),
        vec![backends],
        meta,
        &KeySource::passphrase("round trips"),
    )
    .await
    .expect("open");
    let data: Vec<u8> = (0..8 * stripe).map(|_| rand::random::<u8>()).collect();
    let before: u64 = clients.iter().map(|c| c.round_trips()).sum();
    let rec = p
        .store(
            "obj",
            Box::new(std::io::Cursor::new(data.clone())),
            Attrs::default(),
            &NoProgress,
        )
        .await
        .expect("store");
    let trips: u64 = clients.iter().map(|c| c.round_trips()).sum::<u64>() - before;
    let shards = rec.stripes.len() as u64 * 4;
    assert_eq!(shards, 32);
    // Health probes add a few; the LENGTH before every SET would add one per shard.
    assert!(
        trips < shards + shards / 2,
        "{trips} round trips for {shards} shards"
    );
    assert_eq!(p.read_all(&rec).await.expect("read").as_ref(), &data[..]);
    for n in nodes {
        n.stop().await;
    }
}
