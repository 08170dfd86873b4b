//! The protocol scenarios through the real `redis-cli`, and a `redis-benchmark` smoke run.

#![allow(clippy::unwrap_used)]

use crate::server_util;

use std::process::Command;

use qsfs_store::server::ServerConfig;
use server_util::*;

fn cli(srv: &TestServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &srv.addr.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed (package redis-tools)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// Several commands on one connection (redis-cli reads them from stdin).
fn session(srv: &TestServer, script: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &srv.addr.port().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn redis_cli_scenarios() {
    let srv = TestServer::start(ServerConfig::default());
    assert_eq!(cli(&srv, &["PING"]), "PONG");
    assert_eq!(cli(&srv, &["SET", "hello", "world"]), "hello");
    assert_eq!(cli(&srv, &["SET", "hello", "world"]), "");
    assert_eq!(cli(&srv, &["GET", "hello"]), "world");
    assert_eq!(cli(&srv, &["GET", "nope"]), "");
    assert_eq!(cli(&srv, &["EXISTS", "hello"]), "1");
    assert_eq!(cli(&srv, &["LENGTH", "hello"]), "5");
    assert_eq!(cli(&srv, &["DBSIZE"]), "1");
    assert_eq!(cli(&srv, &["CHECK", "hello"]), "1");
    assert_eq!(cli(&srv, &["MGET", "hello", "nope"]), "world");
    assert_eq!(cli(&srv, &["DEL", "hello"]), "OK");
    assert_eq!(cli(&srv, &["DEL", "hello"]), "Key not found");
    assert_eq!(cli(&srv, &["MULTI"]), "Command not supported");
    assert_eq!(cli(&srv, &["STOP"]), "Unauthorized");
    assert_eq!(cli(&srv, &["NSNEW", "ns1"]), "OK");
    assert_eq!(
        cli(&srv, &["NSNEW", "ns1"]),
        "This namespace is not available"
    );
    assert_eq!(cli(&srv, &["NSLIST"]), "default\nns1");
    assert_eq!(cli(&srv, &["SELECT", "1"]), "Namespace not found");
    let info = cli(&srv, &["NSINFO", "ns1"]);
    assert!(
        info.contains("name: ns1") && info.contains("mode: userkey"),
        "{info}"
    );
    assert!(cli(&srv, &["INFO"]).contains("server_name: 0-db (zdb)"));
    let time = cli(&srv, &["TIME"]);
    assert_eq!(time.lines().count(), 2, "{time}");
    // A session: select, write, scan, history.
    let out = session(
        &srv,
        "SELECT ns1\nSET a 1\nSET b 2\nSET a 3\nDBSIZE\nSCAN\nHISTORY a\nNSSET ns1 password pw\nSELECT ns1\nSET c 1\n",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..5], &["OK", "a", "b", "a", "2"], "{out}");
    assert!(out.contains("Namespace is in read-only mode"), "{out}");
    assert_eq!(cli(&srv, &["NSDEL", "ns1"]), "OK");
    assert_eq!(
        cli(&srv, &["NSDEL", "ns1"]),
        "This namespace doesn't exists"
    );
}

#[test]
fn redis_benchmark_smoke() {
    let srv = TestServer::start(ServerConfig::default());
    let port = srv.addr.port().to_string();
    for pipeline in ["1", "16"] {
        let out = Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "set,get",
                "-n",
                "2000",
                "-c",
                "10",
            ])
            .args(["-r", "1000", "-d", "512", "-P", pipeline, "-q"])
            .output()
            .expect("redis-benchmark must be installed (package redis-tools)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("SET:") && text.contains("GET:"), "{text}");
    }
    // The data written is really there.
    let mut c = srv.client();
    match c.cmd(&["DBSIZE"]) {
        qsfs_store::server::resp::Reply::Int(n) => assert!(n > 100 && n <= 1000, "{n}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn redis_cli_admin_namespaces_and_errors() {
    let cfg = ServerConfig {
        admin_password: Some("adm".into()),
        ..ServerConfig::default()
    };
    let srv = TestServer::start(cfg);
    assert_eq!(cli(&srv, &["NSNEW", "x"]), "Permission denied");
    assert_eq!(cli(&srv, &["AUTH", "bad"]), "Access denied");
    let out = session(
        &srv,
        "AUTH adm\nNSNEW x\nNSSET x password pw\nNSSET x public 0\nNSSET x worm 1\nNSSET x mode seq\n\
         SELECT x pw\nSET \"\" first\nSET \"\" second\nDBSIZE\nDEL \"\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\"\n\
         NSSET x lock 1\nSET \"\" third\nNSSET x freeze 1\nGET \"\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\"\n\
         NSSET x lock 0\nFLUSH\nDBSIZE\nSTOP\nKSCAN a\nNSDEL x\nSELECT default\nNSDEL x\n",
    );
    let lines: Vec<&str> = out.lines().collect();
    let want = [
        "OK",
        "OK",
        "OK",
        "OK",
        "OK",
        "OK",
        "OK",
        "\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}",
        "\u{1}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}",
        "2",
        "Cannot delete a key when namespace is in worm mode",
        "OK",
        "Namespace is temporarily locked (read-only)",
        "OK",
        "Namespace is temporarily frozen (read-write disabled)",
        "OK",
        "OK",
        "0",
        "Unauthorized",
        "Command disabled in release code, not yet available",
        "Cannot remove namespace you're currently using.",
        "OK",
        "OK",
    ];
    let got: Vec<&str> = lines.iter().copied().filter(|l| !l.is_empty()).collect();
    assert_eq!(got, want, "{out}");
}
