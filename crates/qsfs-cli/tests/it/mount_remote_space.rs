//! `qsfs mount --store zdb://…` knows the server's space: `df` of the mount shows the disk of the
//! `qsfs serve` process (or the block namespace's maxsize), not an invented size, and the
//! filesystem's reserve works on that disk, so a full server still lets files be deleted, gives
//! the space back and takes new writes.

use crate::common;
use common::{content, free_port, is_mounted, write_synced, Tmpfs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A child process killed when the test ends, and the mountpoint it may have left mounted.
struct Proc {
    child: Child,
    mnt: Option<PathBuf>,
    /// Its stderr: a file, not a pipe nobody reads, which would block a chatty process.
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[&str], mnt: Option<&Path>, name: &str) -> Proc {
        let log = std::env::temp_dir().join(format!(
            "qsfs-remote-space-{}-{name}.log",
            std::process::id()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_qsfs"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn qsfs");
        Proc {
            child,
            mnt: mnt.map(Path::to_path_buf),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(m) = &self.mnt {
            if is_mounted(m) {
                let _ = Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(m)
                    .status();
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `qsfs serve` on `data` with `flags`, listening on `port`.
fn serve(data: &Path, port: u16, flags: &[&str]) -> Proc {
    let data = data.to_str().expect("utf-8 path");
    let port_s = port.to_string();
    let mut args = vec!["serve", "--port", &port_s, "--data", data];
    args.extend_from_slice(flags);
    let p = Proc::spawn(&args, None, &format!("serve-{port}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "qsfs serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// `qsfs mount MNT --store zdb://127.0.0.1:PORT` with `flags`, once mounted.
fn mount(root: &Path, mnt: &Path, port: u16, flags: &[&str]) -> Proc {
    let store = format!("zdb://127.0.0.1:{port}");
    let (mnt_s, root_s) = (
        mnt.to_str().expect("utf-8 path"),
        root.to_str().expect("utf-8 path"),
    );
    let mut args = vec!["mount", mnt_s, "--root", root_s, "--store", &store];
    args.extend_from_slice(flags);
    let p = Proc::spawn(&args, Some(mnt), &format!("mount-{port}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(mnt) {
        assert!(
            Instant::now() < deadline,
            "qsfs mount --store did not mount:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// Total and available bytes of the filesystem holding `path`.
fn df(path: &Path) -> (u64, u64) {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    let frag = st.fragment_size() as u64;
    (
        st.blocks() as u64 * frag,
        st.blocks_available() as u64 * frag,
    )
}

/// The server's data on a 96 MiB tmpfs: `df` of the mount is that disk; writing 1 MiB files
/// stops with ENOSPC while the server still has the reserve free; a file is deleted on the full
/// filesystem, deleting more gives the space back (the server compacts), and new files fit.
#[test]
fn a_remote_mount_reports_the_servers_disk_and_keeps_a_reserve_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    let _tmpfs = Tmpfs::mount(&disk, "96m");
    let (root, mnt) = (tmp.path().join("root"), tmp.path().join("mnt"));
    let port = free_port();
    let server = serve(
        &disk.join("data"),
        port,
        &[
            "--datasize",
            "4M",
            "--compact-every",
            "1",
            "--keep-history",
            "0",
        ],
    );
    let m = mount(&root, &mnt, port, &["--reserve", "16M"]);

    let (total, avail) = df(&mnt);
    let (disk_total, disk_avail) = df(&disk);
    eprintln!("df: mount {total}/{avail}, server disk {disk_total}/{disk_avail}");
    assert_eq!(total, disk_total, "the mount's size is the server's disk");
    assert!(
        avail <= disk_avail.saturating_sub(15 * MIB),
        "the reserve is left out: {avail} of {disk_avail}"
    );

    let mut kept = Vec::new();
    let mut seed = 0u64;
    let err = loop {
        assert!(seed < 100, "a 96 MiB disk took 100 MiB");
        match write_synced(&mnt.join(format!("f{seed}")), &content(seed)) {
            Ok(()) => kept.push(seed),
            Err(e) => break e,
        }
        seed += 1;
    };
    let (_, disk_left) = df(&disk);
    eprintln!(
        "{} MiB written, then {err}; {disk_left} bytes left on the server's disk",
        kept.len()
    );
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
    assert!(kept.len() >= 50, "only {} MiB fit", kept.len());
    assert!(df(&mnt).1 < MIB, "df says {} bytes fit", df(&mnt).1);
    assert!(
        disk_left >= 8 * MIB,
        "the reserve was used: {disk_left} bytes left on the server's disk"
    );
    std::fs::remove_file(mnt.join(format!("f{seed}")))
        .expect("a file is deleted on a full filesystem");

    let doomed: Vec<u64> = kept.drain(..kept.len() * 3 / 5).collect();
    for s in &doomed {
        std::fs::remove_file(mnt.join(format!("f{s}"))).expect("delete");
    }
    let want = doomed.len() as u64 * MIB / 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    while df(&mnt).1 < want {
        assert!(
            Instant::now() < deadline,
            "deleting {} MiB gave back {} bytes in 30 s; the server's log:\n{}",
            doomed.len(),
            df(&mnt).1,
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..doomed.len() / 3 {
        seed += 1;
        write_synced(&mnt.join(format!("f{seed}")), &content(seed))
            .expect("the space given back takes new writes");
        kept.push(seed);
    }
    for s in [kept[0], kept[kept.len() / 2], seed] {
        let got = std::fs::read(mnt.join(format!("f{s}"))).expect("read");
        assert!(got == content(s), "f{s} reads back other bytes");
    }
    drop(m);
}

/// A maxsize on the filesystem's block namespace is the remote mount's size.
#[test]
fn a_block_namespace_maxsize_is_the_remote_mounts_size() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, root, mnt) = (
        tmp.path().join("data"),
        tmp.path().join("root"),
        tmp.path().join("mnt"),
    );
    let port = free_port();
    let _server = serve(&data, port, &[]);
    let m = mount(&root, &mnt, port, &["--reserve", "4M"]);
    let (total, _) = df(&mnt);
    assert_ne!(total, 1 << 40, "not the invented 1 TiB");
    let disk = df(&data).0;
    assert!(
        total <= disk && disk - total < 128 << 10,
        "without a maxsize, the server's disk ({disk}) in whole blocks: {total}"
    );

    let mut c = common::Conn::open(port).expect("connect");
    c.ok(&["NSSET", "qsfs-block", "maxsize", &(32 * MIB).to_string()]);
    let (total, avail) = df(&mnt);
    assert_eq!(total, 32 * MIB, "the namespace's maxsize");
    assert!(
        (27 * MIB..=28 * MIB).contains(&avail),
        "32 MiB less the 4 MiB reserve and what the filesystem holds: {avail}"
    );
    drop(m);
}
