//! A damaged record read through the remote client: a value whose bytes were flipped in a
//! `qsfs serve` segment file is `Error::Corrupt` naming the server, namespace and key (one bad
//! record, which a checker reports before going on), its older versions stay reachable, and an
//! `Internal Error` that is not confirmed as damage, or a server that is gone, stays the error
//! about the whole store it was.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use crate::server_util::{scripted_server, Client, CommandLog};

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use qsfs_core::{Backend, Error, Mode, NamespaceProperty, Store};
use qsfs_store::remote::{ZdbBackend, ZdbClient, ZdbConfig};
use qsfs_store::server::resp::Reply;
use qsfs_store::server::{Server, ServerConfig, ServerHandle};
use qsfs_store::Engine;

const V1: &[u8] = b"the first version of the victim, intact on disk";
const V2: &[u8] = b"the second version of the victim, damaged on disk";

/// `qsfs serve` over the engine in `dir` on 127.0.0.1:0.
struct Served {
    rt: tokio::runtime::Runtime,
    handle: Option<ServerHandle>,
    addr: SocketAddr,
}

impl Served {
    fn start(dir: &Path) -> Served {
        let engine = Engine::open(dir, Default::default()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = ServerConfig {
            tcp: Some("127.0.0.1:0".parse().unwrap()),
            index_root: dir.to_path_buf(),
            data_root: dir.to_path_buf(),
            ..ServerConfig::default()
        };
        let handle = rt.block_on(async move {
            Server::bind(Arc::new(engine), config)
                .await
                .unwrap()
                .spawn()
        });
        let addr = handle.local_addr.unwrap();
        Served {
            rt,
            handle: Some(handle),
            addr,
        }
    }

    /// Shuts the server down and waits until the engine is closed.
    fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown()).unwrap();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.rt.block_on(h.shutdown());
        }
    }
}

fn client(addr: SocketAddr) -> ZdbClient {
    client_on(addr, "default")
}

/// A client whose own namespace (a backend's) is `ns`.
fn client_on(addr: SocketAddr, ns: &str) -> ZdbClient {
    let mut cfg = ZdbConfig::new(addr.to_string());
    cfg.namespace = ns.to_string();
    cfg.retries = 1;
    cfg.backoff = Duration::from_millis(10);
    ZdbClient::connect(cfg).unwrap()
}

/// Flips one byte in the middle of `value`, stored right after `key`, in the segment files of
/// namespace `ns` under `dir`.
fn flip(dir: &Path, ns: &str, key: &[u8], value: &[u8]) {
    flip_at(dir, ns, key, value, key.len() + value.len() / 2);
}

/// Flips the byte `at` bytes after the start of `key` followed by `value` (stored once) in the
/// segment files of namespace `ns` under `dir`: in the value, or in the key, which the record
/// header's checksum covers.
fn flip_at(dir: &Path, ns: &str, key: &[u8], value: &[u8], at: usize) {
    let needle = [key, value].concat();
    let mut flipped = 0;
    for entry in std::fs::read_dir(dir.join("ns").join(ns)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        if let Some(pos) = bytes.windows(needle.len()).position(|w| w == needle) {
            let at = pos + at;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&[bytes[at] ^ 0x5a], at as u64).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1, "the value is stored once");
}

#[test]
fn a_flipped_value_is_corrupt_over_the_wire_and_its_older_version_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(dir.path());
    let c = client(server.addr);
    c.set("default", Some(b"victim"), V1).unwrap();
    c.set("default", Some(b"victim"), V2).unwrap();
    c.set("default", Some(b"other"), b"intact").unwrap();
    drop(c);
    server.stop();
    flip(dir.path(), "default", b"victim", V2);
    let server = Served::start(dir.path());
    let c = client(server.addr);

    // The server's CHECK re-reads the payload: `:0`, a checksum mismatch.
    let mut raw = Client::connect(server.addr);
    assert_eq!(raw.cmd(&["CHECK", "victim"]), Reply::Int(0));
    assert_eq!(raw.cmd(&["CHECK", "other"]), Reply::Int(1));
    assert_eq!(raw.cmd(&["GET", "victim"]), Reply::err("Internal Error"));
    let Reply::Error(history) = raw.cmd(&["HISTORY", "victim"]) else {
        panic!("HISTORY of a damaged version is an error");
    };
    assert!(
        history.starts_with("Internal Error (damaged payload, previous ") && history.len() == 59,
        "{history}"
    );

    match c.get("default", b"victim").unwrap_err() {
        Error::Corrupt { location, .. } => {
            for part in [&server.addr.to_string(), "default", "\"victim\""] {
                assert!(location.contains(part), "{part} in {location}");
            }
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        c.history("default", b"victim", None),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(c.check("default", b"victim").unwrap(), Some(false));
    assert_eq!(
        c.get("default", b"other").unwrap().unwrap().value,
        b"intact"
    );

    // The older version is one link away, read from the damaged version's header.
    let prev = c
        .version_before("default", b"victim", None)
        .unwrap()
        .expect("an older version");
    let older = c.history("default", b"victim", Some(prev)).unwrap();
    assert_eq!((older.value.as_slice(), older.previous), (V1, None));
    assert_eq!(
        c.version_before("default", b"victim", Some(prev)).unwrap(),
        None
    );

    // Gone: not a damaged record, the store is unavailable.
    server.stop();
    let err = c.get("default", b"other").unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    let err = c.get("default", b"victim").unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
}

#[test]
fn a_damaged_older_version_is_corrupt_and_the_walk_goes_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(dir.path());
    let c = client(server.addr);
    c.set("default", Some(b"k"), V1).unwrap();
    c.set("default", Some(b"k"), V2).unwrap();
    c.set("default", Some(b"k"), b"live").unwrap();
    drop(c);
    server.stop();
    flip(dir.path(), "default", b"k", V2);
    let server = Served::start(dir.path());
    let c = client(server.addr);

    let live = c.history("default", b"k", None).unwrap();
    assert_eq!(live.value, b"live");
    let damaged = live.previous.unwrap();
    assert!(matches!(
        c.history("default", b"k", Some(damaged)),
        Err(Error::Corrupt { .. })
    ));
    let prev = c
        .version_before("default", b"k", Some(damaged))
        .unwrap()
        .unwrap();
    assert_eq!(c.history("default", b"k", Some(prev)).unwrap().value, V1);
}

