//! Requests that fetch records or blocks with the filesystem lock released
//! ([`Fs::without_fetch`]) never use what they fetched once it changed: each request is held
//! between its fetch and its finish while other requests overwrite, truncate, punch, rename and
//! chmod (and flush, so the records leave memory), and its answer and effect are checked
//! against a model of the filesystem at the moment it finishes.

#![allow(clippy::unwrap_used)]

use crate::common;

use qsfs_fuse::fetch::Fetches;
use qsfs_fuse::fs::{Missing, SetAttr};
use qsfs_fuse::layout::Namespaces;
use qsfs_fuse::{Fs, FsConfig, FsError, FsResult};

const BS: usize = 4096;
const FILES: usize = 4;
/// Bytes a file grows to at most.
const MAX_LEN: usize = 6 * BS;
const ROUNDS: usize = 400;

/// A small xorshift generator: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One file of the model.
#[derive(Clone)]
struct File {
    ino: u64,
    dir: usize,
    name: Vec<u8>,
    data: Vec<u8>,
    perm: u16,
}

struct Model {
    dirs: [u64; 2],
    files: Vec<File>,
}

impl Model {
    fn at(&self, dir: usize, name: &[u8]) -> Option<&File> {
        self.files.iter().find(|f| f.dir == dir && f.name == name)
    }

    fn names(&self, dir: usize) -> Vec<Vec<u8>> {
        let mut n: Vec<Vec<u8>> = self
            .files
            .iter()
            .filter(|f| f.dir == dir)
            .map(|f| f.name.clone())
            .collect();
        n.sort();
        n
    }
}

/// Bytes that differ per round and position.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 * 31 + seed * 7919) % 251) as u8 + 1)
        .collect()
}

fn zero(data: &mut [u8], from: usize, to: usize) {
    let to = to.min(data.len());
    if from < to {
        data[from..to].fill(0);
    }
}

/// A request to hold: what it returns is checked, what it changes is applied to the model.
#[derive(Debug, Clone)]
enum Held {
    Stat {
        dir: usize,
        name: Vec<u8>,
    },
    List {
        dir: usize,
    },
    Write {
        file: usize,
        off: usize,
        data: Vec<u8>,
    },
    Truncate {
        file: usize,
        len: usize,
    },
    Punch {
        file: usize,
        off: usize,
        len: usize,
    },
    Copy {
        from: usize,
        to: usize,
        off: usize,
        len: usize,
    },
    /// File `file`, wherever it is then, moves to `dir` under `name`.
    Rename {
        file: usize,
        dir: usize,
        name: Vec<u8>,
    },
    /// `lseek` of file `file` from `off`, `SEEK_DATA` or (`data` false) `SEEK_HOLE`.
    Seek {
        file: usize,
        off: usize,
        data: bool,
    },
}

#[derive(Debug, PartialEq)]
enum Answer {
    Stat(Option<(u64, u64, u16)>),
    List(Vec<Vec<u8>>),
    /// An offset or an errno: judged by [`check_seek`], not compared.
    Seek(Result<u64, i32>),
    Done,
}

fn run(fs: &mut Fs, m: &Model, h: &Held) -> FsResult<Answer> {
    let ino = |f: &usize| m.files[*f].ino;
    Ok(match h {
        Held::Stat { dir, name } => match fs.lookup(m.dirs[*dir], name) {
            Ok(a) => {
                fs.forget(a.ino, 1);
                Answer::Stat(Some((a.ino, a.inode.size, a.inode.perm)))
            }
            Err(FsError::Errno(libc::ENOENT)) => Answer::Stat(None),
            Err(e) => return Err(e),
        },
        Held::List { dir } => {
            let mut n: Vec<Vec<u8>> = fs
                .readdir(m.dirs[*dir], 0, 1000)?
                .into_iter()
                .map(|e| e.name)
                .filter(|n| n != b"." && n != b"..")
                .collect();
            n.sort();
            Answer::List(n)
        }
        Held::Write { file, off, data } => {
            fs.write(ino(file), 0, *off as u64, data)?;
            Answer::Done
        }
        Held::Truncate { file, len } => {
            let set = SetAttr {
                size: Some(*len as u64),
                ..SetAttr::default()
            };
            fs.setattr(ino(file), set)?;
            Answer::Done
        }
        Held::Punch { file, off, len } => {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            fs.fallocate(ino(file), *off as u64, *len as u64, mode)?;
            Answer::Done
        }
        Held::Copy { from, to, off, len } => {
            let (a, b) = (ino(from), ino(to));
            fs.copy_file_range(a, 0, *off as u64, b, 0, *off as u64, *len as u64)?;
            Answer::Done
        }
        Held::Rename { file, dir, name } => {
            let f = &m.files[*file];
            fs.rename(m.dirs[f.dir], &f.name, m.dirs[*dir], name, 0)?;
            Answer::Done
        }
        Held::Seek { file, off, data } => {
            let whence = if *data {
                libc::SEEK_DATA
            } else {
                libc::SEEK_HOLE
            };
            match fs.lseek(ino(file), *off as u64, whence) {
                Ok(o) => Answer::Seek(Ok(o)),
                Err(FsError::Errno(e)) => Answer::Seek(Err(e)),
                Err(e) => return Err(e),
            }
        }
    })
}

