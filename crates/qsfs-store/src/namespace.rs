//! One namespace: its segments, its index, its properties, and every operation on them.
//!
//! Locking: a namespace has one writer mutex (`writer`), held by whoever appends or changes
//! properties, so writes are serialised per namespace only; and one `RwLock` over the index and
//! the segment table (`state`), held for reading by lookups and for writing only for the moment
//! an index entry changes. The order is always writer, then state. A reader takes `state` for
//! reading, copies the location and an `Arc` of the segment, drops the lock and reads with
//! `pread`: the `Arc` keeps the file readable even if compaction unlinks it meanwhile.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use parking_lot::{Condvar, Mutex, RwLock};
use qsfs_core::{
    check_value, Credential, Cursor, Entry, Error, KeyMeta, Mode, NamespaceInfo, NamespaceProperty,
    ReadOnlyReason, Result, ScanOrder, ScanPage, SetOutcome, Timestamp, Version, VersionId,
    MAX_KEY_LEN, MAX_PASSWORD_LEN, SEQ_KEY_LEN,
};

use crate::cold::cold_key;
use crate::config::Durability;
use crate::descriptor::Descriptor;
use crate::engine::Shared;
use crate::index::{Index, IndexKey, KeyState};
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::password::PasswordRecord;
use crate::segment::{
    loc, loc_offset, loc_segment, now_millis, parse_segment_file_name, read_full_at, read_vec_at,
    scan_segment, value_crc, Loc, OpenError, RecordHeader, Segment, FLAG_TOMBSTONE,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};

/// Something the observer must be told once locks are released.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A segment was sealed.
    Sealed(u32, PathBuf),
    /// A segment was removed (compaction, flush).
    Removed(u32),
    /// A property changed.
    Updated,
}

/// The appending end of a namespace.
#[derive(Debug)]
pub(crate) struct Writer {
    /// The segment appended to.
    pub seg: Arc<Segment>,
    /// Where the next record goes.
    pub end: u64,
    /// When the segment was started (for the age limit).
    pub opened: Instant,
    /// Reused record buffer.
    pub buf: Vec<u8>,
    /// Records of a [`Namespace::set_many`] not yet written: appended with one write at the end
    /// of the batch (or sooner), and only then put in the index, so no reader ever finds a
    /// location that is not in the file yet.
    pub batch: Option<Batch>,
    /// The record buffer of the last batch, kept for the next: a batch's buffer grows to
    /// many values, and allocating and freeing that per batch costs more than its one write.
    pub batch_buf: Vec<u8>,
    /// The same for the batch's index updates.
    pub batch_deferred: Vec<Deferred>,
}

/// Records encoded by a batch and waiting for their one write.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The encoded records, to go at the writer's `end`.
    pub pending: Vec<u8>,
    /// Their index updates, in order.
    pub deferred: Vec<Deferred>,
    /// The item being set.
    pub item: usize,
    /// Items whose write failed.
    pub failed: Vec<usize>,
}

/// One record of a [`Batch`].
#[derive(Debug)]
pub(crate) struct Deferred {
    /// Position of the item in the batch.
    pub item: usize,
    pub key: Vec<u8>,
    pub header: RecordHeader,
    pub at: Loc,
}

/// A batch flushes once it holds this many bytes, bounding the memory it holds.
const BATCH_MAX_BYTES: usize = 1 << 20;
/// A value at least this large is written from the caller's buffer with a write of its own
/// (header and value as two parts of one `pwritev`) instead of being copied into a batch.
const UNBATCHED_VALUE: usize = 64 << 10;
/// A seal by size captures the recovery manifest (the whole index, written twice: snapshot and
/// manifest, and encoded with the writer held) only once the segments sealed by size since the
/// last capture hold at least this many times the snapshot's size. While the index is small
/// next to the data that is nearly every seal; a filesystem of a TiB (an index of hundreds of
/// MB) would otherwise write its index many times over for every segment it fills. Seals by
/// age, NSJUMP, cuts, flushes and property changes always capture; a manifest older than the
/// newest seals is an earlier recovery point, renewed by the next cut (`Engine::seal_all`),
/// and an open replays the segments sealed after the snapshot.
const SNAPSHOT_AMORTIZE: u64 = 8;

/// Values from this size on are read with a `pread` of their own ([`Namespace::read_known`]):
/// moving 16 KiB costs about what a system call does, and a filesystem block (128 KiB) moved
/// to the front of its buffer was 6 % of a cold sequential read's loader thread.
const SPLIT_READ_MIN: usize = 16 << 10;

/// Index, segment table and properties.
#[derive(Debug)]
pub(crate) struct NsState {
    pub index: Index,
    pub segments: BTreeMap<u32, Arc<Segment>>,
    pub desc: Descriptor,
    pub locked: bool,
    pub frozen: bool,
    pub deleted: bool,
    pub snapshot_bytes: u64,
    /// Damage found while loading, for operators (also logged).
    pub damage: Vec<String>,
    /// Generation of the persisted manifest.
    pub manifest_gen: u64,
    /// Size of the manifest file.
    pub manifest_bytes: u64,
    /// Bytes sealed by size since the last manifest was captured.
    pub sealed_since_capture: u64,
}

impl NsState {
    fn segment_exists(&self, id: u32) -> bool {
        self.segments.contains_key(&id)
    }

    pub(crate) fn resolve(&self, l: Loc) -> Option<Loc> {
        self.index.resolve(l, |s| self.segment_exists(s))
    }
}

/// A loaded namespace.
#[derive(Debug)]
pub(crate) struct Namespace {
    pub name: String,
    pub dir: PathBuf,
    pub state: RwLock<NsState>,
    pub writer: Mutex<Writer>,
    /// One compaction at a time.
    pub compacting: Mutex<()>,
    /// Observer notifications waiting for locks to be released.
    pub events: Mutex<Vec<Event>>,
    /// Written since the last sync (periodic durability).
    pub dirty: AtomicBool,
    /// Committed end of the current segment, as a [`Loc`], for raw readers.
    pub tail: AtomicU64,
    /// Group commit: how far the file is known to be synced, and whether a sync is running.
    pub group: Mutex<GroupCommit>,
    /// Signalled when a group-commit sync finishes.
    pub group_done: Condvar,
    /// This namespace, once it is shared: what a seal hands to the engine's seal thread. Unset
    /// while the namespace is being opened, when seals do their I/O inline.
    pub me: OnceLock<Weak<Namespace>>,
    /// Seals whose I/O the seal thread has not finished.
    pub seals: Mutex<SealQueue>,
    /// Signalled when the seal thread finishes a seal.
    pub seals_done: Condvar,
}

thread_local! {
    /// True on the engine's seal thread (see [`Namespace::wait_sealed`]).
    pub(crate) static ON_SEAL_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is the engine's seal thread.
pub(crate) fn on_seal_thread() -> bool {
    ON_SEAL_THREAD.with(Cell::get)
}

/// Seals of one namespace handed to the engine's seal thread (see [`SealJob`]).
#[derive(Debug, Default)]
pub(crate) struct SealQueue {
    /// Sealed segments whose file is not known durable yet: reported unsealed by
    /// [`Namespace::stats`], so nothing uploads, offloads or compacts them before their fsync.
    pub pending: BTreeSet<u32>,
    /// Seals done whose observer call has not returned yet.
    pub unannounced: usize,
    /// A seal whose fsync failed: its data may not be on disk, so every later sync of the
    /// namespace fails (a failed fsync cannot be retried safely: the kernel may have dropped the
    /// dirty pages).
    pub failed: Option<String>,
}

/// The I/O of one seal, done off the writer's thread: the sealed segment's fsync, then the index
/// snapshot and the recovery manifest captured at the seal (both describe the sealed segment,
/// so they may only reach the disk after it), then the observer's notice (the backup tier
/// uploads only durable segments). Jobs run one at a time in seal order.
pub(crate) struct SealJob {
    /// The namespace.
    pub ns: Arc<Namespace>,
    /// The segment just sealed.
    pub seg: Arc<Segment>,
    /// The manifest captured at the seal (`None` if the namespace was deleted meanwhile).
    pub manifest: Option<Manifest>,
}

/// What the engine's seal thread is sent.
pub(crate) enum SealMsg {
    /// A seal's I/O (boxed: one allocation per seal keeps every message small).
    Seal(Box<SealJob>),
    /// A segment whose gets made it (or the newly synced part of the segment being appended
    /// to) due for its page-cache re-layout (see [`crate::segment::relayout_page_cache`]).
    Relayout(Weak<Segment>),
}

/// State of [`Durability::Group`] for one namespace.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    /// Every record before this location is synced.
    pub synced: Loc,
    /// A writer is running the sync now.
    pub syncing: bool,
}

/// A record as stored, for 0-db's `DATA RAW` and for replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// The key.
    pub key: Vec<u8>,
    /// True for a tombstone.
    pub deleted: bool,
    /// Timestamp of the write.
    pub timestamp: Timestamp,
    /// The previous version of the key as stored (may point to a compacted segment).
    pub previous: Option<VersionId>,
    /// crc32c (Castagnoli, standard) of the value.
    pub value_crc: u32,
    /// The value (empty for a tombstone).
    pub value: Vec<u8>,
    /// Offset of the next record in the same segment.
    pub next_offset: u64,
}

/// What [`crate::Engine::stats`] reports about one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceStats {
    /// Live keys.
    pub entries: u64,
    /// Sum of live value lengths (what `maxsize` limits).
    pub live_bytes: u64,
    /// Bytes of local segment files and index snapshot.
    pub disk_bytes: u64,
    /// Estimated bytes of the in-memory index.
    pub index_bytes: u64,
    /// The segment being appended to.
    pub current_segment: u32,
    /// Where the next record goes in it.
    pub current_offset: u64,
    /// Sequential mode: the next id that would be allocated.
    pub next_id: u64,
    /// Every segment, oldest first.
    pub segments: Vec<SegmentStats>,
    /// Damage found when the namespace was loaded.
    pub damage: Vec<String>,
}

/// One segment in [`NamespaceStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStats {
    /// Segment id.
    pub id: u32,
    /// Bytes on local disk (0 if offloaded).
    pub size: u64,
    /// Length of the segment, wherever it is.
    pub length: u64,
    /// Bytes of records that are the newest version of their key.
    pub live: u64,
    /// Sealed (immutable).
    pub sealed: bool,
    /// Local file removed; data only in the cold tier.
    pub offloaded: bool,
    /// Path of the (possibly absent) local file.
    pub path: PathBuf,
    /// Unix time in milliseconds when a record of this segment was last read since the engine
    /// opened (0 = never): what an eviction policy orders by.
    pub last_read: u64,
}

/// The generation of the next manifest: one more than the last, and never behind the clock
/// (milliseconds), so that a namespace deleted and created again moves past the old one.
fn next_generation(last: u64) -> u64 {
    (last + 1).max(now_millis())
}

fn seg_location(ns: &str, seg: u32, off: u64) -> String {
    format!(
        "segment {ns}/{} @ {off}",
        crate::segment::segment_file_name(seg)
    )
}

