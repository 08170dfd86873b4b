//! Raw-bytes protocol tests against a real server on 127.0.0.1:0 over a real engine: every
//! command, reply shape and error string of spec/zdb-protocol.md.

#![allow(clippy::unwrap_used)]

use crate::server_util;

use qsfs_store::server::resp::Reply;
use qsfs_store::server::session::secure_digest;
use qsfs_store::server::ServerConfig;
use server_util::*;

fn admin_config(pw: &str) -> ServerConfig {
    ServerConfig {
        admin_password: Some(pw.into()),
        ..ServerConfig::default()
    }
}

#[test]
fn ping_time_and_prefix_lookup() {
    let srv = TestServer::default();
    let mut c = srv.client();
    c.raw(b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n");
    c.raw(b"*3\r\n$4\r\nping\r\n$1\r\na\r\n$1\r\nb\r\n", b"+PONG\r\n");
    c.raw(b"*1\r\n$1\r\nP\r\n", b"+PONG\r\n");
    c.raw(b"*1\r\n$1\r\n*\r\n", b"-This is not a valid command\r\n");
    c.raw(b"*1\r\n$0\r\n\r\n", b"-This is not a valid command\r\n");
    c.raw(b"*1\r\n$5\r\nMULTI\r\n", b"-Command not supported\r\n");
    c.raw(b"*1\r\n$6\r\nCONFIG\r\n", b"-Command not supported\r\n");
    c.raw(
        b"*3\r\n$5\r\nSETXX\r\n$1\r\na\r\n$1\r\nb\r\n",
        b"-Command not supported\r\n",
    );
    c.raw(b"*1\r\n$4\r\nSTOP\r\n", b"-Unauthorized\r\n");
    c.raw(
        b"*2\r\n$5\r\nKSCAN\r\n$1\r\na\r\n",
        b"-Command disabled in release code, not yet available\r\n",
    );
    let Reply::Array(t) = c.cmd(&["TIME"]) else {
        panic!("TIME must be an array")
    };
    assert_eq!(t.len(), 2);
    let Reply::Bulk(secs) = &t[0] else {
        panic!("TIME seconds must be a bulk string")
    };
    assert_eq!(secs.len(), 10);
    let now = qsfs_core::now();
    let s: u64 = std::str::from_utf8(secs).unwrap().parse().unwrap();
    assert!(s.abs_diff(now) < 5);
    let Reply::Bulk(us) = &t[1] else {
        panic!("TIME micros must be a bulk string")
    };
    assert!(std::str::from_utf8(us).unwrap().parse::<u32>().unwrap() < 1_000_000);
    // Prefix spellings reach the right commands.
    c.raw(&req(&["S", "k", "v"]), b"$1\r\nk\r\n");
    c.raw(&req(&["G", "k"]), b"$1\r\nv\r\n");
    c.raw(&req(&["E", "k"]), b":1\r\n");
    c.raw(&req(&["L", "k"]), b":1\r\n");
    c.raw(&req(&["DE", "k"]), b"+OK\r\n");
    c.raw(&req(&["DB"]), b":0\r\n");
}

#[test]
fn info_fields_in_order() {
    let srv = TestServer::default();
    let mut c = srv.client();
    let Reply::Bulk(text) = c.cmd(&["INFO"]) else {
        panic!("INFO must be bulk")
    };
    let text = String::from_utf8(text.to_vec()).unwrap();
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k))
        .collect();
    let want = [
        "server_name",
        "server_revision",
        "engine_revision",
        "instance_id",
        "boot_time",
        "uptime",
        "clients_lifetime",
        "sequential_key_size",
        "data_version",
        "index_version",
        "commands_executed",
        "commands_failed",
        "commands_unauthorized",
    ];
    assert_eq!(&keys[..want.len()], &want);
    assert!(text.contains("server_name: 0-db (zdb)\n"));
    assert!(text.contains("sequential_key_size: 8\n"));
    for f in [
        "network_rx_bytes",
        "network_rx_mb",
        "network_tx_bytes",
        "network_tx_mb",
        "data_disk_write_mb",
    ] {
        assert!(keys.contains(&f), "INFO lacks {f}");
    }
    assert!(text.starts_with("# server\n"));
}

#[test]
fn set_get_and_key_commands() {
    let srv = TestServer::default();
    let mut c = srv.client();
    c.raw(&req(&["SET", "key", "value"]), b"$3\r\nkey\r\n");
    // Identical value: nil, nothing written.
    c.raw(&req(&["SET", "key", "value"]), b"$-1\r\n");
    c.raw(&req(&["SETX", "key", "value2"]), b"$3\r\nkey\r\n");
    c.raw(&req(&["GET", "key"]), b"$6\r\nvalue2\r\n");
    c.raw(&req(&["GET", "nope"]), b"$-1\r\n");
    c.raw(&req(&["GET", ""]), b"-Invalid argument\r\n");
    c.raw(&req(&["GET"]), b"-Unexpected arguments\r\n");
    c.raw(&req(&["GET", "a", "b"]), b"-Unexpected arguments\r\n");
    let long = "k".repeat(256);
    c.raw(&req(&["GET", &long]), b"-Invalid key\r\n");
    c.raw(&req(&["SET", &long, "v"]), b"-Key too large\r\n");
    c.raw(
        &req(&["SET", "", "v"]),
        b"-Invalid argument, key needed\r\n",
    );
    c.raw(&req(&["SET", "k"]), b"-Unexpected arguments\r\n");
    c.raw(
        &req(&["SET", "a", "b", "1", "2"]),
        b"-Unexpected arguments\r\n",
    );
    let max = "m".repeat(255);
    c.raw(
        &req(&["SET", &max, "x"]),
        format!("$255\r\n{max}\r\n").as_bytes(),
    );
    c.raw(&req(&["EXISTS", "key"]), b":1\r\n");
    c.raw(&req(&["EXISTS", "nope"]), b":0\r\n");
    c.raw(&req(&["LENGTH", "key"]), b":6\r\n");
    c.raw(&req(&["LENGTH", "nope"]), b"$-1\r\n");
    let Reply::Int(ts) = c.cmd(&["KEYTIME", "key"]) else {
        panic!("KEYTIME must be an integer")
    };
    assert!((ts as u64).abs_diff(qsfs_core::now()) < 5);
    c.raw(&req(&["KEYTIME", "nope"]), b"$-1\r\n");
    c.raw(&req(&["CHECK", "key"]), b":1\r\n");
    c.raw(&req(&["CHECK", "nope"]), b"$-1\r\n");
    c.raw(
        &req(&["MGET", "key", "nope", ""]),
        b"*3\r\n$6\r\nvalue2\r\n$-1\r\n$-1\r\n",
    );
    c.raw(&req(&["MGET"]), b"-Invalid arguments\r\n");
    c.raw(&req(&["MGET", "a", &long]), b"-Invalid key\r\n");
    c.raw(&req(&["DBSIZE"]), b":2\r\n");
    c.raw(&req(&["DEL", "key"]), b"+OK\r\n");
    c.raw(&req(&["DEL", "key"]), b"-Key not found\r\n");
    c.raw(&req(&["DEL", ""]), b"-Invalid argument\r\n");
    c.raw(&req(&["DEL", &long]), b"-Invalid key\r\n");
    c.raw(&req(&["GET", "key"]), b"$-1\r\n");
    c.raw(&req(&["DBSIZE"]), b":1\r\n");
    // A deleted key can be set again, also with its old value.
    c.raw(&req(&["SET", "key", "value2"]), b"$3\r\nkey\r\n");
    // Binary values and empty values.
    let bin: Vec<u8> = (0..=255u8).collect();
    assert_eq!(c.cmd(&[b"SET".as_slice(), b"bin", &bin]), bulk("bin"));
    assert_eq!(c.cmd(&["GET", "bin"]), bulk(&bin));
    assert_eq!(c.cmd(&["SET", "empty", ""]), bulk("empty"));
    c.raw(&req(&["GET", "empty"]), b"$0\r\n\r\n");
    // No admin password: every client is admin, so timestamped SET/DEL work.
    c.raw(&req(&["SET", "old", "v", "1000"]), b"$3\r\nold\r\n");
    c.raw(&req(&["KEYTIME", "old"]), b":1000\r\n");
    c.raw(&req(&["DEL", "old", "junk"]), b"+OK\r\n");
}

