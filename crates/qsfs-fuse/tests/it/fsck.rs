//! `fsck::check` on a real engine: a clean filesystem is clean with the expected counts; a
//! deliberately broken one reports each break, repair fixes them all, and the files a name
//! still reaches read back identical after re-opening the filesystem.

#![allow(clippy::unwrap_used)]

use crate::common;

use qsfs_core::Store;
use qsfs_fuse::fsck::{check, FsckReport};
use qsfs_fuse::layout::{
    decode, dirent_key, encode, ino_key, pair_key, Inode, Namespaces, ROOT_INO,
};
use qsfs_fuse::{Fs, FsConfig};
use std::sync::Arc;

const BS: usize = 4096;

fn cfg() -> FsConfig {
    FsConfig {
        block_size: BS as u32,
        ..common::config()
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

struct Built {
    a: u64,
    b: u64,
    c: u64,
    victim: u64,
    lost: u64,
}

/// root: a.txt (3 blocks), d/ { b.txt (2 blocks), sub/, c2 (hard link to c.txt) }, c.txt,
/// victim, lost, s -> a.txt. 9 inodes, 9 dirents.
fn build(store: &Arc<dyn Store>) -> Built {
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let file = |fs: &mut Fs, parent: u64, name: &[u8], bytes: &[u8]| {
        let (attr, fh) = fs.create(parent, name, 0o644, 0, 0, 0).unwrap();
        fs.write(attr.ino, fh, 0, bytes).unwrap();
        fs.release(attr.ino, fh).unwrap();
        attr.ino
    };
    let a = file(&mut fs, ROOT_INO, b"a.txt", &data(10_000, 1));
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let b = file(&mut fs, d, b"b.txt", &data(5_000, 2));
    fs.mkdir(d, b"sub", 0o755, 0, 0).unwrap();
    let c = file(&mut fs, ROOT_INO, b"c.txt", &data(300, 3));
    fs.link(c, d, b"c2").unwrap();
    let victim = file(&mut fs, ROOT_INO, b"victim", &data(100, 4));
    let lost = file(&mut fs, ROOT_INO, b"lost", &data(6_000, 5));
    fs.symlink(ROOT_INO, b"s", b"a.txt", 0, 0).unwrap();
    fs.shutdown().unwrap();
    Built {
        a,
        b,
        c,
        victim,
        lost,
    }
}

fn read_back(fs: &mut Fs, ino: u64, len: usize) -> Vec<u8> {
    let fh = fs.open_file(ino, 0).unwrap();
    let out = fs.read(ino, fh, 0, len as u32 + 100).unwrap();
    fs.release(ino, fh).unwrap();
    out
}

fn has(report: &FsckReport, needle: &str) -> bool {
    report
        .problems
        .iter()
        .any(|p| p.description.contains(needle))
}

#[test]
fn clean_filesystem_is_clean_with_expected_counts() {
    let (store, _dir) = common::engine();
    build(&store);
    let report = check(&*store, "qsfs", false).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.inodes, 9);
    assert_eq!(report.dirents, 9);
    // a.txt 3 + b.txt 2 + c.txt 1 + victim 1 + lost 2 blocks, one map chunk per file.
    assert_eq!(report.blocks, 9);
    assert_eq!(report.chunks, 5);
    assert_eq!(report.orphans, 0);
    // Repair of a clean filesystem changes nothing.
    let again = check(&*store, "qsfs", true).unwrap();
    assert!(again.problems.is_empty(), "{:#?}", again.problems);
}

#[test]
fn broken_filesystem_is_reported_and_repaired() {
    let (store, _dir) = common::engine();
    let built = build(&store);
    let ns = Namespaces::new("qsfs");

    // 1. A dirent pointing to a deleted inode (its blocks and map now belong to nothing).
    store.delete(&ns.inode, &ino_key(built.victim)).unwrap();
    // 2. A file whose only name is gone: unreachable, and its listing slot is stale.
    store
        .delete(&ns.dirent, &dirent_key(ROOT_INO, b"lost"))
        .unwrap();
    // 3. A corrupt record: a flipped byte in a.txt's block map.
    let mut map = store
        .get(&ns.bmap, &pair_key(built.a, 0))
        .unwrap()
        .unwrap()
        .value;
    let mid = map.len() / 2;
    map[mid] ^= 0x40;
    store
        .set(&ns.bmap, Some(&pair_key(built.a, 0)), &map)
        .unwrap();
    // 4. A block whose map bit is set is gone.
    store.delete(&ns.block, &pair_key(built.b, 1)).unwrap();
    // 5. A wrong link count.
    let mut c: Inode = decode(
        &store
            .get(&ns.inode, &ino_key(built.c))
            .unwrap()
            .unwrap()
            .value,
        "c",
    )
    .unwrap();
    assert_eq!(c.nlink, 2);
    c.nlink = 5;
    store
        .set(&ns.inode, Some(&ino_key(built.c)), &encode(&c))
        .unwrap();
    // 6. A block beyond the end of a.txt, and 7. an orphan record of an inode that never was.
    store
        .set(&ns.block, Some(&pair_key(built.a, 100)), b"junk")
        .unwrap();
    store.set(&ns.orphan, Some(&ino_key(99_999)), &[1]).unwrap();

    let report = check(&*store, "qsfs", false).unwrap();
    let expect = [
        format!("dirent 1/victim points to missing inode {}", built.victim),
        format!("block {}/0 belongs to no file", built.victim),
        format!("block map {}/0 belongs to no file", built.victim),
        format!("inode {} is not reachable from the root", built.lost),
        "listing page 1/0 slot".to_string(),
        format!("block map {}/0: ", built.a),
        format!(
            "block map of inode {} marks block 1, which is not stored",
            built.b
        ),
        format!("inode {} has link count 5 but 2 links", built.c),
        format!("block {}/100 lies beyond the end of the file", built.a),
        "orphan record for inode 99999, which is gone".to_string(),
    ];
    for e in &expect {
        assert!(has(&report, e), "missing {e:?} in {:#?}", report.problems);
    }
    assert!(!report.is_clean());
    assert!(report.problems.iter().all(|p| !p.repaired));
    // The check alone changed nothing.
    let again = check(&*store, "qsfs", false).unwrap();
    assert_eq!(again.problems, report.problems);

    let repaired = check(&*store, "qsfs", true).unwrap();
    assert!(repaired.is_clean(), "{:#?}", repaired.problems);
    assert!(repaired.problems.len() >= expect.len());
    let after = check(&*store, "qsfs", false).unwrap();
    assert!(after.problems.is_empty(), "{:#?}", after.problems);
    // victim is gone; lost+found was created and holds `lost`.
    assert_eq!(after.inodes, 9);
    assert_eq!(after.dirents, 9);

    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    assert_eq!(read_back(&mut fs, built.a, 10_000), data(10_000, 1));
    let d = fs.lookup(ROOT_INO, b"d").unwrap().ino;
    let c2 = fs.lookup(d, b"c2").unwrap();
    assert_eq!(c2.ino, built.c);
    assert_eq!(read_back(&mut fs, built.c, 300), data(300, 3));
    let lf = fs.lookup(ROOT_INO, b"lost+found").unwrap().ino;
    let found = fs
        .lookup(lf, format!("#{}", built.lost).as_bytes())
        .unwrap();
    assert_eq!(found.ino, built.lost);
    assert_eq!(read_back(&mut fs, built.lost, 6_000), data(6_000, 5));
    // b.txt keeps its first block; the lost one reads as a hole.
    let mut want_b = data(5_000, 2);
    want_b[BS..].fill(0);
    assert_eq!(read_back(&mut fs, built.b, 5_000), want_b);
    assert!(fs.lookup(ROOT_INO, b"victim").is_err());
    let names: Vec<Vec<u8>> = fs
        .readdir(ROOT_INO, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&b"lost+found".to_vec()), "{names:?}");
    assert!(!names.contains(&b"lost".to_vec()), "{names:?}");
    fs.shutdown().unwrap();
    let last = check(&*store, "qsfs", false).unwrap();
    assert!(last.problems.is_empty(), "{:#?}", last.problems);
}

