//! Online compaction: rewriting sealed segments that hold mostly superseded data.
//!
//! A sealed segment whose share of still-needed bytes (newest versions of their keys) is below
//! the threshold is read record by record; the records still needed are appended again to the
//! current segment, then the old file is removed. Needed are: the newest version of every key
//! (tombstones included, so a deleted key can never come back from an older segment), and
//! history versions younger than the retention. A copy keeps its sequence number, timestamp and
//! slot, so scan order, sequential ids and "newest wins" are unchanged; it records where it came
//! from (`origin`), which lets newer versions that still point at the old place find it.
//!
//! Work is done in small batches under the namespace's writer lock; readers are blocked only for
//! the moment the index changes, writers for one batch at most.

use std::sync::Arc;

use qsfs_core::{Error, Result};

use crate::engine::Shared;
use crate::namespace::{Event, Namespace};
use crate::segment::{
    encode_record, loc, loc_segment, read_full_at, scan_segment, RecordHeader, Segment, FLAG_COPY,
    SEGMENT_HEADER_LEN,
};

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments rewritten and removed.
    pub segments: Vec<u32>,
    /// Records copied forward.
    pub records_copied: u64,
    /// Bytes copied forward.
    pub bytes_copied: u64,
    /// Records dropped (superseded, or history past the retention).
    pub records_dropped: u64,
    /// Bytes of segment files removed.
    pub bytes_removed: u64,
}

/// Bytes copied per batch before the writer lock is released.
const BATCH_BYTES: u64 = 4 << 20;

/// Room a low-space compaction leaves besides a victim's live bytes.
const SPACE_SLACK: u64 = 64 << 10;

struct Candidate {
    offset: u64,
    header: RecordHeader,
    key: Vec<u8>,
}

/// Where the bytes of a segment being compacted come from.
enum Source {
    /// The local file.
    Local(Arc<Segment>),
    /// The whole segment, fetched from the cold tier.
    Cold(bytes::Bytes),
}

impl Source {
    fn read(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        match self {
            Source::Local(seg) => match seg.handle()? {
                Some(f) => read_full_at(&f, buf, off),
                None => Ok(0),
            },
            Source::Cold(data) => {
                let s = (off as usize).min(data.len());
                let n = buf.len().min(data.len() - s);
                buf[..n].copy_from_slice(&data[s..s + n]);
                Ok(n)
            }
        }
    }
}

/// Which sealed segments a compaction rewrites.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pick {
    /// Those whose live ratio is below this (local ones, and offloaded ones too when a cold
    /// tier is configured, fetched whole). History younger than the retention is kept.
    Ratio(f64),
    /// As `Ratio`, but only local segments last written at least the history retention ago:
    /// every superseded version in them may go, so a rewrite is never spent copying history
    /// forward (which would leave a segment as dead as before, to be rewritten again).
    Settled(f64),
    /// The disk is low and this many bytes are left on it: local segments that free at least
    /// an eighth of their size, those freeing the most first, while their live data fits in
    /// what is left. Superseded versions go at once when a history retention is set.
    Space(u64),
}

/// Compacts the sealed segments of `ns` that `pick` chooses.
pub(crate) fn compact(ns: &Namespace, shared: &Shared, pick: Pick) -> Result<CompactionReport> {
    let _one = ns.compacting.lock();
    // A segment whose seal is still queued is not durable yet: not a victim (and its removal
    // must not be reported before its seal).
    ns.wait_sealed();
    let current = ns.writer.lock().seg.id;
    let retention = shared.config.history_retention;
    let cutoff = match pick {
        Pick::Ratio(_) | Pick::Settled(_) => {
            retention.map(|r| qsfs_core::now().saturating_sub(r.as_secs()))
        }
        // Every superseded version, however young.
        Pick::Space(_) => retention.map(|_| u64::MAX),
    };
    let mut report = CompactionReport::default();
    match pick {
        Pick::Ratio(threshold) | Pick::Settled(threshold) => {
            let mut victims = ratio_victims(ns, shared, current, threshold);
            if let (Pick::Settled(_), Some(r)) = (pick, retention) {
                victims.retain(|seg| written_before(seg, r));
            }
            for seg in victims {
                if compact_segment(ns, shared, &seg, cutoff, &mut report)? {
                    report.segments.push(seg.id);
                }
            }
        }
        Pick::Space(mut left) => {
            for (seg, live) in space_victims(ns, current) {
                if !fits(live, left) {
                    continue;
                }
                let copied = report.bytes_copied;
                if compact_segment(ns, shared, &seg, cutoff, &mut report)? {
                    report.segments.push(seg.id);
                    let copied = report.bytes_copied - copied;
                    left = left.saturating_sub(copied).saturating_add(seg.len());
                }
            }
        }
    }
    if !report.segments.is_empty() {
        let w = ns.writer.lock();
        ns.write_snapshot_locked(&w);
    }
    Ok(report)
}

