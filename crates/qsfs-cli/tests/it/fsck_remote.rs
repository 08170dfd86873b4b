//! `qsfs fsck --store zdb://…` over a `qsfs serve` whose segment files hold damaged records:
//! they are reported (not an I/O error that stops the check), `--repair` brings them back (an
//! inode from its older version over the wire, a dirent from its listing page), and the
//! filesystem mounts again with every file's contents.

use crate::common;
use crate::mount_remote::{mount, serve};
use common::{free_port, is_mounted};
use nix::sys::signal::Signal;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use qsfs_core::Store;
use qsfs_fuse::layout::{decode, Dirent, ROOT_INO};
use qsfs_store::remote::ZdbClient;

fn fsck(port: u16, repair: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qsfs"));
    cmd.arg("fsck")
        .arg("--store")
        .arg(format!("zdb://127.0.0.1:{port}"));
    if repair {
        cmd.arg("--repair");
    }
    cmd.output().expect("run qsfs fsck")
}

fn stdout(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The live value of `key` in `ns` (read while the server runs).
fn live(port: u16, ns: &str, key: &[u8]) -> Vec<u8> {
    let c = ZdbClient::from_url(&format!("zdb://127.0.0.1:{port}")).expect("connect");
    c.get(ns, key).expect("get").expect("live").value
}

/// Flips a byte in the middle of `value`, stored after `key`, where it was written last in the
/// segment files of namespace `ns` under the server's `data` (an older identical copy, if any,
/// is left intact).
fn flip_live(data: &Path, ns: &str, key: &[u8], value: &[u8]) {
    let needle = [key, value].concat();
    let mut segments: Vec<_> = std::fs::read_dir(data.join("ns").join(ns))
        .expect("namespace directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    for path in segments.iter().rev() {
        let bytes = std::fs::read(path).expect("read segment");
        if let Some(pos) = bytes.windows(needle.len()).rposition(|w| w == needle) {
            let at = pos + key.len() + value.len() / 2;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .expect("open segment");
            f.write_all_at(&[bytes[at] ^ 0x5a], at as u64)
                .expect("flip");
            return;
        }
    }
    panic!("record of {key:?} not found in {ns}");
}

#[test]
fn damaged_records_on_a_remote_store_are_reported_repaired_and_the_files_read_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, root, mnt) = (
        tmp.path().join("data"),
        tmp.path().join("root"),
        tmp.path().join("mnt"),
    );
    let port = free_port();
    let mut server = serve(&data, port);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("victim.txt", b"the inode of this file is damaged".to_vec()),
        ("named.txt", b"the name of this file is damaged".to_vec()),
        ("small.txt", b"hello over RESP".to_vec()),
        (
            "d/big.bin",
            (0..300_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
    ];
    let mut m = mount(&root, &mnt, port);
    std::fs::create_dir(mnt.join("d")).expect("mkdir");
    for (name, content) in &files {
        std::fs::write(mnt.join(name), content).expect("write");
    }
    // A second version of the victim's inode, so that an intact older one lies before the one
    // damaged below.
    let f = std::fs::File::open(mnt.join("victim.txt")).expect("open");
    f.sync_all().expect("fsync");
    f.set_permissions(std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    f.sync_all().expect("fsync");
    drop(f);
    assert!(m.stop(Signal::SIGTERM).success(), "mount exits 0");
    assert!(!is_mounted(&mnt));

    // The two records to damage, as the server holds them now.
    let dirent_key = |name: &str| [&ROOT_INO.to_be_bytes()[..], name.as_bytes()].concat();
    let victim = live(port, "qsfs-dirent", &dirent_key("victim.txt"));
    let victim: Dirent = decode(&victim, "dirent").expect("dirent");
    let inode_key = victim.ino.to_be_bytes();
    let inode = live(port, "qsfs-inode", &inode_key);
    let named_key = dirent_key("named.txt");
    let named = live(port, "qsfs-dirent", &named_key);
    assert!(
        fsck(port, false).status.success(),
        "clean before the damage"
    );

    assert!(server.stop(Signal::SIGTERM).success(), "serve exits 0");
    flip_live(&data, "qsfs-inode", &inode_key, &inode);
    flip_live(&data, "qsfs-dirent", &named_key, &named);
    let _server = serve(&data, port);

    let check = fsck(port, false);
    let out = stdout(&check);
    assert_eq!(check.status.code(), Some(1), "problems remain: {out}");
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
    for ns in ["qsfs-inode", "qsfs-dirent"] {
        assert!(
            problems
                .iter()
                .any(|l| l.contains(ns) && l.contains(&format!("127.0.0.1:{port}"))),
            "the damage in {ns} is reported with the server: {out}"
        );
    }

    let repair = fsck(port, true);
    let out = stdout(&repair);
    assert!(repair.status.success(), "everything repaired: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("restored: ") && l.contains("qsfs-inode")),
        "the inode comes back from its older version over the wire: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("rebuilt: ") && l.contains("qsfs-dirent")),
        "the dirent is rebuilt from its listing page: {out}"
    );
    let again = fsck(port, false);
    assert!(
        again.status.success(),
        "clean after the repair: {}",
        stdout(&again)
    );
    assert!(stdout(&again).contains("clean"));

    let _m = mount(&root, &mnt, port);
    for (name, content) in &files {
        assert_eq!(
            &std::fs::read(mnt.join(name)).expect("read"),
            content,
            "{name}"
        );
    }
}
