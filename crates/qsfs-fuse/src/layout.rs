//! The on-store layout: which namespace holds what, how keys are built, and the versioned,
//! checksummed records stored under them. `docs/fs-layout.md` describes the same thing in prose.
//!
//! Every record is `[format version: u8][postcard payload][crc32c of both, LE u32]`, so a torn
//! or foreign value is reported as corrupt instead of being misread.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::error::FsError;

/// Format version written in front of every record.
pub const RECORD_VERSION: u8 = 1;
/// The inode number of the root directory (FUSE's root id).
pub const ROOT_INO: u64 = 1;
/// Longest file name, as on ext4.
pub const NAME_MAX: usize = 255;
/// Longest name a dirent key holds as it is: the key is the parent (8 bytes) plus the name,
/// and a store key is at most 255 bytes. A longer name is keyed by its hash ([`dirent_key`]).
pub const KEY_NAME_MAX: usize = qsfs_core::MAX_KEY_LEN - 8;
/// Entries per directory listing page.
pub const PAGE_SLOTS: u64 = 128;
/// Block indices covered by one block-map chunk.
pub const CHUNK_BLOCKS: u64 = 32 * 1024;
/// Longest symlink target.
pub const SYMLINK_MAX: usize = 4095;
/// Largest xattr value.
pub const XATTR_VALUE_MAX: usize = 64 * 1024;
/// Longest xattr name.
pub const XATTR_NAME_MAX: usize = 255;
/// Largest file size: offsets stay within a signed 63-bit range.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// The namespaces one filesystem uses, all named `<prefix>-<role>`.
#[derive(Debug, Clone)]
pub struct Namespaces {
    /// Superblock and mount lock.
    pub sup: String,
    /// Inode records, key = inode number (u64 BE).
    pub inode: String,
    /// Directory entries, key = parent (u64 BE) + name.
    pub dirent: String,
    /// Directory listing pages, key = directory (u64 BE) + page number (u64 BE).
    pub dirpage: String,
    /// File blocks, key = inode (u64 BE) + block index (u64 BE); value = raw bytes.
    pub block: String,
    /// Block maps, key = inode (u64 BE) + chunk number (u64 BE).
    pub bmap: String,
    /// Extended attributes, key = inode (u64 BE); one record per inode.
    pub xattr: String,
    /// Unlinked inodes still to be freed, key = inode (u64 BE).
    pub orphan: String,
}

impl Namespaces {
    /// The namespaces of the filesystem called `prefix`.
    pub fn new(prefix: &str) -> Self {
        let n = |role: &str| format!("{prefix}-{role}");
        Namespaces {
            sup: n("super"),
            inode: n("inode"),
            dirent: n("dirent"),
            dirpage: n("dirpage"),
            block: n("block"),
            bmap: n("bmap"),
            xattr: n("xattr"),
            orphan: n("orphan"),
        }
    }

    /// All of them, in creation order.
    pub fn all(&self) -> [&str; 8] {
        [
            &self.sup,
            &self.inode,
            &self.dirent,
            &self.dirpage,
            &self.block,
            &self.bmap,
            &self.xattr,
            &self.orphan,
        ]
    }
}

/// Key of the superblock in the `super` namespace.
pub const SUPER_KEY: &[u8] = b"super";
/// Key of the mount lock in the `super` namespace.
pub const LOCK_KEY: &[u8] = b"lock";

/// Key for a single inode number (inode, xattr and orphan namespaces).
pub fn ino_key(ino: u64) -> [u8; 8] {
    ino.to_be_bytes()
}

/// Key of a pair of numbers (blocks, block-map chunks, listing pages).
pub fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// Decodes a [`pair_key`].
pub fn parse_pair_key(k: &[u8]) -> Option<(u64, u64)> {
    if k.len() != 16 {
        return None;
    }
    let a = u64::from_be_bytes(k[..8].try_into().ok()?);
    let b = u64::from_be_bytes(k[8..].try_into().ok()?);
    Some((a, b))
}

/// Decodes an [`ino_key`].
pub fn parse_ino_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