#[test]
fn a_damaged_record_header_is_corrupt_and_ends_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(dir.path());
    let c = client(server.addr);
    c.set("default", Some(b"victim"), V1).unwrap();
    c.set("default", Some(b"victim"), V2).unwrap();
    c.set("default", Some(b"victim"), b"live").unwrap();
    drop(c);
    server.stop();
    flip_at(dir.path(), "default", b"victim", V2, 2);
    let server = Served::start(dir.path());
    let c = client(server.addr);

    let damaged = c
        .history("default", b"victim", None)
        .unwrap()
        .previous
        .unwrap();
    let mut raw = Client::connect(server.addr);
    let ekey = bytes::Bytes::copy_from_slice(&damaged.0);
    assert_eq!(
        raw.cmd(&[&b"HISTORY"[..], b"victim", &ekey]),
        Reply::err("Internal Error (damaged record)")
    );
    // Its link to older versions cannot be trusted: the walk ends there, as over the engine.
    for r in [
        c.history("default", b"victim", Some(damaged)).map(|_| ()),
        c.version_before("default", b"victim", Some(damaged))
            .map(|_| ()),
    ] {
        assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
    }
}

/// Commands a [`scripted`] server received, each with the number of its connection.
type Log = CommandLog;

/// A scripted 0-db: HISTORY and GET answer `Internal Error`, CHECK answers `check`, NSINFO says
/// user mode; every command is
/// recorded with the number of the connection it came on.
fn scripted(check: Reply) -> (SocketAddr, Log) {
    scripted_with(Reply::err("Internal Error"), None, check)
}

/// A scripted 0-db whose HISTORY and GET answer `history`, whose INFO (when given) answers
/// `info`, and whose CHECK answers `check`.
fn scripted_with(history: Reply, info: Option<&'static str>, check: Reply) -> (SocketAddr, Log) {
    scripted_server(move |cmd| match cmd {
        "PING" => Reply::Status("PONG".into()),
        "HISTORY" | "GET" => history.clone(),
        "INFO" if info.is_some() => Reply::Bulk(info.unwrap_or("").into()),
        "NSINFO" => Reply::Bulk("mode: userkey\n".into()),
        "CHECK" => check.clone(),
        _ => Reply::err("Command not supported"),
    })
}

/// CHECK was asked, on the connection that asked HISTORY.
fn assert_check_asked_with_history(log: &Log) {
    let log = log.lock().unwrap().clone();
    let on = |cmd: &str| log.iter().find(|(_, c)| c == cmd).map(|(n, _)| *n);
    assert!(on("CHECK").is_some(), "CHECK asked: {log:?}");
    assert_eq!(
        on("CHECK"),
        on("HISTORY"),
        "on the same connection: {log:?}"
    );
}

#[test]
fn an_internal_error_is_corrupt_only_when_check_says_the_checksum_fails() {
    let (addr, log) = scripted(Reply::Int(0));
    let err = client(addr).get("default", b"k").unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert_check_asked_with_history(&log);

    // Unreadable (`:-1`), or gone meanwhile (nil): the server is failing, not one record.
    for check in [Reply::Int(-1), Reply::Nil] {
        let (addr, _) = scripted(check.clone());
        let err = client(addr).get("default", b"k").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "CHECK {check:?}: {err:?}");
    }
}

