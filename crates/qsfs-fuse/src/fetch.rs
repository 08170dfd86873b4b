//! Reads that must fetch blocks from the Store, served off the FUSE session thread.
//!
//! A fetch can take seconds (a cold-tier segment brought back from remote backends, a slow
//! remote store); done on the session thread under the filesystem lock it would hold up every
//! other request of the mount. Instead the read is planned under the lock
//! ([`crate::Fs::plan_read`]), the blocks are fetched by a [`ReadPool`] worker with the lock
//! released ([`Fetches`]), and the read is finished under the lock again
//! ([`crate::Fs::finish_read`]), which starts over if the file changed meanwhile.

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use qsfs_core::{BlockId, Store};
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{errno, FsError};
use crate::layout::pair_key;

/// Read threads of a mount unless configured otherwise.
pub const DEFAULT_READ_THREADS: usize = 4;
/// The most read threads a mount accepts: reads wait for the store, not for CPU, and each
/// thread costs a stack.
pub const MAX_READ_THREADS: usize = 256;

/// What one fetch of a block gave: its bytes (`None`: the store does not have it) or the errno.
pub type Fetched = Result<Option<Bytes>, libc::c_int>;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct PoolState {
    /// Jobs waiting for a worker, with the inode each reads.
    queue: VecDeque<(u64, Job)>,
    /// Workers busy per inode.
    running: HashMap<u64, usize>,
    stop: bool,
}

struct PoolShared {
    state: Mutex<PoolState>,
    wake: Condvar,
    /// Workers one inode may occupy at once.
    per_inode: usize,
}

/// A fixed set of threads running read jobs. One file's reads never take more than half of
/// them (at least one), so a file whose fetches stall (a kernel read-ahead window sends many
/// requests at once) leaves workers for every other file.
pub struct ReadPool {
    shared: Arc<PoolShared>,
}

impl std::fmt::Debug for ReadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPool")
            .field("per_inode", &self.shared.per_inode)
            .finish_non_exhaustive()
    }
}

impl ReadPool {
    /// Starts `threads` workers; `None` for zero threads or if none could start.
    pub fn new(threads: usize) -> Option<ReadPool> {
        let shared = Arc::new(PoolShared {
            state: Mutex::new(PoolState::default()),
            wake: Condvar::new(),
            per_inode: threads.div_ceil(2).max(1),
        });
        let started = (0..threads)
            .filter(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("qsfs-read-{i}"))
                    .spawn(move || worker(&shared))
                    .is_ok()
            })
            .count();
        (started > 0).then_some(ReadPool { shared })
    }

    /// Queues `job`, a read of `ino`.
    pub fn submit(&self, ino: u64, job: Box<dyn FnOnce() + Send>) {
        self.shared.state.lock().queue.push_back((ino, job));
        self.shared.wake.notify_all();
    }
}

impl Drop for ReadPool {
    /// Workers finish the queued jobs and exit. They are not joined: one may be waiting on a
    /// stalled store, and the unmount must not wait for it.
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.wake.notify_all();
    }
}

fn worker(shared: &PoolShared) {
    loop {
        let (ino, job) = {
            let mut st = shared.state.lock();
            loop {
                let ready = st.queue.iter().position(|(ino, _)| {
                    st.running.get(ino).copied().unwrap_or(0) < shared.per_inode
                });
                if let Some((ino, job)) = ready.and_then(|i| st.queue.remove(i)) {
                    *st.running.entry(ino).or_default() += 1;
                    break (ino, job);
                }
                if st.stop && st.queue.is_empty() {
                    return;
                }
                shared.wake.wait(&mut st);
            }
        };
        // The job owns its reply: if it panics, dropping the reply answers EIO.
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a read panicked; answering EIO");
        }
        let mut st = shared.state.lock();
        if let Some(n) = st.running.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                st.running.remove(&ino);
            }
        }
        drop(st);
        shared.wake.notify_all();
    }
}

/// One fetch in progress, which readers of the same block at the same generation wait for.
#[derive(Default)]
struct Pending {
    result: Mutex<Option<Fetched>>,
    done: Condvar,
}

/// Fetches file blocks from the Store; concurrent fetches of one block share one store read.
pub struct Fetches {
    store: Arc<dyn Store>,
    ns: String,
    pending: Mutex<HashMap<(BlockId, u64), Arc<Pending>>>,
    shared: AtomicU64,
}

impl std::fmt::Debug for Fetches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetches")
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

impl Fetches {
    /// Fetches blocks kept in namespace `ns` of `store`.
    pub fn new(store: Arc<dyn Store>, ns: &str) -> Self {
        Fetches {
            store,
            ns: ns.to_string(),
            pending: Mutex::new(HashMap::new()),
            shared: AtomicU64::new(0),
        }
    }

    /// Gets so far that waited for a fetch already under way instead of reading the store.
    pub fn shared(&self) -> u64 {
        self.shared.load(Ordering::Relaxed)
    }

    /// The stored bytes of `block`, as a read planned at data generation `gen` needs them. A
    /// fetch of the same block and generation already under way is waited for instead of
    /// repeated (a later generation fetches anew: the earlier fetch may have read older bytes).
    pub fn get(&self, block: BlockId, gen: u64) -> Fetched {
        let key = (block, gen);
        let (pending, leader) = {
            let mut map = self.pending.lock();
            match map.get(&key) {
                Some(p) => (p.clone(), false),
                None => {
                    let p = Arc::new(Pending::default());
                    map.insert(key, p.clone());
                    (p, true)
                }
            }
        };
        if !leader {
            self.shared.fetch_add(1, Ordering::Relaxed);
            let mut result = pending.result.lock();
            loop {
                if let Some(r) = result.as_ref() {
                    return r.clone();
                }
                pending.done.wait(&mut result);
            }
        }
        let k = pair_key(block.inode, block.index);
        let r = match catch_unwind(AssertUnwindSafe(|| self.store.get(&self.ns, &k))) {
            Ok(Ok(entry)) => Ok(entry.map(|e| Bytes::from(e.value))),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, ino = block.inode, index = block.index, "block fetch failed");
                Err(errno(&FsError::from(e)))
            }
            Err(_) => {
                tracing::error!("a block fetch panicked; answering EIO");
                Err(libc::EIO)
            }
        };
        // Unregistered before waking the waiters: a reader arriving later fetches anew.
        self.pending.lock().remove(&key);
        *pending.result.lock() = Some(r.clone());
        pending.done.notify_all();
        r
    }
}