#[test]
fn eight_mib_values() {
    let srv = TestServer::default();
    let mut c = srv.client();
    let big = vec![0x5au8; qsfs_core::MAX_VALUE_LEN];
    assert_eq!(c.cmd(&[b"SET".as_slice(), b"big", &big]), bulk("big"));
    assert_eq!(c.cmd(&["LENGTH", "big"]), Reply::Int(big.len() as i64));
    assert_eq!(c.cmd(&["GET", "big"]), bulk(&big));
}

#[test]
fn sequential_mode() {
    let srv = TestServer::default();
    let mut c = srv.client();
    c.raw(&req(&["NSNEW", "s"]), b"+OK\r\n");
    c.raw(&req(&["NSSET", "s", "mode", "seq"]), b"+OK\r\n");
    c.raw(
        &req(&["NSSET", "s", "mode", "bad"]),
        b"-Invalid property value (expected: user, seq)\r\n",
    );
    c.raw(&req(&["SELECT", "s"]), b"+OK\r\n");
    let id0 = 0u64.to_le_bytes();
    let id1 = 1u64.to_le_bytes();
    assert_eq!(c.cmd(&["SET", "", "a"]), bulk(id0));
    assert_eq!(c.cmd(&["SET", "", "b"]), bulk(id1));
    assert_eq!(c.cmd(&[b"SET".as_slice(), &id0, b"a2"]), bulk(id0));
    assert_eq!(c.cmd(&[b"GET".as_slice(), &id0]), bulk("a2"));
    assert_eq!(
        c.cmd(&[b"SET".as_slice(), &99u64.to_le_bytes(), b"x"]),
        err("Invalid key, only update authorized")
    );
    assert_eq!(
        c.cmd(&["SET", "abc", "x"]),
        err("Invalid key, only update authorized")
    );
    // A 4-byte key is simply not found.
    assert_eq!(c.cmd(&[b"GET".as_slice(), &[0u8, 0, 0, 0]]), Reply::Nil);
    let Reply::Bulk(info) = c.cmd(&["NSINFO", "s"]) else {
        panic!()
    };
    assert!(String::from_utf8_lossy(&info).contains("mode: sequential\n"));
    // Deleted ids are never handed out again.
    assert_eq!(c.cmd(&[b"DEL".as_slice(), &id1]), ok());
    assert_eq!(
        c.cmd(&[b"SET".as_slice(), &id1, b"again"]),
        err("Invalid key, only update authorized")
    );
    let Reply::Bulk(id) = c.cmd(&["SET", "", "c"]) else {
        panic!()
    };
    assert!(u64::from_le_bytes(id[..].try_into().unwrap()) >= 2);
    // A used namespace cannot change mode.
    assert_eq!(
        c.cmd(&["NSSET", "s", "mode", "user"]),
        err("Cannot change mode of used namespace")
    );
}

