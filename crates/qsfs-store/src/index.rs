//! The in-memory index of one namespace and its persisted snapshot.
//!
//! For every key ever written (and not flushed) the index holds the location of its newest
//! version, live or tombstone, with the little that `exists`, `meta`, `scan` and the
//! identical-value check need without touching the disk. A second map orders live keys by the
//! sequence number of their last write, which is the scan order.
//!
//! The snapshot (`index` file) is a copy of this state plus the position up to which it reflects
//! the segments, so opening replays only the tail. It is a cache: if it is missing, damaged or
//! disagrees with the segments, the index is rebuilt from the segments alone.

use std::borrow::Borrow;
use std::collections::BTreeMap;

// Keys come from clients, so the map needs a randomly seeded hash that resists flooding;
// ahash is that and several times cheaper than SipHash on the SET path.
use ahash::HashMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, BufWriter, Write};
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use crate::segment::{loc_segment, record_len, Loc, RecordHeader};

/// Magic at the start of a snapshot file.
const SNAPSHOT_MAGIC: [u8; 8] = *b"QSFSIDX1";
/// Snapshot format version.
const SNAPSHOT_VERSION: u32 = 1;

/// Longest key held inline in an [`IndexKey`]: what fits beside the length and the variant tag
/// in the 24 bytes the enum takes anyway (an `Arc<[u8]>` is 16 bytes, aligned to 8).
pub(crate) const INLINE_KEY_MAX: usize = 22;

/// A key as the index holds it. Short keys (sequential ids, block addresses) are stored in the
/// hash map's slot itself, so a lookup compares them without chasing a pointer to another
/// cache line, and cost no allocation of their own (an `Arc<[u8]>` of a 16-byte key takes a
/// 48-byte heap chunk). Longer keys are shared between the two maps of the index.
#[derive(Clone)]
pub(crate) enum IndexKey {
    /// `len` bytes at the start of `bytes` (the rest is zero).
    Inline {
        /// Key length, at most [`INLINE_KEY_MAX`].
        len: u8,
        /// The key, zero-padded.
        bytes: [u8; INLINE_KEY_MAX],
    },
    /// A key longer than [`INLINE_KEY_MAX`].
    Shared(Arc<[u8]>),
}

impl IndexKey {
    /// The index's copy of `key`.
    pub fn new(key: &[u8]) -> IndexKey {
        if key.len() <= INLINE_KEY_MAX {
            let mut bytes = [0u8; INLINE_KEY_MAX];
            bytes[..key.len()].copy_from_slice(key);
            IndexKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            IndexKey::Shared(Arc::from(key))
        }
    }

    /// The key's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IndexKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IndexKey::Shared(k) => k,
        }
    }

    /// Heap bytes this key holds besides itself (the shared allocation, once per key).
    fn heap_bytes(&self) -> usize {
        match self {
            IndexKey::Inline { .. } => 0,
            // Two reference counts, the bytes, and the allocator's rounding and header.
            IndexKey::Shared(k) => (16 + k.len()).next_multiple_of(16) + 16,
        }
    }
}

