//! `qsfs serve` as a real process: flags, graceful shutdown on SIGTERM/SIGINT, hooks, and no
//! acknowledged write lost to a `kill -9` in the middle of a pipelined write load.

#![allow(clippy::unwrap_used)]

use crate::common;
use common::free_port;
use common::serve::{assert_all_acknowledged, connect, reply, req, start, Serve};
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qsfs");

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "qsfs-serve-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_u64()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn cmd(s: &mut TcpStream, r: &mut BufReader<TcpStream>, args: &[&str]) -> Option<String> {
    let a: Vec<&[u8]> = args.iter().map(|x| x.as_bytes()).collect();
    s.write_all(&req(&a)).unwrap();
    reply(r).unwrap()
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("qsfs serve did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn help_version_and_bad_flags() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--port",
        "--socket",
        "--data",
        "--index",
        "--mode",
        "--admin",
        "--protect",
        "--datasize",
        "--maxsize",
        "--rotate",
        "--sync",
        "--synctime",
        "--hook",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--version"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let dir = TempDir::new("flags");
    for bad in [
        &["--mode", "weird"][..],
        &["--protect"],
        &["--datasize", "1k"],
        &["--datasize", "12x"],
        &["--workers", "0"],
        &["--workers", "100000"],
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--port", &free_port().to_string(), "--data"])
            .arg(&dir.0)
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad:?} must exit 1");
        assert!(!out.stderr.is_empty(), "{bad:?} must say why");
    }
}

#[test]
fn sigterm_and_sigint_shut_down_cleanly_and_keep_data() {
    let dir = TempDir::new("term");
    let port = free_port();
    for sig in ["-TERM", "-INT"] {
        let mut child = start(&dir.0, port, &["--index", dir.0.to_str().unwrap()]);
        let (mut s, mut r) = connect(port);
        let key = format!("key{sig}");
        assert_eq!(
            cmd(&mut s, &mut r, &["SET", &key, "value"]).as_deref(),
            Some(key.as_str())
        );
        signal(&child, sig);
        let st = wait_exit(&mut child, Duration::from_secs(20));
        assert_eq!(st.code(), Some(0), "{sig}: exit status");
    }
    // Three connection threads: the clients land on different ones, and TERM ends them all.
    let mut child = start(&dir.0, port, &["--workers", "3"]);
    let mut clients: Vec<_> = (0..4).map(|_| connect(port)).collect();
    for (i, (s, r)) in clients.iter_mut().enumerate() {
        let key = if i % 2 == 0 { "key-TERM" } else { "key-INT" };
        assert_eq!(cmd(s, r, &["GET", key]).as_deref(), Some("value"));
    }
    signal(&child, "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
}

#[test]
fn kill_9_during_pipelined_writes_loses_no_acknowledged_set() {
    let dir = TempDir::new("kill9");
    let port = free_port();
    let mut child = start(&dir.0, port, &[]);
    let (mut s, mut r) = connect(port);
    let writer = std::thread::spawn(move || {
        let mut acked: Vec<(String, String)> = Vec::new();
        let mut batch_no = 0u64;
        'outer: loop {
            let batch: Vec<(String, String)> = (0..64)
                .map(|i| {
                    let k = format!("k{batch_no}-{i}");
                    let v = format!(
                        "v{batch_no}-{i}-{}",
                        "p".repeat(((batch_no + i) % 50) as usize * 40)
                    );
                    (k, v)
                })
                .collect();
            let mut wire = Vec::new();
            for (k, v) in &batch {
                wire.extend(req(&[b"SET", k.as_bytes(), v.as_bytes()]));
            }
            if s.write_all(&wire).is_err() {
                break;
            }
            for (k, v) in batch {
                match reply(&mut r) {
                    Ok(Some(got)) if got == k => acked.push((k, v)),
                    Ok(other) => panic!("unexpected SET reply {other:?}"),
                    Err(_) => break 'outer,
                }
            }
            batch_no += 1;
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let acked = writer.join().unwrap();
    assert!(
        acked.len() > 100,
        "the load did not get going: {} acked",
        acked.len()
    );
    let mut child = start(&dir.0, port, &[]);
    let (mut s, mut r) = connect(port);
    assert_all_acknowledged(&mut s, &mut r, &acked);
    signal(&child, "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
}

/// An executable hook script in `dir` that appends its arguments to the returned log, then runs
/// `body` (shell), then exits 0.
fn hook_script(dir: &Path, body: &str) -> (PathBuf, PathBuf) {
    let log = dir.join("events.log");
    let hook = dir.join("hook.sh");
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {}\n{body}exit 0\n",
        log.display()
    );
    std::fs::write(&hook, script).unwrap();
    Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
    (hook, log)
}

#[test]
fn hooks_get_the_original_events() {
    let dir = TempDir::new("hooks");
    let (hook, log) = hook_script(&dir.0, "");
    let data = dir.0.join("data");
    let port = free_port();
    let mut child = start(
        &data,
        port,
        &["--hook", hook.to_str().unwrap(), "--datasize", "512k"],
    );
    let (mut s, mut r) = connect(port);
    assert_eq!(cmd(&mut s, &mut r, &["NSNEW", "x"]).as_deref(), Some("+OK"));
    assert_eq!(
        cmd(&mut s, &mut r, &["NSSET", "x", "public", "0"]).as_deref(),
        Some("+OK")
    );
    assert_eq!(cmd(&mut s, &mut r, &["NSJUMP"]).as_deref(), Some("+OK"));
    assert_eq!(cmd(&mut s, &mut r, &["NSDEL", "x"]).as_deref(), Some("+OK"));
    let Some(hooks) = cmd(&mut s, &mut r, &["HOOKS"]) else {
        panic!()
    };
    assert!(hooks.starts_with('*'), "HOOKS is an array: {hooks}");
    signal(&child, "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
    // Background hooks may still be finishing.
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&log).unwrap();
    let id = format!("tcp://127.0.0.1:{port}");
    for want in [
        format!("namespaces-init {id} "),
        format!("ready {id}"),
        format!("namespace-created {id} x"),
        format!("namespace-updated {id} x"),
        format!("jump-index {id} "),
        format!("jump-data {id} "),
        format!("namespace-deleted {id} x"),
        format!("close {id}"),
        format!(
            "namespace-closing {id} default {}",
            data.join("ns/default/index").display()
        ),
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&want)),
            "hook log lacks {want:?}:\n{text}"
        );
    }
}