fn scan_all(c: &mut Client, cmd: &str) -> Vec<String> {
    let mut keys = vec![];
    let mut cursor: Option<bytes::Bytes> = None;
    loop {
        let r = match &cursor {
            None => c.cmd(&[cmd]),
            Some(cur) => c.cmd(&[cmd.as_bytes(), &cur[..]]),
        };
        match r {
            Reply::Error(e) if e == "No more data" => return keys,
            Reply::Array(parts) => {
                let Reply::Bulk(next) = &parts[0] else {
                    panic!("cursor must be bulk")
                };
                assert_eq!(next.len(), 17);
                let Reply::Array(items) = &parts[1] else {
                    panic!()
                };
                for it in items {
                    let Reply::Array(f) = it else { panic!() };
                    assert_eq!(f.len(), 3);
                    let Reply::Bulk(k) = &f[0] else { panic!() };
                    assert!(matches!(f[1], Reply::Int(_)) && matches!(f[2], Reply::Int(_)));
                    keys.push(String::from_utf8(k.to_vec()).unwrap());
                }
                cursor = Some(next.clone());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn scan_rscan_keycur() {
    let srv = TestServer::default();
    let mut c = srv.client();
    c.raw(&req(&["SCAN"]), b"-No more data\r\n");
    c.raw(&req(&["SCAN", "short"]), b"-Invalid key format\r\n");
    for i in 0..300 {
        c.cmd(&["SET", &format!("k{i:03}"), "v"]);
    }
    // An update moves a key to the end; a delete removes it.
    c.cmd(&["SET", "k000", "v2"]);
    c.cmd(&["DEL", "k001"]);
    let keys = scan_all(&mut c, "SCAN");
    assert_eq!(keys.len(), 299);
    assert_eq!(keys.last().unwrap(), "k000");
    assert_eq!(keys[0], "k002");
    let mut rev = scan_all(&mut c, "RSCAN");
    rev.reverse();
    assert_eq!(rev, keys);
    // One page's exact shape.
    c.cmd(&["NSNEW", "one"]);
    c.cmd(&["SELECT", "one"]);
    c.cmd(&["SET", "a", "xyz", "77"]);
    let Reply::Array(parts) = c.cmd(&["SCAN"]) else {
        panic!()
    };
    assert_eq!(
        parts[1],
        Reply::Array(vec![Reply::Array(vec![
            bulk("a"),
            Reply::Int(3),
            Reply::Int(77)
        ])])
    );
    // KEYCUR resumes after the key, even after that key is deleted.
    c.cmd(&["SET", "b", "1"]);
    c.cmd(&["SET", "c", "1"]);
    let Reply::Bulk(cur) = c.cmd(&["KEYCUR", "a"]) else {
        panic!()
    };
    assert_eq!(cur.len(), 17);
    c.cmd(&["DEL", "a"]);
    let Reply::Array(parts) = c.cmd(&[b"SCAN".as_slice(), &cur[..]]) else {
        panic!()
    };
    let Reply::Array(items) = &parts[1] else {
        panic!()
    };
    let got: Vec<&Reply> = items
        .iter()
        .map(|i| match i {
            Reply::Array(f) => &f[0],
            _ => panic!(),
        })
        .collect();
    assert_eq!(got, vec![&bulk("b"), &bulk("c")]);
    c.raw(&req(&["KEYCUR", "nope"]), b"-Key not found\r\n");
    // A cursor is its namespace's own: sequence numbers are per namespace, so resuming another
    // namespace's cursor would silently skip or repeat keys.
    let Reply::Bulk(cur) = c.cmd(&["KEYCUR", "b"]) else {
        panic!()
    };
    c.cmd(&["SELECT", "default"]);
    c.raw(
        &req(&[b"SCAN".as_slice(), &cur[..]]),
        b"-Invalid key format\r\n",
    );
    c.raw(
        &req(&[b"RSCAN".as_slice(), &cur[..]]),
        b"-Invalid key format\r\n",
    );
}

#[test]
fn history_chain() {
    let srv = TestServer::default();
    let mut c = srv.client();
    c.cmd(&["SET", "k", "v1", "100"]);
    c.cmd(&["SET", "k", "v2", "200"]);
    c.cmd(&["SET", "other", "secret"]);
    let Reply::Array(h) = c.cmd(&["HISTORY", "k"]) else {
        panic!()
    };
    assert_eq!(h.len(), 3);
    assert_eq!(h[1], bulk("200"), "timestamp is a bulk string");
    assert_eq!(h[2], bulk("v2"));
    let Reply::Bulk(ekey) = h[0].clone() else {
        panic!("previous ekey must be bulk")
    };
    assert_eq!(ekey.len(), 8);
    let Reply::Array(h1) = c.cmd(&[b"HISTORY".as_slice(), b"k", &ekey[..]]) else {
        panic!()
    };
    assert_eq!(h1, vec![Reply::Nil, bulk("100"), bulk("v1")]);
    // History survives a delete.
    c.cmd(&["DEL", "k"]);
    c.raw(&req(&["HISTORY", "k"]), b"-Key not found\r\n");
    let Reply::Array(h2) = c.cmd(&[b"HISTORY".as_slice(), b"k", &ekey[..]]) else {
        panic!()
    };
    assert_eq!(h2[2], bulk("v1"));
    // The chain of one key cannot reach another key's values (defect of the original).
    let Reply::Array(o) = c.cmd(&["HISTORY", "other"]) else {
        panic!()
    };
    assert_eq!(o[0], Reply::Nil);
    assert_eq!(
        c.cmd(&[b"HISTORY".as_slice(), b"", &ekey[..]]),
        err("Invalid arguments (invalid key)")
    );
    assert_eq!(
        c.cmd(&[b"HISTORY".as_slice(), b"other", &ekey[..]]),
        err("Invalid arguments (invalid key)")
    );
    c.raw(&req(&["HISTORY", "k", "short"]), b"-Invalid arguments\r\n");
    c.raw(&req(&["HISTORY"]), b"-Invalid arguments\r\n");
    assert_eq!(
        c.cmd(&[b"HISTORY".as_slice(), b"k", &[0u8; 8]]),
        err("No more history")
    );
}

#[test]
fn namespaces_and_select_rules() {
    let srv = TestServer::default();
    let mut c = srv.client();
    c.raw(&req(&["NSNEW", "ns1"]), b"+OK\r\n");
    c.raw(
        &req(&["NSNEW", "ns1"]),
        b"-This namespace is not available\r\n",
    );
    c.raw(
        &req(&["NSNEW", "default"]),
        b"-This name is not allowed\r\n",
    );
    c.raw(&req(&["NSNEW", "a/b"]), b"-This name is not allowed\r\n");
    c.raw(&req(&["NSNEW", ".."]), b"-This name is not allowed\r\n");
    c.raw(
        &req(&["NSNEW", &"n".repeat(129)]),
        b"-Namespace too long\r\n",
    );
    c.raw(&req(&["N", "ns2"]), b"+OK\r\n");
    assert_eq!(
        c.cmd(&["NSLIST"]),
        Reply::Array(vec![bulk("default"), bulk("ns1"), bulk("ns2")])
    );
    c.raw(&req(&["SELECT", "1"]), b"-Namespace not found\r\n");
    c.raw(
        &req(&["SELECT", "a", "b", "c", "d"]),
        b"-Too many arguments\r\n",
    );
    c.raw(&req(&["NSINFO", "zzz"]), b"-Namespace not found\r\n");
    let Reply::Bulk(info) = c.cmd(&["NSINFO", "ns1"]) else {
        panic!()
    };
    let info = String::from_utf8(info.to_vec()).unwrap();
    let keys: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k))
        .collect();
    let want = [
        "name",
        "entries",
        "public",
        "worm",
        "locked",
        "password",
        "data_size_bytes",
        "data_size_mb",
        "data_limits_bytes",
        "index_size_bytes",
        "index_size_kb",
        "next_internal_id",
        "mode",
        "stats_index_io_errors",
        "stats_index_io_error_last",
        "stats_index_faults",
        "stats_data_io_errors",
        "stats_data_io_error_last",
        "stats_data_faults",
        "index_disk_freespace_bytes",
        "index_disk_freespace_mb",
        "data_disk_freespace_bytes",
        "data_disk_freespace_mb",
    ];
    assert_eq!(&keys[..want.len()], &want);
    assert!(info.starts_with(
        "# namespace\nname: ns1\nentries: 0\npublic: yes\nworm: no\nlocked: no\npassword: no\n"
    ));
    assert!(info.contains("mode: userkey\n"));
    // Properties.
    c.raw(
        &req(&["NSSET", "nope", "public", "0"]),
        b"-Namespace not found\r\n",
    );
    c.raw(
        &req(&["NSSET", "ns1", "bogus", "1"]),
        b"-Invalid property\r\n",
    );
    c.raw(
        &req(&["NSSET", "default", "password", "x"]),
        b"-Cannot update default namespace\r\n",
    );
    c.raw(
        &req(&["NSSET", "ns1", "password", &"p".repeat(64)]),
        b"-Argument too long\r\n",
    );
    c.raw(&req(&["NSSET", "ns1", "password", "pw1"]), b"+OK\r\n");
    // Public with password: password-less SELECT is read-only.
    c.raw(&req(&["SELECT", "ns1"]), b"+OK\r\n");
    c.raw(
        &req(&["SET", "k", "v"]),
        b"-Namespace is in read-only mode\r\n",
    );
    c.raw(&req(&["DEL", "k"]), b"-Namespace is in read-only mode\r\n");
    c.raw(&req(&["SELECT", "ns1", "wrong"]), b"-Access denied\r\n");
    c.raw(&req(&["SELECT", "ns1", "pw1"]), b"+OK\r\n");
    c.raw(&req(&["SET", "k", "v"]), b"$1\r\nk\r\n");
    // Private: refused without the password.
    c.raw(&req(&["NSSET", "ns1", "public", "0"]), b"+OK\r\n");
    let mut d = srv.client();
    d.raw(
        &req(&["SELECT", "ns1"]),
        b"-Namespace protected and private\r\n",
    );
    d.raw(
        &req(&["SELECT", "ns1", &"x".repeat(256)]),
        b"-Password too long\r\n",
    );
    // SECURE select with a one-shot nonce.
    d.raw(
        &req(&["SELECT", "ns1", "SECURE", &"0".repeat(40)]),
        b"-No CHALLENGE requested, secure authentication not available\r\n",
    );
    let Reply::Status(nonce) = d.cmd(&["AUTH", "SECURE", "CHALLENGE"]) else {
        panic!()
    };
    assert_eq!(nonce.len(), 16);
    d.raw(
        &req(&["SELECT", "ns1", "SECURE", "abc"]),
        b"-Invalid hash length\r\n",
    );
    let h = secure_digest(&nonce, "pw1");
    d.raw(&req(&["SELECT", "ns1", "SECURE", &h]), b"+OK\r\n");
    d.raw(&req(&["GET", "k"]), b"$1\r\nv\r\n");
    d.raw(&req(&["SELECT", "default"]), b"+OK\r\n");
    // Replaying the captured hash fails: the nonce was consumed (defect of the original fixed).
    d.raw(
        &req(&["SELECT", "ns1", "SECURE", &h]),
        b"-No CHALLENGE requested, secure authentication not available\r\n",
    );
    // NSINFO of a private namespace is not shown to a connection that has not selected it
    // when an admin password protects the server; without one everybody is admin.
    let Reply::Bulk(i) = d.cmd(&["NSINFO", "ns1"]) else {
        panic!()
    };
    let i = String::from_utf8_lossy(&i).into_owned();
    assert!(
        i.contains("public: no\n") && i.contains("password: yes\n"),
        "{i}"
    );
    // Worm.
    c.raw(&req(&["NSSET", "ns2", "worm", "1"]), b"+OK\r\n");
    c.raw(&req(&["SELECT", "ns2"]), b"+OK\r\n");
    c.raw(&req(&["SET", "w", "1"]), b"$1\r\nw\r\n");
    c.raw(
        &req(&["SET", "w", "1"]),
        b"-Namespace is protected by worm mode\r\n",
    );
    c.raw(
        &req(&["SET", "w", "2"]),
        b"-Namespace is protected by worm mode\r\n",
    );
    c.raw(
        &req(&["DEL", "w"]),
        b"-Cannot delete a key when namespace is in worm mode\r\n",
    );
    c.raw(&req(&["NSSET", "ns2", "worm", "yes"]), b"+OK\r\n");
    c.raw(&req(&["SET", "w", "2"]), b"$1\r\nw\r\n");
    // Maxsize: bytes, decimal. A suffix or a sign is refused (the original read "10G" as 10
    // bytes and "-1" as a huge limit), and the limit stays as it was.
    for bad in ["10G", "-1", "", "1e6", "12 MB"] {
        c.raw(
            &req(&["NSSET", "ns2", "maxsize", bad]),
            b"-Invalid property value (expected: bytes, decimal)\r\n",
        );
    }
    c.raw(&req(&["NSSET", "ns2", "maxsize", "10"]), b"+OK\r\n");
    c.raw(
        &req(&["SET", "big", "0123456789"]),
        b"-No space left on this namespace\r\n",
    );
    c.raw(&req(&["SET", "w", "012345678"]), b"$1\r\nw\r\n");
    let Reply::Bulk(i) = c.cmd(&["NSINFO", "ns2"]) else {
        panic!()
    };
    let i = String::from_utf8_lossy(&i).into_owned();
    assert!(
        i.contains("data_limits_bytes: 10\n") && i.contains("space_available: 1\n"),
        "{i}"
    );
    // Delete: not the current one, not default; other users are detached.
    c.raw(
        &req(&["NSDEL", "ns2"]),
        b"-Cannot remove namespace you're currently using.\r\n",
    );
    c.raw(
        &req(&["NSDEL", "default"]),
        b"-Cannot remove default namespace\r\n",
    );
    c.raw(
        &req(&["NSDEL", "nope"]),
        b"-This namespace doesn't exists\r\n",
    );
    let mut e = srv.client();
    e.raw(&req(&["SELECT", "ns2"]), b"+OK\r\n");
    d.raw(&req(&["NSDEL", "ns2"]), b"+OK\r\n");
    e.raw(
        &req(&["GET", "w"]),
        b"-Your active namespace is not available anymore (probably removed).\r\n",
    );
    e.expect_closed();
    c.raw(
        &req(&["GET", "w"]),
        b"-Your active namespace is not available anymore (probably removed).\r\n",
    );
    c.expect_closed();
    d.raw(&req(&["SELECT", "ns2"]), b"-Namespace not found\r\n");
}

#[test]
fn lock_freeze_and_flush() {
    let srv = TestServer::default();
    let mut c = srv.client();
    c.cmd(&["NSNEW", "x"]);
    c.cmd(&["SELECT", "x"]);
    c.cmd(&["SET", "k", "v"]);
    c.raw(&req(&["NSSET", "x", "lock", "1"]), b"+OK\r\n");
    c.raw(
        &req(&["SET", "k", "w"]),
        b"-Namespace is temporarily locked (read-only)\r\n",
    );
    c.raw(
        &req(&["DEL", "k"]),
        b"-Namespace is temporarily locked (read-only)\r\n",
    );
    c.raw(&req(&["GET", "k"]), b"$1\r\nv\r\n");
    c.raw(&req(&["NSSET", "x", "freeze", "1"]), b"+OK\r\n");
    let frozen = b"-Namespace is temporarily frozen (read-write disabled)\r\n";
    for cmd in [
        &["GET", "k"][..],
        &["SET", "k", "z"],
        &["EXISTS", "k"],
        &["SCAN"],
        &["HISTORY", "k"],
        &["MGET", "k"],
    ] {
        c.raw(&req(cmd), frozen);
    }
    c.raw(&req(&["DBSIZE"]), b":1\r\n");
    let Reply::Bulk(i) = c.cmd(&["NSINFO", "x"]) else {
        panic!()
    };
    assert!(String::from_utf8_lossy(&i).contains("locked: yes\n"));
    // `lock 0` also unfreezes.
    c.raw(&req(&["NSSET", "x", "lock", "0"]), b"+OK\r\n");
    c.raw(&req(&["SET", "k", "w"]), b"$1\r\nk\r\n");
    // FLUSH: public namespaces are refused; a private protected one is really emptied.
    c.raw(&req(&["FLUSH"]), b"-Flushing public namespace denied\r\n");
    c.cmd(&["NSSET", "x", "password", "pw"]);
    c.cmd(&["NSSET", "x", "public", "0"]);
    c.raw(&req(&["SELECT", "x", "pw"]), b"+OK\r\n");
    c.raw(&req(&["F"]), b"+OK\r\n");
    c.raw(&req(&["DBSIZE"]), b":0\r\n");
    c.raw(&req(&["GET", "k"]), b"$-1\r\n");
    c.raw(&req(&["SCAN"]), b"-No more data\r\n");
}

#[test]
fn admin_password_and_auth() {
    let srv = TestServer::start(admin_config("adminpw"));
    let mut c = srv.client();
    let denied = b"-Permission denied\r\n";
    for cmd in [
        &["NSNEW", "a"][..],
        &["NSDEL", "a"],
        &["NSSET", "a", "b", "c"],
        &["NSJUMP"],
        &["RELOAD", "default"],
        &["HOOKS"],
        &["INDEX", "DIRTY"],
        &["DATA", "RAW", "0", "0"],
        &["MIRROR"],
        &["MASTER"],
    ] {
        c.raw(&req(cmd), denied);
    }
    c.raw(&req(&["SET", "k", "v", "5"]), denied);
    c.raw(&req(&["DEL", "k", "5"]), denied);
    // Ordinary data commands need no AUTH.
    c.raw(&req(&["SET", "k", "v"]), b"$1\r\nk\r\n");
    c.raw(&req(&["AUTH", "nope"]), b"-Access denied\r\n");
    c.raw(&req(&["AUTH", &"x".repeat(129)]), b"-Password too long\r\n");
    c.raw(
        &req(&["AUTH", "PLAIN", "x"]),
        b"-Only SECURE extra method supported\r\n",
    );
    c.raw(
        &req(&["AUTH", "SECURE", &"0".repeat(40)]),
        b"-No CHALLENGE requested, secure authentication not available\r\n",
    );
    let Reply::Status(nonce) = c.cmd(&["AUTH", "SECURE", "CHALLENGE"]) else {
        panic!()
    };
    assert_eq!(nonce.len(), 16);
    assert!(nonce
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    c.raw(
        &req(&["AUTH", "SECURE", "short"]),
        b"-Invalid hash length\r\n",
    );
    c.raw(
        &req(&["AUTH", "SECURE", &secure_digest(&nonce, "wrong")]),
        b"-Access denied\r\n",
    );
    // The nonce was consumed by the wrong attempt.
    c.raw(
        &req(&["AUTH", "SECURE", &secure_digest(&nonce, "adminpw")]),
        b"-No CHALLENGE requested, secure authentication not available\r\n",
    );
    let Reply::Status(nonce) = c.cmd(&["AUTH", "sec", "challenge"]) else {
        panic!()
    };
    c.raw(
        &req(&["AUTH", "SECURE", &secure_digest(&nonce, "adminpw")]),
        b"+OK\r\n",
    );
    c.raw(&req(&["NSNEW", "a"]), b"+OK\r\n");
    let mut d = srv.client();
    d.raw(&req(&["AUTH", "adminpw"]), b"+OK\r\n");
    d.raw(&req(&["NSNEW", "b"]), b"+OK\r\n");
    d.raw(&req(&["SET", "t", "v", "123"]), b"$1\r\nt\r\n");
    // Private namespace details are not shown to non-admin clients that did not select it.
    d.cmd(&["NSSET", "b", "password", "p"]);
    d.cmd(&["NSSET", "b", "public", "0"]);
    let mut e = srv.client();
    e.raw(&req(&["NSINFO", "b"]), denied);
    e.raw(&req(&["SELECT", "b", "p"]), b"+OK\r\n");
    assert!(matches!(e.cmd(&["NSINFO", "b"]), Reply::Bulk(_)));
    // Paths only for admins.
    let Reply::Bulk(i) = d.cmd(&["NSINFO", "b"]) else {
        panic!()
    };
    assert!(String::from_utf8_lossy(&i).contains("data_path: "));
    let Reply::Bulk(i) = e.cmd(&["NSINFO", "b"]) else {
        panic!()
    };
    assert!(!String::from_utf8_lossy(&i).contains("data_path: "));
    let Reply::Bulk(info) = e.cmd(&["INFO"]) else {
        panic!()
    };
    let info = String::from_utf8_lossy(&info).into_owned();
    assert!(!info.contains("commands_unauthorized: 0\n"), "{info}");
    // Without --admin, AUTH is disabled.
    let open = TestServer::default();
    let mut o = open.client();
    o.raw(&req(&["AUTH", "x"]), b"-Authentication disabled\r\n");
    assert!(matches!(
        o.cmd(&["AUTH", "SECURE", "CHALLENGE"]),
        Reply::Status(_)
    ));
    o.raw(
        &req(&["AUTH", "SECURE", &"0".repeat(40)]),
        b"-Authentication disabled\r\n",
    );
}

#[test]
fn protect_mode() {
    let cfg = ServerConfig {
        admin_password: Some("pw".into()),
        protect: true,
        ..ServerConfig::default()
    };
    let srv = TestServer::start(cfg);
    let mut c = srv.client();
    c.raw(
        &req(&["SET", "k", "v"]),
        b"-Namespace is in read-only mode\r\n",
    );
    c.raw(&req(&["AUTH", "pw"]), b"+OK\r\n");
    c.raw(
        &req(&["SET", "k", "v"]),
        b"-Namespace is in read-only mode\r\n",
    );
    c.raw(&req(&["SELECT", "default", "bad"]), b"-Access denied\r\n");
    c.raw(&req(&["SELECT", "default", "pw"]), b"+OK\r\n");
    c.raw(&req(&["SET", "k", "v"]), b"$1\r\nk\r\n");
    let mut d = srv.client();
    d.raw(&req(&["GET", "k"]), b"$1\r\nv\r\n");
}

#[test]
fn malformed_frames_get_their_replies_and_others_keep_working() {
    let srv = TestServer::default();
    let mut other = srv.client();
    other.raw(&req(&["SET", "stay", "here"]), b"$4\r\nstay\r\n");
    let cases: &[(&[u8], &[u8], bool)] = &[
        (b"PING\r\n", b"-Malformed request, array expected\r\n", true),
        (b"*0\r\n", b"-Missing arguments\r\n", false),
        (b"*abc\r\n", b"-Missing arguments\r\n", false),
        (
            b"*2\r\n*1\r\n$1\r\na\r\n",
            b"-Malformed query string\r\n",
            true,
        ),
        (b"*1\r\n:5\r\n", b"-Malformed query string\r\n", true),
        (b"*1\r\n$8388609\r\n", b"-Payload too big\r\n", true),
        (b"*1\r\n$-1\r\n", b"-Malformed query string\r\n", true),
        (b"*1\n$4\nPING\n", b"-Malformed query string\r\n", true),
    ];
    for (input, reply, closes) in cases {
        let mut c = srv.client();
        c.raw(input, reply);
        if *closes {
            c.expect_closed();
        } else {
            c.raw(b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n");
        }
        other.raw(&req(&["GET", "stay"]), b"$4\r\nhere\r\n");
    }
    // More than 1024 elements.
    let mut c = srv.client();
    let mut many = b"*1025\r\n".to_vec();
    for _ in 0..1025 {
        many.extend_from_slice(b"$1\r\nx\r\n");
    }
    c.raw(&many, b"-Too many arguments\r\n");
    c.expect_closed();
    // Exactly 1024: fine (MGET of 1023 keys).
    let mut c = srv.client();
    let mut args = vec!["MGET"];
    args.extend(std::iter::repeat_n("nope", 1023));
    let Reply::Array(items) = c.cmd(&args) else {
        panic!()
    };
    assert_eq!(items.len(), 1023);
    // `$abc` is a zero-length argument, as in the original: an empty command name.
    c.raw(b"*1\r\n$abc\r\n\r\n", b"-This is not a valid command\r\n");
    // A request split across many reads, byte by byte.
    let wire = req(&["SET", "split", "across reads"]);
    for b in &wire {
        c.send_raw(&[*b]);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    c.expect_raw(b"$5\r\nsplit\r\n");
    other.raw(&req(&["GET", "split"]), b"$12\r\nacross reads\r\n");
}

#[test]
fn half_frame_then_silence_times_out() {
    let cfg = ServerConfig {
        partial_frame_timeout: std::time::Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let srv = TestServer::start(cfg);
    let mut c = srv.client();
    let mut idle = srv.client();
    c.send_raw(b"*2\r\n$3\r\nGET\r\n$10\r\nabc");
    c.expect_raw(b"-Timeout: incomplete request, connection closed\r\n");
    c.expect_closed();
    // An idle client with nothing buffered is kept.
    idle.raw(&req(&["PING"]), b"+PONG\r\n");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let srv = TestServer::default();
    let mut c = srv.client();
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..500 {
        let k = format!("p{i}");
        wire.extend(req(&["SET", &k, &format!("v{i}")]));
        expected.extend(format!("${}\r\n{k}\r\n", k.len()).into_bytes());
        wire.extend(req(&["GET", &k]));
        let v = format!("v{i}");
        expected.extend(format!("${}\r\n{v}\r\n", v.len()).into_bytes());
    }
    c.raw(&wire, &expected);
}

#[test]
fn wait_notifications() {
    let srv = TestServer::default();
    let mut w = srv.client();
    let mut s = srv.client();
    w.raw(&req(&["WAIT"]), b"-Invalid arguments\r\n");
    w.raw(&req(&["WAIT", "NOPE"]), b"-Unknown command to watch\r\n");
    w.raw(&req(&["WAIT", "SET", "50"]), b"-Invalid timeout\r\n");
    w.raw(&req(&["WAIT", "SET", "1800001"]), b"-Invalid timeout\r\n");
    w.send_raw(&req(&["WAIT", "SET", "5000"]));
    // The waiting connection keeps working meanwhile.
    w.raw(&req(&["PING"]), b"+PONG\r\n");
    std::thread::sleep(std::time::Duration::from_millis(50));
    s.raw(&req(&["SETX", "a", "1"]), b"$1\r\na\r\n");
    s.raw(&req(&["SET", "a", "2"]), b"$1\r\na\r\n");
    w.expect_raw(b"+SET\r\n");
    w.send_raw(&req(&["WAIT", "*", "200"]));
    w.expect_raw(b"-Timeout\r\n");
    w.send_raw(&req(&["WAIT", "*"]));
    std::thread::sleep(std::time::Duration::from_millis(50));
    s.cmd(&["GET", "a"]);
    w.expect_raw(b"+GET\r\n");
}

#[test]
fn admin_low_level_commands() {
    let srv = TestServer::default();
    let mut c = srv.client();
    c.cmd(&["SET", "k", "v"]);
    c.raw(&req(&["INDEX"]), b"-Missing arguments\r\n");
    c.raw(&req(&["INDEX", "NOPE"]), b"-Unknown INDEX subcommand\r\n");
    c.raw(&req(&["INDEX", "DIRTY"]), b"*0\r\n");
    c.raw(&req(&["INDEX", "dirty", "reset"]), b"+OK\r\n");
    c.raw(
        &req(&["INDEX", "DIRTY", "X"]),
        b"-Unknown INDEX DIRTY subcommand\r\n",
    );
    c.raw(&req(&["DATA"]), b"-Missing arguments\r\n");
    c.raw(&req(&["DATA", "X"]), b"-Unknown DATA subcommand\r\n");
    c.raw(&req(&["DATA", "RAW", "0", "999999999"]), b"-EOF\r\n");
    c.raw(&req(&["NSJUMP"]), b"+OK\r\n");
    c.raw(&req(&["RELOAD", "nope"]), b"-Namespace not found\r\n");
    c.raw(&req(&["RELOAD", "default"]), b"+OK\r\n");
    c.raw(&req(&["GET", "k"]), b"$1\r\nv\r\n");
    c.raw(&req(&["HOOKS"]), b"*0\r\n");
    c.raw(&req(&["MASTER"]), b"+Hello, master\r\n");
    // On a master connection the last argument is an origin id.
    c.raw(&req(&["GET", "k", "origin-7"]), b"$1\r\nv\r\n");
    let mut m = srv.client();
    m.raw(&req(&["MIRROR"]), b"+Starting mirroring\r\n");
    let mut x = srv.client();
    x.raw(&req(&["SET", "mk", "mv"]), b"$2\r\nmk\r\n");
    let Reply::Array(frame) = m.read_reply() else {
        panic!("mirror frame")
    };
    assert_eq!(frame.len(), 6);
    assert_eq!(frame[1], bulk("default"));
    assert_eq!(&frame[3..], &[bulk("SET"), bulk("mk"), bulk("mv")]);
}

#[test]
fn data_raw_returns_entries_and_tombstones() {
    let srv = TestServer::default();
    let mut c = srv.client();
    c.cmd(&["SET", "k", "value"]);
    c.cmd(&["DEL", "k"]);
    let Reply::Bulk(info) = c.cmd(&["NSINFO", "default"]) else {
        panic!()
    };
    let info = String::from_utf8_lossy(&info).into_owned();
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} missing: {info}"))
            .to_string()
    };
    let (seg, end) = (field("data_current_id: "), field("data_current_offset: "));
    assert!(end.parse::<u64>().unwrap() > 0, "{info}");
    // The append position is the end: DATA RAW there answers EOF.
    c.raw(&req(&["DATA", "RAW", &seg, &end]), b"-EOF\r\n");
    // Walk segment 0 from its first record.
    let mut found = vec![];
    for off in 0..4096u64 {
        if let Reply::Array(e) = c.cmd(&["DATA", "RAW", "0", &off.to_string()]) {
            assert_eq!(e.len(), 6);
            found.push(e);
            if found.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(found.len(), 2, "expected the value and its tombstone");
    assert_eq!(found[0][0], bulk("k"));
    assert_eq!(found[0][5], bulk("value"));
    assert_eq!(found[1][3], Reply::Int(1), "tombstone flag");
    assert_eq!(found[1][5], Reply::Nil);
}

#[test]
fn connection_limit_gives_a_clear_error() {
    let cfg = ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    };
    let srv = TestServer::start(cfg);
    let mut a = srv.client();
    let mut b = srv.client();
    a.raw(&req(&["PING"]), b"+PONG\r\n");
    b.raw(&req(&["PING"]), b"+PONG\r\n");
    let mut c = srv.client();
    c.expect_raw(b"-Too many connections\r\n");
    c.expect_closed();
    drop(a);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut d = srv.client();
    d.raw(&req(&["PING"]), b"+PONG\r\n");
    b.raw(&req(&["PING"]), b"+PONG\r\n");
}

#[test]
fn unix_socket_and_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("zdb.sock");
    std::fs::write(&sock, b"stale").unwrap();
    let cfg = ServerConfig {
        tcp: None,
        socket: Some(sock.clone()),
        ..ServerConfig::default()
    };
    let mut srv = TestServer::start(cfg);
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(&req(&["SET", "u", "x"])).unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"$1\r\nu\r\n");
    srv.stop();
    let mut rest = vec![];
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(!sock.exists());
    use qsfs_core::Store;
    assert_eq!(
        srv.engine.get("default", b"u").unwrap().unwrap().value,
        b"x"
    );
}

#[test]
fn strict_commands_option() {
    let cfg = ServerConfig {
        strict_commands: true,
        ..ServerConfig::default()
    };
    let srv = TestServer::start(cfg);
    let mut c = srv.client();
    c.raw(&req(&["N", "x"]), b"-Command not supported\r\n");
    c.raw(&req(&["nsnew", "x"]), b"+OK\r\n");
}

#[test]
fn rotate_option_seals_changed_namespaces() {
    let cfg = ServerConfig {
        rotate_every: Some(std::time::Duration::from_millis(200)),
        ..ServerConfig::default()
    };
    let srv = TestServer::start(cfg);
    let mut c = srv.client();
    let current = |c: &mut Client| -> String {
        let Reply::Bulk(i) = c.cmd(&["NSINFO", "default"]) else {
            panic!()
        };
        let i = String::from_utf8_lossy(&i).into_owned();
        i.lines()
            .find(|l| l.starts_with("data_current_id: "))
            .unwrap()
            .to_string()
    };
    let before = current(&mut c);
    // Nothing written: no rotation.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(current(&mut c), before);
    c.cmd(&["SET", "k", "v"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while current(&mut c) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no rotation after a write"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    c.raw(&req(&["GET", "k"]), b"$1\r\nv\r\n");
}

/// qsfs's documented ekey contract: `segment << 32 | offset` (little-endian), readable with
/// `DATA RAW`, so a client can tell a tombstone in a history chain.
#[test]
fn history_ekeys_name_data_raw_records() {
    let srv = TestServer::default();
    let mut c = srv.client();
    c.cmd(&["SET", "k", "v1"]);
    c.cmd(&["DEL", "k"]);
    c.cmd(&["SET", "k", "v2"]);
    let Reply::Array(h) = c.cmd(&["HISTORY", "k"]) else {
        panic!()
    };
    let Reply::Bulk(tomb) = h[0].clone() else {
        panic!("the tombstone is in the chain")
    };
    let loc = u64::from_le_bytes(tomb[..].try_into().unwrap());
    let (seg, off) = ((loc >> 32).to_string(), (loc & 0xffff_ffff).to_string());
    let Reply::Array(raw) = c.cmd(&["DATA", "RAW", &seg, &off]) else {
        panic!()
    };
    assert_eq!(
        (raw[0].clone(), raw[3].clone(), raw[5].clone()),
        (bulk("k"), Reply::Int(1), Reply::Nil)
    );
    let Reply::Array(t) = c.cmd(&[b"HISTORY".as_slice(), b"k", &tomb[..]]) else {
        panic!()
    };
    assert_eq!(t[2], bulk(""));
    let Reply::Bulk(first) = t[0].clone() else {
        panic!()
    };
    let loc = u64::from_le_bytes(first[..].try_into().unwrap());
    let (seg, off) = ((loc >> 32).to_string(), (loc & 0xffff_ffff).to_string());
    let Reply::Array(raw) = c.cmd(&["DATA", "RAW", &seg, &off]) else {
        panic!()
    };
    assert_eq!(
        (raw[3].clone(), raw[5].clone()),
        (Reply::Int(0), bulk("v1"))
    );
}

#[test]
fn pipelined_set_get_del_of_the_same_keys_across_read_and_batch_boundaries() {
    // About 2.6 MiB in one burst: more than one read of the server (256 KiB) and than one
    // engine batch (1 MiB), so runs of plain SETs are cut at read boundaries, flushed in the
    // middle of a batch, and interleaved with GETs and DELs of the same five keys; SETs of a
    // key already in the batch and SETs of an identical value (nil) are in it too.
    let srv = TestServer::default();
    let mut c = srv.client();
    let mut model: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..900usize {
        let k = format!("k{}", i % 5);
        let v = vec![b'a' + ((i / 10) % 26) as u8; 4000 + i % 3];
        match i % 7 {
            4 => {
                wire.extend(req(&["GET", &k]));
                match model.get(&k) {
                    Some(v) => {
                        expected.extend(format!("${}\r\n", v.len()).into_bytes());
                        expected.extend(v);
                        expected.extend(b"\r\n");
                    }
                    None => expected.extend(b"$-1\r\n"),
                }
            }
            5 => {
                wire.extend(req(&["DEL", &k]));
                match model.remove(&k) {
                    Some(_) => expected.extend(b"+OK\r\n"),
                    None => expected.extend(b"-Key not found\r\n"),
                }
            }
            _ => {
                wire.extend(req(&[&b"SET"[..], k.as_bytes(), &v]));
                if model.get(&k) == Some(&v) {
                    expected.extend(b"$-1\r\n");
                } else {
                    expected.extend(format!("${}\r\n{k}\r\n", k.len()).into_bytes());
                    model.insert(k, v);
                }
            }
        }
    }
    assert!(wire.len() > 2 << 20);
    assert!(expected.windows(5).any(|w| w == b"$-1\r\n"));
    // Written from another thread: the replies (GETs of 4 KiB values) fill the socket buffers
    // long before the requests are all sent.
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut w, &wire).unwrap());
    c.expect_raw(&expected);
    writer.join().unwrap();
    for (k, v) in &model {
        assert_eq!(c.cmd(&["GET", k]), bulk(v));
    }
}

#[test]
fn shutdown_ends_the_connections_of_every_worker_thread() {
    // Connections go round-robin to the worker threads: with 3 workers and 9 clients every
    // worker serves some, and a stop must end all of them, keep every acknowledged SET, and
    // return (the workers' loops end once their last connection has).
    let cfg = ServerConfig {
        workers: 3,
        ..ServerConfig::default()
    };
    let mut srv = TestServer::start(cfg);
    let mut clients: Vec<Client> = (0..9).map(|_| srv.client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let k = format!("w{i}");
        c.raw(&req(&["SET", &k, "v"]), format!("$2\r\n{k}\r\n").as_bytes());
    }
    // An idle connection, and one with half a request buffered.
    let mut idle = srv.client();
    idle.raw(&req(&["PING"]), b"+PONG\r\n");
    clients[0].send_raw(b"*2\r\n$3\r\nGET\r\n$2\r\nw");
    srv.stop();
    for c in clients.iter_mut().chain([&mut idle]) {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c.s, &mut rest);
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
    use qsfs_core::Store;
    for i in 0..9 {
        let k = format!("w{i}");
        assert_eq!(
            srv.engine
                .get("default", k.as_bytes())
                .unwrap()
                .unwrap()
                .value,
            b"v"
        );
    }
}

/// Damage the engine found in a namespace's data shows in NSINFO `stats_data_faults` (it was
/// always 0), and the key whose newest record is damaged answers an error, not its older value.
#[test]
fn nsinfo_counts_the_damage_found_in_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    {
        use qsfs_core::Store;
        let e = qsfs_store::Engine::open(&root, qsfs_store::EngineConfig::default()).unwrap();
        e.set("default", Some(b"acct"), b"balance=100-OLD").unwrap();
        e.set("default", Some(b"filler"), b"some other value")
            .unwrap();
        e.set("default", Some(b"acct"), b"balance=999-NEW").unwrap();
        e.set("default", Some(b"filler2"), b"one more value")
            .unwrap();
    }
    let seg = root.join("ns/default/0000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes
        .windows(15)
        .position(|w| w == b"balance=999-NEW")
        .unwrap();
    bytes[at - 4 - 64 + 30] ^= 0x20; // a header byte of the newest `acct`
    std::fs::write(&seg, &bytes).unwrap();
    let _ = std::fs::remove_file(root.join("ns/default/index"));
    let server = TestServer::start_at(
        &root,
        dir,
        ServerConfig::default(),
        qsfs_store::EngineConfig::default(),
    );
    let mut c = server.client();
    let Reply::Bulk(info) = c.cmd(&["NSINFO", "default"]) else {
        panic!("NSINFO")
    };
    let info = String::from_utf8(info.to_vec()).unwrap();
    assert!(info.contains("stats_data_faults: 1\n"), "{info}");
    assert!(
        matches!(c.cmd(&["GET", "acct"]), Reply::Error(_)),
        "the damaged newest version is an error"
    );
    assert_eq!(
        c.cmd(&["GET", "filler2"]),
        Reply::Bulk(bytes::Bytes::from_static(b"one more value"))
    );
}
