//! POSIX ACLs on a real mount, with the real `setfacl`/`getfacl`: the kernel enforces them
//! (FUSE_POSIX_ACL), the filesystem keeps them in step with chmod and inherits default ACLs.
//! ext4 (a directory of /var/tmp) is the oracle: the same steps must print the same.
//!
//! Everything that depends on the umask runs in a child shell: the umask is per process and
//! the other tests of this binary run in parallel threads. The checks run on the embedded
//! engine and over a `qsfs serve` server, like the POSIX suite's.

// The checks are test bodies, run by the tests `on_both!` makes.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::{on_both, On};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

on_both!(
    acl_steps_match_ext4_and_survive_remount,
    acls_are_enforced_for_other_users,
    an_acl_set_from_outside_the_group_drops_setgid_as_on_ext4,
    xattr_namespaces_match_ext4_for_root_and_others,
);

/// Runs `script` with `sh` in `dir`; returns stdout and stderr together (the errors are part
/// of what is compared).
fn sh_in(dir: &Path, script: &str) -> String {
    both(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("run sh"),
    )
}

/// A command's stdout, then its stderr.
fn both(out: std::process::Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s
}

/// The same steps on both sides: named entries, chmod against the mask, default ACLs
/// inherited by files, fifos, subdirectories (nested), a symlink that takes none, the umask
/// with and without a default ACL, an ACL equal to a mode, `setfacl -b`/`-k`, a default ACL
/// on a file, removing an absent ACL.
const STEPS: &str = r#"
umask 022
mkdir d; touch d/plain; mkdir d/plaindir
setfacl -m u:65534:rw,g:100:r d/plain; getfacl -c d/plain; stat -c '%A' d/plain
chmod g-w d/plain; getfacl -c d/plain; stat -c '%A' d/plain
chmod 640 d/plain; getfacl -c d/plain
setfacl -d -m u:65534:rwx,g::r-x,o::- d/plaindir; getfacl -c d/plaindir
umask 077
touch d/plaindir/f; mkdir d/plaindir/sub; mkdir d/plaindir/sub/nested
touch d/plaindir/sub/nested/g; ln -s f d/plaindir/l; mkfifo d/plaindir/fifo
mkdir -m 0700 d/plaindir/narrow
for f in f sub sub/nested sub/nested/g fifo narrow; do
  echo "== $f"; stat -c '%A' d/plaindir/$f; getfacl -c d/plaindir/$f
done
stat -c '%A' d/plaindir/l
umask 027; touch d/um; mkdir d/umd; stat -c '%A %n' d/um d/umd
setfacl -b d/plain; getfacl -c d/plain; stat -c '%A' d/plain
setfacl -m u::rw,g::r,o::r d/um; getfacl -c d/um; stat -c '%A' d/um
python3 -c 'import os; print(sorted(os.listxattr("d/um")))'
setfacl -d -m u::rwx d/um 2>&1 | sed 's/^.*: //'
setfacl -k d/plaindir; getfacl -c d/plaindir
python3 -c 'import os; os.removexattr("d/um", "system.posix_acl_access"); print("absent: ok")'
"#;

/// `getfacl -R` of the tree plus the modes, to compare before and after a remount.
const DUMP: &str = "getfacl -R -c -p d 2>&1; find d | sort | xargs stat -c '%A %n'";

fn acl_steps_match_ext4_and_survive_remount(on: On) {
    let mut f = on.fixture();
    let oracle = tempfile::tempdir_in("/var/tmp").expect("ext4 directory");
    let on_ext4 = sh_in(oracle.path(), STEPS);
    let on_qsfs = sh_in(&f.mnt, STEPS);
    assert_eq!(on_qsfs, on_ext4, "qsfs (left) against ext4 (right)");
    // The oracle itself must have done what the steps are about, or the comparison says
    // nothing (an ext4 without ACLs would print errors on both sides alike).
    for want in [
        "user:nobody:rw-\t#effective:r--",
        "mask::r--",
        "default:user:nobody:rwx",
        "-rw-rw----",
        "drwxrwx---",
        "-rw-r----- d/um",
        "drwxr-x--- d/umd",
        "Only directories can have default ACLs",
        "absent: ok",
    ] {
        assert!(on_ext4.contains(want), "{want:?} missing from:\n{on_ext4}");
    }
    let before = sh_in(&f.mnt, DUMP);
    assert!(before.contains("default:mask::rwx"), "{before}");
    f.remount();
    assert_eq!(sh_in(&f.mnt, DUMP), before, "ACLs after a remount");
}

