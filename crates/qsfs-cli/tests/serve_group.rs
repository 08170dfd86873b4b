//! `qsfs serve` killed with SIGKILL while many unpipelined clients SET at once, so their SETs
//! are written together (group commit): after a restart every acknowledged SET is there, under
//! the default durability and under `--sync`.

#![allow(clippy::unwrap_used)]

mod common;
use common::free_port;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qsfs");
const CLIENTS: usize = 24;

/// A running `qsfs serve`, killed when dropped so a failing test leaves no process behind.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data: &Path, port: u16, extra: &[&str]) -> Serve {
    let child = Command::new(BIN)
        .args(["serve", "--port", &port.to_string(), "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qsfs serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "qsfs serve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Serve(child)
}

fn req(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).into_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One status, error or bulk reply as text; `None` for nil.
fn reply(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end().to_string();
    if let Some(n) = line.strip_prefix('$') {
        let n: i64 = n.parse().unwrap();
        if n < 0 {
            return Ok(None);
        }
        let mut b = vec![0u8; n as usize + 2];
        r.read_exact(&mut b)?;
        b.truncate(n as usize);
        return Ok(Some(String::from_utf8_lossy(&b).into_owned()));
    }
    Ok(Some(line))
}

fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn kill_9_during_unpipelined_sets_of_many_clients(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start(dir.path(), port, extra);
    let count = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let count = count.clone();
            // Connected before any client starts: a thread scheduled late on a busy machine
            // would otherwise connect after the kill and find no server.
            let (mut s, mut r) = connect(port);
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
    let _child = start(dir.path(), port, extra);
    let (mut s, mut r) = connect(port);
    for chunk in acked.chunks(500) {
        let mut wire = Vec::new();
        for (k, _) in chunk {
            wire.extend(req(&[b"GET", k.as_bytes()]));
        }
        s.write_all(&wire).unwrap();
        for (k, v) in chunk {
            let got = reply(&mut r).unwrap();
            assert_eq!(
                got.as_deref(),
                Some(v.as_str()),
                "acknowledged SET of {k} lost"
            );
        }
    }
}

#[test]
fn kill_9_during_grouped_sets_loses_no_acknowledged_set() {
    kill_9_during_unpipelined_sets_of_many_clients(&[]);
}

#[test]
fn kill_9_during_grouped_sets_with_sync_loses_no_acknowledged_set() {
    kill_9_during_unpipelined_sets_of_many_clients(&["--sync"]);
}
