//! Segment files: the append-only logs that hold every version of every key.
//!
//! A namespace's data lives in numbered segment files (`0000000000.seg`, ...). Only the newest one
//! is appended to; every older one is *sealed* and never changes again, which is what lets the
//! backup tier copy it away and compaction rewrite it. The byte layout is documented in
//! `docs/engine-format.md`; this module is its only encoder and decoder.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Magic at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"QSFSSEG1";
/// Format version written in segment headers.
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Size of the segment file header; the first record starts here.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 32;
/// Magic at the start of every record, used to find the next record after damage.
pub(crate) const RECORD_MAGIC: [u8; 4] = *b"QSR1";
/// Size of a record header; the key follows, then the value.
pub(crate) const RECORD_HEADER_LEN: usize = 64;

/// The record is a deletion (tombstone): its value is empty.
pub(crate) const FLAG_TOMBSTONE: u8 = 1;
/// The record was copied forward by compaction; `origin` says from where.
pub(crate) const FLAG_COPY: u8 = 2;

/// A location inside a namespace: `segment id << 32 | byte offset`. 0 means "none" (offset 0 is
/// the segment header, never a record). This is also the 8-byte [`qsfs_core::VersionId`].
pub(crate) type Loc = u64;

/// Builds a [`Loc`].
pub(crate) fn loc(segment: u32, offset: u64) -> Loc {
    (u64::from(segment) << 32) | (offset & 0xffff_ffff)
}

/// The segment id of a [`Loc`].
pub(crate) fn loc_segment(l: Loc) -> u32 {
    (l >> 32) as u32
}

/// The byte offset of a [`Loc`].
pub(crate) fn loc_offset(l: Loc) -> u64 {
    l & 0xffff_ffff
}

/// File name of segment `id`.
pub(crate) fn segment_file_name(id: u32) -> String {
    format!("{id:010}.seg")
}

/// Parses a segment file name back into its id.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The fixed-size part of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// [`FLAG_TOMBSTONE`], [`FLAG_COPY`].
    pub flags: u8,
    /// Key length (1..=255).
    pub key_len: u8,
    /// Value length.
    pub value_len: u32,
    /// crc32c of the value.
    pub value_crc: u32,
    /// Seconds since the epoch.
    pub timestamp: u64,
    /// Per-namespace write sequence number: total order of writes, kept by compaction copies.
    pub seqno: u64,
    /// The previous version of the same key, 0 if none.
    pub prev: Loc,
    /// For a compaction copy, where the copied record was; else 0.
    pub origin: Loc,
    /// Sequential mode: the id slot this write consumed, plus one (0 = none).
    pub slot: u64,
}

impl RecordHeader {
    /// True for a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    /// Length of the whole record on disk.
    pub fn record_len(&self) -> u64 {
        record_len(self.key_len as usize, self.value_len as usize)
    }

    fn encode_fields(&self, out: &mut [u8; RECORD_HEADER_LEN]) {
        out[0..4].copy_from_slice(&RECORD_MAGIC);
        out[8] = self.flags;
        out[9] = self.key_len;
        out[10..12].copy_from_slice(&[0, 0]);
        out[12..16].copy_from_slice(&self.value_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.value_crc.to_le_bytes());
        out[20..24].copy_from_slice(&[0; 4]);
        out[24..32].copy_from_slice(&self.timestamp.to_le_bytes());
        out[32..40].copy_from_slice(&self.seqno.to_le_bytes());
        out[40..48].copy_from_slice(&self.prev.to_le_bytes());
        out[48..56].copy_from_slice(&self.origin.to_le_bytes());
        out[56..64].copy_from_slice(&self.slot.to_le_bytes());
    }

    /// Decodes a header and checks its magic and its checksum over header and `key`.
    /// `None` if either is wrong.
    pub fn decode(buf: &[u8], key: Option<&[u8]>) -> Option<RecordHeader> {
        if buf.len() < RECORD_HEADER_LEN || buf[0..4] != RECORD_MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let header = RecordHeader {
            flags: buf[8],
            key_len: buf[9],
            value_len: u32_at(12),
            value_crc: u32_at(16),
            timestamp: u64_at(24),
            seqno: u64_at(32),
            prev: u64_at(40),
            origin: u64_at(48),
            slot: u64_at(56),
        };
        if header.key_len == 0 || buf[10] != 0 || buf[11] != 0 {
            return None;
        }
        if let Some(key) = key {
            if key.len() != header.key_len as usize || header_crc_in(buf, key) != u32_at(4) {
                return None;
            }
        }
        Some(header)
    }

    /// The stored header checksum (not verified).
    pub fn stored_crc(buf: &[u8]) -> u32 {
        u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]])
    }
}

/// crc32c (Castagnoli) of a record's value, as stored in its header's `value_crc`.
///
/// Every get verifies one, so it is on the read path's critical line: crc-fast folds with
/// (V)PCLMULQDQ and is about 3x faster on 4 KiB than the `crc32c` crate's SSE4.2 loop (measured
/// here: ~150 ns against ~500 ns). Same polynomial and result (see the property test below), so
/// the format does not change.
#[inline]
pub(crate) fn value_crc(value: &[u8]) -> u32 {
    // CRC-32/ISCSI is crc32c; a 32-bit CRC fits in the low half of the returned u64.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, value) as u32
}

/// [`header_crc`] of the header at the start of `buf` and `key`, in one pass when `key` is the
/// bytes right after the header in `buf` (a record read whole, as every get does): the same CRC
/// as two calls, with one call's setup, which costs more than the 72 bytes themselves.
fn header_crc_in(buf: &[u8], key: &[u8]) -> u32 {
    match buf.get(8..RECORD_HEADER_LEN + key.len()) {
        Some(run) if std::ptr::eq(buf[RECORD_HEADER_LEN..].as_ptr(), key.as_ptr()) => {
            crc32c::crc32c(run)
        }
        _ => header_crc(&buf[..RECORD_HEADER_LEN], key),
    }
}

fn header_crc(header: &[u8], key: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header[8..RECORD_HEADER_LEN]), key)
}

/// Total on-disk length of a record with these key and value lengths.
pub(crate) fn record_len(key_len: usize, value_len: usize) -> u64 {
    (RECORD_HEADER_LEN + key_len + value_len) as u64
}

/// Encodes a whole record (header, key, value) into one buffer, so it is written with a single
/// `pwrite`: either all of it reaches the file or the tail check on open cuts it off.
pub(crate) fn encode_record(header: &RecordHeader, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    append_record(header, key, value, &mut out);
    out
}

/// [`encode_record`] at the end of `out` (a batch of records written with one call).
pub(crate) fn append_record(header: &RecordHeader, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.reserve(RECORD_HEADER_LEN + key.len() + value.len());
    append_record_head(header, key, out);
    out.extend_from_slice(value);
}

/// The part of a record before its value (header and key) at the end of `out`: written
/// together with the caller's value buffer by [`write_all_parts_at`], a large value is never
/// copied into a record buffer first.
pub(crate) fn append_record_head(header: &RecordHeader, key: &[u8], out: &mut Vec<u8>) {
    let mut fixed = [0u8; RECORD_HEADER_LEN];
    header.encode_fields(&mut fixed);
    let crc = header_crc(&fixed, key);
    fixed[4..8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&fixed);
    out.extend_from_slice(key);
}

