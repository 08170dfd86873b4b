//! SETs of many connections written together (group commit): many clients interleave SET, GET
//! and DEL on their own keys and on keys they share, unpipelined and in pipelined bursts, and
//! every reply is checked against a model: a SET answers its own key (never another client's),
//! a client reads its own writes in order, and nothing acknowledged is missing at the end.

#![allow(clippy::unwrap_used)]

use crate::server_util;

use std::collections::HashMap;

use qsfs_store::server::resp::Reply;
use qsfs_store::server::ServerConfig;
use server_util::*;

const CLIENTS: usize = 48;
const ROUNDS: u64 = 150;
const SHARED: u64 = 4;

/// A value of `key` written by client `t` in round `i`; sizes up to 5 KiB.
fn value(key: &str, t: usize, i: u64) -> String {
    format!(
        "{key}|{t}|{i}|{}",
        "v".repeat(((i * 37 + t as u64) % 6) as usize * 1000)
    )
}

/// True if `got` is nil or a value some client could have written to `key`.
fn plausible(key: &str, got: &Reply) -> bool {
    match got {
        Reply::Nil => true,
        Reply::Bulk(v) => v.starts_with(format!("{key}|").as_bytes()),
        _ => false,
    }
}

#[test]
fn many_clients_interleaving_set_get_del_match_the_model() {
    let srv = TestServer::start(ServerConfig::default());
    let addr = srv.addr;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut mine: HashMap<String, String> = HashMap::new();
                for i in 0..ROUNDS {
                    let key = format!("c{t}-k{}", i % 5);
                    let shared = format!("s{}", (i + t as u64) % SHARED);
                    match i % 6 {
                        // A pipelined burst: two SETs of its own key, a SET of a shared key and
                        // a GET of its own key, in one write; the GET must see the second SET.
                        0 => {
                            let (v1, v2) = (value(&key, t, i), value(&key, t, i + 1000));
                            let vs = value(&shared, t, i);
                            let mut wire = req(&["SET", &key, &v1]);
                            wire.extend(req(&["SET", &key, &v2]));
                            wire.extend(req(&["SET", &shared, &vs]));
                            wire.extend(req(&["GET", &key]));
                            c.send_raw(&wire);
                            assert_eq!(c.read_reply(), bulk(&key), "SET {key}");
                            assert_eq!(c.read_reply(), bulk(&key), "SET {key}");
                            let r = c.read_reply();
                            assert!(r == bulk(&shared) || r == Reply::Nil, "SET {shared}: {r:?}");
                            assert_eq!(c.read_reply(), bulk(&v2), "GET {key} after its SET");
                            mine.insert(key, v2);
                        }
                        // Unpipelined: these are the SETs that other connections' join.
                        1 | 2 => {
                            let v = value(&key, t, i);
                            let expect = if mine.get(&key) == Some(&v) {
                                Reply::Nil
                            } else {
                                bulk(&key)
                            };
                            assert_eq!(c.cmd(&["SET", &key, &v]), expect, "SET {key}");
                            mine.insert(key.clone(), v);
                            let got = c.cmd(&["GET", &key]);
                            assert_eq!(got, bulk(&mine[&key]), "GET {key} after its SET");
                        }
                        3 => {
                            let expect = if mine.remove(&key).is_some() {
                                ok()
                            } else {
                                err("Key not found")
                            };
                            assert_eq!(c.cmd(&["DEL", &key]), expect, "DEL {key}");
                            assert_eq!(c.cmd(&["GET", &key]), Reply::Nil, "GET {key} after DEL");
                        }
                        4 => {
                            let v = value(&shared, t, i);
                            let r = c.cmd(&["SET", &shared, &v]);
                            assert!(r == bulk(&shared) || r == Reply::Nil, "SET {shared}: {r:?}");
                            let got = c.cmd(&["GET", &shared]);
                            assert!(plausible(&shared, &got), "GET {shared}: {got:?}");
                        }
                        _ => {
                            // DEL of a shared key races the others: either answer is right.
                            let r = c.cmd(&["DEL", &shared]);
                            assert!(
                                r == ok() || r == err("Key not found"),
                                "DEL {shared}: {r:?}"
                            );
                            let got = c.cmd(&["GET", &shared]);
                            assert!(plausible(&shared, &got), "GET {shared}: {got:?}");
                        }
                    }
                }
                mine
            })
        })
        .collect();
    let models: Vec<HashMap<String, String>> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let mut c = srv.client();
    let mut live = 0;
    for (t, mine) in models.iter().enumerate() {
        for k in 0..5 {
            let key = format!("c{t}-k{k}");
            let want = mine.get(&key).map_or(Reply::Nil, bulk);
            assert_eq!(c.cmd(&["GET", &key]), want, "final GET {key}");
        }
        live += mine.len();
    }
    for s in 0..SHARED {
        let key = format!("s{s}");
        let got = c.cmd(&["GET", &key]);
        assert!(plausible(&key, &got), "final GET {key}: {got:?}");
        if got != Reply::Nil {
            live += 1;
        }
    }
    assert_eq!(c.cmd(&["DBSIZE"]), Reply::Int(live as i64));
}
