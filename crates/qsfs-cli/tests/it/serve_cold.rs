//! Issue #6 item 3 for `qsfs serve --backup-config`: a read that has to fetch an evicted value
//! from the backups never holds up the other clients of its event loop. Real processes: four
//! `qsfs serve` backend nodes, and a `qsfs serve --backup-config … --workers 1` front whose
//! engine evicts sealed segments to them. The nodes are stopped with SIGSTOP so a fetch stalls
//! for as long as the test wants; what must answer meanwhile is decided by state (the stalled
//! reply has not come), never by a time limit. The same holds for a read waiting on the
//! `missing-data` hook (`qsfs serve --hook`).

#![allow(clippy::unwrap_used)]

use crate::common;
use common::{free_port, Conn};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qsfs");
const MIB: usize = 1 << 20;

/// A child process killed (and resumed first, if stopped) when dropped.
struct Proc(Child);

impl Proc {
    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until a RESP server answers PING on `port`.
fn wait_ping(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Conn::open(port) {
            if c.cmd(&["PING"]).as_deref() == Some("+PONG") {
                return;
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("{what} exited: {st}");
        }
        assert!(Instant::now() < deadline, "{what} did not answer PING");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `len` printable, reproducible bytes for `seed`, as a string (RESP bulk-safe, exact to compare).
fn value(len: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.push_str(&format!("{:016x}", x.wrapping_mul(0x2545_F491_4F6C_DD1D)));
    }
    s.truncate(len);
    s
}

/// True if some segment file under `dir` holds `needle` (the value is still local).
fn on_local_disk(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        p.extension().is_some_and(|x| x == "seg")
            && std::fs::read(&p).is_ok_and(|d| d.windows(needle.len()).any(|w| w == needle))
    })
}

/// Backend nodes, and a front whose values `cold` are evicted to them while `local` is not.
struct Setup {
    nodes: Vec<Proc>,
    front: Proc,
    port: u16,
    cold: Vec<(String, String)>,
    local: (String, String),
    _tmp: tempfile::TempDir,
}

