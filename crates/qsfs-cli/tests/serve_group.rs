//! `qsfs serve` killed with SIGKILL while many unpipelined clients SET at once, so their SETs
//! are written together (group commit): after a restart every acknowledged SET is there, under
//! the default durability and under `--sync`. A binary of its own: its connection floods must
//! not meet another test's servers.

#![allow(clippy::unwrap_used)]

mod common;
use common::free_port;
use common::serve::{assert_all_acknowledged, reply, req, start, Serve};
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 24;

/// The two cases run one after the other: each floods the loopback with connections, and a
/// refused connection must mean something about the server under test, not its neighbour.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Starts `qsfs serve` on a free port and checks that the process answering there is this
/// one: it is still running once the port accepts connections (had another process taken the
/// port first, this one would have exited and the probe reached the other).
fn start_checked(data: &Path, extra: &[&str]) -> (Serve, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = start(data, port, extra);
        std::thread::sleep(Duration::from_millis(50));
        if child.try_wait().unwrap().is_none() {
            return (child, port);
        }
    }
    panic!("qsfs serve exited right after it started, five times");
}

/// A connection to `child` on `port`. A refusal while the server still runs is retried for a
/// while; a server that exited is a failure of the test.
fn connect_to(child: &mut Serve, port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.set_nodelay(true).unwrap();
                let r = BufReader::new(s.try_clone().unwrap());
                return (s, r);
            }
            Err(e) => {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("qsfs serve exited ({status}) under the load: {e}");
                }
                assert!(Instant::now() < deadline, "connect to qsfs serve: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn kill_9_during_unpipelined_sets_of_many_clients(extra: &[&str]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = start_checked(dir.path(), extra);
    let count = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let count = count.clone();
            // Connected before any client starts: a thread scheduled late on a busy machine
            // would otherwise connect after the kill and find no server.
            let (mut s, mut r) = connect_to(&mut child, port);
            std::thread::spawn(move || {
                let mut acked: Vec<(String, String)> = Vec::new();
                for i in 0u64.. {
                    let k = format!("c{t}-{i}");
                    let v = format!("{k}-{}", "x".repeat((i % 9) as usize * 500));
                    if s.write_all(&req(&[b"SET", k.as_bytes(), v.as_bytes()]))
                        .is_err()
                    {
                        break;
                    }
                    match reply(&mut r) {
                        Ok(Some(got)) if got == k => {
                            acked.push((k, v));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(other) => panic!("unexpected SET reply {other:?}"),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    // Killed in full swing: once a few hundred SETs are acknowledged (an fsync can take long
    // on a busy machine), or after a while anyway.
    let deadline = Instant::now() + Duration::from_secs(15);
    while count.load(Ordering::Relaxed) < 400 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.0.kill().unwrap(); // SIGKILL
    let _ = child.0.wait();
    let acked: Vec<(String, String)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        acked.len() > 200,
        "the load did not get going: {}",
        acked.len()
    );
    let (mut child, port) = start_checked(dir.path(), extra);
    let (mut s, mut r) = connect_to(&mut child, port);
    assert_all_acknowledged(&mut s, &mut r, &acked);
}

#[test]
fn kill_9_during_grouped_sets_loses_no_acknowledged_set() {
    kill_9_during_unpipelined_sets_of_many_clients(&[]);
}

#[test]
fn kill_9_during_grouped_sets_with_sync_loses_no_acknowledged_set() {
    kill_9_during_unpipelined_sets_of_many_clients(&["--sync"]);
}