#[test]
fn unix_socket_replaces_tcp() {
    let dir = TempDir::new("sock");
    let sock = dir.0.join("zdb.sock");
    let mut child = Serve(
        Command::new(BIN)
            .args(["serve", "--data"])
            .arg(dir.0.join("d"))
            .arg("--socket")
            .arg(&sock)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
            break s;
        }
        assert!(Instant::now() < deadline, "socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    s.write_all(&req(&[b"PING"])).unwrap();
    let mut b = [0u8; 7];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"+PONG\r\n");
    signal(&child, "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
    assert!(!sock.exists(), "socket file removed on shutdown");
}

/// Waits until `path` holds a line starting with `want` (hooks that are not waited for).
fn wait_for_line(path: &Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| l.starts_with(want)) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {want:?} in:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn missing_data_hook_puts_an_offloaded_segment_back() {
    let dir = TempDir::new("missing");
    let data = dir.0.join("data");
    let saved = dir.0.join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    {
        // Segment 0 offloaded with no cold tier: only the saved copy is left, as after a hook
        // that uploaded a data file and deleted it.
        use qsfs_core::Store;
        let e = qsfs_store::Engine::open(&data, qsfs_store::EngineConfig::default()).unwrap();
        e.set("default", Some(b"old"), b"old value").unwrap();
        e.rotate("default").unwrap();
        e.set("default", Some(b"new"), b"new value").unwrap();
        let seg = data.join("ns/default/0000000000.seg");
        std::fs::copy(&seg, saved.join("0000000000.seg")).unwrap();
        e.offload_segment("default", 0).unwrap();
    }
    let allow = dir.0.join("allow");
    let (hook, log) = hook_script(
        &dir.0,
        &format!(
            "case \"$1\" in\n  missing-data)\n    [ -e {allow} ] || exit 1\n    cp {saved}/\"$(basename \"$3\")\" \"$3\" || exit 1 ;;\nesac\n",
            allow = allow.display(),
            saved = saved.display()
        ),
    );
    let port = free_port();
    let hook_arg = hook.to_str().unwrap();
    let mut child = start(&data, port, &["--hook", hook_arg]);
    let (mut s, mut r) = connect(port);
    let want = format!(
        "missing-data tcp://127.0.0.1:{port} {}",
        data.join("ns/default/0000000000.seg").display()
    );
    let count = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .filter(|l| *l == want.as_str())
            .count()
    };
    // The hook fails: a clear error, never a wrong value, and the server keeps serving.
    assert_eq!(
        cmd(&mut s, &mut r, &["GET", "old"]).as_deref(),
        Some("-Internal Error: data unavailable")
    );
    assert_eq!(count(&log), 1);
    assert_eq!(
        cmd(&mut s, &mut r, &["CHECK", "old"]).as_deref(),
        Some(":-1")
    );
    assert_eq!(cmd(&mut s, &mut r, &["PING"]).as_deref(), Some("+PONG"));
    assert_eq!(
        cmd(&mut s, &mut r, &["GET", "new"]).as_deref(),
        Some("new value")
    );
    // The hook puts the file back: the read is retried and answers the stored value.
    std::fs::write(&allow, b"").unwrap();
    assert_eq!(
        cmd(&mut s, &mut r, &["GET", "old"]).as_deref(),
        Some("old value")
    );
    let after = count(&log);
    assert_eq!(after, 3, "{}", std::fs::read_to_string(&log).unwrap());
    // Once back, the file is used without asking again, also after a restart.
    assert_eq!(
        cmd(&mut s, &mut r, &["GET", "old"]).as_deref(),
        Some("old value")
    );
    signal(&child, "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
    std::fs::remove_file(&allow).unwrap();
    let _child = start(&data, port, &["--hook", hook_arg]);
    let (mut s, mut r) = connect(port);
    assert_eq!(
        cmd(&mut s, &mut r, &["GET", "old"]).as_deref(),
        Some("old value")
    );
    assert_eq!(count(&log), after);
}

#[test]
fn a_panic_fires_the_crash_hook_and_aborts() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new("crash");
    let (hook, log) = hook_script(&dir.0, "");
    let port = free_port();
    let mut child = Serve(
        Command::new(BIN)
            .args(["serve", "--port", &port.to_string(), "--data"])
            .arg(dir.0.join("data"))
            .args(["--hook", hook.to_str().unwrap()])
            .env("QSFS_TEST_PANIC_AFTER_READY", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.signal(), Some(libc_sigabrt()), "{status:?}");
    let text = wait_for_line(&log, &format!("crash tcp://127.0.0.1:{port}"));
    assert!(text.lines().any(|l| l.starts_with("ready ")), "{text}");
}

/// SIGABRT, without a libc dependency in the tests.
fn libc_sigabrt() -> i32 {
    6
}

/// Bytes of the segment files under `dir`: what compaction gives back. (The index snapshot and
/// manifest are rewritten at seals, a little smaller or larger each time.)
fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                segment_bytes(&e.path())
            } else if e.path().extension().is_some_and(|x| x == "seg") {
                m.len()
            } else {
                0
            }
        })
        .sum()
}