/// A 17-byte cursor of namespace `ns` resuming after sequence number `seqno`: `0x51 | seqno |
/// value_crc | check`, the check being the crc32c of the namespace's name followed by the
/// first 13 bytes, so that a cursor handed out by one namespace is refused by every other
/// (sequence numbers are per namespace: resuming another's would skip or repeat keys silently).
/// `value_crc` is informational (KEYCUR gives the key's value crc32c, so a client can confirm
/// what a server holds without reading it back; SCAN gives 0) and is not needed to resume.
fn encode_cursor(ns: &str, seqno: u64, value_crc: u32) -> Cursor {
    let mut c = vec![0u8; 17];
    c[0] = 0x51;
    c[1..9].copy_from_slice(&seqno.to_le_bytes());
    c[9..13].copy_from_slice(&value_crc.to_le_bytes());
    let check = cursor_check(ns, &c[0..13]);
    c[13..17].copy_from_slice(&check.to_le_bytes());
    Cursor(c)
}

fn cursor_check(ns: &str, head: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(ns.as_bytes()), head)
}

fn decode_cursor(ns: &str, c: &Cursor) -> Result<u64> {
    let b = &c.0;
    let bad = || Error::InvalidArgument(format!("invalid scan cursor for namespace {ns}"));
    if b.len() != 17 || b[0] != 0x51 {
        return Err(bad());
    }
    if cursor_check(ns, &b[0..13]).to_le_bytes() != b[13..17] {
        return Err(bad());
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[1..9]);
    Ok(u64::from_le_bytes(s))
}

impl Namespace {
    // ----- loading -------------------------------------------------------------------------

