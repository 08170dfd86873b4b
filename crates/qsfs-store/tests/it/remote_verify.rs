//! `Backend::verify` through the 0-db adapter: a blob stored as one value is confirmed by the
//! node's own CRC of its copy (CHECK, LENGTH and KEYCUR in one round trip), never by sending
//! the blob back; on `qsfs serve` (the CRC in bytes 9..13 of its cursors) and on the original
//! (its cursor's CRC, of its own CRC variant). A copy that differs, fails its checksum or is
//! missing is told apart.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use crate::server_util::TestServer;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use qsfs_core::{Backend, Error};
use qsfs_store::remote::{ZdbBackend, ZdbClient, ZdbConfig};
use qsfs_store::server::resp::{parse_reply, Reply};
use qsfs_store::server::ServerConfig;

type Log = Arc<Mutex<Vec<String>>>;

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
) -> (SocketAddr, Log) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let log: Log = Arc::default();
    let log2 = Arc::clone(&log);
    let value = Bytes::from(stored(data));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let (mut s, log) = (s.unwrap(), Arc::clone(&log2));
            let (check, cursor, value) = (check.clone(), cursor.clone(), value.clone());
            std::thread::spawn(move || {
                let mut buf = BytesMut::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(Reply::Array(args)) = parse_reply(&mut buf).unwrap() {
                        let Some(Reply::Bulk(cmd)) = args.first() else {
                            return;
                        };
                        let cmd = String::from_utf8_lossy(cmd).to_uppercase();
                        log.lock().unwrap().push(cmd.clone());
                        let reply = match cmd.as_str() {
                            "PING" => Reply::Status("PONG".into()),
                            "SELECT" => Reply::Status("OK".into()),
                            "INFO" => Reply::Bulk(
                                format!("# server\nserver_revision: {revision}\n").into(),
                            ),
                            "NSINFO" => Reply::Bulk("mode: userkey\n".into()),
                            "CHECK" => check.clone(),
                            "LENGTH" => Reply::Int(value.len() as i64),
                            "KEYCUR" => Reply::Bulk(cursor.clone().into()),
                            "GET" => Reply::Bulk(value.clone()),
                            _ => Reply::err("Command not supported"),
                        };
                        if s.write_all(&reply.to_bytes()).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
            });
        }
    });
    (addr, log)
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
fn qsfs_cursor(value_crc: u32) -> Vec<u8> {
    let mut c = vec![0x51u8];
    c.extend_from_slice(&7u64.to_le_bytes());
    c.extend_from_slice(&value_crc.to_le_bytes());
    c.extend_from_slice(&crc32c::crc32c(&c).to_le_bytes());
    c
}

fn asked(log: &Log, cmd: &str) -> bool {
    log.lock().unwrap().iter().any(|c| c == cmd)
}

#[test]
fn the_original_confirms_by_its_crc_and_nothing_travels_back() {
    let data = b"a shard of some stripe, stored once".to_vec();
    let expected = Bytes::from(data.clone());
    let rt = rt();
    let original = "2.0.8";

    let (addr, log) = scripted(
        original,
        Reply::Int(1),
        original_cursor(&stored(&data), 0),
        &data,
    );
    rt.block_on(backend(addr, "shards").verify("k", &expected))
        .unwrap();
    assert!(asked(&log, "KEYCUR") && asked(&log, "CHECK"), "{log:?}");
    assert!(!asked(&log, "GET"), "the blob was read back: {log:?}");

    // Another value of the same length, as the node's CRC tells.
    let (addr, _) = scripted(
        original,
        Reply::Int(1),
        original_cursor(&stored(&data), 1 << 7),
        &data,
    );
    let err = rt
        .block_on(backend(addr, "shards").verify("k", &expected))
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");

    // The node's copy fails its own checksum.
    let (addr, _) = scripted(
        original,
        Reply::Int(0),
        original_cursor(&stored(&data), 0),
        &data,
    );
    let err = rt
        .block_on(backend(addr, "shards").verify("k", &expected))
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");

    // Gone.
    let (addr, _) = scripted(
        original,
        Reply::Nil,
        original_cursor(&stored(&data), 0),
        &data,
    );
    let err = rt
        .block_on(backend(addr, "shards").verify("k", &expected))
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");

    // A shorter blob than the node holds.
    let (addr, _) = scripted(
        original,
        Reply::Int(1),
        original_cursor(&stored(&data), 0),
        &data,
    );
    let shorter = expected.slice(..expected.len() - 1);
    let err = rt
        .block_on(backend(addr, "shards").verify("k", &shorter))
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

#[test]
fn qsfs_serve_confirms_by_the_crc_in_its_cursor_and_an_older_one_is_read_back() {
    let data = b"another shard".to_vec();
    let expected = Bytes::from(data.clone());
    let rt = rt();
    let ours = "qsfs-0.1.0";

    let (addr, log) = scripted(
        ours,
        Reply::Int(1),
        qsfs_cursor(crc32c::crc32c(&stored(&data))),
        &data,
    );
    rt.block_on(backend(addr, "shards").verify("k", &expected))
        .unwrap();
    assert!(!asked(&log, "GET"), "the blob was read back: {log:?}");

    let (addr, _) = scripted(
        ours,
        Reply::Int(1),
        qsfs_cursor(crc32c::crc32c(&stored(b"other shard!!"))),
        &data,
    );
    let err = rt
        .block_on(backend(addr, "shards").verify("k", &expected))
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");

    // A server that predates the CRC in its cursors: the blob is read back and compared.
    let (addr, log) = scripted(ours, Reply::Int(1), qsfs_cursor(0), &data);
    rt.block_on(backend(addr, "shards").verify("k", &expected))
        .unwrap();
    assert!(asked(&log, "GET"), "{log:?}");
    let (addr, _) = scripted(
        ours,
        Reply::Int(1),
        qsfs_cursor(0),
        b"another shard, longer",
    );
    let err = rt
        .block_on(backend(addr, "shards").verify("k", &expected))
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
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
    let b = backend(server.addr, "shards");
    server.rt.block_on(async {
        b.put("shard", expected.clone()).await.unwrap();
        b.verify("shard", &expected).await.unwrap();
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