/// The original never gives space back (its disk only grows: spec §7.5 and the defect list).
/// `qsfs serve` compacts in the background: overwritten and deleted values leave the disk once
/// their history time is over, and every live value still reads back, after a restart too;
/// `--compact-every 0` gives nothing back, as the original.
#[test]
fn overwritten_and_deleted_values_leave_the_disk() {
    let value = |k: u32, round: u32| format!("{k}-{round}-").repeat(200);
    let cases: [(&[&str], bool); 2] = [
        (&["--compact-every", "1", "--keep-history", "0"], true),
        (&["--compact-every", "0"], false),
    ];
    for (flags, compacts) in cases {
        let dir = TempDir::new("compact");
        let port = free_port();
        let args: Vec<&str> = ["--datasize", "512k"]
            .iter()
            .chain(flags)
            .copied()
            .collect();
        let mut serve = start(&dir.0, port, &args);
        let mut c = common::Conn::open(port).unwrap();
        for round in 0..4 {
            for k in 0..300u32 {
                let key = format!("k{k}");
                assert_eq!(
                    c.cmd(&["SET", &key, &value(k, round)]).as_deref(),
                    Some(key.as_str())
                );
            }
        }
        for k in (0..300u32).step_by(2) {
            c.ok(&["DEL", &format!("k{k}")]);
        }
        let peak = segment_bytes(&dir.0);
        let deadline = Instant::now() + Duration::from_secs(if compacts { 30 } else { 3 });
        while segment_bytes(&dir.0) > peak / 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let now = segment_bytes(&dir.0);
        if compacts {
            assert!(
                now <= peak / 2,
                "{flags:?}: {now} of {peak} bytes left after 30 s"
            );
        } else {
            assert!(now >= peak, "{flags:?}: {now} of {peak} bytes left");
        }
        let check = |c: &mut common::Conn| {
            for k in 0..300u32 {
                let got = c.cmd(&["GET", &format!("k{k}")]);
                let want = (k % 2 == 1).then(|| value(k, 3));
                assert_eq!(got, want, "{flags:?}: k{k}");
            }
        };
        check(&mut c);
        signal(&serve, "-TERM");
        assert_eq!(
            wait_exit(&mut serve, Duration::from_secs(20)).code(),
            Some(0)
        );
        let _serve = start(&dir.0, port, &args);
        check(&mut common::Conn::open(port).unwrap());
    }
}