/// Key of the entry `name` in directory `parent`.
///
/// A name longer than [`KEY_NAME_MAX`] is keyed by a NUL and its SHA-256 instead, which no
/// name can be (names hold no NUL), and its record holds the name ([`encode_dirent`]).
pub fn dirent_key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len().min(33));
    k.extend_from_slice(&parent.to_be_bytes());
    if name.len() <= KEY_NAME_MAX {
        k.extend_from_slice(name);
    } else {
        use sha2::Digest;
        k.push(0);
        k.extend_from_slice(&sha2::Sha256::digest(name));
    }
    k
}

/// Whether the name part of a dirent key is a long name's hash, not the name.
pub fn is_hashed_name(key_name: &[u8]) -> bool {
    key_name.first() == Some(&0)
}

/// The record of a dirent whose key holds only its name's hash: the dirent and the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongDirent {
    /// The dirent.
    pub dirent: Dirent,
    /// Its whole name.
    pub name: Vec<u8>,
}

/// Encodes the dirent record of `name`: a [`Dirent`], or a [`LongDirent`] for a name its key
/// only hashes.
pub fn encode_dirent(name: &[u8], d: &Dirent) -> Vec<u8> {
    if name.len() <= KEY_NAME_MAX {
        encode(d)
    } else {
        encode(&LongDirent {
            dirent: *d,
            name: name.to_vec(),
        })
    }
}

/// Decodes the dirent record stored under [`dirent_key`]`(_, name)`. A long name's record
/// must name it: another name with the same hash is reported, never taken for it.
pub fn decode_dirent(name: &[u8], bytes: &[u8], what: &str) -> Result<Dirent, FsError> {
    if name.len() <= KEY_NAME_MAX {
        return decode(bytes, what);
    }
    let long: LongDirent = decode(bytes, what)?;
    if long.name != name {
        return Err(FsError::corrupt(
            what,
            "holds another name with the same hash",
        ));
    }
    Ok(long.dirent)
}

/// Encodes a record: version, postcard payload, crc32c.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    // postcard only fails on a writer error or an unsupported type; ours are plain data.
    let payload = postcard::to_stdvec(value).unwrap_or_default();
    out.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a record written by [`encode`], checking version and checksum. `what` names the
/// record in the error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, FsError> {
    if bytes.len() < 5 {
        return Err(FsError::corrupt(what, "record too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored {
        return Err(FsError::corrupt(what, "checksum mismatch"));
    }
    if body[0] != RECORD_VERSION {
        return Err(FsError::corrupt(
            what,
            format!("unknown record version {}", body[0]),
        ));
    }
    postcard::from_bytes(&body[1..]).map_err(|e| FsError::corrupt(what, e.to_string()))
}

/// A point in time: signed seconds since the epoch plus nanoseconds (0..1e9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Time {
    /// Seconds since 1970-01-01 UTC; negative before.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Time {
    /// The current time, from the clock the kernel stamps files with (`current_time()`: the
    /// coarse clock, its last tick). With the writeback cache the kernel owns a regular file's
    /// mtime and ctime and, on a write, compares them with that clock: a file created in the
    /// same tick then needs no SETATTR carrying its times back at close (unless another
    /// filesystem handed out a fine-grained timestamp meanwhile, which moves the kernel's
    /// clock past the tick: Linux 6.13 multigrain timestamps). Written files end up with the
    /// kernel's times anyway (it sends them).
    pub fn now() -> Self {
        use nix::time::{clock_gettime, ClockId};
        match clock_gettime(ClockId::CLOCK_REALTIME_COARSE) {
            Ok(t) => Time {
                secs: t.tv_sec(),
                nanos: u32::try_from(t.tv_nsec()).unwrap_or(0),
            },
            Err(_) => Self::from_system(std::time::SystemTime::now()),
        }
    }

    /// Converts from a `SystemTime`, before or after the epoch.
    pub fn from_system(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Time {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Time {
                        secs: -(d.as_secs() as i64),
                        nanos: 0,
                    }
                } else {
                    Time {
                        secs: -(d.as_secs() as i64) - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }

    /// Converts to a `SystemTime`.
    pub fn to_system(self) -> std::time::SystemTime {
        let nanos = std::time::Duration::from_nanos(u64::from(self.nanos));
        if self.secs >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.secs as u64) + nanos
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_secs(self.secs.unsigned_abs()) + nanos
        }
    }
}