impl Deref for IndexKey {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

// `Borrow<[u8]>` lets the map be probed with a plain `&[u8]`; its contract needs `Hash` and `Eq`
// to agree with those of `[u8]`, so both go through the bytes (never the representation).
impl Borrow<[u8]> for IndexKey {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for IndexKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for IndexKey {
    #[inline]
    fn eq(&self, other: &IndexKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for IndexKey {}

impl std::fmt::Debug for IndexKey {
    // Keys are client data: never printed, even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IndexKey({} bytes)", self.len())
    }
}

/// What the index knows about the newest version of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyState {
    /// Where the newest version is.
    pub loc: Loc,
    /// Its write sequence number.
    pub seqno: u64,
    /// Value length (0 for a tombstone).
    pub value_len: u32,
    /// crc32c of the value.
    pub value_crc: u32,
    /// Its timestamp.
    pub timestamp: u64,
    /// True if the newest version is a tombstone.
    pub deleted: bool,
}

impl KeyState {
    /// Builds the state of a record.
    pub fn of(header: &RecordHeader, loc: Loc) -> KeyState {
        KeyState {
            loc,
            seqno: header.seqno,
            value_len: header.value_len,
            value_crc: header.value_crc,
            timestamp: header.timestamp,
            deleted: header.is_tombstone(),
        }
    }
}

/// Bit of [`Packed::len_flags`] that marks a tombstone. Value lengths are at most
/// [`qsfs_core::MAX_VALUE_LEN`] (8 MiB), far below it.
const TOMBSTONE_BIT: u32 = 1 << 31;

/// [`KeyState`] as the hash map stores it: the tombstone flag folded into the top bit of the
/// value length, so a slot is 32 bytes instead of 40 (with the 24-byte key, 56 bytes a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed {
    loc: Loc,
    seqno: u64,
    timestamp: u64,
    len_flags: u32,
    value_crc: u32,
}

impl Packed {
    #[inline]
    fn pack(s: &KeyState) -> Packed {
        debug_assert!(s.value_len < TOMBSTONE_BIT);
        Packed {
            loc: s.loc,
            seqno: s.seqno,
            timestamp: s.timestamp,
            len_flags: (s.value_len & !TOMBSTONE_BIT) | if s.deleted { TOMBSTONE_BIT } else { 0 },
            value_crc: s.value_crc,
        }
    }

    #[inline]
    fn unpack(&self) -> KeyState {
        KeyState {
            loc: self.loc,
            seqno: self.seqno,
            value_len: self.len_flags & !TOMBSTONE_BIT,
            value_crc: self.value_crc,
            timestamp: self.timestamp,
            deleted: self.len_flags & TOMBSTONE_BIT != 0,
        }
    }
}

/// Newest version of every key: a hash map from [`IndexKey`] to a packed [`KeyState`], handed
/// out by value.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyMap(HashMap<IndexKey, Packed>);

impl KeyMap {
    /// The state of `key`, live or tombstone.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<KeyState> {
        self.0.get(key).map(Packed::unpack)
    }

    /// The index's copy of `key` and its state.
    pub fn get_key_value(&self, key: &[u8]) -> Option<(&IndexKey, KeyState)> {
        self.0.get_key_value(key).map(|(k, p)| (k, p.unpack()))
    }

    /// True if the index knows `key`.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.0.contains_key(key)
    }

    /// Number of keys (tombstones included).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no key was ever written.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keys the map holds room for without growing.
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }

    /// Every key with its state, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&IndexKey, KeyState)> + '_ {
        self.0.iter().map(|(k, p)| (k, p.unpack()))
    }

    /// Every state, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = KeyState> + '_ {
        self.0.values().map(Packed::unpack)
    }

    /// Sets the state of a key the map already holds; false if it does not.
    fn update(&mut self, key: &[u8], s: &KeyState) -> bool {
        match self.0.get_mut(key) {
            Some(p) => {
                *p = Packed::pack(s);
                true
            }
            None => false,
        }
    }

    /// Adds a key the map does not hold yet.
    fn insert(&mut self, key: IndexKey, s: &KeyState) {
        self.0.insert(key, Packed::pack(s));
    }
}

/// The index of one namespace.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Newest version of every key (tombstones included, so history stays reachable).
    pub keys: KeyMap,
    /// Live keys by the sequence number of their last write: the scan order.
    pub order: BTreeMap<u64, IndexKey>,
    /// Where compaction moved history versions: old location → new location.
    pub forward: HashMap<Loc, Loc>,
    /// Bytes of newest-version records per segment (what compaction must keep).
    pub seg_live: HashMap<u32, u64>,
    /// Sum of live value lengths.
    pub live_bytes: u64,
    /// Sum of live key lengths.
    pub live_key_bytes: u64,
    /// Next write sequence number.
    pub next_seqno: u64,
    /// Sequential mode: the next id slot.
    pub next_slot: u64,
    /// Heap bytes of the keys too long to be inline (keys are never removed one by one).
    key_heap_bytes: u64,
}

