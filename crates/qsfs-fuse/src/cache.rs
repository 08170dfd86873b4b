//! [`BlockCache`]: the write-back block cache between the filesystem and the Store.
//!
//! One global byte budget covers every cached block, clean or dirty. Partial writes are merged
//! into whole blocks in memory (read-modify-write on a miss), so each block reaches the
//! append-only Store once per flush instead of once per `write()`. When the budget is exceeded,
//! the least recently used block goes first: a clean one is dropped, a dirty one is written back.
//! Sequential readers can ask for read-ahead, which a background thread loads into the cache.

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard};
use qsfs_core::{BlockId, Cache, CacheStats, Result, Store};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use crate::layout::pair_key;
use crate::stats::FsStats;

/// How many evicted block buffers are kept for reuse (2 MiB at the default block size).
const SPARE_BUFFERS: usize = 16;

/// Whole dirty blocks above this share of the budget (1/32: 8 MiB of 256 MiB) start the
/// background writer.
const STREAMING_SHARE: u64 = 32;

/// Background threads loading read-ahead blocks. One: with two, the loaders and the request
/// thread fetched more blocks twice and a cold sequential read on the loaded 2-core machine got
/// slower (more CPU for the same bytes), not faster.
const READ_AHEAD_LOADERS: usize = 1;

struct Slot {
    data: Bytes,
    dirty: bool,
    /// Dirty and written as one whole block: a streaming writer's, not worth keeping back.
    whole: bool,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    blocks: BTreeMap<BlockId, Slot>,
    /// Use order: tick → block. The smallest tick is the least recently used.
    lru: BTreeMap<u64, BlockId>,
    /// The dirty subset of `lru`, so the background writer finds its next victim without
    /// walking past every clean block (with a full cache that walk cost more than the store
    /// write itself, under the lock the request thread needs).
    dirty_lru: BTreeMap<u64, BlockId>,
    tick: u64,
    bytes: u64,
    dirty_bytes: u64,
    /// Bytes of dirty blocks that were written whole.
    whole_bytes: u64,
    hits: u64,
    misses: u64,
    blocks_written: u64,
    /// Blocks a read-ahead loader is fetching: the other loader and new read-ahead requests
    /// leave them alone instead of reading them twice.
    loading: std::collections::HashSet<BlockId>,
    /// Blocks written while a loader was fetching them: what it fetched may be older than
    /// the write, which may have left the cache (stored, then evicted) by the time it lands.
    spoiled: std::collections::HashSet<BlockId>,
    /// Bumped by every discard, so read-ahead never re-inserts a block loaded before it.
    epoch: u64,
    /// When the oldest unflushed write happened.
    dirty_since: Option<Instant>,
    /// Block buffers of evicted blocks, reused by whole-block writes: a fresh 128 KiB
    /// allocation is a fresh mapping whose every page faults in and is zeroed, which cost a
    /// streaming writer more than copying its data.
    spare: Vec<Vec<u8>>,
    /// The blocks being stored right now, with the lock released (by the background writer
    /// and by a flush). Nobody else stores or drops such a block's key meanwhile, so an older
    /// copy can never land after a newer one.
    in_flight: Vec<BlockId>,
}

struct Shared {
    store: Arc<dyn Store>,
    ns: String,
    block_size: usize,
    capacity: u64,
    inner: Mutex<Inner>,
    stop: AtomicBool,
    counters: Arc<FsStats>,
    /// Wakes the background writer (dirty data above the high-water mark, or stop).
    work: Condvar,
    /// Signalled whenever a block stored with the lock released has landed.
    landed: Condvar,
}

/// Stores a cache's dirty blocks from any thread, without the filesystem's lock: the
/// flush timer writes the bulk of the data this way, so requests are not held up meanwhile;
/// the metadata batch that follows (under the lock) only has the rest to store.
#[derive(Clone)]
pub struct CacheFlusher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CacheFlusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheFlusher").finish_non_exhaustive()
    }
}

impl CacheFlusher {
    /// Stores every block that is dirty now.
    pub fn flush(&self) -> Result<()> {
        self.shared.flush(None)
    }
}

/// A write-back block cache over one Store namespace; blocks are stored under
/// `inode (u64 BE) + index (u64 BE)`.
pub struct BlockCache {
    shared: Arc<Shared>,
    ahead: Option<SyncSender<(BlockId, u64)>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("ns", &self.shared.ns)
            .field("block_size", &self.shared.block_size)
            .field("stats", &self.stats())
            .finish()
    }
}