#[test]
fn lost_directory_wrong_kind_corrupt_listing_and_unmapped_block_are_repaired() {
    let (store, _dir) = common::engine();
    let built = build(&store);
    let ns = Namespaces::new("qsfs");
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let d = fs.lookup(ROOT_INO, b"d").unwrap().ino;
    let sub = fs.lookup(d, b"sub").unwrap().ino;
    fs.shutdown().unwrap();
    drop(fs);

    // The whole of d/ loses its name: d comes back under lost+found with b.txt, sub and c2.
    store
        .delete(&ns.dirent, &dirent_key(ROOT_INO, b"d"))
        .unwrap();
    // A dirent with the wrong kind.
    let key = dirent_key(ROOT_INO, b"s");
    let mut s: qsfs_fuse::layout::Dirent =
        decode(&store.get(&ns.dirent, &key).unwrap().unwrap().value, "s").unwrap();
    assert_eq!(s.kind, qsfs_fuse::layout::Kind::Symlink);
    s.kind = qsfs_fuse::layout::Kind::File;
    store.set(&ns.dirent, Some(&key), &encode(&s)).unwrap();
    // A corrupt listing page of the root (rebuilt from the dirents).
    let mut page = store
        .get(&ns.dirpage, &pair_key(ROOT_INO, 0))
        .unwrap()
        .unwrap()
        .value;
    let last = page.len() - 1;
    page[last] ^= 1;
    store
        .set(&ns.dirpage, Some(&pair_key(ROOT_INO, 0)), &page)
        .unwrap();
    // A stored block the map does not know (a.txt's map loses bit 2; the block stays).
    let mut map: qsfs_fuse::layout::Chunk = decode(
        &store
            .get(&ns.bmap, &pair_key(built.a, 0))
            .unwrap()
            .unwrap()
            .value,
        "map",
    )
    .unwrap();
    assert!(map.clear(2));
    store
        .set(&ns.bmap, Some(&pair_key(built.a, 0)), &encode(&map))
        .unwrap();

    let report = check(&*store, "qsfs", false).unwrap();
    for e in [
        format!("inode {d} is not reachable from the root"),
        "dirent 1/s says File but inode".to_string(),
        "listing page 1/0: ".to_string(),
        format!("block {}/2 is stored but not in the block map", built.a),
    ] {
        assert!(has(&report, &e), "missing {e:?} in {:#?}", report.problems);
    }
    // Only the top of the lost subtree is re-attached; what hangs below comes with it.
    assert!(!has(&report, &format!("inode {sub} is not reachable")));
    assert!(!has(
        &report,
        &format!("inode {} is not reachable", built.b)
    ));

    let repaired = check(&*store, "qsfs", true).unwrap();
    assert!(repaired.is_clean(), "{:#?}", repaired.problems);
    let after = check(&*store, "qsfs", false).unwrap();
    assert!(after.problems.is_empty(), "{:#?}", after.problems);
    assert_eq!(after.inodes, 10, "lost+found added");
    assert_eq!(after.dirents, 10, "d's name replaced by lost+found and #d");

    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let lf = fs.lookup(ROOT_INO, b"lost+found").unwrap();
    assert_eq!(lf.inode.nlink, 3, "lost+found holds one directory");
    let back = fs.lookup(lf.ino, format!("#{d}").as_bytes()).unwrap();
    assert_eq!(back.ino, d);
    assert_eq!(fs.lookup(d, b"b.txt").unwrap().ino, built.b);
    assert_eq!(read_back(&mut fs, built.b, 5_000), data(5_000, 2));
    assert_eq!(read_back(&mut fs, built.a, 10_000), data(10_000, 1));
    let link = fs.lookup(ROOT_INO, b"s").unwrap().ino;
    assert_eq!(fs.readlink(link).unwrap(), b"a.txt");
    let names: Vec<Vec<u8>> = fs
        .readdir(ROOT_INO, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    for n in [
        &b"a.txt"[..],
        b"c.txt",
        b"victim",
        b"lost",
        b"s",
        b"lost+found",
    ] {
        assert!(names.contains(&n.to_vec()), "{n:?} not listed: {names:?}");
    }
    fs.shutdown().unwrap();
}

#[test]
fn corrupt_inode_is_reported_and_left_alone() {
    let (store, _dir) = common::engine();
    let built = build(&store);
    let ns = Namespaces::new("qsfs");
    let mut raw = store
        .get(&ns.inode, &ino_key(built.a))
        .unwrap()
        .unwrap()
        .value;
    raw[3] ^= 0x10;
    store.set(&ns.inode, Some(&ino_key(built.a)), &raw).unwrap();

    let report = check(&*store, "qsfs", true).unwrap();
    assert!(
        has(&report, &format!("inode {}: ", built.a)),
        "{:#?}",
        report.problems
    );
    assert_eq!(report.remaining(), 1, "{:#?}", report.problems);
    // Its blocks, map and name survive the repair: the data may still be recovered.
    assert_eq!(
        store
            .get(&ns.inode, &ino_key(built.a))
            .unwrap()
            .unwrap()
            .value,
        raw
    );
    for i in 0..3 {
        assert!(store.exists(&ns.block, &pair_key(built.a, i)).unwrap());
    }
    assert!(store.exists(&ns.bmap, &pair_key(built.a, 0)).unwrap());
    assert!(store
        .exists(&ns.dirent, &dirent_key(ROOT_INO, b"a.txt"))
        .unwrap());
}

#[test]
fn repaired_filesystem_reads_back_through_a_real_mount() {
    let mut fx = common::Fixture::new();
    let a = data(300_000, 7);
    let b = data(70_000, 8);
    std::fs::write(fx.p("a"), &a).unwrap();
    std::fs::create_dir(fx.p("dir")).unwrap();
    std::fs::write(fx.p("dir/b"), &b).unwrap();
    std::fs::hard_link(fx.p("a"), fx.p("dir/a2")).unwrap();
    std::fs::write(fx.p("gone"), b"x").unwrap();
    fx.mount.take().unwrap().unmount().unwrap();
    let clean = check(&*fx.store, "qsfs", false).unwrap();
    assert!(clean.problems.is_empty(), "{:#?}", clean.problems);
    assert_eq!((clean.inodes, clean.dirents), (5, 5));

    let ns = Namespaces::new("qsfs");
    let mut fs = Fs::open(fx.store.clone(), common::config()).unwrap();
    let dir = fs.lookup(ROOT_INO, b"dir").unwrap().ino;
    let gone = fs.lookup(ROOT_INO, b"gone").unwrap().ino;
    let b_ino = fs.lookup(dir, b"b").unwrap().ino;
    fs.shutdown().unwrap();
    drop(fs);
    // `dir/b` loses its name, `gone` its inode, and the root's link count is wrong.
    fx.store.delete(&ns.dirent, &dirent_key(dir, b"b")).unwrap();
    fx.store.delete(&ns.inode, &ino_key(gone)).unwrap();
    let mut root: Inode = decode(
        &fx.store
            .get(&ns.inode, &ino_key(ROOT_INO))
            .unwrap()
            .unwrap()
            .value,
        "root",
    )
    .unwrap();
    root.nlink = 7;
    fx.store
        .set(&ns.inode, Some(&ino_key(ROOT_INO)), &encode(&root))
        .unwrap();

    let report = check(&*fx.store, "qsfs", true).unwrap();
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert!(has(&report, "inode 1 has link count 7 but 4 links"));
    assert!(has(&report, &format!("inode {b_ino} is not reachable")));
    assert!(has(&report, "dirent 1/gone points to missing inode"));
    assert!(check(&*fx.store, "qsfs", false)
        .unwrap()
        .problems
        .is_empty());

    fx.remount();
    assert_eq!(std::fs::read(fx.p("a")).unwrap(), a);
    assert_eq!(std::fs::read(fx.p("dir/a2")).unwrap(), a);
    assert_eq!(
        std::fs::read(fx.p(&format!("lost+found/#{b_ino}"))).unwrap(),
        b
    );
    assert!(!fx.p("gone").exists());
    assert!(!fx.p("dir/b").exists());
    let meta = std::fs::metadata(fx.p("")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.nlink(), 4, "root: 2 + dir + lost+found");
}

#[test]
fn directory_cycle_cut_off_from_the_root_is_broken_and_reattached() {
    let (store, _dir) = common::engine();
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let p = fs.mkdir(ROOT_INO, b"p", 0o755, 0, 0).unwrap().ino;
    let q = fs.mkdir(p, b"q", 0o755, 0, 0).unwrap().ino;
    let (f, fh) = fs.create(q, b"f", 0o644, 0, 0, 0).unwrap();
    fs.write(f.ino, fh, 0, &data(9_000, 9)).unwrap();
    fs.release(f.ino, fh).unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    let ns = Namespaces::new("qsfs");
    // p leaves the root and becomes a child of its own child q (not even listed in q's pages).
    store
        .delete(&ns.dirent, &dirent_key(ROOT_INO, b"p"))
        .unwrap();
    let loop_dirent = qsfs_fuse::layout::Dirent {
        ino: p,
        kind: qsfs_fuse::layout::Kind::Dir,
        page: 0,
        slot: 50,
    };
    store
        .set(
            &ns.dirent,
            Some(&dirent_key(q, b"loop")),
            &encode(&loop_dirent),
        )
        .unwrap();

    let report = check(&*store, "qsfs", false).unwrap();
    assert!(
        has(&report, &format!("inode {p} is in a directory cycle")),
        "{:#?}",
        report.problems
    );
    let repaired = check(&*store, "qsfs", true).unwrap();
    assert!(repaired.is_clean(), "{:#?}", repaired.problems);
    let after = check(&*store, "qsfs", false).unwrap();
    assert!(after.problems.is_empty(), "{:#?}", after.problems);
    assert_eq!((after.inodes, after.dirents), (5, 4));

    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let lf = fs.lookup(ROOT_INO, b"lost+found").unwrap().ino;
    assert_eq!(fs.lookup(lf, format!("#{p}").as_bytes()).unwrap().ino, p);
    assert!(fs.lookup(q, b"loop").is_err());
    assert_eq!(fs.lookup(q, b"f").unwrap().ino, f.ino);
    assert_eq!(read_back(&mut fs, f.ino, 9_000), data(9_000, 9));
    let names: Vec<Vec<u8>> = fs
        .readdir(q, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, [&b"."[..], b"..", b"f"].map(|n| n.to_vec()));
    fs.shutdown().unwrap();
}
