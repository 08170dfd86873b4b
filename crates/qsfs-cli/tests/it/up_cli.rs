//! `qsfs up`, `qsfs status` and `qsfs recover` as users run them: the real binary, temporary
//! roots, real FUSE mounts, the default local backends. Smoke tests of the interface; the
//! acceptance scenarios of the storage chain live in the chain_*.rs tests.

#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use crate::common;
use common::{free_port, is_mounted};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn qsfs() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qsfs"));
    c.env_remove("QSFS_PASSPHRASE").env_remove("QSFS_ROOT");
    c
}

/// A running `qsfs up`; killed and lazily unmounted if a test fails half way.
struct Up {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Up {
    fn start(root: &Path, mnt: &Path, extra: &[&str]) -> Up {
        Up::try_start(root, mnt, extra, None)
            .unwrap_or_else(|(status, err)| panic!("qsfs up exited with {status}: {err}"))
    }

    /// Starts `qsfs up`; with `host`, in a UTS namespace of its own whose hostname is `host`
    /// (another machine, as far as the mount lock can tell). Err: it exited before mounting,
    /// with its status and stderr.
    fn try_start(
        root: &Path,
        mnt: &Path,
        extra: &[&str],
        host: Option<&str>,
    ) -> Result<Up, (std::process::ExitStatus, String)> {
        let mut cmd = match host {
            Some(h) => {
                let mut c = Command::new("unshare");
                c.args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", h])
                    .arg(env!("CARGO_BIN_EXE_qsfs"))
                    .env_remove("QSFS_PASSPHRASE")
                    .env_remove("QSFS_ROOT");
                c
            }
            None => qsfs(),
        };
        let child = cmd
            .arg("up")
            .arg(mnt)
            .arg("--root")
            .arg(root)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qsfs up");
        let mut up = Up {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(mnt) {
            if let Some(status) = up.child.as_mut().unwrap().try_wait().unwrap() {
                let mut err = String::new();
                let mut c = up.child.take().unwrap();
                c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                let _ = c.wait();
                return Err((status, err));
            }
            assert!(Instant::now() < deadline, "qsfs up did not mount in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(up)
    }

    /// Sends `sig` and waits for the exit; returns the status and what it printed on stderr.
    fn stop(&mut self, sig: Signal) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), sig).expect("signal");
        let status = child.wait().expect("wait");
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mnt)
                .status();
        }
    }
}

