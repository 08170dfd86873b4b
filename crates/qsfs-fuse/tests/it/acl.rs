//! POSIX ACLs on a real mount, with the real `setfacl`/`getfacl`: the kernel enforces them
//! (FUSE_POSIX_ACL), the filesystem keeps them in step with chmod and inherits default ACLs.
//! ext4 (a directory of /var/tmp) is the oracle: the same steps must print the same.
//!
//! Everything that depends on the umask runs in a child shell: the umask is per process and
//! the other tests of this binary run in parallel threads.

use crate::common;

use common::Fixture;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Runs `script` with `sh` in `dir`; returns stdout and stderr together (the errors are part
/// of what is compared).
fn sh_in(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run sh");
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

#[test]
fn acl_steps_match_ext4_and_survive_remount() {
    let mut f = Fixture::new();
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

/// Runs `script` as uid/gid 65534 (no supplementary groups); true if it succeeded.
fn as_nobody(dir: &Path, script: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run sh as nobody")
        .status
        .success()
}

#[test]
fn acls_are_enforced_for_other_users() {
    let f = Fixture::with(qsfs_fuse::MountOptions {
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

#[test]
fn an_acl_set_from_outside_the_group_drops_setgid_as_on_ext4() {
    let f = Fixture::with(qsfs_fuse::MountOptions {
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