/// Dead bytes the segment being written must hold, at least, before a low disk seals it early.
const SEAL_FOR_SPACE_MIN: u64 = 1 << 20;

/// Whether the segment `ns` is writing should be sealed so that a low-space compaction can give
/// its dead bytes back: only sealed segments are compacted, so a disk filled within one segment
/// (a small disk, a large `--datasize`) gave nothing back however much was deleted. True when
/// at least half of it (and a megabyte) is superseded or deleted and its live data fits in the
/// `available` bytes left.
pub(crate) fn current_worth_sealing(ns: &Namespace, available: u64) -> bool {
    let (current, end) = {
        let w = ns.writer.lock();
        (w.seg.id, w.end)
    };
    let payload = end.saturating_sub(SEGMENT_HEADER_LEN);
    let live = ns
        .state
        .read()
        .index
        .seg_live
        .get(&current)
        .copied()
        .unwrap_or(0);
    let dead = payload.saturating_sub(live);
    dead >= SEAL_FOR_SPACE_MIN && dead >= payload / 2 && fits(live, available)
}

/// Whether a segment's `live` bytes can be copied forward within `left` bytes of disk: the
/// copies go to the disk before the old file leaves it; the slack is for the index snapshot
/// and the records' growth by their copy headers.
fn fits(live: u64, left: u64) -> bool {
    live.saturating_add(live / 16).saturating_add(SPACE_SLACK) <= left
}

/// Sealed segments (before `current`) whose live ratio is below `threshold`.
fn ratio_victims(
    ns: &Namespace,
    shared: &Shared,
    current: u32,
    threshold: f64,
) -> Vec<Arc<Segment>> {
    let st = ns.state.read();
    st.segments
        .iter()
        .filter(|(id, s)| **id < current && (s.file.is_some() || shared.cold.is_some()))
        .filter(|(id, s)| {
            let payload = s.len().saturating_sub(SEGMENT_HEADER_LEN);
            let live = st.index.seg_live.get(id).copied().unwrap_or(0);
            payload == 0 || threshold >= 1.0 || (live as f64) < threshold * payload as f64
        })
        .map(|(_, s)| s.clone())
        .collect()
}

/// Whether the local file of `seg` was last written at least `age` ago. An offloaded segment
/// counts as settled, as before (it was sealed, uploaded and verified before it was evicted).
fn written_before(seg: &Segment, age: std::time::Duration) -> bool {
    if seg.file.is_none() {
        return true;
    }
    let modified = std::fs::metadata(&seg.path).and_then(|m| m.modified());
    modified.is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= age))
}

/// Sealed local segments (before `current`) of which at least an eighth is dead, with their
/// live bytes, those with the most dead bytes first.
fn space_victims(ns: &Namespace, current: u32) -> Vec<(Arc<Segment>, u64)> {
    let st = ns.state.read();
    let mut victims: Vec<(Arc<Segment>, u64, u64)> = st
        .segments
        .iter()
        .filter(|(id, s)| **id < current && s.file.is_some())
        .filter_map(|(id, s)| {
            let payload = s.len().saturating_sub(SEGMENT_HEADER_LEN);
            let live = st.index.seg_live.get(id).copied().unwrap_or(0);
            let dead = payload.saturating_sub(live);
            (dead > 0 && dead >= payload / 8).then(|| (s.clone(), live, dead))
        })
        .collect();
    victims.sort_by_key(|v| std::cmp::Reverse(v.2));
    victims.into_iter().map(|(s, live, _)| (s, live)).collect()
}