impl BlockCache {
    /// A cache of `capacity` bytes over the blocks kept in `ns` of `store`, with blocks of
    /// `block_size` bytes.
    pub fn new(store: Arc<dyn Store>, ns: &str, block_size: usize, capacity: u64) -> Self {
        let shared = Arc::new(Shared {
            store,
            ns: ns.to_string(),
            block_size,
            capacity,
            inner: Mutex::new(Inner::default()),
            stop: AtomicBool::new(false),
            counters: Arc::default(),
            work: Condvar::new(),
            landed: Condvar::new(),
        });
        let (tx, rx) = sync_channel::<(BlockId, u64)>(256);
        let rx = Arc::new(Mutex::new(rx));
        let workers: Vec<_> = (0..READ_AHEAD_LOADERS)
            .filter_map(|_| {
                let (shared, rx) = (shared.clone(), rx.clone());
                std::thread::Builder::new()
                    .name("qsfs-readahead".into())
                    .spawn(move || read_ahead_loop(shared, rx))
                    .ok()
            })
            .collect();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("qsfs-writeback".into())
            .spawn(move || write_behind_loop(writer_shared))
            .ok();
        BlockCache {
            shared,
            ahead: (!workers.is_empty()).then_some(tx),
            workers,
            writer,
        }
    }