/// What kind of object an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
}

impl Kind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// The part of an inode that depends on its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A regular file: which block-map chunks exist and how many blocks are stored.
    File {
        /// Chunk numbers that have a block-map record.
        chunks: BTreeSet<u64>,
        /// Number of blocks stored (for `st_blocks`).
        blocks: u64,
    },
    /// A directory.
    Dir {
        /// The parent directory (the root is its own parent).
        parent: u64,
        /// Number of entries (not counting "." and "..").
        entries: u64,
        /// The page new entries go to.
        tail_page: u64,
        /// Slots used in the tail page.
        tail_used: u64,
    },
    /// A symbolic link and its target.
    Symlink {
        /// The target bytes, without NUL.
        target: Vec<u8>,
    },
    /// Fifo, socket or device: nothing but the inode.
    Special,
}

/// An inode record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// What it is.
    pub kind: Kind,
    /// Permission bits, including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Last access.
    pub atime: Time,
    /// Last content change.
    pub mtime: Time,
    /// Last inode change.
    pub ctime: Time,
    /// Creation.
    pub crtime: Time,
    /// Device number of a device node.
    pub rdev: u32,
    /// True if an xattr record exists.
    pub has_xattrs: bool,
    /// Kind-specific part.
    pub body: Body,
}

impl Inode {
    /// A fresh inode of `kind` owned by `uid:gid`, all times now.
    pub fn new(kind: Kind, perm: u16, uid: u32, gid: u32, body: Body) -> Self {
        let now = Time::now();
        Inode {
            kind,
            perm,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: 0,
            has_xattrs: false,
            body,
        }
    }

    /// The full `st_mode`.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | u32::from(self.perm)
    }
}

/// A directory entry record (dirent namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirent {
    /// The inode the name points at.
    pub ino: u64,
    /// Its kind (for `d_type` without loading the inode).
    pub kind: Kind,
    /// Listing page holding the name.
    pub page: u64,
    /// Slot within that page.
    pub slot: u64,
}

/// One name in a listing page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageEntry {
    /// Slot number (0..PAGE_SLOTS); slots are never reused, so readdir offsets stay stable.
    pub slot: u64,
    /// The name.
    pub name: Vec<u8>,
    /// Its inode.
    pub ino: u64,
    /// Its kind.
    pub kind: Kind,
}

/// A directory listing page: the names in some slots, sorted by slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Page {
    /// Live entries, sorted by slot.
    pub entries: Vec<PageEntry>,
}

/// A block-map chunk: one bit per block index that has a stored block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Chunk {
    /// Bit `i % 64` of word `i / 64` is set when block `chunk * CHUNK_BLOCKS + i` exists.
    /// Trailing zero words are trimmed.
    pub words: Vec<u64>,
}

impl Chunk {
    /// True if bit `i` is set.
    pub fn get(&self, i: u64) -> bool {
        let w = (i / 64) as usize;
        w < self.words.len() && self.words[w] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; returns true if it was clear.
    pub fn set(&mut self, i: u64) -> bool {
        let w = (i / 64) as usize;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let was = self.words[w] & (1 << (i % 64)) != 0;
        self.words[w] |= 1 << (i % 64);
        !was
    }

    /// Clears bit `i`; returns true if it was set.
    pub fn clear(&mut self, i: u64) -> bool {
        let w = (i / 64) as usize;
        if w >= self.words.len() {
            return false;
        }
        let was = self.words[w] & (1 << (i % 64)) != 0;
        self.words[w] &= !(1 << (i % 64));
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
        was
    }

    /// Set bits, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64u64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w as u64 * 64 + b)
        })
    }

    /// True if no bit is set.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The first set bit at or after `from`: a seek skips a word of holes at a time.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut w = (from / 64) as usize;
        let mut bits = self.words.get(w)? & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                return Some(w as u64 * 64 + u64::from(bits.trailing_zeros()));
            }
            w += 1;
            bits = *self.words.get(w)?;
        }
    }

    /// The first clear bit at or after `from` (bits past the trimmed words are clear).
    pub fn next_clear(&self, from: u64) -> u64 {
        let mut w = (from / 64) as usize;
        let Some(&first) = self.words.get(w) else {
            return from;
        };
        let mut bits = !first & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                return w as u64 * 64 + u64::from(bits.trailing_zeros());
            }
            w += 1;
            match self.words.get(w) {
                Some(&word) => bits = !word,
                None => return w as u64 * 64,
            }
        }
    }
}

