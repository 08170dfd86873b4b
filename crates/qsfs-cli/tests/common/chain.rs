//! The harness of the storage-chain acceptance tests (`tests/chain_*.rs`): real `qsfs serve`
//! backend processes on loopback, a config with a 2+2 policy over them, `qsfs up` as a child
//! process, and files written through the real FUSE mount whose SHA-256 is compared after every
//! fault. Only the command-line interface of issue #6 is used: `qsfs up`, `qsfs recover`,
//! `qsfs status --json`, `qsfs backup`.
//!
//! Every wait has a deadline, but the deadlines are hang guards (generous, minutes), never
//! performance assertions.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use super::is_mounted;
pub use super::Conn;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_qsfs");
/// The passphrase in the key file of every chain test.
pub const PASSPHRASE: &str = "chain acceptance passphrase";
/// MiB.
pub const MIB: u64 = 1 << 20;

/// A SHA-256 digest.
pub type Sum = [u8; 32];

/// Hex of a digest, for messages.
pub fn hex(s: &Sum) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Sum {
    qsfs_backup::stripe::sha256(data)
}

/// `len` reproducible, incompressible bytes for `seed` (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn log_level() -> String {
    std::env::var("CHAIN_LOG").unwrap_or_else(|_| "warn".into())
}

// ---------------------------------------------------------------------------------------------
// Backend nodes

/// One `qsfs serve` process (a 0-db node) with its own data directory. Killed on drop.
pub struct Node {
    /// Loopback port it listens on (kept across restarts).
    pub port: u16,
    /// Its data directory.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts a node on a free port and creates the `data` and `meta` namespaces.
    pub fn start(dir: PathBuf) -> Node {
        let mut n = Node {
            port: reserved_port(),
            dir,
            child: None,
        };
        n.spawn();
        n.provision();
        n
    }

