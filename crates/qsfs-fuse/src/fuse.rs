//! The FUSE adapter: translates kernel requests into [`Fs`] calls and their results into
//! replies. No filesystem logic lives here; errors become errnos in [`crate::error::errno`].

use bytes::Bytes;
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use parking_lot::Mutex;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::acl;
use crate::error::{errno, FsError, FsResult};
use crate::fetch::{run_deferred, Fetches, PoolSubmitter, ReadPool, DEFAULT_READ_THREADS};
use crate::fs::{self, read_len, Attr, Fs, ReadData, ReadPlan, ReadStart, SetAttr};
use crate::layout::{Kind, Time};
use crate::stats::{FsStats, Op};

/// How long the kernel may cache attributes and names. Every change goes through this one
/// mount, so the kernel's view is only stale for changes it made itself and already knows.
const TTL: Duration = Duration::from_secs(1);
/// INIT flag of FUSE ABI 7.33, newer than fuser 0.15's constants: the filesystem kills
/// setuid/setgid/capabilities on write, truncate and chown, and the kernel marks the
/// superblock `SB_NOSEC` so that a write need not look up `security.capability` first.
const FUSE_HANDLE_KILLPRIV_V2: u32 = 1 << 28;

/// The session's channel for notifications to the kernel, filled in once the session exists
/// (it is made from the filesystem, so it cannot be given to it).
#[derive(Clone, Default)]
pub struct Kernel(Arc<std::sync::OnceLock<fuser::Notifier>>);

impl Kernel {
    /// Gives it the session's notifier.
    pub fn attach(&self, notifier: fuser::Notifier) {
        let _ = self.0.set(notifier);
    }

    /// Tells the kernel that the inode's attributes changed without a reply that carries them
    /// (a write by someone else that cleared setuid): it would go on showing the old mode
    /// until its attribute cache times out. Only the attributes: no page-cache lock is taken,
    /// so this is safe from inside a request.
    fn attrs_changed(&self, ino: u64) {
        if let Some(n) = self.0.get() {
            if let Err(e) = n.inval_inode(ino, -1, 0) {
                tracing::debug!(ino, error = %e, "attribute invalidation not taken");
            }
        }
    }
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Kernel")
            .field(&self.0.get().is_some())
            .finish()
    }
}
/// Background requests (read-ahead, write-back) the kernel may have outstanding (its default
/// is 12). Reads waiting on a slow fetch occupy them; with the default, one cold file's
/// read-ahead window could stall the read-ahead and write-back of every other file.
const MAX_BACKGROUND: u16 = 64;
/// Times a read fetches again because its file changed meanwhile, before it reads with the
/// lock held.
const READ_ATTEMPTS: usize = 4;

/// How long the session thread keeps polling `/dev/fuse` after a reply, while requests come
/// in a burst, before it goes back to a blocking read. See [`Spin`].
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);
/// A request that arrives within this time after the previous one was answered belongs to a
/// burst (a program creating, writing or removing files one after the other).
const BURST_GAP: Duration = Duration::from_millis(1);
/// A yield that took longer than this ran another thread: the CPUs are busy, so waking the
/// session thread is cheap (no idle vCPU to bring back) and polling only takes CPU time from
/// others. Polling then stops for [`BUSY_BACKOFF`].
const PREEMPTED: Duration = Duration::from_micros(20);
/// How long polling stays off once the machine was found busy.
const BUSY_BACKOFF: Duration = Duration::from_millis(100);

/// Keeps the session thread on its CPU for a moment after each reply during a burst of
/// requests. A synchronous request costs the caller two wake-ups: the server's, then its own.
/// A server thread blocked in `read(/dev/fuse)` lets its CPU idle, and on a virtual machine
/// waking an idle vCPU (an IPI and a VM entry) costs tens of microseconds, several times the
/// work of a small request; polling for [`DEFAULT_SPIN`] after a reply takes the next request
/// without that wake-up. Bounded: never more than the window per request, and only when the
/// previous request came within `BURST_GAP` (1 ms), so an idle mount never spins; each poll
/// yields the CPU to any other runnable thread, and a busy machine (where wake-ups are cheap
/// because no CPU idles) turns polling off for a while.
#[derive(Default)]
pub struct Spin {
    /// A duplicate of the session's `/dev/fuse` descriptor, polled without reading; unset:
    /// no spinning.
    fd: OnceLock<OwnedFd>,
    /// The window in nanoseconds (0: off).
    window_ns: AtomicU64,
    /// When the last request was answered.
    last_end: Mutex<Option<Instant>>,
    /// Whether the request being served came within `BURST_GAP` (1 ms) of the previous one.
    burst: AtomicBool,
    /// No polling before this: the machine was found busy ([`PREEMPTED`]).
    busy_until: Mutex<Option<Instant>>,
}

impl Spin {
    /// Spins on `fd` (the session's `/dev/fuse`) for up to `window` after each reply in a
    /// burst. Only the first call takes effect.
    pub fn attach(&self, fd: OwnedFd, window: Duration) {
        let ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        if self.fd.set(fd).is_ok() {
            self.window_ns.store(ns, Ordering::Relaxed);
        }
    }

