//! `qsfs mount` as users run it: the real binary, a temporary root, a real FUSE mount.

use crate::common;
use common::{content, is_mounted, write_synced, Tmpfs};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `qsfs mount`; killed and lazily unmounted if a test fails half way.
struct Running {
    child: Option<Child>,
    mnt: PathBuf,
    /// Its stderr: a file, not a pipe nobody reads, which would block a chatty mount.
    log: PathBuf,
}

impl Running {
    fn start(root: &Path, mnt: &Path) -> Running {
        Running::start_with(root, mnt, &[])
    }

    fn start_with(root: &Path, mnt: &Path, args: &[&str]) -> Running {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = std::env::temp_dir().join(format!("qsfs-mount-{}-{n}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_qsfs"))
            .arg("mount")
            .arg(mnt)
            .arg("--root")
            .arg(root)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("mount log"))
            .spawn()
            .expect("spawn qsfs mount");
        let r = Running {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            assert!(
                Instant::now() < deadline,
                "qsfs mount did not mount in time"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        r
    }

    fn signal(&mut self, sig: Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), sig).expect("signal");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "qsfs mount did not exit after {sig:?}; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mnt)
                .status();
        }
    }
}

#[test]
fn mount_write_read_sigterm_and_remount() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("does/not/exist/yet");
    let mut m = Running::start(&root, &mnt);
    std::fs::write(mnt.join("hello.txt"), b"hello from qsfs").unwrap();
    std::fs::create_dir(mnt.join("dir")).unwrap();
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).unwrap(),
        b"hello from qsfs"
    );
    assert!(
        root.join("engine").is_dir(),
        "engine data lives under ROOT/engine"
    );
    let status = m.signal(Signal::SIGTERM);
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(!is_mounted(&mnt), "unmounted on exit");
    drop(m);

    let mut m = Running::start(&root, &mnt);
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).unwrap(),
        b"hello from qsfs"
    );
    assert!(mnt.join("dir").is_dir());
    // A second mount of the same root is refused with a clear message.
    let other = tmp.path().join("other");
    let out = Command::new(env!("CARGO_BIN_EXE_qsfs"))
        .arg("mount")
        .arg(&other)
        .arg("--root")
        .arg(&root)
        .output()
        .unwrap();
    assert!(!out.status.success(), "second mount must fail");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("lock") || err.contains("already"),
        "unclear message: {err}"
    );
    assert!(!is_mounted(&other));
    let status = m.signal(Signal::SIGINT);
    assert!(status.success(), "exit status after SIGINT: {status:?}");
    assert!(!is_mounted(&mnt));
}

/// A process whose working directory is in the mount makes the unmount at SIGTERM fail with
/// EBUSY. The mount must not serve on forever: it detaches lazily, ends once that process is
/// gone, and has flushed everything.
#[test]
fn sigterm_while_the_mount_is_busy_still_ends_the_process() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    let mut m = Running::start(&root, &mnt);
    std::fs::write(mnt.join("f"), b"written before the signal").unwrap();
    let mut holder = Command::new("sleep")
        .arg("8")
        .current_dir(&mnt)
        .spawn()
        .unwrap();
    let status = m.signal(Signal::SIGTERM);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(!is_mounted(&mnt), "still mounted after exit");
    drop(m);
    let mut m = Running::start(&root, &mnt);
    assert_eq!(
        std::fs::read(mnt.join("f")).unwrap(),
        b"written before the signal"
    );
    let status = m.signal(Signal::SIGTERM);
    assert!(status.success(), "{status:?}");
}

#[test]
fn external_unmount_ends_the_process_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    let mut m = Running::start(&root, &mnt);
    std::fs::write(mnt.join("f"), b"x").unwrap();
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = m.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "did not exit after fusermount3 -u"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}

fn qsfs_umount(mnt: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qsfs"))
        .arg("umount")
        .arg(mnt)
        .output()
        .expect("run qsfs umount")
}

/// `qsfs umount` returns only once the mount's process has flushed and exited, refuses a busy
/// mount, a directory that is not mounted and a mount that is not qsfs, each with its reason.
#[test]
fn qsfs_umount_waits_for_the_final_flush_and_says_why_it_cannot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    let mut m = Running::start(&root, &mnt);
    // Unsynced data: the mount's final flush has work to do after the unmount.
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(mnt.join("big"), &data).unwrap();

    let mut holder = Command::new("sleep")
        .arg("30")
        .current_dir(&mnt)
        .spawn()
        .unwrap();
    let out = qsfs_umount(&mnt);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a busy mount must be refused: {err}"
    );
    assert!(err.contains("busy"), "no reason given: {err}");
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(
        std::fs::read(mnt.join("big")).unwrap().len(),
        data.len(),
        "still served"
    );

    let out = qsfs_umount(&mnt);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = m.child.take().unwrap();
    let status = child.try_wait().unwrap();
    assert!(
        matches!(status, Some(s) if s.success()),
        "qsfs umount returned before the mount's process ended: {status:?}"
    );
    assert!(!is_mounted(&mnt));

    let out = qsfs_umount(&mnt);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("not mounted"), "{err}");
    let out = qsfs_umount(Path::new("/"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("not a qsfs mount"), "{err}");

    drop(m);
    let mut m = Running::start(&root, &mnt);
    assert!(
        std::fs::read(mnt.join("big")).unwrap() == data,
        "data after the remount"
    );
    let status = m.signal(Signal::SIGTERM);
    assert!(status.success(), "{status:?}");
}

