//! Reads that must fetch blocks from the Store run off the request thread: a fetch that
//! stalls holds up nothing else of the mount, and reads racing with changes of the same file
//! never return (or cache) stale data.

#![allow(clippy::unwrap_used)]

use crate::common;

use qsfs_core::Store;
use qsfs_fuse::layout::Namespaces;
use qsfs_fuse::{mount, Fs, FsConfig, MountOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Passes every call through, except that `get`s of the blocks of one inode (or of the records
/// of one namespace whose keys start with a prefix) answer only once the gate is open, and block
/// `get`s take `delay` (to widen race windows, never to measure).
struct Gated {
    block_ns: String,
    /// The namespace and key prefix whose reads wait at the gate; none if the namespace is "".
    gated: Mutex<(String, Vec<u8>)>,
    closed: Mutex<bool>,
    opened: Condvar,
    /// Block reads waiting at the gate now.
    waiting: AtomicUsize,
    /// Block reads of the gated inode so far.
    asked: AtomicUsize,
    delay: Duration,
}

impl Gated {
    fn new(inner: Arc<dyn Store>, delay: Duration) -> Arc<common::Hooked<Gated>> {
        common::Hooked::new(
            inner,
            Gated {
                block_ns: Namespaces::new(&common::config().prefix).block,
                gated: Mutex::new((String::new(), Vec::new())),
                closed: Mutex::new(false),
                opened: Condvar::new(),
                waiting: AtomicUsize::new(0),
                asked: AtomicUsize::new(0),
                delay,
            },
        )
    }

    /// Holds the reads of the blocks of `ino`.
    fn close(&self, ino: u64) {
        self.close_on(&self.block_ns.clone(), &ino.to_be_bytes());
    }

    /// Holds the reads of the records of namespace `ns` whose keys start with `prefix`.
    fn close_on(&self, ns: &str, prefix: &[u8]) {
        *self.gated.lock().unwrap() = (ns.to_string(), prefix.to_vec());
        *self.closed.lock().unwrap() = true;
    }

    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }

    fn is_closed(&self) -> bool {
        *self.closed.lock().unwrap()
    }
}

impl common::Hooks for Gated {
    // Read first, answer late: the caller gets the bytes as they were when it asked.
    fn after_get(&self, ns: &str, key: &[u8]) {
        let held = {
            let g = self.gated.lock().unwrap();
            ns == g.0 && key.starts_with(&g.1)
        };
        if held {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let mut closed = self.closed.lock().unwrap();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while *closed {
                closed = self.opened.wait(closed).unwrap();
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        if !self.delay.is_zero() && ns == self.block_ns {
            std::thread::sleep(self.delay);
        }
    }
}

/// `len` bytes that differ per file and per position.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// A 4096-aligned buffer of `len` bytes inside `backing`, as O_DIRECT wants.
fn aligned(backing: &mut Vec<u8>, len: usize) -> &mut [u8] {
    backing.resize(len + 4096, 0);
    let off = backing.as_ptr().align_offset(4096);
    &mut backing[off..off + len]
}

/// The whole file read with O_DIRECT: from the filesystem, not the kernel's page cache.
fn read_direct(path: &Path) -> Vec<u8> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let mut backing = Vec::new();
    let buf = aligned(&mut backing, len.next_multiple_of(4096));
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], done as u64).unwrap();
        assert!(n > 0, "short file");
        done += n;
    }
    buf[..len].to_vec()
}

/// Polls `cond` (up to 10 s, a generous bound for something that takes microseconds).
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("gave up waiting for {what}");
}

/// A temporary directory with an empty mountpoint `mnt` and a gated engine under `engine`
/// (each store read delayed by `delay`).
fn gated_mount_dir(
    delay: Duration,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Arc<common::Hooked<Gated>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let gate = Gated::new(common::open_engine(&dir.path().join("engine")), delay);
    (dir, mnt, gate)
}

