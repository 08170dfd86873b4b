//! POSIX behaviour of a real FUSE mount (we run as root), following the checklist of the
//! 0-db-fs spec: every family of operation, success and errno paths, and re-checks after a
//! remount and after a simulated crash. Every check runs twice: on a mount of the embedded
//! engine, and on a mount whose store is a `qsfs serve` server reached over TCP by the 0-db
//! client (`qsfs mount --store zdb://…`).

// The checks are test bodies, run by the tests `on_both!` makes.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::{on_both, Fixture, On};
use nix::errno::Errno;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{
    DirEntryExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;

on_both!(
    files_write_read_and_survive_remount,
    cp_dd_tar_of_real_files_match_the_source,
    truncate_holes_and_huge_sparse_offsets,
    fallocate_punch_and_extend,
    directories_nlink_rmdir_and_readdir,
    rename_rules_and_flags,
    unlinked_open_files_stay_usable_then_space_returns,
    tmpfiles_are_unnamed_until_linked_and_reclaimed_otherwise,
    links_symlinks_and_special_files,
    xattrs_with_flags,
    timestamps_keep_nanoseconds_and_extreme_values,
    append_trunc_excl_and_access_modes,
    statfs_is_sane_and_tracks_usage,
    permissions_for_other_users_and_sticky_dirs,
    fsync_makes_data_survive_a_crash,
    sync_writes_survive_a_crash,
    mmap_locks_seekdir_and_a_removed_cwd,
    overlayfs_uses_the_mount_as_its_upper_directory,
    a_second_mount_of_the_same_store_is_refused,
    concurrent_processes_create_write_rename_and_append,
    copy_file_range_copies_inside_the_filesystem,
    names_of_up_to_255_bytes_as_on_ext4,
);

fn errno_of(e: std::io::Error) -> i32 {
    e.raw_os_error().expect("an OS error")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sh(cmd: &str) -> std::process::Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn files_write_read_and_survive_remount(on: On) {
    let mut f = on.fixture();
    fs::write(f.p("hello.txt"), b"hello world").unwrap();
    assert_eq!(fs::read(f.p("hello.txt")).unwrap(), b"hello world");
    let big = pattern(5 * 1024 * 1024 + 777, 3);
    fs::write(f.p("big.bin"), &big).unwrap();
    assert_eq!(fs::read(f.p("big.bin")).unwrap(), big);
    // Overwrite the middle, across a block boundary.
    let file = OpenOptions::new().write(true).open(f.p("big.bin")).unwrap();
    file.write_all_at(b"XYZ", 128 * 1024 - 1).unwrap();
    drop(file);
    let mut expect = big.clone();
    expect[128 * 1024 - 1..128 * 1024 + 2].copy_from_slice(b"XYZ");
    assert_eq!(fs::read(f.p("big.bin")).unwrap(), expect);
    f.remount();
    assert_eq!(fs::read(f.p("hello.txt")).unwrap(), b"hello world");
    assert_eq!(fs::read(f.p("big.bin")).unwrap(), expect);
    assert_eq!(
        fs::metadata(f.p("big.bin")).unwrap().len(),
        expect.len() as u64
    );
}

fn cp_dd_tar_of_real_files_match_the_source(on: On) {
    let mut f = on.fixture();
    let src = Path::new("/usr/include");
    let list = "linux";
    sh(&format!("cp /bin/sh {}", f.p("sh").display()));
    assert_eq!(fs::read("/bin/sh").unwrap(), fs::read(f.p("sh")).unwrap());
    sh(&format!(
        "dd if=/dev/urandom of={} bs=64k count=40 status=none conv=fsync",
        f.p("rand").display()
    ));
    sh(&format!(
        "dd if={} of={} bs=1M status=none",
        f.p("rand").display(),
        f.p("rand2").display()
    ));
    assert_eq!(
        fs::read(f.p("rand")).unwrap(),
        fs::read(f.p("rand2")).unwrap()
    );
    fs::create_dir(f.p("t")).unwrap();
    sh(&format!(
        "tar cf - -C {} {list} | tar xf - -C {}",
        src.display(),
        f.p("t").display()
    ));
    sh(&format!(
        "diff -r --no-dereference {}/{list} {}",
        src.display(),
        f.p("t/linux").display()
    ));
    sh(&format!(
        "mv {} {}",
        f.p("t/linux").display(),
        f.p("moved").display()
    ));
    f.remount();
    sh(&format!(
        "diff -r --no-dereference {}/{list} {}",
        src.display(),
        f.p("moved").display()
    ));
    let before = f.live_keys("block");
    sh(&format!("rm -rf {}", f.p("moved").display()));
    assert!(!f.p("moved").exists());
    // The kernel forgets the removed inodes asynchronously, and over a server the frees that
    // need records not in memory run on the read workers: a sync then frees them.
    for _ in 0..50 {
        f.fs(|fs| fs.sync()).unwrap();
        if f.live_keys("block") < before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        f.live_keys("block") < before,
        "removing the tree released its blocks"
    );
    assert_eq!(
        fs::read_dir(&f.mnt).unwrap().count(),
        4,
        "sh rand rand2 t remain"
    );
}

fn truncate_holes_and_huge_sparse_offsets(on: On) {
    let mut f = on.fixture();
    let path = f.p("sparse");
    fs::write(&path, pattern(300_000, 1)).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.set_len(1000).unwrap();
    file.set_len(300_000).unwrap();
    let mut back = vec![0u8; 300_000];
    file.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back[..1000], &pattern(300_000, 1)[..1000]);
    assert!(
        back[1000..].iter().all(|&b| b == 0),
        "truncated data never comes back"
    );
    // Far offsets: 2^31, 2^32, 2^40 (1 TiB) and beyond.
    for off in [1u64 << 31, 1 << 32, 1 << 40, (1 << 50) + 12345] {
        file.write_all_at(b"far", off).unwrap();
        let mut b = [0u8; 3];
        file.read_exact_at(&mut b, off).unwrap();
        assert_eq!(&b, b"far");
    }
    let meta = file.metadata().unwrap();
    assert_eq!(meta.len(), (1 << 50) + 12348);
    assert!(
        meta.blocks() < 10_000,
        "holes cost nothing: {} sectors",
        meta.blocks()
    );
    // While a writer holds the file open the kernel may still cache written pages, so every
    // byte counts as data; once the writers are gone SEEK_DATA / SEEK_HOLE see the layout.
    use nix::unistd::{lseek, Whence};
    let data = lseek(file.as_raw_fd(), 400_000, Whence::SeekData).unwrap();
    assert!((400_000..=1 << 31).contains(&data), "next data at {data}");
    // And a walk from data to hole to data still ends (at the largest size it went on
    // forever).
    let (mut pos, mut steps) = (0, 0);
    while let Ok(d) = lseek(file.as_raw_fd(), pos, Whence::SeekData) {
        pos = lseek(file.as_raw_fd(), d, Whence::SeekHole).unwrap();
        steps += 1;
        assert!(steps < 100, "the walk goes on at {pos}");
    }
    drop(file);
    let file = File::open(&path).unwrap();
    let fd = file.as_raw_fd();
    let data = lseek(fd, 400_000, Whence::SeekData).unwrap();
    assert!(data > 400_000 && data <= (1 << 31), "next data at {data}");
    let hole = lseek(fd, 0, Whence::SeekHole).unwrap();
    assert!((1000..=300_000).contains(&hole), "first hole at {hole}");
    drop(file);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // Read at and past EOF.
    let mut b = [0u8; 10];
    assert_eq!(file.read_at(&mut b, meta.len()).unwrap(), 0);
    // Beyond the maximum size.
    let err = file.write_at(b"x", i64::MAX as u64).unwrap_err();
    assert!(matches!(errno_of(err), libc::EFBIG | libc::EINVAL));
    drop(file);
    f.remount();
    let file = File::open(&path).unwrap();
    let mut b = [0u8; 3];
    file.read_exact_at(&mut b, 1 << 40).unwrap();
    assert_eq!(&b, b"far");
    let mut z = [1u8; 100];
    file.read_exact_at(&mut z, 1 << 39).unwrap();
    assert!(z.iter().all(|&x| x == 0));
    drop(file);
    let before = f.live_keys("block");
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    assert!(f.live_keys("block") < before, "O_TRUNC releases blocks");
}

fn fallocate_punch_and_extend(on: On) {
    let f = on.fixture();
    let path = f.p("fa");
    fs::write(&path, pattern(512 * 1024, 9)).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    use nix::fcntl::{fallocate, FallocateFlags as F};
    fallocate(
        file.as_raw_fd(),
        F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
        100_000,
        200_000,
    )
    .unwrap();
    let mut all = vec![0u8; 512 * 1024];
    file.read_exact_at(&mut all, 0).unwrap();
    let orig = pattern(512 * 1024, 9);
    assert_eq!(&all[..100_000], &orig[..100_000]);
    assert!(
        all[100_000..300_000].iter().all(|&b| b == 0),
        "punched range reads zero"
    );
    assert_eq!(&all[300_000..], &orig[300_000..]);
    assert_eq!(
        file.metadata().unwrap().len(),
        512 * 1024,
        "KEEP_SIZE keeps the size"
    );
    fallocate(file.as_raw_fd(), F::empty(), 0, 2 << 20).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 2 << 20, "mode 0 extends");
}