fn compact_segment(
    ns: &Namespace,
    shared: &Shared,
    seg: &Arc<Segment>,
    cutoff: Option<u64>,
    report: &mut CompactionReport,
) -> Result<bool> {
    let where_ = || {
        format!(
            "segment {}/{}",
            ns.name,
            crate::segment::segment_file_name(seg.id)
        )
    };
    let handle = seg
        .handle()
        .map_err(|e| Error::io(format!("open {}", seg.path.display()), e))?;
    let (source, len) = match handle {
        Some(file) => {
            let len = file
                .metadata()
                .map_err(|e| Error::io(format!("stat {}", seg.path.display()), e))?
                .len();
            (Source::Local(seg.clone()), len)
        }
        None => {
            let Some(cold) = shared.cold.as_ref() else {
                return Ok(false);
            };
            let key = crate::cold::cold_key(&ns.name, seg.id);
            let data = match cold.get(&key) {
                Ok(d) => d,
                Err(e) => {
                    // Unreachable now: the segment is still readable by range later, and the
                    // next round retries.
                    tracing::warn!(namespace = %ns.name, segment = seg.id, error = %e, "cannot fetch offloaded segment for compaction");
                    return Ok(false);
                }
            };
            let header_ok =
                crate::segment::decode_segment_header(&data).is_ok_and(|id| id == seg.id);
            if !header_ok || data.len() as u64 != seg.offloaded_len {
                tracing::error!(namespace = %ns.name, segment = seg.id, key = %key, got = data.len(), want = seg.offloaded_len,
                    "cold copy of an offloaded segment is damaged; not compacting it");
                return Ok(false);
            }
            let len = data.len() as u64;
            (Source::Cold(data), len)
        }
    };
    let mut candidates = Vec::new();
    let src = |buf: &mut [u8], off: u64| source.read(buf, off);
    let scan = scan_segment(&src, len, SEGMENT_HEADER_LEN, |r| {
        candidates.push(Candidate {
            offset: r.offset,
            header: r.header,
            key: r.key.to_vec(),
        });
    })
    .map_err(|e| Error::io(format!("read {}", where_()), e))?;
    if !scan.corrupt.is_empty() || scan.valid_end < len {
        // Damaged records may be the only copy of something: keep the file for an operator.
        tracing::error!(namespace = %ns.name, segment = seg.id, "segment has damage; not compacting it");
        return Ok(false);
    }
    let mut i = 0;
    while i < candidates.len() {
        let mut w = ns.writer.lock();
        if !ns
            .state
            .read()
            .segments
            .get(&seg.id)
            .is_some_and(|s| Arc::ptr_eq(s, seg))
        {
            return Ok(false);
        }
        let mut batch = 0u64;
        while i < candidates.len() && batch < BATCH_BYTES {
            let c = &candidates[i];
            i += 1;
            let at = loc(seg.id, c.offset);
            let (is_head, keep, prev) = {
                let st = ns.state.read();
                let head = st.index.keys.get(&c.key[..]);
                let is_head = head.is_some_and(|h| h.loc == at);
                let already = st.index.forward.contains_key(&at);
                let young = cutoff.is_none_or(|t| c.header.timestamp >= t);
                let keep = is_head || (!already && head.is_some() && young);
                (is_head, keep, st.resolve(c.header.prev).unwrap_or(0))
            };
            if !keep {
                report.records_dropped += 1;
                continue;
            }
            let mut value = vec![0u8; c.header.value_len as usize];
            let voff = c.offset + (crate::segment::RECORD_HEADER_LEN + c.key.len()) as u64;
            let n = source
                .read(&mut value, voff)
                .map_err(|e| Error::io(format!("read {}", where_()), e))?;
            if n < value.len() || crate::segment::value_crc(&value) != c.header.value_crc {
                return Err(Error::corrupt(
                    format!("{} @ {}", where_(), c.offset),
                    "value changed under compaction",
                ));
            }
            let mut header = c.header.clone();
            header.flags |= FLAG_COPY;
            header.origin = at;
            header.prev = prev;
            let rec = encode_record(&header, &c.key, &value);
            let new_at = ns.append_with(shared, &mut w, &[&rec], false)?;
            batch += rec.len() as u64;
            report.records_copied += 1;
            report.bytes_copied += rec.len() as u64;
            let mut st = ns.state.write();
            if is_head {
                st.index
                    .apply(&c.key, crate::index::KeyState::of(&header, new_at));
            } else {
                st.index.forward.insert(at, new_at);
            }
        }
        drop(w);
    }
    // The copies must be durable before the only other copy goes away.
    let w = ns.writer.lock();
    if let Some(f) = w
        .seg
        .handle()
        .map_err(|e| Error::io(format!("open {}", w.seg.path.display()), e))?
    {
        f.sync_data()
            .map_err(|e| Error::io(format!("sync {}", w.seg.path.display()), e))?;
        w.seg.note_synced(w.end);
    }
    // Eviction may have offloaded the segment since it was picked (it takes the writer
    // between batches); the writer held now keeps that state still.
    let offloaded = seg.file.is_none()
        || ns
            .state
            .read()
            .segments
            .get(&seg.id)
            .is_some_and(|s| s.file.is_none());
    if offloaded {
        // Persist first: once the descriptor forgets the segment it is never read again.
        let mut desc = ns.state.read().desc.clone();
        desc.offloaded.remove(&seg.id);
        desc.store(&ns.dir)?;
        ns.state.write().desc = desc;
    }
    {
        let mut st = ns.state.write();
        st.segments.remove(&seg.id);
        st.index.seg_live.remove(&seg.id);
        let segs: std::collections::BTreeSet<u32> = st.segments.keys().copied().collect();
        st.index.prune_forward(|s| segs.contains(&s));
        debug_assert!(st.index.keys.values().all(|k| loc_segment(k.loc) != seg.id));
    }
    // The snapshot must not name the removed segment.
    ns.write_snapshot_locked(&w);
    if !offloaded {
        match std::fs::remove_file(&seg.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", seg.path.display()), e)),
        }
        let _ = crate::segment::sync_dir(&ns.dir);
    }
    report.bytes_removed += len;
    ns.events.lock().push(Event::Removed(seg.id));
    drop(w);
    Ok(true)
}