#[test]
fn a_stalled_fetch_holds_up_no_other_request() {
    let (_dir, mnt, gate) = gated_mount_dir(Duration::ZERO);
    let store: Arc<dyn Store> = gate.clone();
    let slow = pattern(1, 2 << 20);
    let cold = pattern(2, 600 << 10);
    let hot = pattern(3, 300 << 10);
    {
        let fs = Fs::open(store.clone(), common::config()).unwrap();
        let m = mount(fs, &mnt, &MountOptions::default()).unwrap();
        std::fs::write(mnt.join("slow"), &slow).unwrap();
        std::fs::write(mnt.join("cold"), &cold).unwrap();
        std::fs::write(mnt.join("hot"), &hot).unwrap();
        m.unmount().unwrap();
    }
    // A fresh mount: nothing is in its cache.
    let fs = Fs::open(store.clone(), common::config()).unwrap();
    let m = mount(fs, &mnt, &MountOptions::default()).unwrap();
    assert_eq!(read_direct(&mnt.join("hot")), hot);
    let slow_ino = std::fs::metadata(mnt.join("slow")).unwrap().ino();
    gate.close(slow_ino);
    let slow_path = mnt.join("slow");
    let reader = std::thread::spawn(move || std::fs::read(slow_path).unwrap());
    wait_for("the read of slow to reach the store", || {
        gate.waiting.load(Ordering::SeqCst) > 0
    });

    // Everything else goes on while that fetch is stuck.
    assert_eq!(
        std::fs::metadata(mnt.join("slow")).unwrap().len(),
        slow.len() as u64
    );
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cold", "hot", "slow"]);
    assert_eq!(read_direct(&mnt.join("hot")), hot, "a cached file");
    assert_eq!(read_direct(&mnt.join("cold")), cold, "an uncached file");
    assert_eq!(std::fs::read(mnt.join("cold")).unwrap(), cold);
    let fresh = pattern(4, 1 << 20);
    let mut f = std::fs::File::create(mnt.join("fresh")).unwrap();
    f.write_all(&fresh).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(read_direct(&mnt.join("fresh")), fresh);
    assert!(gate.is_closed());
    assert!(
        gate.waiting.load(Ordering::SeqCst) > 0 && !reader.is_finished(),
        "the read of slow got its blocks without the gate"
    );

    gate.open();
    assert!(reader.join().unwrap() == slow, "slow read back wrong");
    assert_eq!(read_direct(&mnt.join("slow")), slow);
    m.unmount().unwrap();
}

const BS: usize = 4096;
/// Blocks of the raced file; the last two belong to the truncating thread.
const BLOCKS: usize = 24;
const TAIL: usize = BLOCKS - 2;
const READERS: usize = 3;
const READS: usize = 1500;

/// What op `seq` on block `b` does: writers punch every fourth op, the tail's owner
/// truncates the tail away and back every third; every other op writes the block.
#[derive(PartialEq, Clone, Copy)]
enum OpKind {
    Write,
    Zero,
}

fn kind(b: usize, seq: u64) -> OpKind {
    let zero = if b >= TAIL {
        seq % 3 == 0
    } else {
        seq % 4 == 0
    };
    if zero {
        OpKind::Zero
    } else {
        OpKind::Write
    }
}

fn block_bytes(b: usize, seq: u64) -> Vec<u8> {
    let word = ((b as u64) << 32 | seq).to_le_bytes();
    word.iter().copied().cycle().take(BS).collect()
}

/// Per block: the last op completed and the last op started.
struct Model {
    completed: Vec<AtomicU64>,
    started: Vec<AtomicU64>,
}

/// Checks what a read of block `b` returned against the ops that may have been its state: from
/// the last one completed before the read began to the last one started before it ended.
fn check(b: usize, data: &[u8], from: u64, to: u64) -> std::result::Result<(), String> {
    let zero_ok = (from..=to).any(|s| kind(b, s) == OpKind::Zero);
    if data.iter().all(|&x| x == 0) {
        // Empty (truncated away) or zeros (punched, or truncated and extended).
        return if zero_ok {
            Ok(())
        } else {
            Err(format!("block {b}: zeros, but ops {from}..={to} all wrote"))
        };
    }
    if data.len() != BS {
        return Err(format!("block {b}: {} bytes", data.len()));
    }
    let word = u64::from_le_bytes(data[..8].try_into().unwrap());
    if data != block_bytes(b, word & 0xffff_ffff) || (word >> 32) as usize != b {
        return Err(format!("block {b}: torn or foreign data ({word:#x}…)"));
    }
    let seq = word & 0xffff_ffff;
    if seq < from || seq > to || kind(b, seq) != OpKind::Write {
        return Err(format!(
            "block {b}: data of op {seq}, but its state was one of ops {from}..={to}"
        ));
    }
    Ok(())
}