    /// Called when a request arrives; the returned guard waits for the next one when dropped,
    /// after the reply went out.
    fn begin(self: &Arc<Self>) -> SpinGuard {
        if self.window_ns.load(Ordering::Relaxed) != 0 {
            let now = Instant::now();
            let burst = self
                .last_end
                .lock()
                .is_some_and(|t| now.saturating_duration_since(t) < BURST_GAP);
            self.burst.store(burst, Ordering::Relaxed);
        }
        SpinGuard(self.clone())
    }

    /// Polls until a request is waiting or the window has passed.
    fn wait_for_next(&self) {
        let ns = self.window_ns.load(Ordering::Relaxed);
        if ns == 0 {
            return;
        }
        let start = Instant::now();
        let busy = self.busy_until.lock().is_some_and(|t| start < t);
        if self.burst.load(Ordering::Relaxed) && !busy {
            if let Some(fd) = self.fd.get() {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                let window = Duration::from_nanos(ns);
                loop {
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    // Anything but "nothing yet" (a request, an error, the unmount) goes
                    // back to the session loop, which knows what to do with it.
                    if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0)) {
                        break;
                    }
                    if start.elapsed() >= window {
                        break;
                    }
                    // A loaded machine has better use for the CPU than this poll: any other
                    // runnable thread goes first, and once one did, polling stops for a while.
                    let before = Instant::now();
                    std::thread::yield_now();
                    let after = Instant::now();
                    if after.saturating_duration_since(before) > PREEMPTED {
                        *self.busy_until.lock() = Some(after + BUSY_BACKOFF);
                        break;
                    }
                }
            }
        }
        *self.last_end.lock() = Some(Instant::now());
    }
}

/// Waits for the next request (within [`Spin`]'s bounds) when the current one is done.
struct SpinGuard(Arc<Spin>);

impl Drop for SpinGuard {
    fn drop(&mut self) {
        self.0.wait_for_next();
    }
}

macro_rules! reply_or_err {
    ($reply:expr, $res:expr, |$v:ident| $ok:expr) => {
        match $res {
            Ok($v) => $ok,
            Err(e) => {
                tracing::debug!(error = %e, "operation failed");
                $reply.error(errno(&e))
            }
        }
    };
}

/// A shared handle on a mounted [`Fs`], usable while the mount runs.
#[derive(Clone)]
pub struct FsHandle {
    fs: Arc<Mutex<Fs>>,
    crashed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl FsHandle {
    /// Runs `f` on the filesystem under its lock.
    pub fn with<T>(&self, f: impl FnOnce(&mut Fs) -> T) -> T {
        f(&mut self.fs.lock())
    }

    /// Makes the unmount behave like a killed process: nothing is flushed and the lock is left.
    pub fn simulate_crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }
}

/// The `fuser::Filesystem` over an [`Fs`], with a timer thread that flushes dirty state once
/// it is older than the configured age.
pub struct QsfsFuse {
    handle: FsHandle,
    stats: Arc<FsStats>,
    timer: Option<std::thread::JoinHandle<()>>,
    /// The kernel keeps written pages in its page cache and writes them back in large requests
    /// (`FUSE_WRITEBACK_CACHE`). It then also decides the offset of `O_APPEND` writes and owns
    /// size and mtime while the file is cached, sending them back through setattr.
    writeback: bool,
    /// The filesystem clears setuid/setgid and `security.capability` itself
    /// (`FUSE_HANDLE_KILLPRIV_V2`), so the kernel no longer asks for `security.capability`
    /// before every write: one synchronous round trip per `write()` less.
    killpriv: bool,
    /// Notifications to the kernel, once the session exists.
    kernel: Kernel,
    /// Run on the first request after init, when the kernel has applied the init reply.
    after_init: Option<Box<dyn FnOnce() + Send>>,
    /// Workers serving reads that must fetch blocks; `None`: they run on the session thread.
    pool: Option<ReadPool>,
    reader: Reader,
    spin: Arc<Spin>,
}

/// Frees on a read worker the inodes whose records a flush would have had to fetch under the
/// lock ([`Fs::free_waiting`]), one job at a time.
struct Frees {
    pool: PoolSubmitter,
    fs: Arc<Mutex<Fs>>,
    fetches: Arc<Fetches>,
    /// The mount's crash flag (tests): a crashed mount changes nothing more.
    crashed: Arc<AtomicBool>,
    /// Set while a job is queued or running.
    busy: Arc<AtomicBool>,
}

/// Clears [`Frees::busy`] when the job ends, however it ends (even dropped unrun).
struct NotBusy(Arc<AtomicBool>);

impl Drop for NotBusy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Frees {
    /// Queues a job freeing the waiting inodes unless one is already queued or running.
    fn start(&self) {
        if self.busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let (fs, fetches, crashed, busy) = (
            self.fs.clone(),
            self.fetches.clone(),
            self.crashed.clone(),
            NotBusy(self.busy.clone()),
        );
        // The pool's per-inode share keys on this: no inode has it.
        self.pool.submit(
            u64::MAX,
            Box::new(move || {
                let _busy = busy;
                if crashed.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = run_deferred(&fs, &fetches, Vec::new(), |fs| fs.free_waiting()) {
                    tracing::warn!(error = %e, "freeing unlinked inodes failed; will retry");
                }
            }),
        );
    }
}