fn directories_nlink_rmdir_and_readdir(on: On) {
    let mut f = on.fixture();
    let root_links = fs::metadata(&f.mnt).unwrap().nlink();
    fs::create_dir(f.p("d")).unwrap();
    assert_eq!(fs::metadata(f.p("d")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(&f.mnt).unwrap().nlink(), root_links + 1);
    fs::create_dir(f.p("d/sub")).unwrap();
    assert_eq!(fs::metadata(f.p("d")).unwrap().nlink(), 3);
    assert_eq!(
        errno_of(fs::create_dir(f.p("d")).unwrap_err()),
        libc::EEXIST
    );
    fs::write(f.p("d/file"), b"x").unwrap();
    assert_eq!(
        errno_of(fs::remove_dir(f.p("d")).unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(fs::remove_dir(f.p("d/file")).unwrap_err()),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of(fs::remove_file(f.p("d/sub")).unwrap_err()),
        libc::EISDIR
    );
    assert_eq!(
        errno_of(fs::read_dir(f.p("d/file/x")).unwrap_err()),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of(fs::metadata(f.p("nope/x")).unwrap_err()),
        libc::ENOENT
    );
    let long = "n".repeat(qsfs_fuse::layout::NAME_MAX + 1);
    assert_eq!(
        errno_of(fs::write(f.p(&long), b"").unwrap_err()),
        libc::ENAMETOOLONG
    );
    fs::write(f.p(&"n".repeat(qsfs_fuse::layout::NAME_MAX)), b"ok").unwrap();
    fs::remove_dir(f.p("d/sub")).unwrap();
    assert_eq!(fs::metadata(f.p("d")).unwrap().nlink(), 2);
    fs::remove_file(f.p("d/file")).unwrap();
    fs::remove_dir(f.p("d")).unwrap();
    assert_eq!(fs::metadata(&f.mnt).unwrap().nlink(), root_links);
    // A larger directory: every entry exactly once, with its type, also after deletes.
    fs::create_dir(f.p("many")).unwrap();
    for i in 0..1000 {
        if i % 10 == 0 {
            fs::create_dir(f.p(&format!("many/d{i}"))).unwrap();
        } else {
            fs::write(f.p(&format!("many/f{i}")), i.to_string()).unwrap();
        }
    }
    for i in (1..1000).step_by(7) {
        if i % 10 != 0 {
            fs::remove_file(f.p(&format!("many/f{i}"))).unwrap();
        }
    }
    let check = |f: &Fixture| {
        let mut names = std::collections::BTreeMap::new();
        for e in fs::read_dir(f.p("many")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let is_dir = e.file_type().unwrap().is_dir();
            assert_eq!(
                e.ino(),
                fs::symlink_metadata(e.path()).unwrap().ino(),
                "d_ino of {name}"
            );
            assert!(names.insert(name, is_dir).is_none(), "listed twice");
        }
        for i in 0..1000 {
            let removed = i % 10 != 0 && i % 7 == 1 && i >= 1;
            if i % 10 == 0 {
                assert_eq!(names.get(&format!("d{i}")), Some(&true), "d{i}");
            } else {
                assert_eq!(names.contains_key(&format!("f{i}")), !removed, "f{i}");
            }
        }
        let expected = 1000 - (1..1000).step_by(7).filter(|i| i % 10 != 0).count();
        assert_eq!(names.len(), expected);
    };
    check(&f);
    f.remount();
    check(&f);
    // "." and ".." in a listing.
    let out = sh(&format!("ls -a {}", f.p("many/d10").display()));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        [".", ".."]
    );
}

fn renameat2(from: &Path, to: &Path, flags: nix::fcntl::RenameFlags) -> nix::Result<()> {
    nix::fcntl::renameat2(None, from, None, to, flags)
}

fn rename_rules_and_flags(on: On) {
    let mut f = on.fixture();
    use nix::fcntl::RenameFlags as R;
    fs::write(f.p("a"), b"A").unwrap();
    fs::write(f.p("b"), b"B").unwrap();
    fs::rename(f.p("a"), f.p("b")).unwrap();
    assert!(!f.p("a").exists());
    assert_eq!(fs::read(f.p("b")).unwrap(), b"A");
    fs::write(f.p("c"), b"C").unwrap();
    assert_eq!(
        renameat2(&f.p("c"), &f.p("b"), R::RENAME_NOREPLACE),
        Err(Errno::EEXIST)
    );
    fs::create_dir(f.p("dir")).unwrap();
    fs::write(f.p("dir/inside"), b"I").unwrap();
    renameat2(&f.p("c"), &f.p("dir"), R::RENAME_EXCHANGE).unwrap();
    assert!(f.p("c").is_dir(), "exchange swaps a file with a directory");
    assert_eq!(fs::read(f.p("c/inside")).unwrap(), b"I");
    assert_eq!(fs::read(f.p("dir")).unwrap(), b"C");
    assert_eq!(
        renameat2(&f.p("c"), &f.p("missing"), R::RENAME_EXCHANGE),
        Err(Errno::ENOENT)
    );
    // file -> dir, dir -> file, dir -> non-empty dir, dir -> empty dir.
    fs::create_dir(f.p("empty")).unwrap();
    fs::create_dir(f.p("full")).unwrap();
    fs::write(f.p("full/x"), b"").unwrap();
    assert_eq!(
        errno_of(fs::rename(f.p("b"), f.p("empty")).unwrap_err()),
        libc::EISDIR
    );
    assert_eq!(
        errno_of(fs::rename(f.p("empty"), f.p("b")).unwrap_err()),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of(fs::rename(f.p("c"), f.p("full")).unwrap_err()),
        libc::ENOTEMPTY
    );
    fs::rename(f.p("c"), f.p("empty")).unwrap();
    assert_eq!(fs::read(f.p("empty/inside")).unwrap(), b"I");
    // Into its own subtree.
    fs::create_dir(f.p("empty/deeper")).unwrap();
    assert_eq!(
        errno_of(fs::rename(f.p("empty"), f.p("empty/deeper/x")).unwrap_err()),
        libc::EINVAL
    );
    // Across parents: nlink moves and ".." follows.
    let full_links = fs::metadata(f.p("full")).unwrap().nlink();
    fs::rename(f.p("empty/deeper"), f.p("full/deeper")).unwrap();
    assert_eq!(fs::metadata(f.p("full")).unwrap().nlink(), full_links + 1);
    assert_eq!(fs::metadata(f.p("empty")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(f.p("full/deeper/..")).unwrap().ino(),
        fs::metadata(f.p("full")).unwrap().ino()
    );
    // Hard links of one inode, and a name onto itself: no-ops.
    fs::hard_link(f.p("b"), f.p("b2")).unwrap();
    fs::rename(f.p("b"), f.p("b2")).unwrap();
    assert!(f.p("b").exists() && f.p("b2").exists());
    fs::rename(f.p("b"), f.p("b")).unwrap();
    // RENAME_WHITEOUT (overlayfs needs it of an upper directory): the name moves and a
    // whiteout, a character device 0:0 with mode 0, takes its old place.
    let is_whiteout = |p: &Path| {
        let m = fs::symlink_metadata(p).unwrap();
        m.file_type().is_char_device() && m.rdev() == 0 && m.mode() & 0o7777 == 0
    };
    renameat2(&f.p("b"), &f.p("zz"), R::RENAME_WHITEOUT).unwrap();
    assert!(is_whiteout(&f.p("b")));
    assert_eq!(fs::read(f.p("zz")).unwrap(), fs::read(f.p("b2")).unwrap());
    assert_eq!(
        renameat2(
            &f.p("zz"),
            &f.p("b2"),
            R::RENAME_WHITEOUT | R::RENAME_NOREPLACE
        ),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        renameat2(
            &f.p("zz"),
            &f.p("b2"),
            R::RENAME_WHITEOUT | R::RENAME_EXCHANGE
        ),
        Err(Errno::EINVAL)
    );
    fs::create_dir(f.p("wdir")).unwrap();
    fs::write(f.p("wdir/x"), b"x").unwrap();
    renameat2(&f.p("wdir"), &f.p("full/wdir2"), R::RENAME_WHITEOUT).unwrap();
    assert!(is_whiteout(&f.p("wdir")));
    assert_eq!(fs::read(f.p("full/wdir2/x")).unwrap(), b"x");
    f.remount();
    assert!(is_whiteout(&f.p("b")) && is_whiteout(&f.p("wdir")));
    assert_eq!(fs::read(f.p("zz")).unwrap(), fs::read(f.p("b2")).unwrap());
    assert_eq!(fs::read(f.p("full/wdir2/x")).unwrap(), b"x");
    // The move and its whiteout are one change: after an fsync of the directory both outlive
    // a crash.
    renameat2(&f.p("zz"), &f.p("zz2"), R::RENAME_WHITEOUT).unwrap();
    File::open(&f.mnt).unwrap().sync_all().unwrap();
    f.crash_and_remount();
    assert!(is_whiteout(&f.p("zz")));
    assert_eq!(fs::read(f.p("zz2")).unwrap(), fs::read(f.p("b2")).unwrap());
    assert_eq!(fs::read(f.p("empty/inside")).unwrap(), b"I");
    assert_eq!(fs::read(f.p("dir")).unwrap(), b"C");
    assert!(f.p("full/deeper").is_dir());
    assert!(!f.p("c").exists() && !f.p("a").exists());
}

fn unlinked_open_files_stay_usable_then_space_returns(on: On) {
    let mut f = on.fixture();
    let data = pattern(1 << 20, 5);
    fs::write(f.p("victim"), &data).unwrap();
    f.fs(|fs| fs.sync()).unwrap();
    let before = f.live_keys("block");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(f.p("victim"))
        .unwrap();
    fs::remove_file(f.p("victim")).unwrap();
    assert!(!f.p("victim").exists());
    assert_eq!(
        file.metadata().unwrap().nlink(),
        0,
        "fstat of an unlinked file"
    );
    let mut back = Vec::new();
    file.read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    file.write_all(b"tail").unwrap();
    file.set_len(100).unwrap();
    f.fs(|fs| fs.sync()).unwrap();
    assert_eq!(
        f.live_keys("orphan"),
        1,
        "the open unlinked inode is recorded as an orphan"
    );
    drop(file);
    // The kernel forgets the inode asynchronously; a sync then frees it.
    for _ in 0..50 {
        f.fs(|fs| fs.sync()).unwrap();
        if f.live_keys("orphan") == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(f.live_keys("orphan"), 0);
    assert!(
        f.live_keys("block") < before,
        "blocks freed after the last close"
    );
    // An orphan left by a crash is reclaimed at the next mount.
    fs::write(f.p("victim2"), &data).unwrap();
    let file = File::open(f.p("victim2")).unwrap();
    fs::remove_file(f.p("victim2")).unwrap();
    f.fs(|fs| fs.sync()).unwrap();
    assert_eq!(f.live_keys("orphan"), 1);
    let ino = file.metadata().unwrap().ino();
    // The process "dies" with the file still open: from now on nothing more reaches the store.
    f.mount.as_ref().unwrap().handle().simulate_crash();
    drop(file);
    f.crash_and_remount();
    assert_eq!(f.live_keys("orphan"), 0, "orphan reclaimed at mount");
    let inode_key = ino.to_be_bytes();
    assert!(
        f.store.get("qsfs-inode", &inode_key).unwrap().is_none(),
        "orphan inode freed"
    );
}

/// Opens an unnamed file in `dir` (`O_TMPFILE`), with `O_EXCL` if asked.
fn tmpfile(dir: &Path, excl: bool) -> File {
    let extra = if excl { libc::O_EXCL } else { 0 };
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | extra)
        .mode(0o640)
        .open(dir)
        .expect("O_TMPFILE open")
}

/// Names an open file: `linkat(fd, "", AT_FDCWD, to, AT_EMPTY_PATH)`.
fn link_fd(file: &File, to: &Path) -> Result<(), i32> {
    nix::unistd::linkat(
        Some(file.as_raw_fd()),
        Path::new(""),
        None,
        to,
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| e as i32)
}

fn tmpfiles_are_unnamed_until_linked_and_reclaimed_otherwise(on: On) {
    let mut f = on.fixture();
    fs::create_dir(f.p("d")).unwrap();
    let data = pattern(300_000, 9);

    // Unnamed, usable, then named twice; the name outlives a crash after fsync.
    let mut file = tmpfile(&f.p("d"), false);
    file.write_all(&data).unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!(meta.nlink(), 0, "an O_TMPFILE has no link");
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(meta.len(), data.len() as u64);
    assert_eq!(fs::read_dir(f.p("d")).unwrap().count(), 0, "and no name");
    // Its orphan record is committed before it gets a name: naming it must remove the record
    // in the same commit, or the next mount would reclaim a named file.
    f.fs(|fs| fs.sync()).unwrap();
    assert_eq!(f.live_keys("orphan"), 1, "an unnamed file is an orphan");
    link_fd(&file, &f.p("d/named")).unwrap();
    link_fd(&file, &f.p("second")).unwrap();
    assert_eq!(file.metadata().unwrap().nlink(), 2);
    assert_eq!(link_fd(&file, &f.p("d/named")), Err(libc::EEXIST));
    file.sync_all().unwrap();
    assert_eq!(f.live_keys("orphan"), 0, "a named file is no orphan");
    f.mount.as_ref().unwrap().handle().simulate_crash();
    drop(file);
    f.crash_and_remount();
    assert_eq!(fs::read(f.p("d/named")).unwrap(), data);
    assert_eq!(fs::metadata(f.p("second")).unwrap().nlink(), 2);

    // O_EXCL: never linkable, as on a local filesystem.
    let file = tmpfile(&f.p("d"), true);
    assert_eq!(link_fd(&file, &f.p("d/excl")), Err(libc::ENOENT));
    drop(file);

    // Closed without a name: its space comes back.
    f.fs(|fs| fs.sync()).unwrap();
    let blocks = f.live_keys("block");
    let mut file = tmpfile(&f.p("d"), false);
    file.write_all(&data).unwrap();
    file.sync_all().unwrap();
    assert!(f.live_keys("block") > blocks);
    drop(file);
    for _ in 0..50 {
        f.fs(|fs| fs.sync()).unwrap();
        if f.live_keys("orphan") == 0 && f.live_keys("block") == blocks {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(f.live_keys("orphan"), 0);
    assert_eq!(
        f.live_keys("block"),
        blocks,
        "blocks freed at the last close"
    );

    // Left open by a process that dies: reclaimed at the next mount.
    let mut file = tmpfile(&f.p("d"), false);
    file.write_all(&data).unwrap();
    let ino = file.metadata().unwrap().ino();
    file.sync_all().unwrap();
    assert_eq!(f.live_keys("orphan"), 1);
    f.mount.as_ref().unwrap().handle().simulate_crash();
    drop(file);
    f.crash_and_remount();
    assert_eq!(f.live_keys("orphan"), 0, "orphan reclaimed at mount");
    assert!(f
        .store
        .get("qsfs-inode", &ino.to_be_bytes())
        .unwrap()
        .is_none());
    assert_eq!(f.live_keys("block"), blocks);
    let names: Vec<_> = fs::read_dir(f.p("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["named"]);
}

fn links_symlinks_and_special_files(on: On) {
    let mut f = on.fixture();
    fs::write(f.p("orig"), b"data").unwrap();
    fs::hard_link(f.p("orig"), f.p("l1")).unwrap();
    fs::hard_link(f.p("orig"), f.p("l2")).unwrap();
    let m = fs::metadata(f.p("l2")).unwrap();
    assert_eq!(m.nlink(), 3);
    assert_eq!(m.ino(), fs::metadata(f.p("orig")).unwrap().ino());
    assert_eq!(
        errno_of(fs::hard_link(f.p("orig"), f.p("l1")).unwrap_err()),
        libc::EEXIST
    );
    fs::create_dir(f.p("dd")).unwrap();
    assert_eq!(
        errno_of(fs::hard_link(f.p("dd"), f.p("dd2")).unwrap_err()),
        libc::EPERM
    );
    fs::remove_file(f.p("orig")).unwrap();
    assert_eq!(fs::read(f.p("l1")).unwrap(), b"data");
    assert_eq!(fs::metadata(f.p("l1")).unwrap().nlink(), 2);
    let target = "t".repeat(4095);
    std::os::unix::fs::symlink(&target, f.p("longlink")).unwrap();
    assert_eq!(
        fs::read_link(f.p("longlink")).unwrap().as_os_str().len(),
        4095
    );
    let lm = fs::symlink_metadata(f.p("longlink")).unwrap();
    assert_eq!(lm.len(), 4095, "st_size is the target length");
    assert_eq!(lm.permissions().mode() & 0o777, 0o777);
    std::os::unix::fs::symlink("l1", f.p("rel")).unwrap();
    assert_eq!(fs::read(f.p("rel")).unwrap(), b"data");
    std::os::unix::fs::symlink("nowhere", f.p("dangling")).unwrap();
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(f.p("dangling"))
        .unwrap_err();
    assert_eq!(errno_of(err), libc::EEXIST, "O_EXCL on a dangling symlink");
    std::os::unix::fs::symlink("loop2", f.p("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", f.p("loop2")).unwrap();
    assert_eq!(errno_of(fs::read(f.p("loop1")).unwrap_err()), libc::ELOOP);
    let err = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(f.p("rel"))
        .unwrap_err();
    assert_eq!(errno_of(err), libc::ELOOP);
    // Special files.
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    nix::unistd::mkfifo(&f.p("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    mknod(
        &f.p("chr"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(1, 3),
    )
    .unwrap();
    let listener = std::os::unix::net::UnixListener::bind(f.p("sock")).unwrap();
    drop(listener);
    assert!(fs::symlink_metadata(f.p("sock"))
        .unwrap()
        .file_type()
        .is_socket_like());
    let fifo = f.p("fifo");
    let writer = std::thread::spawn(move || fs::write(fifo, b"through the pipe").unwrap());
    assert_eq!(fs::read(f.p("fifo")).unwrap(), b"through the pipe");
    writer.join().unwrap();
    f.remount();
    assert_eq!(
        fs::symlink_metadata(f.p("chr")).unwrap().rdev(),
        makedev(1, 3)
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(f.p("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(fs::symlink_metadata(f.p("sock"))
        .unwrap()
        .file_type()
        .is_socket());
    assert_eq!(fs::read_link(f.p("rel")).unwrap().as_os_str(), "l1");
    assert_eq!(fs::metadata(f.p("l2")).unwrap().nlink(), 2);
}

trait SocketLike {
    fn is_socket_like(&self) -> bool;
}
impl SocketLike for fs::FileType {
    fn is_socket_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_socket()
    }
}

fn py(code: &str) -> (bool, String) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .output()
        .expect("python3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string()
            + &String::from_utf8_lossy(&out.stderr),
    )
}

fn xattrs_with_flags(on: On) {
    let mut f = on.fixture();
    fs::write(f.p("x"), b"").unwrap();
    let p = f.p("x");
    let p = p.display();
    let (ok, out) = py(&format!(
        r#"
import os, errno
p = "{p}"
os.setxattr(p, "user.a", b"1")
os.setxattr(p, "user.big", b"v" * 65536)
try:
    os.setxattr(p, "user.a", b"2", os.XATTR_CREATE); print("no EEXIST")
except OSError as e: assert e.errno == errno.EEXIST, e
try:
    os.setxattr(p, "user.zz", b"2", os.XATTR_REPLACE); print("no ENODATA")
except OSError as e: assert e.errno == errno.ENODATA, e
os.setxattr(p, "user.a", b"22", os.XATTR_REPLACE)
assert os.getxattr(p, "user.a") == b"22"
assert sorted(os.listxattr(p)) == ["user.a", "user.big"], os.listxattr(p)
os.removexattr(p, "user.big")
try:
    os.getxattr(p, "user.big"); print("still there")
except OSError as e: assert e.errno == errno.ENODATA, e
print("ok")
"#
    ));
    assert!(ok && out == "ok", "{out}");
    fs::hard_link(f.p("x"), f.p("y")).unwrap();
    fs::rename(f.p("x"), f.p("z")).unwrap();
    f.remount();
    let p = f.p("y");
    let (ok, out) = py(&format!(
        "import os; print(os.getxattr('{}', 'user.a').decode())",
        p.display()
    ));
    assert!(ok && out == "22", "{out}");
}

fn timestamps_keep_nanoseconds_and_extreme_values(on: On) {
    let mut f = on.fixture();
    fs::write(f.p("t"), b"").unwrap();
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let cases = [
        (-1_000_000_000i64, 123_456_789i64),
        (4_000_000_000, 999_999_999),
        (1, 1),
    ];
    for (s, ns) in cases {
        let t = TimeSpec::new(s, ns);
        utimensat(None, &f.p("t"), &t, &t, UtimensatFlags::FollowSymlink).unwrap();
        let m = fs::metadata(f.p("t")).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec()), (s, ns));
        assert_eq!((m.atime(), m.atime_nsec()), (s, ns));
    }
    f.remount();
    let m = fs::metadata(f.p("t")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1, 1));
    // write updates mtime+ctime; create updates the parent.
    let dir_before = fs::metadata(&f.mnt).unwrap().mtime_nsec()
        + fs::metadata(&f.mnt).unwrap().mtime() * 1_000_000_000;
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(f.p("t2"), b"x").unwrap();
    let dm = fs::metadata(&f.mnt).unwrap();
    assert!(
        dm.mtime() * 1_000_000_000 + dm.mtime_nsec() > dir_before,
        "parent mtime moves on create"
    );
    let mut file = OpenOptions::new().append(true).open(f.p("t")).unwrap();
    file.write_all(b"more").unwrap();
    let m = fs::metadata(f.p("t")).unwrap();
    assert!(m.mtime() > 1 && m.ctime() > 1);
}

fn append_trunc_excl_and_access_modes(on: On) {
    let f = on.fixture();
    fs::write(f.p("ap"), b"start").unwrap();
    let mut a = OpenOptions::new().append(true).open(f.p("ap")).unwrap();
    let mut b = OpenOptions::new().append(true).open(f.p("ap")).unwrap();
    a.write_all(b"-a").unwrap();
    b.write_all(b"-b").unwrap();
    a.write_all_at(b"-p", 0).unwrap(); // pwrite on O_APPEND still appends (Linux)
    assert_eq!(fs::read(f.p("ap")).unwrap(), b"start-a-b-p");
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(f.p("ap"))
        .unwrap_err();
    assert_eq!(errno_of(err), libc::EEXIST);
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(f.p("ap"))
        .unwrap();
    assert_eq!(fs::metadata(f.p("ap")).unwrap().len(), 0);
    let mut ro = File::open(f.p("ap")).unwrap();
    assert_eq!(errno_of(ro.write(b"x").unwrap_err()), libc::EBADF);
    fs::create_dir(f.p("dir")).unwrap();
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(f.p("dir")).unwrap_err()),
        libc::EISDIR
    );
    let err = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(f.p("ap"))
        .unwrap_err();
    assert_eq!(errno_of(err), libc::ENOTDIR);
    // Seek + read sees writes from another handle at once.
    let mut w = OpenOptions::new().write(true).open(f.p("ap")).unwrap();
    w.write_all(b"0123456789").unwrap();
    ro.seek(SeekFrom::Start(3)).unwrap();
    let mut s = String::new();
    ro.read_to_string(&mut s).unwrap();
    assert_eq!(s, "3456789");
}

fn statfs_is_sane_and_tracks_usage(on: On) {
    let f = on.fixture();
    let before = nix::sys::statvfs::statvfs(&f.mnt).unwrap();
    assert!(before.blocks_available() <= before.blocks_free());
    assert!(before.blocks_free() <= before.blocks());
    assert_eq!(before.name_max() as usize, qsfs_fuse::layout::NAME_MAX);
    fs::write(f.p("fill"), pattern(8 << 20, 1)).unwrap();
    f.fs(|fs| fs.sync()).unwrap();
    let mid = nix::sys::statvfs::statvfs(&f.mnt).unwrap();
    assert!(mid.blocks_free() < before.blocks_free(), "usage grows");
    fs::remove_file(f.p("fill")).unwrap();
    for _ in 0..50 {
        f.fs(|fs| fs.sync()).unwrap();
        if nix::sys::statvfs::statvfs(&f.mnt).unwrap().blocks_free() > mid.blocks_free() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("usage did not go down after a delete");
}

fn permissions_for_other_users_and_sticky_dirs(on: On) {
    let f = on.with(qsfs_fuse::MountOptions {
        allow_other: true,
        ..Default::default()
    });
    fs::set_permissions(&f.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(f.p("secret"), b"s").unwrap();
    fs::set_permissions(f.p("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(f.p("tmp")).unwrap();
    fs::set_permissions(f.p("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(f.p("tmp/roots"), b"r").unwrap();
    fs::set_permissions(f.p("tmp/roots"), fs::Permissions::from_mode(0o666)).unwrap();
    let as_nobody = |cmd: &str| {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = as_nobody(&format!("cat {}", f.p("secret").display()));
    assert!(
        !out.status.success(),
        "nobody must not read a 0600 root file"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = as_nobody(&format!("chmod 777 {}", f.p("secret").display()));
    assert!(!out.status.success(), "nobody must not chmod root's file");
    let out = as_nobody(&format!("rm -f {}", f.p("tmp/roots").display()));
    assert!(
        !out.status.success(),
        "sticky dir: nobody must not remove root's file"
    );
    assert!(f.p("tmp/roots").exists());
    let out = as_nobody(&format!(
        "echo hi > {0}/mine && cat {0}/mine && rm {0}/mine",
        f.p("tmp").display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let out = as_nobody(&format!("touch {}", f.p("newfile").display()));
    assert!(!out.status.success(), "no write permission on the root dir");
    // New files belong to the caller; setgid directories pass their group on.
    fs::create_dir(f.p("g")).unwrap();
    nix::unistd::chown(&f.p("g"), None, Some(nix::unistd::Gid::from_raw(4242))).unwrap();
    fs::set_permissions(f.p("g"), fs::Permissions::from_mode(0o2777)).unwrap();
    let out = as_nobody(&format!("touch {0}/n && mkdir {0}/sub", f.p("g").display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = fs::metadata(f.p("g/n")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 4242));
    assert!(
        fs::metadata(f.p("g/sub")).unwrap().mode() & 0o2000 != 0,
        "setgid inherited by subdirs"
    );
    // chown by root; uid/gid beyond 16 bits.
    nix::unistd::chown(
        &f.p("secret"),
        Some(nix::unistd::Uid::from_raw(70000)),
        Some(nix::unistd::Gid::from_raw(70001)),
    )
    .unwrap();
    let m = fs::metadata(f.p("secret")).unwrap();
    assert_eq!((m.uid(), m.gid()), (70000, 70001));
    // A write by a non-owner clears setuid.
    fs::write(f.p("suid"), b"x").unwrap();
    fs::set_permissions(f.p("suid"), fs::Permissions::from_mode(0o4777)).unwrap();
    let out = as_nobody(&format!("echo y >> {}", f.p("suid").display()));
    assert!(out.status.success());
    assert_eq!(
        fs::metadata(f.p("suid")).unwrap().mode() & 0o4000,
        0,
        "setuid cleared on write"
    );
    // What else the filesystem clears itself (FUSE_HANDLE_KILLPRIV_V2), as the VFS would.
    let mode = |name: &str| fs::metadata(f.p(name)).unwrap().mode() & 0o7777;
    let setup = |name: &str, m: u32| {
        fs::write(f.p(name), b"data").unwrap();
        fs::set_permissions(f.p(name), fs::Permissions::from_mode(m)).unwrap();
    };
    setup("sgid-x", 0o2777);
    setup("sgid-nox", 0o2767);
    let out = as_nobody(&format!(
        "echo y >> {0}/sgid-x && echo y >> {0}/sgid-nox",
        f.mnt.display()
    ));
    assert!(out.status.success());
    assert_eq!(
        mode("sgid-x"),
        0o777,
        "setgid of a group-executable file cleared"
    );
    assert_eq!(
        mode("sgid-nox"),
        0o2767,
        "setgid without group execute kept"
    );
    setup("suid-trunc", 0o4777);
    let out = as_nobody(&format!("truncate -s 1 {}", f.p("suid-trunc").display()));
    assert!(out.status.success());
    assert_eq!(mode("suid-trunc"), 0o777, "setuid cleared on truncate");
    setup("suid-root", 0o6777);
    fs::OpenOptions::new()
        .append(true)
        .open(f.p("suid-root"))
        .unwrap()
        .write_all(b"root has CAP_FSETID")
        .unwrap();
    assert_eq!(mode("suid-root"), 0o6777, "a write by root keeps setuid");
    nix::unistd::chown(&f.p("suid-root"), Some(nix::unistd::Uid::from_raw(1)), None).unwrap();
    assert_eq!(mode("suid-root"), 0o777, "chown clears setuid and setgid");
    // A file capability (a valid VFS_CAP_REVISION_2 value) goes with any write, root's too.
    let cap = f.p("cap");
    fs::write(&cap, b"data").unwrap();
    let (ok, out) = py(&format!(
        r#"
import os, struct
p = "{}"
os.setxattr(p, "security.capability", struct.pack("<5I", 0x02000000, 1 << 10, 0, 0, 0))
assert len(os.getxattr(p, "security.capability")) == 20
with open(p, "ab") as f:
    f.write(b"more")
try:
    os.getxattr(p, "security.capability"); print("capability survived a write")
except OSError as e:
    import errno; assert e.errno == errno.ENODATA, e
"#,
        cap.display()
    ));
    assert!(ok && out.is_empty(), "{out}");
}

fn fsync_makes_data_survive_a_crash(on: On) {
    let mut f = on.fixture();
    fs::create_dir(f.p("d")).unwrap();
    for i in 0..200 {
        fs::write(f.p(&format!("d/f{i}")), pattern(1000 + i, i as u8)).unwrap();
    }
    let mut file = File::create(f.p("d/synced")).unwrap();
    file.write_all(&pattern(300_000, 7)).unwrap();
    file.sync_all().unwrap();
    fs::rename(f.p("d/f0"), f.p("d/renamed")).unwrap();
    File::open(f.p("d")).unwrap().sync_all().unwrap();
    // Not synced: may be lost, but must not corrupt anything.
    fs::write(f.p("d/unsynced"), b"maybe").unwrap();
    drop(file);
    f.crash_and_remount();
    assert_eq!(fs::read(f.p("d/synced")).unwrap(), pattern(300_000, 7));
    assert_eq!(fs::read(f.p("d/renamed")).unwrap(), pattern(1000, 0));
    assert!(!f.p("d/f0").exists());
    for i in 1..200 {
        assert_eq!(
            fs::read(f.p(&format!("d/f{i}"))).unwrap(),
            pattern(1000 + i, i as u8)
        );
    }
    if let Ok(b) = fs::read(f.p("d/unsynced")) {
        assert!(b == b"maybe" || b.is_empty(), "old or new state only");
    }
}

/// `O_SYNC` and `O_DSYNC` writes are durable when they return: the kernel follows each with
/// an fsync of the range, which must reach the store (and the name with it).
fn sync_writes_survive_a_crash(on: On) {
    let mut f = on.fixture();
    fs::create_dir(f.p("d")).unwrap();
    for (name, flag) in [("osync", libc::O_SYNC), ("odsync", libc::O_DSYNC)] {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(flag)
            .open(f.p(&format!("d/{name}")))
            .unwrap();
        file.write_all(&pattern(200_000, flag as u8)).unwrap();
        file.write_all(b"tail").unwrap();
    }
    f.crash_and_remount();
    for (name, flag) in [("osync", libc::O_SYNC), ("odsync", libc::O_DSYNC)] {
        let mut want = pattern(200_000, flag as u8);
        want.extend_from_slice(b"tail");
        assert_eq!(fs::read(f.p(&format!("d/{name}"))).unwrap(), want, "{name}");
    }
}

/// Shared writable `mmap` + `msync` reaches the store; `flock` and `fcntl` locks exclude another
/// process; a removed directory that is still a cwd lists empty and refuses new entries;
/// `telldir`/`seekdir` resume a listing where it was.
fn mmap_locks_seekdir_and_a_removed_cwd(on: On) {
    let mut f = on.fixture();
    let d = f.mnt.display().to_string();
    let (ok, out) = py(&format!(
        r#"
import errno, fcntl, mmap, os
d = "{d}"
p = d + "/mapped"
with open(p, "wb") as f:
    f.write(bytes(65536))
    f.flush()
    os.fsync(f.fileno())
fd = os.open(p, os.O_RDWR)
m = mmap.mmap(fd, 65536, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[100:105] = b"hello"
m[65530:65536] = b"endend"
m.flush()
m.close()
os.close(fd)

f1 = open(p, "r+b")
fcntl.flock(f1, fcntl.LOCK_EX)
fcntl.lockf(f1, fcntl.LOCK_EX)
pid = os.fork()
if pid == 0:
    f2 = open(p, "r+b")
    try:
        fcntl.flock(f2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os._exit(1)
    except BlockingIOError:
        pass
    try:
        fcntl.lockf(f2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os._exit(2)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            os._exit(3)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("locks", os.waitstatus_to_exitcode(status))
fcntl.flock(f1, fcntl.LOCK_UN)
f1.close()

os.mkdir(d + "/gone")
os.chdir(d + "/gone")
os.rmdir(d + "/gone")
print("cwd lists", os.listdir("."))
try:
    open("x", "w")
    print("created in a removed dir")
except FileNotFoundError:
    print("create ENOENT")
os.chdir("/")
"#
    ));
    assert!(ok, "{out}");
    assert!(out.contains("locks 0"), "{out}");
    assert!(out.contains("cwd lists []"), "{out}");
    assert!(out.contains("create ENOENT"), "{out}");

    fs::create_dir(f.p("many")).unwrap();
    for i in 0..300 {
        fs::write(f.p(&format!("many/e{i}")), b"").unwrap();
    }
    let perl = Command::new("perl")
        .arg("-e")
        .arg(
            r#"opendir(my $dh, $ARGV[0]) or die "opendir: $!";
my @head = map { scalar readdir($dh) } 1 .. 50;
my $pos = telldir($dh);
my @rest = readdir($dh);
seekdir($dh, $pos);
my @again = readdir($dh);
my %seen;
$seen{$_}++ for @head, @rest;
my $dups = grep { $seen{$_} > 1 } keys %seen;
print join(",", @rest) eq join(",", @again) ? "same" : "differs", " ", scalar(keys %seen), " $dups
";"#,
        )
        .arg(f.p("many"))
        .output()
        .expect("perl");
    let out = String::from_utf8_lossy(&perl.stdout);
    assert_eq!(
        out.trim(),
        "same 302 0",
        "{}",
        String::from_utf8_lossy(&perl.stderr)
    );

    // msync made the mapped writes durable: they outlive a crash.
    f.crash_and_remount();
    let back = fs::read(f.p("mapped")).unwrap();
    assert_eq!(&back[100..105], b"hello");
    assert_eq!(&back[65530..], b"endend");
    assert_eq!(back.len(), 65536);
}

/// Unmounts an overlay when dropped, a failed check included.
struct Overlay(std::path::PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts an overlay of `lower` under `merged` with its upper and work directories in `f`.
fn overlay(f: &Fixture, lower: &Path, merged: &Path) -> Overlay {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        f.p("upper").display(),
        f.p("work").display()
    );
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(merged)
        .output()
        .expect("mount");
    let dmesg = Command::new("dmesg")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let dmesg = String::from_utf8_lossy(&dmesg);
    assert!(
        out.status.success(),
        "overlayfs refused the mount as its upper: {} {}",
        String::from_utf8_lossy(&out.stderr),
        dmesg.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
    );
    Overlay(merged.to_path_buf())
}

/// overlayfs (container images, the spec's use for tmpfile) accepts the mount as its upper
/// directory: it needs xattrs, `RENAME_WHITEOUT` and `O_TMPFILE`. Copy-up, whiteouts of a file
/// and of a directory, new entries and a tmpfile through the overlay; the upper directory
/// keeps them across a remount of qsfs.
fn overlayfs_uses_the_mount_as_its_upper_directory(on: On) {
    let mut f = on.fixture();
    let lower = tempfile::tempdir().unwrap();
    let merged = tempfile::tempdir().unwrap();
    let l = |rel: &str| lower.path().join(rel);
    let m = |rel: &str| merged.path().join(rel);
    fs::write(l("a"), b"lower a").unwrap();
    fs::write(l("b"), b"lower b").unwrap();
    fs::create_dir(l("d")).unwrap();
    fs::write(l("d/c"), b"lower c").unwrap();
    fs::create_dir(f.p("upper")).unwrap();
    fs::create_dir(f.p("work")).unwrap();
    let listing = |dir: &Path| {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let o = overlay(&f, lower.path(), merged.path());
    fs::write(m("a"), b"upper a").unwrap();
    fs::remove_file(m("b")).unwrap();
    fs::remove_dir_all(m("d")).unwrap();
    fs::create_dir(m("new")).unwrap();
    fs::write(m("new/n"), b"n").unwrap();
    let mut t = tmpfile(merged.path(), false);
    t.write_all(b"scratch").unwrap();
    drop(t);
    assert_eq!(listing(merged.path()), ["a", "new"]);
    drop(o);
    f.remount();
    for gone in ["b", "d"] {
        let w = fs::symlink_metadata(f.p(&format!("upper/{gone}"))).unwrap();
        assert!(
            w.file_type().is_char_device() && w.rdev() == 0,
            "{gone} is a whiteout in the upper directory"
        );
    }
    assert_eq!(fs::read(f.p("upper/a")).unwrap(), b"upper a");
    assert_eq!(
        fs::read(l("a")).unwrap(),
        b"lower a",
        "the lower layer is untouched"
    );
    let _o = overlay(&f, lower.path(), merged.path());
    assert_eq!(listing(merged.path()), ["a", "new"]);
    assert_eq!(fs::read(m("a")).unwrap(), b"upper a");
    assert_eq!(fs::read(m("new/n")).unwrap(), b"n");
}

fn a_second_mount_of_the_same_store_is_refused(on: On) {
    let f = on.fixture();
    let err = qsfs_fuse::Fs::open(f.store.clone(), common::config()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("already mounted"), "{msg}");
}

fn concurrent_processes_create_write_rename_and_append(on: On) {
    let mut f = on.fixture();
    fs::create_dir(f.p("shared")).unwrap();
    fs::create_dir(f.p("moved")).unwrap();
    let procs: Vec<_> = (0..4)
        .map(|k| {
            let script = format!(
                "cd {dir} && for i in $(seq 1 150); do \
                   echo \"p{k} file $i\" > shared/p{k}_$i; \
                   echo \"line p{k} $i\" >> shared/log; \
                   if [ $((i % 2)) -eq 0 ]; then mv shared/p{k}_$i moved/p{k}_$i; fi; \
                 done",
                dir = f.mnt.display()
            );
            Command::new("sh").arg("-c").arg(script).spawn().unwrap()
        })
        .collect();
    for mut p in procs {
        assert!(p.wait().unwrap().success());
    }
    let check = |f: &Fixture| {
        for k in 0..4 {
            for i in 1..=150 {
                let dir = if i % 2 == 0 { "moved" } else { "shared" };
                let got = fs::read_to_string(f.p(&format!("{dir}/p{k}_{i}"))).unwrap();
                assert_eq!(got, format!("p{k} file {i}\n"));
            }
        }
        assert_eq!(fs::read_dir(f.p("moved")).unwrap().count(), 4 * 75);
        assert_eq!(fs::read_dir(f.p("shared")).unwrap().count(), 4 * 75 + 1);
        let log = fs::read_to_string(f.p("shared/log")).unwrap();
        let mut lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 600, "every append kept, none torn");
        lines.sort();
        lines.dedup();
        assert_eq!(lines.len(), 600);
    };
    check(&f);
    f.remount();
    check(&f);
}

fn copy_file_range_copies_inside_the_filesystem(on: On) {
    let f = on.fixture();
    let data = pattern(3 << 20, 9);
    fs::write(f.p("src"), &data).unwrap();
    let src = File::open(f.p("src")).unwrap();
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(f.p("dst"))
        .unwrap();
    // A range from the middle of the source to an offset of the destination, then the rest.
    let mut off_in: i64 = 1000;
    let mut off_out: i64 = 10;
    let mut left = data.len() - 1000;
    while left > 0 {
        let n =
            nix::fcntl::copy_file_range(&src, Some(&mut off_in), &dst, Some(&mut off_out), left)
                .unwrap();
        assert!(n > 0, "copy_file_range stopped early");
        left -= n;
    }
    drop(dst);
    let got = fs::read(f.p("dst")).unwrap();
    assert_eq!(got.len(), 10 + data.len() - 1000);
    assert!(got[..10].iter().all(|&b| b == 0));
    assert!(got[10..] == data[1000..], "copied bytes differ");
    // Past the end of the source there is nothing to copy.
    let mut at: i64 = data.len() as i64;
    let mut out_at: i64 = 0;
    let dst = OpenOptions::new().write(true).open(f.p("dst")).unwrap();
    assert_eq!(
        nix::fcntl::copy_file_range(&src, Some(&mut at), &dst, Some(&mut out_at), 100).unwrap(),
        0
    );
}

/// Names of up to 255 bytes work as on ext4 (the longest ones are keyed by their hash, see
/// `layout::dirent_key`): created, looked up, listed, renamed, linked, removed, kept across a
/// remount and a crash; a missing long name is ENOENT and 256 bytes ENAMETOOLONG.
fn names_of_up_to_255_bytes_as_on_ext4(on: On) {
    let mut f = on.fixture();
    let name = |len: usize, c: char| c.to_string().repeat(len);
    assert_eq!(nix::sys::statvfs::statvfs(&f.mnt).unwrap().name_max(), 255);
    let dir = name(255, 'd');
    fs::create_dir(f.p(&dir)).unwrap();
    let mut want = Vec::new();
    for len in [1, 247, 248, 250, 255] {
        let n = name(len, 'f');
        fs::write(f.p(&format!("{dir}/{n}")), n.len().to_string()).unwrap();
        want.push(n);
    }
    let (old, new) = (name(255, 'f'), name(252, 'r'));
    fs::rename(f.p(&format!("{dir}/{old}")), f.p(&format!("{dir}/{new}"))).unwrap();
    want.retain(|n| n != &old);
    want.push(new.clone());
    let link = name(249, 'l');
    fs::hard_link(f.p(&format!("{dir}/{new}")), f.p(&format!("{dir}/{link}"))).unwrap();
    want.push(link.clone());
    let sym = name(254, 's');
    std::os::unix::fs::symlink(&new, f.p(&format!("{dir}/{sym}"))).unwrap();
    want.push(sym.clone());
    want.sort();
    assert_eq!(
        errno_of(fs::metadata(f.p(&format!("{dir}/{}", name(250, 'x')))).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(fs::write(f.p(&format!("{dir}/{}", name(256, 'x'))), b"").unwrap_err()),
        libc::ENAMETOOLONG
    );
    let check = |f: &Fixture, want: &[String]| {
        let mut listed: Vec<String> = fs::read_dir(f.p(&dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        listed.sort();
        assert_eq!(listed, want);
        assert_eq!(fs::read(f.p(&format!("{dir}/{new}"))).unwrap(), b"255");
        assert_eq!(fs::read(f.p(&format!("{dir}/{sym}"))).unwrap(), b"255");
        assert_eq!(
            fs::metadata(f.p(&format!("{dir}/{link}"))).unwrap().nlink(),
            2
        );
    };
    check(&f, &want);
    f.remount();
    check(&f, &want);
    fs::remove_file(f.p(&format!("{dir}/{link}"))).unwrap();
    want.retain(|n| n != &link);
    File::open(f.p(&dir)).unwrap().sync_all().unwrap();
    f.crash_and_remount();
    let mut listed: Vec<String> = fs::read_dir(f.p(&dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, want, "after a crash");
    assert_eq!(
        fs::metadata(f.p(&format!("{dir}/{new}"))).unwrap().nlink(),
        1
    );
    let report = qsfs_fuse::fsck::check(&*f.store, "qsfs", false).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}