    /// True while the server process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// (Re)starts the server on the same port over the same data directory.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.port);
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--port", &self.port.to_string(), "--data"])
            .arg(self.dir.join("data"))
            .arg("--index")
            .arg(self.dir.join("index"))
            .env("QSFS_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qsfs serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = Conn::open(self.port) {
                if c.cmd(&["PING"]).as_deref() == Some("+PONG") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "qsfs serve on {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates the namespaces the config uses, as an operator provisions a node.
    pub fn provision(&self) {
        let mut c = self.conn();
        for ns in ["data", "meta"] {
            let r = c.cmd(&["NSNEW", ns]);
            assert!(
                r.as_deref() == Some("+OK") || r.as_deref().is_some_and(|e| e.contains("exists")),
                "NSNEW {ns} on {}: {r:?}",
                self.port
            );
        }
    }

    /// SIGKILL: the node vanishes without a goodbye (its storage stays).
    /// Freezes the server (SIGSTOP): connections stay open and requests hang, as on a node
    /// that stopped answering without closing anything.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let c = self.child.as_ref().expect("node running");
        let ok = Command::new("kill")
            .args([sig, &c.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {} failed", c.id());
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Comes back on the same address with empty storage (a replaced machine).
    pub fn replace_empty(&mut self) {
        self.kill();
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).unwrap();
        }
        self.spawn();
        self.provision();
    }

    /// A RESP connection.
    pub fn conn(&self) -> Conn {
        Conn::open(self.port).unwrap()
    }

    /// Live bytes (`data_size_bytes` of NSINFO) in namespace `ns`; 0 if the node is down.
    pub fn live_bytes(&self, ns: &str) -> u64 {
        if !self.running() {
            return 0;
        }
        let info = self.conn().cmd(&["NSINFO", ns]).unwrap_or_default();
        info.lines()
            .find_map(|l| l.trim().strip_prefix("data_size_bytes: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no data_size_bytes in NSINFO {ns}:\n{info}"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The chain: nodes + config + key + root + `qsfs up`

/// What a chain test configures.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Number of `qsfs serve` nodes (each holds a data and a metadata namespace).
    pub nodes: usize,
    /// `local_cap` in bytes.
    pub local_cap: u64,
    /// `segment_size` in bytes.
    pub segment_size: u64,
    /// `seal_after` in seconds.
    pub seal_after: u64,
    /// More top-level TOML lines (knobs a scenario needs).
    pub extra: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            nodes: 4,
            local_cap: 16 * MIB,
            segment_size: 4 * MIB,
            seal_after: 2,
            extra: String::new(),
        }
    }
}

/// Everything one scenario runs: a temporary directory with the nodes, ROOT (holding only
/// `qsfs.toml` and `qsfs.key` at first), the mountpoint, and at most one `qsfs up`.
pub struct Chain {
    /// What was configured.
    pub opts: Opts,
    /// The qsfs root (`--root`).
    pub root: PathBuf,
    /// The mountpoint.
    pub mnt: PathBuf,
    /// ROOT/qsfs.toml.
    pub config: PathBuf,
    /// ROOT/qsfs.key (the passphrase).
    pub keyfile: PathBuf,
    /// The backend nodes.
    pub nodes: Vec<Node>,
    logs: PathBuf,
    runs: u32,
    up: Option<Up>,
    // Last: the directory outlives the processes using it.
    tmp: tempfile::TempDir,
}

/// A loopback port that no other scenario of this process gets and that the kernel never hands
/// out for `bind(0)`: it lies below the ephemeral range. Scenarios run side by side and restart
/// killed nodes (and `qsfs up`'s metrics listener) on the port they had; a port from
/// `free_port` could meanwhile be given to a neighbour.
pub fn reserved_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let first = low.saturating_sub(4096).max(1024);
    loop {
        let port = first + NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(
            port < low,
            "no reserved port left below the ephemeral range ({range})"
        );
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Chain {
    /// Starts the nodes and writes the config and key file.
    pub fn new(opts: Opts) -> Chain {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let nodes: Vec<Node> = (0..opts.nodes)
            .map(|i| Node::start(base.join(format!("node{i}"))))
            .collect();
        let root = base.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let logs = base.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let mut c = Chain {
            config: root.join("qsfs.toml"),
            keyfile: root.join("qsfs.key"),
            mnt: base.join("mnt"),
            root,
            nodes,
            logs,
            runs: 0,
            up: None,
            opts,
            tmp,
        };
        c.write_config();
        std::fs::write(&c.keyfile, format!("{PASSPHRASE}\n")).unwrap();
        c
    }

    /// The temporary directory everything lives in.
    pub fn base(&self) -> &Path {
        self.tmp.path()
    }

    /// The config text: the chain knobs, then a backup config with a 2+2 policy whose data and
    /// metadata backends are the `data` and `meta` namespaces of every node.
    pub fn config_text(&self) -> String {
        let list = |ns: &str| {
            self.nodes
                .iter()
                .map(|n| format!("\"zdb://127.0.0.1:{}/{ns}\"", n.port))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let o = &self.opts;
        format!(
            "local_cap = {}\nsegment_size = {}\nseal_after = {}\nmetrics = \"127.0.0.1:{}\"\n{}\n\
             data_shards = 2\nparity_shards = 2\nop_timeout_ms = 5000\nhealth_timeout_ms = 1000\n\
             down_for_ms = 1000\n\
             [kdf]\nmemory_kib = 256\niterations = 1\nparallelism = 1\n\
             [meta]\nbackends = [{}]\n[[groups]]\nbackends = [{}]\n",
            o.local_cap,
            o.segment_size,
            o.seal_after,
            reserved_port(),
            o.extra,
            list("meta"),
            list("data"),
        )
    }

    /// (Re)writes ROOT/qsfs.toml from the options.
    pub fn write_config(&mut self) {
        std::fs::write(&self.config, self.config_text()).unwrap();
    }

    fn next_log(&mut self, what: &str) -> PathBuf {
        self.runs += 1;
        self.logs.join(format!("{:02}-{what}.log", self.runs))
    }

    /// Starts `qsfs up` and waits until the mountpoint is mounted.
    pub fn up(&mut self) {
        assert!(self.up.is_none(), "qsfs up already running");
        let log = self.next_log("up");
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(BIN)
            .arg("up")
            .arg(&self.mnt)
            .arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(&self.config)
            .arg("--keyfile")
            .arg(&self.keyfile)
            .env("QSFS_LOG", log_level())
            .env_remove("QSFS_PASSPHRASE")
            .env_remove("QSFS_ROOT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn qsfs up");
        let mut up = Up {
            child: Some(child),
            mnt: self.mnt.clone(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !is_mounted(&self.mnt) {
            if let Some(st) = up.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                up.child = None;
                panic!(
                    "qsfs up exited before mounting ({st}):\n{}",
                    tail(&up.log, 60)
                );
            }
            assert!(
                Instant::now() < deadline,
                "qsfs up did not mount in time:\n{}",
                tail(&up.log, 60)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.up = Some(up);
    }

    /// Panics with the log if the `qsfs up` started by [`Chain::up`] has exited on its own
    /// (a crash must not pass for a stale status).
    pub fn assert_up_alive(&mut self) {
        if let Some(up) = self.up.as_mut() {
            if let Some(st) = up.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                up.child = None;
                panic!("qsfs up died ({st}):\n{}", tail(&up.log, 80));
            }
        }
    }

    /// True while a `qsfs up` started by [`Chain::up`] runs.
    pub fn is_up(&self) -> bool {
        self.up.is_some()
    }

    /// The tail of the current (or last) `qsfs up` log, for failure messages.
    pub fn up_log(&self) -> String {
        match &self.up {
            Some(u) => tail(&u.log, 80),
            None => {
                let mut all: Vec<_> = std::fs::read_dir(&self.logs)
                    .map(|r| r.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default();
                all.sort();
                all.iter()
                    .rev()
                    .find(|p| p.to_string_lossy().ends_with("-up.log"))
                    .map(|p| tail(p, 80))
                    .unwrap_or_default()
            }
        }
    }

    /// SIGTERM to `qsfs up`; requires a clean exit (status 0) and the mountpoint gone.
    pub fn stop_up(&mut self) {
        let mut up = self.up.take().expect("qsfs up running");
        let st = up.signal(Signal::SIGTERM, Duration::from_secs(180));
        assert!(
            st.success(),
            "qsfs up exited with {st} after SIGTERM:\n{}",
            tail(&up.log, 80)
        );
        assert!(
            !is_mounted(&self.mnt),
            "still mounted after qsfs up exited:\n{}",
            tail(&up.log, 40)
        );
    }

    /// SIGKILL to `qsfs up`, then `fusermount3 -uz` of the dead mount.
    pub fn kill_up(&mut self) {
        self.kill_up_keep_mount();
        lazy_unmount(&self.mnt);
    }

    /// SIGKILL to `qsfs up`, leaving the dead mount in place: every access to it fails with
    /// ENOTCONN, so a writer thread stops instead of writing into the bare mountpoint
    /// directory. Call [`lazy_unmount`] once such threads are done.
    pub fn kill_up_keep_mount(&mut self) {
        let mut up = self.up.take().expect("qsfs up running");
        up.signal(Signal::SIGKILL, Duration::from_secs(60));
    }

    /// Stops `qsfs up` (SIGTERM) and starts it again: every page cache above the engine is
    /// fresh, so reads go to the engine and, for evicted segments, to the backends.
    pub fn remount(&mut self) {
        self.stop_up();
        self.up();
    }

    /// Runs a `qsfs` subcommand with the key file and the log level of the chain.
    pub fn qsfs(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("QSFS_LOG", log_level())
            .env_remove("QSFS_PASSPHRASE")
            .env_remove("QSFS_ROOT")
            .stdin(Stdio::null())
            .output()
            .expect("run qsfs")
    }

    /// `qsfs SUB --config ROOT/qsfs.toml --keyfile ROOT/qsfs.key ARGS…` with log level `log`.
    fn keyed(&self, sub: &str, args: &[&std::ffi::OsStr], log: &str) -> Output {
        Command::new(BIN)
            .arg(sub)
            .arg("--config")
            .arg(&self.config)
            .arg("--keyfile")
            .arg(&self.keyfile)
            .args(args)
            .env("QSFS_LOG", log)
            .env_remove("QSFS_PASSPHRASE")
            .env_remove("QSFS_ROOT")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run qsfs {sub}: {e}"))
    }

    /// `qsfs recover --root ROOT --config ROOT/qsfs.toml --keyfile ROOT/qsfs.key`; must succeed.
    pub fn recover(&self) -> Output {
        let out = self.keyed(
            "recover",
            &["--root".as_ref(), self.root.as_os_str()],
            &log_level(),
        );
        assert!(out.status.success(), "qsfs recover failed: {}", text(&out));
        out
    }

    /// The machine is lost: wipe ROOT but config and key, `qsfs recover`, `qsfs up`.
    pub fn recover_lost_machine(&mut self) {
        self.wipe_root();
        self.recover();
        self.up();
    }

    /// `qsfs backup --config ROOT/qsfs.toml --keyfile ROOT/qsfs.key --quiet ARGS`.
    pub fn backup(&self, args: &[&str]) -> Output {
        let mut all: Vec<&std::ffi::OsStr> = vec!["--quiet".as_ref()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        self.keyed("backup", &all, "error")
    }

    /// Deletes everything under ROOT but `qsfs.toml` and `qsfs.key`: the machine is lost, the
    /// user kept the config and the key.
    pub fn wipe_root(&self) {
        assert!(!self.is_up(), "wipe_root with qsfs up running");
        for e in std::fs::read_dir(&self.root).unwrap().flatten() {
            let p = e.path();
            if p == self.config || p == self.keyfile {
                continue;
            }
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
        let left: Vec<_> = std::fs::read_dir(&self.root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "root after wipe: {left:?}");
    }

    /// `qsfs status --root ROOT --json`, parsed; `None` if it fails or is not JSON (yet).
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.qsfs(&["status", "--root", self.root.to_str().unwrap(), "--json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Like [`Chain::status`] but panics with the command output when there is none.
    pub fn status_or_panic(&self) -> serde_json::Value {
        let out = self.qsfs(&["status", "--root", self.root.to_str().unwrap(), "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "qsfs status --json gave no JSON ({e}): {}\nup log:\n{}",
                text(&out),
                self.up_log()
            )
        })
    }

    /// Polls `qsfs status --json` until `backlog_segments` is 0 and has stayed 0 for longer
    /// than `seal_after` plus two status periods, so the segment that was still active when the
    /// writes ended has been sealed by age and uploaded too. Panics (hang guard) after
    /// `deadline`, with the last status and the log.
    pub fn wait_drained(&mut self, deadline: Duration) -> serde_json::Value {
        let quiet = Duration::from_secs(self.opts.seal_after) + Duration::from_secs(5);
        let end = Instant::now() + deadline;
        let mut zero_since: Option<Instant> = None;
        let mut last = None;
        loop {
            self.assert_up_alive();
            if let Some(s) = self.status() {
                let backlog = s["backlog_segments"].as_u64();
                match backlog {
                    Some(0) => {
                        let since = *zero_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= quiet {
                            return s;
                        }
                    }
                    _ => zero_since = None,
                }
                last = Some(s);
            }
            assert!(
                Instant::now() < end,
                "backlog did not drain within {deadline:?}; last status: {}\nup log:\n{}",
                last.map(|s| s.to_string()).unwrap_or_else(|| "none".into()),
                self.up_log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Polls status until `backlog_segments > 0` or `deadline`; returns the status seen.
    pub fn wait_backlog(&self, deadline: Duration) -> Option<serde_json::Value> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Some(s) = self.status() {
                if s["backlog_segments"].as_u64().unwrap_or(0) > 0 {
                    return Some(s);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Bytes of ROOT/engine on local disk.
    pub fn engine_bytes(&self) -> u64 {
        disk_bytes(&self.root.join("engine"))
    }

    /// Bytes on disk of every node's data directory.
    pub fn backend_disk_bytes(&self) -> u64 {
        self.nodes.iter().map(|n| disk_bytes(&n.dir)).sum()
    }

    /// Live bytes (NSINFO `data_size_bytes`) of the data and metadata namespaces of every
    /// running node.
    pub fn backend_live_bytes(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.live_bytes("data") + n.live_bytes("meta"))
            .sum()
    }

    /// Starts sampling ROOT/engine every 200 ms in a thread.
    pub fn sampler(&self) -> Sampler {
        Sampler::start(self.root.join("engine"))
    }

    /// `backup check --deep`: every object's shards read and verified.
    pub fn check_deep(&self) -> Output {
        self.backup(&["check", "--deep"])
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        // Kill `up` before the nodes and the directory go.
        self.up.take();
        lazy_unmount(&self.mnt);
        if std::thread::panicking() {
            eprintln!("--- last qsfs up log ---\n{}", self.up_log());
        }
    }
}

/// A running `qsfs up`: SIGKILLed and lazily unmounted on drop.
struct Up {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl Up {
    fn signal(&mut self, sig: Signal, wait: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "qsfs up had already exited ({st}) before {sig:?}:\n{}",
                tail(&self.log, 80)
            );
        }
        kill(Pid::from_raw(child.id() as i32), sig).expect("signal");
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "qsfs up did not exit within {wait:?} after {sig:?}:\n{}",
                    tail(&self.log, 80)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // Only a process killed here leaves its mount to clean up; after an explicit signal
        // the caller decides when the dead mount goes.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            lazy_unmount(&self.mnt);
        }
    }
}

/// `fusermount3 -u -z MNT` if it is mounted (also after the filesystem process died).
pub fn lazy_unmount(mnt: &Path) {
    if is_mounted(mnt) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The last `n` lines of a log file.
pub fn tail(p: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    let from = lines.len().saturating_sub(n);
    format!("[{}]\n{}", p.display(), lines[from..].join("\n"))
}

/// A command's exit status and output, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Bytes a directory tree occupies: per file the larger of its length and its allocated
/// blocks (a preallocated segment counts in full, a sparse one by what it holds).
pub fn disk_bytes(dir: &Path) -> u64 {
    disk_usage(dir).iter().map(|(_, b)| b).sum()
}

/// Every file under `dir` (relative path) with the bytes [`disk_bytes`] counts for it.
pub fn disk_usage(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            // Files vanish under us (eviction, compaction): skip them.
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                let name = e.path().strip_prefix(dir).map_or_else(
                    |_| e.path().display().to_string(),
                    |p| p.display().to_string(),
                );
                out.push((name, m.len().max(m.blocks() * 512)));
            }
        }
    }
    out.sort();
    out
}

/// Samples a directory's disk bytes every 200 ms until stopped; keeps the maximum.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    at_max: Arc<std::sync::Mutex<Vec<(String, u64)>>>,
    samples: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    fn start(dir: PathBuf) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let at_max = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, m, n, a) = (stop.clone(), max.clone(), samples.clone(), at_max.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let usage = disk_usage(&dir);
                let total = usage.iter().map(|(_, b)| b).sum();
                if m.fetch_max(total, Ordering::Relaxed) < total {
                    *a.lock().unwrap() = usage;
                }
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Sampler {
            stop,
            max,
            at_max,
            samples,
            handle: Some(handle),
        }
    }

    /// The maximum so far.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The files of the largest sample, one `bytes path` per line, for failure messages.
    pub fn at_max(&self) -> String {
        self.at_max
            .lock()
            .unwrap()
            .iter()
            .map(|(p, b)| format!("{b:>10} {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops sampling; returns (maximum, number of samples).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        (self.max(), self.samples.load(Ordering::Relaxed))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files through the mount

/// Expected content of files: relative path → SHA-256 and length.
pub type Expected = BTreeMap<String, (Sum, u64)>;

/// Writes `len` bytes of `random_bytes(len, seed)` to `path` (create/truncate) in 1 MiB
/// writes, then `sync_all`; returns the SHA-256 once the sync returned (the file is then
/// acknowledged durable).
pub fn write_file(path: &Path, len: usize, seed: u64) -> std::io::Result<Sum> {
    let data = random_bytes(len, seed);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    for chunk in data.chunks(MIB as usize) {
        f.write_all(chunk)?;
    }
    f.sync_all()?;
    Ok(sha256(&data))
}

/// Writes `count` files of `size` bytes named `{prefix}{i:05}` under `mnt`, seeds derived
/// from `seed`; each synced; panics on error. Returns their expected hashes.
pub fn write_files(mnt: &Path, prefix: &str, count: usize, size: usize, seed: u64) -> Expected {
    let mut out = Expected::new();
    for i in 0..count {
        let name = format!("{prefix}{i:05}");
        let s = write_file(&mnt.join(&name), size, seed.wrapping_add(i as u64))
            .unwrap_or_else(|e| panic!("writing {name}: {e}"));
        out.insert(name, (s, size as u64));
    }
    out
}

/// Reads every expected file under `mnt` and compares length and SHA-256; lists every
/// mismatch (not only the first) in the panic message.
pub fn verify_all(mnt: &Path, want: &Expected, what: &str) {
    let mut bad = Vec::new();
    for (name, (sum, len)) in want {
        match std::fs::read(mnt.join(name)) {
            Ok(b) if b.len() as u64 != *len => {
                bad.push(format!("{name}: length {} != {len}", b.len()))
            }
            Ok(b) => {
                let got = sha256(&b);
                if &got != sum {
                    bad.push(format!("{name}: sha256 {} != {}", hex(&got), hex(sum)));
                }
            }
            Err(e) => bad.push(format!("{name}: {e}")),
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} files wrong:\n{}",
        bad.len(),
        want.len(),
        bad.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Every regular file under `dir` (relative paths), recursively.
pub fn list_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// A writer thread that keeps writing synced files until told to stop or a write fails (the
/// filesystem was killed under it). Records a file as acknowledged only once its `sync_all`
/// returned.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::Mutex<Expected>>,
    attempted: Arc<std::sync::Mutex<Vec<(String, u64)>>>,
    handle: Option<JoinHandle<Option<String>>>,
}

impl Writer {
    /// Starts writing `{prefix}{i:05}` files of `size` bytes under `mnt`, at most `max` files.
    pub fn start(mnt: &Path, prefix: &str, size: usize, seed: u64, max: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(Expected::new()));
        let attempted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, a, t) = (stop.clone(), acked.clone(), attempted.clone());
        let (mnt, prefix) = (mnt.to_path_buf(), prefix.to_string());
        let handle = std::thread::spawn(move || {
            for i in 0..max {
                if s.load(Ordering::Relaxed) {
                    return None;
                }
                let name = format!("{prefix}{i:05}");
                t.lock().unwrap().push((name.clone(), size as u64));
                match write_file(&mnt.join(&name), size, seed.wrapping_add(i as u64)) {
                    Ok(sum) => {
                        a.lock().unwrap().insert(name, (sum, size as u64));
                    }
                    Err(e) => return Some(format!("{name}: {e}")),
                }
            }
            None
        });
        Writer {
            stop,
            acked,
            attempted,
            handle: Some(handle),
        }
    }

    /// Files acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until at least `n` files are acknowledged (hang guard: 5 minutes).
    pub fn wait_acked(&self, n: usize) {
        let end = Instant::now() + Duration::from_secs(300);
        while self.acked() < n {
            assert!(
                !self.handle.as_ref().is_some_and(|h| h.is_finished()),
                "writer ended after {} files",
                self.acked()
            );
            assert!(Instant::now() < end, "writer stalled at {}", self.acked());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the writer (or collects it after the filesystem died); returns the acknowledged
    /// files, the files attempted but not acknowledged, and the error that ended it.
    pub fn finish(mut self) -> (Expected, Vec<(String, u64)>, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let err = self.handle.take().and_then(|h| h.join().unwrap());
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let unacked = self
            .attempted
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| !acked.contains_key(n))
            .cloned()
            .collect();
        (acked, unacked, err)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Checks files that were attempted but never acknowledged: absent, or readable without an
/// I/O error and no longer than intended (partial content is allowed, errors are not).
pub fn check_unacked(mnt: &Path, unacked: &[(String, u64)]) {
    for (name, len) in unacked {
        let p = mnt.join(name);
        if !p.exists() {
            continue;
        }
        let b = std::fs::read(&p)
            .unwrap_or_else(|e| panic!("unacknowledged file {name} exists but is unreadable: {e}"));
        assert!(
            b.len() as u64 <= *len,
            "unacknowledged file {name} is longer ({}) than written ({len})",
            b.len()
        );
    }
}

/// Deletes `name` under `mnt` and syncs the directory.
pub fn delete_synced(mnt: &Path, name: &str) {
    let p = mnt.join(name);
    std::fs::remove_file(&p).unwrap_or_else(|e| panic!("rm {name}: {e}"));
    if let Ok(d) = File::open(p.parent().unwrap_or(mnt)) {
        let _ = d.sync_all();
    }
}