/// Fails unless `got` is a right answer of `h`, a [`Held::Seek`], on the model: the block
/// maps decide where data lies, the model knows only bytes, so the answer is checked for
/// what a stale map would break: no data skipped (`SEEK_DATA`), no data called a hole
/// (`SEEK_HOLE`: the rest of its block reads as zeros).
fn check_seek(m: &Model, h: &Held, got: &Answer, what: &str) {
    let Held::Seek { file, off, data } = h else {
        return;
    };
    let d = &m.files[*file].data;
    let (off, n) = (*off, d.len());
    let zeros = |from: usize, to: usize| d[from.min(n)..to.min(n)].iter().all(|&b| b == 0);
    let ok = match (data, got) {
        (_, Answer::Seek(Err(libc::ENXIO))) if off >= n => true,
        (true, Answer::Seek(Err(libc::ENXIO))) => zeros(off, n),
        (true, Answer::Seek(Ok(o))) => {
            let o = *o as usize;
            off < n && off <= o && o < n && zeros(off, o)
        }
        (false, Answer::Seek(Ok(o))) => {
            let o = *o as usize;
            off < n && off <= o && o <= n && zeros(o, (o / BS + 1) * BS)
        }
        _ => false,
    };
    assert!(ok, "{what}: {h:?} answered {got:?} on {n} bytes");
}

/// What `h` answers on the model, which it then changes.
fn apply(m: &mut Model, h: &Held) -> Answer {
    match h {
        Held::Stat { dir, name } => Answer::Stat(
            m.at(*dir, name)
                .map(|f| (f.ino, f.data.len() as u64, f.perm)),
        ),
        Held::List { dir } => Answer::List(m.names(*dir)),
        Held::Write { file, off, data } => {
            let d = &mut m.files[*file].data;
            if d.len() < off + data.len() {
                d.resize(off + data.len(), 0);
            }
            d[*off..off + data.len()].copy_from_slice(data);
            Answer::Done
        }
        Held::Truncate { file, len } => {
            m.files[*file].data.resize(*len, 0);
            Answer::Done
        }
        Held::Punch { file, off, len } => {
            zero(&mut m.files[*file].data, *off, off + len);
            Answer::Done
        }
        Held::Copy { from, to, off, len } => {
            let src = &m.files[*from].data;
            let n = (*len).min(src.len().saturating_sub(*off));
            if n == 0 {
                return Answer::Done;
            }
            let chunk = src[*off..off + n].to_vec();
            apply(
                m,
                &Held::Write {
                    file: *to,
                    off: *off,
                    data: chunk,
                },
            )
        }
        Held::Rename { file, dir, name } => {
            m.files[*file].dir = *dir;
            m.files[*file].name = name.clone();
            Answer::Done
        }
        Held::Seek { .. } => Answer::Done,
    }
}

/// A random request; with `seeks`, an `lseek`.
fn random_held(r: &mut Rng, m: &Model, seed: u64, seeks: bool) -> Held {
    if seeks {
        return Held::Seek {
            file: r.below(FILES),
            off: r.below(MAX_LEN),
            data: r.below(2) == 0,
        };
    }
    let file = r.below(FILES);
    let off = r.below(MAX_LEN - BS) + 1;
    match r.below(7) {
        0 => {
            let f = &m.files[r.below(FILES)];
            Held::Stat {
                dir: f.dir,
                name: f.name.clone(),
            }
        }
        1 => Held::List { dir: r.below(2) },
        2 => Held::Write {
            file,
            off,
            data: bytes(seed, r.below(BS) + 1),
        },
        3 => Held::Truncate {
            file,
            len: r.below(MAX_LEN),
        },
        4 => Held::Punch {
            file,
            off,
            len: r.below(BS) + 1,
        },
        5 => Held::Rename {
            file,
            dir: r.below(2),
            name: format!("f{file}.r{seed}").into_bytes(),
        },
        _ => Held::Copy {
            from: file,
            to: (file + 1 + r.below(FILES - 1)) % FILES,
            off,
            len: r.below(2 * BS) + 1,
        },
    }
}