/// Walks the whole tree and reads every file: after a crash nothing may be unreadable.
fn read_everything(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("walk the tree") {
        let e = e.expect("walk the tree");
        let t = e.file_type().expect("walk the tree");
        if t.is_dir() {
            n += read_everything(&e.path());
        } else if t.is_file() {
            std::fs::read(e.path()).expect("walk the tree");
            n += 1;
        }
    }
    n
}

/// `qsfs fsck` of an unmounted root; panics with its report unless the filesystem is clean.
fn fsck_clean(root: &Path, round: u32) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_qsfs"))
        .arg("fsck")
        .arg("--root")
        .arg(root)
        .stdin(Stdio::null())
        .output()
        .expect("run qsfs fsck");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && report.contains("clean"),
        "round {round}: fsck after the crash and remount is not clean ({:?}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

#[test]
fn fsynced_data_survives_sigkill_and_fsck_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("crash test seed {seed}");
    let mut rng = seed | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut synced: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for round in 0..20u32 {
        let mut m = Running::start(&root, &mnt);
        let dir = mnt.join(format!("round{round}"));
        std::fs::create_dir(&dir).unwrap();
        let files = 100 + next(200) as u32;
        for i in 0..files {
            std::fs::write(dir.join(format!("f{i}")), format!("{round}:{i}")).unwrap();
        }
        // Some files renamed, one big file fsync'd, then the directory fsync'd.
        for i in (0..files).filter(|i| i % 7 == 0) {
            std::fs::rename(dir.join(format!("f{i}")), dir.join(format!("r{i}"))).unwrap();
        }
        let big = vec![(round % 251) as u8; 1 + next(3 << 20) as usize];
        let mut f = std::fs::File::create(dir.join("big")).unwrap();
        f.write_all(&big).unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::fs::File::open(&dir).unwrap().sync_all().unwrap();
        for i in 0..files {
            let name = if i % 7 == 0 {
                format!("r{i}")
            } else {
                format!("f{i}")
            };
            synced.push((
                PathBuf::from(format!("round{round}/{name}")),
                format!("{round}:{i}").into_bytes(),
            ));
        }
        synced.push((PathBuf::from(format!("round{round}/big")), big));
        // Unsynced work still going on when the process dies: new files and directories, data
        // past the synced end, a truncated copy, renames and removals in a scratch directory.
        let scratch = mnt.join(format!("scratch{round}"));
        let _ = std::fs::create_dir(&scratch);
        for i in 0..next(100) {
            let _ = std::fs::write(dir.join(format!("late{i}")), b"late");
            let _ = std::fs::write(scratch.join(format!("s{i}")), vec![7u8; 20_000]);
            if i % 3 == 0 {
                let _ =
                    std::fs::rename(scratch.join(format!("s{i}")), scratch.join(format!("t{i}")));
            }
            if i % 5 == 0 {
                let _ = std::fs::remove_file(scratch.join(format!("t{i}")));
            }
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("big"))
        {
            let _ = f.write_all(&vec![1u8; 300_000]);
        }
        std::thread::sleep(Duration::from_millis(next(150)));
        let status = m.signal(Signal::SIGKILL);
        assert!(!status.success());
        // A killed FUSE server leaves a dead mount behind; clear it like an operator would.
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&mnt)
            .status();
        drop(m);
        let mut m = Running::start(&root, &mnt);
        // This round's files, a sample of the earlier ones, and everything in the last round:
        // reading the whole tree every round would make the test quadratic.
        let this_round = synced.len() - (files as usize + 1);
        let last = round == 19;
        let sample: Vec<&(PathBuf, Vec<u8>)> = synced
            .iter()
            .enumerate()
            .filter(|(i, _)| last || *i >= this_round || next(20) == 0)
            .map(|(_, e)| e)
            .collect();
        for (path, content) in sample {
            let got = std::fs::read(mnt.join(path))
                .unwrap_or_else(|e| panic!("round {round}: {}: {e}", path.display()));
            // The big file may have kept some of the unsynced append after its synced bytes.
            let same = if path.ends_with("big") {
                got.get(..content.len()) == Some(&content[..])
            } else {
                got == *content
            };
            assert!(same, "round {round}: {} differs", path.display());
        }
        if last {
            assert!(read_everything(&mnt) >= synced.len());
        } else {
            assert!(read_everything(&dir) > files as usize);
            // Never synced: it may or may not have survived, but what is there must read.
            if scratch.exists() {
                read_everything(&scratch);
            }
        }
        let status = m.signal(Signal::SIGTERM);
        assert!(status.success(), "round {round}: unmount: {status:?}");
        drop(m);
        fsck_clean(&root, round);
    }
}