/// Clients fill the server's disk with SETs, then delete half of what they wrote. The original
/// lets SETs take the last byte, after which nothing comes back: compaction needs room for a
/// segment's live half and has none (measured: 60 KiB left on a 32 MiB disk for minutes).
/// `qsfs serve` refuses SETs before its write reserve (one segment and a sixteenth), so the
/// DELs land, the low-disk compaction gives the space back within seconds, new SETs work, and
/// no live value is lost; `--reserve 0` lets the disk fill and nothing comes back.
#[test]
fn a_disk_filled_by_clients_takes_their_deletes_and_gives_the_space_back() {
    let value = |k: u32| format!("{k:08}").repeat(12_500); // 100 KB
    for (reserve, recovers) in [(None, true), (Some("0"), false)] {
        let dir = TempDir::new("full");
        let _disk = common::Tmpfs::mount(&dir.0, "32m");
        let available = || {
            nix::sys::statvfs::statvfs(&dir.0)
                .map(|s| s.blocks_available() * s.fragment_size())
                .unwrap()
        };
        let port = free_port();
        let mut args = vec!["--datasize", "4M"];
        args.extend(reserve.iter().flat_map(|r| ["--reserve", *r]));
        let _serve = start(&dir.0.join("srv"), port, &args);
        let mut c = common::Conn::open(port).unwrap();
        // NSINFO's free space is what SETs may use: without the reserve (a filesystem on the
        // server keeps its own reserve above it, so its removals' SETs are never refused).
        let nsinfo_free = |c: &mut common::Conn| -> u64 {
            let info = c.cmd(&["NSINFO", "default"]).unwrap();
            let line = info
                .lines()
                .find_map(|l| l.strip_prefix("data_disk_freespace_bytes: "));
            line.unwrap().parse().unwrap()
        };
        let kept = if recovers {
            (4 << 20) + (256 << 10) + (64 << 10)
        } else {
            0
        };
        let (told, disk) = (nsinfo_free(&mut c), available());
        assert!(
            told <= disk - kept && told + (1 << 20) >= disk - kept,
            "{reserve:?}: NSINFO says {told} free, the disk {disk}"
        );
        let mut stored = 0u32;
        loop {
            let key = format!("k{stored}");
            match c.cmd(&["SET", &key, &value(stored)]) {
                Some(k) if k == key => stored += 1,
                other => {
                    assert!(
                        stored > 100,
                        "{reserve:?}: refused after {stored}: {other:?}"
                    );
                    break;
                }
            }
            assert!(stored < 400, "a 32 MiB disk cannot hold 40 MB");
        }
        let full = available();
        for k in (0..stored).step_by(2) {
            c.ok(&["DEL", &format!("k{k}")]);
        }
        let want = full + (8 << 20);
        let deadline = Instant::now() + Duration::from_secs(if recovers { 30 } else { 5 });
        while available() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let back = available();
        assert_eq!(
            back >= want,
            recovers,
            "{reserve:?}: {full} bytes available when full, {back} after deleting half"
        );
        if recovers {
            assert_eq!(c.cmd(&["SET", "after", "x"]).as_deref(), Some("after"));
        }
        for k in (1..stored).step_by(2) {
            assert_eq!(
                c.cmd(&["GET", &format!("k{k}")]),
                Some(value(k)),
                "{reserve:?}: k{k}"
            );
        }
    }
}