impl Index {
    /// An empty index whose counters start at the given floors.
    pub fn new(seqno_floor: u64, slot_floor: u64) -> Index {
        Index {
            next_seqno: seqno_floor.max(1),
            next_slot: slot_floor,
            ..Index::default()
        }
    }

    /// Number of live keys.
    pub fn live_count(&self) -> u64 {
        self.order.len() as u64
    }

    /// The state of a live key.
    #[inline]
    pub fn live(&self, key: &[u8]) -> Option<KeyState> {
        self.keys.get(key).filter(|s| !s.deleted)
    }

    fn record_bytes(key_len: usize, s: &KeyState) -> u64 {
        record_len(key_len, if s.deleted { 0 } else { s.value_len as usize })
    }

    /// Makes `new` the newest version of `key` if it is newer than what the index holds (higher
    /// sequence number, or the same one at a later location: a compaction copy). Used both for
    /// fresh writes and for replaying segments. Returns the replaced state.
    pub fn apply(&mut self, key: &[u8], new: KeyState) -> Option<KeyState> {
        let key_len = key.len();
        if let Some((stored, old)) = self.keys.get_key_value(key) {
            if (new.seqno, new.loc) <= (old.seqno, old.loc) {
                return None;
            }
            // The order map's copy if the key was live, else a copy of the map's (for a shared
            // key, one more reference to the same bytes).
            let k = match self.order.remove(&old.seqno) {
                Some(k) => k,
                None => stored.clone(),
            };
            self.unaccount(key_len, &old);
            self.account(k, &new);
            self.keys.update(key, &new);
            Some(old)
        } else {
            let k = IndexKey::new(key);
            self.key_heap_bytes += k.heap_bytes() as u64;
            self.keys.insert(k.clone(), &new);
            self.account(k, &new);
            None
        }
    }

    fn unaccount(&mut self, key_len: usize, old: &KeyState) {
        let seg = loc_segment(old.loc);
        if let Some(v) = self.seg_live.get_mut(&seg) {
            *v = v.saturating_sub(Self::record_bytes(key_len, old));
        }
        if !old.deleted {
            self.live_bytes -= u64::from(old.value_len);
            self.live_key_bytes -= key_len as u64;
        }
    }

    fn account(&mut self, key: IndexKey, new: &KeyState) {
        *self.seg_live.entry(loc_segment(new.loc)).or_default() +=
            Self::record_bytes(key.len(), new);
        if !new.deleted {
            self.live_bytes += u64::from(new.value_len);
            self.live_key_bytes += key.len() as u64;
            self.order.insert(new.seqno, key);
        }
    }

    /// Notes a replayed record's effect on the counters that are not per key.
    pub fn observe(&mut self, header: &RecordHeader, at: Loc) {
        self.next_seqno = self.next_seqno.max(header.seqno + 1);
        if header.slot > 0 {
            self.next_slot = self.next_slot.max(header.slot);
        }
        if header.origin != 0 {
            self.forward.insert(header.origin, at);
        }
    }

    /// Follows compaction moves from `l` until a location in a segment that `exists`; `None` if
    /// the version was dropped (or never existed).
    pub fn resolve(&self, mut l: Loc, exists: impl Fn(u32) -> bool) -> Option<Loc> {
        for _ in 0..64 {
            if l == 0 {
                return None;
            }
            if exists(loc_segment(l)) {
                return Some(l);
            }
            l = *self.forward.get(&l)?;
        }
        None
    }

    /// Drops forward entries that lead nowhere any more.
    pub fn prune_forward(&mut self, exists: impl Fn(u32) -> bool + Copy) {
        let dead: Vec<Loc> = self
            .forward
            .keys()
            .copied()
            .filter(|l| self.resolve(*l, exists).is_none())
            .collect();
        for l in dead {
            self.forward.remove(&l);
        }
    }