#[test]
fn an_unreasonable_thread_count_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in ["mount", "up"] {
        let out = Command::new(env!("CARGO_BIN_EXE_qsfs"))
            .arg(cmd)
            .arg(tmp.path().join("mnt"))
            .arg("--root")
            .arg(tmp.path().join("root"))
            .args(["--threads", "100000"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("from 0 to 256"), "{cmd}: {err}");
        assert!(!tmp.path().join("root").exists(), "{cmd} created its root");
    }
}

fn available(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// A disk that fills up: writes fail with ENOSPC before the reserve is used (so deleting still
/// works), `df` says nothing more fits, deleting gives the space back within seconds although
/// every segment stays 60 % live (the threshold compaction and the history retention alone
/// would keep it), the space takes new writes, and no fsync'd byte is lost, across a remount.
#[test]
fn a_full_disk_refuses_writes_and_deleting_makes_room_again() {
    const MIB: u64 = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    let _tmpfs = Tmpfs::mount(&disk, "64m");
    let root = disk.join("root");
    let mnt = tmp.path().join("mnt");
    let args = ["--segment-size", "4M", "--reserve", "8M"];
    let mut m = Running::start_with(&root, &mnt, &args);

    let mut kept = std::collections::BTreeSet::new();
    let mut seed = 0u64;
    let err = loop {
        assert!(seed < 100, "a 64 MiB disk took 100 MiB");
        match write_synced(&mnt.join(format!("f{seed}")), &content(seed)) {
            Ok(()) => kept.insert(seed),
            Err(e) => break e,
        };
        seed += 1;
    };
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
    assert!(kept.len() >= 30, "only {} MiB fit", kept.len());
    assert!(
        available(&mnt) < MIB,
        "df says {} bytes fit",
        available(&mnt)
    );
    assert!(
        available(&disk) >= 4 * MIB,
        "the reserve was used: {} bytes left on the disk",
        available(&disk)
    );
    let failed = mnt.join(format!("f{seed}"));
    std::fs::remove_file(&failed).expect("a file is deleted on a full disk");

    let doomed: Vec<u64> = kept.iter().copied().filter(|s| s % 5 < 2).collect();
    for s in &doomed {
        std::fs::remove_file(mnt.join(format!("f{s}"))).unwrap();
        kept.remove(s);
    }
    let want = doomed.len() as u64 * MIB * 3 / 4;
    let deadline = Instant::now() + Duration::from_secs(60);
    while available(&mnt) < want {
        assert!(
            Instant::now() < deadline,
            "deleting {} MiB gave back {} bytes in 60 s; the mount's log:\n{}",
            doomed.len(),
            available(&mnt),
            std::fs::read_to_string(&m.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..doomed.len() / 2 {
        seed += 1;
        write_synced(&mnt.join(format!("f{seed}")), &content(seed))
            .expect("the space given back takes new writes");
        kept.insert(seed);
    }

    let check = |mnt: &Path| {
        let names: std::collections::BTreeSet<String> = std::fs::read_dir(mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let want: std::collections::BTreeSet<String> =
            kept.iter().map(|s| format!("f{s}")).collect();
        assert_eq!(names, want);
        for s in &kept {
            let got = std::fs::read(mnt.join(format!("f{s}"))).unwrap();
            assert!(got == content(*s), "f{s} has other bytes");
        }
    };
    check(&mnt);
    let status = m.signal(Signal::SIGTERM);
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    drop(m);
    let mut m = Running::start_with(&root, &mnt, &args);
    check(&mnt);
    let status = m.signal(Signal::SIGTERM);
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

/// A write by another user clears the setuid bit (the filesystem does it, under
/// `FUSE_HANDLE_KILLPRIV_V2`), and a `stat` right after the write shows it: the kernel is told
/// its cached attributes are stale. It went on showing the old mode until they timed out (1 s).
#[test]
fn a_write_by_another_user_clears_setuid_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Let uid 65534 reach the mount point.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _m = Running::start_with(&root, &mnt, &["-o", "allow_other"]);
    let f = mnt.join("prog");
    let sh = |script: String, nobody: bool| {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        if nobody {
            use std::os::unix::process::CommandExt;
            c.uid(65534).gid(65534);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for round in 0..3 {
        let before = sh(
            format!(
                "echo {round} > {0} && chmod 4777 {0} && stat -c %a {0}",
                f.display()
            ),
            false,
        );
        assert_eq!(before, "4777");
        sh(format!("echo more >> {}", f.display()), true);
        assert_eq!(sh(format!("stat -c %a {}", f.display()), false), "777");
    }
}