    /// Asks the background loader to bring `count` blocks of `inode` from `first` into the
    /// cache. Best effort: requests are dropped when the loader is busy.
    pub fn read_ahead(&self, inode: u64, first: u64, count: u64) {
        let Some(tx) = &self.ahead else { return };
        let epoch = self.shared.inner.lock().epoch;
        for index in first..first.saturating_add(count) {
            let id = BlockId { inode, index };
            {
                let inner = self.shared.inner.lock();
                if inner.blocks.contains_key(&id) || inner.loading.contains(&id) {
                    continue;
                }
            }
            match tx.try_send((id, epoch)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// A handle that flushes this cache from another thread.
    pub fn flusher(&self) -> CacheFlusher {
        CacheFlusher {
            shared: self.shared.clone(),
        }
    }

    /// The filesystem counters this cache counts its hits and misses in.
    pub fn counters(&self) -> Arc<FsStats> {
        self.shared.counters.clone()
    }

    /// Forgets one block without writing it back (a punched hole).
    pub fn forget(&self, block: BlockId) {
        let mut inner = self.shared.inner.lock();
        self.shared.wait_landed(&mut inner, |b| b == block);
        inner.epoch += 1;
        self.shared.remove(&mut inner, block);
    }

    /// Bytes of dirty blocks, not yet in the store.
    pub fn dirty_bytes(&self) -> u64 {
        self.shared.inner.lock().dirty_bytes
    }

    /// When the oldest write not yet flushed happened, if any.
    pub fn dirty_since(&self) -> Option<Instant> {
        self.shared.inner.lock().dirty_since
    }

    /// The cached copy of `block`, if any, without asking the store (a hit when there is one).
    pub fn cached(&self, block: BlockId) -> Option<Bytes> {
        let s = &self.shared;
        let mut inner = s.inner.lock();
        let data = inner.blocks.get(&block)?.data.clone();
        inner.hits += 1;
        s.counters.cache_hit();
        s.touch(&mut inner, block);
        Some(data)
    }

    /// Counts a read of a block the cache did not hold, fetched by someone else.
    pub fn note_miss(&self) {
        self.shared.inner.lock().misses += 1;
        self.shared.counters.cache_miss();
    }

    /// Keeps `data`, just read from the Store by someone else, as the clean copy of `block`.
    /// The caller vouches that it is the block's current content. A copy already cached is
    /// kept (it is at least as new), and the block is only kept if clean blocks can make room.
    pub fn install(&self, block: BlockId, data: Bytes) -> Result<()> {
        let s = &self.shared;
        let mut inner = s.inner.lock();
        if inner.blocks.contains_key(&block) {
            return Ok(());
        }
        let len = data.len() as u64;
        s.make_room(&mut inner, len, None, true)?;
        if inner.bytes + len <= s.capacity {
            s.insert(&mut inner, block, data, false);
        }
        Ok(())
    }

    /// True if `block` is in the cache with data the Store has not seen.
    pub fn is_dirty(&self, block: BlockId) -> bool {
        self.shared
            .inner
            .lock()
            .blocks
            .get(&block)
            .is_some_and(|s| s.dirty)
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.ahead = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        {
            let _inner = self.shared.inner.lock();
            self.shared.work.notify_all();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Stores least recently used dirty blocks in the background while dirty data is above half
/// the budget, down to a quarter, so a streaming writer's requests overlap the store's work
/// (checksums, `pwrite`) instead of waiting for it at every eviction.
fn write_behind_loop(shared: Arc<Shared>) {
    let high = shared.capacity / 2;
    let low = shared.capacity / 4;
    let mut inner = shared.inner.lock();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let pressure = inner.dirty_bytes > high;
        if !pressure && !shared.streaming(&inner) {
            shared.work.wait(&mut inner);
            continue;
        }
        let mut stored = 0;
        while !shared.stop.load(Ordering::SeqCst) {
            // Under pressure: the oldest dirty blocks, down to the low-water mark. Otherwise
            // only a streaming writer's whole blocks, which nothing will coalesce and which
            // would otherwise all wait for the fsync that ends the stream.
            let victim = if pressure {
                if inner.dirty_bytes <= low {
                    break;
                }
                inner
                    .dirty_lru
                    .values()
                    .find(|id| !inner.in_flight.contains(id))
                    .copied()
            } else {
                if !shared.streaming(&inner) {
                    break;
                }
                inner
                    .dirty_lru
                    .values()
                    .take(64)
                    .find(|id| {
                        inner.blocks.get(id).is_some_and(|s| s.whole)
                            && !inner.in_flight.contains(id)
                    })
                    .copied()
            };
            let Some(id) = victim else { break };
            let Some(data) = inner.blocks.get(&id).map(|s| s.data.clone()) else {
                break;
            };
            inner.in_flight.push(id);
            let r = MutexGuard::unlocked(&mut inner, || {
                shared.store.set(&shared.ns, Some(&shared.key(id)), &data)
            });
            inner.in_flight.retain(|&b| b != id);
            shared.landed.notify_all();
            if let Err(e) = r {
                tracing::warn!(error = %e, "background write-back failed; the flush retries");
                MutexGuard::unlocked(&mut inner, || {
                    std::thread::sleep(std::time::Duration::from_millis(200))
                });
                break;
            }
            inner.blocks_written += 1;
            stored += 1;
            // Rewritten meanwhile (another allocation): the newer data stays dirty.
            let same = inner
                .blocks
                .get(&id)
                .is_some_and(|s| s.dirty && s.data.as_ptr() == data.as_ptr());
            if same {
                shared.mark_clean(&mut inner, id);
            }
        }
        if stored == 0 && !shared.stop.load(Ordering::SeqCst) {
            // Nothing could go (failure, or no whole block among the oldest): wait for news.
            shared.work.wait(&mut inner);
        }
    }
}

fn read_ahead_loop(shared: Arc<Shared>, rx: Arc<Mutex<Receiver<(BlockId, u64)>>>) {
    loop {
        let next = rx.lock().recv();
        let Ok((id, epoch)) = next else { return };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut inner = shared.inner.lock();
            if inner.blocks.contains_key(&id) || !inner.loading.insert(id) {
                continue;
            }
        }
        let got = shared.store.get(&shared.ns, &pair_key(id.inode, id.index));
        let mut inner = shared.inner.lock();
        inner.loading.remove(&id);
        let spoiled = inner.spoiled.remove(&id);
        let Ok(Some(entry)) = got else {
            continue;
        };
        if spoiled {
            continue;
        }
        if inner.epoch != epoch || inner.blocks.contains_key(&id) {
            continue;
        }
        // Read-ahead only uses room that clean blocks can give back.
        let len = entry.value.len() as u64;
        if shared.make_room(&mut inner, len, None, false).is_err()
            || inner.bytes + len > shared.capacity
        {
            continue;
        }
        shared.insert(&mut inner, id, Bytes::from(entry.value), false);
    }
}

impl Shared {
    fn flush(&self, inode: Option<u64>) -> Result<()> {
        let s = self;
        let mut inner = s.inner.lock();
        let ids: Vec<BlockId> = match inode {
            Some(ino) => inner
                .blocks
                .range(range(ino, 0))
                .filter(|(_, v)| v.dirty)
                .map(|(k, _)| *k)
                .collect(),
            None => {
                // In block order, so a file's blocks land next to each other in the store.
                let mut ids: Vec<BlockId> = inner.dirty_lru.values().copied().collect();
                ids.sort_unstable();
                ids
            }
        };
        s.write_back(&mut inner, &ids)
    }

    /// Waits while the background writer stores a block matching `which`.
    fn wait_landed(&self, inner: &mut MutexGuard<'_, Inner>, which: impl Fn(BlockId) -> bool) {
        while inner.in_flight.iter().any(|&b| which(b)) {
            self.landed.wait(inner);
        }
    }

    /// After `block` was dirtied: wake the background writer above half the budget; over the
    /// budget, make room now (the block just written stays).
    /// True when enough whole blocks are dirty that a streaming writer is at work.
    fn streaming(&self, inner: &Inner) -> bool {
        inner.whole_bytes > self.capacity / STREAMING_SHARE
    }

    fn after_dirty(&self, inner: &mut MutexGuard<'_, Inner>, block: BlockId) -> Result<()> {
        if inner.dirty_bytes > self.capacity / 2 || self.streaming(inner) {
            self.work.notify_one();
        }
        if inner.bytes > self.capacity {
            self.make_room(inner, 0, Some(block), false)?;
        }
        Ok(())
    }

    /// Keeps the buffer of a block leaving the cache for reuse, if nobody else holds it.
    fn recycle(&self, inner: &mut Inner, data: Bytes) {
        if data.len() != self.block_size || inner.spare.len() >= SPARE_BUFFERS {
            return;
        }
        if let Ok(m) = data.try_into_mut() {
            inner.spare.push(Vec::from(m));
        }
    }

    /// A buffer holding a copy of `data`, reusing a spare one when there is one.
    fn buffer_of(&self, inner: &mut Inner, data: &[u8]) -> Bytes {
        let mut buf = inner.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        Bytes::from(buf)
    }

    fn key(&self, id: BlockId) -> [u8; 16] {
        pair_key(id.inode, id.index)
    }

    fn insert(&self, inner: &mut Inner, id: BlockId, data: Bytes, dirty: bool) {
        self.insert_as(inner, id, data, dirty, false)
    }

    fn insert_as(&self, inner: &mut Inner, id: BlockId, data: Bytes, dirty: bool, whole: bool) {
        let whole = dirty && whole;
        if dirty && inner.loading.contains(&id) {
            inner.spoiled.insert(id);
        }
        inner.tick += 1;
        let tick = inner.tick;
        let len = data.len() as u64;
        let slot = Slot {
            data,
            dirty,
            whole,
            tick,
        };
        if let Some(old) = inner.blocks.insert(id, slot) {
            inner.lru.remove(&old.tick);
            inner.bytes -= old.data.len() as u64;
            if old.dirty {
                inner.dirty_lru.remove(&old.tick);
                inner.dirty_bytes -= old.data.len() as u64;
            }
            if old.whole {
                inner.whole_bytes -= old.data.len() as u64;
            }
        }
        inner.lru.insert(tick, id);
        inner.bytes += len;
        if whole {
            inner.whole_bytes += len;
        }
        if dirty {
            inner.dirty_lru.insert(tick, id);
            inner.dirty_bytes += len;
            inner.dirty_since.get_or_insert_with(Instant::now);
        }
    }

    fn remove(&self, inner: &mut Inner, id: BlockId) -> Option<Slot> {
        let slot = inner.blocks.remove(&id)?;
        inner.lru.remove(&slot.tick);
        inner.bytes -= slot.data.len() as u64;
        if slot.dirty {
            inner.dirty_lru.remove(&slot.tick);
            inner.dirty_bytes -= slot.data.len() as u64;
        }
        if slot.whole {
            inner.whole_bytes -= slot.data.len() as u64;
        }
        if inner.dirty_bytes == 0 {
            inner.dirty_since = None;
        }
        Some(slot)
    }

    fn touch(&self, inner: &mut Inner, id: BlockId) {
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(slot) = inner.blocks.get_mut(&id) {
            let old = std::mem::replace(&mut slot.tick, tick);
            let dirty = slot.dirty;
            inner.lru.remove(&old);
            inner.lru.insert(tick, id);
            if dirty {
                inner.dirty_lru.remove(&old);
                inner.dirty_lru.insert(tick, id);
            }
        }
    }

    /// Records that the Store now holds `id`'s cached data.
    fn mark_clean(&self, inner: &mut Inner, id: BlockId) {
        let Some(slot) = inner.blocks.get_mut(&id) else {
            return;
        };
        if !slot.dirty {
            return;
        }
        slot.dirty = false;
        let was_whole = std::mem::replace(&mut slot.whole, false);
        let (tick, len) = (slot.tick, slot.data.len() as u64);
        inner.dirty_lru.remove(&tick);
        inner.dirty_bytes -= len;
        if was_whole {
            inner.whole_bytes -= len;
        }
        if inner.dirty_bytes == 0 {
            inner.dirty_since = None;
        }
    }

    /// Evicts least recently used blocks until `incoming` more bytes fit, never evicting `keep`.
    /// Dirty blocks are written back first unless `clean_only`.
    fn make_room(
        &self,
        inner: &mut MutexGuard<'_, Inner>,
        incoming: u64,
        keep: Option<BlockId>,
        clean_only: bool,
    ) -> Result<()> {
        let mut skipped = Vec::new();
        while inner.bytes + incoming > self.capacity {
            let Some((&tick, &id)) = inner.lru.iter().next() else {
                break;
            };
            if inner.in_flight.contains(&id) {
                self.wait_landed(inner, |b| b == id);
                continue;
            }
            inner.lru.remove(&tick);
            let dirty = inner.blocks.get(&id).is_some_and(|s| s.dirty);
            if Some(id) == keep || (dirty && clean_only) {
                skipped.push((tick, id));
                continue;
            }
            if dirty {
                let data = inner
                    .blocks
                    .get(&id)
                    .map(|s| s.data.clone())
                    .unwrap_or_default();
                if let Err(e) = self.store.set(&self.ns, Some(&self.key(id)), &data) {
                    inner.lru.insert(tick, id);
                    for (t, i) in skipped {
                        inner.lru.insert(t, i);
                    }
                    return Err(e);
                }
                inner.blocks_written += 1;
            }
            inner.lru.insert(tick, id);
            if let Some(slot) = self.remove(inner, id) {
                self.recycle(inner, slot.data);
            }
        }
        for (t, i) in skipped {
            inner.lru.insert(t, i);
        }
        Ok(())
    }

    /// Stores the dirty blocks among `ids`. The lock is released while each block is stored,
    /// so requests (and the background writer) go on meanwhile.
    fn write_back(&self, inner: &mut MutexGuard<'_, Inner>, ids: &[BlockId]) -> Result<()> {
        for &id in ids {
            self.wait_landed(inner, |b| b == id);
            let Some(slot) = inner.blocks.get(&id) else {
                continue;
            };
            if !slot.dirty {
                continue;
            }
            let data = slot.data.clone();
            inner.in_flight.push(id);
            let r = MutexGuard::unlocked(inner, || {
                self.store.set(&self.ns, Some(&self.key(id)), &data)
            });
            inner.in_flight.retain(|&b| b != id);
            self.landed.notify_all();
            r?;
            inner.blocks_written += 1;
            // Rewritten meanwhile: the newer data stays dirty for the next flush.
            let same = inner
                .blocks
                .get(&id)
                .is_some_and(|s| s.dirty && s.data.as_ptr() == data.as_ptr());
            if same {
                self.mark_clean(inner, id);
            }
        }
        Ok(())
    }
}

impl BlockCache {
    /// Like `Cache::write`, for a block the caller knows is not stored (a hole, or past the
    /// end): the rest of the block starts as zeros without asking the store, so writing into
    /// new space never waits on the store.
    pub fn write_hole(&self, block: BlockId, offset: usize, data: &[u8]) -> Result<()> {
        self.write_block(block, offset, data, true)
    }

    fn write_block(&self, block: BlockId, offset: usize, data: &[u8], hole: bool) -> Result<()> {
        let s = &self.shared;

        let end = offset + data.len();
        if end > s.block_size {
            return Err(qsfs_core::Error::InvalidArgument(format!(
                "write of {} bytes at {offset} overflows a {}-byte block",
                data.len(),
                s.block_size
            )));
        }
        let mut inner = s.inner.lock();
        if offset == 0 && end == s.block_size {
            // A whole block replaces whatever was there: one copy, no zero fill.
            if let Some(old) = s.remove(&mut inner, block) {
                s.recycle(&mut inner, old.data);
            }
            let data = s.buffer_of(&mut inner, data);
            s.insert_as(&mut inner, block, data, true, true);
            return s.after_dirty(&mut inner, block);
        }
        let mut buf: Vec<u8> = match s.remove(&mut inner, block) {
            Some(slot) => Vec::from(slot.data),
            None if hole => Vec::new(),
            None => s
                .store
                .get(&s.ns, &s.key(block))?
                .map(|e| e.value)
                .unwrap_or_default(),
        };
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[offset..end].copy_from_slice(data);
        s.insert(&mut inner, block, Bytes::from(buf), true);
        s.after_dirty(&mut inner, block)
    }
}

fn range(inode: u64, from: u64) -> std::ops::RangeInclusive<BlockId> {
    BlockId { inode, index: from }..=BlockId {
        inode,
        index: u64::MAX,
    }
}

impl Cache for BlockCache {
    fn block_size(&self) -> usize {
        self.shared.block_size
    }

    fn read(&self, block: BlockId) -> Result<Option<Bytes>> {
        let s = &self.shared;
        let mut inner = s.inner.lock();
        if let Some(slot) = inner.blocks.get(&block) {
            let data = slot.data.clone();
            inner.hits += 1;
            s.counters.cache_hit();
            s.touch(&mut inner, block);
            return Ok(Some(data));
        }
        inner.misses += 1;
        s.counters.cache_miss();
        loop {
            // The store read runs unlocked so the read-ahead loaders can insert meanwhile.
            let epoch = inner.epoch;
            let got = MutexGuard::unlocked(&mut inner, || s.store.get(&s.ns, &s.key(block)))?;
            if let Some(slot) = inner.blocks.get(&block) {
                // Loaded (or written) meanwhile: the cached copy is at least as new.
                return Ok(Some(slot.data.clone()));
            }
            if inner.epoch != epoch {
                // Discarded meanwhile: what was read may be gone; read again.
                continue;
            }
            let Some(entry) = got else {
                return Ok(None);
            };
            let data = Bytes::from(entry.value);
            let len = data.len() as u64;
            s.make_room(&mut inner, len, None, true)?;
            if inner.bytes + len <= s.capacity {
                s.insert(&mut inner, block, data.clone(), false);
            }
            return Ok(Some(data));
        }
    }

    fn write(&self, block: BlockId, offset: usize, data: &[u8]) -> Result<()> {
        self.write_block(block, offset, data, false)
    }

    fn discard(&self, inode: u64, from_index: u64, keep_in_last: Option<usize>) -> Result<()> {
        let s = &self.shared;
        let mut inner = s.inner.lock();
        s.wait_landed(&mut inner, |b| b.inode == inode);
        inner.epoch += 1;
        let ids: Vec<BlockId> = inner
            .blocks
            .range(range(inode, from_index))
            .map(|(k, _)| *k)
            .collect();
        for id in ids {
            s.remove(&mut inner, id);
        }
        if let (Some(keep), Some(last)) = (keep_in_last, from_index.checked_sub(1)) {
            let id = BlockId { inode, index: last };
            let current = match s.remove(&mut inner, id) {
                Some(slot) => Some((Vec::from(slot.data), slot.dirty)),
                None => s.store.get(&s.ns, &s.key(id))?.map(|e| (e.value, false)),
            };
            if let Some((mut buf, dirty)) = current {
                let cut = buf.len() > keep;
                buf.truncate(keep);
                s.insert(&mut inner, id, Bytes::from(buf), dirty || cut);
            }
        }
        Ok(())
    }

    fn flush(&self, inode: Option<u64>) -> Result<()> {
        self.shared.flush(inode)
    }

    fn stats(&self) -> CacheStats {
        let inner = self.shared.inner.lock();
        CacheStats {
            bytes: inner.bytes,
            dirty_bytes: inner.dirty_bytes,
            capacity: self.shared.capacity,
            hits: inner.hits,
            misses: inner.misses,
            blocks_written: inner.blocks_written,
        }
    }
}