    /// Writes the snapshot atomically (temporary file, rename).
    /// `covers` is the position up to which every record is reflected.
    pub fn write_snapshot(&self, dir: &Path, covers: Loc) -> io::Result<u64> {
        let tmp = dir.join("index.tmp");
        let file = File::create(&tmp)?;
        let (inner, written) =
            self.encode_snapshot(BufWriter::with_capacity(1 << 20, file), covers)?;
        let file = inner.into_inner().map_err(|e| e.into_error())?;
        drop(file);
        // No fsync: the snapshot is a checksummed cache. If a power loss leaves it stale, torn
        // or missing, the checks on open notice and the index is rebuilt from the segments.
        std::fs::rename(&tmp, dir.join("index"))?;
        Ok(written)
    }

    /// The snapshot as bytes (what [`Index::write_snapshot`] writes).
    pub fn snapshot_bytes(&self, covers: Loc) -> Vec<u8> {
        let cap = 64 + self.keys.len() * 48 + self.forward.len() * 16;
        // Writing into a Vec cannot fail.
        match self.encode_snapshot(Vec::with_capacity(cap), covers) {
            Ok((v, _)) => v,
            Err(_) => Vec::new(),
        }
    }

    /// Writes snapshot bytes made by [`Index::snapshot_bytes`] as the snapshot file of `dir`.
    pub fn write_snapshot_bytes(dir: &Path, bytes: &[u8]) -> io::Result<u64> {
        let tmp = dir.join("index.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join("index"))?;
        Ok(bytes.len() as u64)
    }

    /// Encodes the snapshot into `inner`; returns it and the number of bytes written.
    fn encode_snapshot<W: Write>(&self, inner: W, covers: Loc) -> io::Result<(W, u64)> {
        let mut w = CrcWriter {
            inner,
            crc: 0,
            written: 0,
        };
        w.write_all(&SNAPSHOT_MAGIC)?;
        w.write_all(&SNAPSHOT_VERSION.to_le_bytes())?;
        w.write_all(&0u32.to_le_bytes())?;
        w.write_all(&covers.to_le_bytes())?;
        w.write_all(&self.next_seqno.to_le_bytes())?;
        w.write_all(&self.next_slot.to_le_bytes())?;
        w.write_all(&(self.keys.len() as u64).to_le_bytes())?;
        w.write_all(&(self.forward.len() as u64).to_le_bytes())?;
        // One write (and one checksum update) per entry: this runs for every key at every seal.
        let mut entry = [0u8; 34 + 255];
        for (key, s) in self.keys.iter() {
            entry[0] = key.len() as u8;
            entry[1] = u8::from(s.deleted);
            entry[2..6].copy_from_slice(&s.value_len.to_le_bytes());
            entry[6..10].copy_from_slice(&s.value_crc.to_le_bytes());
            entry[10..18].copy_from_slice(&s.timestamp.to_le_bytes());
            entry[18..26].copy_from_slice(&s.seqno.to_le_bytes());
            entry[26..34].copy_from_slice(&s.loc.to_le_bytes());
            entry[34..34 + key.len()].copy_from_slice(key);
            w.write_all(&entry[..34 + key.len()])?;
        }
        for (from, to) in &self.forward {
            w.write_all(&from.to_le_bytes())?;
            w.write_all(&to.to_le_bytes())?;
        }
        let crc = w.crc;
        let written = w.written + 4;
        let mut inner = w.inner;
        inner.write_all(&crc.to_le_bytes())?;
        Ok((inner, written))
    }

    /// Reads a snapshot. `Err` explains why it cannot be used (then the caller rebuilds).
    pub fn read_snapshot(path: &Path) -> Result<(Index, Loc), String> {
        let data = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        Index::decode_snapshot(&data)
    }

    /// Decodes snapshot bytes. `Err` explains why they cannot be used.
    pub fn decode_snapshot(data: &[u8]) -> Result<(Index, Loc), String> {
        // Magic, version, reserved, covers, next seqno, next slot, key and forward counts, then
        // the trailing crc: the size of the snapshot of an empty index.
        const EMPTY_SNAPSHOT_LEN: usize = 8 + 4 + 4 + 8 * 5 + 4;
        if data.len() < EMPTY_SNAPSHOT_LEN || data[0..8] != SNAPSHOT_MAGIC {
            return Err("not an index snapshot".into());
        }
        let (body, tail) = data.split_at(data.len() - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        if crc32c::crc32c(body) != stored {
            return Err("checksum mismatch".into());
        }
        let mut r = Reader { data: body, pos: 8 };
        let version = r.u32()?;
        if version != SNAPSHOT_VERSION {
            return Err(format!("unsupported snapshot version {version}"));
        }
        r.u32()?;
        let covers = r.u64()?;
        let next_seqno = r.u64()?;
        let next_slot = r.u64()?;
        let nkeys = r.u64()?;
        let nfwd = r.u64()?;
        let mut index = Index::new(next_seqno, next_slot);
        index.next_seqno = next_seqno;
        for _ in 0..nkeys {
            let klen = r.u8()? as usize;
            let deleted = match r.u8()? {
                0 => false,
                1 => true,
                f => return Err(format!("bad key flags {f}")),
            };
            let value_len = r.u32()?;
            if value_len as usize > qsfs_core::MAX_VALUE_LEN {
                return Err(format!("value length {value_len} out of range"));
            }
            let value_crc = r.u32()?;
            let timestamp = r.u64()?;
            let seqno = r.u64()?;
            let loc = r.u64()?;
            let key = r.bytes(klen)?;
            if klen == 0 || index.keys.contains_key(key) {
                return Err("bad or duplicate key".into());
            }
            index.apply(
                key,
                KeyState {
                    loc,
                    seqno,
                    value_len,
                    value_crc,
                    timestamp,
                    deleted,
                },
            );
        }
        for _ in 0..nfwd {
            let from = r.u64()?;
            let to = r.u64()?;
            index.forward.insert(from, to);
        }
        if r.pos != body.len() {
            return Err("trailing bytes".into());
        }
        Ok((index, covers))
    }

    /// Approximate bytes the index holds in memory.
    pub fn memory_bytes(&self) -> u64 {
        use std::mem::size_of;
        // The hash table: a slot and a control byte per bucket, 8 buckets per 7 of capacity.
        let table =
            (self.keys.capacity() as u64 * 8 / 7) * (size_of::<(IndexKey, Packed)>() as u64 + 1);
        // B-tree leaves are on average about two thirds full.
        let order = self.order.len() as u64 * size_of::<(u64, IndexKey)>() as u64 * 3 / 2;
        table + order + self.key_heap_bytes + self.forward.len() as u64 * 32
    }
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: u32,
    written: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.pos + n > self.data.len() {
            return Err("truncated".into());
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::loc;
    use proptest::prelude::*;

    #[test]
    fn the_snapshot_of_an_empty_index_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::new(7, 3);
        index.write_snapshot(dir.path(), loc(0, 32)).unwrap();
        let (back, covers) = Index::read_snapshot(&dir.path().join("index")).unwrap();
        assert_eq!(covers, loc(0, 32));
        assert_eq!((back.next_seqno, back.next_slot), (7, 3));
        assert!(back.keys.is_empty());
    }

    fn st(seg: u32, off: u64, seqno: u64, len: u32, deleted: bool) -> KeyState {
        KeyState {
            loc: loc(seg, off),
            seqno,
            value_len: len,
            value_crc: 0,
            timestamp: 1,
            deleted,
        }
    }

    #[test]
    fn newest_version_wins_and_counters_follow() {
        let mut ix = Index::new(0, 0);
        ix.apply(b"a", st(0, 32, 1, 10, false));
        ix.apply(b"b", st(0, 200, 2, 5, false));
        assert_eq!(ix.live_bytes, 15);
        // An older record replayed later changes nothing.
        assert!(ix.apply(b"a", st(0, 16, 0, 99, false)).is_none());
        ix.apply(b"a", st(1, 32, 3, 1, false));
        assert_eq!(ix.live_bytes, 6);
        assert_eq!(
            ix.order.values().map(|k| k.to_vec()).collect::<Vec<_>>(),
            vec![b"b".to_vec(), b"a".to_vec()]
        );
        ix.apply(b"b", st(1, 100, 4, 0, true));
        assert_eq!(ix.live_count(), 1);
        assert_eq!(ix.live_bytes, 1);
        assert!(ix.live(b"b").is_none());
        assert!(ix.keys.contains_key(&b"b"[..]));
        // A compaction copy: same seqno, later location.
        ix.apply(b"a", st(5, 32, 3, 1, false));
        assert_eq!(ix.live(b"a").map(|s| s.loc), Some(loc(5, 32)));
        assert_eq!(ix.seg_live.get(&1).copied(), Some(record_len(1, 0)));
    }

    #[test]
    fn snapshot_roundtrip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut ix = Index::new(0, 0);
        for i in 0..100u32 {
            ix.apply(
                format!("k{i}").as_bytes(),
                st(i / 10, 32 + u64::from(i), u64::from(i) + 1, i, i % 7 == 0),
            );
        }
        ix.forward.insert(loc(1, 2), loc(3, 4));
        ix.next_seqno = 500;
        ix.next_slot = 42;
        ix.write_snapshot(dir.path(), loc(9, 77)).unwrap();
        let (back, covers) = Index::read_snapshot(&dir.path().join("index")).unwrap();
        assert_eq!(covers, loc(9, 77));
        assert_eq!(back.keys, ix.keys);
        assert_eq!(back.order, ix.order);
        assert_eq!(back.forward, ix.forward);
        assert_eq!(
            (back.next_seqno, back.next_slot, back.live_bytes),
            (500, 42, ix.live_bytes)
        );

        let path = dir.path().join("index");
        let mut data = std::fs::read(&path).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 1;
        std::fs::write(&path, &data).unwrap();
        assert!(Index::read_snapshot(&path).is_err());
    }

    /// Hand-encodes a snapshot in the documented version-1 layout (docs/engine-format.md §4),
    /// independently of `encode_snapshot`.
    fn v1_snapshot(keys: &[(&[u8], KeyState)], covers: Loc) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"QSFSIDX1");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&covers.to_le_bytes());
        b.extend_from_slice(&100u64.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&(keys.len() as u64).to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        for (k, s) in keys {
            b.push(k.len() as u8);
            b.push(u8::from(s.deleted));
            b.extend_from_slice(&s.value_len.to_le_bytes());
            b.extend_from_slice(&s.value_crc.to_le_bytes());
            b.extend_from_slice(&s.timestamp.to_le_bytes());
            b.extend_from_slice(&s.seqno.to_le_bytes());
            b.extend_from_slice(&s.loc.to_le_bytes());
            b.extend_from_slice(k);
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn a_snapshot_written_before_inline_keys_still_opens() {
        // The persisted layout did not change with the in-memory key representation: a snapshot
        // of keys on both sides of the inline limit reads back, and writes back byte for byte.
        let short = [7u8; INLINE_KEY_MAX];
        let long = [8u8; INLINE_KEY_MAX + 1];
        let max = [9u8; 255];
        let keys: Vec<(&[u8], KeyState)> = vec![
            (&b"a"[..], st(0, 32, 1, 3, false)),
            (&short[..], st(0, 100, 2, 4, false)),
            (&long[..], st(1, 32, 3, 0, true)),
            (&max[..], st(1, 200, 4, 5, false)),
        ];
        let bytes = v1_snapshot(&keys, loc(1, 600));
        let (ix, covers) = Index::decode_snapshot(&bytes).unwrap();
        assert_eq!(covers, loc(1, 600));
        for (k, s) in &keys {
            assert_eq!(ix.keys.get(k), Some(*s));
        }
        assert!(matches!(
            ix.keys.get_key_value(&short[..]),
            Some((IndexKey::Inline { .. }, _))
        ));
        assert!(matches!(
            ix.keys.get_key_value(&long[..]),
            Some((IndexKey::Shared(_), _))
        ));
        assert_eq!(ix.live_count(), 3);
        assert_eq!(ix.live_bytes, 12);
        // One key at a time, so the hash map's iteration order cannot differ.
        for (k, s) in &keys {
            let one = v1_snapshot(&[(k, *s)], 9);
            let (ix, _) = Index::decode_snapshot(&one).unwrap();
            assert_eq!(ix.snapshot_bytes(9), one);
        }
    }

    fn boundary_key() -> impl Strategy<Value = Vec<u8>> {
        // Lengths around the inline limit, from a tiny alphabet so that keys differing only by
        // a trailing zero (the inline padding) or by length are common.
        prop_oneof![
            3 => proptest::collection::vec(0u8..3, INLINE_KEY_MAX - 2..=INLINE_KEY_MAX + 2),
            1 => proptest::collection::vec(0u8..3, 1..4),
            1 => proptest::collection::vec(any::<u8>(), 1..=255),
        ]
    }

    proptest! {
        /// Inline and shared keys behave as their bytes: the index agrees with a model map
        /// keyed by `Vec<u8>` under the same newest-wins rule, keys are inline exactly up to
        /// the limit, and the snapshot round trip keeps every key.
        #[test]
        fn index_keys_at_the_inline_boundary_behave_as_their_bytes(
            ops in proptest::collection::vec((boundary_key(), 1u64..50, any::<bool>()), 1..80),
        ) {
            let mut ix = Index::new(0, 0);
            let mut model: BTreeMap<Vec<u8>, KeyState> = BTreeMap::new();
            for (i, (key, seqno, deleted)) in ops.iter().enumerate() {
                // Sequence numbers are unique per namespace; replay order is not theirs.
                let s = st(0, 32 + i as u64, seqno * 1000 + i as u64, key.len() as u32, *deleted);
                ix.apply(key, s);
                let newer = model.get(key).is_none_or(|o| (s.seqno, s.loc) > (o.seqno, o.loc));
                if newer {
                    model.insert(key.clone(), s);
                }
            }
            prop_assert_eq!(ix.keys.len(), model.len());
            for (k, s) in &model {
                let (stored, state) = ix.keys.get_key_value(&k[..]).unwrap();
                prop_assert_eq!(&state, s);
                prop_assert_eq!(stored.as_bytes(), &k[..]);
                prop_assert_eq!(
                    matches!(stored, IndexKey::Inline { .. }),
                    k.len() <= INLINE_KEY_MAX
                );
                let mut padded = k.clone();
                padded.push(0);
                prop_assert_eq!(ix.keys.get(&padded[..]), model.get(&padded).copied());
                prop_assert_eq!(
                    ix.keys.get(&k[..k.len() - 1]),
                    model.get(&k[..k.len() - 1]).copied()
                );
            }
            let live: BTreeMap<u64, Vec<u8>> = model
                .iter()
                .filter(|(_, s)| !s.deleted)
                .map(|(k, s)| (s.seqno, k.clone()))
                .collect();
            let order: BTreeMap<u64, Vec<u8>> =
                ix.order.iter().map(|(s, k)| (*s, k.to_vec())).collect();
            prop_assert_eq!(order, live);
            prop_assert_eq!(
                ix.live_bytes,
                model.values().filter(|s| !s.deleted).map(|s| u64::from(s.value_len)).sum::<u64>()
            );
            let (back, _) = Index::decode_snapshot(&ix.snapshot_bytes(7)).unwrap();
            prop_assert_eq!(&back.keys, &ix.keys);
        }
    }

    #[test]
    fn resolve_follows_moves() {
        let mut ix = Index::new(0, 0);
        ix.forward.insert(loc(1, 40), loc(3, 40));
        ix.forward.insert(loc(3, 40), loc(7, 100));
        let exists = |s: u32| s == 7 || s == 9;
        assert_eq!(ix.resolve(loc(1, 40), exists), Some(loc(7, 100)));
        assert_eq!(ix.resolve(loc(9, 1), exists), Some(loc(9, 1)));
        assert_eq!(ix.resolve(loc(2, 1), exists), None);
        assert_eq!(ix.resolve(0, exists), None);
        ix.forward.insert(loc(4, 4), loc(5, 5));
        ix.prune_forward(exists);
        assert_eq!(ix.forward.len(), 2);
    }
}