/// Passes of [`crate::Engine::reclaim`] over one namespace per round at most.
const RECLAIM_PASSES: usize = 8;

/// How often the background compactor looks at the disk between its rounds.
const SPACE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Compacts, every `every`, each namespace for which `select` is true, on a background thread
/// that ends by itself once the engine is dropped. The engine only compacts when asked; a
/// long-running user (a filesystem, a server) wants this so that overwritten and deleted data
/// leaves the disk. Every second (or `every`, if shorter) it also checks the disk, and while it
/// is low ([`crate::EngineConfig::low_space`]) gives space back with [`crate::Engine::reclaim`],
/// so that deleting data on a full disk makes room again within seconds. Failures are logged
/// and retried at the next round.
///
/// Once the disk is low, everything that [`crate::Engine::reclaim`] can give back is given back,
/// not just enough to pass the low mark: `df` then shows what deleting freed. Without a
/// [`crate::EngineConfig::history_retention`] nothing may ever go, so no thread is started.
pub fn spawn_compactor(
    engine: &Arc<crate::Engine>,
    every: std::time::Duration,
    select: impl Fn(&str) -> bool + Send + 'static,
) -> std::io::Result<()> {
    use qsfs_core::Store;
    if engine.config().history_retention.is_none() {
        // Every superseded version is kept forever: a compaction could only copy them all
        // forward again, round after round, and give nothing back.
        tracing::info!("no history retention: nothing to compact, no compactor started");
        return Ok(());
    }
    let weak = Arc::downgrade(engine);
    std::thread::Builder::new()
        .name("qsfs-compact".into())
        .spawn(move || {
            let mut last_round = std::time::Instant::now();
            let mut low = false;
            loop {
                std::thread::sleep(every.min(SPACE_POLL));
                let Some(engine) = weak.upgrade() else { return };
                let names: Vec<String> = engine
                    .namespace_list()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| select(n))
                    .collect();
                low = reclaim_round(&engine, &names, low);
                if last_round.elapsed() >= every {
                    last_round = std::time::Instant::now();
                    ratio_round(&engine, &names);
                }
            }
        })
        .map(|_| ())
}

/// One round of [`crate::Engine::reclaim`] over `names` if the disk is low; returns whether it
/// is. Said once when the disk becomes low and once when it is no longer.
fn reclaim_round(engine: &crate::Engine, names: &[String], was_low: bool) -> bool {
    let (space, low_mark) = match (engine.disk_space(), engine.low_space()) {
        (Ok(s), Ok(l)) => (s, l),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "cannot check the disk space");
            return was_low;
        }
    };
    if space.available >= low_mark {
        if was_low {
            tracing::info!(
                available = space.available,
                "disk space is back above the low mark"
            );
        }
        return false;
    }
    if !was_low {
        tracing::warn!(
            available = space.available,
            low_mark,
            "disk space low: giving space back from superseded data"
        );
    }
    for ns in names {
        // Until nothing more comes back: a victim that did not fit may fit once others left.
        for _ in 0..RECLAIM_PASSES {
            match engine.reclaim(ns) {
                Ok(r) if r.bytes_removed > 0 => {
                    tracing::info!(ns = %ns, bytes = r.bytes_removed, copied = r.bytes_copied, "space given back")
                }
                Ok(_) => break,
                // Retried every second while the disk stays low: said once.
                Err(e) => {
                    if was_low {
                        tracing::debug!(ns = %ns, error = %e, "giving space back failed");
                    } else {
                        tracing::warn!(ns = %ns, error = %e, "giving space back failed");
                    }
                    break;
                }
            }
        }
    }
    true
}

/// One round of threshold compaction over `names`.
fn ratio_round(engine: &crate::Engine, names: &[String]) {
    for ns in names {
        match engine.compact_settled(ns) {
            Ok(r) if r.bytes_removed > 0 => {
                tracing::info!(ns = %ns, bytes = r.bytes_removed, "compacted")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(ns = %ns, error = %e, "compaction failed"),
        }
    }
}
