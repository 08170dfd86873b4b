//! `Backend::verify` through the 0-db adapter: a blob stored as one value is confirmed by the
//! node's own CRC of its copy (CHECK, LENGTH and KEYCUR in one round trip), never by sending
//! the blob back; on `qsfs serve` (the CRC in bytes 9..13 of its cursors) and on the original
//! (its cursor's CRC, of its own CRC variant). A copy that differs, fails its checksum or is
//! missing is told apart.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use crate::server_util::{scripted_server, CommandLog, TestServer};

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qsfs_core::{Backend, Error};
use qsfs_store::remote::{LazyZdbBackend, ZdbBackend, ZdbClient, ZdbConfig};
use qsfs_store::server::resp::Reply;
use qsfs_store::server::ServerConfig;

fn backend(addr: SocketAddr, ns: &str) -> ZdbBackend {
    let mut cfg = ZdbConfig::new(addr.to_string());
    cfg.namespace = ns.to_string();
    cfg.retries = 1;
    cfg.backoff = Duration::from_millis(10);
    ZdbBackend::new(Arc::new(ZdbClient::connect(cfg).unwrap())).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The value the adapter stores for `data`: `0x00 | crc32c(data) | data`.
fn stored(data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// A scripted server holding `data` under every key as the adapter stores it: INFO says
/// `revision`, CHECK answers `check`, LENGTH the stored length, KEYCUR `cursor`, GET the
/// stored value. Every command is logged.
fn scripted(
    revision: &'static str,
    check: Reply,
    cursor: Vec<u8>,
    data: &[u8],
) -> (SocketAddr, CommandLog) {
    let value = Bytes::from(stored(data));
    scripted_server(move |cmd| match cmd {
        "PING" => Reply::Status("PONG".into()),
        "SELECT" => Reply::Status("OK".into()),
        "INFO" => Reply::Bulk(format!("# server\nserver_revision: {revision}\n").into()),
        "NSINFO" => Reply::Bulk("mode: userkey\n".into()),
        "CHECK" => check.clone(),
        "LENGTH" => Reply::Int(value.len() as i64),
        "KEYCUR" => Reply::Bulk(cursor.clone().into()),
        "GET" => Reply::Bulk(value.clone()),
        _ => Reply::err("Command not supported"),
    })
}

/// `verify` of `expected` by an adapter on a server [`scripted`] with the rest.
fn verify_on(
    server: (&'static str, Reply, Vec<u8>, &[u8]),
    expected: &Bytes,
) -> (qsfs_core::Result<()>, CommandLog) {
    let (addr, log) = scripted(server.0, server.1, server.2, server.3);
    (
        rt().block_on(backend(addr, "shards").verify("k", expected)),
        log,
    )
}

/// `verify_on` that must fail with `Error::Corrupt`.
fn corrupt_on(server: (&'static str, Reply, Vec<u8>, &[u8]), expected: &Bytes) {
    let (r, _) = verify_on(server, expected);
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
}

/// The original's KEYCUR cursor of a value: `key length | file | payload length | offset |
/// CRC`, with its CRC variant (spec §11.3: `!crc32c_append(!0, payload)`).
fn original_cursor(payload: &[u8], crc_flip: u32) -> Vec<u8> {
    let mut c = vec![1u8];
    c.extend_from_slice(&0u32.to_le_bytes());
    c.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    c.extend_from_slice(&1234u32.to_le_bytes());
    c.extend_from_slice(&((!crc32c::crc32c_append(!0, payload)) ^ crc_flip).to_le_bytes());
    c
}

/// `qsfs serve`'s cursor: `0x51 | seqno | value crc32c | cursor crc`.
/// A scripted `qsfs serve` holding `held`, whose KEYCUR cursors carry `crc`.
fn ours(crc: u32, held: &[u8]) -> (&'static str, Reply, Vec<u8>, &[u8]) {
    ("qsfs-0.1.0", Reply::Int(1), qsfs_cursor(crc), held)
}

fn qsfs_cursor(value_crc: u32) -> Vec<u8> {
    let mut c = vec![0x51u8];
    c.extend_from_slice(&7u64.to_le_bytes());
    c.extend_from_slice(&value_crc.to_le_bytes());
    c.extend_from_slice(&crc32c::crc32c(&c).to_le_bytes());
    c
}

fn asked(log: &CommandLog, cmd: &str) -> bool {
    log.lock().unwrap().iter().any(|(_, c)| c == cmd)
}

#[test]
fn the_original_confirms_by_its_crc_and_nothing_travels_back() {
    let data = b"a shard of some stripe, stored once".to_vec();
    let expected = Bytes::from(data.clone());
    let cursor = |flip| original_cursor(&stored(&data), flip);
    let original = |check, flip| ("2.0.8", check, cursor(flip), &data[..]);

    let (r, log) = verify_on(original(Reply::Int(1), 0), &expected);
    r.unwrap();
    assert!(asked(&log, "KEYCUR") && asked(&log, "CHECK"), "{log:?}");
    assert!(!asked(&log, "GET"), "the blob was read back: {log:?}");
    // The same through the lazily connecting adapter the `qsfs` commands use.
    let (addr, log) = scripted("2.0.8", Reply::Int(1), cursor(0), &data);
    let lazy = LazyZdbBackend::new(&addr.to_string(), "shards", None).unwrap();
    rt().block_on(lazy.verify("k", &expected)).unwrap();
    assert!(asked(&log, "KEYCUR") && !asked(&log, "GET"), "{log:?}");
    // Another value of the same length, as the node's CRC tells.
    corrupt_on(original(Reply::Int(1), 1 << 7), &expected);
    // The node's copy fails its own checksum.
    corrupt_on(original(Reply::Int(0), 0), &expected);
    // A shorter blob than the node holds.
    corrupt_on(
        original(Reply::Int(1), 0),
        &expected.slice(..expected.len() - 1),
    );
    // Gone.
    let (r, _) = verify_on(original(Reply::Nil, 0), &expected);
    assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
}

#[test]
fn qsfs_serve_confirms_by_the_crc_in_its_cursor_and_an_older_one_is_read_back() {
    let data = b"another shard".to_vec();
    let expected = Bytes::from(data.clone());

    let (r, log) = verify_on(ours(crc32c::crc32c(&stored(&data)), &data), &expected);
    r.unwrap();
    assert!(!asked(&log, "GET"), "the blob was read back: {log:?}");
    let other = b"other shard!!";
    corrupt_on(ours(crc32c::crc32c(&stored(other)), &data), &expected);

    // A server that predates the CRC in its cursors: the blob is read back and compared.
    let (r, log) = verify_on(ours(0, &data), &expected);
    r.unwrap();
    assert!(asked(&log, "GET"), "{log:?}");
    corrupt_on(ours(0, b"another shard, longer"), &expected);
}

/// On a real `qsfs serve`: a stored shard verifies; once a byte of it is flipped on the node's
/// disk, the node's check of its copy fails and verify says so.
#[test]
fn a_real_node_confirms_a_shard_and_catches_it_damaged_on_its_disk() {
    let root = tempfile::tempdir().unwrap();
    let config = || ServerConfig {
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    };
    let serve = || {
        let keep = tempfile::tempdir().unwrap();
        TestServer::start_at(root.path(), keep, config(), Default::default())
    };
    let mut server = serve();
    let c = ZdbClient::connect(ZdbConfig::new(server.addr.to_string())).unwrap();
    qsfs_core::Store::namespace_create(&c, "shards").unwrap();
    let data: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = Bytes::from(data.clone());
    let mut cfg = ZdbConfig::new(server.addr.to_string());
    cfg.namespace = "shards".into();
    let client = Arc::new(ZdbClient::connect(cfg).unwrap());
    let b = ZdbBackend::new(client.clone()).unwrap();
    server.rt.block_on(async {
        b.put("shard", expected.clone()).await.unwrap();
        assert!(client.is_qsfs());
        // One round trip each, and no more: the shard is confirmed by the CRC, not read back.
        let before = client.round_trips();
        b.verify("shard", &expected).await.unwrap();
        b.put_verified("new-shard", expected.clone(), true)
            .await
            .unwrap();
        assert_eq!(client.round_trips() - before, 2);
    });
    drop((b, c));
    server.stop();
    drop(server);
    let mut flipped = 0;
    for entry in std::fs::read_dir(root.path().join("ns").join("shards")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(pos) = bytes.windows(64).position(|w| w == &data[30_000..30_064]) {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&[bytes[pos] ^ 0x5a], pos as u64).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1);
    let server = serve();
    let b = backend(server.addr, "shards");
    let err = server
        .rt
        .block_on(b.verify("shard", &expected))
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}