/// The original 0-db sends a value without checking its CRC (GET and HISTORY alike), so the
/// client asks `CHECK` in the same round trip: `:0` is `Corrupt`, never the damaged bytes; `:1`
/// hands the value on. `qsfs serve` checks every read itself and is not asked.
#[test]
fn a_value_the_original_sends_unchecked_is_checked_in_the_same_round_trip() {
    let value = Reply::Array(vec![
        Reply::Bulk(vec![0xff; 8].into()),
        Reply::Bulk("1700000000".into()),
        Reply::Bulk("what the disk holds".into()),
    ]);
    let original = Some("# server\nserver_revision: 2.0.8\n");
    let (addr, log) = scripted_with(value.clone(), original, Reply::Int(0));
    let err = client(addr).get("default", b"k").unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert_check_asked_with_history(&log);

    let (addr, _) = scripted_with(value.clone(), original, Reply::Int(1));
    let got = client(addr).get("default", b"k").unwrap().unwrap();
    assert_eq!(got.value, b"what the disk holds");

    let ours = Some("# server\nserver_revision: qsfs-0.1.0\n");
    let (addr, log) = scripted_with(value, ours, Reply::Int(0));
    let got = client(addr).get("default", b"k").unwrap().unwrap();
    assert_eq!(
        got.value, b"what the disk holds",
        "qsfs serve checked it already"
    );
    let log = log.lock().unwrap().clone();
    assert!(log.iter().all(|(_, c)| c != "CHECK"), "{log:?}");
}

/// Flips the middle byte of `needle`, stored once, in the segment files of namespace `ns`.
fn flip_bytes(dir: &Path, ns: &str, needle: &[u8]) {
    flip_at(dir, ns, needle, b"", needle.len() / 2);
}

/// Bytes no two calls with different seeds share a 64-byte window of (an xorshift stream).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A shard flipped on a `qsfs serve` node is `Corrupt` through the backup Backend, naming the
/// node, namespace, blob and record, whether it is one value, one chunk of a blob over 8 MiB
/// or a seq-mode record: the pipeline repairs a damaged shard from the others. Other blobs
/// still read.
#[test]
fn a_flipped_shard_is_corrupt_through_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(dir.path());
    let c = client(server.addr);
    c.namespace_create("shards").unwrap();
    c.namespace_create("seqshards").unwrap();
    c.namespace_set("seqshards", NamespaceProperty::Mode(Mode::Seq))
        .unwrap();
    let small = noise(1, 4096);
    let big = noise(2, 9 << 20);
    let seq = noise(3, 4096);
    let user = ZdbBackend::new(Arc::new(client_on(server.addr, "shards"))).unwrap();
    let seqb = ZdbBackend::new(Arc::new(client_on(server.addr, "seqshards"))).unwrap();
    assert_eq!(seqb.mode(), Mode::Seq);
    server.rt.block_on(async {
        user.put("small", small.clone().into()).await.unwrap();
        user.put("intact", b"intact".to_vec().into()).await.unwrap();
        user.put("big", big.clone().into()).await.unwrap();
        seqb.put("seq", seq.clone().into()).await.unwrap();
    });
    drop((user, seqb, c));
    server.stop();
    flip_bytes(dir.path(), "shards", &small[1000..1064]);
    // In the second chunk of the blob over 8 MiB.
    flip_bytes(
        dir.path(),
        "shards",
        &big[(8 << 20) + 1000..(8 << 20) + 1064],
    );
    flip_bytes(dir.path(), "seqshards", &seq[1000..1064]);
    let server = Served::start(dir.path());
    let user = ZdbBackend::new(Arc::new(client_on(server.addr, "shards"))).unwrap();
    let seqb = ZdbBackend::new(Arc::new(client_on(server.addr, "seqshards"))).unwrap();

    server.rt.block_on(async {
        for (backend, key, ns) in [
            (&user, "small", "shards"),
            (&user, "big", "shards"),
            (&seqb, "seq", "seqshards"),
        ] {
            match backend.get(key).await.unwrap_err() {
                Error::Corrupt { location, .. } => {
                    for part in [&server.addr.to_string(), ns, key, "record"] {
                        assert!(location.contains(part), "{part} in {location}");
                    }
                }
                other => panic!("{key}: expected Corrupt, got {other:?}"),
            }
        }
        assert_eq!(&user.get("intact").await.unwrap()[..], b"intact");
    });
}

/// A GET that fails on the node without CHECK confirming damage (unreadable, gone meanwhile)
/// stays the I/O error it was: the node may be failing. CHECK goes on the GET's connection.
#[test]
fn a_backend_get_is_corrupt_only_when_check_says_the_checksum_fails() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (addr, log) = scripted(Reply::Int(0));
    let backend = ZdbBackend::new(Arc::new(client(addr))).unwrap();
    let err = rt.block_on(backend.get("k")).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    let log = log.lock().unwrap().clone();
    let on = |cmd: &str| log.iter().find(|(_, c)| c == cmd).map(|(n, _)| *n);
    assert!(on("CHECK").is_some(), "CHECK asked: {log:?}");
    assert_eq!(on("CHECK"), on("GET"), "on the same connection: {log:?}");

    for check in [Reply::Int(-1), Reply::Nil] {
        let (addr, _) = scripted(check.clone());
        let backend = ZdbBackend::new(Arc::new(client(addr))).unwrap();
        let err = rt.block_on(backend.get("k")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "CHECK {check:?}: {err:?}");
    }
}