#[test]
fn reads_racing_overwrites_and_truncates_match_the_model() {
    let (_dir, mnt, gate) = gated_mount_dir(Duration::from_micros(500));
    let cfg = FsConfig {
        block_size: BS as u32,
        // Smaller than the file: blocks keep leaving the cache and being fetched again.
        cache_bytes: (BS * BLOCKS / 3) as u64,
        ..common::config()
    };
    let fs = Fs::open(gate.clone(), cfg).unwrap();
    let m = mount(fs, &mnt, &MountOptions::default()).unwrap();
    let path = mnt.join("raced");
    let mut init = Vec::new();
    for b in 0..BLOCKS {
        init.extend(block_bytes(b, 1));
    }
    std::fs::write(&path, &init).unwrap();
    let model = Arc::new(Model {
        completed: (0..BLOCKS).map(|_| AtomicU64::new(1)).collect(),
        started: (0..BLOCKS).map(|_| AtomicU64::new(1)).collect(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let open_direct = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(p)
            .unwrap()
    };

    let mut changers = Vec::new();
    // Two writers, each owning every other block before the tail.
    for w in 0..2usize {
        let (model, stop, f) = (model.clone(), stop.clone(), open_direct(&path));
        changers.push(std::thread::spawn(move || {
            let mut backing = Vec::new();
            let mut seq = 1u64;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                for b in (w..TAIL).step_by(2) {
                    model.started[b].store(seq, Ordering::SeqCst);
                    let off = (b * BS) as i64;
                    if kind(b, seq) == OpKind::Zero {
                        use nix::fcntl::{fallocate, FallocateFlags as F};
                        let flags = F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE;
                        fallocate(f.as_raw_fd(), flags, off, BS as i64).unwrap();
                    } else {
                        let buf = aligned(&mut backing, BS);
                        buf.copy_from_slice(&block_bytes(b, seq));
                        f.write_all_at(buf, off as u64).unwrap();
                    }
                    model.completed[b].store(seq, Ordering::SeqCst);
                }
            }
        }));
    }
    // The tail's owner: rewrites the last two blocks, or truncates them away and back.
    {
        let (model, stop, f) = (model.clone(), stop.clone(), open_direct(&path));
        changers.push(std::thread::spawn(move || {
            let mut backing = Vec::new();
            let mut seq = 1u64;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                for b in TAIL..BLOCKS {
                    model.started[b].store(seq, Ordering::SeqCst);
                }
                if kind(TAIL, seq) == OpKind::Zero {
                    f.set_len((TAIL * BS) as u64).unwrap();
                    f.set_len((BLOCKS * BS) as u64).unwrap();
                } else {
                    for b in TAIL..BLOCKS {
                        let buf = aligned(&mut backing, BS);
                        buf.copy_from_slice(&block_bytes(b, seq));
                        f.write_all_at(buf, (b * BS) as u64).unwrap();
                    }
                }
                for b in TAIL..BLOCKS {
                    model.completed[b].store(seq, Ordering::SeqCst);
                }
            }
        }));
    }
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (model, f) = (model.clone(), open_direct(&path));
            std::thread::spawn(move || {
                let mut backing = Vec::new();
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ r as u64;
                let mut prev = usize::MAX;
                let mut errors = Vec::new();
                for _ in 0..READS {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    // The first reader goes through the file in order, so the filesystem's
                    // read-ahead loads blocks in the race too.
                    let b = if r == 0 {
                        prev.wrapping_add(1) % BLOCKS
                    } else {
                        (rng % BLOCKS as u64) as usize
                    };
                    prev = b;
                    let from = model.completed[b].load(Ordering::SeqCst);
                    let buf = aligned(&mut backing, BS);
                    let n = f.read_at(buf, (b * BS) as u64).unwrap();
                    let to = model.started[b].load(Ordering::SeqCst);
                    if let Err(e) = check(b, &buf[..n], from, to) {
                        errors.push(e);
                    }
                }
                errors
            })
        })
        .collect();
    let errors: Vec<String> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    stop.store(true, Ordering::SeqCst);
    for c in changers {
        c.join().unwrap();
    }
    m.unmount().unwrap();
    assert!(
        errors.is_empty(),
        "{} bad reads, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

/// A gated engine with its block namespace created (no mount): the store, that namespace, and
/// the directory guard.
fn gated_blocks() -> (Arc<common::Hooked<Gated>>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gated::new(common::open_engine(dir.path()), Duration::ZERO);
    let ns = gate.block_ns.clone();
    gate.namespace_create(&ns).unwrap();
    (gate, ns, dir)
}

/// A read-ahead load that fetched a block before it was rewritten must not put the old bytes
/// in the cache, even when the rewrite was stored and left the cache before the load landed.
#[test]
fn read_ahead_never_caches_a_block_rewritten_during_its_load() {
    use bytes::Bytes;
    use qsfs_core::{BlockId, Cache};
    use qsfs_fuse::BlockCache;

    let (gate, ns, _dir) = gated_blocks();
    let (ino, bs) = (7u64, 4096usize);
    let x = BlockId {
        inode: ino,
        index: 0,
    };
    let old = vec![1u8; bs];
    let new = vec![2u8; bs];
    gate.set(&ns, Some(&qsfs_fuse::layout::pair_key(ino, 0)), &old)
        .unwrap();
    // Room for two blocks.
    let cache = BlockCache::new(gate.clone(), &ns, bs, 2 * bs as u64);
    gate.close(ino);
    cache.read_ahead(ino, 0, 1);
    wait_for("the load to reach the store", || {
        gate.waiting.load(Ordering::SeqCst) > 0
    });
    cache.write(x, 0, &new).unwrap();
    cache.flush(None).unwrap();
    for index in 0..2 {
        let other = BlockId {
            inode: ino + 1,
            index,
        };
        cache.install(other, Bytes::from(vec![3u8; bs])).unwrap();
    }
    assert!(cache.cached(x).is_none(), "the rewrite left the cache");
    // A second load queued behind the first (one loader, in order) tells when it is done.
    gate.set(&ns, Some(&qsfs_fuse::layout::pair_key(ino + 2, 0)), &old)
        .unwrap();
    cache.read_ahead(ino + 2, 0, 1);
    gate.open();
    wait_for("the loads to finish", || {
        cache
            .cached(BlockId {
                inode: ino + 2,
                index: 0,
            })
            .is_some()
    });
    if let Some(b) = cache.cached(x) {
        assert!(
            b[..] == new[..],
            "read-ahead cached the bytes before the rewrite"
        );
    }
    assert!(cache.read(x).unwrap().unwrap()[..] == new[..]);
}

#[test]
fn concurrent_fetches_of_a_block_share_one_store_read() {
    use qsfs_core::BlockId;
    use qsfs_fuse::fetch::Fetches;

    let (gate, ns, _dir) = gated_blocks();
    let ino = 9u64;
    let data = pattern(5, 4096);
    gate.set(&ns, Some(&qsfs_fuse::layout::pair_key(ino, 3)), &data)
        .unwrap();
    let fetches = Arc::new(Fetches::new(
        gate.clone(),
        &Namespaces::new(&common::config().prefix),
    ));
    let block = BlockId {
        inode: ino,
        index: 3,
    };
    let get = |gen: u64| {
        let f = fetches.clone();
        std::thread::spawn(move || f.get(block, gen).unwrap().unwrap())
    };
    gate.close(ino);
    let first = get(1);
    wait_for("the first fetch", || {
        gate.waiting.load(Ordering::SeqCst) == 1
    });
    let second = get(1);
    wait_for("the second reader to join", || fetches.shared() == 1);
    // A later generation may need newer bytes than the fetch under way: it reads anew.
    let newer = get(2);
    wait_for("the fetch of the newer generation", || {
        gate.waiting.load(Ordering::SeqCst) == 2
    });
    gate.open();
    for t in [first, second, newer] {
        assert!(t.join().unwrap()[..] == data[..]);
    }
    assert_eq!(gate.asked.load(Ordering::SeqCst), 2);
}

// ---- metadata and partial-block fetches: nothing else waits for them either ----

/// The tree the stall tests start from, written by an earlier mount so that the mount under
/// test has none of it in memory: `a/slow` (whose records or blocks are held), `a/other`,
/// `a/copy`, `b/x`, `b/y`.
struct Tree {
    _dir: tempfile::TempDir,
    mnt: std::path::PathBuf,
    gate: Arc<common::Hooked<Gated>>,
    slow: Vec<u8>,
    x: Vec<u8>,
    slow_ino: u64,
    a_ino: u64,
}

impl Tree {
    fn new() -> Tree {
        let (dir, mnt, gate) = gated_mount_dir(Duration::ZERO);
        let (slow, x) = (pattern(11, 600 << 10), pattern(12, 300 << 10));
        let fs = Fs::open(gate.clone(), common::config()).unwrap();
        let m = mount(fs, &mnt, &MountOptions::default()).unwrap();
        for d in ["a", "b"] {
            std::fs::create_dir(mnt.join(d)).unwrap();
        }
        std::fs::write(mnt.join("a/slow"), &slow).unwrap();
        xattr(&mnt.join("a/slow"), "set", "user.tag", "old");
        std::fs::write(mnt.join("a/other"), &x).unwrap();
        std::fs::write(mnt.join("a/copy"), b"").unwrap();
        std::fs::write(mnt.join("b/x"), &x).unwrap();
        std::fs::write(mnt.join("b/y"), b"y").unwrap();
        let slow_ino = std::fs::metadata(mnt.join("a/slow")).unwrap().ino();
        let a_ino = std::fs::metadata(mnt.join("a")).unwrap().ino();
        m.unmount().unwrap();
        Tree {
            _dir: dir,
            mnt,
            gate,
            slow,
            x,
            slow_ino,
            a_ino,
        }
    }
}

/// What the stalled request waits for.
#[derive(Clone, Copy)]
enum Hold {
    /// The inode record of `a/slow`.
    Inode,
    /// The listing pages of `a`.
    DirPages,
    /// The block maps of `a/slow`.
    BlockMaps,
    /// The blocks of `a/slow`.
    Blocks,
    /// The xattr record of `a/slow`.
    Xattrs,
}

/// Sets (`op` "set", with `value`) or removes ("remove") the xattr `name` of `path` through
/// Python's `os` module, the way the POSIX suite does (the crate forbids the unsafe a libc
/// call needs).
fn xattr(path: &Path, op: &str, name: &str, value: &str) {
    let code = match op {
        "set" => "import os, sys; os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode())",
        _ => "import os, sys; os.removexattr(sys.argv[1], sys.argv[2])",
    };
    let st = std::process::Command::new("python3")
        .args(["-c", code])
        .arg(path)
        .args([name, value])
        .status()
        .unwrap();
    assert!(st.success(), "{op}xattr {name} on {}", path.display());
}

/// The xattr names of `path`, sorted, through Python's `os` module.
fn xattr_names(path: &Path) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(sorted(os.listxattr(sys.argv[1])))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Stat, listings, cached and uncached reads and a write+fsync of other files, each checked.
fn others_go_on(mnt: &Path, x: &[u8], round: usize) {
    others_outside_a(mnt, x, round);
    assert_eq!(
        std::fs::read(mnt.join("a/other")).unwrap(),
        x,
        "a neighbour"
    );
}

/// [`others_go_on`] outside directory `a`, whose names a creating or removing request holds
/// (the kernel's own directory lock).
/// The sorted names in directory `d`.
fn names(d: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    n.sort();
    n
}

fn others_outside_a(mnt: &Path, x: &[u8], round: usize) {
    assert_eq!(
        std::fs::metadata(mnt.join("b/x")).unwrap().len(),
        x.len() as u64
    );
    assert_eq!(names(mnt), ["a", "b"]);
    assert_eq!(names(&mnt.join("b")), ["x", "y"]);
    assert_eq!(read_direct(&mnt.join("b/x")), x, "an uncached file");
    assert_eq!(read_direct(&mnt.join("b/x")), x, "a cached file");
    let fresh = pattern(round as u8, 256 << 10);
    let path = mnt.join(format!("b/fresh{round}"));
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&fresh).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(read_direct(&path), fresh);
    std::fs::remove_file(&path).unwrap();
}