impl Setup {
    /// Starts four nodes and the front (1 MiB segments, 2 MiB local cap, 2+2 over the nodes),
    /// writes `cold` values each followed by enough filler to be sealed in a segment of its
    /// own, and waits until none of them is on the front's disk any more.
    fn new(cold: usize) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for i in 0..4 {
            let port = free_port();
            let dir = tmp.path().join(format!("node{i}"));
            let mut child = Command::new(BIN)
                .args(["serve", "--port", &port.to_string(), "--data"])
                .arg(&dir)
                .env("QSFS_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            wait_ping(port, &mut child, "backend node");
            let mut c = Conn::open(port).unwrap();
            c.ok(&["NSNEW", "data"]);
            c.ok(&["NSNEW", "meta"]);
            nodes.push(Proc(child));
            ports.push(port);
        }
        let list = |ns: &str| {
            ports
                .iter()
                .map(|p| format!("\"zdb://127.0.0.1:{p}/{ns}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Timeouts far beyond the test: a stopped node stalls a fetch, it must not fail it or
        // be written off as down before it is resumed. No cuts by age: only size seals, so the
        // last segment (the local key) stays local.
        let config = format!(
            "local_cap = {}\nsegment_size = {}\nseal_after = 3600\n\
             data_shards = 2\nparity_shards = 2\nop_timeout_ms = 120000\n\
             health_timeout_ms = 120000\ndown_for_ms = 1000\n\
             [kdf]\nmemory_kib = 256\niterations = 1\nparallelism = 1\n\
             [meta]\nbackends = [{}]\n[[groups]]\nbackends = [{}]\n",
            2 * MIB,
            MIB,
            list("meta"),
            list("data"),
        );
        let config_path = tmp.path().join("front.toml");
        std::fs::write(&config_path, config).unwrap();
        let keyfile = tmp.path().join("key");
        std::fs::write(&keyfile, "cold reads\n").unwrap();
        let port = free_port();
        let data = tmp.path().join("front");
        let mut child = Command::new(BIN)
            .args(["serve", "--workers", "1", "--port", &port.to_string()])
            .args(["--metrics", &format!("127.0.0.1:{}", free_port())])
            .arg("--data")
            .arg(&data)
            .arg("--backup-config")
            .arg(&config_path)
            .arg("--keyfile")
            .arg(&keyfile)
            .env("QSFS_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_ping(port, &mut child, "front");
        let front = Proc(child);
        let mut c = Conn::open(port).unwrap();
        let mut cold_values = Vec::new();
        let filler = value(64 * 1024, 7);
        for i in 0..cold {
            let (k, v) = (format!("cold{i}"), value(4096, 100 + i as u64));
            assert_eq!(c.cmd(&["SET", &k, &v]).as_deref(), Some(k.as_str()));
            cold_values.push((k, v));
            // 1.5 segments of filler: the next cold value lands in another segment.
            for j in 0..24 {
                let k = format!("fill{i}-{j}");
                assert_eq!(c.cmd(&["SET", &k, &filler]).as_deref(), Some(k.as_str()));
            }
        }
        // More than the cap after the last cold value: every segment holding one is sealed,
        // uploaded, and evicted (least recently read first; none was read).
        for j in 0..48 {
            let k = format!("tail-{j}");
            assert_eq!(c.cmd(&["SET", &k, &filler]).as_deref(), Some(k.as_str()));
        }
        let local = ("local".to_string(), value(3000, 99));
        assert_eq!(
            c.cmd(&["SET", &local.0, &local.1]).as_deref(),
            Some("local")
        );
        let segments = data.join("ns/default");
        let deadline = Instant::now() + Duration::from_secs(60);
        while cold_values
            .iter()
            .any(|(_, v)| on_local_disk(&segments, v.as_bytes()))
        {
            assert!(
                Instant::now() < deadline,
                "the cold values were not evicted"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(on_local_disk(&segments, local.1.as_bytes()));
        Setup {
            nodes,
            front,
            port,
            cold: cold_values,
            local,
            _tmp: tmp,
        }
    }

    fn stop_nodes(&self) {
        for n in &self.nodes {
            n.signal("-STOP");
        }
    }

    fn resume_nodes(&self) {
        for n in &self.nodes {
            n.signal("-CONT");
        }
    }
}

/// `commands_executed` of the server's INFO, asked on `c`.
fn executed(c: &mut Conn) -> u64 {
    let info = c.cmd(&["INFO"]).expect("INFO answers");
    info.lines()
        .find_map(|l| l.strip_prefix("commands_executed: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no commands_executed in INFO:\n{info}"))
}

/// Waits (on connection `c`) until the server received `n` more requests than the INFO that
/// counted `before` (the INFOs asked meanwhile count too).
fn wait_received(c: &mut Conn, before: u64, n: u64) {
    for infos in 1.. {
        if executed(c) >= before + infos + n {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A raw connection: requests written as they are, replies read one by one.
struct Raw {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Raw {
    fn open(port: u16) -> Raw {
        let w = TcpStream::connect(("127.0.0.1", port)).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Raw {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }

    fn send(&mut self, cmds: &[&[&str]]) {
        let mut out = Vec::new();
        for args in cmds {
            out.extend(format!("*{}\r\n", args.len()).into_bytes());
            for a in *args {
                out.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
            }
        }
        self.w.write_all(&out).unwrap();
    }

    /// The next reply: a status/error/integer line, or a bulk's content.
    fn reply(&mut self) -> String {
        let mut line = String::new();
        assert!(
            self.r.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        let line = line.trim_end().to_string();
        match line.strip_prefix('$') {
            Some(n) if !n.starts_with('-') => {
                let mut b = vec![0u8; n.parse::<usize>().unwrap() + 2];
                self.r.read_exact(&mut b).unwrap();
                b.truncate(b.len() - 2);
                String::from_utf8(b).unwrap()
            }
            _ => line,
        }
    }

    /// True if no reply byte has arrived (buffered or on the socket).
    fn nothing_yet(&mut self) -> bool {
        if !self.r.buffer().is_empty() {
            return false;
        }
        self.w.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let r = self.w.peek(&mut b);
        self.w.set_nonblocking(false).unwrap();
        matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

#[test]
fn a_stalled_cold_get_does_not_hold_up_the_other_clients_of_its_thread() {
    let s = Setup::new(1);
    let (cold_key, cold_value) = s.cold[0].clone();
    // Both connections on the front's only event loop (--workers 1).
    let mut a = Raw::open(s.port);
    let mut b = Conn::open(s.port).unwrap();
    let before = executed(&mut b);
    s.stop_nodes();
    a.send(&[&["GET", &cold_key]]);
    // The GET is in flight (counted), and its fetch cannot finish while the nodes are stopped.
    wait_received(&mut b, before, 1);
    assert_eq!(b.cmd(&["PING"]).as_deref(), Some("+PONG"));
    assert_eq!(
        b.cmd(&["GET", &s.local.0]).as_deref(),
        Some(s.local.1.as_str())
    );
    assert_eq!(
        b.cmd(&["SET", "written-meanwhile", "yes"]).as_deref(),
        Some("written-meanwhile")
    );
    assert_eq!(b.cmd(&["GET", "written-meanwhile"]).as_deref(), Some("yes"));
    assert!(
        a.nothing_yet(),
        "the cold GET answered while the backends were stopped"
    );
    // A shutdown now lets the fetch finish and its reply go out, then exits cleanly.
    s.front.signal("-TERM");
    s.resume_nodes();
    assert_eq!(a.reply(), cold_value);
    let Setup { mut front, .. } = s;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = front.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the front did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "front exited with {status}");
}

#[test]
fn a_pipelined_batch_with_a_cold_get_answers_in_order() {
    let s = Setup::new(1);
    let (cold_key, cold_value) = s.cold[0].clone();
    let mut a = Raw::open(s.port);
    let mut b = Conn::open(s.port).unwrap();
    s.stop_nodes();
    a.send(&[
        &["SET", "first", "1"],
        &["GET", &cold_key],
        &["GET", &s.local.0],
        &["SET", "after", "2"],
        &["PING"],
    ]);
    // What came before the cold GET is answered at once; nothing after it overtakes it.
    assert_eq!(a.reply(), "first");
    assert_eq!(b.cmd(&["PING"]).as_deref(), Some("+PONG"));
    assert!(
        a.nothing_yet(),
        "a reply after the stalled cold GET came before it"
    );
    s.resume_nodes();
    assert_eq!(a.reply(), cold_value);
    assert_eq!(a.reply(), s.local.1);
    assert_eq!(a.reply(), "after");
    assert_eq!(a.reply(), "+PONG");
    assert_eq!(b.cmd(&["GET", "after"]).as_deref(), Some("2"));
}

/// An engine config with no background thread, so dropping the engine releases its directory
/// at once (a background tick in progress would keep it a moment longer).
fn quiet_engine() -> qsfs_store::EngineConfig {
    qsfs_store::EngineConfig {
        durability: qsfs_store::Durability::EveryWrite,
        ..qsfs_store::EngineConfig::default()
    }
}

#[test]
fn a_waiting_missing_data_hook_does_not_hold_up_the_other_clients_of_its_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let saved = tmp.path().join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    {
        // Segment 0 offloaded with no cold tier: only the hook can put it back.
        use qsfs_core::Store;
        let e = qsfs_store::Engine::open(&data, quiet_engine()).unwrap();
        e.set("default", Some(b"old"), b"old value").unwrap();
        e.rotate("default").unwrap();
        e.set("default", Some(b"new"), b"new value").unwrap();
        let seg = data.join("ns/default/0000000000.seg");
        std::fs::copy(&seg, saved.join("0000000000.seg")).unwrap();
        e.offload_segment("default", 0).unwrap();
        // No cold tier and no observer: a read of it fails at once, it never waits.
        assert!(!e.value_needs_fetch("default", b"old"));
    }
    {
        // With an observer (as `--hook` has), reads of the offloaded segment would wait.
        struct Asks;
        impl qsfs_store::EngineObserver for Asks {}
        let config = qsfs_store::EngineConfig {
            observer: Some(std::sync::Arc::new(Asks)),
            ..quiet_engine()
        };
        let e = qsfs_store::Engine::open(&data, config).unwrap();
        assert!(e.value_needs_fetch("default", b"old"));
        assert!(!e.value_needs_fetch("default", b"new"));
        assert!(!e.value_needs_fetch("default", b"absent"));
        assert!(!e.value_needs_fetch("no-such-namespace", b"old"));
        assert!(e.segment_needs_fetch("default", 0));
        assert!(!e.segment_needs_fetch("default", 1));
        assert!(e.namespace_needs_fetch("default"));
    }
    // The hook waits for `go` (30 s at most, so a failed run leaves nothing behind).
    let go = tmp.path().join("go");
    let hook = tmp.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  missing-data)\n    i=0\n    \
             while [ ! -e {go} ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done\n    \
             cp {saved}/\"$(basename \"$3\")\" \"$3\" ;;\nesac\nexit 0\n",
            go = go.display(),
            saved = saved.display()
        ),
    )
    .unwrap();
    assert!(Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap()
        .success());
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--workers", "1", "--port", &port.to_string()])
        .arg("--hook")
        .arg(&hook)
        .arg("--data")
        .arg(&data)
        .env("QSFS_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ping(port, &mut child, "qsfs serve");
    let _server = Proc(child);
    let mut a = Raw::open(port);
    let mut b = Conn::open(port).unwrap();
    let before = executed(&mut b);
    a.send(&[&["GET", "old"]]);
    wait_received(&mut b, before, 1);
    assert_eq!(b.cmd(&["PING"]).as_deref(), Some("+PONG"));
    assert_eq!(b.cmd(&["GET", "new"]).as_deref(), Some("new value"));
    assert_eq!(b.cmd(&["SET", "other", "x"]).as_deref(), Some("other"));
    assert!(
        a.nothing_yet(),
        "GET answered before the hook put the file back"
    );
    std::fs::write(&go, b"").unwrap();
    assert_eq!(a.reply(), "old value");
    assert_eq!(b.cmd(&["GET", "other"]).as_deref(), Some("x"));
}