/// The extended attributes of one inode, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Xattrs {
    /// (name, value) pairs.
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The superblock: format parameters and the inode-number high-water mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    /// Block size in bytes, fixed at creation.
    pub block_size: u32,
    /// Every inode number below this may have been handed out; new numbers start here, so a
    /// number is never reused within the filesystem's life.
    pub ino_reserved: u64,
    /// When the filesystem was created.
    pub created: Time,
}

/// Who holds the mount lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// Host name of the mounting machine.
    pub host: String,
    /// Process id of the mounting process.
    pub pid: u32,
    /// Random id of the mount session (tells two mounts of one process apart).
    pub session: u64,
    /// When the mount started.
    pub since: Time,
}

impl Lock {
    /// True if the process named by the lock still runs on this host. A zombie (killed, not yet
    /// reaped by its parent) is dead: it holds no files and serves no requests.
    pub fn pid_alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // The state follows the parenthesised command name, which may itself hold spaces.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_time() -> impl Strategy<Value = Time> {
        (any::<i64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| Time { secs, nanos })
    }

    fn arb_kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::File),
            Just(Kind::Dir),
            Just(Kind::Symlink),
            Just(Kind::Fifo),
            Just(Kind::Socket),
            Just(Kind::CharDev),
            Just(Kind::BlockDev),
        ]
    }

    fn arb_body() -> impl Strategy<Value = Body> {
        prop_oneof![
            (
                proptest::collection::btree_set(any::<u64>(), 0..8),
                any::<u64>()
            )
                .prop_map(|(chunks, blocks)| Body::File { chunks, blocks }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c, d)| {
                Body::Dir {
                    parent: a,
                    entries: b,
                    tail_page: c,
                    tail_used: d,
                }
            }),
            proptest::collection::vec(any::<u8>(), 0..100)
                .prop_map(|target| Body::Symlink { target }),
            Just(Body::Special),
        ]
    }

    prop_compose! {
        fn arb_inode()(kind in arb_kind(), perm in 0u16..0o7777, uid in any::<u32>(),
            gid in any::<u32>(), nlink in any::<u32>(), size in any::<u64>(),
            t in proptest::array::uniform4(arb_time()), rdev in any::<u32>(),
            has_xattrs in any::<bool>(), body in arb_body()) -> Inode {
            Inode { kind, perm, uid, gid, nlink, size, atime: t[0], mtime: t[1], ctime: t[2],
                crtime: t[3], rdev, has_xattrs, body }
        }
    }

    proptest! {
        #[test]
        fn inode_roundtrips(inode in arb_inode()) {
            let bytes = encode(&inode);
            let back: Inode = decode(&bytes, "inode").unwrap();
            prop_assert_eq!(back, inode);
        }

        #[test]
        fn any_flipped_bit_is_detected(inode in arb_inode(), pos in any::<prop::sample::Index>(),
                                       bit in 0u8..8) {
            let mut bytes = encode(&inode);
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(decode::<Inode>(&bytes, "inode").is_err());
        }

        #[test]
        fn truncated_record_is_detected(inode in arb_inode(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&inode);
            let n = cut.index(bytes.len());
            prop_assert!(decode::<Inode>(&bytes[..n], "inode").is_err());
        }

        #[test]
        fn page_and_dirent_roundtrip(names in proptest::collection::vec(
                proptest::collection::vec(1u8..=255, 1..NAME_MAX), 0..20),
                ino in any::<u64>(), kind in arb_kind()) {
            let page = Page { entries: names.iter().enumerate().map(|(i, n)| PageEntry {
                slot: i as u64, name: n.clone(), ino, kind }).collect() };
            prop_assert_eq!(decode::<Page>(&encode(&page), "page").unwrap(), page);
            let d = Dirent { ino, kind, page: ino / 3, slot: 7 };
            prop_assert_eq!(decode::<Dirent>(&encode(&d), "dirent").unwrap(), d);
        }

        #[test]
        fn chunk_bits_match_a_set(ops in proptest::collection::vec((any::<bool>(), 0u64..CHUNK_BLOCKS), 0..200)) {
            let mut chunk = Chunk::default();
            let mut model = BTreeSet::new();
            for (set, i) in ops {
                if set {
                    prop_assert_eq!(chunk.set(i), model.insert(i));
                } else {
                    prop_assert_eq!(chunk.clear(i), model.remove(&i));
                }
            }
            prop_assert_eq!(chunk.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            let back: Chunk = decode(&encode(&chunk), "chunk").unwrap();
            prop_assert_eq!(back, chunk);
        }

        #[test]
        fn chunk_seeks_match_a_set(bits in proptest::collection::btree_set(0u64..700, 0..300),
                                   froms in proptest::collection::vec(0u64..800, 1..20)) {
            let mut chunk = Chunk::default();
            for &i in &bits {
                chunk.set(i);
            }
            for from in froms {
                prop_assert_eq!(chunk.next_set(from), bits.range(from..).next().copied());
                let clear = (from..).find(|i| !bits.contains(i)).unwrap();
                prop_assert_eq!(chunk.next_clear(from), clear);
            }
        }

        #[test]
        fn time_roundtrips_through_system_time(secs in -(1i64 << 40)..(1i64 << 40), nanos in 0u32..1_000_000_000) {
            let t = Time { secs, nanos };
            prop_assert_eq!(Time::from_system(t.to_system()), t);
        }

        #[test]
        fn keys_roundtrip(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(parse_pair_key(&pair_key(a, b)), Some((a, b)));
            prop_assert_eq!(parse_ino_key(&ino_key(a)), Some(a));
        }
    }

    #[test]
    fn pair_keys_sort_by_inode_then_index() {
        assert!(pair_key(1, u64::MAX) < pair_key(2, 0));
        assert!(pair_key(5, 1) < pair_key(5, 2));
    }

    #[test]
    fn longest_name_fits_a_store_key() {
        let k = dirent_key(u64::MAX, &[b'a'; KEY_NAME_MAX]);
        assert_eq!(k.len(), qsfs_core::MAX_KEY_LEN);
        qsfs_core::check_key(&k).unwrap();
        qsfs_core::check_key(&dirent_key(u64::MAX, &[b'a'; NAME_MAX])).unwrap();
    }

    proptest! {
        /// Names of any length up to NAME_MAX get distinct keys in one directory, which fit
        /// a store key, and their records give back the dirent only for their own name.
        #[test]
        fn dirent_keys_are_distinct_and_records_name_their_name(
                names in proptest::collection::btree_set(
                    proptest::collection::vec(1u8..=255, 1..=NAME_MAX), 1..12),
                ino in any::<u64>(), kind in arb_kind()) {
            let keys: BTreeSet<Vec<u8>> = names.iter().map(|n| dirent_key(7, n)).collect();
            prop_assert_eq!(keys.len(), names.len());
            let d = Dirent { ino, kind, page: 3, slot: 9 };
            for n in &names {
                let k = dirent_key(7, n);
                prop_assert!(qsfs_core::check_key(&k).is_ok());
                prop_assert_eq!(is_hashed_name(&k[8..]), n.len() > KEY_NAME_MAX);
                let v = encode_dirent(n, &d);
                prop_assert_eq!(decode_dirent(n, &v, "dirent").unwrap(), d);
                let mut other = n.clone();
                other.push(b'x');
                if n.len() > KEY_NAME_MAX && other.len() <= NAME_MAX {
                    prop_assert!(decode_dirent(&other, &v, "dirent").is_err());
                }
            }
        }
    }
}