/// Runs `request` on a fresh mount of a [`Tree`] with what it needs held at the gate, checks
/// that everything else goes on meanwhile, then lets it finish and hands its result to
/// `check`.
fn a_stalled_request_holds_up_nothing<R: Send + 'static>(
    hold: Hold,
    request: impl FnOnce(&Path) -> R + Send + 'static,
    check: impl FnOnce(&Tree, R),
) {
    stalled_request_with(hold, others_go_on, request, check)
}

/// [`a_stalled_request_holds_up_nothing`] with `others` as the other requests.
fn stalled_request_with<R: Send + 'static>(
    hold: Hold,
    others: fn(&Path, &[u8], usize),
    request: impl FnOnce(&Path) -> R + Send + 'static,
    check: impl FnOnce(&Tree, R),
) {
    let t = Tree::new();
    let fs = Fs::open(t.gate.clone(), common::config()).unwrap();
    let m = mount(fs, &t.mnt, &MountOptions::default()).unwrap();
    let ns = Namespaces::new(&common::config().prefix);
    match hold {
        Hold::Inode => t.gate.close_on(&ns.inode, &t.slow_ino.to_be_bytes()),
        Hold::DirPages => t.gate.close_on(&ns.dirpage, &t.a_ino.to_be_bytes()),
        Hold::BlockMaps => t.gate.close_on(&ns.bmap, &t.slow_ino.to_be_bytes()),
        Hold::Blocks => t.gate.close(t.slow_ino),
        Hold::Xattrs => t.gate.close_on(&ns.xattr, &t.slow_ino.to_be_bytes()),
    }
    // Dropped before the mount: a failed check must not leave the unmount waiting at the gate.
    let _open = OpenOnDrop(&t.gate);
    let mnt = t.mnt.clone();
    let stalled = std::thread::spawn(move || request(&mnt));
    wait_for("the request to reach the gate", || {
        t.gate.waiting.load(Ordering::SeqCst) > 0
    });

    others_finish(&t, others);
    assert!(
        t.gate.waiting.load(Ordering::SeqCst) > 0 && !stalled.is_finished(),
        "the stalled request got its records without the gate"
    );

    t.gate.open();
    let r = stalled.join().unwrap();
    check(&t, r);
    m.unmount().unwrap();
}