/// Writes `parts` one after the other at `at` with as few `pwritev` calls as the kernel
/// allows (one, unless it writes short).
pub(crate) fn write_all_parts_at(file: &File, parts: &[&[u8]], at: u64) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| io::IoSlice::new(p))
        .collect();
    let mut bufs = &mut slices[..];
    let mut at = at;
    while !bufs.is_empty() {
        match rustix::io::pwritev(file, bufs, at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                at += n as u64;
                io::IoSlice::advance_slices(&mut bufs, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Encodes the segment header of segment `id`.
pub(crate) fn encode_segment_header(id: u32, created: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&id.to_le_bytes());
    h[16..24].copy_from_slice(&created.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header; returns the segment id written in it.
pub(crate) fn decode_segment_header(h: &[u8]) -> Result<u32, String> {
    if h.len() < SEGMENT_HEADER_LEN as usize {
        return Err("file shorter than a segment header".into());
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err("not a qsfs segment (bad magic)".into());
    }
    let crc = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
    if crc32c::crc32c(&h[0..28]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != SEGMENT_VERSION {
        return Err(format!("unsupported segment version {version}"));
    }
    Ok(u32::from_le_bytes([h[12], h[13], h[14], h[15]]))
}

/// Unix time in milliseconds.
pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

/// Most sealed segment files open at once, process-wide (see [`set_max_open_segment_files`]).
pub const DEFAULT_MAX_OPEN_SEGMENT_FILES: usize = 512;

static FD_BUDGET: std::sync::LazyLock<FdBudget> = std::sync::LazyLock::new(|| FdBudget {
    max: AtomicUsize::new(DEFAULT_MAX_OPEN_SEGMENT_FILES),
    open: Mutex::new(Vec::new()),
});

/// Sets how many sealed segment files the engines of this process keep open at most (at least
/// 1; default [`DEFAULT_MAX_OPEN_SEGMENT_FILES`]). Beyond it the least recently read one is
/// closed and reopened when next read, so a namespace with thousands of segments does not run
/// the process out of file descriptors. The segment being appended to stays open and does not
/// count.
pub fn set_max_open_segment_files(max: usize) {
    FD_BUDGET.max.store(max.max(1), Ordering::Relaxed);
}

/// The open sealed segment files, to close the least recently read one when over budget.
struct FdBudget {
    max: AtomicUsize,
    open: Mutex<Vec<Weak<FdSlot>>>,
}

impl FdBudget {
    /// `slot` just got its file: close others while over budget. Lock order: the list, then a
    /// slot; a slot's lock is never held while taking the list's.
    fn admit(&self, slot: &Arc<FdSlot>) {
        let max = self.max.load(Ordering::Relaxed);
        let mut open = self.open.lock();
        open.retain(|w| w.strong_count() > 0);
        while open.len() >= max {
            let victim = open
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| w.upgrade().map_or(0, |s| s.used.load(Ordering::Relaxed)))
                .map(|(i, _)| i);
            let Some(i) = victim else { break };
            if let Some(s) = open.swap_remove(i).upgrade() {
                // Readers holding the `Arc<File>` finish their read; the descriptor closes
                // when the last of them drops it.
                s.file.lock().take();
            }
        }
        open.push(Arc::downgrade(slot));
    }
}

/// A sealed segment's file, opened on demand and closed when the budget needs room.
#[derive(Debug, Default)]
pub(crate) struct FdSlot {
    file: Mutex<Option<Arc<File>>>,
    /// Unix milliseconds of the last use (what the budget evicts by).
    used: AtomicU64,
}

/// Where a local segment's file handle comes from.
#[derive(Debug)]
pub(crate) enum SegFile {
    /// Always open: the segment being appended to.
    Pinned(Arc<File>),
    /// Sealed: opened on demand within the process-wide budget.
    Lazy(Arc<FdSlot>),
}

impl SegFile {
    fn lazy(file: File) -> SegFile {
        let slot = Arc::new(FdSlot {
            file: Mutex::new(Some(Arc::new(file))),
            used: AtomicU64::new(now_millis()),
        });
        FD_BUDGET.admit(&slot);
        SegFile::Lazy(slot)
    }

    /// True while the file is open (the budget has not closed it).
    pub fn is_open(&self) -> bool {
        match self {
            SegFile::Pinned(_) => true,
            SegFile::Lazy(slot) => slot.file.lock().is_some(),
        }
    }

    /// The open file of the segment at `path`, reopened if the budget closed it; `now` (Unix
    /// milliseconds) is its use time for the budget.
    pub fn get(&self, path: &Path, now: impl FnOnce() -> u64) -> io::Result<Arc<File>> {
        match self {
            SegFile::Pinned(f) => Ok(f.clone()),
            SegFile::Lazy(slot) => {
                let now = now();
                if slot.used.load(Ordering::Relaxed) != now {
                    slot.used.store(now, Ordering::Relaxed);
                }
                let mut guard = slot.file.lock();
                if let Some(f) = &*guard {
                    return Ok(f.clone());
                }
                let f = Arc::new(open_segment_file(path, false)?);
                *guard = Some(f.clone());
                drop(guard);
                FD_BUDGET.admit(slot);
                Ok(f)
            }
        }
    }
}

/// One segment file. Readers share its handle (positioned reads, no seek); a reader holds the
/// `Arc<File>` it got for the whole read, so the read finishes even if compaction unlinks the
/// file or the descriptor budget closes it meanwhile.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Segment id.
    pub id: u32,
    /// Where the file is (or was, once offloaded).
    pub path: PathBuf,
    /// The file; `None` once the segment is offloaded to the cold tier.
    pub file: Option<SegFile>,
    /// Length of an offloaded segment (0 while local: the file knows).
    pub offloaded_len: u64,
    /// Length of a file opened read-only (sealed by an earlier run, or put back after an
    /// offload), measured at open: it is never written again. Asking the file instead would
    /// stat its path every time, and the backup tier asks for every segment's length every
    /// second (0 for a file opened for writing).
    sealed_len: u64,
    /// Unix milliseconds of the last record read from it (0 = not since open).
    pub last_read: AtomicU64,
    /// Page-cache re-layout state (see [`relayout_page_cache`]).
    relayout: Relayout,
}

/// Where a segment stands with its page-cache re-layout (see [`relayout_page_cache`]). The
/// part before `done` was laid out (or given up on) and is never laid out again, so every byte
/// is re-read at most once; the part after it becomes a candidate once it is synced (its pages
/// clean): a sealed segment when its seal synced it (or at open, sealed by an earlier run), the
/// segment being appended to up to the last whole [`RELAYOUT_ALIGN`] chunk a sync covered.
#[derive(Debug, Default)]
struct Relayout {
    /// Gets still to serve before the candidate part is worth laying out; 0 when there is none
    /// or it is already queued, so the common get only reads this.
    gets_left: AtomicU64,
    /// Where the part not laid out yet starts (0: nothing done). Shared with the handles that
    /// replace this one (the sealed reopen of the segment being written, an offload, a
    /// restore): a pass still running on the old handle when the segment is sealed counts for
    /// the new one, so its chunks are not laid out twice.
    done: Arc<AtomicU64>,
    /// Segment being appended to: how far a sync is known to cover (its pages are clean).
    synced: AtomicU64,
    /// Armed to be due, or sent to the seal thread and not finished: not armed again.
    busy: std::sync::atomic::AtomicBool,
    /// A sealed segment allowed to be laid out (synced): what a re-arm may arm again.
    sealed_ok: std::sync::atomic::AtomicBool,
}

/// What the seal thread is to lay out of a segment, from [`Segment::relayout_range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayoutRange {
    /// First byte.
    pub from: u64,
    /// End, exclusive: the file's end for a sealed segment; for the segment being appended
    /// to the end of the last whole [`RELAYOUT_ALIGN`] chunk a sync covers, never its tail.
    pub to: u64,
}

impl Segment {
    /// Creates a new, empty segment file with its header, durable (file and directory synced).
    pub fn create(dir: &Path, id: u32, created: u64) -> io::Result<Segment> {
        let seg = Segment::create_unsynced(dir, id, created)?;
        if let Err(e) = seg.pinned_sync().and_then(|_| sync_dir(dir)) {
            let _ = std::fs::remove_file(&seg.path);
            return Err(e);
        }
        Ok(seg)
    }

    /// Like [`Segment::create`] without the two fsyncs (file and directory), for a caller that
    /// makes both durable before any write to the segment is acknowledged: the engine's seal
    /// thread syncs the directory after the previous segment, and the header reaches the disk
    /// with the segment's first data sync. A crash before then leaves a newest segment whose
    /// header was never written, which opening removes (it held nothing acknowledged).
    pub fn create_unsynced(dir: &Path, id: u32, created: u64) -> io::Result<Segment> {
        let path = dir.join(segment_file_name(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(NOATIME)
            .open(&path)?;
        let header = encode_segment_header(id, created);
        if let Err(e) = file.write_all_at(&header, 0) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Segment {
            id,
            path,
            file: Some(SegFile::Pinned(Arc::new(file))),
            offloaded_len: 0,
            sealed_len: 0,
            last_read: AtomicU64::new(0),
            relayout: Relayout::default(),
        })
    }

    /// fsync of a segment created writable (its file is pinned).
    fn pinned_sync(&self) -> io::Result<()> {
        match &self.file {
            Some(SegFile::Pinned(f)) => f.sync_all(),
            _ => Ok(()),
        }
    }

    /// Opens an existing segment file and checks its header.
    pub fn open(path: PathBuf, id: u32, writable: bool) -> Result<Segment, OpenError> {
        let file = open_segment_file(&path, writable).map_err(OpenError::Io)?;
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        let n = read_full_at(&file, &mut h, 0).map_err(OpenError::Io)?;
        let found = decode_segment_header(&h[..n]).map_err(OpenError::Bad)?;
        if found != id {
            return Err(OpenError::Bad(format!("header names segment {found}")));
        }
        let (file, sealed_len) = if writable {
            (SegFile::Pinned(Arc::new(file)), 0)
        } else {
            let len = file.metadata().map_err(OpenError::Io)?.len();
            (SegFile::lazy(file), len)
        };
        Ok(Segment {
            id,
            path,
            file: Some(file),
            offloaded_len: 0,
            sealed_len,
            last_read: AtomicU64::new(0),
            relayout: Relayout::default(),
        })
    }

    /// A segment whose file lives only in the cold tier.
    pub fn offloaded(path: PathBuf, id: u32, len: u64) -> Segment {
        Segment {
            id,
            path,
            file: None,
            offloaded_len: len,
            sealed_len: 0,
            last_read: AtomicU64::new(0),
            relayout: Relayout::default(),
        }
    }

    /// Records that a record of this segment was read at `now` (Unix milliseconds).
    #[inline]
    fn touch_at(&self, now: u64) {
        // Readers of a hot segment would otherwise all write one cache line on every read.
        if self.last_read.load(Ordering::Relaxed) != now {
            self.last_read.store(now, Ordering::Relaxed);
        }
    }

    /// [`Segment::handle`] for reading a record: also records the read time, with one clock
    /// read for this and the descriptor budget (a get reads the clock once, not twice).
    #[inline]
    pub fn handle_for_read(&self) -> io::Result<Option<Arc<File>>> {
        let now = now_millis();
        self.touch_at(now);
        self.file
            .as_ref()
            .map(|f| f.get(&self.path, || now))
            .transpose()
    }

    /// True for the segment being appended to (its file is opened writable and pinned).
    fn appendable(&self) -> bool {
        matches!(self.file, Some(SegFile::Pinned(_)))
    }

    /// Makes this sealed segment, whose file is synced (its cached pages clean), a candidate
    /// for [`relayout_page_cache`]: [`Segment::get_served`] says when it has served enough gets
    /// to be worth it. Its part already laid out (while it was being appended to) is not again.
    pub fn arm_relayout(&self) {
        self.relayout.sealed_ok.store(true, Ordering::Relaxed);
        self.arm();
    }

    /// A sync of the segment being appended to covered its first `upto` bytes: the whole
    /// [`RELAYOUT_ALIGN`] chunks among them not laid out yet become a candidate for
    /// [`relayout_page_cache`], due after enough gets like a sealed segment.
    pub fn note_synced(&self, upto: u64) {
        let r = &self.relayout;
        // A sync that covers no new whole chunk (most of them) only reads.
        if upto / RELAYOUT_ALIGN <= r.synced.load(Ordering::Relaxed) / RELAYOUT_ALIGN {
            return;
        }
        r.synced.fetch_max(upto, Ordering::Relaxed);
        self.arm();
    }

    /// Arms the candidate part, if there is one and nothing is armed or queued already.
    fn arm(&self) {
        let r = &self.relayout;
        let Some(range) = self.relayout_range() else {
            return;
        };
        if r.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            r.gets_left.store(
                relayout_after_gets(range.to - range.from),
                Ordering::Release,
            );
        }
    }

    /// The part of the file a re-layout may drop and read back now, if any: after what was
    /// already done, up to the file's end once sealed and synced, or up to the last whole
    /// [`RELAYOUT_ALIGN`] chunk covered by a sync while appended to, so the pages of the tail
    /// being written, and any dirty page, are never touched.
    pub fn relayout_range(&self) -> Option<RelayoutRange> {
        let r = &self.relayout;
        let from = r.done.load(Ordering::Acquire);
        let to = if self.appendable() {
            r.synced.load(Ordering::Relaxed) / RELAYOUT_ALIGN * RELAYOUT_ALIGN
        } else if r.sealed_ok.load(Ordering::Relaxed) && self.file.is_some() {
            self.len()
        } else {
            0
        };
        (to > from).then_some(RelayoutRange { from, to })
    }

    /// The seal thread finished with the segment's re-layout (done, or given up on) up to
    /// `to`: that part is never laid out again, and what follows may be armed again.
    pub fn relayout_finished(&self, to: u64) {
        let r = &self.relayout;
        r.done.fetch_max(to, Ordering::AcqRel);
        r.busy.store(false, Ordering::Release);
        self.arm();
    }

    /// The seal thread's pass stopped (a seal or the close waits) with everything before `at`
    /// laid out: a later pass resumes there.
    pub fn relayout_progress(&self, at: u64) {
        self.relayout.done.fetch_max(at, Ordering::AcqRel);
    }

    /// The seal thread gave up on the segment's queued re-layout without doing it (too many
    /// others waiting): it may be asked again by later gets.
    pub fn relayout_dropped(&self) {
        self.relayout.busy.store(false, Ordering::Release);
        self.arm();
    }

    /// Counts a get served from this segment: true for exactly one get, the one that makes
    /// an armed segment (see [`Segment::arm_relayout`], [`Segment::note_synced`]) due for its
    /// page-cache re-layout. The caller then sends it to the seal thread, which ends with
    /// [`Segment::relayout_finished`] or [`Segment::relayout_dropped`].
    #[inline]
    pub fn get_served(&self) -> bool {
        let left = &self.relayout.gets_left;
        // The common case, a segment not armed or already due, only reads the shared line.
        if left.load(Ordering::Relaxed) == 0 {
            return false;
        }
        left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)) == Ok(1)
    }

    /// Keeps the read time of `from`, the segment this one replaces (same id, new handle), and
    /// how much of it was laid out again in the page cache.
    pub fn inherit_last_read(mut self, from: &Segment) -> Segment {
        self.last_read
            .store(from.last_read.load(Ordering::Relaxed), Ordering::Relaxed);
        self.relayout.done = from.relayout.done.clone();
        self
    }

    /// The open file (reopened if the descriptor budget closed it); `None` if the segment is
    /// offloaded.
    pub fn handle(&self) -> io::Result<Option<Arc<File>>> {
        self.file
            .as_ref()
            .map(|f| f.get(&self.path, now_millis))
            .transpose()
    }

    /// True if the data lives only in the cold tier.
    pub fn is_offloaded(&self) -> bool {
        self.file.is_none()
    }

    /// Current length (of the file, or as recorded when it was offloaded).
    pub fn len(&self) -> u64 {
        match &self.file {
            Some(SegFile::Pinned(f)) => f.metadata().map(|m| m.len()).unwrap_or(0),
            Some(SegFile::Lazy(_)) => self.sealed_len,
            None => self.offloaded_len,
        }
    }
}

