//! Directory operations cost the same store writes whatever the directory size, and a big
//! directory lists every entry exactly once. Driven through `Fs` directly (no kernel), so it can
//! afford many entries.

use crate::common;

use qsfs_fuse::layout::ROOT_INO;
use qsfs_fuse::Fs;

fn bytes_of(fs: &Fs, ns: &str) -> u64 {
    fs.store().namespace_info(ns).expect("info").data_bytes
}

/// Store bytes appended (across the directory namespaces) by one create + one unlink in `dir`.
fn cost_of_one_create_and_unlink(fs: &mut Fs, dir: u64) -> u64 {
    let ns = fs.namespaces().clone();
    let disk = |fs: &Fs| {
        [&ns.dirent, &ns.dirpage, &ns.inode]
            .iter()
            .map(|n| fs.store().namespace_info(n).expect("info").disk_bytes)
            .sum::<u64>()
    };
    fs.sync().expect("probe");
    let before = disk(fs);
    fs.create(dir, b"probe-file", 0o644, 0, 0, 0)
        .expect("probe");
    fs.sync().expect("probe");
    fs.unlink(dir, b"probe-file").expect("probe");
    fs.sync().expect("probe");
    disk(fs) - before
}

#[test]
fn big_directory_costs_constant_writes_and_lists_exactly_once() {
    let (store, _dir) = common::engine();
    let mut fs = Fs::open(store, common::config()).unwrap();
    let small = fs.mkdir(ROOT_INO, b"small", 0o755, 0, 0).unwrap().ino;
    let big = fs.mkdir(ROOT_INO, b"big", 0o755, 0, 0).unwrap().ino;
    const N: usize = 30_000;
    for i in 0..N {
        fs.mknod(
            big,
            format!("entry-{i:06}").as_bytes(),
            libc::S_IFREG | 0o644,
            0,
            0,
            0,
        )
        .unwrap();
        if i % 5000 == 4999 {
            fs.sync().unwrap();
        }
    }
    let small_cost = cost_of_one_create_and_unlink(&mut fs, small);
    let big_cost = cost_of_one_create_and_unlink(&mut fs, big);
    assert!(small_cost > 0, "the probe must have written something");
    eprintln!("create+unlink appended {small_cost} bytes (empty dir) vs {big_cost} ({N} entries)");
    assert!(
        big_cost <= small_cost * 3 + 8192,
        "a create+unlink in a {N}-entry directory appended {big_cost} bytes vs {small_cost} in an empty one"
    );
    // Lookup of any name is one key away.
    let a = fs.lookup(big, b"entry-029999").unwrap();
    assert_eq!(a.inode.nlink, 1);
    // Remove every third entry, then list page by page with resumed offsets.
    for i in (0..N).step_by(3) {
        fs.unlink(big, format!("entry-{i:06}").as_bytes()).unwrap();
    }
    fs.sync().unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut offset = 0i64;
    loop {
        let batch = fs.readdir(big, offset, 1000).unwrap();
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            if e.name != b"." && e.name != b".." {
                assert!(
                    seen.insert(e.name.clone()),
                    "listed twice: {:?}",
                    String::from_utf8_lossy(&e.name)
                );
            }
        }
        offset = batch.last().unwrap().cookie;
    }
    assert_eq!(seen.len(), N - N.div_ceil(3));
    for i in 0..N {
        assert_eq!(
            seen.contains(format!("entry-{i:06}").as_bytes()),
            i % 3 != 0
        );
    }
    assert!(bytes_of(&fs, &fs.namespaces().dirpage.clone()) > 0);
    fs.shutdown().unwrap();
}