/// What a pool worker needs to finish a read.
#[derive(Clone)]
struct Reader {
    handle: FsHandle,
    fetches: Arc<Fetches>,
    stats: Arc<FsStats>,
}

/// A read's position, as the kernel asked it.
#[derive(Clone, Copy)]
struct ReadAt {
    ino: u64,
    fh: u64,
    offset: u64,
    size: u32,
}

/// Runs `f`; a bug that panics fails the request with EIO instead of taking the mount down.
fn guarded<T>(fs: &mut Fs, f: impl FnOnce(&mut Fs) -> FsResult<T>) -> FsResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(fs))) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("a filesystem operation panicked; answering EIO");
            Err(FsError::Errno(libc::EIO))
        }
    }
}

/// Counts one operation of family `op` and whether it failed.
fn count<T>(stats: &FsStats, op: Op, r: FsResult<T>) -> FsResult<T> {
    stats.op(op);
    if let Err(e) = &r {
        // A name or attribute that does not exist is an answer, not a failure: shells and
        // editors probe for them all the time.
        let n = errno(e);
        if n != libc::ENOENT && n != libc::ENODATA {
            stats.error();
        }
    }
    r
}

impl Reader {
    /// Fetches what `plan` needs with the filesystem unlocked, then answers.
    fn finish(&self, plan: ReadPlan, at: ReadAt, reply: ReplyData) {
        let r = count(&self.stats, Op::Read, self.complete(plan, at));
        reply_or_err!(reply, r, |d| reply_read(&self.stats, reply, &d));
    }

    fn complete(&self, mut plan: ReadPlan, at: ReadAt) -> FsResult<ReadData> {
        for _ in 0..READ_ATTEMPTS {
            let gen = plan.generation();
            let fetched = plan
                .missing()
                .map(|id| self.fetches.get(id, gen))
                .collect::<Result<Vec<_>, _>>()
                .map_err(FsError::Errno)?;
            let mut fs = self.handle.fs.lock();
            if let Some(d) = guarded(&mut fs, |fs| fs.finish_read(&plan, &fetched))? {
                return Ok(d);
            }
            // Written, truncated or freed meanwhile: what was fetched may be stale.
            match guarded(&mut fs, |fs| {
                fs.plan_read(at.ino, at.fh, at.offset, at.size)
            })? {
                ReadStart::Done(d) => return Ok(d),
                ReadStart::Fetch(p) => plan = p,
            }
        }
        // Changed under every attempt (a busy writer): read with the lock held.
        guarded(&mut self.handle.fs.lock(), |fs| {
            fs.read(at.ino, at.fh, at.offset, at.size)
        })
        .map(|d| vec![Bytes::from(d)])
    }
}

impl QsfsFuse {
    /// Wraps `fs` and starts its flush timer and [`DEFAULT_READ_THREADS`] read threads.
    pub fn new(fs: Fs) -> Self {
        Self::with_threads(fs, DEFAULT_READ_THREADS)
    }