/// A change made while a request is held, with fetching allowed (as a request that found
/// everything in memory, or one run with the lock held).
/// Half of them hit the held request's file around its offset (`focus`).
fn race(fs: &mut Fs, m: &mut Model, r: &mut Rng, seed: u64, focus: Option<(usize, usize)>) {
    let (f, near) = match focus {
        Some((f, off)) if r.below(2) == 0 => (f, off.saturating_sub(r.below(BS))),
        _ => (r.below(FILES), r.below(MAX_LEN - BS)),
    };
    match r.below(5) {
        0 => {
            // Renamed into a random directory under a new name.
            let dir = r.below(2);
            let name = format!("f{f}.{seed}").into_bytes();
            let old = &m.files[f];
            fs.rename(m.dirs[old.dir], &old.name, m.dirs[dir], &name, 0)
                .unwrap();
            m.files[f].dir = dir;
            m.files[f].name = name;
        }
        1 => {
            let perm = 0o600 | (r.below(0o100) as u16);
            let set = SetAttr {
                mode: Some(u32::from(perm)),
                ..SetAttr::default()
            };
            fs.setattr(m.files[f].ino, set).unwrap();
            m.files[f].perm = perm;
        }
        k => {
            let held = match k {
                2 => Held::Write {
                    file: f,
                    off: near,
                    data: bytes(seed + 1, r.below(2 * BS) + 1),
                },
                3 => Held::Truncate { file: f, len: near },
                _ => Held::Punch {
                    file: f,
                    off: near,
                    len: r.below(2 * BS) + 1,
                },
            };
            run(fs, m, &held).unwrap();
            apply(m, &held);
        }
    }
    if r.below(2) == 0 {
        // Flushed and pruned: the records leave memory, and reading the other files pushes
        // the (now clean) blocks out of the cache, so a stale fetch could be installed.
        fs.flush_all().unwrap();
        for other in m.files.iter().filter(|o| o.ino != m.files[f].ino) {
            fs.read(other.ino, 0, 0, MAX_LEN as u32).unwrap();
        }
    }
}

/// Every file's attributes and bytes and every listing, as the model has them.
fn check_all(fs: &mut Fs, m: &Model, round: usize) {
    for dir in 0..2 {
        assert_eq!(
            run(fs, m, &Held::List { dir }).unwrap(),
            Answer::List(m.names(dir)),
            "round {round}: listing of dir {dir}"
        );
    }
    for f in &m.files {
        let a = fs.lookup(m.dirs[f.dir], &f.name).unwrap();
        fs.forget(a.ino, 1);
        assert_eq!(
            (a.ino, a.inode.size, a.inode.perm),
            (f.ino, f.data.len() as u64, f.perm),
            "round {round}: attributes of {}",
            String::from_utf8_lossy(&f.name)
        );
        let got = fs.read(f.ino, 0, 0, MAX_LEN as u32 * 2).unwrap();
        assert!(
            got == f.data,
            "round {round}: bytes of {}",
            String::from_utf8_lossy(&f.name)
        );
    }
}

#[test]
fn requests_held_between_fetch_and_finish_match_the_model() {
    for seed in [
        0x5eed_1234_abcd_9876,
        0x0123_4567_89ab_cdef,
        0x9e37_79b9_7f4a_7c15,
    ] {
        held_requests_match_the_model(seed, false);
    }
}

/// `lseek` `SEEK_DATA`/`SEEK_HOLE` held between fetching block maps and finishing, while
/// writes, truncates and punches change them (and flushes push them out of memory).
#[test]
fn seeks_held_between_fetch_and_finish_match_the_model() {
    for seed in [0x5eed_1234_abcd_9876, 0x2545_f491_4f6c_dd1d] {
        held_requests_match_the_model(seed, true);
    }
}

/// Hooks that do nothing: the wrapper only makes every read one that may wait (as a remote
/// store or a cold tier), so requests are held.
struct MayWait;
impl common::Hooks for MayWait {}