fn status_json(root: &Path) -> serde_json::Value {
    let out = qsfs()
        .args(["status", "--json", "--root"])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn up_with_nothing_creates_config_and_key_mounts_reports_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut up = Up::start(&root, &mnt, &["--metrics", &metrics, "--reserve", "200M"]);

    // df leaves the reserve out: what the mount offers is the disk's available space less it.
    let st = |p: &Path| nix::sys::statvfs::statvfs(p).unwrap();
    let (disk, fs) = (st(&root), st(&mnt));
    let bytes = |blocks: u64, st: &nix::sys::statvfs::Statvfs| blocks * st.fragment_size();
    let reserve = (200u64 << 20).min(bytes(disk.blocks(), &disk) / 4);
    let shown =
        bytes(disk.blocks_available(), &disk).saturating_sub(bytes(fs.blocks_available(), &fs));
    assert!(
        shown.abs_diff(reserve) < 16 << 20,
        "the mount shows {shown} bytes less than the disk, the reserve is {reserve}"
    );

    // Config and a private key file, generated.
    let config = std::fs::read_to_string(root.join("qsfs.toml")).unwrap();
    assert!(config.contains("node3"), "{config}");
    let key = std::fs::metadata(root.join("qsfs.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    let data = pattern(3 << 20, 1);
    std::fs::write(mnt.join("f.bin"), &data).unwrap();
    assert_eq!(std::fs::read(mnt.join("f.bin")).unwrap(), data);

    // The status file is written every ~2 s: wait for the one that sees the mount.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = status_json(&root);
        if s["running"] == true {
            break s;
        }
        assert!(Instant::now() < deadline, "status never running: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let backends = status["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 4, "{status}");
    assert!(backends.iter().all(|b| b["up"] == true), "{status}");
    for field in [
        "local_bytes",
        "backlog_segments",
        "backlog_bytes",
        "disk_total",
        "disk_available",
    ] {
        assert!(status[field].is_u64(), "{field}: {status}");
    }

    let metrics = scrape(port);
    assert_eq!(
        metrics.matches("qsfs_backend_up{backend=").count(),
        4,
        "{metrics}"
    );
    assert!(metrics.contains("} 1"), "{metrics}");
    assert!(
        metrics.contains("qsfs_fuse_ops_total{op=\"write\"}"),
        "{metrics}"
    );

    let (exit, err) = up.stop(Signal::SIGTERM);
    assert!(exit.success(), "{exit}: {err}");
    assert!(err.contains("BACK THIS FILE UP"), "{err}");
    assert!(!is_mounted(&mnt));
    // Offline now: still answers, and says so.
    let s = status_json(&root);
    assert_eq!(s["running"], false, "{s}");
    assert_eq!(s["backends"].as_array().unwrap().len(), 4, "{s}");
    // The key itself is never printed.
    let key_text = std::fs::read_to_string(root.join("qsfs.key")).unwrap();
    assert!(!err.contains(key_text.trim()));
}

#[test]
fn recover_into_an_empty_root_then_up_serves_the_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    let backends = tmp.path().join("backends");
    std::fs::create_dir_all(&root).unwrap();
    // The default local config, with backends outside the root (they play the remote nodes)
    // and small, quickly sealed segments so everything reaches them.
    let config = qsfs_backup::config::Config::default_local_toml(&backends).replace(
        "# segment_size = \"64MiB\"",
        "segment_size = \"1MiB\"\nseal_after = 1",
    );
    assert!(config.contains("seal_after = 1"), "{config}");
    let config_path = tmp.path().join("qsfs.toml");
    std::fs::write(&config_path, config).unwrap();
    let keyfile = tmp.path().join("key");
    std::fs::write(&keyfile, "correct horse battery staple\n").unwrap();
    let cfg = config_path.to_str().unwrap();
    let key = keyfile.to_str().unwrap();

    let files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("f{i}"), pattern(700_000 * (i + 1), i as u64 + 7)))
        .collect();
    {
        let mut up = Up::start(&root, &mnt, &["--config", cfg, "--keyfile", key]);
        std::fs::create_dir(mnt.join("d")).unwrap();
        for (name, data) in &files {
            let mut f = std::fs::File::create(mnt.join("d").join(name)).unwrap();
            f.write_all(data).unwrap();
            f.sync_all().unwrap();
        }
        // Wait until the backlog is empty after the last seal (seal_after = 1 s).
        std::thread::sleep(Duration::from_secs(3));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = status_json(&root);
            if s["running"] == true
                && s["backlog_segments"] == 0
                && s["idle"] == true
                && s["uploaded_segments"] != 0
            {
                break;
            }
            assert!(Instant::now() < deadline, "backlog never drained: {s}");
            std::thread::sleep(Duration::from_millis(500));
        }
        // Written after the backups were current, and not synced: a clean stop seals and
        // uploads it before exiting.
        std::fs::write(mnt.join("d/late"), b"written just before the stop").unwrap();
        let (exit, err) = up.stop(Signal::SIGTERM);
        assert!(exit.success(), "{err}");
    }

    // Recover refuses a root that still has an engine.
    let out = qsfs()
        .args(["recover", "--config", cfg, "--keyfile", key, "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    // A fresh machine: nothing but the config and the key.
    let fresh = tmp.path().join("fresh");
    let out = qsfs()
        .args(["recover", "--config", cfg, "--keyfile", key, "--root"])
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("recovered"), "{text}");

    let mnt2 = tmp.path().join("mnt2");
    let mut up = Up::start(&fresh, &mnt2, &["--config", cfg, "--keyfile", key]);
    for (name, data) in &files {
        let back = std::fs::read(mnt2.join("d").join(name)).unwrap();
        assert!(back == *data, "{name} differs after recovery");
    }
    assert_eq!(
        std::fs::read(mnt2.join("d/late")).unwrap(),
        b"written just before the stop"
    );
    let (exit, err) = up.stop(Signal::SIGINT);
    assert!(exit.success(), "{err}");
}

