//! [`Fs`]: the filesystem logic over a Store, independent of the FUSE wire protocol.
//!
//! Every operation takes and returns plain values and an [`FsResult`]; `fuse.rs` only
//! translates. Metadata changes (inodes, dirents, listing pages, block maps) are kept dirty in
//! memory and written in one ordered batch by [`Fs::flush_all`]: data blocks, then block maps,
//! then inodes, then listing pages and dirents (new names before removed ones), then orphan
//! records, then the space of freed inodes. A crash therefore leaves either the old or the new
//! state of each object plus, at worst, unreferenced garbage, never a name pointing at an inode
//! that is not there.

use bytes::Bytes;
use qsfs_core::{BlockId, Cache, Store};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::acl::{self, Acl};
use crate::cache::BlockCache;
use crate::error::{FsError, FsResult};
use crate::journal::{self, JournalOp};
use crate::layout::*;
use crate::space::Reserve;

// Indices of the namespaces in `Namespaces::all`, as the journal names them.
const NS_INODE: u8 = 1;
const NS_DIRENT: u8 = 2;
const NS_DIRPAGE: u8 = 3;
const NS_BMAP: u8 = 5;
const NS_XATTR: u8 = 6;
const NS_ORPHAN: u8 = 7;

/// Blocks a sequential reader is kept ahead by (4 MiB at the default block size): deep enough
/// that the store's reads overlap the kernel's requests.
/// The file capabilities xattr, which a write, truncate or chown removes.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// `perm` without setuid, and without setgid when group-executable (setgid without group
/// execute marks mandatory locking and stays), as the VFS's `should_remove_suid`.
fn without_suid_sgid(perm: u16) -> u16 {
    let sgid_x = (libc::S_ISGID | libc::S_IXGRP) as u16;
    let mut p = perm & !(libc::S_ISUID as u16);
    if p & sgid_x == sgid_x {
        p &= !(libc::S_ISGID as u16);
    }
    p
}
const READ_AHEAD_BLOCKS: u64 = 32;
/// About what a new name or inode adds to the store, for the reserve's accounting.
const RECORD_COST: u64 = 4096;

/// Where statfs figures, and the reserve's, come from.
#[derive(Debug, Clone)]
pub enum Capacity {
    /// The filesystem holding this path (the embedded engine's directory).
    Disk(std::path::PathBuf),
    /// The store: [`qsfs_core::Store::space`] of the filesystem's block namespace (a remote
    /// server's disk, or that namespace's limit). A store that cannot tell is reported as
    /// [`UNKNOWN_CAPACITY`], without a reserve.
    Store,
    /// A fixed size in bytes, without a reserve.
    Fixed(u64),
}

/// The size statfs reports for a [`Capacity::Store`] that does not tell its space.
pub const UNKNOWN_CAPACITY: u64 = 1 << 40;

/// Settings of one mounted filesystem.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Namespace prefix: the filesystem lives in `<prefix>-inode`, `<prefix>-block`, ...
    pub prefix: String,
    /// Block size for a new filesystem (an existing one keeps its own).
    pub block_size: u32,
    /// Byte budget of the block cache.
    pub cache_bytes: u64,
    /// Dirty state older than this is flushed (and synced) by the timer.
    pub flush_after: Duration,
    /// Source of statfs figures.
    pub capacity: Capacity,
    /// Take over a mount lock held by another host.
    pub force: bool,
    /// Bytes of the store's disk kept free for deletes and compaction (at most a quarter of
    /// the disk; with [`Capacity::Disk`] and [`Capacity::Store`]): requests that add data fail
    /// with `ENOSPC` rather than eat into it (see [`crate::space`]).
    pub reserve: u64,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            prefix: "qsfs".into(),
            block_size: 128 * 1024,
            cache_bytes: 256 * 1024 * 1024,
            flush_after: Duration::from_secs(3),
            capacity: Capacity::Fixed(1 << 40),
            force: false,
            reserve: 64 << 20,
        }
    }
}

/// Attributes of an inode, as reported to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// The inode.
    pub inode: Inode,
    /// Allocated 512-byte sectors.
    pub blocks: u64,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// One entry returned by [`Fs::readdir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Offset to resume after this entry.
    pub cookie: i64,
    /// Inode.
    pub ino: u64,
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: Vec<u8>,
}

/// Figures for statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
}

/// What setattr changes.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    /// New permission bits (`mode & 0o7777` is kept).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New atime (`None` inside = now).
    pub atime: Option<Option<Time>>,
    /// New mtime (`None` inside = now).
    pub mtime: Option<Option<Time>>,
    /// Explicit ctime.
    pub ctime: Option<Time>,
}

/// Where the bytes of one block of a planned read come from.
#[derive(Debug)]
enum Source {
    Cached(Bytes),
    Hole,
    Fetch,
}

#[derive(Debug)]
struct Piece {
    index: u64,
    within: usize,
    len: usize,
    source: Source,
}

/// A read that needs blocks from the Store, made by [`Fs::plan_read`] under the filesystem
/// lock and completed by [`Fs::finish_read`] once they are fetched.
#[derive(Debug)]
pub struct ReadPlan {
    ino: u64,
    gen: u64,
    pieces: Vec<Piece>,
}

impl ReadPlan {
    /// The file read.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The file's data generation the plan was made at: fetches of the same block at the
    /// same generation read the same bytes, so they may be shared.
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// The blocks to fetch from the Store, in order.
    pub fn missing(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.pieces
            .iter()
            .filter(|p| matches!(p.source, Source::Fetch))
            .map(|p| BlockId {
                inode: self.ino,
                index: p.index,
            })
    }

    /// The bytes read, with `fetched` answering [`ReadPlan::missing`] in order, as slices of
    /// the blocks: holes, blocks the store does not have and the parts past a short block's
    /// end read as zeros.
    fn assemble(&self, fetched: &[Option<Bytes>]) -> ReadData {
        let mut out = ReadData::with_capacity(self.pieces.len());
        let mut fetched = fetched.iter();
        for p in &self.pieces {
            let block = match &p.source {
                Source::Cached(b) => Some(b),
                Source::Hole => None,
                Source::Fetch => fetched.next().and_then(Option::as_ref),
            };
            let avail = block.map_or(0, |b| b.len().saturating_sub(p.within).min(p.len));
            if let Some(b) = block.filter(|_| avail > 0) {
                out.push(b.slice(p.within..p.within + avail));
            }
            push_zeros(&mut out, p.len - avail);
        }
        out
    }
}

/// The bytes of a read: slices of cached blocks and of a shared page of zeros, replied with
/// one `writev`. Joining them into one buffer cost a fifth of the mount's CPU in a cold
/// sequential read (the kernel asks for 1 MiB, eight blocks, at a time).
pub type ReadData = Vec<Bytes>;

/// The bytes in `data`.
pub fn read_len(data: &ReadData) -> usize {
    data.iter().map(Bytes::len).sum()
}

/// Appends `n` zero bytes to `out`, as slices of one static zero buffer.
fn push_zeros(out: &mut ReadData, mut n: usize) {
    static ZEROS: [u8; 128 << 10] = [0; 128 << 10];
    while n > 0 {
        let take = n.min(ZEROS.len());
        out.push(Bytes::from_static(&ZEROS[..take]));
        n -= take;
    }
}

/// What an operation run by [`Fs::without_fetch`] needs from the Store before it can complete
/// without waiting on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Need {
    /// A metadata record (inode, dirent, listing page, block map or xattrs).
    Record {
        /// Index of its namespace in [`Namespaces::all`].
        ns: u8,
        /// Its key.
        key: Vec<u8>,
        /// The inode it belongs to (the directory, for dirents and listing pages).
        owner: u64,
    },
    /// A file block, for a partial write, a partial-block zeroing or a copy.
    Block(BlockId),
}

/// A [`Need`] and the generation of its owner when it was found missing: a fetched answer is
/// used only if that generation is unchanged when it arrives, since the record or block may
/// have been rewritten in the Store meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Missing {
    /// The record or block.
    pub need: Need,
    /// Its owner's generation at the time.
    pub gen: u64,
}

/// Block maps a seek run without fetching names at once (each covers [`CHUNK_BLOCKS`]
/// blocks); one that walks further takes more rounds.
const SEEK_CHUNKS_AHEAD: usize = 16;

/// Generation slots of metadata owners: an inode's records share slot `ino % META_GENS`.
/// Two inodes sharing one only costs a spurious fetch again.
const META_GENS: usize = 4096;

/// How [`Fs::plan_read`] found a read.
#[derive(Debug)]
pub enum ReadStart {
    /// Answered from the cache.
    Done(ReadData),
    /// Blocks must come from the Store first.
    Fetch(ReadPlan),
}

struct Node {
    inode: Inode,
    dirty: bool,
    lookups: u64,
    opens: u32,
    /// The value of `Fs::data_seq` when this file's data or size last changed (or when the node
    /// was loaded: a reloaded node may have changed while it was out of memory). A read that
    /// fetched blocks with the lock released uses them only if this is still what it planned
    /// with.
    data_gen: u64,
}

struct Handle {
    ino: u64,
    append: bool,
    writes: bool,
    next_read: u64,
}

/// (parent, name) of a directory entry.
type DirentKey = (u64, Vec<u8>);

struct Cached<T> {
    value: T,
    dirty: bool,
}

static ACTIVE_SESSIONS: parking_lot::Mutex<BTreeSet<u64>> =
    parking_lot::const_mutex(BTreeSet::new());

/// The filesystem over one Store.
pub struct Fs {
    store: Arc<dyn Store>,
    ns: Namespaces,
    cache: BlockCache,
    bs: u64,
    cfg: FsConfig,
    reserve: Reserve,
    sup: Superblock,
    next_ino: u64,
    nodes: HashMap<u64, Node>,
    dirents: HashMap<DirentKey, Cached<Option<Dirent>>>,
    pages: HashMap<(u64, u64), Cached<Page>>,
    chunks: HashMap<(u64, u64), Cached<Chunk>>,
    xattrs: HashMap<u64, Cached<Xattrs>>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Inodes gone (no link, no lookup, not open) whose space the next flush frees. Sets, not
    /// lists: every unlink asks whether its inode is queued, and an `rm -rf` of 60,000 files
    /// queued them all before a flush, so a list made it quadratic.
    free_queue: BTreeSet<u64>,
    /// Inodes whose orphan record is committed but whose freeing needs records not in memory
    /// that the Store cannot give at once: a read worker fetches them with the lock released
    /// ([`Fs::free_waiting`]).
    free_waiting: BTreeSet<u64>,
    /// Set when read workers exist to free [`Fs::free_waiting`]: a flush then never waits on the
    /// Store to free an inode.
    defer_frees: bool,
    orphans: HashSet<u64>,
    /// `O_TMPFILE`s not yet named: the only unlinked inodes [`Fs::link`] accepts.
    linkable: HashSet<u64>,
    meta_dirty_since: Option<Instant>,
    session: u64,
    locked: bool,
    kernel_writeback: bool,
    /// Counts changes of file data (write, truncate, fallocate, freeing); see `Node::data_gen`.
    data_seq: u64,
    /// Set while [`Fs::without_fetch`] runs an operation: a record or block not in memory is
    /// noted in `wanted` and the operation fails with [`FsError::WouldWait`] instead of
    /// reading the Store.
    no_fetch: bool,
    wanted: Vec<Missing>,
    /// Records fetched with the lock released for the operation being run, with the
    /// generation they were current at (a flush within the operation may outdate them).
    prefetched: HashMap<Need, (u64, Option<Vec<u8>>)>,
    /// Counts metadata writes to the Store.
    meta_seq: u64,
    /// Per owner slot, the `meta_seq` of the last Store write or delete of a record of an owner
    /// in the slot: a record missing from memory and fetched unlocked is used only if its
    /// slot did not move meanwhile (a record in memory is always newer than the Store).
    meta_gens: Vec<u64>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("prefix", &self.cfg.prefix)
            .field("block_size", &self.bs)
            .finish()
    }
}

fn errno<T>(n: libc::c_int) -> FsResult<T> {
    Err(FsError::Errno(n))
}

