//! Idle clients cost (almost) nothing: connections that moved a large value once and then sit
//! idle keep no buffers, and the server keeps answering. A binary of its own: it measures the
//! memory of its whole process.

#![allow(clippy::unwrap_used)]

#[path = "it/server_util/mod.rs"]
mod server_util;

use qsfs_store::server::ServerConfig;
use server_util::*;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn idle_connections_hold_no_buffers() {
    let srv = TestServer::start(ServerConfig::default());
    // Warm up the runtime, allocator and engine.
    let warm: Vec<Client> = (0..50)
        .map(|_| {
            let mut c = srv.client();
            c.raw(&req(&["PING"]), b"+PONG\r\n");
            c
        })
        .collect();
    drop(warm);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = rss_kib();
    let n: u64 = 100;
    // Plain sockets on the client side, so only the server's memory is measured.
    let idle: Vec<std::net::TcpStream> = (0..n)
        .map(|i| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
            // Each connection moved a 1 MiB value in and out once.
            let (k, v) = (format!("k{i}"), "x".repeat(1024 * 1024));
            s.write_all(&req(&["SET", &k, &v])).unwrap();
            s.write_all(&req(&["GET", &k])).unwrap();
            let want = format!("${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len());
            let mut got = vec![0u8; want.len()];
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, want.as_bytes());
            s
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let grown = rss_kib().saturating_sub(before);
    // Buffers kept after use would be 2 MiB per connection (200 MiB); a parked task and its
    // session are a few KiB (the rest is allocator slack).
    assert!(
        grown < n * 512,
        "{n} idle connections grew RSS by {grown} KiB"
    );
    let mut fresh = srv.client();
    fresh.raw(&req(&["DBSIZE"]), format!(":{n}\r\n").as_bytes());
    drop(idle);
}