/// Runs `script` with `sh` in `dir` as uid/gid 65534 (no supplementary groups).
fn nobody_sh(dir: &Path, script: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run sh as nobody")
}

/// Runs `script` as uid/gid 65534; true if it succeeded.
fn as_nobody(dir: &Path, script: &str) -> bool {
    nobody_sh(dir, script).status.success()
}

fn acls_are_enforced_for_other_users(on: On) {
    let f = on.with(qsfs_fuse::MountOptions {
        allow_other: true,
        ..Default::default()
    });
    // The fixture's temporary directory is 0700: let uid 65534 reach the mount point.
    let parent = f.mnt.parent().expect("mount point parent");
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = &f.mnt;
    let root = |s: &str| {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(s)
            .current_dir(d)
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    root("umask 022; echo secret > f; chmod 600 f");
    assert!(!as_nobody(d, "cat f"), "mode 0600 keeps others out");
    root("setfacl -m u:65534:r f");
    assert!(as_nobody(d, "cat f"), "a named-user entry grants read");
    assert!(!as_nobody(d, "echo x >> f"), "but not write");
    root("setfacl -m u:65534:rw f");
    assert!(as_nobody(d, "echo x >> f"), "rw granted");
    root("chmod g-w f");
    assert!(!as_nobody(d, "echo y >> f"), "chmod g-w lowers the mask");
    assert!(as_nobody(d, "cat f"), "read still within the mask");
    root("setfacl -b f");
    assert!(!as_nobody(d, "cat f"), "setfacl -b removes the grant");
    assert_eq!(std::fs::read(d.join("f")).unwrap(), b"secret\nx\n");

    // A named group, and a default ACL that new entries inherit (nested).
    root("mkdir -m 0700 shared; setfacl -m g:65534:rwx shared; setfacl -d -m g:65534:rwx shared");
    assert!(
        as_nobody(d, "touch shared/mine"),
        "group entry grants write"
    );
    root("umask 077; mkdir shared/sub; echo hi > shared/sub/theirs");
    assert!(as_nobody(
        d,
        "cat shared/sub/theirs && echo more >> shared/sub/theirs"
    ));
    assert!(
        as_nobody(d, "touch shared/sub/new"),
        "inherited by the subdirectory"
    );
    root("setfacl -k shared/sub; setfacl -m m::r-x shared/sub");
    assert!(
        !as_nobody(d, "touch shared/sub/denied"),
        "mask r-x denies create"
    );
    assert!(as_nobody(d, "ls shared/sub"), "mask r-x still lists");
}

fn an_acl_set_from_outside_the_group_drops_setgid_as_on_ext4(on: On) {
    let f = on.with(qsfs_fuse::MountOptions {
        allow_other: true,
        ..Default::default()
    });
    let oracle = tempfile::tempdir_in("/var/tmp").expect("ext4 directory");
    let mut outs = Vec::new();
    for dir in [oracle.path(), f.mnt.parent().expect("parent")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for dir in [oracle.path(), f.mnt.as_path()] {
        sh_in(
            dir,
            "touch other mine; chown 65534:0 other; chown 65534:65534 mine; chmod 2775 other mine",
        );
        assert!(as_nobody(dir, "setfacl -m u:1:r other mine"));
        outs.push(sh_in(dir, "stat -c '%A %n' other mine; getfacl -c other"));
    }
    assert!(outs[0].contains("-rwxrwxr-x other"), "{}", outs[0]);
    assert!(outs[0].contains("-rwxrwsr-x mine"), "{}", outs[0]);
    assert_eq!(outs[1], outs[0], "qsfs (left) against ext4 (right)");
}

/// Runs `script` as uid/gid 65534; returns stdout and stderr together.
fn sh_as_nobody(dir: &Path, script: &str) -> String {
    both(nobody_sh(dir, script))
}

/// `trusted.` names are listed to a privileged caller only (an unprivileged `getfattr -d -m -`
/// on qsfs listed them, then failed on each), and `system.` holds only the ACLs: other names
/// there are not supported, as on ext4 (qsfs stored them).
fn xattr_namespaces_match_ext4_for_root_and_others(on: On) {
    let f = on.with(qsfs_fuse::MountOptions {
        allow_other: true,
        ..Default::default()
    });
    let oracle = tempfile::tempdir_in("/var/tmp").expect("ext4 directory");
    for dir in [oracle.path(), f.mnt.parent().expect("parent")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut outs = Vec::new();
    for dir in [oracle.path(), f.mnt.as_path()] {
        let mut out = sh_in(
            dir,
            "touch f; chmod 644 f; setfattr -n trusted.secret -v x f; setfattr -n user.pub -v p f
             setfattr -n system.other -v y f || echo refused
             getfattr -d -m - f",
        );
        out.push_str(&sh_as_nobody(
            dir,
            "getfattr -d -m - f; getfattr -n trusted.secret f",
        ));
        outs.push(out);
    }
    assert!(outs[0].contains("trusted.secret=\"x\""), "{}", outs[0]);
    assert!(outs[0].contains("refused"), "{}", outs[0]);
    assert_eq!(outs[1], outs[0], "qsfs (left) against ext4 (right)");
}

struct MayWait;
impl common::Hooks for MayWait {}

/// Runs `op` as the mount runs a request that must not wait on the store: without fetching,
/// then again with what it said it missed, until it completes. Returns its answer and how
/// many times it stopped for a fetch.
fn held<T>(
    fs: &mut qsfs_fuse::Fs,
    fetches: &qsfs_fuse::fetch::Fetches,
    op: impl Fn(&mut qsfs_fuse::Fs) -> qsfs_fuse::FsResult<T>,
) -> (T, usize) {
    let mut fetched = Vec::new();
    for stops in 0..10 {
        match fs.without_fetch(fetched, &op) {
            Ok(r) => return (r.expect("operation"), stops),
            Err(missing) => {
                fetched = missing
                    .into_iter()
                    .map(|m| {
                        let v = fetches.fetch(&m).expect("fetch");
                        (m, v)
                    })
                    .collect();
            }
        }
    }
    panic!("the operation never got what it needed");
}

/// The parent's default ACL and a file's access ACL may live only in the store (a fresh
/// mount of a remote store): creating and chmod stop for them, then use them.
#[test]
fn acls_not_in_memory_are_fetched_before_create_and_chmod() {
    use qsfs_fuse::acl::{Acl, ACCESS, DEFAULT};
    use qsfs_fuse::fs::SetAttr;
    let (engine, _dir) = common::engine();
    let store: std::sync::Arc<dyn qsfs_core::Store> = common::Hooked::new(engine, MayWait);
    let cfg = common::config();
    let fetches = qsfs_fuse::fetch::Fetches::new(
        store.clone(),
        &qsfs_fuse::layout::Namespaces::new(&cfg.prefix),
    );
    let named = |u: u16, m: u16| {
        let mut v = Acl::from_mode(0o750).entries().to_vec();
        v.insert(
            1,
            qsfs_fuse::acl::Entry {
                tag: qsfs_fuse::acl::Tag::User,
                perm: u,
                id: 1000,
            },
        );
        v.insert(
            3,
            qsfs_fuse::acl::Entry {
                tag: qsfs_fuse::acl::Tag::Mask,
                perm: m,
                id: 0,
            },
        );
        Acl::new(v).expect("valid ACL")
    };
    let (d, f) = {
        let mut fs = qsfs_fuse::Fs::open(store.clone(), cfg.clone()).expect("open");
        let d = fs.mkdir(1, b"d", 0o755, 0, 0).expect("mkdir").ino;
        fs.setxattr(d, DEFAULT, &named(7, 7).encode(), 0)
            .expect("default ACL");
        let f = fs.create(1, b"f", 0o644, 0, 0, 0).expect("create").0.ino;
        fs.setxattr(f, ACCESS, &named(6, 6).encode(), 0)
            .expect("access ACL");
        assert_eq!(fs.getattr(f).unwrap().inode.perm, 0o760);
        fs.shutdown().expect("shutdown");
        (d, f)
    };
    let mut fs = qsfs_fuse::Fs::open(store, cfg).expect("reopen");
    let (a, stops) = held(&mut fs, &fetches, |fs| {
        fs.create_masked(d, b"new", (0o666, 0o077), 0, 0, 0)
    });
    assert!(stops > 0, "the default ACL was in memory already");
    // umask ignored; group bits from the default mask narrowed by 0666.
    assert_eq!(a.0.inode.perm, 0o660);
    let got = Acl::decode(&fs.getxattr(a.0.ino, ACCESS).unwrap()).unwrap();
    assert_eq!(got.unwrap().entries()[3].perm, 6, "mask of the new file");
    let set = SetAttr {
        mode: Some(0o740),
        ..Default::default()
    };
    let (attr, stops) = held(&mut fs, &fetches, |fs| fs.setattr(f, set.clone()));
    assert!(stops > 0, "the access ACL was in memory already");
    assert_eq!(attr.inode.perm, 0o740);
    let got = Acl::decode(&fs.getxattr(f, ACCESS).unwrap()).unwrap();
    assert_eq!(
        got,
        Some(named(6, 4)),
        "chmod rewrote the mask, kept user:1000"
    );
}