    /// Opens (loads) a namespace directory.
    pub fn open(shared: &Shared, dir: PathBuf, desc: Descriptor) -> Result<Namespace> {
        let name = desc.name.clone();
        let mut local = BTreeMap::new();
        let rd =
            std::fs::read_dir(&dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
            let fname = entry.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            if let Some(id) = parse_segment_file_name(fname) {
                local.insert(id, entry.path());
            } else if fname.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut damage = Vec::new();
        let mut segments: BTreeMap<u32, Arc<Segment>> = BTreeMap::new();
        let last_local = local.keys().next_back().copied();
        let mut dropped_newest = false;
        for (id, path) in &local {
            let writable = Some(*id) == last_local;
            match Segment::open(path.clone(), *id, writable) {
                Ok(s) => {
                    segments.insert(*id, Arc::new(s));
                }
                Err(OpenError::Bad(detail))
                    if writable && crate::segment::header_never_written(path) =>
                {
                    // A crash while creating the newest segment, or before the first sync of
                    // one created unsynced: nothing in it was acknowledged as durable.
                    tracing::warn!(namespace = %name, segment = id, %detail, "removing half-created segment");
                    std::fs::remove_file(path)
                        .map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
                    dropped_newest = true;
                }
                Err(OpenError::Bad(detail)) => {
                    let msg = format!("{}: {detail}", seg_location(&name, *id, 0));
                    tracing::error!(namespace = %name, "{msg}; segment ignored");
                    damage.push(msg);
                }
                Err(OpenError::Io(e)) => {
                    return Err(Error::io(format!("open {}", path.display()), e))
                }
            }
        }
        for (id, len) in &desc.offloaded {
            segments.entry(*id).or_insert_with(|| {
                Arc::new(Segment::offloaded(
                    dir.join(crate::segment::segment_file_name(*id)),
                    *id,
                    *len,
                ))
            });
        }
        // The newest segment must be a local, writable one (the one before a dropped
        // half-created segment was sealed and is opened read-only).
        let need_new = dropped_newest
            || match segments.iter().next_back() {
                None => true,
                Some((_, s)) => s.file.is_none(),
            };
        if need_new {
            // Past every id in use, including a damaged file that was skipped.
            let id = segments
                .keys()
                .chain(local.keys())
                .max()
                .map(|i| i + 1)
                .unwrap_or(0)
                .max(desc.segment_floor);
            let s = Segment::create(&dir, id, qsfs_core::now())
                .map_err(|e| Error::io(format!("create segment in {}", dir.display()), e))?;
            segments.insert(id, Arc::new(s));
        }
        let (current_id, current) = match segments.iter().next_back() {
            Some((i, s)) => (*i, s.clone()),
            None => return Err(Error::InvalidArgument("no segment".into())),
        };
        // Sealed by an earlier run: synced at their seal under any durability but `None`, so
        // candidates for the page-cache re-layout once gets read them, like those sealed now.
        if shared.config.durability != Durability::None {
            for s in segments.values().filter(|s| s.id != current_id) {
                s.arm_relayout();
            }
        }

        let mut state = NsState {
            index: Index::new(desc.seqno_floor, desc.slot_floor),
            segments,
            desc,
            locked: false,
            frozen: false,
            deleted: false,
            snapshot_bytes: 0,
            damage,
            manifest_gen: 0,
            manifest_bytes: 0,
            sealed_since_capture: 0,
        };
        let end = Self::load_index(shared, &name, &dir, &mut state)?;
        let ns = Namespace {
            name,
            dir,
            state: RwLock::new(state),
            writer: Mutex::new(Writer {
                seg: current,
                end,
                opened: Instant::now(),
                buf: Vec::new(),
                batch: None,
                batch_buf: Vec::new(),
                batch_deferred: Vec::new(),
            }),
            compacting: Mutex::new(()),
            events: Mutex::new(Vec::new()),
            dirty: AtomicBool::new(false),
            tail: AtomicU64::new(loc(current_id, end)),
            group: Mutex::new(GroupCommit::default()),
            group_done: Condvar::new(),
            me: OnceLock::new(),
            seals: Mutex::new(SealQueue::default()),
            seals_done: Condvar::new(),
        };
        ns.check_manifest(shared)?;
        Ok(ns)
    }

    /// Makes sure the namespace has a current manifest: one is written if it is missing (a
    /// new namespace, or a directory from before manifests), unreadable, or older than a flush
    /// that a crash interrupted before its manifest was written.
    fn check_manifest(&self, shared: &Shared) -> Result<()> {
        let floor = u64::from(self.state.read().desc.segment_floor);
        let generation = match Manifest::load(&self.dir) {
            Ok(Some(m)) => {
                // A flush moves the segment floor at least two past the last sealed segment
                // (a restore sets it to one past), then writes an empty manifest.
                let flushed_since = m.sealed_through.is_some_and(|s| u64::from(s) + 1 < floor);
                // One that misses the newest sealed segments (seals by size capture only now
                // and then, or a process was killed between a seal and its manifest) is an
                // earlier recovery point, as good as when it was written: the next cut renews
                // it, and sealing the tail here would need a new segment (a full disk could
                // not be opened).
                if !flushed_since {
                    let size = std::fs::metadata(self.dir.join(MANIFEST_FILE))
                        .map(|m| m.len())
                        .unwrap_or(0);
                    let mut st = self.state.write();
                    st.manifest_gen = m.generation;
                    st.manifest_bytes = size;
                    return Ok(());
                }
                m.generation
            }
            Ok(None) => 0,
            Err(e) => {
                tracing::error!(namespace = %self.name, error = %e, "manifest unreadable; writing a new one");
                // The lost generation was at most the clock (in ms) when it was written plus
                // the seals made within that same millisecond: a margin of a million
                // generations keeps the new one above it.
                now_millis() + 1_000_000
            }
        };
        self.state.write().manifest_gen = generation;
        let mut w = self.writer.lock();
        if w.end > SEGMENT_HEADER_LEN {
            // The index covers unsealed records: seal them so a manifest can describe them.
            self.rotate_locked(shared, &mut w)
        } else {
            self.write_manifest_locked(shared, &w)
        }
    }

    /// Captures and persists the recovery manifest. The caller holds the writer positioned
    /// at the start of a fresh segment, so the index covers exactly the sealed segments. The
    /// index snapshot file is refreshed from the same bytes.
    pub(crate) fn write_manifest_locked(&self, shared: &Shared, w: &Writer) -> Result<()> {
        // A queued seal would otherwise store its older manifest over this one.
        self.wait_sealed();
        match self.capture_manifest_locked(w) {
            Some(m) => self.store_manifest(shared.config.durability != Durability::None, &m),
            None => Ok(()),
        }
    }

    /// The recovery manifest as of now, with the next generation (taken now, so manifests
    /// captured one after the other have growing generations whenever they are stored). The
    /// caller holds the writer positioned at the start of a fresh segment. `None` if the
    /// namespace was deleted.
    fn capture_manifest_locked(&self, w: &Writer) -> Option<Manifest> {
        debug_assert_eq!(w.end, SEGMENT_HEADER_LEN);
        let covers = loc(w.seg.id, w.end);
        // Read-locked while the index is encoded (readers go on); the generation is only ever
        // taken by the writer's holder, so it cannot change between the two locks.
        let manifest = {
            let st = self.state.read();
            if st.deleted {
                return None;
            }
            let segments: Vec<(u32, u64)> = st
                .segments
                .range(..w.seg.id)
                .map(|(id, s)| (*id, s.len()))
                .collect();
            let mut descriptor = st.desc.clone();
            descriptor.offloaded.clear();
            Manifest {
                namespace: self.name.clone(),
                generation: next_generation(st.manifest_gen),
                sealed_through: segments.last().map(|s| s.0),
                segments,
                descriptor,
                index: st.index.snapshot_bytes(covers),
            }
        };
        let mut st = self.state.write();
        st.manifest_gen = manifest.generation;
        st.sealed_since_capture = 0;
        Some(manifest)
    }

    /// Persists a captured manifest, and its index as the snapshot file.
    fn store_manifest(&self, durable: bool, manifest: &Manifest) -> Result<()> {
        if self.state.read().deleted {
            return Ok(());
        }
        let snap = match Index::write_snapshot_bytes(&self.dir, &manifest.index) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(namespace = %self.name, error = %e, "cannot write index snapshot");
                None
            }
        };
        let size = manifest.store(&self.dir, durable)?;
        let mut st = self.state.write();
        if let Some(n) = snap {
            st.snapshot_bytes = n;
        }
        st.manifest_bytes = size;
        Ok(())
    }

    /// Persists the manifest again with the current descriptor and the next generation (a
    /// property changed). Caller holds the writer.
    fn bump_manifest_locked(&self, shared: &Shared, _w: &Writer) -> Result<()> {
        self.wait_sealed();
        let mut m = Manifest::load(&self.dir)?
            .ok_or_else(|| Error::NotFound(format!("manifest of namespace {}", self.name)))?;
        {
            let st = self.state.read();
            m.generation = next_generation(st.manifest_gen.max(m.generation));
            m.descriptor = st.desc.clone();
            m.descriptor.offloaded.clear();
        }
        let size = m.store(&self.dir, shared.config.durability != Durability::None)?;
        let mut st = self.state.write();
        st.manifest_gen = m.generation;
        st.manifest_bytes = size;
        Ok(())
    }

    /// True if the persisted manifest names a segment that compaction has removed since: it
    /// can no longer be backed up whole, and a fresh one (the writer at the start of an empty
    /// segment) describes the same data without it.
    ///
    /// Also true if a sealed segment is newer than the manifest (a crash between a seal and its
    /// manifest): it would be missing from a recovery.
    pub(crate) fn manifest_is_stale(&self) -> Result<bool> {
        self.wait_sealed();
        let Some(m) = Manifest::load(&self.dir)? else {
            return Ok(false);
        };
        if self.newest_sealed_after(&m) {
            return Ok(true);
        }
        let st = self.state.read();
        Ok(m.segments
            .iter()
            .any(|(id, _)| !st.segments.contains_key(id)))
    }

    /// True if a segment sealed after `m` was captured exists (newer than its newest).
    fn newest_sealed_after(&self, m: &Manifest) -> bool {
        let current = loc_segment(self.tail.load(Ordering::Acquire));
        let st = self.state.read();
        let newest = st.segments.range(..current).next_back().map(|(id, _)| *id);
        newest.is_some_and(|n| m.sealed_through.is_none_or(|s| n > s))
    }

    /// The latest persisted manifest, with the current properties.
    pub fn manifest(&self) -> Result<Manifest> {
        self.wait_sealed();
        let mut m = Manifest::load(&self.dir)?
            .ok_or_else(|| Error::NotFound(format!("manifest of namespace {}", self.name)))?;
        let st = self.state.read();
        if st.deleted {
            return Err(Error::NotFound(format!("namespace {}", self.name)));
        }
        m.descriptor = st.desc.clone();
        m.descriptor.offloaded.clear();
        Ok(m)
    }

    /// Bytes on local disk: local segment files, index snapshot, manifest.
    pub fn local_bytes(&self) -> u64 {
        let tail = self.tail.load(Ordering::Acquire);
        let st = self.state.read();
        let mut total = st.snapshot_bytes + st.manifest_bytes;
        for (id, s) in &st.segments {
            if s.file.is_some() {
                total += if *id == loc_segment(tail) {
                    loc_offset(tail)
                } else {
                    s.len()
                };
            }
        }
        total
    }

    /// Fills `state.index` from the snapshot and the segments after it (or from all segments).
    /// Returns the end of the current segment after cutting a torn tail.
    fn load_index(shared: &Shared, name: &str, dir: &Path, state: &mut NsState) -> Result<u64> {
        let snap_path = dir.join("index");
        let mut start: Option<Loc> = None;
        if snap_path.exists() {
            match Index::read_snapshot(&snap_path) {
                Ok((mut ix, covers)) => {
                    let cseg = loc_segment(covers);
                    let valid = match state.segments.get(&cseg) {
                        Some(s) => s.file.is_some() && loc_offset(covers) <= s.len(),
                        None => false,
                    } && ix
                        .keys
                        .values()
                        .all(|k| state.segments.contains_key(&loc_segment(k.loc)));
                    if valid {
                        ix.next_seqno = ix.next_seqno.max(state.desc.seqno_floor).max(1);
                        ix.next_slot = ix.next_slot.max(state.desc.slot_floor);
                        state.index = ix;
                        state.snapshot_bytes =
                            std::fs::metadata(&snap_path).map(|m| m.len()).unwrap_or(0);
                        start = Some(covers);
                    } else {
                        tracing::warn!(namespace = %name, "index snapshot does not match the segments; rebuilding from segments");
                    }
                }
                Err(why) => {
                    tracing::warn!(namespace = %name, %why, "index snapshot unusable; rebuilding from segments");
                }
            }
        } else if state
            .segments
            .values()
            .any(|s| s.len() > crate::segment::SEGMENT_HEADER_LEN)
        {
            tracing::info!(namespace = %name, "no index snapshot; rebuilding from segments");
        }
        let current_id = state.segments.keys().next_back().copied().unwrap_or(0);
        let ids: Vec<u32> = state.segments.keys().copied().collect();
        let mut end = SEGMENT_HEADER_LEN;
        for id in ids {
            let from = match start {
                Some(c) if id < loc_segment(c) => continue,
                Some(c) if id == loc_segment(c) => loc_offset(c),
                _ => SEGMENT_HEADER_LEN,
            };
            let seg = state.segments[&id].clone();
            let handle = seg
                .handle()
                .map_err(|e| Error::io(format!("open {}", seg.path.display()), e))?;
            let report = match &handle {
                Some(f) => {
                    let len = f
                        .metadata()
                        .map_err(|e| Error::io(format!("stat {}", seg.path.display()), e))?
                        .len();
                    let src = |buf: &mut [u8], off: u64| read_full_at(f, buf, off);
                    let index = &mut state.index;
                    let r = scan_segment(&src, len, from, |rec| index_record(index, id, &rec))
                        .map_err(|e| Error::io(format!("read {}", seg.path.display()), e))?;
                    (r, len)
                }
                None => {
                    let cold = shared.cold.as_ref().ok_or_else(|| {
                        Error::Unavailable(format!(
                            "namespace {name}: rebuilding the index needs offloaded segment {id} and no cold tier is configured"
                        ))
                    })?;
                    let data = cold.get(&cold_key(name, id))?;
                    let src = |buf: &mut [u8], off: u64| {
                        let s = (off as usize).min(data.len());
                        let n = buf.len().min(data.len() - s);
                        buf[..n].copy_from_slice(&data[s..s + n]);
                        Ok(n)
                    };
                    let index = &mut state.index;
                    let r = scan_segment(&src, data.len() as u64, from, |rec| {
                        index_record(index, id, &rec)
                    })
                    .map_err(|e| Error::io(format!("read cold segment {id}"), e))?;
                    (r, data.len() as u64)
                }
            };
            let (report, len) = report;
            if id != current_id && shared.config.durability != Durability::None {
                // A segment sealed after the snapshot may have been sealed by a process killed
                // before its seal's fsync (which the snapshot would have followed): make it
                // durable before anything (the backup tier) relies on it being sealed.
                if let Some(f) = &handle {
                    f.sync_all()
                        .map_err(|e| Error::io(format!("sync {}", seg.path.display()), e))?;
                }
            }
            for (a, b, why) in &report.corrupt {
                let msg = format!("{} .. {b}: {why}", seg_location(name, id, *a));
                tracing::error!(namespace = %name, "{msg}");
                state.damage.push(msg);
            }
            if id == current_id {
                if report.valid_end < len {
                    tracing::warn!(namespace = %name, segment = id, at = report.valid_end, cut = len - report.valid_end,
                        "torn tail cut off the current segment");
                    if let Some(f) = &handle {
                        f.set_len(report.valid_end)
                            .and_then(|_| f.sync_all())
                            .map_err(|e| {
                                Error::io(format!("truncate {}", seg.path.display()), e)
                            })?;
                    }
                }
                end = report.valid_end;
            } else if report.valid_end < len {
                let msg = format!(
                    "{} .. {len}: damaged tail of a sealed segment",
                    seg_location(name, id, report.valid_end)
                );
                tracing::error!(namespace = %name, "{msg}");
                state.damage.push(msg);
            }
        }
        Ok(end)
    }

    // ----- helpers ---------------------------------------------------------------------------

    fn check_readable(&self, st: &NsState) -> Result<()> {
        if st.deleted {
            return Err(Error::NotFound(format!("namespace {}", self.name)));
        }
        if st.frozen {
            return Err(Error::ReadOnly {
                reason: ReadOnlyReason::Frozen,
                what: self.name.clone(),
            });
        }
        Ok(())
    }

    fn check_writable(&self, st: &NsState) -> Result<()> {
        self.check_readable(st)?;
        if st.locked {
            return Err(Error::ReadOnly {
                reason: ReadOnlyReason::Locked,
                what: self.name.clone(),
            });
        }
        Ok(())
    }

    /// Reads `len` bytes at `off` of a segment, from disk or from the cold tier.
    fn read_bytes(&self, shared: &Shared, seg: &Segment, off: u64, len: usize) -> Result<Vec<u8>> {
        let handle = match seg.handle_for_read() {
            // A sealed file whose descriptor the budget closed, deleted since (0-db's offload
            // contract lets a hook delete uploaded data files): ask for it back. A file that
            // compaction removed is no longer in the table; the caller looks again instead.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.still_listed(seg) => {
                match &shared.config.observer {
                    Some(obs) if obs.on_segment_missing(&self.name, seg.id, &seg.path) => {
                        seg.handle()
                    }
                    _ => Err(e),
                }
            }
            r => r,
        }
        .map_err(|e| {
            let at = seg_location(&self.name, seg.id, off);
            if e.kind() == std::io::ErrorKind::NotFound {
                // Not `Error::NotFound`: that would read as "no such key".
                Error::Unavailable(format!("{at}: the file is missing from disk"))
            } else {
                Error::io(format!("open {at}"), e)
            }
        })?;
        match handle {
            Some(f) => {
                let buf = read_vec_at(&f, len, off).map_err(|e| {
                    Error::io(format!("read {}", seg_location(&self.name, seg.id, off)), e)
                })?;
                if buf.len() < len {
                    return Err(Error::corrupt(
                        seg_location(&self.name, seg.id, off),
                        "record runs past the end of the segment",
                    ));
                }
                Ok(buf)
            }
            None => {
                let why = match &shared.cold {
                    Some(cold) => {
                        match cold.get_range(&cold_key(&self.name, seg.id), off..off + len as u64) {
                            Ok(data) => return Ok(data.to_vec()),
                            Err(e) => format!("the cold tier failed: {e}"),
                        }
                    }
                    None => "no cold tier is configured".to_string(),
                };
                match self.recover_missing(shared, seg)? {
                    Some(local) => self.read_bytes(shared, &local, off, len),
                    None => Err(Error::Unavailable(format!(
                        "{} is offloaded and {why}",
                        seg_location(&self.name, seg.id, off)
                    ))),
                }
            }
        }
    }

    /// True if `seg` is still the namespace's segment of its id (not removed or replaced).
    fn still_listed(&self, seg: &Segment) -> bool {
        self.state
            .read()
            .segments
            .get(&seg.id)
            .is_some_and(|s| std::ptr::eq(s.as_ref(), seg))
    }

    /// A read needs `seg`, whose data is neither local nor obtainable from the cold tier: asks
    /// the observer to put the file back (0-db's blocking `missing-data` hook) and, if it did,
    /// opens it and puts it in the segment table in place of `seg`. Called with no lock of this
    /// namespace held but possibly the writer (a SET comparing with the stored value), so only
    /// the state lock is taken. The descriptor keeps listing the segment as offloaded: on the
    /// next open the local file wins, and a lost update of it cannot lose data.
    fn recover_missing(&self, shared: &Shared, seg: &Segment) -> Result<Option<Arc<Segment>>> {
        let Some(obs) = &shared.config.observer else {
            return Ok(None);
        };
        if !obs.on_segment_missing(&self.name, seg.id, &seg.path) {
            return Ok(None);
        }
        let opened = match Segment::open(seg.path.clone(), seg.id, false) {
            Ok(s) => s,
            Err(OpenError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(namespace = %self.name, segment = seg.id,
                    "the missing-data handler reported success but the file is still missing");
                return Ok(None);
            }
            Err(OpenError::Io(e)) => {
                return Err(Error::io(format!("open {}", seg.path.display()), e))
            }
            Err(OpenError::Bad(d)) => {
                return Err(Error::corrupt(seg.path.display().to_string(), d))
            }
        };
        if seg.offloaded_len > 0 && opened.len() < seg.offloaded_len {
            return Err(Error::corrupt(
                seg.path.display().to_string(),
                format!(
                    "restored file holds {} bytes, the segment had {}",
                    opened.len(),
                    seg.offloaded_len
                ),
            ));
        }
        let local = Arc::new(opened.inherit_last_read(seg));
        let mut st = self.state.write();
        // Only replace the entry this read saw: compaction may have removed the segment since.
        if st
            .segments
            .get(&seg.id)
            .is_some_and(|cur| cur.file.is_none())
        {
            st.segments.insert(seg.id, local.clone());
        }
        Ok(Some(local))
    }

    /// Reads and fully verifies the record at `seg`/`off` whose key and value lengths are known.
    fn read_known(
        &self,
        shared: &Shared,
        seg: &Segment,
        off: u64,
        key: &[u8],
        value_len: u32,
    ) -> Result<(RecordHeader, Vec<u8>)> {
        let head_len = RECORD_HEADER_LEN + key.len();
        // A large value on local disk is read into a buffer of its own, after the header and
        // key: shifting it to the front of one buffer cost more than the second `pread` (an
        // offloaded segment keeps one range fetch).
        let split = value_len as usize >= SPLIT_READ_MIN && !seg.is_offloaded();
        let total = head_len + if split { 0 } else { value_len as usize };
        let mut buf = self.read_bytes(shared, seg, off, total)?;
        let location = || seg_location(&self.name, seg.id, off);
        // The whole buffer, not just the header: the key right after it is checksummed in the
        // same pass.
        let header = RecordHeader::decode(
            &buf,
            Some(&buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + key.len()]),
        )
        .ok_or_else(|| Error::corrupt(location(), "record header checksum mismatch"))?;
        if header.value_len != value_len
            || &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + key.len()] != key
        {
            return Err(Error::corrupt(
                location(),
                "record does not match the index",
            ));
        }
        let value = if split {
            self.read_bytes(shared, seg, off + head_len as u64, value_len as usize)?
        } else {
            // Shift the value to the front of the same allocation rather than copying it out.
            buf.drain(..head_len);
            buf
        };
        if value_crc(&value) != header.value_crc {
            return Err(Error::corrupt(location(), "value checksum mismatch"));
        }
        Ok((header, value))
    }

    /// Reads and verifies the record at `l` whose lengths are not known. Returns header, key and
    /// value (value only if `with_value`, else empty).
    fn read_at(
        &self,
        shared: &Shared,
        st_segment: &Segment,
        off: u64,
        with_value: bool,
    ) -> Result<(RecordHeader, Vec<u8>, Vec<u8>)> {
        let location = || seg_location(&self.name, st_segment.id, off);
        let head = self.read_bytes(shared, st_segment, off, RECORD_HEADER_LEN)?;
        let unchecked = RecordHeader::decode(&head, None)
            .ok_or_else(|| Error::corrupt(location(), "no valid record here"))?;
        let klen = unchecked.key_len as usize;
        let vlen = if with_value {
            unchecked.value_len as usize
        } else {
            0
        };
        if unchecked.value_len as usize > qsfs_core::MAX_VALUE_LEN {
            return Err(Error::corrupt(location(), "record length out of range"));
        }
        let body = self.read_bytes(
            shared,
            st_segment,
            off + RECORD_HEADER_LEN as u64,
            klen + vlen,
        )?;
        let (key, value) = body.split_at(klen);
        let header = RecordHeader::decode(&head, Some(key))
            .ok_or_else(|| Error::corrupt(location(), "record header checksum mismatch"))?;
        if with_value && value_crc(value) != header.value_crc {
            return Err(Error::corrupt(location(), "value checksum mismatch"));
        }
        Ok((header, key.to_vec(), value.to_vec()))
    }

    fn segment_of(&self, st: &NsState, l: Loc) -> Result<Arc<Segment>> {
        st.segments.get(&loc_segment(l)).cloned().ok_or_else(|| {
            Error::corrupt(
                seg_location(&self.name, loc_segment(l), loc_offset(l)),
                "index points to a missing segment",
            )
        })
    }

    /// Appends one encoded record, rotating first if the segment is full or old.
    fn append(&self, shared: &Shared, w: &mut Writer, rec: &[u8]) -> Result<Loc> {
        self.append_with(shared, w, &[rec], true)
    }

    /// [`Namespace::append`] of a record given in `parts` (written back to back with one
    /// vectored write); `durable = false` skips the per-write sync of
    /// [`Durability::EveryWrite`] (compaction syncs once at the end instead).
    pub(crate) fn append_with(
        &self,
        shared: &Shared,
        w: &mut Writer,
        parts: &[&[u8]],
        durable: bool,
    ) -> Result<Loc> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let too_old = shared
            .config
            .max_segment_age
            .is_some_and(|a| w.opened.elapsed() >= a);
        if w.end > SEGMENT_HEADER_LEN && w.end + len > shared.config.max_segment_size {
            self.rotate_full_locked(shared, w)?;
        } else if w.end > SEGMENT_HEADER_LEN && too_old {
            self.rotate_locked(shared, w)?;
        }
        let file = w
            .seg
            .handle()
            .map_err(|e| Error::io(format!("open {}", w.seg.path.display()), e))?
            .ok_or_else(|| Error::InvalidArgument("current segment is not local".into()))?;
        let at = w.end;
        let undo = |e: std::io::Error| {
            // Never leave a partial record for the next append to follow.
            let _ = file.set_len(at);
            Error::io(
                format!("append to {}", seg_location(&self.name, w.seg.id, at)),
                e,
            )
        };
        crate::segment::write_all_parts_at(&file, parts, at).map_err(undo)?;
        match shared.config.durability {
            Durability::EveryWrite if durable => file.sync_data().map_err(undo)?,
            Durability::EveryWrite => self.dirty.store(true, Ordering::Release),
            Durability::Periodic(_) | Durability::Group => {
                self.dirty.store(true, Ordering::Release)
            }
            Durability::None => {}
        }
        w.end = at + len;
        if durable && shared.config.durability == Durability::EveryWrite {
            w.seg.note_synced(w.end);
        }
        self.tail.store(loc(w.seg.id, w.end), Ordering::Release);
        Ok(loc(w.seg.id, at))
    }

    /// Seals the current segment and starts the next one. Caller holds the writer.
    ///
    /// The seal's I/O (fsync of the sealed file, index snapshot, recovery manifest) goes to the
    /// engine's seal thread when there is one, so the writer goes on appending to the new
    /// segment meanwhile; [`Namespace::settle`] waits for it (every sync does). While the
    /// namespace is being opened it is done here.
    pub(crate) fn rotate_locked(&self, shared: &Shared, w: &mut Writer) -> Result<()> {
        self.rotate_capturing(shared, w, true).map(|_| ())
    }

    /// [`Namespace::rotate_locked`] for a segment full by size: the manifest is captured only
    /// when due (see [`SNAPSHOT_AMORTIZE`]).
    fn rotate_full_locked(&self, shared: &Shared, w: &mut Writer) -> Result<()> {
        self.rotate_capturing(shared, w, false).map(|_| ())
    }

    /// Whether a seal by size of `sealed` more bytes captures the manifest.
    fn capture_due(&self, sealed: u64) -> bool {
        let mut st = self.state.write();
        st.sealed_since_capture = st.sealed_since_capture.saturating_add(sealed);
        st.sealed_since_capture >= st.snapshot_bytes.saturating_mul(SNAPSHOT_AMORTIZE)
    }

    /// [`Namespace::rotate_locked`], returning the recovery manifest captured at the seal
    /// (the one the seal stores once the segment is durable; `None` if the namespace was
    /// deleted, or if `always` is false and no capture is due), so a cut can hand it out
    /// without waiting for that with the writer held.
    pub(crate) fn rotate_capturing(
        &self,
        shared: &Shared,
        w: &mut Writer,
        always: bool,
    ) -> Result<Option<Manifest>> {
        let old = w.seg.clone();
        let sealed_len = w.end;
        let durable = shared.config.durability != Durability::None;
        // Only a seal with an fsync that the writes have not already paid for is worth
        // handing off: with `None` there is none, with `EveryWrite` each write synced its own.
        let handoff = matches!(
            shared.config.durability,
            Durability::Periodic(_) | Durability::Group
        );
        let me = self.me.get().filter(|_| handoff).and_then(Weak::upgrade);
        let sealer = me.as_ref().and_then(|_| shared.sealer.lock().clone());
        // A sealed segment is synced unless the configuration asked for no syncs at all: the
        // periodic flusher only looks at the current segment, so this is its last chance.
        if durable && sealer.is_none() {
            Self::sync_sealed(&old)?;
        }
        let new_id = old
            .id
            .checked_add(1)
            .ok_or_else(|| Error::NoSpace("segment ids exhausted".into()))?;
        // With a seal thread, the new file's fsyncs are left to it and to the segment's first
        // data sync (both before any sync returns): two journal commits fewer on the writer.
        let created = if sealer.is_some() {
            Segment::create_unsynced(&self.dir, new_id, qsfs_core::now())
        } else {
            Segment::create(&self.dir, new_id, qsfs_core::now())
        };
        let seg = Arc::new(
            created
                .map_err(|e| Error::io(format!("create segment {new_id} of {}", self.name), e))?,
        );
        // The sealed file is read-only from now on: reopen it so.
        let sealed = match Segment::open(old.path.clone(), old.id, false) {
            Ok(s) => Arc::new(s.inherit_last_read(&old)),
            Err(_) => old.clone(),
        };
        {
            let mut st = self.state.write();
            st.segments.insert(old.id, sealed);
            st.segments.insert(new_id, seg.clone());
        }
        if sealer.is_some() {
            // Before the writer moves on: from now until the seal thread is done the segment
            // is neither the current one nor durable.
            self.seals.lock().pending.insert(old.id);
        } else if durable {
            // Synced above; with a seal thread it arms the segment once its sync is done.
            self.arm_relayout(old.id);
        }
        w.seg = seg;
        w.end = SEGMENT_HEADER_LEN;
        w.opened = Instant::now();
        self.tail
            .store(loc(new_id, SEGMENT_HEADER_LEN), Ordering::Release);
        shared.seals.fetch_add(1, Ordering::AcqRel);
        let manifest = match always || self.capture_due(sealed_len) {
            true => self.capture_manifest_locked(w),
            false => None,
        };
        let captured = manifest.clone();
        if let (Some(ns), Some(tx)) = (me, sealer) {
            let job = SealJob {
                ns,
                seg: old.clone(),
                manifest,
            };
            // Counted before it can be received, so the seal thread's count never drops below
            // the jobs really queued (it pauses background work while any is).
            shared.seal_queue_len.fetch_add(1, Ordering::AcqRel);
            match tx.send(SealMsg::Seal(Box::new(job))) {
                Ok(()) => return Ok(captured),
                // The seal thread is gone (the engine is closing): do it here.
                Err(std::sync::mpsc::SendError(SealMsg::Relayout(_))) => {}
                Err(std::sync::mpsc::SendError(SealMsg::Seal(job))) => {
                    shared.seal_queue_len.fetch_sub(1, Ordering::AcqRel);
                    let r = job.ns.finish_seal(durable, &job.seg, job.manifest.as_ref());
                    self.seals.lock().pending.remove(&old.id);
                    self.seals_done.notify_all();
                    r?;
                }
            }
        } else if let Some(m) = manifest {
            if let Err(e) = self.store_manifest(durable, &m) {
                // The seal stands; the previous manifest stays valid and the next seal retries.
                tracing::error!(namespace = %self.name, error = %e, "cannot write the recovery manifest");
            }
        }
        self.events
            .lock()
            .push(Event::Sealed(old.id, old.path.clone()));
        Ok(captured)
    }

    /// fsync of a sealed segment's file.
    fn sync_sealed(seg: &Segment) -> Result<()> {
        if let Some(f) = seg
            .handle()
            .map_err(|e| Error::io(format!("open {}", seg.path.display()), e))?
        {
            f.sync_all()
                .map_err(|e| Error::io(format!("sync {}", seg.path.display()), e))?;
        }
        Ok(())
    }

    /// The I/O of a seal, in the order that keeps a crash safe: the segment durable first, then
    /// the snapshot and manifest that describe it. An error is the segment's fsync failing.
    pub(crate) fn finish_seal(
        &self,
        durable: bool,
        seg: &Segment,
        manifest: Option<&Manifest>,
    ) -> Result<()> {
        if durable {
            Self::sync_sealed(seg)?;
            // The next segment was created unsynced: its directory entry becomes durable here,
            // before any sync (which waits for this job) can acknowledge a write to it.
            crate::segment::sync_dir(&self.dir)
                .map_err(|e| Error::io(format!("sync directory {}", self.dir.display()), e))?;
        }
        if let Some(m) = manifest {
            if let Err(e) = self.store_manifest(durable, m) {
                // The seal stands; the previous manifest stays valid and the next seal retries.
                tracing::error!(namespace = %self.name, error = %e, "cannot write the recovery manifest");
            }
        }
        Ok(())
    }

    /// Runs one job of the seal thread, telling `announce` (the observer) of the seal unless
    /// the segment's fsync failed; a synced segment it arms for its page-cache re-layout (see
    /// [`Namespace::arm_relayout`]).
    pub(crate) fn run_seal_job(job: &SealJob, durable: bool, announce: impl FnOnce()) {
        let ns = &job.ns;
        let r = ns.finish_seal(durable, &job.seg, job.manifest.as_ref());
        if r.is_ok() && durable {
            // Before a sync waiting for this seal returns, so that gets after it count.
            ns.arm_relayout(job.seg.id);
        }
        let mut q = ns.seals.lock();
        q.pending.remove(&job.seg.id);
        let ok = match r {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(namespace = %ns.name, segment = job.seg.id, error = %e, "sealing failed: syncs of this namespace fail from now on");
                q.failed.get_or_insert_with(|| e.to_string());
                false
            }
        };
        if ok {
            q.unannounced += 1;
        }
        drop(q);
        // Holders of the writer waiting for durability go on before the observer is called,
        // so an observer may write to the engine.
        ns.seals_done.notify_all();
        if ok {
            announce();
            ns.seals.lock().unannounced -= 1;
            ns.seals_done.notify_all();
        }
    }

    /// Waits until the seal thread has finished every seal of this namespace queued so far.
    /// Callers may hold the writer (the seal thread never takes it), never `state`. Returns at
    /// once on the seal thread itself (an observer it calls may call back into the engine):
    /// it cannot wait for the seals queued behind the one it is reporting.
    pub(crate) fn wait_sealed(&self) {
        if ON_SEAL_THREAD.with(Cell::get) {
            return;
        }
        let mut q = self.seals.lock();
        while !q.pending.is_empty() {
            self.seals_done.wait(&mut q);
        }
    }

    /// [`Namespace::wait_sealed`], then fails if a seal's fsync failed: what a sync must do
    /// before it reports everything written so far durable.
    ///
    /// Also waits for the observer to have been told of those seals, so whoever syncs knows
    /// the observer (the backup tier) has heard of every segment sealed before. Never called
    /// with the writer held: an observer may take it.
    pub(crate) fn settle(&self) -> Result<()> {
        self.settle_with(true)
    }

    /// [`Namespace::settle`] without waiting for the observer: for holders of the writer.
    pub(crate) fn settle_durable(&self) -> Result<()> {
        self.settle_with(false)
    }

    fn settle_with(&self, announced: bool) -> Result<()> {
        if ON_SEAL_THREAD.with(Cell::get) {
            return Ok(());
        }
        let mut q = self.seals.lock();
        while !q.pending.is_empty() || (announced && q.unannounced > 0) {
            self.seals_done.wait(&mut q);
        }
        match &q.failed {
            None => Ok(()),
            Some(why) => Err(Error::io(
                format!("namespace {}: an earlier seal failed", self.name),
                std::io::Error::other(why.clone()),
            )),
        }
    }

    /// Writes the index snapshot covering everything up to the writer's end. Failure only
    /// costs a longer replay on the next open, so it is logged, not returned.
    pub(crate) fn write_snapshot_locked(&self, w: &Writer) {
        // Never a snapshot past a segment whose fsync is still queued (see `load_index`).
        self.wait_sealed();
        let st = self.state.read();
        if st.deleted {
            return;
        }
        match st.index.write_snapshot(&self.dir, loc(w.seg.id, w.end)) {
            Ok(n) => {
                drop(st);
                self.state.write().snapshot_bytes = n;
            }
            Err(e) => {
                tracing::warn!(namespace = %self.name, error = %e, "cannot write index snapshot")
            }
        }
    }

    // ----- data operations -----------------------------------------------------------------

    /// `Store::set_at`; also says whether the write sealed a segment.
    pub fn set(
        &self,
        shared: &Shared,
        key: Option<&[u8]>,
        value: &[u8],
        ts: Option<Timestamp>,
    ) -> Result<(SetOutcome, bool)> {
        let mut w = self.writer.lock();
        let before = w.seg.id;
        let out = self.set_locked(shared, &mut w, key, value, ts)?;
        let sealed = w.seg.id != before;
        let upto = self.tail.load(Ordering::Acquire);
        drop(w);
        if out.written() {
            self.wait_group_commit(shared, upto)?;
        }
        Ok((out, sealed))
    }

    fn set_locked(
        &self,
        shared: &Shared,
        w: &mut Writer,
        key: Option<&[u8]>,
        value: &[u8],
        ts: Option<Timestamp>,
    ) -> Result<SetOutcome> {
        check_value(value)?;
        if let Some(k) = key {
            if k.len() > MAX_KEY_LEN {
                return Err(Error::TooLarge {
                    what: "key",
                    len: k.len(),
                    max: MAX_KEY_LEN,
                });
            }
        }
        let st = self.state.read();
        self.check_writable(&st)?;
        let mode = st.desc.mode;
        // Step 4 of 0-db's order: find the live entry, if any.
        let (key_bytes, existing, key_error): (Vec<u8>, Option<KeyState>, Option<Error>) =
            match (mode, key) {
                (Mode::User, Some(k)) if !k.is_empty() => (k.to_vec(), st.index.live(k), None),
                (Mode::User, _) => (
                    Vec::new(),
                    None,
                    Some(Error::InvalidArgument("key needed (user mode)".into())),
                ),
                (Mode::Seq, None) => (st.index.next_slot.to_le_bytes().to_vec(), None, None),
                (Mode::Seq, Some([])) => (st.index.next_slot.to_le_bytes().to_vec(), None, None),
                (Mode::Seq, Some(k)) => match st.index.live(k) {
                    Some(s) if k.len() == SEQ_KEY_LEN => (k.to_vec(), Some(s), None),
                    _ => (
                        Vec::new(),
                        None,
                        Some(Error::InvalidArgument(
                            "invalid key, only update authorized (sequential mode)".into(),
                        )),
                    ),
                },
            };
        if st.desc.worm && existing.is_some() {
            return Err(Error::ReadOnly {
                reason: ReadOnlyReason::Worm,
                what: self.name.clone(),
            });
        }
        let old_len = existing.map(|s| u64::from(s.value_len)).unwrap_or(0);
        if st.desc.max_size > 0
            && st.index.live_bytes + value.len() as u64 > st.desc.max_size + old_len
        {
            return Err(Error::NoSpace(format!(
                "namespace {} is limited to {} bytes ({} used)",
                self.name, st.desc.max_size, st.index.live_bytes
            )));
        }
        if let Some(e) = key_error {
            return Err(e);
        }
        if let Some(ex) = existing {
            if ex.value_len as usize == value.len() && ex.value_crc == value_crc(value) {
                let seg = self.segment_of(&st, ex.loc)?;
                drop(st);
                if seg.is_offloaded() {
                    // Comparing would fetch from the cold tier with the writer held, stalling
                    // every write to this namespace for the fetch; a new version is correct.
                    return self.write_version(shared, w, key_bytes, value, ts, mode, false);
                }
                // 0-db compares the stored bytes, not just the checksum. If they cannot be read
                // (damaged, or offloaded and the cold tier is down) writing a new version is
                // always correct, and repairs a damaged one.
                match self.read_known(shared, &seg, loc_offset(ex.loc), &key_bytes, ex.value_len) {
                    Ok((_, old)) if old == value => {
                        return Ok(SetOutcome::Unchanged { key: key_bytes })
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e,
                            Error::Corrupt { .. } | Error::Unavailable(_) | Error::Timeout(_)
                        ) =>
                    {
                        tracing::warn!(namespace = %self.name, error = %e, "cannot compare with the stored value; writing a new version");
                    }
                    Err(e) => return Err(e),
                }
                return self.write_version(shared, w, key_bytes, value, ts, mode, false);
            }
        }
        drop(st);
        self.write_version(shared, w, key_bytes, value, ts, mode, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_version(
        &self,
        shared: &Shared,
        w: &mut Writer,
        key: Vec<u8>,
        value: &[u8],
        ts: Option<Timestamp>,
        mode: Mode,
        tombstone: bool,
    ) -> Result<SetOutcome> {
        let (seqno, prev, slot) = {
            let st = self.state.read();
            let prev = st.index.keys.get(&key[..]).map(|s| s.loc).unwrap_or(0);
            let slot = if mode == Mode::Seq && !tombstone {
                st.index.next_slot + 1
            } else {
                0
            };
            let deferred = w.batch.as_ref().map_or(0, |b| b.deferred.len() as u64);
            (st.index.next_seqno + deferred, prev, slot)
        };
        let header = RecordHeader {
            flags: if tombstone { FLAG_TOMBSTONE } else { 0 },
            key_len: key.len() as u8,
            value_len: value.len() as u32,
            value_crc: value_crc(value),
            timestamp: ts.unwrap_or_else(qsfs_core::now),
            seqno,
            prev,
            origin: 0,
            slot,
        };
        let len = crate::segment::record_len(key.len(), value.len());
        let batched = if value.len() < UNBATCHED_VALUE {
            self.batch_room(shared, w, len)?
        } else {
            // Copying a large value into the batch costs more than a write of its own; the
            // batch goes out first, so records still land in the order they were set.
            self.flush_batch(shared, w)?;
            None
        };
        if let Some(item) = batched {
            let at = loc(w.seg.id, w.end + self.batch_len(w));
            if let Some(b) = w.batch.as_mut() {
                crate::segment::append_record(&header, &key, value, &mut b.pending);
                b.deferred.push(Deferred {
                    item,
                    key: key.clone(),
                    header,
                    at,
                });
                return Ok(SetOutcome::Written { key });
            }
        }
        let mut head = std::mem::take(&mut w.buf);
        head.clear();
        crate::segment::append_record_head(&header, &key, &mut head);
        let appended = self.append_with(shared, w, &[&head, value], true);
        w.buf = head;
        let at = appended?;
        let mut st = self.state.write();
        st.index.observe(&header, at);
        st.index.apply(&key, KeyState::of(&header, at));
        Ok(SetOutcome::Written { key })
    }

    fn batch_len(&self, w: &Writer) -> u64 {
        w.batch.as_ref().map_or(0, |b| b.pending.len() as u64)
    }

    /// While batching: makes room for a record of `len` bytes in the batch (writing out what it
    /// holds if the record would not fit in the current segment or the batch is full) and
    /// returns the item number to defer it under; `None` = append it now (no batch, or the
    /// record needs a rotation first).
    fn batch_room(&self, shared: &Shared, w: &mut Writer, len: u64) -> Result<Option<usize>> {
        let Some(b) = &w.batch else { return Ok(None) };
        let item = b.item;
        let too_old = shared
            .config
            .max_segment_age
            .is_some_and(|a| w.opened.elapsed() >= a);
        let pending = b.pending.len() as u64;
        if too_old
            || w.end + pending + len > shared.config.max_segment_size
            || pending as usize >= BATCH_MAX_BYTES
        {
            self.flush_batch(shared, w)?;
            if too_old || w.end + len > shared.config.max_segment_size {
                // The normal append rotates first.
                return Ok(None);
            }
        }
        Ok(Some(item))
    }

    /// Writes the batch's records with one write and puts them in the index. On failure none
    /// of them is written (the file is cut back) and their items are marked failed.
    fn flush_batch(&self, shared: &Shared, w: &mut Writer) -> Result<()> {
        let Some(b) = w.batch.as_mut() else {
            return Ok(());
        };
        if b.deferred.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut b.pending);
        let mut deferred = std::mem::take(&mut b.deferred);
        let written = self.append(shared, w, &pending);
        pending.clear();
        let result = match written {
            Ok(at) => {
                debug_assert_eq!(deferred.first().map(|d| d.at), Some(at));
                let mut st = self.state.write();
                for d in deferred.drain(..) {
                    st.index.observe(&d.header, d.at);
                    st.index.apply(&d.key, KeyState::of(&d.header, d.at));
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(namespace = %self.name, error = %e, "batched append failed");
                if let Some(b) = w.batch.as_mut() {
                    b.failed.extend(deferred.iter().map(|d| d.item));
                }
                deferred.clear();
                Err(e)
            }
        };
        // Both buffers go back, empty, for the batch's next records.
        if let Some(b) = w.batch.as_mut() {
            b.pending = pending;
            b.deferred = deferred;
        }
        result
    }

    /// Sets many keys under one hold of the writer, appending their records with as few
    /// writes as possible: what a pipelining client sends in one read costs one `pwrite` (and
    /// under [`Durability::EveryWrite`] one sync) instead of one each. Each item gets the
    /// outcome [`Namespace::set`] would give it, in order; everything is written (and synced as
    /// the durability asks) before this returns, so a caller acknowledges nothing unwritten.
    pub fn set_many(
        &self,
        shared: &Shared,
        items: &[(&[u8], &[u8])],
    ) -> (Vec<Result<SetOutcome>>, bool) {
        let mut w = self.writer.lock();
        let before = w.seg.id;
        w.batch = Some(Batch {
            pending: std::mem::take(&mut w.batch_buf),
            deferred: std::mem::take(&mut w.batch_deferred),
            ..Batch::default()
        });
        let mut results: Vec<Result<SetOutcome>> = Vec::with_capacity(items.len());
        // The keys of the records the batch holds. A scan of the batch per item made a
        // pipeline of thousands of small SETs quadratic (4,000 deep: 80 % of the server's
        // time in memcmp).
        let mut held: HashSet<&[u8]> = HashSet::new();
        for (i, &(key, value)) in items.iter().enumerate() {
            // A record the batch holds is not in the index yet: whatever needs the index to
            // know it (the same key again, sequential ids, the size limit) writes the batch
            // out first.
            let must_flush = w.batch.as_ref().is_some_and(|b| {
                !b.deferred.is_empty()
                    && (held.contains(key) || {
                        let st = self.state.read();
                        st.desc.mode != Mode::User || st.desc.max_size > 0
                    })
            });
            if must_flush {
                let _ = self.flush_batch(shared, &mut w);
            }
            if let Some(b) = w.batch.as_mut() {
                b.item = i;
            }
            let given = if key.is_empty() { None } else { Some(key) };
            results.push(self.set_locked(shared, &mut w, given, value, None));
            // The batch may have been written out on the way (it is then empty, or holds
            // just this record), and may hold this record.
            let deferred = w.batch.as_ref().map_or(&[][..], |b| &b.deferred[..]);
            let holds_this = deferred.last().is_some_and(|d| d.item == i);
            if deferred.is_empty() || (deferred.len() == 1 && holds_this) {
                held.clear();
            }
            if holds_this {
                held.insert(key);
            }
        }
        let _ = self.flush_batch(shared, &mut w);
        let failed = match w.batch.take() {
            Some(mut b) => {
                if b.pending.capacity() <= 2 * BATCH_MAX_BYTES {
                    b.pending.clear();
                    w.batch_buf = b.pending;
                }
                b.deferred.clear();
                w.batch_deferred = b.deferred;
                b.failed
            }
            None => Vec::new(),
        };
        for i in failed {
            results[i] = Err(Error::Unavailable(format!(
                "writing to namespace {} failed (see the log)",
                self.name
            )));
        }
        let sealed = w.seg.id != before;
        let upto = self.tail.load(Ordering::Acquire);
        drop(w);
        if results
            .iter()
            .any(|r| r.as_ref().is_ok_and(SetOutcome::written))
        {
            if let Err(e) = self.wait_group_commit(shared, upto) {
                let why = e.to_string();
                for r in results.iter_mut() {
                    if r.as_ref().is_ok_and(SetOutcome::written) {
                        *r = Err(Error::Unavailable(why.clone()));
                    }
                }
            }
        }
        (results, sealed)
    }

    /// `Store::delete_at`; says whether the write sealed a segment.
    pub fn delete(&self, shared: &Shared, key: &[u8], ts: Option<Timestamp>) -> Result<bool> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("empty key".into()));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(Error::TooLarge {
                what: "key",
                len: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        let mut w = self.writer.lock();
        let st = self.state.read();
        self.check_writable(&st)?;
        if st.index.live(key).is_none() {
            return Err(Error::NotFound(format!("key in namespace {}", self.name)));
        }
        if st.desc.worm {
            return Err(Error::ReadOnly {
                reason: ReadOnlyReason::Worm,
                what: self.name.clone(),
            });
        }
        let mode = st.desc.mode;
        drop(st);
        let before = w.seg.id;
        self.write_version(shared, &mut w, key.to_vec(), &[], ts, mode, true)?;
        let sealed = w.seg.id != before;
        let upto = self.tail.load(Ordering::Acquire);
        drop(w);
        self.wait_group_commit(shared, upto)?;
        Ok(sealed)
    }

    /// Under [`Durability::Group`], returns once a sync covers everything up to `upto`. The
    /// first waiter syncs for everyone whose write is already in the file; writes that arrive
    /// meanwhile wait for the next sync, so concurrent writers share fsyncs.
    fn wait_group_commit(&self, shared: &Shared, upto: Loc) -> Result<()> {
        if shared.config.durability != Durability::Group {
            return Ok(());
        }
        let mut g = self.group.lock();
        loop {
            if g.synced >= upto {
                return Ok(());
            }
            if g.syncing {
                self.group_done.wait(&mut g);
                continue;
            }
            g.syncing = true;
            drop(g);
            // Everything before the current tail is in the current segment or in sealed ones,
            // synced once the seal thread is done with them.
            let (seg, target) = {
                let w = self.writer.lock();
                (w.seg.clone(), self.tail.load(Ordering::Acquire))
            };
            let r = match self.settle() {
                Err(e) => {
                    let mut g = self.group.lock();
                    g.syncing = false;
                    self.group_done.notify_all();
                    return Err(e);
                }
                Ok(()) => match seg.handle() {
                    Ok(Some(f)) => f.sync_data(),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                },
            };
            g = self.group.lock();
            g.syncing = false;
            if r.is_ok() {
                g.synced = g.synced.max(target);
                if loc_segment(target) == seg.id {
                    seg.note_synced(loc_offset(target));
                }
            }
            self.group_done.notify_all();
            r.map_err(|e| Error::io(format!("sync {}", seg.path.display()), e))?;
        }
    }

    /// `Store::get`.
    pub fn get(&self, shared: &Shared, key: &[u8]) -> Result<Option<Entry>> {
        let mut retried = false;
        loop {
            let (ks, seg) = {
                let st = self.state.read();
                self.check_readable(&st)?;
                let Some(ks) = st.index.live(key) else {
                    return Ok(None);
                };
                (ks, self.segment_of(&st, ks.loc)?)
            };
            match self.read_known(shared, &seg, loc_offset(ks.loc), key, ks.value_len) {
                Ok((h, value)) => {
                    if seg.get_served() {
                        Self::ask_relayout(shared, &seg);
                    }
                    return Ok(Some(Entry {
                        value,
                        timestamp: h.timestamp,
                    }));
                }
                Err(e) if !retried && matches!(e, Error::Io { .. } | Error::Unavailable(_)) => {
                    // Compaction may have moved the record and removed its file after the
                    // descriptor budget closed it: then the index says where it went.
                    let st = self.state.read();
                    let moved = st.index.live(key).map(|s| s.loc) != Some(ks.loc)
                        || st
                            .segments
                            .get(&seg.id)
                            .is_none_or(|s| !Arc::ptr_eq(s, &seg));
                    if !moved {
                        return Err(e);
                    }
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Queues `seg`, due for its page-cache re-layout, to the seal thread; never waits for it
    /// (the queue is unbounded, and a segment is due once at most).
    #[cold]
    fn ask_relayout(shared: &Shared, seg: &Arc<Segment>) {
        let sent = shared
            .sealer
            .lock()
            .as_ref()
            .is_some_and(|tx| tx.send(SealMsg::Relayout(Arc::downgrade(seg))).is_ok());
        // Not sent only while the engine closes: then it stays busy, never asked again.
        if sent {
            shared.relayouts_asked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes sealed segment `id`, just synced, a candidate for the page-cache re-layout (see
    /// [`crate::segment::relayout_page_cache`]) once gets are served from it.
    pub(crate) fn arm_relayout(&self, id: u32) {
        let Some(seg) = self.state.read().segments.get(&id).cloned() else {
            return;
        };
        seg.arm_relayout();
    }

    /// `Store::meta`.
    pub fn meta(&self, key: &[u8]) -> Result<Option<KeyMeta>> {
        let st = self.state.read();
        self.check_readable(&st)?;
        Ok(st.index.live(key).map(|s| KeyMeta {
            key: key.to_vec(),
            length: u64::from(s.value_len),
            timestamp: s.timestamp,
        }))
    }

    /// `Store::check`.
    pub fn check(&self, shared: &Shared, key: &[u8]) -> Result<Option<bool>> {
        match self.get(shared, key) {
            Ok(Some(_)) => Ok(Some(true)),
            Ok(None) => Ok(None),
            Err(Error::Corrupt { .. }) => Ok(Some(false)),
            Err(e) => Err(e),
        }
    }

    /// `Store::scan`.
    pub fn scan(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
        order: ScanOrder,
    ) -> Result<ScanPage> {
        let after = cursor.map(|c| decode_cursor(&self.name, c)).transpose()?;
        let limit = limit.max(1);
        let st = self.state.read();
        self.check_readable(&st)?;
        let mut entries = Vec::new();
        let mut last = None;
        let mut more = false;
        let mut push = |seqno: u64, key: &IndexKey| -> bool {
            if entries.len() == limit {
                more = true;
                return false;
            }
            if let Some(s) = st.index.keys.get(key) {
                entries.push(KeyMeta {
                    key: key.to_vec(),
                    length: u64::from(s.value_len),
                    timestamp: s.timestamp,
                });
                last = Some(seqno);
            }
            true
        };
        match order {
            ScanOrder::Forward => {
                let lo = after.map(Bound::Excluded).unwrap_or(Bound::Unbounded);
                for (s, k) in st.index.order.range((lo, Bound::Unbounded)) {
                    if !push(*s, k) {
                        break;
                    }
                }
            }
            ScanOrder::Reverse => {
                let hi = after.map(Bound::Excluded).unwrap_or(Bound::Unbounded);
                for (s, k) in st.index.order.range((Bound::Unbounded, hi)).rev() {
                    if !push(*s, k) {
                        break;
                    }
                }
            }
        }
        let next = if more {
            last.map(|seqno| encode_cursor(&self.name, seqno, 0))
        } else {
            None
        };
        Ok(ScanPage { entries, next })
    }

    /// `Store::cursor_after`.
    pub fn cursor_after(&self, key: &[u8]) -> Result<Cursor> {
        let st = self.state.read();
        self.check_readable(&st)?;
        let s = st
            .index
            .live(key)
            .ok_or_else(|| Error::NotFound(format!("key in namespace {}", self.name)))?;
        Ok(encode_cursor(&self.name, s.seqno, s.value_crc))
    }

    /// `Store::history`.
    pub fn history(&self, shared: &Shared, key: &[u8], at: Option<VersionId>) -> Result<Version> {
        self.walk_history(shared, key, at, true)
    }

    /// `Store::version_before`: the `previous` link of a version, read from its record header
    /// (whose checksum covers the key), never from its value.
    pub fn version_before(
        &self,
        shared: &Shared,
        key: &[u8],
        at: Option<VersionId>,
    ) -> Result<Option<VersionId>> {
        Ok(self.walk_history(shared, key, at, false)?.previous)
    }

    /// Walks `key`'s chain from its newest version to the one `at` names (the live one when
    /// `None`); reads and verifies that version's value only if `with_value`.
    fn walk_history(
        &self,
        shared: &Shared,
        key: &[u8],
        at: Option<VersionId>,
        with_value: bool,
    ) -> Result<Version> {
        let (head, target) = {
            let st = self.state.read();
            self.check_readable(&st)?;
            let head = st
                .index
                .keys
                .get(key)
                .ok_or_else(|| Error::NotFound(format!("key in namespace {}", self.name)))?;
            let target = match at {
                None if head.deleted => {
                    return Err(Error::NotFound(format!(
                        "key in namespace {} (deleted)",
                        self.name
                    )))
                }
                None => head.loc,
                Some(v) => st.resolve(u64::from_le_bytes(v.0)).ok_or_else(|| {
                    Error::InvalidArgument("version does not belong to this key".into())
                })?,
            };
            (head, target)
        };
        // Walk the chain from the newest version: the version asked for must be on it, so an
        // 8-byte id cannot be used to read another key's (or a deleted key's) data.
        let mut cur = head.loc;
        for _ in 0..1_000_000u32 {
            let seg = {
                let st = self.state.read();
                self.segment_of(&st, cur)?
            };
            let (header, k, value) =
                self.read_at(shared, &seg, loc_offset(cur), with_value && cur == target)?;
            if k != key {
                return Err(Error::corrupt(
                    seg_location(&self.name, seg.id, loc_offset(cur)),
                    "history chain leads to another key",
                ));
            }
            let prev = self.state.read().resolve(header.prev);
            if cur == target {
                return Ok(Version {
                    value,
                    timestamp: header.timestamp,
                    deleted: header.is_tombstone(),
                    previous: prev.map(|p| VersionId(p.to_le_bytes())),
                });
            }
            match prev {
                Some(p) if p != cur => cur = p,
                _ => break,
            }
        }
        Err(Error::InvalidArgument(
            "version does not belong to this key".into(),
        ))
    }

    // ----- namespace operations --------------------------------------------------------------

    /// `Store::namespace_info`.
    pub fn info(&self) -> NamespaceInfo {
        let stats = self.stats();
        let st = self.state.read();
        NamespaceInfo {
            name: self.name.clone(),
            mode: st.desc.mode,
            entries: stats.entries,
            data_bytes: stats.live_bytes,
            disk_bytes: stats.disk_bytes,
            index_bytes: stats.index_bytes,
            password: st.desc.password.is_some(),
            public: st.desc.public,
            max_size: st.desc.max_size,
            worm: st.desc.worm,
            locked: st.locked || st.frozen,
            frozen: st.frozen,
            current_segment: u64::from(stats.current_segment),
            path: Some(self.dir.clone()),
        }
    }

    /// Counters for INFO/NSINFO and operators.
    pub fn stats(&self) -> NamespaceStats {
        // A segment is reported sealed once it is durable, which the backup tier relies on.
        self.wait_sealed();
        let tail = self.tail.load(Ordering::Acquire);
        // Only on the seal thread can seals still be pending here. Taken before `state` (the
        // seal thread never holds both).
        let pending = self.seals.lock().pending.clone();
        let st = self.state.read();
        let mut segments = Vec::new();
        let mut disk = st.snapshot_bytes;
        for (id, s) in &st.segments {
            let length = if *id == loc_segment(tail) {
                loc_offset(tail)
            } else {
                s.len()
            };
            let size = if s.file.is_some() { length } else { 0 };
            disk += size;
            segments.push(SegmentStats {
                id: *id,
                size,
                length,
                live: st.index.seg_live.get(id).copied().unwrap_or(0),
                sealed: *id != loc_segment(tail) && !pending.contains(id),
                offloaded: s.file.is_none(),
                path: s.path.clone(),
                last_read: s.last_read.load(Ordering::Relaxed),
            });
        }
        NamespaceStats {
            entries: st.index.live_count(),
            live_bytes: st.index.live_bytes,
            disk_bytes: disk,
            index_bytes: st.index.memory_bytes() + st.snapshot_bytes,
            current_segment: loc_segment(tail),
            current_offset: loc_offset(tail),
            next_id: st.index.next_slot,
            segments,
            damage: st.damage.clone(),
        }
    }

    /// `Store::namespace_set`.
    pub fn set_property(&self, shared: &Shared, property: NamespaceProperty) -> Result<()> {
        let w = self.writer.lock();
        let mut st = self.state.write();
        if st.deleted {
            return Err(Error::NotFound(format!("namespace {}", self.name)));
        }
        let mut desc = st.desc.clone();
        match property {
            NamespaceProperty::Password(None) => desc.password = None,
            NamespaceProperty::Password(Some(p)) => {
                if p.len() > MAX_PASSWORD_LEN {
                    return Err(Error::TooLarge {
                        what: "password",
                        len: p.len(),
                        max: MAX_PASSWORD_LEN,
                    });
                }
                desc.password = Some(PasswordRecord::new(&p, &self.name, &shared.key)?);
            }
            NamespaceProperty::Public(b) => desc.public = b,
            NamespaceProperty::MaxSize(n) => desc.max_size = n,
            NamespaceProperty::Worm(b) => desc.worm = b,
            NamespaceProperty::Mode(m) => {
                if let Some(only) = shared.config.single_mode {
                    if m != only || m != desc.mode {
                        return Err(Error::Unsupported(format!(
                            "this engine is restricted to {only} mode"
                        )));
                    }
                }
                if m != desc.mode {
                    let fresh = st.index.next_seqno <= 1
                        && desc.seqno_floor == 0
                        && st.segments.len() == 1
                        && w.end == SEGMENT_HEADER_LEN;
                    if !fresh {
                        return Err(Error::InvalidArgument(format!(
                            "cannot change mode of used namespace {}",
                            self.name
                        )));
                    }
                    desc.mode = m;
                }
            }
            NamespaceProperty::Lock(b) => {
                st.locked = b;
                if !b {
                    st.frozen = false;
                }
                self.events.lock().push(Event::Updated);
                return Ok(());
            }
            NamespaceProperty::Freeze(b) => {
                st.frozen = b;
                self.events.lock().push(Event::Updated);
                return Ok(());
            }
            other => return Err(Error::Unsupported(format!("namespace property {other:?}"))),
        }
        desc.store(&self.dir)?;
        st.desc = desc;
        drop(st);
        self.events.lock().push(Event::Updated);
        self.bump_manifest_locked(shared, &w)
    }

    /// `Store::namespace_authenticate`.
    pub fn authenticate(&self, shared: &Shared, credential: Credential<'_>) -> Result<bool> {
        let record = {
            let st = self.state.read();
            if st.deleted {
                return Err(Error::NotFound(format!("namespace {}", self.name)));
            }
            match &st.desc.password {
                None => return Ok(true),
                Some(r) => r.clone(),
            }
        };
        match credential {
            Credential::Plain(p) => Ok(record.verify_plain(p)),
            Credential::Challenge { nonce, digest } => {
                record.verify_challenge(&self.name, &shared.key, nonce, digest)
            }
        }
    }

    /// `Store::flush_namespace`: removes every segment and starts empty, keeping properties.
    /// Sequence numbers, ids and segment ids continue where they were, so nothing old can be
    /// mistaken for new (a seq id is never handed out twice).
    pub fn flush(&self, shared: &Shared) -> Result<()> {
        let mut w = self.writer.lock();
        // A queued seal would write its manifest and snapshot after the flush's.
        self.wait_sealed();
        {
            let st = self.state.read();
            self.check_writable(&st)?;
        }
        let _ = std::fs::remove_file(self.dir.join("index"));
        let mut st = self.state.write();
        let next_id = w.seg.id + 1;
        // Oldest first: if this is interrupted, what remains is the newest versions, never a
        // resurrected older one.
        let ids: Vec<u32> = st.segments.keys().copied().collect();
        let mut removed = Vec::new();
        for id in ids {
            if let Some(s) = st.segments.get(&id) {
                if s.file.is_some() {
                    if let Err(e) = std::fs::remove_file(&s.path) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            return Err(Error::io(format!("remove {}", s.path.display()), e));
                        }
                    }
                }
            }
            st.segments.remove(&id);
            removed.push(id);
        }
        let seg = Arc::new(
            Segment::create(&self.dir, next_id, qsfs_core::now())
                .map_err(|e| Error::io(format!("create segment in {}", self.dir.display()), e))?,
        );
        st.segments.insert(next_id, seg.clone());
        let mut desc = st.desc.clone();
        desc.seqno_floor = st.index.next_seqno;
        desc.slot_floor = st.index.next_slot;
        desc.segment_floor = next_id;
        desc.offloaded.clear();
        desc.store(&self.dir)?;
        st.index = Index::new(desc.seqno_floor, desc.slot_floor);
        st.desc = desc;
        st.snapshot_bytes = 0;
        drop(st);
        w.seg = seg;
        w.end = SEGMENT_HEADER_LEN;
        w.opened = Instant::now();
        self.tail
            .store(loc(next_id, SEGMENT_HEADER_LEN), Ordering::Release);
        {
            let mut ev = self.events.lock();
            for id in removed {
                ev.push(Event::Removed(id));
            }
            ev.push(Event::Updated);
        }
        // An empty manifest, or recovery would bring the flushed data back.
        self.write_manifest_locked(shared, &w)
    }

    /// Forces the current segment to stable storage.
    pub fn sync(&self) -> Result<()> {
        // The tail read with the writer held is the end of what the sync below covers.
        let (seg, end) = {
            let w = self.writer.lock();
            (w.seg.clone(), w.end)
        };
        self.dirty.store(false, Ordering::Release);
        // Records written before the current segment are in sealed ones: durable once their
        // seals are done.
        self.settle()?;
        if let Some(f) = seg
            .handle()
            .map_err(|e| Error::io(format!("open {}", seg.path.display()), e))?
        {
            f.sync_data()
                .map_err(|e| Error::io(format!("sync {}", seg.path.display()), e))?;
            seg.note_synced(end);
        }
        Ok(())
    }

    /// Reads the record at (`segment`, `offset`) as stored. `Ok(None)` past the end.
    pub fn read_raw(
        &self,
        shared: &Shared,
        segment: u32,
        offset: u64,
    ) -> Result<Option<RawRecord>> {
        let tail = self.tail.load(Ordering::Acquire);
        let seg = {
            let st = self.state.read();
            self.check_readable(&st)?;
            st.segments
                .get(&segment)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("segment {segment} of {}", self.name)))?
        };
        let end = if segment == loc_segment(tail) {
            loc_offset(tail)
        } else {
            seg.len()
        };
        if offset >= end {
            return Ok(None);
        }
        if offset < SEGMENT_HEADER_LEN {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} is inside the segment header"
            )));
        }
        let (h, key, value) = self.read_at(shared, &seg, offset, true)?;
        Ok(Some(RawRecord {
            key,
            deleted: h.is_tombstone(),
            timestamp: h.timestamp,
            previous: (h.prev != 0).then(|| VersionId(h.prev.to_le_bytes())),
            value_crc: h.value_crc,
            value,
            next_offset: offset + h.record_len(),
        }))
    }

    /// Marks a sealed segment offloaded and removes its local file.
    pub fn offload_segment(&self, shared: &Shared, id: u32) -> Result<()> {
        // The cold tier is asked before the writer is taken: writes go on while it answers
        // (slowly, or not at all while a backend hangs). A sealed segment never changes.
        let local = |st: &NsState| st.segments.get(&id).is_some_and(|s| s.file.is_some());
        let stored = match &shared.cold {
            Some(cold) if local(&self.state.read()) => {
                Some(cold.exists(&cold_key(&self.name, id))?)
            }
            _ => None,
        };
        let w = self.writer.lock();
        // Never remove the file of a segment whose seal (fsync) is still queued.
        self.wait_sealed();
        if id >= w.seg.id {
            return Err(Error::InvalidArgument(format!(
                "segment {id} of {} is not sealed",
                self.name
            )));
        }
        let seg = {
            let st = self.state.read();
            st.segments
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("segment {id} of {}", self.name)))?
        };
        if seg.file.is_none() {
            return Ok(());
        }
        if let Some(cold) = &shared.cold {
            let stored = match stored {
                Some(b) => b,
                None => cold.exists(&cold_key(&self.name, id))?,
            };
            if !stored {
                return Err(Error::InvalidArgument(format!(
                    "segment {id} of {} is not in the cold tier ({}); refusing to remove the only copy",
                    self.name,
                    cold_key(&self.name, id)
                )));
            }
        }
        let mut st = self.state.write();
        let mut desc = st.desc.clone();
        let len = seg.len();
        desc.offloaded.insert(id, len);
        desc.store(&self.dir)?;
        st.desc = desc;
        st.segments.insert(
            id,
            Arc::new(Segment::offloaded(seg.path.clone(), id, len).inherit_last_read(&seg)),
        );
        drop(st);
        std::fs::remove_file(&seg.path)
            .map_err(|e| Error::io(format!("remove {}", seg.path.display()), e))?;
        let _ = crate::segment::sync_dir(&self.dir);
        drop(w);
        Ok(())
    }

    /// Brings an offloaded segment back from the cold tier into a local file.
    pub fn restore_segment(&self, shared: &Shared, id: u32) -> Result<()> {
        let listed = || {
            let st = self.state.read();
            st.segments
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("segment {id} of {}", self.name)))
        };
        let seg = listed()?;
        if seg.file.is_some() {
            return Ok(());
        }
        let cold = shared.cold.as_ref().ok_or_else(|| {
            Error::Unavailable(format!(
                "segment {id} of {} is offloaded and no cold tier is configured",
                self.name
            ))
        })?;
        // A whole segment from the cold tier takes a while: fetched without the writer, so
        // writes to the namespace go on meanwhile.
        let data = cold.get(&cold_key(&self.name, id))?;
        crate::segment::decode_segment_header(&data)
            .map_err(|d| Error::corrupt(format!("cold tier {}", cold_key(&self.name, id)), d))?;
        if data.len() as u64 != seg.offloaded_len {
            return Err(Error::corrupt(
                format!("cold tier {}", cold_key(&self.name, id)),
                format!(
                    "{} bytes, the segment had {}",
                    data.len(),
                    seg.offloaded_len
                ),
            ));
        }
        let _w = self.writer.lock();
        if !Arc::ptr_eq(&listed()?, &seg) {
            // Restored (or replaced) by someone else during the fetch.
            return Ok(());
        }
        let tmp = self.dir.join(format!("{id:010}.seg.tmp"));
        std::fs::write(&tmp, &data)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &seg.path))
            .and_then(|_| crate::segment::sync_dir(&self.dir))
            .map_err(|e| Error::io(format!("restore {}", seg.path.display()), e))?;
        let restored = Segment::open(seg.path.clone(), id, false).map_err(|e| match e {
            OpenError::Io(e) => Error::io(format!("open {}", seg.path.display()), e),
            OpenError::Bad(d) => Error::corrupt(seg.path.display().to_string(), d),
        })?;
        let mut st = self.state.write();
        let mut desc = st.desc.clone();
        desc.offloaded.remove(&id);
        desc.store(&self.dir)?;
        st.desc = desc;
        st.segments
            .insert(id, Arc::new(restored.inherit_last_read(&seg)));
        Ok(())
    }

    /// Re-reads every local segment and checks every record's checksums (a scrub). Returns the
    /// damage found, which is also added to [`NamespaceStats::damage`] and logged. Sealed
    /// segments are read without any lock; the current one up to its committed end.
    pub fn verify(&self) -> Result<Vec<String>> {
        let tail = self.tail.load(Ordering::Acquire);
        let segs: Vec<Arc<Segment>> = self.state.read().segments.values().cloned().collect();
        let mut found = Vec::new();
        for seg in segs {
            let Some(f) = seg
                .handle()
                .map_err(|e| Error::io(format!("open {}", seg.path.display()), e))?
            else {
                continue;
            };
            let len = if seg.id == loc_segment(tail) {
                loc_offset(tail)
            } else {
                f.metadata()
                    .map_err(|e| Error::io(format!("stat {}", seg.path.display()), e))?
                    .len()
            };
            let src = |buf: &mut [u8], off: u64| read_full_at(&f, buf, off);
            let report = scan_segment(&src, len, SEGMENT_HEADER_LEN, |_| {})
                .map_err(|e| Error::io(format!("read {}", seg.path.display()), e))?;
            for (a, b, why) in &report.corrupt {
                found.push(format!(
                    "{} .. {b}: {why}",
                    seg_location(&self.name, seg.id, *a)
                ));
            }
            if report.valid_end < len {
                found.push(format!(
                    "{} .. {len}: no valid record",
                    seg_location(&self.name, seg.id, report.valid_end)
                ));
            }
        }
        for msg in &found {
            tracing::error!(namespace = %self.name, "{msg}");
        }
        let mut st = self.state.write();
        for msg in &found {
            if !st.damage.contains(msg) {
                st.damage.push(msg.clone());
            }
        }
        Ok(found)
    }

    /// Replaces the in-memory state with what is on disk (0-db `RELOAD`).
    pub fn reload(&self, shared: &Shared) -> Result<()> {
        let mut w = self.writer.lock();
        w.seg
            .handle()
            .and_then(|f| f.map(|f| f.sync_data()).transpose())
            .map_err(|e| Error::io("sync before reload", e))?;
        self.write_snapshot_locked(&w);
        let desc = Descriptor::load(&self.dir)?
            .ok_or_else(|| Error::NotFound(format!("namespace {} descriptor", self.name)))?;
        let fresh = Namespace::open(shared, self.dir.clone(), desc)?;
        let new_state = fresh.state.into_inner();
        let new_writer = fresh.writer.into_inner();
        let mut st = self.state.write();
        let (locked, frozen) = (st.locked, st.frozen);
        *st = new_state;
        st.locked = locked;
        st.frozen = frozen;
        *w = new_writer;
        self.tail.store(loc(w.seg.id, w.end), Ordering::Release);
        Ok(())
    }
}