/// Runs `others` twice while something waits at the gate; fails if they wait for it.
fn others_finish(t: &Tree, others: fn(&Path, &[u8], usize)) {
    let (mnt, x) = (t.mnt.clone(), t.x.clone());
    let others = std::thread::spawn(move || {
        for round in 0..2 {
            others(&mnt, &x, round);
        }
    });
    // Bounds a hang, not a duration: the other requests take milliseconds.
    for _ in 0..2000 {
        if others.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if !others.is_finished() {
        t.gate.open();
        panic!("the other requests waited for the stalled fetch");
    }
    others.join().unwrap();
}

/// Opens `p` for O_DIRECT writes: each write is a request of its own, sent at once.
fn open_direct_write(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .unwrap()
}

#[test]
fn a_stalled_inode_fetch_holds_up_no_other_request() {
    a_stalled_request_holds_up_nothing(
        Hold::Inode,
        |mnt| std::fs::metadata(mnt.join("a/slow")).unwrap().len(),
        |t, len| assert_eq!(len, t.slow.len() as u64),
    );
}

#[test]
fn a_stalled_directory_page_fetch_holds_up_no_other_request() {
    a_stalled_request_holds_up_nothing(
        Hold::DirPages,
        |mnt| names(&mnt.join("a")),
        |_, names| assert_eq!(names, ["copy", "other", "slow"]),
    );
}

/// A 4 KiB O_DIRECT write into the middle of `a/slow`'s first block (a partial block), then
/// fsync.
fn patch_slow(mnt: &Path) {
    let f = open_direct_write(&mnt.join("a/slow"));
    let mut backing = Vec::new();
    let buf = aligned(&mut backing, 4096);
    buf.fill(0xab);
    f.write_all_at(buf, 8192).unwrap();
    f.sync_all().unwrap();
}

fn check_patched(t: &Tree, _: ()) {
    let mut want = t.slow.clone();
    want[8192..8192 + 4096].fill(0xab);
    assert!(
        read_direct(&t.mnt.join("a/slow")) == want,
        "a/slow patched wrong"
    );
}

#[test]
fn a_stalled_block_map_fetch_holds_up_no_other_request() {
    a_stalled_request_holds_up_nothing(Hold::BlockMaps, patch_slow, check_patched);
}

#[test]
fn a_stalled_partial_write_fetch_holds_up_no_other_request() {
    a_stalled_request_holds_up_nothing(Hold::Blocks, patch_slow, check_patched);
}

#[test]
fn a_stalled_copy_source_fetch_holds_up_no_other_request() {
    const LEN: usize = 300 << 10;
    a_stalled_request_holds_up_nothing(
        Hold::Blocks,
        |mnt| {
            let src = std::fs::File::open(mnt.join("a/slow")).unwrap();
            let dst = std::fs::OpenOptions::new()
                .write(true)
                .open(mnt.join("a/copy"))
                .unwrap();
            let (mut off_in, mut off_out) = (1000i64, 0i64);
            let mut left = LEN;
            while left > 0 {
                let n = nix::fcntl::copy_file_range(
                    &src,
                    Some(&mut off_in),
                    &dst,
                    Some(&mut off_out),
                    left,
                )
                .unwrap();
                assert!(n > 0, "copy_file_range stopped early");
                left -= n;
            }
        },
        |t, ()| {
            assert!(std::fs::read(t.mnt.join("a/copy")).unwrap() == t.slow[1000..1000 + LEN]);
        },
    );
}

#[test]
fn a_stalled_fallocate_fetch_holds_up_no_other_request() {
    a_stalled_request_holds_up_nothing(
        Hold::Blocks,
        |mnt| {
            use nix::fcntl::{fallocate, FallocateFlags as F};
            let f = open_direct_write(&mnt.join("a/slow"));
            let flags = F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE;
            fallocate(f.as_raw_fd(), flags, 100, 1000).unwrap();
        },
        |t, ()| {
            let mut want = t.slow.clone();
            want[100..1100].fill(0);
            assert!(read_direct(&t.mnt.join("a/slow")) == want);
        },
    );
}

#[test]
fn a_stalled_truncate_fetch_holds_up_no_other_request() {
    a_stalled_request_holds_up_nothing(
        Hold::Blocks,
        |mnt| {
            open_direct_write(&mnt.join("a/slow"))
                .set_len(5000)
                .unwrap()
        },
        |t, ()| {
            assert!(read_direct(&t.mnt.join("a/slow")) == t.slow[..5000]);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(t.mnt.join("a/slow"))
                .unwrap();
            f.set_len(9000).unwrap();
            let got = read_direct(&t.mnt.join("a/slow"));
            assert!(got[..5000] == t.slow[..5000] && got[5000..].iter().all(|&b| b == 0));
        },
    );
}

#[test]
fn a_stalled_listing_fetch_of_a_create_unlink_and_rename_holds_up_no_other_request() {
    stalled_request_with(
        Hold::DirPages,
        others_outside_a,
        |mnt| {
            std::fs::write(mnt.join("a/new"), b"new").unwrap();
            std::fs::remove_file(mnt.join("a/other")).unwrap();
            std::fs::rename(mnt.join("a/copy"), mnt.join("b/moved")).unwrap();
        },
        |t, ()| {
            assert_eq!(names(&t.mnt.join("a")), ["new", "slow"]);
            assert_eq!(std::fs::read(t.mnt.join("a/new")).unwrap(), b"new");
            assert!(t.mnt.join("b/moved").exists());
        },
    );
}

#[test]
fn a_stalled_listing_fetch_of_a_symlink_hard_link_and_fifo_holds_up_no_other_request() {
    stalled_request_with(
        Hold::DirPages,
        others_outside_a,
        |mnt| {
            std::os::unix::fs::symlink("slow", mnt.join("a/sl")).unwrap();
            std::fs::hard_link(mnt.join("a/copy"), mnt.join("a/hard")).unwrap();
            nix::unistd::mkfifo(
                &mnt.join("a/fifo"),
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .unwrap();
        },
        |t, ()| {
            assert_eq!(
                names(&t.mnt.join("a")),
                ["copy", "fifo", "hard", "other", "sl", "slow"]
            );
            let a = t.mnt.join("a");
            assert_eq!(std::fs::read_link(a.join("sl")).unwrap(), Path::new("slow"));
            assert_eq!(
                std::fs::read(a.join("hard")).unwrap(),
                std::fs::read(a.join("copy")).unwrap()
            );
            use std::os::unix::fs::FileTypeExt;
            assert_eq!(std::fs::metadata(a.join("copy")).unwrap().nlink(), 2);
            assert!(std::fs::symlink_metadata(a.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo());
        },
    );
}

#[test]
fn a_stalled_xattr_fetch_of_a_setxattr_holds_up_no_other_request() {
    a_stalled_request_holds_up_nothing(
        Hold::Xattrs,
        |mnt| xattr(&mnt.join("a/slow"), "set", "user.new", "v"),
        |t, ()| {
            assert_eq!(
                xattr_names(&t.mnt.join("a/slow")),
                "['user.new', 'user.tag']"
            )
        },
    );
}

#[test]
fn a_stalled_xattr_fetch_of_a_removexattr_holds_up_no_other_request() {
    a_stalled_request_holds_up_nothing(
        Hold::Xattrs,
        |mnt| xattr(&mnt.join("a/slow"), "remove", "user.tag", ""),
        |t, ()| assert_eq!(xattr_names(&t.mnt.join("a/slow")), "[]"),
    );
}

#[test]
fn with_no_read_threads_every_request_runs_in_line() {
    let t = Tree::new();
    let options = MountOptions {
        threads: 0,
        ..MountOptions::default()
    };
    let fs = Fs::open(t.gate.clone(), common::config()).unwrap();
    let m = mount(fs, &t.mnt, &options).unwrap();
    assert_eq!(
        std::fs::metadata(t.mnt.join("a/slow")).unwrap().len(),
        t.slow.len() as u64
    );
    others_go_on(&t.mnt, &t.x, 0);
    patch_slow(&t.mnt);
    check_patched(&t, ());
    std::fs::rename(t.mnt.join("a/copy"), t.mnt.join("b/moved")).unwrap();
    std::fs::remove_file(t.mnt.join("b/moved")).unwrap();
    assert!(!t.mnt.join("a/copy").exists());
    m.unmount().unwrap();
}

/// A listing bigger than one readdirplus reply, from memory and from the store: the entries
/// the reply had no room for are given back (under the lock, after the reply was built).
#[test]
fn listings_bigger_than_one_reply_work_from_memory_and_from_the_store() {
    let mut fx = common::Fixture::new();
    let dir = fx.p("big");
    std::fs::create_dir(&dir).unwrap();
    let want: Vec<String> = (0..300)
        .map(|i| format!("{}-{i:04}", "a-long-name-".repeat(12)))
        .collect();
    for n in &want {
        std::fs::write(dir.join(n), n.as_bytes()).unwrap();
    }
    for round in 0..2 {
        let d = dir.clone();
        let lister = std::thread::spawn(move || {
            let mut got: Vec<String> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            got.sort();
            for n in got.iter().step_by(37) {
                assert_eq!(std::fs::read(d.join(n)).unwrap(), n.as_bytes());
            }
            got
        });
        // Bounds a hang (a request deadlocked on the filesystem lock), not a duration.
        wait_for("the listing", || lister.is_finished());
        assert_eq!(lister.join().unwrap(), want, "round {round}");
        // Round 2 lists with nothing in memory: its records are fetched on the pool.
        fx.remount();
    }
}

/// Opens the gate when dropped.
struct OpenOnDrop<'a>(&'a Gated);

impl Drop for OpenOnDrop<'_> {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// `lseek(SEEK_DATA)` and `lseek(SEEK_HOLE)` of `a/slow` from `at`, on a read-only handle (so
/// the answer comes from the block map, not the writer's shortcut).
fn seek_slow(mnt: &Path, at: i64) -> (i64, i64) {
    use nix::unistd::{lseek, Whence};
    let f = std::fs::File::open(mnt.join("a/slow")).unwrap();
    let data = lseek(f.as_raw_fd(), at, Whence::SeekData).unwrap();
    let hole = lseek(f.as_raw_fd(), at, Whence::SeekHole).unwrap();
    (data, hole)
}

#[test]
fn a_stalled_block_map_fetch_of_lseek_holds_up_no_other_request() {
    a_stalled_request_holds_up_nothing(
        Hold::BlockMaps,
        |mnt| seek_slow(mnt, 5000),
        |t, got| {
            assert_eq!(got, (5000, t.slow.len() as i64));
            // A hole punched in the middle, then asked again from a fresh mount's memory.
            let f = open_direct_write(&t.mnt.join("a/slow"));
            use nix::fcntl::{fallocate, FallocateFlags as F};
            let flags = F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE;
            fallocate(f.as_raw_fd(), flags, 128 << 10, 128 << 10).unwrap();
            f.sync_all().unwrap();
            drop(f);
            assert_eq!(seek_slow(&t.mnt, 5000), (5000, 128 << 10));
            assert_eq!(seek_slow(&t.mnt, 130 << 10), (256 << 10, 130 << 10));
            assert_eq!(
                seek_slow(&t.mnt, 300 << 10),
                (300 << 10, t.slow.len() as i64)
            );
        },
    );
}

/// Unlinking a file whose block maps are not in memory: the flush that frees it must not
/// fetch them under the filesystem lock. The space comes back once the fetch is let through.
#[test]
fn a_stalled_block_map_fetch_of_a_free_holds_up_no_other_request() {
    let t = Tree::new();
    let fs = Fs::open(t.gate.clone(), common::config()).unwrap();
    let m = mount(fs, &t.mnt, &MountOptions::default()).unwrap();
    let ns = Namespaces::new(&common::config().prefix);
    let ino = t.slow_ino;
    t.gate.close_on(&ns.bmap, &ino.to_be_bytes());
    // A failed check must not leave the unmount waiting at the gate.
    let _open = OpenOnDrop(&t.gate);
    let (mnt, gate) = (t.mnt.clone(), t.gate.clone());
    // The kernel forgets the unlinked inode on its own time; the first flush after that
    // frees it (the test's flush age is 60 s, so fsyncs ask for it).
    let unlink = std::thread::spawn(move || {
        std::fs::remove_file(mnt.join("a/slow")).unwrap();
        let y = std::fs::File::open(mnt.join("b/y")).unwrap();
        for _ in 0..1000 {
            y.sync_all().unwrap();
            if gate.waiting.load(Ordering::SeqCst) > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    wait_for("the free to reach the gate", || {
        t.gate.waiting.load(Ordering::SeqCst) > 0
    });
    others_finish(&t, others_go_on);
    let block = qsfs_fuse::layout::pair_key(ino, 0);
    assert!(
        t.gate.exists(&ns.block, &block).unwrap(),
        "the blocks went without their map"
    );

    t.gate.open();
    unlink.join().unwrap();
    wait_for("the blocks of the unlinked file to go", || {
        !t.gate.exists(&ns.block, &block).unwrap()
    });
    let key = qsfs_fuse::layout::ino_key(ino);
    wait_for("its inode and orphan records to go", || {
        !t.gate.exists(&ns.inode, &key).unwrap() && !t.gate.exists(&ns.orphan, &key).unwrap()
    });
    assert!(!t
        .gate
        .exists(&ns.bmap, &qsfs_fuse::layout::pair_key(ino, 0))
        .unwrap());
    assert!(!t.mnt.join("a/slow").exists());
    assert_eq!(std::fs::read(t.mnt.join("a/other")).unwrap(), t.x);
    m.unmount().unwrap();
}
