//! 200 concurrent clients doing mixed SET/GET/SCAN for a bounded time against one server: no
//! error, every value read back equals what was written.

#![allow(clippy::unwrap_used)]

use crate::server_util;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use qsfs_store::server::resp::Reply;
use qsfs_store::server::ServerConfig;
use server_util::*;

#[test]
fn two_hundred_clients_mixed_load() {
    let srv = TestServer::start(ServerConfig::default());
    let addr = srv.addr;
    let deadline = Instant::now() + Duration::from_secs(4);
    let threads: Vec<_> = (0..200)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut mine: HashMap<String, String> = HashMap::new();
                let mut ops = 0u64;
                let mut i = 0u64;
                // Every client does at least 20 rounds, then goes on until the deadline.
                while ops < 60 || (Instant::now() < deadline && ops < 3000) {
                    let key = format!("c{t}-k{}", i % 40);
                    let value = format!("value {t} {i} {}", "x".repeat((i % 7) as usize * 100));
                    match c.cmd(&["SET", &key, &value]) {
                        Reply::Bulk(k) => assert_eq!(&k[..], key.as_bytes()),
                        Reply::Nil => {}
                        other => panic!("SET {key}: {other:?}"),
                    }
                    mine.insert(key.clone(), value);
                    let probe = format!("c{t}-k{}", (i * 7) % 40);
                    let got = c.cmd(&["GET", &probe]);
                    match mine.get(&probe) {
                        Some(v) => assert_eq!(got, bulk(v), "GET {probe}"),
                        None => assert_eq!(got, Reply::Nil, "GET {probe}"),
                    }
                    if i % 10 == 0 {
                        match c.cmd(&["SCAN"]) {
                            Reply::Array(p) => assert_eq!(p.len(), 2),
                            other => panic!("SCAN: {other:?}"),
                        }
                    }
                    ops += 3;
                    i += 1;
                }
                // Read everything back at the end.
                for (k, v) in &mine {
                    assert_eq!(c.cmd(&["GET", k]), bulk(v), "final GET {k}");
                }
                mine.len()
            })
        })
        .collect();
    let total: usize = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .sum();
    assert_eq!(total, 200 * 40);
    let mut c = srv.client();
    assert_eq!(c.cmd(&["DBSIZE"]), Reply::Int(8000));
}
