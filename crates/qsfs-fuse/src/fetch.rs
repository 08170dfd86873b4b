//! Requests that must fetch records or blocks from the Store, served off the FUSE session
//! thread.
//!
//! A fetch can take seconds (a cold-tier segment brought back from remote backends, a slow
//! remote store); done on the session thread under the filesystem lock it would hold up every
//! other request of the mount. Instead:
//! - a read is planned under the lock ([`crate::Fs::plan_read`]), the blocks are fetched by a
//!   [`ReadPool`] worker with the lock released ([`Fetches`]), and the read is finished under
//!   the lock again ([`crate::Fs::finish_read`]), which starts over if the file changed
//!   meanwhile;
//! - any other request that may need metadata not in memory, or a block it changes only part
//!   of, first runs under the lock in the mode that must not wait
//!   ([`crate::Fs::without_fetch`]). If it needs something, it changed nothing; a worker
//!   fetches what it named with the lock released and runs it again ([`run_deferred`]), with
//!   the answers whose owner did not change meanwhile.

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use qsfs_core::{BlockId, Store};
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::error::{errno, FsError, FsResult};
use crate::fs::{Fs, Missing, Need};
use crate::layout::{pair_key, Namespaces};

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
        submit(&self.shared, ino, job);
    }

    /// A handle that queues jobs while this pool lives, for threads other than its owner's.
    pub fn submitter(&self) -> PoolSubmitter {
        PoolSubmitter(Arc::downgrade(&self.shared))
    }
}

fn submit(shared: &PoolShared, ino: u64, job: Job) {
    shared.state.lock().queue.push_back((ino, job));
    shared.wake.notify_all();
}

/// Queues jobs on a [`ReadPool`] without keeping it alive.
#[derive(Clone)]
pub struct PoolSubmitter(Weak<PoolShared>);

impl std::fmt::Debug for PoolSubmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSubmitter").finish_non_exhaustive()
    }
}

impl PoolSubmitter {
    /// Queues `job`, a job on `ino`; false (and `job` dropped) if the pool is gone or stopping.
    pub fn submit(&self, ino: u64, job: Box<dyn FnOnce() + Send>) -> bool {
        match self.0.upgrade() {
            Some(shared) if !shared.state.lock().stop => {
                submit(&shared, ino, job);
                true
            }
            _ => false,
        }
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

/// Fetches file blocks and metadata records from the Store; concurrent fetches of one block or
/// record share one store read.
pub struct Fetches {
    store: Arc<dyn Store>,
    ns: Namespaces,
    pending: Mutex<HashMap<(Need, u64), Arc<Pending>>>,
    shared: AtomicU64,
}

impl std::fmt::Debug for Fetches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetches")
            .field("ns", &self.ns.block)
            .finish_non_exhaustive()
    }
}

impl Fetches {
    /// Fetches the blocks and records of the filesystem in namespaces `ns` of `store`.
    pub fn new(store: Arc<dyn Store>, ns: &Namespaces) -> Self {
        Fetches {
            store,
            ns: ns.clone(),
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
        self.fetch(&Missing {
            need: Need::Block(block),
            gen,
        })
    }

    /// The stored value of what `m` names, shared with a fetch of the same thing at the same
    /// generation already under way.
    pub fn fetch(&self, m: &Missing) -> Fetched {
        let key = (m.need.clone(), m.gen);
        let (pending, leader) = {
            let mut map = self.pending.lock();
            match map.get(&key) {
                Some(p) => (p.clone(), false),
                None => {
                    let p = Arc::new(Pending::default());
                    map.insert(key.clone(), p.clone());
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
        let got = catch_unwind(AssertUnwindSafe(|| match &m.need {
            Need::Block(b) => self.store.get(&self.ns.block, &pair_key(b.inode, b.index)),
            Need::Record { ns, key, .. } => match self.ns.all().get(usize::from(*ns)) {
                Some(name) => self.store.get(name, key),
                None => Err(qsfs_core::Error::InvalidArgument(format!("namespace {ns}"))),
            },
        }));
        let r = match got {
            Ok(Ok(entry)) => Ok(entry.map(|e| Bytes::from(e.value))),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, need = ?m.need, "fetch failed");
                Err(errno(&FsError::from(e)))
            }
            Err(_) => {
                tracing::error!("a fetch panicked; answering EIO");
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

/// Times a deferred request fetches what it needs and runs again before it runs with the lock
/// held (what it needs keeps changing under it: a busy writer).
const DEFERRED_ATTEMPTS: usize = 8;

/// Finishes a request that [`Fs::without_fetch`] found needs `missing`: fetches it with no
/// lock held, then runs `op` again under `fs`'s lock with the answers, until it needs
/// nothing more. A request whose needs keep changing runs with the lock held at last.
pub fn run_deferred<T>(
    fs: &Mutex<Fs>,
    fetches: &Fetches,
    mut missing: Vec<Missing>,
    mut op: impl FnMut(&mut Fs) -> FsResult<T>,
) -> FsResult<T> {
    for _ in 0..DEFERRED_ATTEMPTS {
        let mut fetched = Vec::with_capacity(missing.len());
        for m in missing {
            let value = fetches.fetch(&m).map_err(FsError::Errno)?;
            fetched.push((m, value));
        }
        match fs.lock().without_fetch(fetched, &mut op) {
            Ok(r) => return r,
            Err(more) => missing = more,
        }
    }
    op(&mut fs.lock())
}