/// A damaged namespace descriptor (here `default`'s and `a`'s) does not stop the server: it
/// starts, those namespaces answer every command with an error that says they are damaged
/// (and are neither created again nor deleted), and the other namespaces serve as before.
#[test]
fn damaged_namespaces_stay_unavailable_and_the_others_serve() {
    let dir = TempDir::new("damaged");
    let port = free_port();
    {
        let mut child = start(&dir.0, port, &[]);
        let (mut s, mut r) = connect(port);
        for ns in ["a", "b"] {
            assert_eq!(cmd(&mut s, &mut r, &["NSNEW", ns]).as_deref(), Some("+OK"));
            assert_eq!(cmd(&mut s, &mut r, &["SELECT", ns]).as_deref(), Some("+OK"));
            assert_eq!(cmd(&mut s, &mut r, &["SET", "k", ns]).as_deref(), Some("k"));
        }
        signal(&child, "-TERM");
        assert_eq!(
            wait_exit(&mut child.0, Duration::from_secs(20)).code(),
            Some(0)
        );
    }
    for ns in ["default", "a"] {
        std::fs::write(dir.0.join("ns").join(ns).join("namespace"), b"damaged").unwrap();
    }
    let _child = start(&dir.0, port, &[]);
    let (mut s, mut r) = connect(port);
    let is_damaged = |reply: Option<String>, ns: &str| {
        let reply = reply.unwrap_or_default();
        assert!(
            reply.starts_with(&format!("-Namespace {ns} is damaged")),
            "{ns}: {reply}"
        );
    };
    assert_eq!(cmd(&mut s, &mut r, &["PING"]).as_deref(), Some("+PONG"));
    for c in [
        &["GET", "k"][..],
        &["SET", "k", "v"],
        &["DBSIZE"],
        &["SCAN"],
    ] {
        is_damaged(cmd(&mut s, &mut r, c), "default");
    }
    for c in [
        &["SELECT", "a"][..],
        &["NSINFO", "a"],
        &["NSNEW", "a"],
        &["NSDEL", "a"],
    ] {
        is_damaged(cmd(&mut s, &mut r, c), "a");
    }
    let list = {
        s.write_all(&req(&[b"NSLIST"])).unwrap();
        let mut head = String::new();
        std::io::BufRead::read_line(&mut r, &mut head).unwrap();
        assert_eq!(head.trim_end(), "*3");
        (0..3)
            .map(|_| reply(&mut r).unwrap().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(list, ["default", "a", "b"]);
    assert_eq!(
        cmd(&mut s, &mut r, &["SELECT", "b"]).as_deref(),
        Some("+OK")
    );
    assert_eq!(cmd(&mut s, &mut r, &["GET", "k"]).as_deref(), Some("b"));
    assert_eq!(
        cmd(&mut s, &mut r, &["SET", "k2", "v2"]).as_deref(),
        Some("k2")
    );
    assert_eq!(cmd(&mut s, &mut r, &["GET", "k2"]).as_deref(), Some("v2"));
}
