//! `fsck::check` on a real engine: a clean filesystem is clean with the expected counts; a
//! deliberately broken one reports each break, repair fixes them all, and the files a name
//! still reaches read back identical after re-opening the filesystem.

#![allow(clippy::unwrap_used)]

use crate::common;

use qsfs_core::Store;
use qsfs_fuse::fsck::{check, FsckReport, Salvage};
use qsfs_fuse::layout::{
    decode, dirent_key, encode, ino_key, pair_key, Inode, Namespaces, ROOT_INO, SUPER_KEY,
};
use qsfs_fuse::{Fs, FsConfig};
use std::os::unix::fs::FileExt;
use std::path::Path;
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

/// A check without repair finds nothing.
fn assert_clean(store: &dyn Store) {
    let report = check(store, "qsfs", false).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
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
        format!("block map {}/0 is damaged", built.a),
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
        "listing page 1/0 is damaged".to_string(),
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
fn undecodable_inode_is_restored_from_its_older_version() {
    let (store, _dir) = common::engine();
    let built = build(&store);
    let ns = Namespaces::new("qsfs");
    let good = store
        .get(&ns.inode, &ino_key(built.a))
        .unwrap()
        .unwrap()
        .value;
    let mut raw = good.clone();
    raw[3] ^= 0x10;
    store.set(&ns.inode, Some(&ino_key(built.a)), &raw).unwrap();

    let report = check(&*store, "qsfs", false).unwrap();
    assert!(
        has(
            &report,
            &format!(
                "inode {} (named a.txt in directory 1) is damaged (",
                built.a
            )
        ),
        "{:#?}",
        report.problems
    );
    assert_eq!(report.remaining(), 1, "{:#?}", report.problems);
    let report = check(&*store, "qsfs", true).unwrap();
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert!(
        has(
            &report,
            &format!(
                "inode {} (named a.txt in directory 1) restored from its version of",
                built.a
            )
        ),
        "{:#?}",
        report.problems
    );
    assert_eq!(
        store
            .get(&ns.inode, &ino_key(built.a))
            .unwrap()
            .unwrap()
            .value,
        good
    );
    let again = check(&*store, "qsfs", true).unwrap();
    assert!(again.problems.is_empty(), "{:#?}", again.problems);
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    assert_eq!(read_back(&mut fs, built.a, 10_000), data(10_000, 1));
    fs.shutdown().unwrap();
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

// ----- Records damaged on disk: the engine's checksum fails, `get` answers `Corrupt`. -----

/// Every stored value of `key` in `ns`, newest first (tombstones left out), through the
/// store's history.
fn versions(store: &dyn Store, ns: &str, key: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = None;
    loop {
        let v = store.history(ns, key, at).unwrap();
        if !v.deleted {
            out.push(v.value);
        }
        match v.previous {
            Some(p) => at = Some(p),
            None => return out,
        }
    }
}

/// Closes the engine, flips a byte in the middle of each of `values` stored under `key` in
/// namespace `ns` (found in the segment files as the key followed by the value, which is how a
/// record lays them out after its header), and opens the engine again.
fn damage_on_disk(
    store: &mut Arc<dyn Store>,
    dir: &Path,
    ns: &str,
    key: &[u8],
    values: &[Vec<u8>],
) {
    flip_on_disk(store, dir, ns, key, values, |key_at, value_len| {
        key_at + key.len() + value_len / 2
    });
}

/// [`damage_on_disk`] with the byte to flip chosen by `at(offset of the key, value length)`.
fn flip_on_disk(
    store: &mut Arc<dyn Store>,
    dir: &Path,
    ns: &str,
    key: &[u8],
    values: &[Vec<u8>],
    at: impl Fn(usize, usize) -> usize,
) {
    let placeholder = common::open_engine(&dir.join("placeholder"));
    let old = std::mem::replace(store, placeholder);
    assert_eq!(Arc::strong_count(&old), 1, "someone still holds the engine");
    drop(old);
    let mut flipped = 0;
    for entry in std::fs::read_dir(dir.join("ns").join(ns)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        for value in values {
            let needle: Vec<u8> = [key, value].concat();
            for (pos, _) in bytes
                .windows(needle.len())
                .enumerate()
                .filter(|(_, w)| *w == needle)
            {
                let at = at(pos, value.len());
                f.write_all_at(&[bytes[at] ^ 0x5a], at as u64).unwrap();
                flipped += 1;
            }
        }
    }
    assert!(
        flipped >= values.len(),
        "found {flipped} of {}",
        values.len()
    );
    *store = common::open_engine(dir);
}

/// Sets inode `ino`'s link count to `nlink`: an unrelated problem planted beside the damage.
fn wrong_link_count(store: &dyn Store, ino: u64, nlink: u32) {
    let ns = Namespaces::new("qsfs");
    let mut n: Inode = decode(
        &store.get(&ns.inode, &ino_key(ino)).unwrap().unwrap().value,
        "inode",
    )
    .unwrap();
    n.nlink = nlink;
    store
        .set(&ns.inode, Some(&ino_key(ino)), &encode(&n))
        .unwrap();
}

#[test]
fn inode_failing_the_engine_checksum_is_restored_from_its_older_version() {
    let (mut store, dir) = common::engine();
    let built = build(&store);
    let ns = Namespaces::new("qsfs");
    wrong_link_count(&*store, built.c, 7);
    // a.txt grows from 10,000 to 12,000 bytes: a second version of its inode.
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let fh = fs.open_file(built.a, libc::O_WRONLY).unwrap();
    fs.write(built.a, fh, 10_000, &data(12_000, 1)[10_000..])
        .unwrap();
    fs.release(built.a, fh).unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    let live = versions(&*store, &ns.inode, &ino_key(built.a));
    assert_eq!(live.len(), 2, "a.txt's inode was written twice");
    damage_on_disk(
        &mut store,
        dir.path(),
        &ns.inode,
        &ino_key(built.a),
        &live[..1],
    );
    assert!(matches!(
        store.get(&ns.inode, &ino_key(built.a)),
        Err(qsfs_core::Error::Corrupt { .. })
    ));

    let report = check(&*store, "qsfs", false).unwrap();
    let found = format!("inode {} ", built.a);
    let p = report
        .problems
        .iter()
        .find(|p| p.description.starts_with(&found))
        .unwrap_or_else(|| panic!("no problem for inode {}: {:#?}", built.a, report.problems));
    assert!(
        p.description.contains("segment"),
        "names the engine's location: {p:?}"
    );
    assert!(!p.repaired);
    // The check went on: the unrelated problem is reported too.
    assert!(has(
        &report,
        &format!("inode {} has link count 7 but 2 links", built.c)
    ));

    let repaired = check(&*store, "qsfs", true).unwrap();
    assert!(repaired.is_clean(), "{:#?}", repaired.problems);
    assert!(
        has(
            &repaired,
            &format!(
                "inode {} (named a.txt in directory 1) restored from its version of",
                built.a
            )
        ),
        "{:#?}",
        repaired.problems
    );
    let salvaged: Vec<_> = repaired.problems.iter().filter_map(|p| p.salvage).collect();
    assert_eq!(salvaged, [Salvage::Restored]);
    assert_clean(&*store);

    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let a = fs.lookup(ROOT_INO, b"a.txt").unwrap();
    assert_eq!(a.ino, built.a);
    // The older version said 10,000 bytes; the stored blocks say 12,000.
    assert_eq!(a.inode.size, 12_000);
    assert_eq!(read_back(&mut fs, built.a, 12_000), data(12_000, 1));
    let link = fs.lookup(ROOT_INO, b"s").unwrap().ino;
    assert_eq!(fs.readlink(link).unwrap(), b"a.txt");
    fs.shutdown().unwrap();
}

/// Damages every stored version of `key` in `ns` on disk (see [`damage_on_disk`]).
fn damage_every_version(store: &mut Arc<dyn Store>, dir: &Path, ns: &str, key: &[u8]) {
    let all = versions(&**store, ns, key);
    damage_on_disk(store, dir, ns, key, &all);
}

fn names_in(fs: &mut Fs, dir: u64) -> Vec<Vec<u8>> {
    fs.readdir(dir, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

#[test]
fn inode_with_no_intact_version_is_rebuilt_minimal_and_safe() {
    let (mut store, dir) = common::engine();
    let built = build(&store);
    let ns = Namespaces::new("qsfs");
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let d = fs.lookup(ROOT_INO, b"d").unwrap().ino;
    let home = fs.mkdir(ROOT_INO, b"home", 0o750, 1000, 100).unwrap().ino;
    let (prog, fh) = fs.create(home, b"prog", 0o4755, 0, 1000, 100).unwrap();
    fs.write(prog.ino, fh, 0, &data(9_000, 6)).unwrap();
    fs.release(prog.ino, fh).unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    wrong_link_count(&*store, built.c, 9);
    // Neither the file nor the directory d/ has a version left that reads intact.
    damage_every_version(&mut store, dir.path(), &ns.inode, &ino_key(prog.ino));
    damage_every_version(&mut store, dir.path(), &ns.inode, &ino_key(d));

    let report = check(&*store, "qsfs", false).unwrap();
    for (ino, name, parent) in [(prog.ino, "prog", home), (d, "d", ROOT_INO)] {
        let want = format!(
            "inode {ino} (named {name} in directory {parent}) is damaged (corrupt data at segment"
        );
        assert!(has(&report, &want), "{want:?} in {:#?}", report.problems);
    }
    assert!(has(&report, "and no older version is intact"));
    assert!(has(&report, &format!("inode {} has link count 9", built.c)));

    let repaired = check(&*store, "qsfs", true).unwrap();
    assert!(repaired.is_clean(), "{:#?}", repaired.problems);
    assert!(has(
        &repaired,
        &format!(
            "inode {} (named prog in directory {home}) rebuilt as a minimal File inode",
            prog.ino
        )
    ));
    assert!(has(
        &repaired,
        &format!("inode {d} (named d in directory 1) rebuilt as a minimal Dir inode")
    ));
    assert!(has(
        &repaired,
        &format!("inode {}: size 0 raised to 9000", prog.ino)
    ));
    let salvaged: Vec<_> = repaired.problems.iter().filter_map(|p| p.salvage).collect();
    assert_eq!(salvaged, [Salvage::Rebuilt, Salvage::Rebuilt]);
    assert_clean(&*store);

    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let back = fs.lookup(home, b"prog").unwrap();
    assert_eq!(back.ino, prog.ino);
    let n = &back.inode;
    // Safe: no setuid, owner-only; owner and group are the directory's.
    assert_eq!((n.perm, n.uid, n.gid, n.nlink), (0o600, 1000, 100, 1));
    assert_eq!(n.size, 9_000);
    assert_eq!(read_back(&mut fs, prog.ino, 9_000), data(9_000, 6));
    let dd = fs.lookup(ROOT_INO, b"d").unwrap();
    assert_eq!((dd.ino, dd.inode.perm, dd.inode.nlink), (d, 0o700, 3));
    assert_eq!(
        names_in(&mut fs, d),
        [&b"."[..], b"..", b"b.txt", b"sub", b"c2"].map(|n| n.to_vec())
    );
    assert_eq!(read_back(&mut fs, built.b, 5_000), data(5_000, 2));
    // New names in the rebuilt directory take new slots: nothing listed is overwritten.
    let (x, fh) = fs.create(d, b"new", 0o644, 0, 0, 0).unwrap();
    fs.release(x.ino, fh).unwrap();
    assert_eq!(names_in(&mut fs, d).len(), 6);
    assert!(x.ino > prog.ino, "inode numbers are not handed out twice");
    fs.shutdown().unwrap();
    assert_clean(&*store);
}

#[test]
fn symlink_with_no_intact_version_is_reported_and_left() {
    let (mut store, dir) = common::engine();
    let built = build(&store);
    let ns = Namespaces::new("qsfs");
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let s = fs.lookup(ROOT_INO, b"s").unwrap().ino;
    fs.shutdown().unwrap();
    drop(fs);
    wrong_link_count(&*store, built.c, 4);
    damage_every_version(&mut store, dir.path(), &ns.inode, &ino_key(s));

    let repaired = check(&*store, "qsfs", true).unwrap();
    let want = format!("inode {s} (a symlink, named s in directory 1) is damaged");
    let p = repaired
        .problems
        .iter()
        .find(|p| p.description.starts_with(&want))
        .unwrap_or_else(|| panic!("{want:?} in {:#?}", repaired.problems));
    assert!(!p.repaired);
    assert!(p.description.contains("its target is lost"), "{p:?}");
    assert_eq!(repaired.remaining(), 1, "{:#?}", repaired.problems);
    // The rest was repaired, and the name and record are kept for a human.
    let again = check(&*store, "qsfs", true).unwrap();
    assert_eq!(again.problems.len(), 1, "{:#?}", again.problems);
    assert!(store
        .exists(&ns.dirent, &dirent_key(ROOT_INO, b"s"))
        .unwrap());
    assert!(matches!(
        store.get(&ns.inode, &ino_key(s)),
        Err(qsfs_core::Error::Corrupt { .. })
    ));
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    assert!(fs.lookup(ROOT_INO, b"s").is_err());
    assert_eq!(fs.lookup(ROOT_INO, b"c.txt").unwrap().inode.nlink, 2);
    assert_eq!(read_back(&mut fs, built.a, 10_000), data(10_000, 1));
    fs.shutdown().unwrap();
}

#[test]
fn damaged_dirent_listing_page_and_block_map_come_back_and_nothing_reachable_is_lost() {
    let (mut store, dir) = common::engine();
    let built = build(&store);
    let ns = Namespaces::new("qsfs");
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let d = fs.lookup(ROOT_INO, b"d").unwrap().ino;
    let sub = fs.lookup(d, b"sub").unwrap().ino;
    let (x, fh) = fs.create(sub, b"x", 0o644, 0, 0, 0).unwrap();
    fs.release(x.ino, fh).unwrap();
    // A second version of the root's listing page: "later" is listed after the first.
    let (later, fh) = fs.create(ROOT_INO, b"later", 0o644, 0, 0, 0).unwrap();
    fs.write(later.ino, fh, 0, b"late").unwrap();
    fs.release(later.ino, fh).unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    let root_page = versions(&*store, &ns.dirpage, &pair_key(ROOT_INO, 0));
    assert_eq!(root_page.len(), 2);
    // The live root page (its older version is intact); every version of d/'s page, of the
    // dirents /c.txt (listed in the restored root page), d/sub/x (listed in an intact page) and
    // d/b.txt (listed nowhere now), and of the block map of `lost`.
    damage_on_disk(
        &mut store,
        dir.path(),
        &ns.dirpage,
        &pair_key(ROOT_INO, 0),
        &root_page[..1],
    );
    damage_every_version(&mut store, dir.path(), &ns.dirpage, &pair_key(d, 0));
    damage_every_version(
        &mut store,
        dir.path(),
        &ns.dirent,
        &dirent_key(ROOT_INO, b"c.txt"),
    );
    damage_every_version(&mut store, dir.path(), &ns.bmap, &pair_key(built.lost, 0));
    for (parent, name) in [(sub, &b"x"[..]), (d, b"b.txt")] {
        damage_every_version(
            &mut store,
            dir.path(),
            &ns.dirent,
            &dirent_key(parent, name),
        );
    }

    let report = check(&*store, "qsfs", false).unwrap();
    for e in [
        "listing page 1/0 is damaged (corrupt data at segment".to_string(),
        format!("listing page {d}/0: corrupt data at segment"),
        "dirent 1/c.txt: corrupt data at segment".to_string(),
        format!("block map {}/0: corrupt data at segment", built.lost),
    ] {
        assert!(has(&report, &e), "missing {e:?} in {:#?}", report.problems);
    }
    let repaired = check(&*store, "qsfs", true).unwrap();
    assert!(repaired.is_clean(), "{:#?}", repaired.problems);
    for e in [
        "listing page 1/0 restored from its version of".to_string(),
        format!("listing page {d}/0: corrupt data at segment"),
        "dirent 1/c.txt: corrupt data at segment".to_string(),
        "(rebuilt from listing page 1/0)".to_string(),
        format!("dirent {sub}/x: corrupt data at segment"),
        format!("(rebuilt from listing page {sub}/0)"),
        format!("dirent {d}/b.txt: corrupt data at segment"),
        "no page lists it, no older version is intact: dropped".to_string(),
        format!("inode {} is not reachable from the root", built.b),
        "(rebuilt from the stored blocks)".to_string(),
    ] {
        assert!(
            has(&repaired, &e),
            "missing {e:?} in {:#?}",
            repaired.problems
        );
    }
    assert_clean(&*store);

    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    assert_eq!(
        names_in(&mut fs, ROOT_INO),
        [
            &b"."[..],
            b"..",
            b"a.txt",
            b"d",
            b"c.txt",
            b"victim",
            b"lost",
            b"s",
            b"later",
            b"lost+found"
        ]
        .map(|n| n.to_vec())
    );
    assert_eq!(
        names_in(&mut fs, d),
        [&b"."[..], b"..", b"sub", b"c2"].map(|n| n.to_vec())
    );
    assert_eq!(fs.lookup(sub, b"x").unwrap().ino, x.ino);
    // A name nothing lists any more is dropped; its file is kept in lost+found.
    let lf = fs.lookup(ROOT_INO, b"lost+found").unwrap().ino;
    let b = fs.lookup(lf, format!("#{}", built.b).as_bytes()).unwrap();
    assert_eq!(b.ino, built.b);
    assert_eq!(read_back(&mut fs, built.b, 5_000), data(5_000, 2));
    assert_eq!(fs.lookup(ROOT_INO, b"c.txt").unwrap().ino, built.c);
    assert_eq!(read_back(&mut fs, built.c, 300), data(300, 3));
    assert_eq!(read_back(&mut fs, built.lost, 6_000), data(6_000, 5));
    assert_eq!(read_back(&mut fs, later.ino, 4), b"late");
    fs.shutdown().unwrap();
}

#[test]
fn damaged_data_block_is_reported_by_path_and_range_and_never_replaced() {
    let (mut store, dir) = common::engine();
    let built = build(&store);
    let ns = Namespaces::new("qsfs");
    // b.txt's second block gets a second version, so an older one exists that must not be used.
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let fh = fs.open_file(built.b, libc::O_WRONLY).unwrap();
    fs.write(built.b, fh, 4_500, b"NEWER").unwrap();
    fs.release(built.b, fh).unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    let key = pair_key(built.b, 1);
    let block = versions(&*store, &ns.block, &key);
    assert_eq!(block.len(), 2);
    damage_on_disk(&mut store, dir.path(), &ns.block, &key, &block[..1]);

    for repair in [false, true, true] {
        let report = check(&*store, "qsfs", repair).unwrap();
        let want = format!(
            "block {}/1 of /d/b.txt (bytes 4096..5000) fails its checksum (corrupt data at \
             segment",
            built.b
        );
        assert!(has(&report, &want), "{want:?} in {:#?}", report.problems);
        assert!(has(&report, "not replaced by an older version"));
        assert_eq!(report.remaining(), 1, "{:#?}", report.problems);
        assert_eq!(report.problems.len(), 1, "{:#?}", report.problems);
    }
    assert!(matches!(
        store.get(&ns.block, &key),
        Err(qsfs_core::Error::Corrupt { .. })
    ));
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let fh = fs.open_file(built.b, 0).unwrap();
    assert_eq!(
        fs.read(built.b, fh, 0, 4096).unwrap(),
        data(5_000, 2)[..4096]
    );
    assert!(
        fs.read(built.b, fh, 4096, 100).is_err(),
        "EIO, not old data"
    );
    fs.release(built.b, fh).unwrap();
    fs.shutdown().unwrap();
}

#[test]
fn damaged_superblock_and_xattrs_come_back_from_older_versions() {
    let (mut store, dir) = common::engine();
    let built = build(&store);
    let ns = Namespaces::new("qsfs");
    // Two mounts, one xattr each: two versions of c.txt's xattr record.
    for (name, value) in [(&b"user.a"[..], &b"1"[..]), (b"user.b", b"2")] {
        let mut fs = Fs::open(store.clone(), cfg()).unwrap();
        fs.setxattr(built.c, name, value, 0).unwrap();
        fs.shutdown().unwrap();
    }
    let sup = versions(&*store, &ns.sup, SUPER_KEY);
    assert!(sup.len() >= 2, "the mark was raised once at least");
    let xattrs = versions(&*store, &ns.xattr, &ino_key(built.c));
    assert_eq!(xattrs.len(), 2);
    damage_on_disk(&mut store, dir.path(), &ns.sup, SUPER_KEY, &sup[..1]);
    damage_on_disk(
        &mut store,
        dir.path(),
        &ns.xattr,
        &ino_key(built.c),
        &xattrs[..1],
    );

    let report = check(&*store, "qsfs", false).unwrap();
    for e in [
        "superblock is damaged (corrupt data at segment".to_string(),
        format!(
            "xattrs of inode {} is damaged (corrupt data at segment",
            built.c
        ),
    ] {
        assert!(has(&report, &e), "missing {e:?} in {:#?}", report.problems);
    }
    let repaired = check(&*store, "qsfs", true).unwrap();
    assert!(repaired.is_clean(), "{:#?}", repaired.problems);
    assert!(has(&repaired, "superblock restored from its version of"));
    assert_clean(&*store);

    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    assert_eq!(fs.getxattr(built.c, b"user.a").unwrap(), b"1");
    assert!(
        fs.getxattr(built.c, b"user.b").is_err(),
        "the older version"
    );
    // The mark is above every inode there is: a new one gets a number never used.
    let (n, fh) = fs.create(ROOT_INO, b"new", 0o644, 0, 0, 0).unwrap();
    fs.release(n.ino, fh).unwrap();
    assert!(n.ino > built.lost, "{} reused", n.ino);
    fs.shutdown().unwrap();
    assert_clean(&*store);
}

#[test]
fn damaged_record_header_ends_the_history_walk_and_the_inode_is_rebuilt() {
    let (mut store, dir) = common::engine();
    let built = build(&store);
    let ns = Namespaces::new("qsfs");
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let fh = fs.open_file(built.a, libc::O_WRONLY).unwrap();
    fs.write(built.a, fh, 10_000, &data(12_000, 1)[10_000..])
        .unwrap();
    fs.release(built.a, fh).unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    let key = ino_key(built.a);
    let live = versions(&*store, &ns.inode, &key);
    assert_eq!(live.len(), 2);
    // A byte of the live record's header, just before its key: its link to the older version
    // cannot be trusted, so the older version is out of reach.
    flip_on_disk(
        &mut store,
        dir.path(),
        &ns.inode,
        &key,
        &live[..1],
        |key_at, _| key_at - 2,
    );
    assert!(matches!(
        store.get(&ns.inode, &key),
        Err(qsfs_core::Error::Corrupt { .. })
    ));

    let report = check(&*store, "qsfs", false).unwrap();
    let want = format!("inode {} (named a.txt in directory 1) is damaged", built.a);
    assert!(has(&report, &want), "{want:?} in {:#?}", report.problems);
    assert!(has(&report, "no older version is intact"));
    let repaired = check(&*store, "qsfs", true).unwrap();
    assert!(repaired.is_clean(), "{:#?}", repaired.problems);
    assert_clean(&*store);
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let a = fs.lookup(ROOT_INO, b"a.txt").unwrap();
    assert_eq!((a.inode.perm, a.inode.size), (0o600, 12_000));
    assert_eq!(read_back(&mut fs, built.a, 12_000), data(12_000, 1));
    assert_eq!(
        fs.lookup(ROOT_INO, b"s").unwrap().inode.size,
        5,
        "s -> a.txt"
    );
    fs.shutdown().unwrap();
}

/// Makes `get` in one namespace fail as a store that went down does: not damage of one
/// record, so fsck must stop with the error rather than report and go on.
struct DownIn(String);

impl common::Hooks for DownIn {
    fn before_get(&self, ns: &str) -> qsfs_core::Result<()> {
        if ns == self.0 {
            return Err(qsfs_core::Error::Unavailable("store down".into()));
        }
        Ok(())
    }
}

#[test]
fn a_store_that_goes_down_still_stops_the_check_with_its_error() {
    let (store, _dir) = common::engine();
    build(&store);
    let ns = Namespaces::new("qsfs");
    for role in [&ns.inode, &ns.dirent, &ns.dirpage, &ns.bmap] {
        let down = common::Hooked::new(store.clone(), DownIn(role.clone()));
        for repair in [false, true] {
            match check(&*down, "qsfs", repair) {
                Err(qsfs_core::Error::Unavailable(_)) => {}
                other => panic!("{role}: expected the store's error, got {other:?}"),
            }
        }
    }
    assert_clean(&*store);
}

/// Names of 248 to 255 bytes are keyed by their hash: a check is clean with them and names
/// them in its reports; a long dirent that holds garbage is rebuilt from the listing page under
/// its own name, and the file reads back by that name.
#[test]
fn long_names_are_checked_and_rebuilt_by_their_name() {
    let (store, _dir) = common::engine();
    let ns = Namespaces::new("qsfs");
    let names: Vec<Vec<u8>> = [248usize, 251, 255]
        .iter()
        .map(|&n| (0..n).map(|i| b'a' + (i % 26) as u8).collect())
        .collect();
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    let d = fs.mkdir(ROOT_INO, &names[2], 0o755, 0, 0).unwrap().ino;
    let mut inos = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let (attr, fh) = fs.create(d, n, 0o644, 0, 0, 0).unwrap();
        fs.write(attr.ino, fh, 0, &data(5_000, i as u8)).unwrap();
        fs.release(attr.ino, fh).unwrap();
        inos.push(attr.ino);
    }
    fs.shutdown().unwrap();
    drop(fs);
    let report = check(&*store, "qsfs", false).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.dirents, 4);

    for n in &names[..2] {
        store
            .set(&ns.dirent, Some(&dirent_key(d, n)), b"garbage")
            .unwrap();
    }
    let report = check(&*store, "qsfs", true).unwrap();
    let shown = String::from_utf8_lossy(&names[1]).into_owned();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.description.contains(&shown)),
        "the damaged dirent is named: {:#?}",
        report.problems
    );
    assert_clean(&*store);
    let mut fs = Fs::open(store.clone(), cfg()).unwrap();
    assert_eq!(fs.lookup(ROOT_INO, &names[2]).unwrap().ino, d);
    for (i, n) in names.iter().enumerate() {
        let ino = fs.lookup(d, n).unwrap().ino;
        assert_eq!(ino, inos[i], "{} bytes", n.len());
        assert_eq!(read_back(&mut fs, ino, 5_000), data(5_000, i as u8));
    }
    fs.shutdown().unwrap();
}