fn held_requests_match_the_model(seed: u64, seeks: bool) {
    let (engine, _dir) = common::engine();
    let store: std::sync::Arc<dyn qsfs_core::Store> = common::Hooked::new(engine, MayWait);
    let cfg = FsConfig {
        block_size: BS as u32,
        // A few blocks: a block rewritten while a request is held soon leaves the cache.
        cache_bytes: 4 * BS as u64,
        ..common::config()
    };
    let ns = Namespaces::new(&cfg.prefix);
    let fetches = Fetches::new(store.clone(), &ns);
    let mut fs = Fs::open(store, cfg).unwrap();
    let mut dirs = [0u64; 2];
    for (i, d) in dirs.iter_mut().enumerate() {
        let a = fs
            .mkdir(1, format!("d{i}").as_bytes(), 0o755, 0, 0)
            .unwrap();
        fs.forget(a.ino, 1);
        *d = a.ino;
    }
    let mut m = Model {
        dirs,
        files: Vec::new(),
    };
    for i in 0..FILES {
        let name = format!("f{i}").into_bytes();
        let dir = i % 2;
        let (a, fh) = fs.create(dirs[dir], &name, 0o644, 0, 0, 0).unwrap();
        let data = bytes(i as u64, 3 * BS + 100);
        fs.write(a.ino, fh, 0, &data).unwrap();
        fs.release(a.ino, fh).unwrap();
        fs.forget(a.ino, 1);
        m.files.push(File {
            ino: a.ino,
            dir,
            name,
            data,
            perm: 0o644,
        });
    }
    fs.flush_all().unwrap();

    let mut r = Rng(seed);
    let mut held_fetches = 0;
    let mut held_seeks = 0;
    for round in 0..ROUNDS {
        let salt = round as u64 * 16;
        let held = random_held(&mut r, &m, salt, seeks);
        let focus = match &held {
            Held::Write { file, off, .. }
            | Held::Punch { file, off, .. }
            | Held::Copy {
                from: file, off, ..
            } => Some((*file, *off)),
            Held::Truncate { file, len } => Some((*file, *len)),
            _ => None,
        };
        let fetch = |missing: Vec<Missing>| -> Vec<_> {
            missing
                .into_iter()
                .map(|x| {
                    let v = fetches.fetch(&x).unwrap();
                    (x, v)
                })
                .collect()
        };
        let mut fetched = Vec::new();
        let mut raced = false;
        let answer = loop {
            let model = &m;
            match fs.without_fetch(fetched, |fs| run(fs, model, &held)) {
                Ok(a) => break a.unwrap(),
                Err(missing) => {
                    held_fetches += 1;
                    if let Held::Seek { .. } = held {
                        held_seeks += 1;
                    }
                    // Fetched now, used after the changes below: as a worker whose fetch
                    // answered before other requests changed what it fetched.
                    fetched = fetch(missing);
                    if !raced || r.below(3) == 0 {
                        raced = true;
                        for k in 0..=r.below(3) {
                            race(&mut fs, &mut m, &mut r, salt + 2 + k as u64, focus);
                        }
                    }
                }
            }
        };
        if let Held::Seek { .. } = held {
            check_seek(&m, &held, &answer, &format!("seed {seed:#x} round {round}"));
        }
        let want = apply(&mut m, &held);
        if !matches!(held, Held::Seek { .. }) {
            assert_eq!(answer, want, "seed {seed:#x} round {round}: {held:?}");
        }
        if round % 10 == 9 {
            check_all(&mut fs, &m, round);
        }
        if r.below(2) == 0 {
            fs.flush_all().unwrap();
        }
    }
    check_all(&mut fs, &m, ROUNDS);
    // The test only means something if requests were held.
    assert!(
        held_fetches > ROUNDS / 2,
        "only {held_fetches} fetches held"
    );
    assert!(
        !seeks || held_seeks > ROUNDS / 4,
        "only {held_seeks} seeks held"
    );
}

/// Keys of `ino` still in the store: blocks 0 and 40,000 (two block maps), block maps 0 and
/// 1, the inode and its orphan record.
fn keys_of(store: &dyn qsfs_core::Store, ns: &Namespaces, ino: u64) -> Vec<&'static str> {
    use qsfs_fuse::layout::{ino_key, pair_key};
    let checks: [(&str, &str, Vec<u8>); 6] = [
        ("block 0", &ns.block, pair_key(ino, 0).to_vec()),
        ("block 40000", &ns.block, pair_key(ino, 40_000).to_vec()),
        ("map 0", &ns.bmap, pair_key(ino, 0).to_vec()),
        ("map 1", &ns.bmap, pair_key(ino, 1).to_vec()),
        ("inode", &ns.inode, ino_key(ino).to_vec()),
        ("orphan", &ns.orphan, ino_key(ino).to_vec()),
    ];
    checks
        .into_iter()
        .filter(|(_, n, k)| store.exists(n, k).unwrap())
        .map(|(what, _, _)| what)
        .collect()
}