/// The default local config with its backends in `backends` (outside any root: they play the
/// remote nodes) and small, quickly sealed segments; returns (config path, key path).
fn local_config(dir: &Path, backends: &Path) -> (String, String) {
    let config = qsfs_backup::config::Config::default_local_toml(backends).replace(
        "# segment_size = \"64MiB\"",
        "segment_size = \"1MiB\"\nseal_after = 1",
    );
    assert!(config.contains("seal_after = 1"), "{config}");
    let config_path = dir.join(format!(
        "{}.toml",
        backends.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&config_path, config).unwrap();
    let keyfile = dir.join("key");
    std::fs::write(&keyfile, "correct horse battery staple\n").unwrap();
    (
        config_path.to_str().unwrap().to_string(),
        keyfile.to_str().unwrap().to_string(),
    )
}

/// Waits until `qsfs status` of the running `up` on `root` reports everything uploaded.
fn wait_idle(root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status_json(root);
        if s["running"] == true && s["backlog_segments"] == 0 && s["idle"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "backlog never drained: {s}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_mount_lock_of_another_host_needs_force_except_after_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, key) = local_config(tmp.path(), &tmp.path().join("backends"));
    let args = ["--config", cfg.as_str(), "--keyfile", key.as_str()];
    let (root, mnt) = (tmp.path().join("root"), tmp.path().join("mnt"));
    let data = pattern(1_500_000, 11);

    // The machine that is lost: it mounts (taking the lock under its host name), writes,
    // its backups become current, and it dies without releasing the lock.
    let mut lost = Up::try_start(&root, &mnt, &args, Some("qsfs-lost-host")).unwrap();
    let mut f = std::fs::File::create(mnt.join("f")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(1500)); // past seal_after: a cut with the file
    wait_idle(&root);
    let _ = lost.stop(Signal::SIGKILL);
    drop(lost);

    // A fresh machine recovers from the backups, which hold the lost host's lock.
    let fresh = tmp.path().join("fresh");
    let out = qsfs()
        .args(["recover", "--config", &cfg, "--keyfile", &key, "--root"])
        .arg(&fresh)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("mount lock"), "{text}");
    // Without what recover left for it, `up` would refuse the restored lock...
    let marker = fresh.join("takeover");
    std::fs::rename(&marker, tmp.path().join("takeover.aside")).unwrap();
    let mnt2 = tmp.path().join("mnt2");
    let (_, err) = Up::try_start(&fresh, &mnt2, &args, None)
        .err()
        .expect("the restored lock of another host was not checked");
    assert!(err.contains("qsfs-lost-host"), "{err}");
    // ...with it, recover is the take-over and `up` needs no --force.
    std::fs::rename(tmp.path().join("takeover.aside"), &marker).unwrap();
    let mut up = Up::start(&fresh, &mnt2, &args);
    assert_eq!(std::fs::read(mnt2.join("f")).unwrap(), data);
    assert!(!marker.exists(), "the take-over is done once");
    let (exit, err) = up.stop(Signal::SIGTERM);
    assert!(exit.success(), "{err}");
    assert!(err.contains("took over the mount lock"), "{err}");

    // The lost machine's own root on this host: the other host's lock is refused, `--force`
    // takes it over.
    let (status, err) = Up::try_start(&root, &mnt, &args, None)
        .err()
        .expect("qsfs up mounted over another host's lock without --force");
    assert!(!status.success());
    assert!(
        err.contains("qsfs-lost-host") && err.contains("--force"),
        "{err}"
    );
    let mut forced = Up::start(&root, &mnt, &[&args[..], &["--force"]].concat());
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), data);
    let (exit, err) = forced.stop(Signal::SIGTERM);
    assert!(exit.success(), "{err}");
}

/// Kills a child process when dropped (a failing test leaves nothing running).
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_with_a_backup_config_offloads_what_a_separate_mount_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let backends = tmp.path().join("backends");
    let config = qsfs_backup::config::Config::default_local_toml(&backends).replace(
        "# segment_size = \"64MiB\"",
        "segment_size = \"1MiB\"\nseal_after = 1",
    );
    let config_path = tmp.path().join("qsfs.toml");
    std::fs::write(&config_path, config).unwrap();
    let keyfile = tmp.path().join("key");
    std::fs::write(&keyfile, "separate processes\n").unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let server = qsfs()
        .args(["serve", "--port", &port.to_string(), "--data"])
        .arg(tmp.path().join("data"))
        .arg("--backup-config")
        .arg(&config_path)
        .arg("--keyfile")
        .arg(&keyfile)
        .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Reap(server);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "qsfs serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mnt = tmp.path().join("mnt");
    let mount = qsfs()
        .arg("mount")
        .arg(&mnt)
        .args(["--store", &format!("zdb://127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut mount = Reap(mount);
    while !is_mounted(&mnt) {
        assert!(Instant::now() < deadline, "qsfs mount did not mount");
        std::thread::sleep(Duration::from_millis(50));
    }
    let data = pattern(4 << 20, 3);
    let mut f = std::fs::File::create(mnt.join("f")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);

    // The server's tier uploads what the mount wrote: sealed segments show up as offloaded.
    let metric = |body: &str, name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = scrape(metrics_port);
        assert_eq!(body.matches("qsfs_backend_up{").count(), 4, "{body}");
        if metric(&body, "qsfs_offloaded_bytes_total") >= data.len() as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing offloaded: {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), data);
    kill(Pid::from_raw(mount.0.id() as i32), Signal::SIGTERM).unwrap();
    assert!(mount.0.wait().unwrap().success());
}