/// Why an existing segment could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The operating system refused.
    Io(io::Error),
    /// The file is not a valid segment.
    Bad(String),
}

/// Reads as many bytes as available at `offset` into `buf` (short only at end of file).
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads `len` bytes at `offset` into a new buffer; shorter only if the file ends first.
///
/// This is the read of every get, so it avoids two costs a `vec![0; len]` plus
/// [`read_full_at`] pays on each record (about a tenth of a cached 4 KiB get, measured):
/// zeroing the buffer the kernel is about to overwrite (rustix reads into the `Vec`'s spare
/// capacity and only then counts the bytes as initialised), and libc's cancellation-point
/// wrapper around `pread` (rustix makes the system call directly).
/// `O_NOATIME`: every get is a `pread` of a segment, and without it each one goes through the
/// kernel's access-time check (measured: about 4 % of a get's CPU).
const NOATIME: i32 = libc::O_NOATIME;

/// Opens an existing segment file for reading (and writing if `writable`) without access-time
/// updates where allowed: the kernel refuses `O_NOATIME` on a file of another owner to a
/// process without CAP_FOWNER, and then the file is opened as usual.
pub(crate) fn open_segment_file(path: &Path, writable: bool) -> io::Result<File> {
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(flags)
            .open(path)
    };
    match open(NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        r => r,
    }
}