fn ignore_missing(r: qsfs_core::Result<()>) -> FsResult<()> {
    match r {
        Ok(()) | Err(qsfs_core::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return errno(libc::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return errno(libc::EINVAL);
    }
    Ok(())
}

impl Fs {
    /// Opens (creating on first use) the filesystem in `store`, takes the mount lock and frees
    /// the inodes orphaned by a crash.
    pub fn open(store: Arc<dyn Store>, cfg: FsConfig) -> FsResult<Fs> {
        let ns = Namespaces::new(&cfg.prefix);
        let existing: HashSet<String> = store.namespace_list()?.into_iter().collect();
        for n in ns.all() {
            if !existing.contains(n) {
                match store.namespace_create(n) {
                    Ok(()) | Err(qsfs_core::Error::AlreadyExists(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let session = {
            let t = Time::now();
            (t.secs as u64).wrapping_mul(1_000_000_007)
                ^ u64::from(t.nanos)
                ^ (u64::from(std::process::id()) << 32)
        };
        let sup = match store.get(&ns.sup, SUPER_KEY)? {
            Some(e) => decode::<Superblock>(&e.value, "superblock")?,
            None => {
                let sup = Superblock {
                    block_size: cfg.block_size,
                    ino_reserved: ROOT_INO + 1,
                    created: Time::now(),
                };
                store.set(&ns.sup, Some(SUPER_KEY), &encode(&sup))?;
                sup
            }
        };
        if sup.block_size == 0 || sup.block_size as usize > qsfs_core::MAX_VALUE_LEN {
            return Err(FsError::corrupt(
                "superblock",
                format!("block size {}", sup.block_size),
            ));
        }
        let cache = BlockCache::new(
            store.clone(),
            &ns.block,
            sup.block_size as usize,
            cfg.cache_bytes,
        );
        let reserve = Reserve::new(&cfg.capacity, cfg.reserve, &store, &ns.block);
        let mut fs = Fs {
            bs: u64::from(sup.block_size),
            next_ino: sup.ino_reserved,
            store,
            ns,
            cache,
            reserve,
            cfg,
            sup,
            nodes: HashMap::new(),
            dirents: HashMap::new(),
            pages: HashMap::new(),
            chunks: HashMap::new(),
            xattrs: HashMap::new(),
            handles: HashMap::new(),
            next_fh: 1,
            free_queue: BTreeSet::new(),
            free_waiting: BTreeSet::new(),
            defer_frees: false,
            orphans: HashSet::new(),
            linkable: HashSet::new(),
            meta_dirty_since: None,
            session,
            locked: false,
            kernel_writeback: false,
            data_seq: 0,
            no_fetch: false,
            wanted: Vec::new(),
            prefetched: HashMap::new(),
            meta_seq: 0,
            meta_gens: vec![0; META_GENS],
        };
        let crashed = fs.take_lock()?;
        let replayed = journal::replay(&*fs.store, &fs.ns)?;
        if replayed > 0 {
            tracing::warn!(
                ops = replayed,
                "applied the metadata batch a crashed mount left"
            );
        }
        if fs.store.get(&fs.ns.inode, &ino_key(ROOT_INO))?.is_none() {
            let mut root = Inode::new(
                Kind::Dir,
                0o755,
                0,
                0,
                Body::Dir {
                    parent: ROOT_INO,
                    entries: 0,
                    tail_page: 0,
                    tail_used: 0,
                },
            );
            root.nlink = 2;
            fs.store
                .set(&fs.ns.inode, Some(&ino_key(ROOT_INO)), &encode(&root))?;
        }
        fs.reclaim_orphans()?;
        if crashed {
            let n = fs.sweep_unmapped_blocks()?;
            if n > 0 {
                tracing::warn!(
                    blocks = n,
                    "deleted blocks a crashed mount wrote but never mapped"
                );
            }
        }
        Ok(fs)
    }

    /// Takes the mount lock; true if it was left by a mount that died without unmounting.
    fn take_lock(&mut self) -> FsResult<bool> {
        let mut crashed = false;
        let host = hostname();
        let pid = std::process::id();
        if let Some(e) = self.store.get(&self.ns.sup, LOCK_KEY)? {
            let lock: Lock = decode(&e.value, "mount lock")?;
            let alive = if lock.host != host {
                !self.cfg.force
            } else if lock.pid == pid {
                ACTIVE_SESSIONS.lock().contains(&lock.session)
            } else {
                lock.pid_alive()
            };
            if alive {
                return Err(FsError::Store(qsfs_core::Error::AlreadyExists(format!(
                    "filesystem {:?} is already mounted by process {} on host {} (since {} s \
                     after the epoch); unmount it first{}",
                    self.cfg.prefix,
                    lock.pid,
                    lock.host,
                    lock.since.secs,
                    if lock.host != host {
                        ", or take it over with --force"
                    } else {
                        ""
                    }
                ))));
            }
            tracing::warn!(pid = lock.pid, host = %lock.host, "taking over a stale mount lock");
            crashed = true;
        }
        let lock = Lock {
            host,
            pid,
            session: self.session,
            since: Time::now(),
        };
        self.store
            .set(&self.ns.sup, Some(LOCK_KEY), &encode(&lock))?;
        self.store.sync()?;
        ACTIVE_SESSIONS.lock().insert(self.session);
        self.locked = true;
        Ok(crashed)
    }

    /// After a crash: deletes every stored block its committed block map does not mark. Blocks
    /// reach the store before the metadata batch that maps them (on close, on cache eviction,
    /// at the start of a flush), so a crash can leave blocks of files that were never
    /// committed, or past a committed end; they are invisible garbage until deleted here. One
    /// key scan of the block namespace, only when the previous mount did not unmount.
    fn sweep_unmapped_blocks(&mut self) -> FsResult<u64> {
        let mut cursor = None;
        let mut doomed = Vec::new();
        let mut files: HashMap<u64, Option<u64>> = HashMap::new();
        loop {
            let page =
                self.store
                    .scan(&self.ns.block, cursor.as_ref(), 1024, Default::default())?;
            for m in &page.entries {
                let Some((ino, index)) = parse_pair_key(&m.key) else {
                    continue;
                };
                let size = match files.get(&ino) {
                    Some(s) => *s,
                    None => {
                        let s = match self.node(ino) {
                            Ok(n) if n.inode.kind == Kind::File => Some(n.inode.size),
                            Ok(_) | Err(FsError::Errno(libc::ENOENT)) => None,
                            Err(e) => return Err(e),
                        };
                        files.insert(ino, s);
                        s
                    }
                };
                let mapped = match size {
                    Some(size) if index.saturating_mul(self.bs) < size => {
                        self.load_chunk(ino, index / CHUNK_BLOCKS)?;
                        self.chunks[&(ino, index / CHUNK_BLOCKS)]
                            .value
                            .get(index % CHUNK_BLOCKS)
                    }
                    _ => false,
                };
                if !mapped {
                    doomed.push(pair_key(ino, index));
                }
            }
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        for k in &doomed {
            ignore_missing(self.store.delete(&self.ns.block, k))?;
        }
        self.prune();
        Ok(doomed.len() as u64)
    }

    fn reclaim_orphans(&mut self) -> FsResult<()> {
        let mut cursor = None;
        let mut found = Vec::new();
        loop {
            let page =
                self.store
                    .scan(&self.ns.orphan, cursor.as_ref(), 1024, Default::default())?;
            found.extend(page.entries.iter().filter_map(|m| parse_ino_key(&m.key)));
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        for ino in found {
            tracing::info!(ino, "reclaiming an orphaned inode");
            self.orphans.insert(ino);
            self.free_inode(ino)?;
        }
        Ok(())
    }

    /// Tells the filesystem the kernel caches written pages (`FUSE_WRITEBACK_CACHE`): data may
    /// reach it only when the kernel writes back, at the latest when the writer closes.
    pub fn set_kernel_writeback(&mut self, on: bool) {
        self.kernel_writeback = on;
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.bs
    }

    /// The block cache.
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// The Store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The namespaces this filesystem uses.
    pub fn namespaces(&self) -> &Namespaces {
        &self.ns
    }

    fn mark_meta(&mut self) {
        self.meta_dirty_since.get_or_insert_with(Instant::now);
    }

    /// When the oldest change not yet written to the Store happened.
    pub fn dirty_since(&self) -> Option<Instant> {
        match (self.meta_dirty_since, self.cache.dirty_since()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- inodes ----

    fn node(&mut self, ino: u64) -> FsResult<&mut Node> {
        if !self.nodes.contains_key(&ino) {
            let Some(value) = self.stored(NS_INODE, &ino_key(ino), ino)? else {
                return errno(libc::ENOENT);
            };
            let inode: Inode = decode(&value, &format!("inode {ino}"))?;
            self.nodes.insert(
                ino,
                Node {
                    inode,
                    dirty: false,
                    lookups: 0,
                    opens: 0,
                    data_gen: self.data_seq,
                },
            );
        }
        self.nodes.get_mut(&ino).ok_or(FsError::Errno(libc::ENOENT))
    }

    fn inode(&mut self, ino: u64) -> FsResult<&Inode> {
        Ok(&self.node(ino)?.inode)
    }

    fn inode_mut(&mut self, ino: u64) -> FsResult<&mut Inode> {
        self.mark_meta();
        let n = self.node(ino)?;
        n.dirty = true;
        Ok(&mut n.inode)
    }

    fn alloc_ino(&mut self) -> FsResult<u64> {
        self.reserve_ino()?;
        let ino = self.next_ino;
        self.next_ino += 1;
        Ok(ino)
    }

    /// Makes sure the next inode number is reserved in the super record (the only store write
    /// creating an inode may need before the flush), so an operation can do it before it
    /// changes anything.
    fn reserve_ino(&mut self) -> FsResult<()> {
        if self.next_ino >= self.sup.ino_reserved {
            let mut sup = self.sup.clone();
            sup.ino_reserved = self.next_ino + 4096;
            self.store
                .set(&self.ns.sup, Some(SUPER_KEY), &encode(&sup))?;
            self.sup = sup;
        }
        Ok(())
    }

    /// The attributes of `ino`.
    pub fn getattr(&mut self, ino: u64) -> FsResult<Attr> {
        let bs = self.bs;
        let inode = self.inode(ino)?.clone();
        let blocks = match &inode.body {
            Body::File { blocks, .. } => blocks * (bs / 512),
            Body::Dir { tail_page, .. } => (tail_page + 1) * 8,
            Body::Symlink { .. } | Body::Special => 0,
        };
        Ok(Attr {
            ino,
            inode,
            blocks,
            blksize: bs as u32,
        })
    }

    fn dir_parent(&mut self, ino: u64) -> FsResult<u64> {
        match &self.inode(ino)?.body {
            Body::Dir { parent, .. } => Ok(*parent),
            _ => errno(libc::ENOTDIR),
        }
    }

    // ---- directories ----

    fn get_dirent(&mut self, parent: u64, name: &[u8]) -> FsResult<Option<Dirent>> {
        if let Some(c) = self.dirents.get(&(parent, name.to_vec())) {
            return Ok(c.value);
        }
        let d = match self.stored(NS_DIRENT, &dirent_key(parent, name), parent)? {
            Some(v) => Some(decode_dirent(name, &v, "dirent")?),
            None => None,
        };
        self.dirents.insert(
            (parent, name.to_vec()),
            Cached {
                value: d,
                dirty: false,
            },
        );
        Ok(d)
    }

    fn page_mut(&mut self, dir: u64, page: u64) -> FsResult<&mut Page> {
        self.load_page(dir, page)?;
        self.mark_meta();
        let c = self
            .pages
            .get_mut(&(dir, page))
            .ok_or(FsError::Errno(libc::EIO))?;
        c.dirty = true;
        Ok(&mut c.value)
    }

    fn load_page(&mut self, dir: u64, page: u64) -> FsResult<()> {
        if !self.pages.contains_key(&(dir, page)) {
            let p = match self.stored(NS_DIRPAGE, &pair_key(dir, page), dir)? {
                Some(v) => decode::<Page>(&v, &format!("dir {dir} page {page}"))?,
                None => Page::default(),
            };
            self.pages.insert(
                (dir, page),
                Cached {
                    value: p,
                    dirty: false,
                },
            );
        }
        Ok(())
    }

    fn dir_add(&mut self, dir: u64, name: &[u8], ino: u64, kind: Kind) -> FsResult<()> {
        let now = Time::now();
        let inode = self.inode_mut(dir)?;
        let Body::Dir {
            entries,
            tail_page,
            tail_used,
            ..
        } = &mut inode.body
        else {
            return errno(libc::ENOTDIR);
        };
        if *tail_used >= PAGE_SLOTS {
            *tail_page += 1;
            *tail_used = 0;
        }
        let (page, slot) = (*tail_page, *tail_used);
        *tail_used += 1;
        *entries += 1;
        inode.mtime = now;
        inode.ctime = now;
        self.page_mut(dir, page)?.entries.push(PageEntry {
            slot,
            name: name.to_vec(),
            ino,
            kind,
        });
        let d = Dirent {
            ino,
            kind,
            page,
            slot,
        };
        self.dirents.insert(
            (dir, name.to_vec()),
            Cached {
                value: Some(d),
                dirty: true,
            },
        );
        Ok(())
    }

    fn dir_remove(&mut self, dir: u64, name: &[u8]) -> FsResult<Dirent> {
        let Some(d) = self.get_dirent(dir, name)? else {
            return errno(libc::ENOENT);
        };
        let now = Time::now();
        let inode = self.inode_mut(dir)?;
        if let Body::Dir { entries, .. } = &mut inode.body {
            *entries = entries.saturating_sub(1);
        }
        inode.mtime = now;
        inode.ctime = now;
        let page = self.page_mut(dir, d.page)?;
        page.entries.retain(|e| e.slot != d.slot);
        self.dirents.insert(
            (dir, name.to_vec()),
            Cached {
                value: None,
                dirty: true,
            },
        );
        Ok(d)
    }

    /// Points an existing entry at another inode (rename exchange).
    fn dir_repoint(&mut self, dir: u64, name: &[u8], ino: u64, kind: Kind) -> FsResult<()> {
        let Some(mut d) = self.get_dirent(dir, name)? else {
            return errno(libc::ENOENT);
        };
        d.ino = ino;
        d.kind = kind;
        let page = self.page_mut(dir, d.page)?;
        for e in page.entries.iter_mut().filter(|e| e.slot == d.slot) {
            e.ino = ino;
            e.kind = kind;
        }
        self.dirents.insert(
            (dir, name.to_vec()),
            Cached {
                value: Some(d),
                dirty: true,
            },
        );
        let now = Time::now();
        let inode = self.inode_mut(dir)?;
        inode.mtime = now;
        inode.ctime = now;
        Ok(())
    }

    fn dir_entries(&mut self, dir: u64) -> FsResult<u64> {
        match &self.inode(dir)?.body {
            Body::Dir { entries, .. } => Ok(*entries),
            _ => errno(libc::ENOTDIR),
        }
    }

    /// Looks `name` up in `parent`, counting a kernel reference.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        check_name(name)?;
        self.dir_parent(parent)?;
        let Some(d) = self.get_dirent(parent, name)? else {
            return errno(libc::ENOENT);
        };
        let attr = match self.getattr(d.ino) {
            Ok(a) => a,
            // A name whose inode is gone is damage, not absence.
            Err(FsError::Errno(libc::ENOENT)) => {
                return Err(FsError::corrupt(
                    &format!("dirent {parent}/{}", String::from_utf8_lossy(name)),
                    format!("points at missing inode {}", d.ino),
                ))
            }
            Err(e) => return Err(e),
        };
        self.node(d.ino)?.lookups += 1;
        Ok(attr)
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        self.maybe_free(ino);
    }

    fn maybe_free(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get(&ino) {
            if node.inode.nlink == 0
                && node.lookups == 0
                && node.opens == 0
                && !self.free_queue.contains(&ino)
                && !self.free_waiting.contains(&ino)
            {
                {
                    self.free_queue.insert(ino);
                    self.data_changed(ino);
                    let _ = self.cache.discard(ino, 0, None);
                    self.mark_meta();
                }
            }
        }
    }

    /// Creates an inode in `parent` under `name`, or, without a name, an unnamed one (an
    /// `O_TMPFILE`) that is an orphan from the start: no link, and reclaimed at its last close
    /// or, after a crash, at the next mount, unless [`Fs::link`] names it first.
    fn new_inode(
        &mut self,
        parent: u64,
        name: Option<&[u8]>,
        kind: Kind,
        (mode, umask): (u32, u32),
        (uid, gid): (u32, u32),
        body: Body,
    ) -> FsResult<Attr> {
        if let Some(name) = name {
            check_name(name)?;
        }
        if kind != Kind::Symlink {
            self.want_xattrs(parent)?;
        }
        if let Some(name) = name {
            self.prepare_names(&[(parent, name)], None)?;
        }
        let pinode = self.inode(parent)?.clone();
        if pinode.kind != Kind::Dir {
            return errno(libc::ENOTDIR);
        }
        if pinode.nlink == 0 {
            return errno(libc::ENOENT);
        }
        if let Some(name) = name {
            if self.get_dirent(parent, name)?.is_some() {
                return errno(libc::EEXIST);
            }
        }
        self.admit(RECORD_COST)?;
        let mut perm = (mode & 0o7777) as u16;
        let mut gid = gid;
        if pinode.perm & (libc::S_ISGID as u16) != 0 {
            gid = pinode.gid;
            if kind == Kind::Dir {
                perm |= libc::S_ISGID as u16;
            }
        }
        // Symlinks take neither the umask nor ACLs (their mode is 0777 whatever is asked).
        let created = if kind == Kind::Symlink {
            acl::Created {
                perm: u32::from(perm),
                access: None,
                default: None,
            }
        } else {
            let parent_default = if pinode.has_xattrs {
                self.stored_acl(parent, acl::DEFAULT)?
            } else {
                None
            };
            acl::create(
                u32::from(perm),
                umask,
                kind == Kind::Dir,
                parent_default.as_ref(),
            )
        };
        let ino = self.alloc_ino()?;
        let mut inode = Inode::new(kind, created.perm as u16, uid, gid, body);
        let mut pairs = Vec::new();
        if let Some(a) = &created.access {
            pairs.push((acl::ACCESS.to_vec(), a.encode()));
        }
        if let Some(d) = &created.default {
            pairs.push((acl::DEFAULT.to_vec(), d.encode()));
        }
        if !pairs.is_empty() {
            pairs.sort();
            inode.has_xattrs = true;
            self.xattrs.insert(
                ino,
                Cached {
                    value: Xattrs { pairs },
                    dirty: true,
                },
            );
        }
        self.nodes.insert(
            ino,
            Node {
                inode,
                dirty: true,
                lookups: 1,
                opens: 0,
                data_gen: self.data_seq,
            },
        );
        self.mark_meta();
        let Some(name) = name else {
            self.inode_mut(ino)?.nlink = 0;
            return self.getattr(ino);
        };
        self.dir_add(parent, name, ino, kind)?;
        if kind == Kind::Dir {
            self.inode_mut(parent)?.nlink += 1;
        }
        self.getattr(ino)
    }

    /// Creates a regular file and opens it, with `mode` taken as is (the caller applied any
    /// umask); a default ACL of `parent` still applies.
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Attr, u64)> {
        self.create_masked(parent, name, (mode, 0), flags, uid, gid)
    }

    /// Creates a regular file and opens it: `(mode, umask)` as the kernel sends them with
    /// `FUSE_DONT_MASK` (the umask applies unless `parent` has a default ACL).
    pub fn create_masked(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: (u32, u32),
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Attr, u64)> {
        self.create_open(parent, Some(name), mode, flags, (uid, gid))
    }

    /// Creates a regular file (named, or unnamed for [`Fs::tmpfile`]) and opens it.
    fn create_open(
        &mut self,
        parent: u64,
        name: Option<&[u8]>,
        mode: (u32, u32),
        flags: i32,
        owner: (u32, u32),
    ) -> FsResult<(Attr, u64)> {
        let body = Body::File {
            chunks: BTreeSet::new(),
            blocks: 0,
        };
        let attr = self.new_inode(parent, name, Kind::File, mode, owner, body)?;
        let fh = self.open_file(attr.ino, flags)?;
        Ok((attr, fh))
    }

    /// Creates an unnamed regular file in `parent` and opens it (`O_TMPFILE`): `(mode, umask)`
    /// as for [`Fs::create_masked`]. It has no link; [`Fs::link`] may give it a name while it
    /// is open (the kernel refuses that for a file opened with `O_EXCL`), and otherwise its
    /// last close frees it.
    pub fn tmpfile(
        &mut self,
        parent: u64,
        mode: (u32, u32),
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Attr, u64)> {
        let (attr, fh) = self.create_open(parent, None, mode, flags, (uid, gid))?;
        if flags & libc::O_EXCL == 0 {
            self.linkable.insert(attr.ino);
        }
        Ok((attr, fh))
    }

    /// Creates a directory, with `mode` taken as is (see [`Fs::create`]).
    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.mkdir_masked(parent, name, (mode, 0), uid, gid)
    }

    /// Creates a directory from `(mode, umask)` (see [`Fs::create_masked`]); it inherits the
    /// default ACL of `parent` as its own.
    pub fn mkdir_masked(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: (u32, u32),
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let body = Body::Dir {
            parent,
            entries: 0,
            tail_page: 0,
            tail_used: 0,
        };
        self.new_inode(parent, Some(name), Kind::Dir, mode, (uid, gid), body)
    }

    /// Creates a fifo, socket, device node or regular file, with `mode` taken as is (see
    /// [`Fs::create`]).
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.mknod_masked(parent, name, (mode, 0), rdev, uid, gid)
    }

    /// Creates a fifo, socket, device node or regular file from `(mode, umask)` (see
    /// [`Fs::create_masked`]).
    pub fn mknod_masked(
        &mut self,
        parent: u64,
        name: &[u8],
        (mode, umask): (u32, u32),
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let Some(kind) = Kind::from_mode(mode) else {
            return errno(libc::EINVAL);
        };
        let body = match kind {
            Kind::File => Body::File {
                chunks: BTreeSet::new(),
                blocks: 0,
            },
            Kind::Dir | Kind::Symlink => return errno(libc::EINVAL),
            _ => Body::Special,
        };
        let attr = self.new_inode(parent, Some(name), kind, (mode, umask), (uid, gid), body)?;
        if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            self.inode_mut(attr.ino)?.rdev = rdev;
        }
        self.getattr(attr.ino)
    }

    /// Creates a symbolic link.
    pub fn symlink(
        &mut self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        if target.len() > SYMLINK_MAX {
            return errno(libc::ENAMETOOLONG);
        }
        if target.is_empty() {
            return errno(libc::ENOENT);
        }
        let body = Body::Symlink {
            target: target.to_vec(),
        };
        let attr = self.new_inode(
            parent,
            Some(name),
            Kind::Symlink,
            (0o777, 0),
            (uid, gid),
            body,
        )?;
        self.inode_mut(attr.ino)?.size = target.len() as u64;
        self.getattr(attr.ino)
    }

    /// The target of a symbolic link.
    pub fn readlink(&mut self, ino: u64) -> FsResult<Vec<u8>> {
        match &self.inode(ino)?.body {
            Body::Symlink { target } => Ok(target.clone()),
            _ => errno(libc::EINVAL),
        }
    }

    /// Adds a hard link `newparent/newname` to `ino`.
    pub fn link(&mut self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        check_name(newname)?;
        self.prepare_names(&[(newparent, newname)], None)?;
        let inode = self.inode(ino)?.clone();
        if inode.kind == Kind::Dir {
            return errno(libc::EPERM);
        }
        // An unlinked file stays unlinked; only an `O_TMPFILE` may get its first name.
        if inode.nlink == 0 && !self.linkable.contains(&ino) {
            return errno(libc::ENOENT);
        }
        self.dir_parent(newparent)?;
        if self.get_dirent(newparent, newname)?.is_some() {
            return errno(libc::EEXIST);
        }
        self.admit(RECORD_COST)?;
        self.dir_add(newparent, newname, ino, inode.kind)?;
        self.linkable.remove(&ino);
        let i = self.inode_mut(ino)?;
        i.nlink += 1;
        i.ctime = Time::now();
        self.node(ino)?.lookups += 1;
        self.getattr(ino)
    }

    fn drop_link(&mut self, ino: u64) -> FsResult<()> {
        let i = self.inode_mut(ino)?;
        if i.kind == Kind::Dir {
            i.nlink = 0;
        } else {
            i.nlink = i.nlink.saturating_sub(1);
        }
        i.ctime = Time::now();
        self.maybe_free(ino);
        Ok(())
    }

    /// Removes a non-directory name.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        self.prepare_names(&[(parent, name)], None)?;
        self.dir_parent(parent)?;
        let Some(d) = self.get_dirent(parent, name)? else {
            return errno(libc::ENOENT);
        };
        if d.kind == Kind::Dir {
            return errno(libc::EISDIR);
        }
        self.dir_remove(parent, name)?;
        self.drop_link(d.ino)
    }

    /// Removes an empty directory.
    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return errno(libc::EINVAL);
        }
        if name == b".." {
            return errno(libc::ENOTEMPTY);
        }
        check_name(name)?;
        self.prepare_names(&[(parent, name)], None)?;
        self.dir_parent(parent)?;
        let Some(d) = self.get_dirent(parent, name)? else {
            return errno(libc::ENOENT);
        };
        if d.kind != Kind::Dir {
            return errno(libc::ENOTDIR);
        }
        if self.dir_entries(d.ino)? != 0 {
            return errno(libc::ENOTEMPTY);
        }
        self.dir_remove(parent, name)?;
        let p = self.inode_mut(parent)?;
        p.nlink = p.nlink.saturating_sub(1);
        self.drop_link(d.ino)
    }

    /// True if `dir` is `ancestor` or lies below it.
    fn is_within(&mut self, mut dir: u64, ancestor: u64) -> FsResult<bool> {
        loop {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = self.dir_parent(dir)?;
        }
    }

    /// Renames `parent/name` to `newparent/newname` (`flags`: `RENAME_NOREPLACE`,
    /// `RENAME_EXCHANGE`).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
        const EXCHANGE: u32 = libc::RENAME_EXCHANGE;
        if flags & !(NOREPLACE | EXCHANGE) != 0 || flags == NOREPLACE | EXCHANGE {
            return errno(libc::EINVAL);
        }
        check_name(name)?;
        check_name(newname)?;
        self.prepare_names(&[(parent, name), (newparent, newname)], Some(newparent))?;
        self.dir_parent(parent)?;
        self.dir_parent(newparent)?;
        let Some(src) = self.get_dirent(parent, name)? else {
            return errno(libc::ENOENT);
        };
        let dst = self.get_dirent(newparent, newname)?;
        if flags & EXCHANGE != 0 {
            let Some(dst) = dst else {
                return errno(libc::ENOENT);
            };
            if src.ino == dst.ino {
                return Ok(());
            }
            if src.kind == Kind::Dir && self.is_within(newparent, src.ino)? {
                return errno(libc::EINVAL);
            }
            if dst.kind == Kind::Dir && self.is_within(parent, dst.ino)? {
                return errno(libc::EINVAL);
            }
            self.dir_repoint(parent, name, dst.ino, dst.kind)?;
            self.dir_repoint(newparent, newname, src.ino, src.kind)?;
            if parent != newparent {
                if src.kind == Kind::Dir {
                    self.set_parent(src.ino, newparent)?;
                    self.inode_mut(parent)?.nlink -= 1;
                    self.inode_mut(newparent)?.nlink += 1;
                }
                if dst.kind == Kind::Dir {
                    self.set_parent(dst.ino, parent)?;
                    self.inode_mut(newparent)?.nlink -= 1;
                    self.inode_mut(parent)?.nlink += 1;
                }
            }
            let now = Time::now();
            self.inode_mut(src.ino)?.ctime = now;
            self.inode_mut(dst.ino)?.ctime = now;
            return Ok(());
        }
        if let Some(dst) = dst {
            if src.ino == dst.ino {
                return Ok(());
            }
            if flags & NOREPLACE != 0 {
                return errno(libc::EEXIST);
            }
            match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                (true, false) => return errno(libc::ENOTDIR),
                (false, true) => return errno(libc::EISDIR),
                (true, true) if self.dir_entries(dst.ino)? != 0 => return errno(libc::ENOTEMPTY),
                _ => {}
            }
        }
        if src.kind == Kind::Dir && self.is_within(newparent, src.ino)? {
            return errno(libc::EINVAL);
        }
        if let Some(dst) = dst {
            self.dir_remove(newparent, newname)?;
            if dst.kind == Kind::Dir {
                let p = self.inode_mut(newparent)?;
                p.nlink = p.nlink.saturating_sub(1);
            }
            self.drop_link(dst.ino)?;
        }
        self.dir_remove(parent, name)?;
        self.dir_add(newparent, newname, src.ino, src.kind)?;
        if src.kind == Kind::Dir && parent != newparent {
            self.set_parent(src.ino, newparent)?;
            let p = self.inode_mut(parent)?;
            p.nlink = p.nlink.saturating_sub(1);
            self.inode_mut(newparent)?.nlink += 1;
        }
        self.inode_mut(src.ino)?.ctime = Time::now();
        Ok(())
    }

    /// `rename` with `RENAME_WHITEOUT` (and optionally `RENAME_NOREPLACE`): moves
    /// `parent/name` to `newparent/newname` and leaves a whiteout at `parent/name`, a character
    /// device 0:0 owned by `uid`:`gid`, in the same flush batch (overlayfs needs this of an
    /// upper directory).
    #[allow(clippy::too_many_arguments)]
    pub fn rename_whiteout(
        &mut self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<()> {
        let flags = flags & !libc::RENAME_WHITEOUT;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return errno(libc::EINVAL);
        }
        // Everything the whiteout needs, before the rename changes anything: a failure or a
        // wait for the store after it would leave the rename half done.
        self.want_xattrs(parent)?;
        self.prepare_names(&[(parent, name), (newparent, newname)], Some(newparent))?;
        if self.inode(parent)?.has_xattrs {
            self.stored_acl(parent, acl::DEFAULT)?;
        }
        self.admit(2 * RECORD_COST)?;
        self.reserve_ino()?;
        self.rename(parent, name, newparent, newname, flags)?;
        // A whiteout's mode is 0 whatever the umask or a default ACL say (`WHITEOUT_MODE`).
        let attr = self.mknod_masked(parent, name, (libc::S_IFCHR, 0), 0, uid, gid)?;
        self.inode_mut(attr.ino)?.perm = 0;
        Ok(())
    }

    fn set_parent(&mut self, dir: u64, new_parent: u64) -> FsResult<()> {
        if let Body::Dir { parent, .. } = &mut self.inode_mut(dir)?.body {
            *parent = new_parent;
        }
        Ok(())
    }

    /// Up to `max` entries of `dir` after `offset` (0 = from the start), "." and ".." first.
    pub fn readdir(&mut self, dir: u64, offset: i64, max: usize) -> FsResult<Vec<DirEntry>> {
        let parent = self.dir_parent(dir)?;
        let (tail_page, alive) = match &self.inode(dir)?.body {
            Body::Dir { tail_page, .. } => {
                (*tail_page, self.nodes.get(&dir).map(|n| n.inode.nlink > 0))
            }
            _ => return errno(libc::ENOTDIR),
        };
        let mut out = Vec::new();
        let offset = offset.max(0) as u64;
        if offset < 1 {
            out.push(DirEntry {
                cookie: 1,
                ino: dir,
                kind: Kind::Dir,
                name: b".".to_vec(),
            });
        }
        if offset < 2 {
            out.push(DirEntry {
                cookie: 2,
                ino: parent,
                kind: Kind::Dir,
                name: b"..".to_vec(),
            });
        }
        if alive == Some(false) {
            return Ok(out);
        }
        // Entry (page, slot) has cookie 3 + page * PAGE_SLOTS + slot; slots never move.
        let first = offset.saturating_sub(2);
        let mut page = first / PAGE_SLOTS;
        while page <= tail_page && out.len() < max {
            self.load_page(dir, page)?;
            if let Some(p) = self.pages.get(&(dir, page)) {
                for e in &p.value.entries {
                    let cookie = 3 + page * PAGE_SLOTS + e.slot;
                    if cookie > offset {
                        out.push(DirEntry {
                            cookie: cookie as i64,
                            ino: e.ino,
                            kind: e.kind,
                            name: e.name.clone(),
                        });
                    }
                }
            }
            page += 1;
        }
        Ok(out)
    }

    /// Up to `max` entries of `dir` from `offset` with their attributes, counting a kernel
    /// reference for each but "." and ".." (readdirplus); the caller gives back with
    /// [`Fs::forget`] those of the entries it could not send. Everything is read before
    /// anything is counted, so it can run without waiting on the Store
    /// ([`Fs::without_fetch`]).
    pub fn readdir_plus(
        &mut self,
        dir: u64,
        offset: i64,
        max: usize,
    ) -> FsResult<Vec<(DirEntry, Attr)>> {
        let entries = self.readdir(dir, offset, max)?;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            match self.getattr(e.ino) {
                Ok(attr) => out.push((e, attr)),
                // Noted; the rest are noted too, to be fetched in one go.
                Err(FsError::WouldWait) => {}
                Err(err) => return Err(err),
            }
        }
        if self.no_fetch && !self.wanted.is_empty() {
            return Err(FsError::WouldWait);
        }
        for (e, _) in &out {
            if e.name != b"." && e.name != b".." {
                self.add_lookup(e.ino)?;
            }
        }
        Ok(out)
    }

    /// Counts a kernel reference taken by readdirplus.
    pub fn add_lookup(&mut self, ino: u64) -> FsResult<()> {
        self.node(ino)?.lookups += 1;
        Ok(())
    }

    // ---- files ----

    /// Opens `ino`; returns a handle.
    pub fn open_file(&mut self, ino: u64, flags: i32) -> FsResult<u64> {
        let node = self.node(ino)?;
        node.opens += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(
            fh,
            Handle {
                ino,
                append: flags & libc::O_APPEND != 0,
                writes: flags & libc::O_ACCMODE != libc::O_RDONLY,
                next_read: 0,
            },
        );
        Ok(fh)
    }

    /// Closes a handle.
    pub fn release(&mut self, ino: u64, fh: u64) -> FsResult<()> {
        self.handles.remove(&fh);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.opens = n.opens.saturating_sub(1);
        }
        self.maybe_free(ino);
        Ok(())
    }

    /// Writes the file's dirty blocks to the Store (close).
    pub fn flush_file(&mut self, ino: u64) -> FsResult<()> {
        self.cache.flush(Some(ino))?;
        Ok(())
    }

    fn mark_block(&mut self, ino: u64, index: u64) -> FsResult<()> {
        let chunk_no = index / CHUNK_BLOCKS;
        let chunk = self.chunk_mut(ino, chunk_no)?;
        if chunk.set(index % CHUNK_BLOCKS) {
            if let Body::File { chunks, blocks } = &mut self.inode_mut(ino)?.body {
                chunks.insert(chunk_no);
                *blocks += 1;
            }
        }
        Ok(())
    }

    /// True if block `index` of file `ino` is stored (or cached to be); false for a hole.
    fn block_mapped(&mut self, ino: u64, index: u64) -> FsResult<bool> {
        let chunk_no = index / CHUNK_BLOCKS;
        let listed = match &self.inode(ino)?.body {
            Body::File { chunks, .. } => chunks.contains(&chunk_no),
            _ => false,
        };
        if !listed && !self.chunks.contains_key(&(ino, chunk_no)) {
            return Ok(false);
        }
        self.load_chunk(ino, chunk_no)?;
        Ok(self.chunks[&(ino, chunk_no)]
            .value
            .get(index % CHUNK_BLOCKS))
    }

    fn load_chunk(&mut self, ino: u64, chunk_no: u64) -> FsResult<()> {
        if !self.chunks.contains_key(&(ino, chunk_no)) {
            // The inode lists every chunk that has a record: an unlisted one is empty, and
            // writing into new space must not wait on the store.
            let listed = match &self.inode(ino)?.body {
                Body::File { chunks, .. } => chunks.contains(&chunk_no),
                _ => true,
            };
            let stored = if listed {
                self.stored(NS_BMAP, &pair_key(ino, chunk_no), ino)?
            } else {
                None
            };
            let c = match stored {
                Some(v) => decode::<Chunk>(&v, &format!("block map {ino}/{chunk_no}"))?,
                None => Chunk::default(),
            };
            self.chunks.insert(
                (ino, chunk_no),
                Cached {
                    value: c,
                    dirty: false,
                },
            );
        }
        Ok(())
    }

    fn chunk_mut(&mut self, ino: u64, chunk_no: u64) -> FsResult<&mut Chunk> {
        self.load_chunk(ino, chunk_no)?;
        self.mark_meta();
        let c = self
            .chunks
            .get_mut(&(ino, chunk_no))
            .ok_or(FsError::Errno(libc::EIO))?;
        c.dirty = true;
        Ok(&mut c.value)
    }

    fn file_chunks(&mut self, ino: u64) -> FsResult<BTreeSet<u64>> {
        match &self.inode(ino)?.body {
            Body::File { chunks, .. } => Ok(chunks.clone()),
            Body::Dir { .. } => errno(libc::EISDIR),
            _ => errno(libc::EINVAL),
        }
    }

    /// Admits a request that adds about `adding` bytes to the store: `ENOSPC` if it would eat
    /// into the reserve (see [`crate::space`]).
    fn admit(&mut self, adding: u64) -> FsResult<()> {
        let cache = &self.cache;
        self.reserve.admit(adding, || cache.dirty_bytes())
    }

    /// Writes `data` at `offset`; returns the bytes written.
    pub fn write(&mut self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.prepare_write(ino, fh, offset, data.len() as u64)?;
        let append = self.handles.get(&fh).is_some_and(|h| h.append);
        let inode = self.inode(ino)?;
        if inode.kind != Kind::File {
            return errno(libc::EINVAL);
        }
        let offset = if append { inode.size } else { offset };
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::Errno(libc::EFBIG))?;
        if end > MAX_FILE_SIZE {
            return errno(libc::EFBIG);
        }
        self.admit(data.len() as u64)?;
        self.data_changed(ino);
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = pos / self.bs;
            let within = (pos % self.bs) as usize;
            let n = rest.len().min(self.bs as usize - within);
            let id = BlockId { inode: ino, index };
            if self.block_mapped(ino, index)? {
                self.cache.write(id, within, &rest[..n])?;
            } else {
                self.cache.write_hole(id, within, &rest[..n])?;
            }
            self.mark_block(ino, index)?;
            rest = &rest[n..];
            pos += n as u64;
        }
        let now = Time::now();
        let kernel_times = self.kernel_writeback;
        let i = self.inode_mut(ino)?;
        i.size = i.size.max(end);
        // With the writeback cache the kernel owns a file's mtime/ctime: it stamps them on
        // write and sends them (SETATTR) when they changed. A stamp here would differ from what
        // it shows whenever it found them current (created in the same clock tick).
        if !kernel_times {
            i.mtime = now;
            i.ctime = now;
        }
        Ok(data.len() as u32)
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&mut self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let inode = self.inode(ino)?;
        if inode.kind == Kind::Dir {
            return errno(libc::EISDIR);
        }
        let file_size = inode.size;
        if offset >= file_size {
            return Ok(Vec::new());
        }
        let end = file_size.min(offset + u64::from(size));
        // Filled by appending: only holes and short blocks cost a zero fill.
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let index = pos / self.bs;
            let within = (pos % self.bs) as usize;
            let n = ((end - pos) as usize).min(self.bs as usize - within);
            let mut avail = 0;
            if let Some(block) = self.cache.read(BlockId { inode: ino, index })? {
                // A short block reads as zeros past its end.
                avail = block.len().saturating_sub(within).min(n);
                if avail > 0 {
                    out.extend_from_slice(&block[within..within + avail]);
                }
            }
            out.resize(out.len() + (n - avail), 0);
            pos += n as u64;
        }
        self.note_read(ino, fh, offset, end);
        Ok(out)
    }

    /// Starts a read of up to `size` bytes at `offset` without waiting on the Store: the
    /// answer when every block it covers is cached (or a hole), else a [`ReadPlan`] naming the
    /// blocks to fetch. The fetch runs without the filesystem lock; [`Fs::finish_read`] then
    /// completes the read. Same results as [`Fs::read`].
    pub fn plan_read(&mut self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<ReadStart> {
        let inode = self.inode(ino)?;
        if inode.kind == Kind::Dir {
            return errno(libc::EISDIR);
        }
        let file_size = inode.size;
        if offset >= file_size {
            return Ok(ReadStart::Done(ReadData::new()));
        }
        let end = file_size.min(offset + u64::from(size));
        let mut pieces = Vec::new();
        let mut fetches = 0;
        let mut pos = offset;
        while pos < end {
            let index = pos / self.bs;
            let within = (pos % self.bs) as usize;
            let len = ((end - pos) as usize).min(self.bs as usize - within);
            let source = match self.cache.cached(BlockId { inode: ino, index }) {
                Some(b) => Source::Cached(b),
                None if self.maybe_stored(ino, index)? => {
                    fetches += 1;
                    Source::Fetch
                }
                None => Source::Hole,
            };
            pieces.push(Piece {
                index,
                within,
                len,
                source,
            });
            pos += len as u64;
        }
        self.note_read(ino, fh, offset, end);
        let plan = ReadPlan {
            ino,
            gen: self.node(ino)?.data_gen,
            pieces,
        };
        if fetches == 0 {
            return Ok(ReadStart::Done(plan.assemble(&[])));
        }
        for _ in 0..fetches {
            self.cache.note_miss();
        }
        Ok(ReadStart::Fetch(plan))
    }

    /// Completes a planned read with `fetched`, the store's answers for
    /// [`ReadPlan::missing`] in order. `None` if the file's data changed since the plan (the
    /// fetched blocks may be stale): nothing is cached then and the caller plans again.
    pub fn finish_read(
        &mut self,
        plan: &ReadPlan,
        fetched: &[Option<Bytes>],
    ) -> FsResult<Option<ReadData>> {
        if self.node(plan.ino)?.data_gen != plan.gen {
            return Ok(None);
        }
        for (id, data) in plan.missing().zip(fetched) {
            if let Some(data) = data {
                self.cache.install(id, data.clone())?;
            }
        }
        Ok(Some(plan.assemble(fetched)))
    }

    /// False only if block `index` of `ino` is certainly a hole, judged without asking the
    /// store: the block maps already in memory and the inode's list of chunks.
    fn maybe_stored(&mut self, ino: u64, index: u64) -> FsResult<bool> {
        let chunk_no = index / CHUNK_BLOCKS;
        if let Some(c) = self.chunks.get(&(ino, chunk_no)) {
            return Ok(c.value.get(index % CHUNK_BLOCKS));
        }
        Ok(match &self.inode(ino)?.body {
            Body::File { chunks, .. } => chunks.contains(&chunk_no),
            _ => true,
        })
    }

    /// Follows a handle's reads: a sequential reader gets the next blocks read ahead.
    fn note_read(&mut self, ino: u64, fh: u64, offset: u64, end: u64) {
        if let Some(h) = self.handles.get_mut(&fh) {
            if h.next_read == offset && offset > 0 {
                let next = end.div_ceil(self.bs);
                self.cache.read_ahead(ino, next, READ_AHEAD_BLOCKS);
            }
            h.next_read = end;
        }
    }

    /// Records a change of `ino`'s data or size: reads fetching its blocks meanwhile start over.
    fn data_changed(&mut self, ino: u64) {
        self.data_seq += 1;
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.data_gen = self.data_seq;
        }
    }

    // ---- operations that wait for the Store without the lock ----

    /// Records a Store write or delete of a metadata record of `owner`: fetches of its records
    /// under way may have read the old value.
    fn meta_written(&mut self, owner: u64) {
        self.meta_seq += 1;
        self.meta_gens[owner as usize % META_GENS] = self.meta_seq;
    }

    /// The current generation of what `need` belongs to; `None` if it cannot be judged (the
    /// file is no longer in memory), so a fetched answer is not used.
    fn generation_of(&self, need: &Need) -> Option<u64> {
        match need {
            Need::Record { owner, .. } => Some(self.meta_gens[*owner as usize % META_GENS]),
            Need::Block(id) => self.nodes.get(&id.inode).map(|n| n.data_gen),
        }
    }

    /// The stored value of metadata record `key` of namespace `ns` (index in
    /// [`Namespaces::all`]), which belongs to `owner`: fetched earlier with the lock released
    /// if still current, else read from the Store, unless the operation must not wait.
    fn stored(&mut self, ns: u8, key: &[u8], owner: u64) -> FsResult<Option<Vec<u8>>> {
        if self.no_fetch || !self.prefetched.is_empty() {
            let need = Need::Record {
                ns,
                key: key.to_vec(),
                owner,
            };
            let gen = self.meta_gens[owner as usize % META_GENS];
            if let Some((_, v)) = self.prefetched.get(&need).filter(|(g, _)| *g == gen) {
                return Ok(v.clone());
            }
            if self.no_fetch && self.store.get_may_wait(self.ns.all()[usize::from(ns)], key) {
                self.wanted.push(Missing { need, gen });
                return Err(FsError::WouldWait);
            }
        }
        // Read in place: fetching is allowed, or the store answers from memory or local disk
        // (a hop to a worker would cost more than the read).
        let name = self.ns.all()[usize::from(ns)];
        Ok(self.store.get(name, key)?.map(|e| e.value))
    }

    /// Runs `op` without waiting on the Store, with `fetched`, answers to what an earlier run
    /// wanted (those whose owner changed since are dropped). `Err` lists what it still needs,
    /// to fetch with the lock released before running it again: `op` changed nothing then.
    ///
    /// Every metadata read of an operation fails with [`FsError::WouldWait`] at the first
    /// record not in memory, so an operation run this way must not change anything before its
    /// last record read: read-only ones (lookup, getattr, readdir, open, xattrs) are built
    /// so; the others first note what they need (`prepare_*`) and then call
    /// [`Fs::go_ahead`], after which they fetch whatever the preparation missed under the
    /// lock, as without this mode.
    pub fn without_fetch<T>(
        &mut self,
        fetched: Vec<(Missing, Option<Bytes>)>,
        op: impl FnOnce(&mut Fs) -> FsResult<T>,
    ) -> Result<FsResult<T>, Vec<Missing>> {
        for (m, value) in fetched {
            if self.generation_of(&m.need) != Some(m.gen) {
                continue;
            }
            match m.need {
                Need::Record { .. } => {
                    self.prefetched
                        .insert(m.need, (m.gen, value.map(|b| b.to_vec())));
                }
                Need::Block(id) => {
                    if let Some(b) = value {
                        if let Err(e) = self.cache.install(id, b) {
                            self.prefetched.clear();
                            return Ok(Err(e.into()));
                        }
                    }
                }
            }
        }
        self.no_fetch = true;
        self.wanted.clear();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(self)));
        self.no_fetch = false;
        self.prefetched.clear();
        let mut wanted = std::mem::take(&mut self.wanted);
        match r {
            Ok(Err(FsError::WouldWait)) => {
                let mut seen = HashSet::new();
                wanted.retain(|m| seen.insert(m.need.clone()));
                if wanted.is_empty() {
                    tracing::error!("an operation wanted nothing from the store yet waited");
                    return Ok(Err(FsError::Errno(libc::EIO)));
                }
                Err(wanted)
            }
            Ok(r) => Ok(r),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The end of an operation's preparation: if it noted blocks to fetch, it stops here
    /// (changing nothing); otherwise it goes on and may change things, fetching under the
    /// lock whatever its preparation did not foresee.
    pub fn go_ahead(&mut self) -> FsResult<()> {
        if self.no_fetch && !self.wanted.is_empty() {
            return Err(FsError::WouldWait);
        }
        self.no_fetch = false;
        Ok(())
    }

    /// While preparing without fetching: notes block `index` of `ino` as needed if it is
    /// stored and not cached.
    fn want_block(&mut self, ino: u64, index: u64) -> FsResult<()> {
        if !self.no_fetch || !self.block_mapped(ino, index)? {
            return Ok(());
        }
        let id = BlockId { inode: ino, index };
        if self.cache.cached(id).is_none()
            && self
                .store
                .get_may_wait(&self.ns.block, &pair_key(ino, index))
        {
            let gen = self.node(ino)?.data_gen;
            self.wanted.push(Missing {
                need: Need::Block(id),
                gen,
            });
        }
        Ok(())
    }

    /// Loads the block maps of the stored chunks of `ino` that blocks `first..=last` lie in.
    fn want_chunks(&mut self, ino: u64, first: u64, last: u64) -> FsResult<()> {
        let listed = match &self.inode(ino)?.body {
            Body::File { chunks, .. } => chunks
                .range(first / CHUNK_BLOCKS..=last / CHUNK_BLOCKS)
                .copied()
                .collect::<Vec<u64>>(),
            _ => Vec::new(),
        };
        for c in listed {
            self.load_chunk(ino, c)?;
        }
        Ok(())
    }

    /// Notes what adding or removing `name` in `dir` reads: the directory, the name, the inode
    /// it names and that name's listing page, and the directory's last page (where a new name
    /// goes).
    fn want_name(&mut self, dir: u64, name: &[u8]) -> FsResult<()> {
        let tail = match &self.inode(dir)?.body {
            Body::Dir { tail_page, .. } => *tail_page,
            _ => return Ok(()),
        };
        self.load_page(dir, tail)?;
        if let Some(d) = self.get_dirent(dir, name)? {
            self.node(d.ino)?;
            self.load_page(dir, d.page)?;
        }
        Ok(())
    }

    /// Prepares a change of the names `names` (directory, name); with `below`, also the
    /// directories from there up to the root (a rename checks that a directory does not move
    /// below itself).
    fn prepare_names(&mut self, names: &[(u64, &[u8])], below: Option<u64>) -> FsResult<()> {
        if self.no_fetch {
            for (dir, name) in names {
                self.want_name(*dir, name)?;
            }
            if let Some(mut dir) = below {
                // Bounded: a damaged parent chain must not loop here.
                for _ in 0..4096 {
                    if dir == ROOT_INO {
                        break;
                    }
                    dir = match self.dir_parent(dir) {
                        Ok(p) => p,
                        Err(FsError::WouldWait) => return Err(FsError::WouldWait),
                        Err(_) => break,
                    };
                }
            }
        }
        self.go_ahead()
    }

    /// Notes what a write of `len` bytes at `offset` reads: the block maps it marks, and the
    /// stored blocks it changes only part of.
    fn want_for_write(&mut self, ino: u64, fh: u64, offset: u64, len: u64) -> FsResult<()> {
        let append = self.handles.get(&fh).is_some_and(|h| h.append);
        let inode = self.inode(ino)?;
        if inode.kind != Kind::File || len == 0 {
            return Ok(());
        }
        let offset = if append { inode.size } else { offset };
        let Some(end) = offset.checked_add(len).filter(|&e| e <= MAX_FILE_SIZE) else {
            return Ok(());
        };
        self.want_range(ino, offset, end)
    }

    /// Notes the block maps of the non-empty range `[offset, end)` and the blocks at its edges
    /// that it covers only in part (those a write or a zeroing must read first).
    fn want_range(&mut self, ino: u64, offset: u64, end: u64) -> FsResult<()> {
        let (first, last) = (offset / self.bs, (end - 1) / self.bs);
        self.want_chunks(ino, first, last)?;
        if offset % self.bs != 0 || end < (first + 1) * self.bs {
            self.want_block(ino, first)?;
        }
        if last != first && end % self.bs != 0 {
            self.want_block(ino, last)?;
        }
        Ok(())
    }

    fn prepare_write(&mut self, ino: u64, fh: u64, offset: u64, len: u64) -> FsResult<()> {
        if self.no_fetch {
            self.want_for_write(ino, fh, offset, len)?;
        }
        self.go_ahead()
    }

    /// A truncate reads the block maps past the new end and the block it cuts in the middle.
    fn prepare_setattr(&mut self, ino: u64, set: &SetAttr) -> FsResult<()> {
        if self.no_fetch {
            let inode = self.inode(ino)?;
            match set.size {
                Some(size) if inode.kind == Kind::File && size < inode.size => {
                    let last = inode.size.div_ceil(self.bs);
                    self.want_chunks(ino, size / self.bs, last)?;
                    if size % self.bs != 0 {
                        self.want_block(ino, size / self.bs)?;
                    }
                }
                _ => {}
            }
            if set.mode.is_some() {
                self.want_xattrs(ino)?;
            }
        }
        self.go_ahead()
    }

    /// Punching or zeroing reads the block maps of the range and the blocks it zeroes only
    /// part of.
    fn prepare_fallocate(&mut self, ino: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let zeroes = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        if self.no_fetch && zeroes {
            let inode = self.inode(ino)?;
            let zero_end = offset.saturating_add(len).min(inode.size);
            if inode.kind == Kind::File && offset < zero_end {
                self.want_range(ino, offset, zero_end)?;
            }
        }
        self.go_ahead()
    }

    /// A copy reads the source's stored blocks in the range and what the write of them reads.
    #[allow(clippy::too_many_arguments)]
    fn prepare_copy(
        &mut self,
        ino_in: u64,
        off_in: u64,
        ino_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<()> {
        if self.no_fetch {
            let inode = self.inode(ino_in)?;
            let n = len.min(inode.size.saturating_sub(off_in));
            if inode.kind == Kind::File && n > 0 {
                let (first, last) = (off_in / self.bs, (off_in + n - 1) / self.bs);
                self.want_chunks(ino_in, first, last)?;
                for index in first..=last {
                    self.want_block(ino_in, index)?;
                }
                self.want_for_write(ino_out, fh_out, off_out, n)?;
            }
        }
        self.go_ahead()
    }

    /// Copies up to `len` bytes (at most 16 MiB per call) from `ino_in` at `off_in` to `ino_out`
    /// at `off_out` inside the filesystem, without the data crossing into user space; returns
    /// the bytes copied (0 at the end of the source).
    #[allow(clippy::too_many_arguments)]
    pub fn copy_file_range(
        &mut self,
        ino_in: u64,
        fh_in: u64,
        off_in: u64,
        ino_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<u32> {
        const STEP: u64 = 1 << 20;
        let len = len.min(16 << 20);
        self.prepare_copy(ino_in, off_in, ino_out, fh_out, off_out, len)?;
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(STEP) as u32;
            let data = self.read(ino_in, fh_in, off_in + done, want)?;
            if data.is_empty() {
                break;
            }
            self.write(ino_out, fh_out, off_out + done, &data)?;
            done += data.len() as u64;
        }
        Ok(done as u32)
    }

    fn truncate(&mut self, ino: u64, new_size: u64) -> FsResult<()> {
        if new_size > MAX_FILE_SIZE {
            return errno(libc::EFBIG);
        }
        let chunks = self.file_chunks(ino)?;
        self.data_changed(ino);
        let old = self.inode(ino)?.size;
        if new_size < old {
            let keep_blocks = new_size.div_ceil(self.bs);
            let first_chunk = keep_blocks / CHUNK_BLOCKS;
            let mut freed = 0u64;
            let mut emptied = Vec::new();
            let mut gone = Vec::new();
            for &c in chunks.range(first_chunk..) {
                self.load_chunk(ino, c)?;
                let doomed: Vec<u64> = self.chunks[&(ino, c)]
                    .value
                    .iter()
                    .map(|i| c * CHUNK_BLOCKS + i)
                    .filter(|&i| i >= keep_blocks)
                    .collect();
                gone.extend(doomed.iter().copied());
                let chunk = self.chunk_mut(ino, c)?;
                for index in doomed {
                    if chunk.clear(index % CHUNK_BLOCKS) {
                        freed += 1;
                    }
                }
                if chunk.is_empty() {
                    emptied.push(c);
                }
            }
            let keep = (new_size % self.bs != 0).then_some((new_size % self.bs) as usize);
            self.cache.discard(ino, keep_blocks, keep)?;
            if let Body::File { chunks, blocks } = &mut self.inode_mut(ino)?.body {
                *blocks -= freed.min(*blocks);
                for c in emptied {
                    chunks.remove(&c);
                }
            }
            let now = Time::now();
            let i = self.inode_mut(ino)?;
            i.size = new_size;
            i.mtime = now;
            i.ctime = now;
            self.delete_blocks(ino, &gone)?;
            return Ok(());
        }
        let now = Time::now();
        let i = self.inode_mut(ino)?;
        i.size = new_size;
        i.mtime = now;
        i.ctime = now;
        Ok(())
    }

    /// Deletes blocks the in-memory block map no longer marks. The map without them is
    /// committed first, so a crash in between leaves unmapped garbage (swept by the next mount)
    /// rather than a map marking blocks that are gone.
    fn delete_blocks(&mut self, ino: u64, indices: &[u64]) -> FsResult<()> {
        if indices.is_empty() {
            return Ok(());
        }
        self.flush_all()?;
        for &index in indices {
            ignore_missing(self.store.delete(&self.ns.block, &pair_key(ino, index)))?;
        }
        Ok(())
    }

    /// Changes attributes.
    pub fn setattr(&mut self, ino: u64, set: SetAttr) -> FsResult<Attr> {
        self.prepare_setattr(ino, &set)?;
        // Read before anything changes: a chmod rewrites the access ACL.
        let access = match set.mode {
            Some(_) if self.inode(ino)?.has_xattrs => self.stored_acl(ino, acl::ACCESS)?,
            _ => None,
        };
        if let Some(size) = set.size {
            let kind = self.inode(ino)?.kind;
            match kind {
                Kind::File => self.truncate(ino, size)?,
                Kind::Dir => return errno(libc::EISDIR),
                _ => return errno(libc::EINVAL),
            }
        }
        let now = Time::now();
        let i = self.inode_mut(ino)?;
        if let Some(mode) = set.mode {
            i.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = set.uid {
            i.uid = uid;
        }
        if let Some(gid) = set.gid {
            i.gid = gid;
        }
        if let Some(t) = set.atime {
            i.atime = t.unwrap_or(now);
        }
        if let Some(t) = set.mtime {
            i.mtime = t.unwrap_or(now);
        }
        i.ctime = set.ctime.unwrap_or(now);
        if let (Some(mut a), Some(mode)) = (access, set.mode) {
            acl::chmod(&mut a, mode);
            self.put_xattr(ino, acl::ACCESS, Some(a.encode()))?;
        }
        self.getattr(ino)
    }

    /// Clears what a change of a file's data, size or owner must clear, as the kernel's VFS
    /// does for a local filesystem: `security.capability` always, and with `suid_sgid` the
    /// setuid bit and the setgid bit of a group-executable file (a setgid bit without group
    /// execute marks mandatory locking, which is kept). With `FUSE_HANDLE_KILLPRIV_V2` the
    /// kernel leaves this to the filesystem, and in exchange stops asking for
    /// `security.capability` before every write. True if the mode changed: the kernel's
    /// cached attributes are then stale.
    pub fn kill_privileges(&mut self, ino: u64, suid_sgid: bool) -> FsResult<bool> {
        let (kind, perm, has_xattrs) = {
            let i = self.inode(ino)?;
            (i.kind, i.perm, i.has_xattrs)
        };
        if kind == Kind::Dir {
            return Ok(false);
        }
        let killed = if suid_sgid {
            without_suid_sgid(perm)
        } else {
            perm
        };
        if killed != perm {
            let i = self.inode_mut(ino)?;
            i.perm = killed;
            i.ctime = Time::now();
        }
        if has_xattrs || self.xattrs.contains_key(&ino) {
            match self.removexattr(ino, CAPABILITY_XATTR) {
                Ok(()) | Err(FsError::Errno(libc::ENODATA)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(killed != perm)
    }

    /// Clears the setgid bit, as setting an access ACL does for a caller outside the file's
    /// group without `CAP_FSETID` (the FUSE layer judges the caller).
    pub fn drop_setgid(&mut self, ino: u64) -> FsResult<()> {
        let i = self.inode_mut(ino)?;
        if i.perm & libc::S_ISGID as u16 != 0 {
            i.perm &= !(libc::S_ISGID as u16);
            i.ctime = Time::now();
        }
        Ok(())
    }

    /// fallocate: mode 0 and `FALLOC_FL_KEEP_SIZE` extend the size; `PUNCH_HOLE` (with
    /// `KEEP_SIZE`) and `ZERO_RANGE` release whole blocks and zero partial ones.
    pub fn fallocate(&mut self, ino: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        self.prepare_fallocate(ino, offset, len, mode)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if mode
            & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE)
            != 0
        {
            return errno(libc::EOPNOTSUPP);
        }
        if punch && !keep_size {
            return errno(libc::EINVAL);
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::Errno(libc::EFBIG))?;
        if !punch && !zero {
            self.admit(len)?;
        }
        self.file_chunks(ino)?;
        self.data_changed(ino);
        let size = self.inode(ino)?.size;
        let mut gone = Vec::new();
        if punch || zero {
            let zero_end = end.min(size);
            let mut pos = offset;
            while pos < zero_end {
                let index = pos / self.bs;
                let within = pos % self.bs;
                let n = (zero_end - pos).min(self.bs - within);
                let id = BlockId { inode: ino, index };
                let exists = {
                    self.load_chunk(ino, index / CHUNK_BLOCKS)?;
                    self.chunks[&(ino, index / CHUNK_BLOCKS)]
                        .value
                        .get(index % CHUNK_BLOCKS)
                };
                if exists {
                    if n == self.bs {
                        gone.push(index);
                        self.cache.forget(id);
                        let chunk = self.chunk_mut(ino, index / CHUNK_BLOCKS)?;
                        if chunk.clear(index % CHUNK_BLOCKS) {
                            if let Body::File { blocks, .. } = &mut self.inode_mut(ino)?.body {
                                *blocks = blocks.saturating_sub(1);
                            }
                        }
                    } else {
                        let cur = self.cache.read(id)?.unwrap_or_default();
                        let stop = ((within + n) as usize).min(cur.len());
                        if stop > within as usize {
                            let zeros = vec![0u8; stop - within as usize];
                            self.cache.write(id, within as usize, &zeros)?;
                        }
                    }
                }
                pos += n;
            }
        }
        let now = Time::now();
        let i = self.inode_mut(ino)?;
        if !keep_size && end > i.size {
            i.size = end;
        }
        i.mtime = now;
        i.ctime = now;
        self.delete_blocks(ino, &gone)
    }

    /// `SEEK_DATA` / `SEEK_HOLE` from `offset`.
    pub fn lseek(&mut self, ino: u64, offset: u64, whence: i32) -> FsResult<u64> {
        if self.kernel_writeback && self.handles.values().any(|h| h.ino == ino && h.writes) {
            // The kernel may hold written pages this map has not seen yet (they are written
            // back at the latest when the writer closes): answering from the map could call
            // fresh data a hole, so every byte counts as data until then. Past this size
            // the kernel's own may be larger, so no ENXIO either, except where no file
            // reaches: a loop from data to hole to data must end.
            return match whence {
                _ if offset >= MAX_FILE_SIZE => errno(libc::ENXIO),
                libc::SEEK_DATA => Ok(offset),
                libc::SEEK_HOLE => Ok(MAX_FILE_SIZE),
                _ => errno(libc::EINVAL),
            };
        }
        let chunks = self.file_chunks(ino)?;
        let size = self.inode(ino)?.size;
        if offset >= size {
            return errno(libc::ENXIO);
        }
        let start = offset / self.bs;
        if self.no_fetch {
            self.want_seek_chunks(ino, &chunks, start / CHUNK_BLOCKS)?;
        }
        let last = (size - 1) / self.bs;
        // Chunk by chunk, and within a block map a word of 64 blocks at a time: a seek over a
        // sparse terabyte walked every block index of each map it touched.
        let mut index = start;
        match whence {
            libc::SEEK_DATA => {
                while index <= last {
                    let c = index / CHUNK_BLOCKS;
                    match chunks.range(c..).next() {
                        None => break,
                        Some(&n) if n > c => {
                            index = n * CHUNK_BLOCKS;
                            continue;
                        }
                        Some(_) => {}
                    }
                    self.load_chunk(ino, c)?;
                    match self.chunks[&(ino, c)].value.next_set(index % CHUNK_BLOCKS) {
                        Some(i) if c * CHUNK_BLOCKS + i <= last => {
                            return Ok(offset.max((c * CHUNK_BLOCKS + i) * self.bs));
                        }
                        Some(_) => break,
                        None => index = (c + 1) * CHUNK_BLOCKS,
                    }
                }
                errno(libc::ENXIO)
            }
            libc::SEEK_HOLE => {
                while index <= last {
                    let c = index / CHUNK_BLOCKS;
                    let hole = if chunks.contains(&c) {
                        self.load_chunk(ino, c)?;
                        c * CHUNK_BLOCKS
                            + self.chunks[&(ino, c)]
                                .value
                                .next_clear(index % CHUNK_BLOCKS)
                    } else {
                        index
                    };
                    if hole < (c + 1) * CHUNK_BLOCKS {
                        return Ok(offset.max(hole * self.bs).min(size));
                    }
                    index = (c + 1) * CHUNK_BLOCKS;
                }
                Ok(size)
            }
            _ => errno(libc::EINVAL),
        }
    }

    /// Without fetching: notes at once the block maps not in memory that a seek from chunk
    /// `from` may walk, up to [`SEEK_CHUNKS_AHEAD`] of them (a seek stops at the first data or
    /// hole, so fetching every map of a huge file would be waste).
    fn want_seek_chunks(&mut self, ino: u64, listed: &BTreeSet<u64>, from: u64) -> FsResult<()> {
        let (mut loaded, mut noted) = (0, 0);
        for &c in listed.range(from..) {
            if loaded == SEEK_CHUNKS_AHEAD {
                break;
            }
            if self.chunks.contains_key(&(ino, c)) {
                continue;
            }
            loaded += 1;
            match self.load_chunk(ino, c) {
                Ok(()) => {}
                Err(FsError::WouldWait) => noted += 1,
                Err(e) => return Err(e),
            }
        }
        if noted > 0 {
            return Err(FsError::WouldWait);
        }
        Ok(())
    }

    // ---- xattrs ----

    fn load_xattrs(&mut self, ino: u64) -> FsResult<&mut Xattrs> {
        if !self.xattrs.contains_key(&ino) {
            let has = self.inode(ino)?.has_xattrs;
            let x = if has {
                match self.stored(NS_XATTR, &ino_key(ino), ino)? {
                    Some(v) => decode::<Xattrs>(&v, &format!("xattrs of {ino}"))?,
                    None => Xattrs::default(),
                }
            } else {
                Xattrs::default()
            };
            self.xattrs.insert(
                ino,
                Cached {
                    value: x,
                    dirty: false,
                },
            );
        }
        self.xattrs
            .get_mut(&ino)
            .map(|c| &mut c.value)
            .ok_or(FsError::Errno(libc::EIO))
    }

    /// Marks the xattrs of `ino` for the next metadata batch and keeps `has_xattrs` in step.
    fn xattrs_changed(&mut self, ino: u64) -> FsResult<()> {
        let has = match self.xattrs.get_mut(&ino) {
            Some(c) => {
                c.dirty = true;
                !c.value.pairs.is_empty()
            }
            None => return errno(libc::EIO),
        };
        let i = self.inode_mut(ino)?;
        i.has_xattrs = has;
        i.ctime = Time::now();
        Ok(())
    }

    fn check_xattr_name(name: &[u8]) -> FsResult<()> {
        if name.len() > XATTR_NAME_MAX || name.is_empty() {
            return errno(libc::ERANGE);
        }
        // `system.` holds only the POSIX ACLs (handled before this), as on ext4: any other
        // name there is not supported rather than kept as an ordinary xattr.
        let ok = [&b"user."[..], b"trusted.", b"security."]
            .iter()
            .any(|p| name.starts_with(p));
        if !ok {
            return errno(libc::EOPNOTSUPP);
        }
        Ok(())
    }

    /// Sets an xattr (`XATTR_CREATE` / `XATTR_REPLACE` in `flags`). Everything it reads
    /// (the inode and its xattr record) is read by `load_xattrs` before it changes anything,
    /// so it can stop for a fetch there (like `removexattr`).
    ///
    /// The POSIX ACL names are checked and kept in step with the mode ([`crate::acl`]); their
    /// flags are ignored, as the kernel ignores them.
    pub fn setxattr(&mut self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        if name == acl::ACCESS || name == acl::DEFAULT {
            return self.set_acl(ino, name, Acl::decode(value)?);
        }
        Self::check_xattr_name(name)?;
        if value.len() > XATTR_VALUE_MAX {
            return errno(libc::E2BIG);
        }
        let mut x = self.load_xattrs(ino)?.clone();
        let pos = x.pairs.iter().position(|(n, _)| n == name);
        match (
            pos,
            flags & libc::XATTR_CREATE != 0,
            flags & libc::XATTR_REPLACE != 0,
        ) {
            (Some(_), true, _) => return errno(libc::EEXIST),
            (None, _, true) => return errno(libc::ENODATA),
            (Some(p), _, _) => x.pairs[p].1 = value.to_vec(),
            (None, _, _) => {
                x.pairs.push((name.to_vec(), value.to_vec()));
                x.pairs.sort();
            }
        }
        // The record is written by the next flush; it must fit in one store value then.
        let len = encode(&x).len();
        if len > qsfs_core::MAX_VALUE_LEN {
            return errno(libc::ENOSPC);
        }
        self.admit(len as u64)?;
        *self.load_xattrs(ino)? = x;
        self.xattrs_changed(ino)
    }

    /// The value of an xattr.
    pub fn getxattr(&mut self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let x = self.load_xattrs(ino)?;
        match x.pairs.iter().find(|(n, _)| n == name) {
            Some((_, v)) => Ok(v.clone()),
            None => errno(libc::ENODATA),
        }
    }

    /// All xattr names, each followed by NUL. The kernel does not hide `trusted.` names from
    /// unprivileged callers of `listxattr` (it leaves that to the filesystem):
    /// [`hide_trusted`] does.
    pub fn listxattr(&mut self, ino: u64) -> FsResult<Vec<u8>> {
        let x = self.load_xattrs(ino)?;
        let mut out = Vec::new();
        for (n, _) in &x.pairs {
            out.extend_from_slice(n);
            out.push(0);
        }
        Ok(out)
    }

    /// Removes an xattr. Removing an ACL leaves the mode as it is, and removing one that is
    /// not there succeeds (as on ext4).
    pub fn removexattr(&mut self, ino: u64, name: &[u8]) -> FsResult<()> {
        if name == acl::ACCESS || name == acl::DEFAULT {
            return self.set_acl(ino, name, None);
        }
        let x = self.load_xattrs(ino)?;
        let before = x.pairs.len();
        x.pairs.retain(|(n, _)| n != name);
        if x.pairs.len() == before {
            return errno(libc::ENODATA);
        }
        self.xattrs_changed(ino)?;
        Ok(())
    }

    /// While preparing without fetching: notes the xattr record of `ino` if it has one that
    /// is not in memory.
    fn want_xattrs(&mut self, ino: u64) -> FsResult<()> {
        if self.no_fetch && self.inode(ino)?.has_xattrs {
            match self.load_xattrs(ino) {
                Ok(_) | Err(FsError::WouldWait) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The ACL stored under `name` (an ACL xattr) of `ino`.
    fn stored_acl(&mut self, ino: u64, name: &[u8]) -> FsResult<Option<Acl>> {
        let x = self.load_xattrs(ino)?;
        match x.pairs.iter().find(|(n, _)| n == name) {
            // Validated when set: one that does not parse now is damage, not a user error.
            Some((_, v)) => Acl::decode(v)
                .map_err(|_| FsError::corrupt(&format!("ACL of {ino}"), "does not parse")),
            None => Ok(None),
        }
    }

    /// Sets (`Some`) or removes (`None`) xattr `name` of `ino`, whose record is loaded.
    fn put_xattr(&mut self, ino: u64, name: &[u8], value: Option<Vec<u8>>) -> FsResult<()> {
        if !upsert_xattr(self.load_xattrs(ino)?, name, value) {
            return Ok(());
        }
        self.xattrs_changed(ino)
    }

    /// Sets or removes an access or default ACL; an access ACL moves the mode's rwx bits,
    /// and one the mode can say alone is not stored (`posix_acl_update_mode`).
    fn set_acl(&mut self, ino: u64, name: &[u8], acl: Option<Acl>) -> FsResult<()> {
        let (kind, perm) = {
            let i = self.inode(ino)?;
            (i.kind, i.perm)
        };
        if kind == Kind::Symlink {
            return errno(libc::EOPNOTSUPP);
        }
        let mut x = self.load_xattrs(ino)?.clone();
        let (new_perm, value) = match acl {
            None => (None, None),
            Some(_) if name == acl::DEFAULT && kind != Kind::Dir => return errno(libc::EACCES),
            Some(a) if name == acl::DEFAULT => (None, Some(a.encode())),
            Some(a) => {
                let (p, kept) = acl::update_mode(u32::from(perm), a);
                (Some(p as u16), kept.map(|a| a.encode()))
            }
        };
        let changed = upsert_xattr(&mut x, name, value);
        // The record is written by the next flush; it must fit in one store value then.
        if encode(&x).len() > qsfs_core::MAX_VALUE_LEN {
            return errno(libc::ENOSPC);
        }
        if let Some(p) = new_perm {
            let i = self.inode_mut(ino)?;
            i.perm = p;
            i.ctime = Time::now();
        }
        if changed {
            *self.load_xattrs(ino)? = x;
            self.xattrs_changed(ino)?;
        }
        Ok(())
    }

    // ---- space, durability ----

    /// Filesystem figures.
    pub fn statfs(&mut self) -> FsResult<StatFs> {
        let bs = self.bs;
        let inodes = self.store.namespace_info(&self.ns.inode)?.entries;
        let (total, free, avail) = match self.reserve.statfs(self.cache.dirty_bytes())? {
            Some(m) => (m.total, m.free, m.available),
            None => {
                let cap = match &self.cfg.capacity {
                    Capacity::Fixed(cap) => *cap,
                    _ => UNKNOWN_CAPACITY,
                };
                let mut used_bytes = 0u64;
                for n in self.ns.all() {
                    used_bytes =
                        used_bytes.saturating_add(self.store.namespace_info(n)?.data_bytes);
                }
                let free = cap.saturating_sub(used_bytes);
                (cap, free, free)
            }
        };
        let blocks = total / bs;
        let bfree = (free / bs).min(blocks);
        let bavail = (avail / bs).min(bfree);
        let ffree = bfree.max(1 << 20);
        Ok(StatFs {
            blocks,
            bfree,
            bavail,
            files: inodes.saturating_add(ffree),
            ffree,
            bsize: bs as u32,
            namelen: NAME_MAX as u32,
        })
    }

    /// Writes every dirty block to the Store, then every dirty record as one journaled batch
    /// (all or nothing, see [`crate::journal`]), then frees the space of inodes that are gone.
    /// Does not sync.
    pub fn flush_all(&mut self) -> FsResult<()> {
        self.cache.flush(None)?;
        let freeing: HashSet<u64> = self
            .free_queue
            .iter()
            .chain(&self.free_waiting)
            .copied()
            .collect();
        let mut ops: Vec<JournalOp> = Vec::new();
        let op = |ns: u8, key: &[u8], value: Option<Vec<u8>>| JournalOp {
            ns,
            key: key.to_vec(),
            value,
        };
        let dirty_chunks: Vec<(u64, u64)> = self
            .chunks
            .iter()
            .filter(|(k, c)| c.dirty && !freeing.contains(&k.0))
            .map(|(k, _)| *k)
            .collect();
        for key in &dirty_chunks {
            let c = &self.chunks[key].value;
            let v = (!c.is_empty()).then(|| encode(c));
            ops.push(op(NS_BMAP, &pair_key(key.0, key.1), v));
        }
        let dirty_inodes: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(i, n)| n.dirty && !freeing.contains(i))
            .map(|(i, _)| *i)
            .collect();
        for ino in &dirty_inodes {
            let bytes = encode(&self.nodes[ino].inode);
            ops.push(op(NS_INODE, &ino_key(*ino), Some(bytes)));
        }
        let dirty_xattrs: Vec<u64> = self
            .xattrs
            .iter()
            .filter(|(i, x)| x.dirty && !freeing.contains(i))
            .map(|(i, _)| *i)
            .collect();
        for ino in &dirty_xattrs {
            let x = &self.xattrs[ino].value;
            let v = (!x.pairs.is_empty()).then(|| encode(x));
            ops.push(op(NS_XATTR, &ino_key(*ino), v));
        }
        let dirty_pages: Vec<(u64, u64)> = self
            .pages
            .iter()
            .filter(|(_, p)| p.dirty)
            .map(|(k, _)| *k)
            .collect();
        for key in &dirty_pages {
            let p = &self.pages[key].value;
            let v = (!p.entries.is_empty()).then(|| encode(p));
            ops.push(op(NS_DIRPAGE, &pair_key(key.0, key.1), v));
        }
        let dirty_dirents: Vec<DirentKey> = self
            .dirents
            .iter()
            .filter(|(_, d)| d.dirty)
            .map(|(k, _)| k.clone())
            .collect();
        for (parent, name) in &dirty_dirents {
            let d = self.dirents[&(*parent, name.clone())].value;
            ops.push(op(
                NS_DIRENT,
                &dirent_key(*parent, name),
                d.map(|d| encode_dirent(name, &d)),
            ));
        }
        let unlinked: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(i, n)| n.inode.nlink == 0 && !self.orphans.contains(i))
            .map(|(i, _)| *i)
            .collect();
        for ino in &unlinked {
            ops.push(op(NS_ORPHAN, &ino_key(*ino), Some(vec![1])));
        }
        // An `O_TMPFILE` named after its orphan record was committed: the record goes in the
        // same commit as the name, or the next mount would reclaim a linked file.
        let named: Vec<u64> = self
            .orphans
            .iter()
            .filter(|i| self.nodes.get(i).is_some_and(|n| n.inode.nlink > 0))
            .copied()
            .collect();
        for ino in &named {
            ops.push(op(NS_ORPHAN, &ino_key(*ino), None));
        }
        // Before the commit: a commit failing half way may still have changed records.
        let owners = dirty_chunks
            .iter()
            .map(|k| k.0)
            .chain(dirty_inodes.iter().copied())
            .chain(dirty_xattrs.iter().copied())
            .chain(dirty_pages.iter().map(|k| k.0))
            .chain(dirty_dirents.iter().map(|k| k.0))
            .collect::<Vec<u64>>();
        for owner in owners {
            self.meta_written(owner);
        }
        journal::commit(&*self.store, &self.ns, &ops)?;
        for key in dirty_chunks {
            if let Some(c) = self.chunks.get_mut(&key) {
                c.dirty = false;
            }
        }
        for ino in dirty_inodes {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.dirty = false;
            }
        }
        for ino in dirty_xattrs {
            if let Some(x) = self.xattrs.get_mut(&ino) {
                x.dirty = false;
            }
        }
        for key in dirty_pages {
            if let Some(p) = self.pages.get_mut(&key) {
                p.dirty = false;
            }
        }
        for key in dirty_dirents {
            if let Some(d) = self.dirents.get_mut(&key) {
                d.dirty = false;
            }
        }
        self.orphans.extend(unlinked);
        for ino in named {
            self.orphans.remove(&ino);
        }
        if !self.defer_frees {
            self.free_queue.append(&mut self.free_waiting);
        }
        while let Some(ino) = self.free_queue.pop_first() {
            match self.free_now_or_later(ino) {
                Ok(true) => {}
                Ok(false) => {
                    self.free_waiting.insert(ino);
                }
                Err(e) => {
                    // It and the rest stay queued for the next flush.
                    self.free_queue.insert(ino);
                    return Err(e);
                }
            }
        }
        self.meta_dirty_since = None;
        self.prune();
        Ok(())
    }

    /// Frees `ino` (true), or, with read workers to do it, leaves it to them (false) if that
    /// needs records the Store cannot give at once: a flush runs under the lock every request
    /// waits for, and the orphan record committed before keeps the inode safe meanwhile.
    fn free_now_or_later(&mut self, ino: u64) -> FsResult<bool> {
        if !self.defer_frees {
            self.free_inode(ino)?;
            return Ok(true);
        }
        // Not through `without_fetch`: a flush may run inside an operation that went ahead.
        let no_fetch = std::mem::replace(&mut self.no_fetch, true);
        let wanted = std::mem::take(&mut self.wanted);
        let r = self.free_inode(ino);
        self.no_fetch = no_fetch;
        self.wanted = wanted;
        match r {
            Ok(()) => Ok(true),
            Err(FsError::WouldWait) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Lets a flush leave to read workers the freeing of inodes whose records must be fetched
    /// ([`Fs::free_waiting`]); off, a flush frees every inode itself, fetching as it goes.
    pub fn set_defer_frees(&mut self, on: bool) {
        self.defer_frees = on;
    }

    /// True if inodes wait for [`Fs::free_waiting`].
    pub fn frees_waiting(&self) -> bool {
        !self.free_waiting.is_empty()
    }

    /// Frees the inodes a flush left for later ([`Fs::set_defer_frees`]). Run by a read worker
    /// through [`crate::fetch::run_deferred`]: without fetching, it frees those whose records
    /// are in memory (or were fetched) and names what the others still need.
    pub fn free_waiting(&mut self) -> FsResult<()> {
        let mut waits = false;
        for ino in self.free_waiting.clone() {
            match self.free_inode(ino) {
                Ok(()) => {
                    self.free_waiting.remove(&ino);
                }
                Err(FsError::WouldWait) => waits = true,
                Err(e) => return Err(e),
            }
        }
        if waits {
            return Err(FsError::WouldWait);
        }
        Ok(())
    }

    /// Deletes everything `ino` owns: blocks, block maps, xattrs, the inode, its orphan record.
    /// Reads every record it needs before it changes anything, so that without fetching
    /// ([`Fs::without_fetch`], [`Fs::free_now_or_later`]) it stops with nothing done, naming
    /// every record it is missing at once.
    fn free_inode(&mut self, ino: u64) -> FsResult<()> {
        self.linkable.remove(&ino);
        // Loaded as a node (kept until freed: see `prune`), so that the deletes below find it
        // in memory once they have moved its generation.
        let inode = match self.node(ino) {
            Ok(n) => Some(n.inode.clone()),
            Err(FsError::Errno(libc::ENOENT)) => None,
            Err(e) => return Err(e),
        };
        if let Some(Body::File { chunks, .. }) = inode.as_ref().map(|i| &i.body) {
            for &c in chunks {
                match self.load_chunk(ino, c) {
                    Ok(()) | Err(FsError::WouldWait) => {}
                    Err(e) => return Err(e),
                }
            }
            if self.no_fetch && !self.wanted.is_empty() {
                return Err(FsError::WouldWait);
            }
        }
        self.data_changed(ino);
        self.meta_written(ino);
        self.cache.discard(ino, 0, None)?;
        if let Some(inode) = inode {
            if let Body::File { chunks, .. } = &inode.body {
                for &c in chunks {
                    self.load_chunk(ino, c)?;
                    let indices: Vec<u64> = self.chunks[&(ino, c)].value.iter().collect();
                    for i in indices {
                        ignore_missing(
                            self.store
                                .delete(&self.ns.block, &pair_key(ino, c * CHUNK_BLOCKS + i)),
                        )?;
                    }
                    ignore_missing(self.store.delete(&self.ns.bmap, &pair_key(ino, c)))?;
                    self.chunks.remove(&(ino, c));
                }
            }
            if let Body::Dir { tail_page, .. } = &inode.body {
                for p in 0..=*tail_page {
                    if self
                        .pages
                        .remove(&(ino, p))
                        .is_some_and(|p| !p.value.entries.is_empty())
                        || self.store.exists(&self.ns.dirpage, &pair_key(ino, p))?
                    {
                        ignore_missing(self.store.delete(&self.ns.dirpage, &pair_key(ino, p)))?;
                    }
                }
            }
            // A record may be committed even if the latest change emptied it.
            if inode.has_xattrs || self.xattrs.get(&ino).is_some_and(|x| x.dirty) {
                ignore_missing(self.store.delete(&self.ns.xattr, &ino_key(ino)))?;
            }
            ignore_missing(self.store.delete(&self.ns.inode, &ino_key(ino)))?;
        }
        self.xattrs.remove(&ino);
        self.nodes.remove(&ino);
        if self.orphans.remove(&ino) {
            ignore_missing(self.store.delete(&self.ns.orphan, &ino_key(ino)))?;
        }
        Ok(())
    }

    /// Drops clean cached records nobody references, keeping memory proportional to what is
    /// open, looked up or dirty.
    fn prune(&mut self) {
        self.dirents.retain(|_, d| d.dirty);
        self.pages.retain(|_, p| p.dirty);
        self.chunks.retain(|_, c| c.dirty);
        let nodes = &self.nodes;
        self.xattrs.retain(|ino, x| {
            x.dirty || nodes.get(ino).is_some_and(|n| n.lookups > 0 || n.opens > 0)
        });
        // An inode waiting to be freed stays: dropping it would cost a fetch again.
        let waiting = &self.free_waiting;
        self.nodes
            .retain(|ino, n| n.dirty || n.lookups > 0 || n.opens > 0 || waiting.contains(ino));
    }

    /// [`Fs::flush_all`] then [`Store::sync`]: everything acknowledged so far is durable.
    pub fn sync(&mut self) -> FsResult<()> {
        self.flush_all()?;
        self.store.sync()?;
        Ok(())
    }

    /// True once the oldest dirty state is older than the configured age.
    pub fn flush_due(&self) -> bool {
        self.dirty_since()
            .is_some_and(|t| t.elapsed() >= self.cfg.flush_after)
    }

    /// Flushes and syncs if the oldest dirty state is older than the configured age.
    pub fn tick(&mut self) -> FsResult<()> {
        if self.flush_due() {
            self.sync()?;
        } else if self.dirents.len() + self.pages.len() + self.chunks.len() + self.nodes.len()
            > 100_000
        {
            // A long read-only walk fills the clean caches; keep them bounded.
            self.prune();
        }
        Ok(())
    }

    /// Unmount: every reference is gone, so unlinked inodes are freed; everything is flushed
    /// and synced and the mount lock released.
    pub fn shutdown(&mut self) -> FsResult<()> {
        // The read workers stop with the mount: what they would free is freed now.
        self.defer_frees = false;
        self.handles.clear();
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for ino in ids {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.lookups = 0;
                n.opens = 0;
            }
            self.maybe_free(ino);
        }
        self.sync()?;
        if self.locked {
            ignore_missing(self.store.delete(&self.ns.sup, LOCK_KEY))?;
            self.store.sync()?;
            ACTIVE_SESSIONS.lock().remove(&self.session);
            self.locked = false;
        }
        Ok(())
    }

    /// Forgets the mount session without releasing anything, as a crashed process would.
    /// Only for crash tests: the lock and every unflushed change are left behind.
    pub fn abandon(&mut self) {
        ACTIVE_SESSIONS.lock().remove(&self.session);
        self.locked = false;
    }
}

/// Whether a `listxattr` answer holds a `trusted.` name.
pub fn lists_trusted(list: &[u8]) -> bool {
    list.split(|&b| b == 0).any(|n| n.starts_with(b"trusted."))
}

/// A `listxattr` answer (names each followed by NUL) without its `trusted.` names, for a
/// caller without `CAP_SYS_ADMIN`: ext4 lists them only to the privileged, and the kernel
/// already refuses such a caller their values.
pub fn hide_trusted(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for n in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !n.starts_with(b"trusted.") {
            out.extend_from_slice(n);
            out.push(0);
        }
    }
    out
}

/// Sets (`Some`) or removes (`None`) xattr `name` in `x`, keeping the pairs sorted; false when
/// there was nothing to remove.
fn upsert_xattr(x: &mut Xattrs, name: &[u8], value: Option<Vec<u8>>) -> bool {
    let pos = x.pairs.iter().position(|(n, _)| n == name);
    match (pos, value) {
        (Some(p), Some(v)) => x.pairs[p].1 = v,
        (None, Some(v)) => {
            x.pairs.push((name.to_vec(), v));
            x.pairs.sort();
        }
        (Some(p), None) => {
            x.pairs.remove(p);
        }
        (None, None) => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(data: &ReadData) -> Vec<u8> {
        data.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn a_read_is_pieces_of_blocks_with_zeros_for_what_they_lack() {
        let piece = |index, within, len, source| Piece {
            index,
            within,
            len,
            source,
        };
        let plan = ReadPlan {
            ino: 1,
            gen: 0,
            pieces: vec![
                piece(0, 2, 3, Source::Cached(Bytes::from_static(b"abcdef"))),
                // A hole larger than the static zero buffer.
                piece(1, 0, 300 << 10, Source::Hole),
                // A short block: its missing tail reads as zeros.
                piece(2, 1, 4, Source::Fetch),
                // A block the store does not have.
                piece(3, 0, 2, Source::Fetch),
            ],
        };
        let fetched = [Some(Bytes::from_static(b"xyz")), None];
        let data = plan.assemble(&fetched);
        let mut want = b"cde".to_vec();
        want.resize(3 + (300 << 10), 0);
        want.extend_from_slice(b"yz\0\0\0\0");
        assert_eq!(read_len(&data), want.len());
        assert_eq!(joined(&data), want);
    }
}