/// Unlinked files whose block maps are out of memory: a flush that may not wait leaves their
/// freeing for later (committing their orphan records), a worker-style run fetches the maps
/// and frees them while other files change and flush meanwhile, and a crash or an unmount
/// while frees wait leaves nothing behind either.
#[test]
fn frees_left_for_later_free_everything_of_their_inode_and_nothing_else() {
    let (engine, _dir) = common::engine();
    let store: std::sync::Arc<dyn qsfs_core::Store> = common::Hooked::new(engine, MayWait);
    let cfg = FsConfig {
        block_size: BS as u32,
        ..common::config()
    };
    let ns = Namespaces::new(&cfg.prefix);
    let fetches = Fetches::new(store.clone(), &ns);
    for ending in ["worker", "crash", "unmount"] {
        let mut fs = Fs::open(store.clone(), cfg.clone()).unwrap();
        fs.set_defer_frees(true);
        let d = fs.mkdir(1, ending.as_bytes(), 0o755, 0, 0).unwrap().ino;
        let mut files = Vec::new();
        for i in 0..6u64 {
            let name = format!("f{i}").into_bytes();
            let (a, fh) = fs.create(d, &name, 0o644, 0, 0, 0).unwrap();
            let data = bytes(i, 2 * BS);
            fs.write(a.ino, fh, 0, &data).unwrap();
            // A second block map: frees must fetch and clear both.
            fs.write(a.ino, fh, 40_000 * BS as u64, &data[..BS])
                .unwrap();
            fs.release(a.ino, fh).unwrap();
            fs.forget(a.ino, 1);
            files.push((name, a.ino, data));
        }
        // Committed and pruned: the block maps leave memory.
        fs.flush_all().unwrap();
        for (name, _, _) in files.iter().step_by(2) {
            fs.unlink(d, name).unwrap();
        }
        fs.flush_all().unwrap();
        assert!(
            fs.frees_waiting(),
            "{ending}: the flush fetched under the lock"
        );
        for (_, ino, _) in files.iter().step_by(2) {
            assert!(
                keys_of(&*store, &ns, *ino).contains(&"orphan"),
                "{ending}: a free waits with no orphan record"
            );
        }
        match ending {
            "worker" => {
                let mut fetched = Vec::new();
                let mut rounds = 0;
                loop {
                    match fs.without_fetch(fetched, |fs| fs.free_waiting()) {
                        Ok(r) => break r.unwrap(),
                        Err(missing) => {
                            rounds += 1;
                            assert!(rounds < 8, "the free's needs keep changing");
                            fetched = missing
                                .into_iter()
                                .map(|m| {
                                    let v = fetches.fetch(&m).unwrap();
                                    (m, v)
                                })
                                .collect();
                            // Meanwhile the survivors change and everything is flushed.
                            for (_, ino, data) in files.iter().skip(1).step_by(2) {
                                fs.write(*ino, 0, BS as u64, &data[..BS]).unwrap();
                            }
                            fs.flush_all().unwrap();
                        }
                    }
                }
                assert!(rounds > 0, "nothing was left to fetch");
                assert!(!fs.frees_waiting());
                fs.shutdown().unwrap();
            }
            "crash" => {
                fs.abandon();
                drop(fs);
                // The next mount reclaims the orphans.
                let mut again = Fs::open(store.clone(), cfg.clone()).unwrap();
                again.shutdown().unwrap();
            }
            _ => fs.shutdown().unwrap(),
        }
        let mut fs = Fs::open(store.clone(), cfg.clone()).unwrap();
        for (i, (name, ino, data)) in files.iter().enumerate() {
            let left = keys_of(&*store, &ns, *ino);
            if i % 2 == 0 {
                assert!(
                    left.is_empty(),
                    "{ending}: {left:?} of an unlinked file left"
                );
                continue;
            }
            assert_eq!(left, ["block 0", "block 40000", "map 0", "map 1", "inode"]);
            let a = fs.lookup(d, name).unwrap();
            assert_eq!(a.ino, *ino);
            let got = fs.read(*ino, 0, 0, 2 * BS as u32).unwrap();
            let mut want = data.clone();
            if ending == "worker" {
                want[BS..].copy_from_slice(&data[..BS]);
            }
            assert!(
                got == want,
                "{ending}: bytes of {}",
                String::from_utf8_lossy(name)
            );
            fs.forget(a.ino, 1);
        }
        fs.shutdown().unwrap();
    }
}
