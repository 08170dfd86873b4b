//! Crash test: a child process (this test binary, re-invoked with `QSFS_CRASH_CHILD`) writes,
//! updates and deletes keys and prints every acknowledged operation; the parent kills it with
//! SIGKILL at a random moment, reopens the engine, and checks that every acknowledged operation
//! is there, that the one in flight is either fully there or not at all, and that nothing
//! corrupt is served. The same directory is used for every round, so each round also recovers
//! the previous crash. Sealing and compaction run inside the child, so kills land in them too.
//!
//! Runs without the libtest harness (`harness = false`): `main` is the parent, or the child when
//! the environment variable is set.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use qsfs_core::Store;
use qsfs_store::{Durability, Engine, EngineConfig};
use rand::{Rng, SeedableRng};

const ROUNDS: u32 = 60;
const KEYS_PER_ROUND: u64 = 40;

fn config(round: u32) -> EngineConfig {
    let durability = match round % 4 {
        0 => Durability::None,
        1 => Durability::Periodic(Duration::from_millis(5)),
        2 => Durability::Group,
        _ => Durability::EveryWrite,
    };
    EngineConfig {
        durability,
        max_segment_size: 64 * 1024,
        ..EngineConfig::default()
    }
}

/// What operation `i` of round `round` does: the key and the value (`None` = delete).
fn operation(round: u32, i: u64) -> (Vec<u8>, Option<Vec<u8>>) {
    let key = format!("r{round}-k{}", i % KEYS_PER_ROUND).into_bytes();
    if i % 7 == 3 {
        return (key, None);
    }
    (key, Some(value_for(round, i)))
}

/// Self-describing values: a header naming round and operation, then a pattern derived from
/// it, so any value read back can be checked for integrity on its own.
fn value_for(round: u32, i: u64) -> Vec<u8> {
    let len = 20 + ((i * 7919 + u64::from(round) * 104_729) % 6000) as usize;
    let mut v = format!("{round}:{i}:").into_bytes();
    while v.len() < len {
        v.push(b'a' + ((v.len() as u64 + i) % 26) as u8);
    }
    v
}

fn value_is_intact(v: &[u8]) -> bool {
    let s = String::from_utf8_lossy(v);
    let mut parts = s.splitn(3, ':');
    let (Some(r), Some(i)) = (
        parts.next().and_then(|p| p.parse::<u32>().ok()),
        parts.next().and_then(|p| p.parse::<u64>().ok()),
    ) else {
        return false;
    };
    value_for(r, i) == v
}

fn child(dir: &str, round: u32) {
    let engine = match Engine::open(dir, config(round)) {
        Ok(e) => e,
        Err(e) => {
            println!("open-error {e}");
            std::process::exit(3);
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    for i in 0.. {
        let (key, value) = operation(round, i);
        let r = match value {
            Some(v) => engine.set("default", Some(&key), &v).map(|_| ()),
            None => match engine.delete("default", &key) {
                Err(qsfs_core::Error::NotFound(_)) => Ok(()),
                other => other,
            },
        };
        if let Err(e) = r {
            let _ = writeln!(out, "error {i} {e}");
            std::process::exit(4);
        }
        let _ = writeln!(out, "ack {i}");
        let _ = out.flush();
        if i % 31 == 15 {
            let _ = engine.compact_with("default", 0.9);
        }
    }
}

fn main() {
    if let Ok(dir) = std::env::var("QSFS_CRASH_CHILD") {
        let round = std::env::var("QSFS_CRASH_ROUND")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        child(&dir, round);
        return;
    }
    // Ignore libtest-style arguments (`--nocapture`, filters): this binary has one test.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        std::env::var("QSFS_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random),
    );
    // The state every verified round left behind: key → value (None = absent).
    let mut expected: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut total_acked = 0u64;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().expect("current_exe"))
            .env("QSFS_CRASH_CHILD", dir.path())
            .env("QSFS_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.is_empty() {
                    let _ = tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        // Once the child has opened the engine, wait a random time, then kill without warning.
        let _ = rx.recv_timeout(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..100)));
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        let lines = reader.join().expect("reader");
        assert_eq!(
            lines.first().map(String::as_str),
            Some("ready"),
            "round {round}: child did not open: {lines:?}"
        );
        if let Some(l) = lines
            .iter()
            .find(|l| l.starts_with("error") || l.starts_with("open-error"))
        {
            panic!("round {round}: child failed: {l}");
        }
        let acked: Vec<u64> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("ack "))
            .map(|n| n.parse().expect("ack number"))
            .collect();
        for (n, i) in acked.iter().enumerate() {
            assert_eq!(*i, n as u64, "acks are in order");
        }
        let done = acked.len() as u64;
        total_acked += done;

        // Replay the acknowledged operations on the model; op `done` may or may not have landed.
        let mut model = expected.clone();
        for i in 0..done {
            let (k, v) = operation(round, i);
            model.insert(k, v);
        }
        let (inflight_key, inflight_value) = operation(round, done);

        let engine = Engine::open(dir.path(), config(round))
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        for (k, want) in model.iter_mut() {
            let got = engine
                .get("default", k)
                .unwrap_or_else(|e| {
                    panic!(
                        "round {round}: key {} unreadable: {e}",
                        String::from_utf8_lossy(k)
                    )
                })
                .map(|e| e.value);
            if let Some(v) = &got {
                assert!(
                    value_is_intact(v),
                    "round {round}: corrupt value served for {}",
                    String::from_utf8_lossy(k)
                );
            }
            if got != *want {
                assert!(
                    *k == inflight_key && got == inflight_value,
                    "round {round}: key {} lost an acknowledged write (acked {done} ops): got {:?}, want {:?}",
                    String::from_utf8_lossy(k),
                    got.as_ref().map(|v| String::from_utf8_lossy(&v[..v.len().min(16)]).to_string()),
                    want.as_ref().map(|v| String::from_utf8_lossy(&v[..v.len().min(16)]).to_string()),
                );
                *want = got;
            }
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = model.entry(inflight_key.clone())
        {
            let got = engine
                .get("default", &inflight_key)
                .expect("get in-flight key")
                .map(|e| e.value);
            assert!(
                got.is_none() || got == inflight_value,
                "round {round}: in-flight key has a foreign value"
            );
            slot.insert(got);
        }
        // Nothing else is live, and everything live is intact.
        let mut cursor = None;
        loop {
            let page = engine
                .scan(
                    "default",
                    cursor.as_ref(),
                    500,
                    qsfs_core::ScanOrder::Forward,
                )
                .expect("scan");
            for m in &page.entries {
                assert!(
                    model.get(&m.key).is_some_and(|v| v.is_some()),
                    "round {round}: unexpected live key {}",
                    String::from_utf8_lossy(&m.key)
                );
            }
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(
            engine.stats("default").expect("stats").damage,
            Vec::<String>::new(),
            "round {round}: damage"
        );
        drop(engine);
        expected = model;
    }
    assert!(
        total_acked > u64::from(ROUNDS) * 5,
        "the children wrote too little to prove anything: {total_acked}"
    );
    println!("crash test: {ROUNDS} rounds, {total_acked} acknowledged operations, all present after SIGKILL");
}