pub(crate) fn read_vec_at(file: &File, len: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        // `spare_capacity` reads into all of the spare capacity, which `with_capacity` may make
        // larger than asked: the bytes past `len` are dropped below.
        let at = offset + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// How much of a sealed file [`relayout_page_cache`] drops from the page cache at a time. It
/// must be larger than the disk's read-ahead window (8 MiB on the machine it was measured on),
/// else dropping the next chunk throws away the read-ahead's large folios and restarts it from
/// small ones: measured, 2 MiB chunks gained little, 32 MiB as much as the whole file at once.
pub(crate) const RELAYOUT_CHUNK: u64 = 32 << 20;

/// The segment being appended to is laid out again in whole chunks of this size, aligned,
/// up to what a sync covers: the largest page-cache folio (2 MiB) then never straddles the
/// boundary with the tail still being written in 4 KiB pages.
pub(crate) const RELAYOUT_ALIGN: u64 = 2 << 20;

/// Sequential re-read a segment may cost per get already served from it before
/// [`relayout_page_cache`] runs: see [`relayout_after_gets`].
pub(crate) const RELAYOUT_BYTES_PER_GET: u64 = 64 << 10;

/// Gets a sealed segment of `len` bytes serves before its page cache is laid out again: one
/// per [`RELAYOUT_BYTES_PER_GET`] of file, at least one. The re-layout costs one sequential
/// read of the cached part of the file and pays back only over many later gets, so a stray get
/// (a metadata lookup, a `check`) of a segment nobody reads must not set it off: the gets
/// already served are the evidence that more will come, and this keeps the disk read bounded
/// by 64 KiB per get served (128 gets for an 8 MiB segment, 4096 for the default 256 MiB).
pub(crate) fn relayout_after_gets(len: u64) -> u64 {
    (len / RELAYOUT_BYTES_PER_GET).max(1)
}

/// Lays a synced segment's cached pages (a sealed one's, or the synced whole chunks of the one
/// being written: see [`Segment::relayout_range`]) out again in large page-cache folios: drops
/// them a chunk ahead of a sequential read of the file, whose read-ahead brings them back in
/// folios of up to 2 MiB instead of the 4 KiB ones the record-sized appends made.
///
/// Why: a cached get is one `pread` of a record, and its cost is mostly the kernel's: finding
/// the record's folios in the page cache and copying them. With 4 KiB folios that lookup is
/// per page (two or three per 4 KiB record) over a large tree whose nodes miss the CPU cache;
/// after the re-layout a `pread` of the same record costs about 30 % less CPU (measured:
/// `get-ratio sealed` in the engine bench, on 8 MiB segments). The price is one sequential
/// read of the segment from disk, which the engine pays only for segments its gets read
/// (see [`relayout_after_gets`]), and reads of the one or two chunks not yet back
/// meanwhile go to the disk.
///
/// Only what is cached is re-read: before dropping a chunk, its first and last pages are read
/// with `RWF_NOWAIT`, which fails instead of waiting for the disk, and the first chunk found
/// missing ends the pass (re-reading it all would evict other data to pull in a cold segment).
/// Such a failed probe still starts the kernel's read-ahead there (measured on 6.18), so a cold
/// file costs at most one read-ahead window. Dirty pages are never dropped by the kernel, so
/// the caller syncs the file first.
///
/// Starts at `from` (0, or where an earlier pass stopped: [`Relaid::resume_at`]), ends at
/// `to` or the end of the file, whichever comes first (for the segment being appended to, the
/// end of what a sync covers: see [`Segment::relayout_range`]), and asks `keep_going` before
/// each chunk (the seal thread says no when a seal or the engine's close waits). A chunk it
/// dropped it always reads back before it stops, so stopping leaves nothing out of the cache.
pub(crate) fn relayout_page_cache(
    path: &Path,
    from: u64,
    to: u64,
    keep_going: impl Fn() -> bool,
) -> io::Result<Relaid> {
    relayout_in_chunks(path, RELAYOUT_CHUNK, from, to, keep_going)
}

/// What one [`relayout_page_cache`] pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Relaid {
    /// Bytes dropped and read back.
    pub reread: u64,
    /// Where to resume, if `keep_going` stopped the pass; `None` when the file is done or the
    /// rest is not cached.
    pub resume_at: Option<u64>,
}