/// Adds one scanned record of segment `id` to the index being rebuilt.
fn index_record(index: &mut Index, id: u32, rec: &crate::segment::ScannedRecord<'_>) {
    let at = loc(id, rec.offset);
    if rec.damaged {
        // Indexed anyway: reads of this key must report the damage, not fall back to an older
        // version.
        tracing::debug!(
            segment = id,
            offset = rec.offset,
            "indexing a record with a damaged value"
        );
    }
    index.observe(&rec.header, at);
    index.apply(rec.key, KeyState::of(&rec.header, at));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_roundtrip_and_reject_garbage() {
        let c = encode_cursor("ns", 12345, 0);
        assert_eq!(c.0.len(), 17);
        assert_eq!(decode_cursor("ns", &c).unwrap(), 12345);
        let with_crc = encode_cursor("ns", 12345, 0xdead_beef);
        assert_eq!(decode_cursor("ns", &with_crc).unwrap(), 12345);
        assert_eq!(with_crc.0[9..13], 0xdead_beef_u32.to_le_bytes());
        let mut bad = c.clone();
        bad.0[3] ^= 1;
        assert!(decode_cursor("ns", &bad).is_err());
        assert!(decode_cursor("ns", &Cursor(vec![0; 17])).is_err());
        assert!(decode_cursor("ns", &Cursor(vec![0; 16])).is_err());
    }

    #[test]
    fn a_cursor_belongs_to_its_namespace() {
        let c = encode_cursor("alpha", 7, 0);
        let err = decode_cursor("beta", &c).unwrap_err().to_string();
        assert!(
            err.contains("invalid scan cursor for namespace beta"),
            "{err}"
        );
        assert_eq!(decode_cursor("alpha", &c).unwrap(), 7);
    }
}
