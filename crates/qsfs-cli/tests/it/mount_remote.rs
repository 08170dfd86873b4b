//! `qsfs mount --store zdb://…`: the filesystem living on a separate `qsfs serve` process, the
//! classic multi-process topology of 0-db-fs over 0-db.

use crate::common;
use common::{free_port, is_mounted};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (and its mountpoint lazily unmounted) when the test ends.
pub(crate) struct Proc {
    child: Option<Child>,
    mnt: Option<PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(m) = &self.mnt {
            if is_mounted(m) {
                let _ = Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(m)
                    .status();
            }
        }
    }
}

impl Proc {
    pub(crate) fn stop(&mut self, sig: Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), sig).expect("signal");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit after {sig:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub(crate) fn serve(data: &Path, port: u16) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_qsfs"))
        .args(["serve", "--port", &port.to_string(), "--data"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qsfs serve");
    let p = Proc {
        child: Some(child),
        mnt: None,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "qsfs serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

pub(crate) fn mount(root: &Path, mnt: &Path, port: u16) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_qsfs"))
        .arg("mount")
        .arg(mnt)
        .arg("--root")
        .arg(root)
        .arg("--store")
        .arg(format!("zdb://127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qsfs mount");
    let p = Proc {
        child: Some(child),
        mnt: Some(mnt.to_path_buf()),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(mnt) {
        assert!(
            Instant::now() < deadline,
            "qsfs mount --store did not mount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// NSLIST through a raw RESP exchange: proof that the data lives on the server.
fn namespaces(port: u16) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"*1\r\n$6\r\nNSLIST\r\n").expect("send");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("read");
    let n: usize = line.trim_start_matches('*').trim().parse().expect("array");
    (0..n)
        .map(|_| {
            let mut len = String::new();
            let mut name = String::new();
            r.read_line(&mut len).expect("len");
            r.read_line(&mut name).expect("name");
            name.trim_end().to_string()
        })
        .collect()
}

#[test]
fn a_filesystem_on_qsfs_serve_survives_remount_and_server_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, root, mnt) = (
        tmp.path().join("data"),
        tmp.path().join("root"),
        tmp.path().join("mnt"),
    );
    let port = free_port();
    let mut server = serve(&data, port);

    let content: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut m = mount(&root, &mnt, port);
    std::fs::create_dir_all(mnt.join("a/b")).expect("mkdir");
    std::fs::write(mnt.join("a/b/big.bin"), &content).expect("write");
    std::fs::write(mnt.join("small.txt"), b"hello over RESP").expect("write");
    std::os::unix::fs::symlink("a/b/big.bin", mnt.join("link")).expect("symlink");
    assert!(
        m.stop(Signal::SIGTERM).success(),
        "mount exits 0 on SIGTERM"
    );
    assert!(!is_mounted(&mnt));

    let ns = namespaces(port);
    assert!(
        ns.iter().any(|n| n == "qsfs-block"),
        "filesystem namespaces on the server: {ns:?}"
    );

    // Restart the server on the same data: the filesystem is still all there.
    assert!(
        server.stop(Signal::SIGTERM).success(),
        "serve exits 0 on SIGTERM"
    );
    let _server = serve(&data, port);
    let _m = mount(&root, &mnt, port);
    assert_eq!(
        std::fs::read(mnt.join("a/b/big.bin")).expect("read"),
        content
    );
    assert_eq!(
        std::fs::read(mnt.join("small.txt")).expect("read"),
        b"hello over RESP"
    );
    assert_eq!(
        std::fs::read_link(mnt.join("link")).expect("readlink"),
        Path::new("a/b/big.bin")
    );
    assert_eq!(
        std::fs::read(mnt.join("link"))
            .expect("read via link")
            .len(),
        content.len()
    );
}

#[test]
fn an_unreachable_store_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port(); // nothing listens there
    let url = format!("zdb://sekrit@127.0.0.1:{port}");
    // On the command line, and from the environment, where `ps` does not show it.
    for from_env in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qsfs"));
        cmd.arg("mount")
            .arg(tmp.path().join("mnt"))
            .arg("--root")
            .arg(tmp.path().join("root"));
        if from_env {
            cmd.env("QSFS_STORE", &url);
        } else {
            cmd.arg("--store").arg(&url);
        }
        let out = cmd.output().expect("run qsfs mount");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("127.0.0.1:{port}")),
            "names the server (from_env {from_env}): {err}"
        );
        assert!(!err.contains("sekrit"), "never prints the password: {err}");
    }
}