/// [`relayout_page_cache`] dropping `chunk` bytes at a time.
fn relayout_in_chunks(
    path: &Path,
    chunk: u64,
    from: u64,
    to: u64,
    keep_going: impl Fn() -> bool,
) -> io::Result<Relaid> {
    use std::os::fd::AsRawFd;
    let file = File::open(path)?;
    let len = file.metadata()?.len().min(to);
    let cached = |at: u64| {
        let mut b = [0u8; 1];
        matches!(
            rustix::io::preadv2(
                &file,
                &mut [io::IoSliceMut::new(&mut b)],
                at,
                rustix::io::ReadWriteFlags::NOWAIT
            ),
            Ok(1)
        )
    };
    let drop_chunk = |at: u64| -> io::Result<bool> {
        if at >= len {
            return Ok(true);
        }
        let end = (at + chunk).min(len);
        if !cached(at) || !cached(end - 1) {
            return Ok(false);
        }
        nix::fcntl::posix_fadvise(
            file.as_raw_fd(),
            at as libc::off_t,
            (end - at) as libc::off_t,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(io::Error::from)?;
        Ok(true)
    };
    let mut buf = vec![0u8; 1 << 20];
    // The first read is small: the kernel sizes its first read-ahead (in 4 KiB folios) from
    // the request, and only the read-aheads after it grow their folios, so a 1 MiB first read
    // would bring the first 4 MiB back in small folios.
    let mut want = 16 << 10;
    let mut at = from;
    let done = |at: u64| Relaid {
        reread: at - from,
        resume_at: None,
    };
    if at >= len {
        return Ok(done(at));
    }
    if !keep_going() {
        return Ok(Relaid {
            reread: 0,
            resume_at: Some(at),
        });
    }
    if !drop_chunk(at)? {
        return Ok(done(at));
    }
    loop {
        // [at, end) is dropped. The next chunk goes before this one is read, so that the
        // read-ahead running past the end of this one builds on an empty range and keeps
        // growing its folios; only if the pass goes on, since a dropped chunk is read back.
        let end = (at + chunk).min(len);
        let go_on = keep_going();
        let next_dropped = go_on && drop_chunk(end)?;
        while at < end {
            let n = want.min((end - at) as usize);
            match file.read_at(&mut buf[..n], at) {
                // Truncated meanwhile: nothing more to lay out.
                Ok(0) => return Ok(done(at)),
                Ok(n) => {
                    at += n as u64;
                    want = buf.len();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if at >= len || (go_on && !next_dropped) {
            return Ok(done(at));
        }
        if !go_on {
            return Ok(Relaid {
                reread: at - from,
                resume_at: Some(at),
            });
        }
    }
}

/// fsyncs a directory so that created, renamed and removed entries are durable.
/// True if the file at `path` is shorter than a segment header or its header bytes are all
/// zero: a segment created without fsyncs whose header never reached the disk.
pub(crate) fn header_never_written(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    match read_full_at(&file, &mut h, 0) {
        Ok(n) => n < h.len() || h.iter().all(|&b| b == 0),
        Err(_) => false,
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A decoded record found by [`scan_segment`].
#[derive(Debug)]
pub(crate) struct ScannedRecord<'a> {
    /// Byte offset of the record in its segment.
    pub offset: u64,
    /// Its header.
    pub header: RecordHeader,
    /// Its key.
    pub key: &'a [u8],
    /// The record is damaged: its value fails its checksum, or its header did and was mended
    /// (see [`scan_segment`]); reads of it report the damage.
    pub damaged: bool,
}

/// What [`scan_segment`] found besides the records.
#[derive(Debug, Default)]
pub(crate) struct ScanReport {
    /// End of the last valid record: where a torn tail starts (equal to the length when clean).
    pub valid_end: u64,
    /// Damaged byte ranges that were skipped, with a reason. A damaged range at the very end
    /// (nothing valid after it) is not listed here: it is the torn tail, from `valid_end`.
    pub corrupt: Vec<(u64, u64, String)>,
}

/// Sequential reader over a byte source with a large buffer, so a scan costs few syscalls.
struct ChunkReader<'a> {
    source: &'a dyn Fn(&mut [u8], u64) -> io::Result<usize>,
    len: u64,
    buf: Vec<u8>,
    buf_start: u64,
    buf_len: usize,
}

impl<'a> ChunkReader<'a> {
    const CHUNK: usize = 4 << 20;

    /// `len` bytes starting at `offset`, or `None` if they run past the end.
    fn get(&mut self, offset: u64, len: usize) -> io::Result<Option<&[u8]>> {
        if offset + len as u64 > self.len {
            return Ok(None);
        }
        let in_buf =
            offset >= self.buf_start && offset + len as u64 <= self.buf_start + self.buf_len as u64;
        if !in_buf {
            let want = len.max(Self::CHUNK).min((self.len - offset) as usize);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            let n = (self.source)(&mut self.buf[..want], offset)?;
            self.buf_start = offset;
            self.buf_len = n;
            if n < len {
                return Ok(None);
            }
        }
        let s = (offset - self.buf_start) as usize;
        Ok(Some(&self.buf[s..s + len]))
    }
}

/// Reads every record of a segment from `start` (at least the header length) to `len`, calling
/// `f` for each in file order.
///
/// * A record whose header checksum holds but whose value does not is *damaged*: it is passed to
///   `f` with `damaged = true` (its header is trustworthy, so the index can point at it and
///   reads of that key report the damage instead of serving an older version) and listed in
///   [`ScanReport::corrupt`].
/// * A record whose header or key fails the header checksum, but which one changed byte makes
///   whole (and whose lengths lead exactly to the next valid record or the end), is passed to
///   `f` as damaged too, with the mended header and key: knowing the key, the index points at
///   it and reads report the damage instead of serving the version before it.
/// * Where no header is valid, the scan searches for the next record whose magic, header
///   checksum and value checksum all hold, and lists the skipped range.
/// * Damage with nothing valid after it is the torn tail: the scan stops and
///   [`ScanReport::valid_end`] says where it starts.
pub(crate) fn scan_segment(
    source: &dyn Fn(&mut [u8], u64) -> io::Result<usize>,
    len: u64,
    start: u64,
    mut f: impl FnMut(ScannedRecord<'_>),
) -> io::Result<ScanReport> {
    let mut r = ChunkReader {
        source,
        len,
        buf: Vec::new(),
        buf_start: 0,
        buf_len: 0,
    };
    let mut off = start.max(SEGMENT_HEADER_LEN);
    let mut report = ScanReport {
        valid_end: off,
        corrupt: Vec::new(),
    };
    while off < len {
        match check_record(&mut r, off)? {
            Check::Valid(rec_len) | Check::BadValue(rec_len) => {
                let damaged = matches!(check_record(&mut r, off)?, Check::BadValue(_));
                if damaged && find_next_valid(&mut r, off + rec_len)?.is_none() {
                    break; // torn tail: the value never fully reached the disk
                }
                let Some(h) = r.get(off, RECORD_HEADER_LEN)? else {
                    break;
                };
                let Some(header) = RecordHeader::decode(h, None) else {
                    break;
                };
                let klen = header.key_len as usize;
                let Some(key) = r.get(off + RECORD_HEADER_LEN as u64, klen)? else {
                    break;
                };
                if damaged {
                    report
                        .corrupt
                        .push((off, off + rec_len, "value checksum mismatch".into()));
                }
                f(ScannedRecord {
                    offset: off,
                    header,
                    key,
                    damaged,
                });
                off += rec_len;
                report.valid_end = off;
            }
            Check::Invalid => {
                let next = find_next_valid(&mut r, off + 1)?;
                let end = next.unwrap_or(len);
                if let Some((header, key)) = mend_record(&mut r, off, end)? {
                    report.corrupt.push((
                        off,
                        end,
                        "damaged record header (its key is known: reads of it report the damage)"
                            .into(),
                    ));
                    f(ScannedRecord {
                        offset: off,
                        header,
                        key: &key,
                        damaged: true,
                    });
                    off = end;
                    report.valid_end = off;
                    continue;
                }
                match next {
                    Some(n) => {
                        report
                            .corrupt
                            .push((off, n, "damaged record header skipped".into()));
                        off = n;
                    }
                    None => break,
                }
            }
        }
    }
    Ok(report)
}

/// The header and key of the one record that fills `from..end` exactly, when a change of at
/// most one byte of its header or key makes its header checksum hold: what a flipped bit or a
/// bad byte leaves. The length fields must lead exactly to `end` (the next valid record, or
/// the end of the segment), so a mended record is the one that was there. Knowing its key, the
/// index can point at it and reads of that key report the damage, instead of finding the
/// version before it as if it were the newest.
fn mend_record(
    r: &mut ChunkReader<'_>,
    from: u64,
    end: u64,
) -> io::Result<Option<(RecordHeader, Vec<u8>)>> {
    let span = end.saturating_sub(from) as usize;
    if span <= RECORD_HEADER_LEN || span > RECORD_HEADER_LEN + 255 + qsfs_core::MAX_VALUE_LEN {
        return Ok(None);
    }
    let head_len = (RECORD_HEADER_LEN + 255).min(span);
    let Some(head) = r.get(from, head_len)? else {
        return Ok(None);
    };
    let mut trial = head.to_vec();
    // The header as decoded and the checksum it should store, if its lengths lead to `end`.
    let bridged = |t: &[u8]| -> Option<(RecordHeader, u32)> {
        let h = RecordHeader::decode(t, None)?;
        let klen = h.key_len as usize;
        (record_len(klen, h.value_len as usize) == span as u64)
            .then(|| header_crc(&t[..RECORD_HEADER_LEN], &t[RECORD_HEADER_LEN..][..klen]))
            .map(|crc| (h, crc))
    };
    let key_of = |t: &[u8], h: &RecordHeader| t[RECORD_HEADER_LEN..][..h.key_len as usize].to_vec();
    // The stored checksum itself (bytes 4..8) may be the damaged part.
    if let Some((h, crc)) = bridged(&trial) {
        let stored = RecordHeader::stored_crc(&trial).to_le_bytes();
        let differ = crc
            .to_le_bytes()
            .iter()
            .zip(stored)
            .filter(|(a, b)| *a != b)
            .count();
        if differ == 1 {
            return Ok(Some((h.clone(), key_of(&trial, &h))));
        }
    }
    for at in (0..head_len).filter(|i| !(4..8).contains(i)) {
        let was = trial[at];
        for v in 0..=255u8 {
            if v == was || (at < 4 && v != RECORD_MAGIC[at]) {
                continue;
            }
            trial[at] = v;
            match bridged(&trial) {
                Some((h, crc)) if crc == RecordHeader::stored_crc(&trial) => {
                    return Ok(Some((h.clone(), key_of(&trial, &h))));
                }
                _ => {}
            }
        }
        trial[at] = was;
    }
    Ok(None)
}

/// The first offset at or after `from` where a fully valid record starts.
fn find_next_valid(r: &mut ChunkReader<'_>, from: u64) -> io::Result<Option<u64>> {
    let len = r.len;
    let mut probe = from;
    while probe + RECORD_HEADER_LEN as u64 <= len {
        let window = (ChunkReader::CHUNK as u64).min(len - probe) as usize;
        let Some(chunk) = r.get(probe, window)? else {
            return Ok(None);
        };
        match chunk.windows(4).position(|w| w == RECORD_MAGIC) {
            Some(i) => {
                let cand = probe + i as u64;
                if matches!(check_record(r, cand)?, Check::Valid(_)) {
                    return Ok(Some(cand));
                }
                probe = cand + 1;
            }
            None => probe += (window.saturating_sub(3)).max(1) as u64,
        }
    }
    Ok(None)
}

/// What is at an offset.
enum Check {
    /// A record whose header and value checksums hold, of this length.
    Valid(u64),
    /// A record whose header checksum holds but whose value does not, of this length.
    BadValue(u64),
    /// No record.
    Invalid,
}

fn check_record(r: &mut ChunkReader<'_>, off: u64) -> io::Result<Check> {
    let header = {
        let Some(h) = r.get(off, RECORD_HEADER_LEN)? else {
            return Ok(Check::Invalid);
        };
        let mut copy = [0u8; RECORD_HEADER_LEN];
        copy.copy_from_slice(h);
        copy
    };
    let Some(unchecked) = RecordHeader::decode(&header, None) else {
        return Ok(Check::Invalid);
    };
    let klen = unchecked.key_len as usize;
    let vlen = unchecked.value_len as usize;
    if vlen > qsfs_core::MAX_VALUE_LEN || (unchecked.is_tombstone() && vlen != 0) {
        return Ok(Check::Invalid);
    }
    let Some(body) = r.get(off + RECORD_HEADER_LEN as u64, klen + vlen)? else {
        return Ok(Check::Invalid);
    };
    let (key, value) = body.split_at(klen);
    if header_crc(&header, key) != RecordHeader::stored_crc(&header) {
        return Ok(Check::Invalid);
    }
    if value_crc(value) != unchecked.value_crc {
        return Ok(Check::BadValue(unchecked.record_len()));
    }
    Ok(Check::Valid(unchecked.record_len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_of_a_segment_leave_its_access_time_alone() {
        use std::fs::FileTimes;
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
        let make_old = |p: &Path| {
            let f = File::options().write(true).open(p).unwrap();
            f.set_times(FileTimes::new().set_accessed(old)).unwrap();
        };
        let accessed = |p: &Path| std::fs::metadata(p).unwrap().accessed().unwrap();
        // The control: on this filesystem (relatime, the default) a plain read of a file last
        // read days ago updates its access time, so the test could see one.
        let control = dir.path().join("control");
        std::fs::write(&control, b"some bytes").unwrap();
        make_old(&control);
        std::fs::read(&control).unwrap();
        assert!(
            accessed(&control) > old,
            "the filesystem does not update atime"
        );

        // Reads one record's worth through the segment's own descriptor, as a get does.
        let read_leaves_atime = |seg: &Segment, what: &str| {
            let f = seg.handle_for_read().unwrap().unwrap();
            assert_eq!(read_vec_at(&f, 16, 0).unwrap().len(), 16);
            assert_eq!(accessed(&seg.path), old, "read through {what}");
        };
        let seg = Segment::create_unsynced(dir.path(), 1, 0).unwrap();
        let path = seg.path.clone();
        make_old(&path);
        read_leaves_atime(&seg, "the segment being written");
        drop(seg);
        let reopened = Segment::open(path, 1, false).unwrap();
        read_leaves_atime(&reopened, "a reopened sealed segment");
    }

    #[test]
    fn read_vec_at_reads_exactly_the_range_and_stops_at_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        for (len, off) in [(4176, 33u64), (1, 0), (0, 5), (10_000, 0), (4096, 5904)] {
            let got = read_vec_at(&f, len, off).unwrap();
            assert_eq!(
                got,
                data[off as usize..off as usize + len],
                "{len} at {off}"
            );
        }
        // Past the end: only what the file holds, never bytes beyond it.
        assert_eq!(read_vec_at(&f, 100, 9_950).unwrap(), data[9_950..]);
        assert!(read_vec_at(&f, 100, 20_000).unwrap().is_empty());
    }

    fn header(key: &[u8], value: &[u8]) -> RecordHeader {
        RecordHeader {
            flags: 0,
            key_len: key.len() as u8,
            value_len: value.len() as u32,
            value_crc: value_crc(value),
            timestamp: 7,
            seqno: 9,
            prev: loc(1, 99),
            origin: 0,
            slot: 0,
        }
    }

    proptest! {
        /// Parts (empty ones included) land back to back at the offset, the bytes around them
        /// untouched.
        #[test]
        fn parts_are_written_back_to_back(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..6), at in 0u64..5000) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            std::fs::write(&path, vec![0xEEu8; 9000]).unwrap();
            let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
            write_all_parts_at(&f, &refs, at).unwrap();
            let got = std::fs::read(&path).unwrap();
            let joined = parts.concat();
            let end = at as usize + joined.len();
            prop_assert_eq!(&got[at as usize..end], &joined[..]);
            prop_assert!(got[..at as usize].iter().all(|&b| b == 0xEE));
            prop_assert!(got[end.min(got.len())..].iter().all(|&b| b == 0xEE));
            prop_assert_eq!(got.len(), 9000.max(end));
        }

        /// The fast value checksum is the crc32c the format specifies (and older segments hold),
        /// at every length and alignment its folding loops branch on.
        #[test]
        fn value_crc_is_crc32c(data in proptest::collection::vec(any::<u8>(), 0..9000),
                               skip in 0usize..64) {
            let d = &data[skip.min(data.len())..];
            prop_assert_eq!(value_crc(d), crc32c::crc32c(d));
        }

        #[test]
        fn record_roundtrip(key in proptest::collection::vec(any::<u8>(), 1..255),
                            value in proptest::collection::vec(any::<u8>(), 0..300),
                            ts in any::<u64>(), seqno in any::<u64>(), prev in any::<u64>(),
                            origin in any::<u64>(), slot in any::<u64>(), flags in 0u8..4) {
            let mut h = header(&key, &value);
            h.timestamp = ts; h.seqno = seqno; h.prev = prev; h.origin = origin; h.slot = slot; h.flags = flags;
            let rec = encode_record(&h, &key, &value);
            prop_assert_eq!(rec.len() as u64, h.record_len());
            let back = RecordHeader::decode(&rec, Some(&rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + key.len()]));
            // The key read with the header (one-pass checksum) and the key held apart (two).
            prop_assert_eq!(RecordHeader::decode(&rec, Some(&key)), back.clone());
            prop_assert_eq!(back, Some(h));
        }

        #[test]
        fn any_flipped_header_byte_is_detected(pos in 0usize..RECORD_HEADER_LEN + 3, bit in 0u8..8) {
            let key = b"abc";
            let value = b"some value";
            let h = header(key, value);
            let mut rec = encode_record(&h, key, value);
            rec[pos] ^= 1 << bit;
            let k = &rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + 3];
            prop_assert!(RecordHeader::decode(&rec, Some(k)).is_none());
        }

        #[test]
        fn segment_scan_survives_damage(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..20),
                                        damage in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
            let mut file = encode_segment_header(3, 0).to_vec();
            let mut offsets = Vec::new();
            for (i, v) in values.iter().enumerate() {
                let key = format!("k{i}").into_bytes();
                offsets.push(file.len() as u64);
                file.extend(encode_record(&header(&key, v), &key, v));
            }
            // Undamaged: every record comes back.
            let data = file.clone();
            let src = move |buf: &mut [u8], off: u64| -> io::Result<usize> {
                let s = (off as usize).min(data.len());
                let n = buf.len().min(data.len() - s);
                buf[..n].copy_from_slice(&data[s..s + n]);
                Ok(n)
            };
            let mut seen = Vec::new();
            let rep = scan_segment(&src, file.len() as u64, SEGMENT_HEADER_LEN, |r| seen.push(r.offset)).unwrap();
            prop_assert_eq!(&seen, &offsets);
            prop_assert_eq!(rep.valid_end, file.len() as u64);

            // Flip one byte inside one record: all others are found, and that one is found
            // damaged (a header or key byte is mended enough to know the key), except for a
            // value byte of the last record, which is the torn tail of a write.
            let victim = damage.index(values.len());
            let start = offsets[victim] as usize;
            let end = offsets.get(victim + 1).map(|o| *o as usize).unwrap_or(file.len());
            let mut bad = file.clone();
            let at = start + cut.index(end - start);
            bad[at] ^= 0x40;
            let data = bad.clone();
            let src = move |buf: &mut [u8], off: u64| -> io::Result<usize> {
                let s = (off as usize).min(data.len());
                let n = buf.len().min(data.len() - s);
                buf[..n].copy_from_slice(&data[s..s + n]);
                Ok(n)
            };
            let mut seen = Vec::new();
            let rep = scan_segment(&src, bad.len() as u64, SEGMENT_HEADER_LEN, |r| seen.push((r.offset, r.damaged))).unwrap();
            let key_len = format!("k{victim}").len();
            let in_value = at >= start + RECORD_HEADER_LEN + key_len;
            let torn = in_value && victim + 1 == values.len();
            let expected: Vec<(u64, bool)> = offsets
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != victim || !torn)
                .map(|(i, o)| (*o, i == victim))
                .collect();
            prop_assert_eq!(seen, expected);
            if torn {
                // The torn tail: cut, not reported as damage inside the segment.
                prop_assert_eq!(rep.valid_end, offsets[victim]);
                prop_assert!(rep.corrupt.is_empty());
            } else {
                prop_assert_eq!(rep.corrupt.len(), 1);
                prop_assert_eq!(rep.valid_end, file.len() as u64);
            }
        }
    }

    /// A file of `len` patterned bytes, synced (its cached pages clean, as after a seal).
    fn synced_file(dir: &Path, len: usize) -> (PathBuf, Vec<u8>) {
        let path = dir.join("relayout");
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let f = File::create(&path).unwrap();
        // Record-sized writes, like the engine's appends.
        for (i, c) in data.chunks(4176).enumerate() {
            f.write_all_at(c, (i * 4176) as u64).unwrap();
        }
        f.sync_all().unwrap();
        (path, data)
    }

    #[test]
    fn relayout_rereads_a_cached_file_whole_and_keeps_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        // Not a multiple of the chunk or of a page: the last chunk is short.
        let (path, data) = synced_file(dir.path(), 300_000 + 123);
        let all = Relaid {
            reread: data.len() as u64,
            resume_at: None,
        };
        assert_eq!(
            relayout_in_chunks(&path, 64 << 10, 0, u64::MAX, || true).unwrap(),
            all
        );
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // The public entry point, one chunk for the whole file.
        assert_eq!(
            relayout_page_cache(&path, 0, u64::MAX, || true).unwrap(),
            all
        );
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn relayout_stops_between_chunks_when_told_and_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let (path, data) = synced_file(dir.path(), 300_000);
        let chunk = 64 << 10;
        // Told to stop after two chunks: both were dropped and both are read back.
        let asked = std::cell::Cell::new(0);
        let first = relayout_in_chunks(&path, chunk, 0, u64::MAX, || {
            asked.set(asked.get() + 1);
            asked.get() <= 2
        })
        .unwrap();
        assert_eq!(
            first,
            Relaid {
                reread: 2 * chunk,
                resume_at: Some(2 * chunk)
            }
        );
        let rest = relayout_in_chunks(&path, chunk, 2 * chunk, u64::MAX, || true).unwrap();
        assert_eq!(
            rest,
            Relaid {
                reread: data.len() as u64 - 2 * chunk,
                resume_at: None
            }
        );
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn relayout_leaves_a_file_alone_that_is_not_cached_or_when_told_to_stop() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let (path, data) = synced_file(dir.path(), 200_000);
        assert_eq!(
            relayout_in_chunks(&path, 64 << 10, 0, u64::MAX, || false).unwrap(),
            Relaid {
                reread: 0,
                resume_at: Some(0)
            }
        );
        let f = File::open(&path).unwrap();
        // The kernel may keep a page it is busy with for a moment (seen once in a full run):
        // ask again until `fincore` (mincore, which reads nothing) finds none resident. Not a
        // probe with `RWF_NOWAIT`: on a miss it starts read-ahead and fills the cache again.
        let resident = || {
            let out = std::process::Command::new("fincore")
                .args(["--bytes", "--noheadings", "--output", "RES"])
                .arg(&path)
                .output()
                .expect("fincore (util-linux)");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        let uncache = || {
            for _ in 0..100 {
                nix::fcntl::posix_fadvise(
                    f.as_raw_fd(),
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                )
                .unwrap();
                if resident() == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert_eq!(resident(), 0, "the kernel keeps the file's pages");
        };
        // Nothing is cached (the pages were clean, so the kernel dropped them all): re-reading
        // would pull a cold file into the cache, so it reads nothing. The kernel may bring a
        // chunk back between the check and the relayout (once in a CI run of 538 tests, a
        // 64 KiB chunk): a few tries, of which one must read nothing.
        let mut got = Vec::new();
        for _ in 0..5 {
            uncache();
            let r = relayout_in_chunks(&path, 64 << 10, 0, u64::MAX, || true).unwrap();
            got.push(r);
            if r.reread == 0 {
                break;
            }
        }
        assert_eq!(
            got.last(),
            Some(&Relaid {
                reread: 0,
                resume_at: None
            }),
            "{got:?}"
        );
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    /// Counts gets on `seg` until one makes it due; `None` if none does within `max` gets.
    fn gets_until_due(seg: &Segment, max: u64) -> Option<u64> {
        (1..=max).find(|_| seg.get_served())
    }

    #[test]
    fn the_segment_being_written_is_a_candidate_only_for_synced_whole_chunks_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 1, 0).unwrap();
        let f = seg.handle().unwrap().unwrap();
        let chunk = RELAYOUT_ALIGN;
        f.write_all_at(&vec![5u8; (3 * chunk + 100) as usize], SEGMENT_HEADER_LEN)
            .unwrap();
        // Nothing synced: no candidate, gets never make it due.
        assert_eq!(seg.relayout_range(), None);
        assert_eq!(gets_until_due(&seg, 10_000), None);
        // A sync short of the first chunk's end: still nothing (never a part chunk).
        seg.note_synced(chunk - 1);
        assert_eq!(seg.relayout_range(), None);
        assert_eq!(gets_until_due(&seg, 10_000), None);
        // A sync into the third chunk: the first two, due after their share of gets.
        seg.note_synced(2 * chunk + 10);
        let two = RelayoutRange {
            from: 0,
            to: 2 * chunk,
        };
        assert_eq!(seg.relayout_range(), Some(two));
        assert_eq!(
            gets_until_due(&seg, 10_000),
            Some(relayout_after_gets(2 * chunk))
        );
        // Due once: later gets and syncs do not make it due again while it is queued.
        seg.note_synced(2 * chunk + 20);
        assert_eq!(gets_until_due(&seg, 10_000), None);
        // Dropped from the seal thread's queue: later gets ask again.
        seg.relayout_dropped();
        assert!(gets_until_due(&seg, 10_000).is_some());
        seg.relayout_finished(2 * chunk);
        // Done up to the synced chunks: nothing more until a sync covers the next whole one.
        assert_eq!(seg.relayout_range(), None);
        assert_eq!(gets_until_due(&seg, 10_000), None);
        seg.note_synced(3 * chunk + 100);
        assert_eq!(
            seg.relayout_range(),
            Some(RelayoutRange {
                from: 2 * chunk,
                to: 3 * chunk
            })
        );
        assert_eq!(
            gets_until_due(&seg, 10_000),
            Some(relayout_after_gets(chunk))
        );
        // Sealed (reopened read-only, as a seal does) while that pass runs on the old handle:
        // the rest of the file, from where the chunks ended, never the chunks again.
        let len = seg.len();
        let sealed = Segment::open(seg.path.clone(), 1, false)
            .unwrap()
            .inherit_last_read(&seg);
        seg.relayout_finished(3 * chunk);
        assert_eq!(sealed.relayout_range(), None, "not armed: not known synced");
        sealed.arm_relayout();
        assert_eq!(
            sealed.relayout_range(),
            Some(RelayoutRange {
                from: 3 * chunk,
                to: len
            })
        );
        assert!(gets_until_due(&sealed, 10).is_some());
        sealed.relayout_finished(len);
        sealed.arm_relayout();
        assert_eq!(sealed.relayout_range(), None);
        assert_eq!(gets_until_due(&sealed, 10_000), None);
    }

    #[test]
    fn relayout_stops_at_the_end_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let (path, data) = synced_file(dir.path(), 300_000);
        let chunk = 64 << 10;
        assert_eq!(
            relayout_in_chunks(&path, chunk, 0, 2 * chunk, || true).unwrap(),
            Relaid {
                reread: 2 * chunk,
                resume_at: None
            }
        );
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn value_crc_check_value() {
        // The catalogue's check value of CRC-32/ISCSI (crc32c).
        assert_eq!(value_crc(b"123456789"), 0xE306_9283);
        assert_eq!(value_crc(b""), 0);
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_file_name(42), "0000000042.seg");
        assert_eq!(parse_segment_file_name("0000000042.seg"), Some(42));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("000000004x.seg"), None);
    }

    #[test]
    fn locs() {
        let l = loc(7, 1234);
        assert_eq!(loc_segment(l), 7);
        assert_eq!(loc_offset(l), 1234);
    }
}