    /// Wraps `fs` and starts its flush timer and `threads` threads serving the reads that must
    /// fetch blocks from the Store (0: they run on the session thread, holding up every other
    /// request while the store answers).
    pub fn with_threads(mut fs: Fs, threads: usize) -> Self {
        let stats = fs.stats();
        let fetches = Arc::new(Fetches::new(fs.store().clone(), fs.namespaces()));
        let pool = ReadPool::new(threads);
        fs.set_defer_frees(pool.is_some());
        let handle = FsHandle {
            fs: Arc::new(Mutex::new(fs)),
            crashed: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let frees = pool.as_ref().map(|p| Frees {
            pool: p.submitter(),
            fs: handle.fs.clone(),
            fetches: fetches.clone(),
            crashed: handle.crashed.clone(),
            busy: Arc::new(AtomicBool::new(false)),
        });
        let h = handle.clone();
        let timer = std::thread::Builder::new()
            .name("qsfs-flush".into())
            .spawn(move || {
                while !h.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(250));
                    if h.crashed.load(Ordering::SeqCst) {
                        continue;
                    }
                    // The blocks go first, without the filesystem lock, so requests carry
                    // on while the bulk of the data is stored; the batch under the lock then
                    // only stores what was written meanwhile.
                    let early = {
                        let fs = h.fs.lock();
                        fs.flush_due().then(|| fs.cache().flusher())
                    };
                    if let Some(f) = early {
                        if let Err(e) = f.flush() {
                            tracing::warn!(error = %e, "background flush failed; will retry");
                            continue;
                        }
                    }
                    let waiting = {
                        let mut fs = h.fs.lock();
                        if let Err(e) = fs.tick() {
                            tracing::warn!(error = %e, "background flush failed; will retry");
                        }
                        fs.frees_waiting()
                    };
                    if let Some(frees) = frees.as_ref().filter(|_| waiting) {
                        frees.start();
                    }
                }
            })
            .ok();
        QsfsFuse {
            reader: Reader {
                handle: handle.clone(),
                fetches,
                stats: stats.clone(),
            },
            pool,
            handle,
            stats,
            timer,
            writeback: false,
            killpriv: false,
            kernel: Kernel::default(),
            after_init: None,
            spin: Arc::new(Spin::default()),
        }
    }

    /// Where the session's notifier goes once the session is made (see [`Kernel::attach`]).
    pub fn kernel(&self) -> Kernel {
        self.kernel.clone()
    }

    /// Runs `f` once the kernel has taken the init reply (tuning that init would undo).
    pub fn after_init(&mut self, f: Box<dyn FnOnce() + Send>) {
        self.after_init = Some(f);
    }

    fn first_request(&mut self) {
        if let Some(f) = self.after_init.take() {
            f();
        }
    }

    /// The session thread's polling between requests; [`Spin::attach`] turns it on.
    pub fn spin(&self) -> Arc<Spin> {
        self.spin.clone()
    }

    /// A handle on the filesystem.
    pub fn handle(&self) -> FsHandle {
        self.handle.clone()
    }

    fn fs(&self) -> parking_lot::MutexGuard<'_, Fs> {
        self.handle.fs.lock()
    }

    /// Runs one operation. A bug that panics fails that request with EIO instead of taking the
    /// whole mount down.
    fn call<T>(&self, op: Op, f: impl FnOnce(&mut Fs) -> FsResult<T>) -> FsResult<T> {
        let r = guarded(&mut self.fs(), f);
        self.counted(op, r)
    }

    /// Open flags as the filesystem should see them. With the writeback cache the kernel writes
    /// pages back through any handle and has already placed `O_APPEND` data at the end, so the
    /// offsets it sends are the truth.
    fn handle_flags(&self, flags: i32) -> i32 {
        if self.writeback {
            flags & !libc::O_APPEND
        } else {
            flags
        }
    }

    /// Counts one operation of family `op` and whether it failed.
    fn counted<T>(&self, op: Op, r: FsResult<T>) -> FsResult<T> {
        count(&self.stats, op, r)
    }

    /// Runs `now` under the lock without waiting on the Store. If it needs records or blocks
    /// not in memory, a read worker fetches them with the lock released and runs `later()`
    /// (the same operation on owned arguments); `done` answers either way. Without read
    /// workers it runs with the lock held, fetching as it goes.
    fn call_or_defer<T: Send + 'static, G>(
        &self,
        op: Op,
        ino: u64,
        now: impl FnOnce(&mut Fs) -> FsResult<T>,
        later: impl FnOnce() -> G,
        done: impl FnOnce(FsResult<T>) + Send + 'static,
    ) where
        G: FnMut(&mut Fs) -> FsResult<T> + Send + 'static,
    {
        let Some(pool) = &self.pool else {
            return done(self.call(op, now));
        };
        // Bound first: the lock must be released before `done` runs (it may lock again).
        let started = guarded(&mut self.fs(), |fs| Ok(fs.without_fetch(Vec::new(), now)));
        let missing = match started {
            Ok(Err(missing)) => missing,
            Ok(Ok(r)) => return done(self.counted(op, r)),
            Err(e) => return done(self.counted(op, Err(e))),
        };
        let (fs, fetches, stats, f) = (
            self.handle.fs.clone(),
            self.reader.fetches.clone(),
            self.stats.clone(),
            later(),
        );
        pool.submit(
            ino,
            Box::new(move || done(count(&stats, op, run_deferred(&fs, &fetches, missing, f)))),
        );
    }

    /// [`QsfsFuse::call_or_defer`] for an operation whose arguments are all owned.
    fn deferrable<T: Send + 'static>(
        &self,
        op: Op,
        ino: u64,
        f: impl FnMut(&mut Fs) -> FsResult<T> + Clone + Send + 'static,
        done: impl FnOnce(FsResult<T>) + Send + 'static,
    ) {
        self.call_or_defer(op, ino, f.clone(), || f, done);
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn fuse_attr(a: &Attr) -> FileAttr {
    let i = &a.inode;
    FileAttr {
        ino: a.ino,
        size: i.size,
        blocks: a.blocks,
        atime: i.atime.to_system(),
        mtime: i.mtime.to_system(),
        ctime: i.ctime.to_system(),
        crtime: i.crtime.to_system(),
        kind: file_type(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn time_of(t: TimeOrNow) -> Option<Time> {
    match t {
        TimeOrNow::SpecificTime(t) => Some(Time::from_system(t)),
        TimeOrNow::Now => None,
    }
}

fn entry(reply: ReplyEntry, r: FsResult<Attr>) {
    reply_or_err!(reply, r, |a| reply.entry(&TTL, &fuse_attr(&a), 0));
}

/// Replies with a read's pieces in one `writev`, and counts its bytes.
fn reply_read(stats: &FsStats, reply: ReplyData, data: &ReadData) {
    let pieces: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
    stats.read_bytes(read_len(data) as u64);
    reply.data_slices(&pieces);
}

fn empty(reply: ReplyEmpty, r: FsResult<()>) {
    reply_or_err!(reply, r, |_v| reply.ok());
}

impl Filesystem for QsfsFuse {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        use fuser::consts::*;
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_readahead(1024 * 1024);
        let _ = config.add_capabilities(FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO);
        // Without it the kernel holds a directory's lookups and listings one at a time: a
        // lookup waiting for a fetch would hold up every other name of its directory.
        let _ = config.add_capabilities(FUSE_PARALLEL_DIROPS);
        self.writeback = config.add_capabilities(FUSE_WRITEBACK_CACHE).is_ok();
        self.killpriv = config.add_capabilities(FUSE_HANDLE_KILLPRIV_V2).is_ok();
        // The kernel enforces POSIX ACLs (it reads them with getxattr and caches them); Fs
        // keeps them in step with the mode and inherits default ACLs. With DONT_MASK the
        // kernel sends the umask instead of applying it, since a default ACL overrides it.
        // FUSE_SETXATTR_EXT (which would tell when to drop setgid on an ACL change) stays
        // off: fuser 0.15 misreads the longer setxattr request it brings.
        let _ = config.add_capabilities(FUSE_POSIX_ACL);
        let _ = config.add_capabilities(FUSE_DONT_MASK);
        if self.pool.is_some() {
            let _ = config.set_max_background(MAX_BACKGROUND);
            let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        }
        let writeback = self.writeback;
        self.fs().set_kernel_writeback(writeback);
        Ok(())
    }

    fn destroy(&mut self) {
        self.handle.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
        let mut fs = self.fs();
        if self.handle.crashed.load(Ordering::SeqCst) {
            fs.abandon();
        } else if let Err(e) = fs.shutdown() {
            tracing::error!(error = %e, "final flush at unmount failed");
        }
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let _spin = self.spin.begin();
        self.first_request();
        let name = name.as_bytes();
        self.call_or_defer(
            Op::Lookup,
            parent,
            |fs| fs.lookup(parent, name),
            || {
                let name = name.to_vec();
                move |fs: &mut Fs| fs.lookup(parent, &name)
            },
            move |r| entry(reply, r),
        );
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        let _spin = self.spin.begin();
        self.fs().forget(ino, nlookup);
    }

    fn batch_forget(&mut self, _req: &Request<'_>, nodes: &[fuser::fuse_forget_one]) {
        let _spin = self.spin.begin();
        let mut fs = self.fs();
        for n in nodes {
            fs.forget(n.nodeid, n.nlookup);
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let _spin = self.spin.begin();
        self.first_request();
        self.deferrable(
            Op::Getattr,
            ino,
            move |fs| fs.getattr(ino),
            move |r| reply_or_err!(reply, r, |a| reply.attr(&TTL, &fuse_attr(&a))),
        );
    }

    fn setattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let _spin = self.spin.begin();
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_of),
            mtime: mtime.map(time_of),
            ctime: ctime.map(Time::from_system),
        };
        // fuser drops FATTR_KILL_SUIDGID, the kernel's "caller lacks CAP_FSETID" on a
        // truncate: a non-root caller stands for it. A chown clears them whoever asks.
        let chown = (uid.is_some() || gid.is_some()) && mode.is_none();
        let kill = self.killpriv && (size.is_some() || chown);
        let suid_sgid = chown || req.uid() != 0;
        let setattr = move |fs: &mut Fs| {
            if kill {
                // The reply carries the new attributes.
                fs.kill_privileges(ino, suid_sgid)?;
            }
            fs.setattr(ino, set.clone())
        };
        self.deferrable(Op::Setattr, ino, setattr, move |r| {
            reply_or_err!(reply, r, |a| reply.attr(&TTL, &fuse_attr(&a)))
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let _spin = self.spin.begin();
        self.deferrable(
            Op::Other,
            ino,
            move |fs| fs.readlink(ino),
            move |r| reply_or_err!(reply, r, |t| reply.data(&t)),
        );
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _spin = self.spin.begin();
        let (name, uid, gid) = (name.as_bytes(), req.uid(), req.gid());
        self.call_or_defer(
            Op::Create,
            parent,
            |fs| fs.mknod_masked(parent, name, (mode, umask), rdev, uid, gid),
            || {
                let name = name.to_vec();
                move |fs: &mut Fs| fs.mknod_masked(parent, &name, (mode, umask), rdev, uid, gid)
            },
            move |r| entry(reply, r),
        );
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _spin = self.spin.begin();
        let (name, uid, gid) = (name.as_bytes(), req.uid(), req.gid());
        self.call_or_defer(
            Op::Mkdir,
            parent,
            |fs| fs.mkdir_masked(parent, name, (mode, umask), uid, gid),
            || {
                let name = name.to_vec();
                move |fs: &mut Fs| fs.mkdir_masked(parent, &name, (mode, umask), uid, gid)
            },
            move |r| entry(reply, r),
        );
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let _spin = self.spin.begin();
        let name = name.as_bytes();
        self.call_or_defer(
            Op::Unlink,
            parent,
            |fs| fs.unlink(parent, name),
            || {
                let name = name.to_vec();
                move |fs: &mut Fs| fs.unlink(parent, &name)
            },
            move |r| empty(reply, r),
        );
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let _spin = self.spin.begin();
        let name = name.as_bytes();
        self.call_or_defer(
            Op::Rmdir,
            parent,
            |fs| fs.rmdir(parent, name),
            || {
                let name = name.to_vec();
                move |fs: &mut Fs| fs.rmdir(parent, &name)
            },
            move |r| empty(reply, r),
        );
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _spin = self.spin.begin();
        let (name, target, uid, gid) = (
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            req.uid(),
            req.gid(),
        );
        self.call_or_defer(
            Op::Create,
            parent,
            |fs| fs.symlink(parent, name, target, uid, gid),
            || {
                let (name, target) = (name.to_vec(), target.to_vec());
                move |fs: &mut Fs| fs.symlink(parent, &name, &target, uid, gid)
            },
            move |r| entry(reply, r),
        );
    }

    fn rename(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.begin();
        let (name, newname) = (name.as_bytes(), newname.as_bytes());
        let (uid, gid) = (req.uid(), req.gid());
        let rename = move |fs: &mut Fs, name: &[u8], newname: &[u8]| {
            if flags & libc::RENAME_WHITEOUT != 0 {
                fs.rename_whiteout(parent, name, newparent, newname, flags, uid, gid)
            } else {
                fs.rename(parent, name, newparent, newname, flags)
            }
        };
        self.call_or_defer(
            Op::Rename,
            parent,
            |fs| rename(fs, name, newname),
            || {
                let (name, newname) = (name.to_vec(), newname.to_vec());
                move |fs: &mut Fs| rename(fs, &name, &newname)
            },
            move |r| empty(reply, r),
        );
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _spin = self.spin.begin();
        let newname = newname.as_bytes();
        self.call_or_defer(
            Op::Create,
            newparent,
            |fs| fs.link(ino, newparent, newname),
            || {
                let newname = newname.to_vec();
                move |fs: &mut Fs| fs.link(ino, newparent, &newname)
            },
            move |r| entry(reply, r),
        );
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let _spin = self.spin.begin();
        let flags = self.handle_flags(flags);
        self.deferrable(
            Op::Other,
            ino,
            move |fs| fs.open_file(ino, flags),
            move |r| reply_or_err!(reply, r, |fh| reply.opened(fh, 0)),
        );
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let _spin = self.spin.begin();
        if offset < 0 {
            return reply.error(libc::EINVAL);
        }
        let at = ReadAt {
            ino,
            fh,
            offset: offset as u64,
            size,
        };
        // A read the cache answers stays here; one that must wait for the store goes to a
        // worker, so the session thread serves other requests meanwhile.
        let r = match &self.pool {
            Some(pool) => {
                let planned = guarded(&mut self.fs(), |fs| fs.plan_read(ino, fh, at.offset, size));
                match planned {
                    Ok(ReadStart::Done(d)) => Ok(d),
                    Ok(ReadStart::Fetch(plan)) => {
                        let reader = self.reader.clone();
                        pool.submit(ino, Box::new(move || reader.finish(plan, at, reply)));
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
            None => guarded(&mut self.fs(), |fs| fs.read(ino, fh, at.offset, size))
                .map(|d| vec![Bytes::from(d)]),
        };
        reply_or_err!(reply, self.counted(Op::Read, r), |d| reply_read(
            &self.stats,
            reply,
            &d
        ));
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let _spin = self.spin.begin();
        if offset < 0 {
            return reply.error(libc::EINVAL);
        }
        let killpriv = self.killpriv;
        let kernel = self.kernel.clone();
        let write = move |fs: &mut Fs, data: &[u8], kernel: &Kernel| {
            if killpriv {
                // The kernel sets the flag for a caller without CAP_FSETID; capabilities
                // go on any write, as on a local filesystem.
                let suid_sgid = write_flags & fuser::consts::FUSE_WRITE_KILL_PRIV != 0;
                if fs.kill_privileges(ino, suid_sgid)? {
                    kernel.attrs_changed(ino);
                }
            }
            fs.write(ino, fh, offset as u64, data)
        };
        let stats = self.stats.clone();
        self.call_or_defer(
            Op::Write,
            ino,
            |fs| write(fs, data, &kernel),
            || {
                let data = data.to_vec();
                let kernel = kernel.clone();
                move |fs: &mut Fs| write(fs, &data, &kernel)
            },
            move |r| {
                reply_or_err!(reply, r, |n| {
                    stats.written_bytes(u64::from(n));
                    reply.written(n)
                })
            },
        );
    }

    fn flush(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _lock: u64, reply: ReplyEmpty) {
        let _spin = self.spin.begin();
        if self.writeback {
            // The kernel hands over the file's cached pages on every close before it would send
            // this. Writing the blocks to the store now would not make them survive a crash
            // (only the metadata batch makes them reachable: timer, fsync, unmount), so
            // ENOSYS tells the kernel to stop sending FLUSH: one request less per close.
            return reply.error(libc::ENOSYS);
        }
        empty(reply, self.call(Op::Fsync, |fs| fs.flush_file(ino)));
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.begin();
        empty(reply, self.call(Op::Other, |fs| fs.release(ino, fh)));
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.begin();
        empty(reply, self.call(Op::Fsync, |fs| fs.sync()));
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let _spin = self.spin.begin();
        // Answering ENOSYS here would spare OPENDIR/RELEASEDIR, but also turn on the kernel's
        // listing cache: `rm -rf` after a `diff -r` then read listings from it with expired
        // dentries and sent one LOOKUP per entry instead of one READDIRPLUS per directory
        // (W7: 3.63 -> 3.79 requests per entry).
        self.deferrable(
            Op::Getattr,
            ino,
            move |fs| fs.getattr(ino),
            move |r| {
                reply_or_err!(reply, r, |a| {
                    if a.inode.kind == Kind::Dir {
                        reply.opened(0, 0)
                    } else {
                        reply.error(libc::ENOTDIR)
                    }
                })
            },
        );
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let _spin = self.spin.begin();
        let readdir = move |fs: &mut Fs| fs.readdir(ino, offset, 512);
        self.deferrable(Op::Readdir, ino, readdir, move |r| {
            reply_or_err!(reply, r, |entries| {
                for e in entries {
                    if reply.add(
                        e.ino,
                        e.cookie,
                        file_type(e.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok()
            })
        });
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _spin = self.spin.begin();
        let handle = self.handle.clone();
        let readdir = move |fs: &mut Fs| fs.readdir_plus(ino, offset, 256);
        self.deferrable(Op::Readdir, ino, readdir, move |r| {
            reply_or_err!(reply, r, |entries| {
                let mut unsent = Vec::new();
                let mut full = false;
                for (e, attr) in entries {
                    let name = OsStr::from_bytes(&e.name);
                    full = full || reply.add(e.ino, e.cookie, name, &TTL, &fuse_attr(&attr), 0);
                    // The kernel takes a reference for every entry it gets but "." and "..".
                    if full && e.name != b"." && e.name != b".." {
                        unsent.push(e.ino);
                    }
                }
                if !unsent.is_empty() {
                    let mut fs = handle.fs.lock();
                    for ino in unsent {
                        fs.forget(ino, 1);
                    }
                }
                reply.ok()
            })
        });
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.begin();
        empty(reply, self.call(Op::Fsync, |fs| fs.sync()));
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let _spin = self.spin.begin();
        reply_or_err!(reply, self.call(Op::Other, |fs| fs.statfs()), |s| reply
            .statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize
            ));
    }

    fn setxattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.begin();
        let name = name.as_bytes();
        // posix_acl_update_mode drops setgid when the caller is neither in the file's group
        // nor privileged; the kernel leaves that to us, so the caller's groups are needed.
        let caller = (name == acl::ACCESS && req.uid() != 0)
            .then(|| Caller::of(req))
            .flatten();
        let set = move |fs: &mut Fs, name: &[u8], value: &[u8]| {
            fs.setxattr(ino, name, value, flags)?;
            if let Some(c) = &caller {
                if !c.in_group(fs.getattr(ino)?.inode.gid) {
                    fs.drop_setgid(ino)?;
                }
            }
            Ok(())
        };
        let set2 = set.clone();
        self.call_or_defer(
            Op::Other,
            ino,
            |fs| set(fs, name, value),
            || {
                let (name, value) = (name.to_vec(), value.to_vec());
                move |fs: &mut Fs| set2(fs, &name, &value)
            },
            move |r| empty(reply, r),
        );
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let _spin = self.spin.begin();
        let name = name.as_bytes();
        self.call_or_defer(
            Op::Other,
            ino,
            |fs| fs.getxattr(ino, name),
            || {
                let name = name.to_vec();
                move |fs: &mut Fs| fs.getxattr(ino, &name)
            },
            move |r| xattr_reply(reply, r, size),
        );
    }

    fn listxattr(&mut self, req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let _spin = self.spin.begin();
        let pid = req.pid();
        let listxattr = move |fs: &mut Fs| fs.listxattr(ino);
        self.deferrable(Op::Other, ino, listxattr, move |r| {
            // Only a list that holds a `trusted.` name costs a look at the caller.
            let r = r.map(
                |list| match fs::lists_trusted(&list) && !may_see_trusted(pid) {
                    true => fs::hide_trusted(&list),
                    false => list,
                },
            );
            xattr_reply(reply, r, size)
        });
    }

    fn removexattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let _spin = self.spin.begin();
        let name = name.as_bytes();
        self.call_or_defer(
            Op::Other,
            ino,
            |fs| fs.removexattr(ino, name),
            || {
                let name = name.to_vec();
                move |fs: &mut Fs| fs.removexattr(ino, &name)
            },
            move |r| empty(reply, r),
        );
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        let _spin = self.spin.begin();
        // Mode bits are enforced by the kernel (`default_permissions`); this only checks the
        // inode exists.
        let exists = move |fs: &mut Fs| fs.getattr(ino).map(|_| ());
        self.deferrable(Op::Getattr, ino, exists, move |r| empty(reply, r));
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _spin = self.spin.begin();
        let flags = self.handle_flags(flags);
        let (name, uid, gid) = (name.as_bytes(), req.uid(), req.gid());
        self.call_or_defer(
            Op::Create,
            parent,
            |fs| fs.create_masked(parent, name, (mode, umask), flags, uid, gid),
            || {
                let name = name.to_vec();
                move |fs: &mut Fs| fs.create_masked(parent, &name, (mode, umask), flags, uid, gid)
            },
            move |r| {
                reply_or_err!(reply, r, |v| reply.created(
                    &TTL,
                    &fuse_attr(&v.0),
                    0,
                    v.1,
                    0
                ))
            },
        );
    }

    fn tmpfile(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _spin = self.spin.begin();
        let flags = self.handle_flags(flags);
        let (uid, gid) = (req.uid(), req.gid());
        let make = move |fs: &mut Fs| fs.tmpfile(parent, (mode, umask), flags, uid, gid);
        self.call_or_defer(
            Op::Create,
            parent,
            make,
            || make,
            move |r| {
                reply_or_err!(reply, r, |v| reply.created(
                    &TTL,
                    &fuse_attr(&v.0),
                    0,
                    v.1,
                    0
                ))
            },
        );
    }

    fn fallocate(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.begin();
        if offset < 0 || length <= 0 {
            return reply.error(libc::EINVAL);
        }
        let (killpriv, suid_sgid) = (self.killpriv, req.uid() != 0);
        let kernel = self.kernel.clone();
        let fallocate = move |fs: &mut Fs| {
            if killpriv && fs.kill_privileges(ino, suid_sgid)? {
                kernel.attrs_changed(ino);
            }
            fs.fallocate(ino, offset as u64, length as u64, mode)
        };
        self.deferrable(Op::Other, ino, fallocate, move |r| empty(reply, r));
    }

    fn copy_file_range(
        &mut self,
        req: &Request<'_>,
        ino_in: u64,
        fh_in: u64,
        offset_in: i64,
        ino_out: u64,
        fh_out: u64,
        offset_out: i64,
        len: u64,
        flags: u32,
        reply: ReplyWrite,
    ) {
        let _spin = self.spin.begin();
        if offset_in < 0 || offset_out < 0 || flags != 0 {
            return reply.error(libc::EINVAL);
        }
        let (killpriv, suid_sgid) = (self.killpriv, req.uid() != 0);
        let kernel = self.kernel.clone();
        let copy = move |fs: &mut Fs| {
            if killpriv && fs.kill_privileges(ino_out, suid_sgid)? {
                kernel.attrs_changed(ino_out);
            }
            fs.copy_file_range(
                ino_in,
                fh_in,
                offset_in as u64,
                ino_out,
                fh_out,
                offset_out as u64,
                len,
            )
        };
        let stats = self.stats.clone();
        self.deferrable(Op::Write, ino_in, copy, move |r| {
            reply_or_err!(reply, r, |n| {
                stats.written_bytes(u64::from(n));
                reply.written(n)
            })
        });
    }

    fn lseek(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _spin = self.spin.begin();
        if offset < 0 {
            return reply.error(libc::ENXIO);
        }
        self.deferrable(
            Op::Other,
            ino,
            move |fs| fs.lseek(ino, offset as u64, whence),
            move |r| reply_or_err!(reply, r, |o| reply.offset(o as i64)),
        );
    }
}

/// How long a request waits for `/proc` to tell its caller's groups.
const PROC_WAIT: Duration = Duration::from_millis(200);

/// `path`'s contents, or `None` if it cannot be read within `wait`. The read runs on a thread
/// of its own: a `/proc/PID` file can block while its process holds a kernel lock (a process
/// in `exec` holds its exec lock while it closes descriptors on this mount, which waits for
/// this very session thread), and the session thread must never wait on such a read. A read
/// that times out finishes, or stays blocked, on its own thread.
fn read_bounded(path: std::path::PathBuf, wait: Duration) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("qsfs-proc".into())
        .spawn(move || {
            let _ = tx.send(std::fs::read_to_string(path).ok());
        })
        .ok()?;
    rx.recv_timeout(wait).ok().flatten()
}

/// The groups of the process behind a request, read from `/proc` (FUSE sends only its
/// uid, fs gid and pid).
#[derive(Debug, Clone)]
struct Caller {
    gid: u32,
    groups: Vec<u32>,
}

impl Caller {
    /// `None` if its supplementary groups cannot be read (the process is gone, or `/proc`
    /// did not answer within [`PROC_WAIT`]): then nothing is taken away on a guess.
    fn of(req: &Request<'_>) -> Option<Caller> {
        let status = read_bounded(format!("/proc/{}/status", req.pid()).into(), PROC_WAIT)?;
        let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
        let groups = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<Vec<u32>, _>>()
            .ok()?;
        Some(Caller {
            gid: req.gid(),
            groups,
        })
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Whether process `pid` has `CAP_SYS_ADMIN` in its effective set, which `trusted.` xattrs
/// ask for. A caller whose status cannot be read is taken as unprivileged.
fn may_see_trusted(pid: u32) -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    read_bounded(format!("/proc/{pid}/status").into(), PROC_WAIT)
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

fn xattr_reply(reply: ReplyXattr, r: FsResult<Vec<u8>>, size: u32) {
    reply_or_err!(reply, r, |v| {
        if size == 0 {
            reply.size(v.len() as u32)
        } else if (size as usize) < v.len() {
            reply.error(libc::ERANGE)
        } else {
            reply.data(&v)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_blocks_gives_up_and_a_plain_one_reads() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        // Opening a FIFO for reading blocks until a writer comes: a stand-in for a `/proc`
        // file whose process holds a lock.
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(read_bounded(fifo.clone(), Duration::from_millis(50)), None);
        // Let the blocked reader go.
        std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "Groups:\t4 24\n").unwrap();
        assert_eq!(
            read_bounded(plain, Duration::from_secs(5)).as_deref(),
            Some("Groups:\t4 24\n")
        );
        let own = read_bounded("/proc/self/status".into(), Duration::from_secs(5)).unwrap();
        assert!(own.contains("Groups:"), "{own}");
    }
}
