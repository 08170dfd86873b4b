//! The engine: a directory of namespaces, and the [`Store`] implementation over them.
//!
//! Layout of the engine directory (details in `docs/engine-format.md`):
//!
//! ```text
//! <root>/qsfs-engine        marker and format version
//! <root>/lock               flock'd while an Engine has the directory open
//! <root>/engine.key         0600, seals namespace passwords
//! <root>/ns/<name>/namespace        descriptor (properties)
//! <root>/ns/<name>/0000000000.seg   segments, appended to / sealed
//! <root>/ns/<name>/index            index snapshot (a cache)
//! <root>/ns/<name>/manifest         recovery manifest: the namespace at its last seal
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use qsfs_core::{
    Credential, Cursor, Entry, Error, KeyMeta, NamespaceInfo, NamespaceName, NamespaceProperty,
    Result, ScanOrder, ScanPage, SetOutcome, Store, Timestamp, Version, VersionId,
    DEFAULT_NAMESPACE,
};

use crate::cold::ColdTier;
use crate::compaction::{compact, CompactionReport, Pick};
use crate::config::{Durability, EngineConfig, MAX_SEGMENT_SIZE_LIMIT, MIN_SEGMENT_SIZE};
use crate::descriptor::Descriptor;
use crate::error::EngineError;
use crate::index::Index;
use crate::manifest::Manifest;
use crate::namespace::{
    Event, Namespace, NamespaceStats, NsState, RawRecord, SealMsg, SegmentStats,
};
use crate::password::SealKey;
use crate::reserve::WriteReserve;
use crate::segment::{loc, loc_segment, Segment, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use qsfs_core::DiskSpace;

const MARKER: &str = "qsfs-engine";
const MARKER_CONTENT: &str = "qsfs engine directory, format 1\n";
/// Prefix of a namespace directory renamed for deletion.
const TRASH_PREFIX: &str = ".deleting-";

/// Told about the lifecycle of segments and namespaces (the backup tier listens here).
///
/// Calls happen after the engine released its locks, on the thread that caused the event
/// (seals: see [`EngineObserver::on_segment_sealed`]), so an observer may call back into the
/// engine (for example [`Engine::offload_segment`]) but should return quickly (hand slow work
/// to another thread). A crash can lose a notification, so a listener reconciles at start with
/// [`Engine::segments`].
pub trait EngineObserver: Send + Sync {
    /// A segment was sealed: its file at `path` will never change again, and is durable.
    ///
    /// Under [`Durability::Periodic`] and [`Durability::Group`] the seal's I/O (the fsync that
    /// makes the segment durable, the index snapshot, the manifest) runs on the engine's seal
    /// thread while writers go on, and this is called from that thread once it is done;
    /// [`Store::sync`] returns only after the calls for every seal before it returned.
    /// [`Engine::segments`] reports a segment sealed only once it is durable.
    fn on_segment_sealed(&self, _ns: &str, _segment: u32, _path: &Path) {}
    /// A segment was removed (compacted or flushed) and will never be read again.
    fn on_segment_removed(&self, _ns: &str, _segment: u32) {}
    /// A namespace was created.
    fn on_namespace_created(&self, _ns: &str) {}
    /// A property of a namespace changed.
    fn on_namespace_updated(&self, _ns: &str) {}
    /// A namespace and all its data were deleted.
    fn on_namespace_deleted(&self, _ns: &str) {}
    /// A read needs segment `segment` of `ns`, whose data is neither on local disk nor
    /// obtainable from the cold tier (offloaded with no cold tier configured, or the cold tier
    /// failed; or a sealed file deleted from disk, found when its descriptor had to be
    /// reopened). Return `true` once a copy of the segment file has been put back at `path`: the
    /// engine then opens it and retries the read. The default, `false`, fails the read with
    /// [`Error::Unavailable`]. Called with no namespace lock held except possibly the
    /// namespace's writer, so writes to `ns` wait while it runs (0-db's `missing-data` hook).
    fn on_segment_missing(&self, _ns: &str, _segment: u32, _path: &Path) -> bool {
        false
    }
    /// A write (set or delete) to `ns` just sealed a segment. Called on the writer's thread
    /// with no engine lock held, after the write is done and the other events were delivered:
    /// an observer may block here to slow writers down (backpressure while the local disk is
    /// over its cap). Not called for seals by the background thread (age), by
    /// [`Engine::rotate`] or by compaction.
    fn throttle(&self, _ns: &str) {}
    /// A write (set, set-many or delete) to `ns` is about to start. Called on the writer's
    /// thread with no engine lock held, before anything is written: an observer may block here
    /// while every writer must wait (the local disk is over its cap after a seal), not only the
    /// one whose write sealed. On every write's path: return at once when there is nothing to
    /// wait for. `seals` counts the segments this engine has sealed so far, bumped the moment
    /// a seal starts (before its I/O): a change since the last call is how an observer learns
    /// of a seal without waiting for [`EngineObserver::on_segment_sealed`].
    fn admit(&self, _ns: &str, _seals: u64) {}
}

/// What namespaces share: configuration, cold tier, sealing key.
pub(crate) struct Shared {
    pub config: EngineConfig,
    pub cold: Option<ColdTier>,
    pub key: SealKey,
    /// Queue of the seal thread (see [`crate::namespace::SealJob`]); taken when the engine
    /// closes.
    pub sealer: Mutex<Option<std::sync::mpsc::Sender<SealMsg>>>,
    /// Segments sealed since the engine opened (see [`EngineObserver::admit`]).
    pub seals: AtomicU64,
    /// Jobs sent to the seal thread and not yet taken by it.
    pub seal_queue_len: Arc<AtomicUsize>,
    /// Sealed segments sent to the seal thread for their page-cache re-layout.
    pub relayouts_asked: AtomicU64,
    /// Bytes the seal thread's page-cache re-layouts dropped and read back.
    pub relaid_bytes: Arc<AtomicU64>,
}

struct Inner {
    root: PathBuf,
    shared: Shared,
    namespaces: RwLock<BTreeMap<String, Arc<Namespace>>>,
    /// Namespaces found damaged when the engine opened (name → what is wrong): they stay
    /// unavailable, and neither created again nor deleted, until their files are repaired and
    /// the engine reopened. The others serve as usual.
    damaged: BTreeMap<String, String>,
    /// Serialises namespace creation and deletion.
    ns_admin: Mutex<()>,
    _lock: File,
    /// Handles given out to callers ([`Engine`] values other than the background thread's).
    handles: AtomicUsize,
    stop: Arc<(Mutex<Background>, Condvar)>,
    background: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The seal thread: does the I/O of seals off the writers' threads, in seal order.
    seal_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set when the engine closes: the seal thread stops re-laying out page caches (see
    /// [`crate::segment::relayout_page_cache`]) so that closing does not wait for those reads.
    closing: Arc<AtomicBool>,
    /// The disk space SETs leave for deletes and compaction ([`EngineConfig::write_reserve`]).
    reserve: WriteReserve,
}

/// What the background thread is told and what it tells back.
#[derive(Default)]
struct Background {
    stop: bool,
    /// The thread exists and may hold the engine; false once it has let go for good.
    running: bool,
}

/// How long dropping the last handle waits for a background tick in progress to finish.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// The embedded append-only key-value engine; see the crate documentation.
///
/// Cheap to clone (a handle); the directory is closed (index snapshots written, files synced,
/// lock released) when the last handle is dropped, before that drop returns, so the same
/// directory can be opened again right away.
pub struct Engine {
    inner: Arc<Inner>,
    /// False only for the background thread's own handle, which must not keep the engine
    /// open nor close it.
    counted: bool,
}

impl Clone for Engine {
    fn clone(&self) -> Self {
        self.inner.handles.fetch_add(1, Ordering::Relaxed);
        Engine {
            inner: self.inner.clone(),
            counted: true,
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.counted || self.inner.handles.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // The last caller's handle. The background thread may be in a tick and hold the
        // engine: stop it and wait until it lets go, so that the close happens here and the
        // lock is free when this returns. Bounded, because a tick may wait for something the
        // dropping thread holds (an observer's lock, the seal thread).
        let on_background = self
            .inner
            .background
            .lock()
            .as_ref()
            .is_some_and(|h| h.thread().id() == std::thread::current().id());
        let (state, cv) = &*self.inner.stop;
        let mut st = state.lock();
        st.stop = true;
        cv.notify_all();
        if on_background || crate::namespace::on_seal_thread() {
            return;
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        while st.running {
            if cv.wait_until(&mut st, deadline).timed_out() {
                tracing::warn!(root = %self.inner.root.display(), "engine background work did not finish in time; the engine closes when it does");
                break;
            }
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("root", &self.inner.root)
            .finish()
    }
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let ctx = format!("{what} {}", path.display());
    move |e| Error::io(ctx, e)
}

/// A directory under `ns/` as the engine opens.
enum Loaded {
    Ready(Arc<Namespace>),
    /// No namespace: a foreign directory, or the rest of a deletion (finished).
    Skipped,
    /// A namespace whose descriptor or data cannot be loaded.
    Damaged(Error),
}

/// Opens the namespace in directory `path` (named `name`) when the engine opens. Errors only
/// for what stops the whole engine: a namespace in a mode the configuration does not allow
/// (every namespace would be served in a mode it was not written in).
fn load_namespace(shared: &Shared, path: &Path, name: &str) -> Result<Loaded> {
    let desc = match Descriptor::load(path) {
        Ok(d) => d,
        Err(_) if name.starts_with(TRASH_PREFIX) => None,
        Err(e) => return Ok(Loaded::Damaged(e)),
    };
    if name.starts_with(TRASH_PREFIX) && desc.as_ref().is_none_or(|d| d.name != name) {
        // A namespace deletion interrupted by a crash: finish it.
        tracing::info!(path = %path.display(), "removing the rest of a deleted namespace");
        std::fs::remove_dir_all(path).map_err(io_err("remove", path))?;
        return Ok(Loaded::Skipped);
    }
    let Some(desc) = desc else {
        tracing::warn!(path = %path.display(), "ignoring directory that is not a qsfs namespace");
        return Ok(Loaded::Skipped);
    };
    if desc.name != name || NamespaceName::new(name).is_err() {
        return Ok(Loaded::Damaged(
            EngineError::BadMetadata {
                path: path.to_path_buf(),
                detail: format!("descriptor names namespace {:?}", desc.name),
            }
            .into(),
        ));
    }
    if let Some(only) = shared.config.single_mode {
        if desc.mode != only {
            return Err(EngineError::ModeMismatch {
                name: name.to_string(),
                found: desc.mode,
                allowed: only,
            }
            .into());
        }
    }
    match Namespace::open(shared, path.to_path_buf(), desc) {
        Ok(ns) => {
            let ns = Arc::new(ns);
            let _ = ns.me.set(Arc::downgrade(&ns));
            Ok(Loaded::Ready(ns))
        }
        Err(e) => Ok(Loaded::Damaged(e)),
    }
}

impl Engine {
    /// Opens (creating if needed) the engine directory `dir`.
    ///
    /// Fails with [`Error::Unavailable`] if another engine holds it, [`Error::InvalidArgument`]
    /// if it is not empty and not an engine directory, or if `config` is unusable.
    pub fn open(dir: impl AsRef<Path>, config: EngineConfig) -> Result<Engine> {
        let root = dir.as_ref().to_path_buf();
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE_LIMIT).contains(&config.max_segment_size) {
            return Err(EngineError::Config(format!(
                "max_segment_size {} not in {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE_LIMIT}",
                config.max_segment_size
            ))
            .into());
        }
        if !(0.0..=1.0).contains(&config.compaction_threshold) {
            return Err(
                EngineError::Config("compaction_threshold must be within 0..=1".into()).into(),
            );
        }
        if let Some(m) = config.single_mode {
            if m != config.default_mode {
                return Err(
                    EngineError::Config("default_mode differs from single_mode".into()).into(),
                );
            }
        }
        std::fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        let marker = root.join(MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(s) if s == MARKER_CONTENT => {}
            Ok(_) => {
                return Err(EngineError::BadMetadata {
                    path: marker,
                    detail: "unknown engine format".into(),
                }
                .into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let non_empty = std::fs::read_dir(&root)
                    .map_err(io_err("list", &root))?
                    .next()
                    .is_some();
                if non_empty {
                    return Err(EngineError::NotAnEngineDir(root).into());
                }
                std::fs::write(&marker, MARKER_CONTENT).map_err(io_err("write", &marker))?;
                crate::segment::sync_dir(&root).map_err(io_err("sync", &root))?;
            }
            Err(e) => return Err(Error::io(format!("read {}", marker.display()), e)),
        }
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        // fs2 rather than `File::try_lock`, which is newer than the workspace's MSRV.
        if let Err(e) = fs2::FileExt::try_lock_exclusive(&lock) {
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
            {
                return Err(EngineError::Locked(root).into());
            }
            return Err(Error::io(format!("lock {}", lock_path.display()), e));
        }
        let key = SealKey::load_or_create(&root)?;
        let cold = match &config.cold_tier {
            Some(b) => Some(ColdTier::new(b.clone(), config.cold_timeout)?),
            None => None,
        };
        let closing = Arc::new(AtomicBool::new(false));
        let seal_queue_len = Arc::new(AtomicUsize::new(0));
        let relaid_bytes = Arc::new(AtomicU64::new(0));
        let (seal_tx, seal_thread) = spawn_seal_thread(
            &config,
            closing.clone(),
            seal_queue_len.clone(),
            relaid_bytes.clone(),
        )?;
        let shared = Shared {
            config,
            cold,
            key,
            sealer: Mutex::new(None),
            seals: AtomicU64::new(0),
            seal_queue_len,
            relayouts_asked: AtomicU64::new(0),
            relaid_bytes,
        };
        let ns_root = root.join("ns");
        std::fs::create_dir_all(&ns_root).map_err(io_err("create", &ns_root))?;
        let (mut namespaces, mut damaged) = (BTreeMap::new(), BTreeMap::new());
        for entry in std::fs::read_dir(&ns_root).map_err(io_err("list", &ns_root))? {
            let entry = entry.map_err(io_err("list", &ns_root))?;
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                tracing::warn!(path = %path.display(), "ignoring directory with a non-UTF-8 name");
                continue;
            };
            match load_namespace(&shared, &path, &name)? {
                Loaded::Ready(ns) => {
                    namespaces.insert(name, ns);
                }
                Loaded::Skipped => {}
                Loaded::Damaged(e) => {
                    tracing::error!(
                        namespace = %name, error = %e,
                        "namespace is damaged: it stays unavailable until its files are repaired"
                    );
                    damaged.insert(name, e.to_string());
                }
            }
        }
        // Only now: a seal while a namespace opens does its I/O inline.
        *shared.sealer.lock() = Some(seal_tx);
        let reserve = WriteReserve::new(shared.config.write_reserve);
        let inner = Arc::new(Inner {
            root,
            reserve,
            shared,
            namespaces: RwLock::new(namespaces),
            damaged,
            ns_admin: Mutex::new(()),
            _lock: lock,
            handles: AtomicUsize::new(1),
            stop: Arc::new((Mutex::new(Background::default()), Condvar::new())),
            background: Mutex::new(None),
            seal_thread: Mutex::new(Some(seal_thread)),
            closing,
        });
        let engine = Engine {
            inner,
            counted: true,
        };
        if !engine
            .inner
            .namespaces
            .read()
            .contains_key(DEFAULT_NAMESPACE)
            && !engine.inner.damaged.contains_key(DEFAULT_NAMESPACE)
        {
            engine.create_namespace(DEFAULT_NAMESPACE, false)?;
        }
        engine.start_background();
        Ok(engine)
    }

    /// The engine directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The configuration the engine was opened with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.shared.config
    }

    fn start_background(&self) {
        let cfg = &self.inner.shared.config;
        let mut tick = match cfg.durability {
            Durability::Periodic(d) => Some(d),
            _ => None,
        };
        if let Some(age) = cfg.max_segment_age {
            let age_tick = (age / 4).max(Duration::from_millis(10));
            tick = Some(tick.map_or(age_tick, |t| t.min(age_tick)));
        }
        let Some(tick) = tick else { return };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let ctl = self.inner.stop.clone();
        ctl.0.lock().running = true;
        // The thread holds the engine only while it works, never while it waits; the last
        // handle's drop waits for a tick in progress (see `Drop for Engine`).
        let handle = std::thread::Builder::new()
            .name("qsfs-engine-bg".into())
            .spawn(move || {
                loop {
                    {
                        let mut st = ctl.0.lock();
                        if st.stop {
                            break;
                        }
                        ctl.1.wait_for(&mut st, tick);
                        if st.stop {
                            break;
                        }
                    }
                    let Some(inner) = weak.upgrade() else { break };
                    if inner.handles.load(Ordering::Acquire) == 0 {
                        break;
                    }
                    Engine {
                        inner,
                        counted: false,
                    }
                    .background_tick();
                }
                let mut st = ctl.0.lock();
                st.running = false;
                ctl.1.notify_all();
            });
        match handle {
            Ok(h) => *self.inner.background.lock() = Some(h),
            Err(e) => {
                self.inner.stop.0.lock().running = false;
                tracing::error!(error = %e, "cannot start the engine background thread");
            }
        }
    }

    fn background_tick(&self) {
        let list: Vec<Arc<Namespace>> = self.inner.namespaces.read().values().cloned().collect();
        for ns in list {
            if matches!(self.inner.shared.config.durability, Durability::Periodic(_))
                && ns.dirty.swap(false, Ordering::AcqRel)
            {
                if let Err(e) = ns.sync() {
                    tracing::error!(namespace = %ns.name, error = %e, "periodic sync failed");
                    ns.dirty.store(true, Ordering::Release);
                }
            }
            if let Some(age) = self.inner.shared.config.max_segment_age {
                let mut w = ns.writer.lock();
                if w.end > crate::segment::SEGMENT_HEADER_LEN && w.opened.elapsed() >= age {
                    if let Err(e) = ns.rotate_locked(&self.inner.shared, &mut w) {
                        tracing::error!(namespace = %ns.name, error = %e, "age rotation failed");
                    }
                }
                drop(w);
                self.fire(&ns);
            }
        }
    }

    fn ns(&self, name: &str) -> Result<Arc<Namespace>> {
        if let Some(ns) = self.inner.namespaces.read().get(name) {
            return Ok(ns.clone());
        }
        Err(self
            .damaged_error(name)
            .unwrap_or_else(|| Error::NotFound(format!("namespace {name}"))))
    }

    /// The error of every command on `name` if it was found damaged when the engine opened.
    fn damaged_error(&self, name: &str) -> Option<Error> {
        self.inner.damaged.get(name).map(|why| Error::Corrupt {
            location: format!("namespace {name}"),
            detail: format!("damaged, unavailable until its files are repaired: {why}"),
        })
    }

    /// The namespaces found damaged when the engine opened, with what is wrong with each: they
    /// answer every command with an error, and the others serve as usual.
    pub fn damaged_namespaces(&self) -> Vec<(String, String)> {
        self.inner
            .damaged
            .iter()
            .map(|(n, why)| (n.clone(), why.clone()))
            .collect()
    }

    /// Delivers pending observer events of `ns`.
    fn fire(&self, ns: &Namespace) {
        let events = std::mem::take(&mut *ns.events.lock());
        let Some(obs) = &self.inner.shared.config.observer else {
            return;
        };
        for e in events {
            match e {
                Event::Sealed(id, path) => obs.on_segment_sealed(&ns.name, id, &path),
                Event::Removed(id) => obs.on_segment_removed(&ns.name, id),
                Event::Updated => obs.on_namespace_updated(&ns.name),
            }
        }
    }

    /// Lets the observer slow down a writer whose write sealed a segment (no lock held).
    fn throttle(&self, ns: &str) {
        if let Some(obs) = &self.inner.shared.config.observer {
            obs.throttle(ns);
        }
    }

    /// Lets the observer hold a writer back before its write starts (no lock held).
    fn admit(&self, ns: &str) {
        if let Some(obs) = &self.inner.shared.config.observer {
            obs.admit(ns, self.inner.shared.seals.load(Ordering::Acquire));
        }
    }

    fn with_ns<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Namespace, &Shared) -> Result<T>,
    ) -> Result<T> {
        let ns = self.ns(name)?;
        let r = f(&ns, &self.inner.shared);
        self.fire(&ns);
        r
    }

    fn create_namespace(&self, name: &str, notify: bool) -> Result<()> {
        let valid = NamespaceName::new(name)?;
        let _admin = self.inner.ns_admin.lock();
        if let Some(e) = self.damaged_error(valid.as_str()) {
            return Err(e);
        }
        if self.inner.namespaces.read().contains_key(valid.as_str()) {
            return Err(Error::AlreadyExists(format!("namespace {name}")));
        }
        let dir = self.inner.root.join("ns").join(valid.as_str());
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists(
                    EngineError::ForeignNamespaceDir(dir).to_string(),
                ));
            }
            Err(e) => return Err(Error::io(format!("create {}", dir.display()), e)),
        }
        let result = (|| {
            let desc = Descriptor::new(valid.as_str(), self.inner.shared.config.default_mode);
            desc.store(&dir)?;
            crate::segment::sync_dir(&self.inner.root.join("ns")).map_err(io_err("sync", &dir))?;
            Namespace::open(&self.inner.shared, dir.clone(), desc)
        })();
        match result {
            Ok(ns) => {
                let ns = Arc::new(ns);
                let _ = ns.me.set(Arc::downgrade(&ns));
                self.inner
                    .namespaces
                    .write()
                    .insert(valid.as_str().to_string(), ns);
                if notify {
                    if let Some(obs) = &self.inner.shared.config.observer {
                        obs.on_namespace_created(valid.as_str());
                    }
                }
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Seals the current segment of `ns` and starts a new one (0-db `NSJUMP`).
    pub fn rotate(&self, ns: &str) -> Result<()> {
        self.with_ns(ns, |n, s| {
            let mut w = n.writer.lock();
            n.rotate_locked(s, &mut w)
        })
    }

    /// Sets many keys of `ns` at once, as [`Store::set`] would one after the other (same
    /// checks, same outcomes, in order), but appending their records with as few writes as
    /// possible: one `pwrite` (and one sync under [`Durability::EveryWrite`]) for what would be
    /// one per key. An empty key asks for a new sequential id (seq mode). Fails as a whole only
    /// if `ns` does not exist; everything reported written is written (and synced as the
    /// durability asks) when this returns.
    pub fn set_many(&self, ns: &str, items: &[(&[u8], &[u8])]) -> Result<Vec<Result<SetOutcome>>> {
        self.admit(ns);
        // The write reserve admits a prefix: from the first item refused on, every item is.
        let mut refused = None;
        let admitted = items
            .iter()
            .take_while(|(k, v)| {
                match self
                    .inner
                    .reserve
                    .admit(record_len(k, v), || self.disk_space())
                {
                    Ok(()) => true,
                    Err(e) => {
                        refused = Some(e);
                        false
                    }
                }
            })
            .count();
        let (mut out, sealed) = self.with_ns(ns, |n, s| Ok(n.set_many(s, &items[..admitted])))?;
        if sealed {
            self.throttle(ns);
        }
        if let Some(e) = refused {
            // The same answer for each: the reserve refused it, or the disk could not be asked.
            let again = |e: &Error| match e {
                Error::NoSpace(m) => Error::NoSpace(m.clone()),
                other => Error::Unavailable(other.to_string()),
            };
            out.extend((admitted + 1..items.len()).map(|_| Err(again(&e))));
            out.insert(admitted, Err(e));
        }
        Ok(out)
    }

    /// Drops the in-memory state of `ns` and loads it again from disk (0-db `RELOAD`).
    pub fn reload(&self, ns: &str) -> Result<()> {
        self.with_ns(ns, |n, s| n.reload(s))
    }

    /// The record stored at (`segment`, `offset`) of `ns`, as stored (0-db `DATA RAW`);
    /// `Ok(None)` at or past the end of the segment. Tombstones are returned too.
    pub fn read_raw(&self, ns: &str, segment: u32, offset: u64) -> Result<Option<RawRecord>> {
        self.with_ns(ns, |n, s| n.read_raw(s, segment, offset))
    }

    /// True if reading the live value of `key` in `ns` would wait for more than the local
    /// disk: its segment is offloaded (a cold-tier fetch, or the missing-data path of
    /// [`EngineObserver::on_segment_missing`]), or its file is closed and gone from disk. Fetches
    /// nothing: an index lookup, for a caller that wants to move such reads off a thread others
    /// wait on. False for a missing key or namespace (the read answers at once), and always
    /// false for an engine with neither a cold tier nor an observer (nothing it reads can
    /// wait). An eviction right after the probe makes the read wait anyway, as it would have
    /// without it.
    pub fn value_needs_fetch(&self, ns: &str, key: &[u8]) -> bool {
        self.probe_fetch(ns, |st, ask| {
            st.index.live(key).is_some_and(|k| {
                st.segments
                    .get(&loc_segment(k.loc))
                    .is_some_and(|s| needs_fetch(s, ask))
            })
        })
    }

    /// [`Engine::value_needs_fetch`] for the records of segment `segment` of `ns` (DATA RAW).
    pub fn segment_needs_fetch(&self, ns: &str, segment: u32) -> bool {
        self.probe_fetch(ns, |st, ask| {
            st.segments
                .get(&segment)
                .is_some_and(|s| needs_fetch(s, ask))
        })
    }

    /// [`Engine::value_needs_fetch`] for any record of `ns`: true if some segment of it is not
    /// readable locally (an older version, as HISTORY reads, may be anywhere).
    pub fn namespace_needs_fetch(&self, ns: &str) -> bool {
        self.probe_fetch(ns, |st, ask| {
            st.segments.values().any(|s| needs_fetch(s, ask))
        })
    }

    /// Runs `probe` on the state of `ns`, with whether an observer is asked for missing files,
    /// unless nothing of `ns` can be fetched: no cold tier and no observer (a read of data that
    /// is not local then fails at once), or nothing offloaded and no observer to put back a
    /// file deleted from disk. Those are the common cases, and cost no index lookup.
    fn probe_fetch(&self, ns: &str, probe: impl FnOnce(&NsState, bool) -> bool) -> bool {
        let shared = &self.inner.shared;
        let ask = shared.config.observer.is_some();
        if !ask && shared.cold.is_none() {
            return false;
        }
        let Ok(n) = self.ns(ns) else { return false };
        let st = n.state.read();
        (ask || !st.desc.offloaded.is_empty()) && probe(&st, ask)
    }

    /// Counters of `ns` (for INFO / NSINFO and operators).
    pub fn stats(&self, ns: &str) -> Result<NamespaceStats> {
        self.with_ns(ns, |n, _| Ok(n.stats()))
    }

    /// Every segment of `ns`, oldest first, with sealed/offloaded state (for reconciliation by
    /// the backup tier after a restart).
    pub fn segments(&self, ns: &str) -> Result<Vec<SegmentStats>> {
        Ok(self.stats(ns)?.segments)
    }

    /// Marks sealed segment `segment` of `ns` offloaded and removes its local file. If a cold
    /// tier is configured the segment must already be there (under [`crate::cold_key`]).
    pub fn offload_segment(&self, ns: &str, segment: u32) -> Result<()> {
        self.with_ns(ns, |n, s| n.offload_segment(s, segment))
    }

    /// Copies an offloaded segment back from the cold tier into a local file.
    pub fn restore_segment(&self, ns: &str, segment: u32) -> Result<()> {
        self.with_ns(ns, |n, s| n.restore_segment(s, segment))
    }

    /// Compacts `ns` now: every sealed segment whose live ratio is below the configured
    /// threshold is rewritten and removed (an offloaded one is fetched whole from the cold tier
    /// first; without a cold tier offloaded segments are skipped).
    pub fn compact(&self, ns: &str) -> Result<CompactionReport> {
        let t = self.inner.shared.config.compaction_threshold;
        self.compact_with(ns, t)
    }

    /// [`Engine::compact`] with an explicit threshold (1.0 compacts every sealed segment).
    pub fn compact_with(&self, ns: &str, threshold: f64) -> Result<CompactionReport> {
        self.with_ns(ns, |n, s| compact(n, s, Pick::Ratio(threshold)))
    }

    /// [`Engine::compact`] of the segments last written at least the history retention ago,
    /// as the background compactor does: every superseded version in them may go, so no rewrite
    /// is spent copying history forward to be rewritten again at the next round.
    pub fn compact_settled(&self, ns: &str) -> Result<CompactionReport> {
        let t = self.inner.shared.config.compaction_threshold;
        self.with_ns(ns, |n, s| compact(n, s, Pick::Settled(t)))
    }

    /// Total and available bytes of the disk holding the engine.
    pub fn disk_space(&self) -> Result<DiskSpace> {
        DiskSpace::of(&self.inner.root)
    }

    /// The available bytes below which the disk counts as low (see
    /// [`EngineConfig::low_space`]).
    pub fn low_space(&self) -> Result<u64> {
        let config = &self.inner.shared.config;
        match config.low_space {
            Some(low) => Ok(low),
            None => Ok((2 * config.max_segment_size).min(self.disk_space()?.total / 2)),
        }
    }

    /// Gives space back from `ns`, as the background compactor does while the disk is low
    /// (see [`EngineConfig::low_space`]): rewrites the sealed local segments of which at least
    /// an eighth is dead, those freeing the most first, whatever their live ratio, while their
    /// live data fits in what is left on the disk; drops superseded versions at once when a
    /// history retention is set. When no sealed segment gives anything back and at least half
    /// of the segment being written is dead (a disk filled within one segment), that segment
    /// is sealed and compacted too. Without one every superseded version must stay, so nothing
    /// is done (a rewrite would only copy them forward again).
    pub fn reclaim(&self, ns: &str) -> Result<CompactionReport> {
        if self.inner.shared.config.history_retention.is_none() {
            return Ok(CompactionReport::default());
        }
        let available = self.disk_space()?.available;
        let report = self.with_ns(ns, |n, s| compact(n, s, Pick::Space(available)))?;
        if report.bytes_removed > 0
            || !crate::compaction::current_worth_sealing(&*self.ns(ns)?, available)
        {
            return Ok(report);
        }
        // What was deleted is in the segment still being written: sealed, it can go.
        self.rotate(ns)?;
        let available = self.disk_space()?.available;
        self.with_ns(ns, |n, s| compact(n, s, Pick::Space(available)))
    }

    /// Re-reads every local segment of `ns` and checks every record (a scrub), returning the
    /// damage found (file, offset range, what). Reads of damaged values fail with
    /// [`Error::Corrupt`] whether or not this ran; this finds them before a read does.
    pub fn verify(&self, ns: &str) -> Result<Vec<String>> {
        self.with_ns(ns, |n, _| n.verify())
    }

    /// The latest recovery manifest of `ns`: captured at a seal (or flush), with the
    /// namespace's current properties; seals by size capture one only now and then once the
    /// index is large, so it may be behind the newest seals ([`Engine::seal_all`] gives
    /// current ones). Its generation grows with every new manifest.
    pub fn manifest(&self, ns: &str) -> Result<Manifest> {
        self.ns(ns)?.manifest()
    }

    /// Seals every namespace that holds unsealed records, all at one instant, and returns the
    /// manifest of every namespace as of that instant: a consistent cut of the whole engine.
    /// A manifest that still names a segment compaction removed is renewed.
    ///
    /// A filesystem spreads one change over several namespaces (blocks, block maps, inodes),
    /// so manifests taken at each namespace's own seal can describe a state that never
    /// existed; restoring from a cut cannot. Every writer is held only while the namespaces
    /// are sealed and their manifests captured; the seals' fsyncs and manifest writes (on the
    /// seal thread) are waited for after the writers go on.
    pub fn seal_all(&self) -> Result<Vec<Manifest>> {
        let _admin = self.inner.ns_admin.lock();
        let namespaces: Vec<Arc<Namespace>> =
            self.inner.namespaces.read().values().cloned().collect();
        let result = self.cut_locked(&namespaces).and_then(|manifests| {
            // The manifests name the segments just sealed: durable before anyone relies on them.
            namespaces.iter().try_for_each(|n| n.settle_durable())?;
            Ok(manifests)
        });
        for n in &namespaces {
            self.fire(n);
        }
        result
    }

    /// The instant of a cut: with every writer held, seals each namespace that holds unsealed
    /// records and takes its manifest as captured at the seal; the others' stored manifests
    /// are current (renewed first if stale).
    fn cut_locked(&self, namespaces: &[Arc<Namespace>]) -> Result<Vec<Manifest>> {
        // BTreeMap order: every caller takes writers in the same order, so no deadlock.
        let mut writers: Vec<_> = namespaces.iter().map(|n| n.writer.lock()).collect();
        let shared = &self.inner.shared;
        let mut manifests = Vec::with_capacity(namespaces.len());
        for (n, w) in namespaces.iter().zip(writers.iter_mut()) {
            let captured = if w.end > crate::segment::SEGMENT_HEADER_LEN {
                n.rotate_capturing(shared, w, true)?
            } else {
                if n.manifest_is_stale()? {
                    n.write_manifest_locked(shared, w)?;
                }
                None
            };
            match captured {
                Some(m) => manifests.push(m),
                None => manifests.push(n.manifest()?),
            }
        }
        Ok(manifests)
    }

    /// The engine's sealing key (the content of `engine.key`), needed with the manifests to
    /// restore password-protected namespaces. Never log it.
    pub fn export_seal_key(&self) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        Ok(self.inner.shared.key.export())
    }

    /// Creates a new engine directory `dir` (which must be empty or absent) from a sealing key
    /// and namespace manifests: every sealed segment is marked offloaded and the index comes
    /// from the manifests, so [`Engine::open`] with a cold tier reads no segment data and
    /// serves every key from the cold tier. Writes after a manifest's seal are not in it.
    pub fn restore(dir: &Path, seal_key: &[u8], manifests: &[Manifest]) -> Result<()> {
        let key: zeroize::Zeroizing<[u8; 32]> =
            zeroize::Zeroizing::new(seal_key.try_into().map_err(|_| {
                Error::InvalidArgument(format!(
                    "sealing key must be 32 bytes, not {}",
                    seal_key.len()
                ))
            })?);
        let mut names = std::collections::BTreeSet::new();
        for m in manifests {
            NamespaceName::new(m.namespace.clone())?;
            if !names.insert(m.namespace.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "two manifests for namespace {}",
                    m.namespace
                )));
            }
        }
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        if std::fs::read_dir(dir)
            .map_err(io_err("list", dir))?
            .next()
            .is_some()
        {
            return Err(Error::InvalidArgument(format!(
                "cannot restore into {}: the directory is not empty",
                dir.display()
            )));
        }
        let r = Engine::restore_into(dir, &key, manifests);
        if r.is_err() {
            // The directory was empty: leave it so, and a retry is possible.
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let p = entry.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        }
        r
    }

    /// [`Engine::restore`] into a checked, empty `dir`.
    fn restore_into(dir: &Path, key: &[u8; 32], manifests: &[Manifest]) -> Result<()> {
        let marker = dir.join(MARKER);
        std::fs::write(&marker, MARKER_CONTENT).map_err(io_err("write", &marker))?;
        let lock = dir.join("lock");
        std::fs::write(&lock, b"").map_err(io_err("write", &lock))?;
        SealKey::store(dir, key)?;
        let ns_root = dir.join("ns");
        std::fs::create_dir_all(&ns_root).map_err(io_err("create", &ns_root))?;
        for m in manifests {
            let ns_dir = ns_root.join(&m.namespace);
            std::fs::create_dir(&ns_dir).map_err(io_err("create", &ns_dir))?;
            let mut desc = m.descriptor.clone();
            desc.offloaded = m.segments.iter().copied().collect();
            let next = m.sealed_through.map_or(0, |s| s.saturating_add(1));
            desc.segment_floor = desc.segment_floor.max(next);
            // The snapshot must cover the first segment after the sealed ones, which open
            // creates at the floor: re-encode it if the floor moved (a flush raced the capture).
            let (index, covers) = Index::decode_snapshot(&m.index).map_err(|why| {
                Error::corrupt(format!("manifest of namespace {}", m.namespace), why)
            })?;
            if let Some((id, _)) = index
                .keys
                .values()
                .map(|k| (loc_segment(k.loc), k))
                .find(|(id, _)| !desc.offloaded.contains_key(id))
            {
                return Err(Error::corrupt(
                    format!("manifest of namespace {}", m.namespace),
                    format!("index points into segment {id}, which the manifest does not list"),
                ));
            }
            let start = loc(desc.segment_floor, SEGMENT_HEADER_LEN);
            let snapshot = if covers == start {
                m.index.clone()
            } else {
                index.snapshot_bytes(start)
            };
            desc.store(&ns_dir)?;
            // Synced: in a restored engine the snapshot is what spares reading every segment.
            Index::write_snapshot_bytes(&ns_dir, &snapshot)
                .and_then(|_| File::open(ns_dir.join("index"))?.sync_all())
                .map_err(io_err("write index in", &ns_dir))?;
            m.store(&ns_dir, true)?;
        }
        crate::segment::sync_dir(&ns_root).map_err(io_err("sync", &ns_root))?;
        crate::segment::sync_dir(dir).map_err(io_err("sync", dir))?;
        Ok(())
    }

    /// Bytes the engine holds on local disk: segment files, index snapshots and manifests of
    /// every namespace.
    pub fn local_bytes(&self) -> u64 {
        let list: Vec<Arc<Namespace>> = self.inner.namespaces.read().values().cloned().collect();
        list.iter().map(|n| n.local_bytes()).sum()
    }

    /// Segments sealed since the engine opened, counted the moment each seal starts.
    pub fn seal_count(&self) -> u64 {
        self.inner.shared.seals.load(Ordering::Acquire)
    }

    /// Page-cache re-layouts since the engine opened: how many times gets made a segment due
    /// (a sealed segment once; the segment being written once per run of newly synced whole
    /// chunks), and how many bytes the seal thread dropped from the page cache and read back
    /// for them (each byte at most once). Segments never read are never counted.
    pub fn page_cache_relayouts(&self) -> (u64, u64) {
        let s = &self.inner.shared;
        (
            s.relayouts_asked.load(Ordering::Relaxed),
            s.relaid_bytes.load(Ordering::Relaxed),
        )
    }

    /// Writes the index snapshot of every namespace now (also done on close, and at the seals
    /// that capture a recovery manifest).
    pub fn checkpoint(&self) -> Result<()> {
        let list: Vec<Arc<Namespace>> = self.inner.namespaces.read().values().cloned().collect();
        for ns in list {
            let w = ns.writer.lock();
            if let Some(f) = w.seg.handle().map_err(io_err("open", &w.seg.path))? {
                f.sync_data().map_err(io_err("sync", &w.seg.path))?;
            }
            ns.write_snapshot_locked(&w);
        }
        Ok(())
    }
}

/// True if a read of `seg` would wait for more than the local disk. A closed file is looked
/// for on disk only if an observer would be asked for it (`ask`): its reopen costs more than
/// that `stat` anyway.
fn needs_fetch(seg: &crate::segment::Segment, ask: bool) -> bool {
    match &seg.file {
        None => true,
        Some(f) => ask && !f.is_open() && !seg.path.exists(),
    }
}

/// Most sealed segments waiting for their page-cache re-layout (see [`spawn_seal_thread`]).
const MAX_PENDING_RELAYOUTS: usize = 16;

/// How long gets must have left the engine alone before a page-cache re-layout drops a chunk:
/// a get of a dropped chunk goes to the disk, so a re-layout during a burst of gets (a server
/// answering GETs right after the SETs that filled its segments) costs that burst more than it
/// saves. Measured with `qsfs serve`, 200,000 random 4 KiB SETs then GETs at `-P 16`: with
/// re-layouts running under the gets, 512 MiB were read from disk during the GETs and they ran
/// at about a third of the speed.
pub(crate) const RELAYOUT_QUIET: Duration = Duration::from_millis(100);

/// Starts the seal thread. It holds no engine handle (a job holds its namespace), so it never
/// keeps the engine open; it ends when the queue is closed and empty.
///
/// It also re-lays out segments' page cache in large folios, which makes every later cached
/// get from them cheaper (see [`crate::segment::relayout_page_cache`]), but only those gets
/// are read from: each segment it seals and syncs it arms (see
/// [`crate::segment::Segment::arm_relayout`]; so does opening, for segments sealed before, and
/// a sync of the segment being written, for its synced whole chunks:
/// [`crate::segment::Segment::note_synced`]), and the get that makes an armed segment due
/// sends it here ([`SealMsg::Relayout`]). A segment never read is never re-read. It does that
/// in the time it has no seal to do: it pauses between chunks when a job arrives (`queued`,
/// the seal jobs sent and not yet taken) and resumes when the queue is empty again, so a seal,
/// which a sync may be waiting for, never waits for more than one chunk. With
/// [`Durability::None`] the pages are still dirty and could not be dropped, so nothing is armed.
/// Nor does it drop a chunk of a segment gets are reading: it waits until the segment's last
/// read ([`Segment::last_read`], which gets keep anyway) is [`RELAYOUT_QUIET`] old. `relaid` counts the bytes re-read.
fn spawn_seal_thread(
    config: &EngineConfig,
    closing: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    relaid: Arc<AtomicU64>,
) -> Result<(
    std::sync::mpsc::Sender<SealMsg>,
    std::thread::JoinHandle<()>,
)> {
    let (tx, rx) = std::sync::mpsc::channel::<SealMsg>();
    let durable = config.durability != Durability::None;
    let observer = config.observer.clone();
    let handle = std::thread::Builder::new()
        .name("qsfs-seal".into())
        .spawn(move || {
            crate::namespace::ON_SEAL_THREAD.with(|t| t.set(true));
            // Segments still to re-lay out (each resumes where its last pass ended). Weak: a
            // segment compacted or replaced meanwhile is not kept open for this, and is
            // skipped.
            let mut relayouts: std::collections::VecDeque<Weak<Segment>> = Default::default();
            let gets_quiet = |seg: &Weak<Segment>| {
                seg.upgrade().is_none_or(|s| {
                    let last = s.last_read.load(Ordering::Relaxed);
                    crate::segment::now_millis().saturating_sub(last)
                        >= RELAYOUT_QUIET.as_millis() as u64
                })
            };
            loop {
                let msg = if relayouts.is_empty() || closing.load(Ordering::Acquire) {
                    match rx.recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                } else if relayouts.front().is_some_and(|s| !gets_quiet(s)) {
                    // The next one's turn comes after this wait.
                    relayouts.rotate_left(1);
                    match rx.recv_timeout(RELAYOUT_QUIET) {
                        Ok(job) => job,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                        Err(std::sync::mpsc::TryRecvError::Empty) => {
                            if let Some(seg) = relayouts.pop_front() {
                                let keep_going = || {
                                    !closing.load(Ordering::Acquire)
                                        && queued.load(Ordering::Acquire) == 0
                                        && gets_quiet(&seg)
                                };
                                if relayout_pass(&seg, &relaid, keep_going) {
                                    relayouts.push_front(seg);
                                }
                            }
                            continue;
                        }
                    }
                };
                let job = match msg {
                    SealMsg::Seal(job) => job,
                    SealMsg::Relayout(seg) => {
                        // Gets outrunning the disk on many segments at once: the oldest wait
                        // longest, so they are the ones given up, until gets ask again.
                        if relayouts.len() >= MAX_PENDING_RELAYOUTS {
                            if let Some(dropped) = relayouts.pop_front().and_then(|s| s.upgrade()) {
                                dropped.relayout_dropped();
                            }
                        }
                        relayouts.push_back(seg);
                        continue;
                    }
                };
                queued.fetch_sub(1, Ordering::AcqRel);
                Namespace::run_seal_job(&job, durable, || {
                    if let Some(obs) = &observer {
                        obs.on_segment_sealed(&job.ns.name, job.seg.id, &job.seg.path);
                    }
                });
            }
        })
        .map_err(|e| Error::io("start the seal thread", e))?;
    Ok((tx, handle))
}

/// One pass of the seal thread's page-cache re-layout of `seg` (see
/// [`crate::segment::relayout_page_cache`]), from where its last pass ended up to what
/// [`Segment::relayout_range`] allows now. True if `keep_going` stopped it: the segment then
/// records how far it got and a later pass resumes there. Else the segment is told the range is
/// finished, whether it was re-read, found not cached or failed, so no byte is re-read twice.
fn relayout_pass(seg: &Weak<Segment>, relaid: &AtomicU64, keep_going: impl Fn() -> bool) -> bool {
    // Not held during the reads: compaction may remove the segment meanwhile.
    let Some((path, range)) = seg.upgrade().map(|s| (s.path.clone(), s.relayout_range())) else {
        return false;
    };
    let Some(range) = range else {
        if let Some(seg) = seg.upgrade() {
            seg.relayout_finished(0);
        }
        return false;
    };
    let resume_at =
        match crate::segment::relayout_page_cache(&path, range.from, range.to, keep_going) {
            Ok(r) => {
                relaid.fetch_add(r.reread, Ordering::Relaxed);
                r.resume_at
            }
            // Removed since (offloaded, compacted): nothing to do.
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "page cache re-layout skipped");
                None
            }
        };
    let Some(seg) = seg.upgrade() else {
        return false;
    };
    match resume_at {
        Some(at) => {
            seg.relayout_progress(at);
            true
        }
        None => {
            seg.relayout_finished(range.to);
            false
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.0.lock().stop = true;
        self.stop.1.notify_all();
        if let Some(h) = self.background.lock().take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        // Closing the queue lets the seal thread finish what is queued, then end.
        self.closing.store(true, Ordering::Release);
        drop(self.shared.sealer.lock().take());
        // Dropped by an observer called from the seal thread: the seals queued after the one
        // being reported run only once this returns, so waiting for them would never end.
        let mut on_seal_thread = false;
        if let Some(h) = self.seal_thread.lock().take() {
            if h.thread().id() == std::thread::current().id() {
                on_seal_thread = true;
            } else {
                let _ = h.join();
            }
        }
        for ns in self.namespaces.read().values() {
            let w = ns.writer.lock();
            if let Ok(Some(f)) = w.seg.handle() {
                if let Err(e) = f.sync_data() {
                    tracing::error!(namespace = %ns.name, error = %e, "sync on close failed");
                }
            }
            if !on_seal_thread {
                ns.write_snapshot_locked(&w);
            }
        }
    }
}

impl Store for Engine {
    fn set_at(
        &self,
        ns: &str,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp: Option<Timestamp>,
    ) -> Result<SetOutcome> {
        self.admit(ns);
        let adding = record_len(key.unwrap_or(&[0; 8]), value);
        self.inner.reserve.admit(adding, || self.disk_space())?;
        let (out, sealed) = self.with_ns(ns, |n, s| n.set(s, key, value, timestamp))?;
        if sealed {
            self.throttle(ns);
        }
        Ok(out)
    }

    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Entry>> {
        let n = self.ns(ns)?;
        n.get(&self.inner.shared, key)
    }

    fn get_may_wait(&self, ns: &str, key: &[u8]) -> bool {
        self.value_needs_fetch(ns, key)
    }

    fn delete_at(&self, ns: &str, key: &[u8], timestamp: Option<Timestamp>) -> Result<()> {
        self.admit(ns);
        if self.with_ns(ns, |n, s| n.delete(s, key, timestamp))? {
            self.throttle(ns);
        }
        Ok(())
    }

    fn meta(&self, ns: &str, key: &[u8]) -> Result<Option<KeyMeta>> {
        self.ns(ns)?.meta(key)
    }

    fn check(&self, ns: &str, key: &[u8]) -> Result<Option<bool>> {
        self.ns(ns)?.check(&self.inner.shared, key)
    }

    fn scan(
        &self,
        ns: &str,
        cursor: Option<&Cursor>,
        limit: usize,
        order: ScanOrder,
    ) -> Result<ScanPage> {
        self.ns(ns)?.scan(cursor, limit, order)
    }

    fn cursor_after(&self, ns: &str, key: &[u8]) -> Result<Cursor> {
        self.ns(ns)?.cursor_after(key)
    }

    fn history(&self, ns: &str, key: &[u8], at: Option<VersionId>) -> Result<Version> {
        self.ns(ns)?.history(&self.inner.shared, key, at)
    }

    fn version_before(
        &self,
        ns: &str,
        key: &[u8],
        at: Option<VersionId>,
    ) -> Result<Option<VersionId>> {
        self.ns(ns)?.version_before(&self.inner.shared, key, at)
    }

    fn namespace_create(&self, name: &str) -> Result<()> {
        self.create_namespace(name, true)
    }

    fn namespace_delete(&self, name: &str) -> Result<()> {
        NamespaceName::new(name)?;
        if name == DEFAULT_NAMESPACE {
            return Err(Error::InvalidArgument(
                "the default namespace cannot be deleted".into(),
            ));
        }
        let _admin = self.inner.ns_admin.lock();
        let ns = self.ns(name)?;
        {
            let _w = ns.writer.lock();
            // A queued seal writes into the directory about to be removed.
            ns.wait_sealed();
            let mut st = ns.state.write();
            st.deleted = true;
            self.inner.namespaces.write().remove(name);
            // Rename first so a crash never leaves a half-deleted namespace that loads.
            let trash = self
                .inner
                .root
                .join("ns")
                .join(format!("{TRASH_PREFIX}{}", hex::encode(name)));
            std::fs::rename(&ns.dir, &trash).map_err(io_err("rename", &ns.dir))?;
            let _ = crate::segment::sync_dir(&self.inner.root.join("ns"));
            std::fs::remove_dir_all(&trash).map_err(io_err("remove", &trash))?;
            st.segments.clear();
        }
        if let Some(obs) = &self.inner.shared.config.observer {
            obs.on_namespace_deleted(name);
        }
        Ok(())
    }

    fn namespace_list(&self) -> Result<Vec<String>> {
        let map = self.inner.namespaces.read();
        // A damaged namespace is listed: it exists, and its commands say what is wrong.
        let others: BTreeSet<&String> = map.keys().chain(self.inner.damaged.keys()).collect();
        let mut names = vec![DEFAULT_NAMESPACE.to_string()];
        names.extend(
            others
                .into_iter()
                .filter(|n| n.as_str() != DEFAULT_NAMESPACE)
                .cloned(),
        );
        Ok(names)
    }

    fn namespace_info(&self, name: &str) -> Result<NamespaceInfo> {
        Ok(self.ns(name)?.info())
    }

    fn namespace_set(&self, name: &str, property: NamespaceProperty) -> Result<()> {
        self.with_ns(name, |n, s| n.set_property(s, property))
    }

    fn namespace_authenticate(&self, name: &str, credential: Credential<'_>) -> Result<bool> {
        self.ns(name)?.authenticate(&self.inner.shared, credential)
    }

    fn flush_namespace(&self, name: &str) -> Result<()> {
        self.with_ns(name, |n, s| n.flush(s))
    }

    fn sync(&self) -> Result<()> {
        let list: Vec<Arc<Namespace>> = self.inner.namespaces.read().values().cloned().collect();
        for ns in list {
            ns.sync()?;
        }
        Ok(())
    }

    /// The namespace's maxsize and live bytes, and the engine directory's disk.
    fn space(&self, ns: &str) -> Result<Option<qsfs_core::StoreSpace>> {
        let info = self.namespace_info(ns)?;
        let disk = self.disk_space()?;
        Ok(Some(qsfs_core::StoreSpace {
            limit: (info.max_size > 0).then_some(info.max_size),
            used: info.data_bytes,
            // What SETs may still use: the write reserve is for deletes and compaction.
            disk_free: disk
                .available
                .saturating_sub(self.inner.reserve.kept(disk.total)),
            disk_total: Some(disk.total),
        }))
    }
}

/// The bytes a SET of `key` and `value` appends (a sequential id is 8 bytes).
fn record_len(key: &[u8], value: &[u8]) -> u64 {
    (RECORD_HEADER_LEN + key.len().max(8) + value.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::relayout_after_gets;
    use std::sync::atomic::AtomicU32;

    /// An engine of 256 KiB segments whose durability syncs each one at its seal, which makes
    /// it a candidate for the page-cache re-layout.
    fn small_synced_segments(dir: &std::path::Path) -> Engine {
        Engine::open(
            dir,
            EngineConfig {
                max_segment_size: 256 << 10,
                durability: Durability::Periodic(Duration::from_millis(20)),
                ..EngineConfig::default()
            },
        )
        .unwrap()
    }

    /// Waits (without gets) until the re-layouts have re-read `bytes`.
    fn wait_for_relaid(engine: &Engine, bytes: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while engine.page_cache_relayouts().1 < bytes {
            assert!(
                Instant::now() < deadline,
                "not re-laid out: {:?}",
                engine.page_cache_relayouts()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Large values skip the batch (written from the caller's buffer) while small ones around
    /// them are batched: every value reads back, in a reopened engine too, and each key's
    /// versions keep the order they were set in.
    #[test]
    fn large_values_between_batched_small_ones_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let value = |i: usize, round: u8| -> Vec<u8> {
            let len = if i % 3 == 1 { 200 << 10 } else { 100 + i };
            (0..len).map(|j| (j as u8) ^ (i as u8) ^ round).collect()
        };
        let keys: Vec<Vec<u8>> = (0..9usize).map(|i| format!("k{i}").into_bytes()).collect();
        {
            let engine = Engine::open(dir.path(), EngineConfig::default()).unwrap();
            for round in 0..2u8 {
                let values: Vec<Vec<u8>> = (0..keys.len()).map(|i| value(i, round)).collect();
                let items: Vec<(&[u8], &[u8])> = keys
                    .iter()
                    .zip(&values)
                    .map(|(k, v)| (&k[..], &v[..]))
                    .collect();
                for r in engine.set_many("default", &items).unwrap() {
                    assert!(r.unwrap().written());
                }
            }
            for (i, k) in keys.iter().enumerate() {
                assert!(engine.get("default", k).unwrap().unwrap().value == value(i, 1));
            }
        }
        let engine = Engine::open(dir.path(), EngineConfig::default()).unwrap();
        for (i, k) in keys.iter().enumerate() {
            assert!(
                engine.get("default", k).unwrap().unwrap().value == value(i, 1),
                "key {i}"
            );
            let older = engine.history("default", k, None).unwrap();
            let first = older.previous.expect("an older version");
            let v0 = engine.history("default", k, Some(first)).unwrap();
            assert!(v0.value == value(i, 0), "older version of key {i}");
        }
    }

    /// Every version of `key`, newest first.
    fn versions(engine: &Engine, key: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = None;
        while let Ok(v) = engine.history("default", key, at) {
            out.push(v.value);
            match v.previous {
                Some(p) => at = Some(p),
                None => break,
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// A batch (`set_many`, what a pipelining client's SETs become) gives each item the
        /// outcome, and leaves the values and version chains, that setting the items one by
        /// one gives: repeated keys (with the same value, which is no write, or another),
        /// values written on their own between batched ones, and batches written out early
        /// because they are full.
        #[test]
        fn a_batch_is_the_same_as_its_items_one_by_one(
            items in proptest::collection::vec((0u8..6, 0u8..4), 1..80),
        ) {
            let value = |i: usize, kind: u8| -> Vec<u8> {
                match kind {
                    0 => b"x".to_vec(),
                    1 => b"y".to_vec(),
                    2 => vec![i as u8; 40 << 10],
                    _ => vec![i as u8 ^ 0x55; 70 << 10],
                }
            };
            let keys: Vec<Vec<u8>> = items.iter().map(|&(k, _)| vec![b'k', k]).collect();
            let values: Vec<Vec<u8>> =
                items.iter().enumerate().map(|(i, &(_, v))| value(i, v)).collect();
            let pairs: Vec<(&[u8], &[u8])> =
                keys.iter().zip(&values).map(|(k, v)| (&k[..], &v[..])).collect();
            let (one, many) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let config = || EngineConfig { durability: Durability::None, ..EngineConfig::default() };
            let one = Engine::open(one.path(), config()).unwrap();
            let many = Engine::open(many.path(), config()).unwrap();
            let singly: Vec<bool> = pairs
                .iter()
                .map(|(k, v)| one.set("default", Some(k), v).unwrap().written())
                .collect();
            let batched: Vec<bool> = many
                .set_many("default", &pairs)
                .unwrap()
                .into_iter()
                .map(|r| r.unwrap().written())
                .collect();
            proptest::prop_assert_eq!(batched, singly);
            for k in 0..6u8 {
                let key = [b'k', k];
                proptest::prop_assert!(versions(&many, &key) == versions(&one, &key), "key {}", k);
            }
        }
    }

    /// A segment due for its re-layout is left alone while gets keep coming (a get of a dropped
    /// chunk would go to the disk) and re-laid out once they pause.
    #[test]
    fn a_relayout_waits_until_gets_pause() {
        let dir = tempfile::tempdir().unwrap();
        let engine = small_synced_segments(dir.path());
        let value = |i: u32| -> Vec<u8> { (0..4096u32).map(|j| (i ^ j) as u8).collect() };
        for i in 0..200u32 {
            engine
                .set("default", Some(&i.to_le_bytes()), &value(i))
                .unwrap();
        }
        Store::sync(&engine).unwrap();
        let get = |k: u32| {
            let e = engine.get("default", &k.to_le_bytes()).unwrap().unwrap();
            assert!(e.value == value(k), "wrong value for key {k}");
        };
        // Keys 0..40 lie in the first sealed segment; gets every few ms for well over the
        // quiet time, after it became due.
        let start = Instant::now();
        while start.elapsed() < RELAYOUT_QUIET * 8 {
            for k in 0..40 {
                get(k);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (asked, bytes) = engine.page_cache_relayouts();
        assert!(asked >= 1, "the gets did not make the segment due");
        assert_eq!(bytes, 0, "re-laid out while gets were served");
        wait_for_relaid(&engine, 1);
        for k in 0..200 {
            get(k);
        }
    }

    /// A writer (`write(i)` for i in 0..n, pausing as it likes) races a reader of random keys
    /// already written (each value checked by `check`), until all are written and at least
    /// `min_reads` gets were done. The reader pauses for longer than [`RELAYOUT_QUIET`] every
    /// 5,000 gets, so that the re-layouts its gets made due start, and its next gets race them;
    /// `every_512` runs every 512 gets.
    fn race_writes_and_gets(
        engine: &Engine,
        n: u32,
        min_reads: u32,
        write: impl Fn(u32) + Sync,
        check: impl Fn(u32, &[u8]) + Sync,
        every_512: impl Fn() + Sync,
    ) {
        let written = AtomicU32::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..n {
                    write(i);
                    written.store(i + 1, Ordering::Release);
                }
            });
            s.spawn(|| {
                let mut x = 0x9E37_79B9u32;
                let mut reads = 0u32;
                while written.load(Ordering::Acquire) < n || reads < min_reads {
                    let upto = written.load(Ordering::Acquire);
                    if upto == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let k = x % upto;
                    let e = engine
                        .get("default", &k.to_le_bytes())
                        .unwrap()
                        .expect("a written key");
                    check(k, &e.value);
                    reads += 1;
                    if reads % 512 == 0 {
                        every_512();
                    }
                    if reads % 5000 == 0 {
                        // Longer than two of the seal thread's waits for quiet.
                        std::thread::sleep(RELAYOUT_QUIET * 2 + Duration::from_millis(20));
                    }
                }
            });
        });
    }

    /// Gets racing seals and the seal thread's page-cache re-layout of the sealed segments
    /// (small segments, a durability that syncs at each seal, so every seal queues a re-layout,
    /// which runs in the writer's pauses and which seals interrupt): every get returns the
    /// value last written, no seal waits forever behind a re-layout, and the engine closes with
    /// re-layouts still queued.
    #[test]
    fn gets_stay_right_while_sealed_segments_are_laid_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let engine = small_synced_segments(dir.path());
        let value = |i: u32| -> Vec<u8> {
            (0..4096u32)
                .map(|j| (i.wrapping_mul(31) ^ j) as u8)
                .collect()
        };
        let n = 3000u32;
        race_writes_and_gets(
            &engine,
            n,
            10 * n,
            |i| {
                engine
                    .set("default", Some(&i.to_le_bytes()), &value(i))
                    .unwrap();
                if i % 1000 == 999 {
                    // Idle time for the seal thread, which re-lays out segments only then.
                    std::thread::sleep(Duration::from_millis(200));
                }
            },
            |k, v| assert!(v == value(k), "wrong value for key {k}"),
            || {},
        );
        assert!(engine.seal_count() >= 40, "{} seals", engine.seal_count());
        // The reader's gets made sealed segments due, and re-layouts ran in its pauses.
        let (asked, bytes) = engine.page_cache_relayouts();
        assert!(asked > 0 && bytes > 0, "{asked} asked, {bytes} bytes");
        // Everything reads back after the last re-layouts, and closing does not wait for the
        // ones still queued.
        for k in 0..n {
            let e = engine.get("default", &k.to_le_bytes()).unwrap().unwrap();
            assert!(e.value == value(k), "wrong value for key {k}");
        }
        drop(engine);
    }

    /// Sets `keys` with 4 KiB values derived from each key.
    fn fill(engine: &Engine, keys: std::ops::Range<u32>) {
        for i in keys {
            engine
                .set("default", Some(&i.to_le_bytes()), &value_of(i))
                .unwrap();
        }
    }

    fn value_of(i: u32) -> Vec<u8> {
        (0..4096u32)
            .map(|j| (i.wrapping_mul(0x9E37_79B9) ^ j) as u8)
            .collect()
    }

    /// Gets every key of `keys` (each returning its value), `passes` times over.
    fn get_all(engine: &Engine, keys: std::ops::Range<u32>, passes: u32) {
        for _ in 0..passes {
            for k in keys.clone() {
                let e = engine.get("default", &k.to_le_bytes()).unwrap().unwrap();
                assert!(e.value == value_of(k), "wrong value for key {k}");
            }
        }
    }

    /// Gets `keys` until the re-layouts have re-read `bytes` in all (they run on the seal
    /// thread, after the get that makes them due, once gets pause: [`RELAYOUT_QUIET`]),
    /// failing after a while.
    fn get_until_relaid(engine: &Engine, keys: std::ops::Range<u32>, bytes: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.page_cache_relayouts().1 < bytes {
            get_all(engine, keys.clone(), 4);
            std::thread::sleep(RELAYOUT_QUIET * 3);
            assert!(
                Instant::now() < deadline,
                "never re-laid out: {:?}",
                engine.page_cache_relayouts()
            );
        }
    }

    /// The segment being written: gets re-lay out its page cache only up to the last whole
    /// 2 MiB chunk a sync covered (never unsynced, dirty pages; never the tail), each chunk
    /// once, and the newly synced chunks again once gets read them.
    #[test]
    fn only_synced_whole_chunks_of_the_segment_being_written_are_laid_out_again_once() {
        let dir = tempfile::tempdir().unwrap();
        // No syncs but those asked for: what is written stays dirty until then.
        let engine = Engine::open(
            dir.path(),
            EngineConfig {
                durability: Durability::None,
                ..EngineConfig::default()
            },
        )
        .unwrap();
        let chunk = crate::segment::RELAYOUT_ALIGN;
        // 1,300 records of 4,164 bytes: 5.2 MiB, all in the one segment being written.
        let n = 1300u32;
        fill(&engine, 0..n);
        get_all(&engine, 0..n, 3);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(engine.page_cache_relayouts(), (0, 0), "nothing synced yet");
        Store::sync(&engine).unwrap();
        // The two whole chunks the sync covered, not the part of the third.
        get_until_relaid(&engine, 0..n, 2 * chunk);
        assert_eq!(engine.page_cache_relayouts(), (1, 2 * chunk));
        get_all(&engine, 0..n, 3);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            engine.page_cache_relayouts(),
            (1, 2 * chunk),
            "once per chunk"
        );
        // Written past the third chunk: not a candidate before a sync covers it.
        fill(&engine, n..n + 400);
        get_all(&engine, 0..n + 400, 2);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(engine.page_cache_relayouts(), (1, 2 * chunk));
        Store::sync(&engine).unwrap();
        get_until_relaid(&engine, 0..n + 400, 3 * chunk);
        assert_eq!(engine.page_cache_relayouts(), (2, 3 * chunk));
        get_all(&engine, 0..n + 400, 1);
    }

    /// Segments sealed by an earlier run are candidates too: after a reopen, the one that gets
    /// read is re-laid out once, whole, and the others never.
    #[test]
    fn segments_sealed_by_an_earlier_run_are_laid_out_again_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let n = 650u32;
        {
            let engine = small_synced_segments(dir.path());
            fill(&engine, 0..n);
        }
        let engine = small_synced_segments(dir.path());
        let first = dir.path().join("ns/default/0000000000.seg");
        let first_len = std::fs::metadata(&first).unwrap().len();
        // The last keys are in the segment being written (less than a whole chunk).
        get_all(&engine, n - 20..n, 20);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            engine.page_cache_relayouts(),
            (0, 0),
            "no sealed segment read"
        );
        // Keys 0..40 are all in the first segment.
        get_until_relaid(&engine, 0..40, first_len);
        assert_eq!(engine.page_cache_relayouts(), (1, first_len));
        get_all(&engine, 0..40, 50);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(engine.page_cache_relayouts(), (1, first_len));
    }

    /// Segments that compaction wrote its copies into are candidates like any other: read by
    /// gets, each is re-laid out once, and segments no get reads are not.
    #[test]
    fn segments_holding_compaction_copies_are_laid_out_again_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let engine = small_synced_segments(dir.path());
        let n = 650u32;
        fill(&engine, 0..n);
        // Half of every segment dead: compaction copies the odd keys forward.
        for k in (0..n).step_by(2) {
            engine
                .set("default", Some(&k.to_le_bytes()), &value_of(k + 1))
                .unwrap();
        }
        Store::sync(&engine).unwrap();
        let report = engine.compact_with("default", 0.75).unwrap();
        assert!(report.records_copied > 100, "{report:?}");
        Store::sync(&engine).unwrap();
        let before = engine.page_cache_relayouts();
        // Where the odd keys are now: the sealed segments holding copies.
        let (current, mut copies) = {
            let ns = engine.ns("default").unwrap();
            let st = ns.state.read();
            let current = *st.segments.keys().next_back().unwrap();
            let segs: std::collections::BTreeSet<u32> = (1..n)
                .step_by(2)
                .map(|k| loc_segment(st.index.live(&k.to_le_bytes()).unwrap().loc))
                .collect();
            (current, segs)
        };
        copies.remove(&current);
        assert!(copies.len() >= 2, "{copies:?}");
        let bytes: u64 = copies
            .iter()
            .map(|id| {
                let p = dir
                    .path()
                    .join("ns/default")
                    .join(crate::segment::segment_file_name(*id));
                std::fs::metadata(p).unwrap().len()
            })
            .sum();
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.page_cache_relayouts().1 - before.1 < bytes {
            for _ in 0..4 {
                for k in (1..n).step_by(2) {
                    let e = engine.get("default", &k.to_le_bytes()).unwrap().unwrap();
                    assert!(e.value == value_of(k), "wrong value for key {k}");
                }
            }
            std::thread::sleep(RELAYOUT_QUIET * 3);
            assert!(
                Instant::now() < deadline,
                "{:?}",
                engine.page_cache_relayouts()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        let after = engine.page_cache_relayouts();
        assert_eq!(after.1 - before.1, bytes, "each of them once, nothing else");
        assert_eq!(after.0 - before.0, copies.len() as u64);
    }

    /// Gets of the segment being written racing appends, periodic syncs and the re-layouts
    /// they make due: every get returns the value written, the re-layouts never go past what
    /// was synced in whole chunks, and the engine closes with one possibly running.
    #[test]
    fn gets_stay_right_while_the_segment_being_written_is_laid_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(
            dir.path(),
            EngineConfig {
                durability: Durability::Periodic(Duration::from_millis(5)),
                ..EngineConfig::default()
            },
        )
        .unwrap();
        let chunk = crate::segment::RELAYOUT_ALIGN;
        let n = 4000u32;
        race_writes_and_gets(
            &engine,
            n,
            5 * n,
            |i| {
                fill(&engine, i..i + 1);
                if i % 500 == 499 {
                    std::thread::sleep(Duration::from_millis(30));
                }
            },
            |k, v| assert!(v == value_of(k), "wrong value for key {k}"),
            || {
                // Synced whole chunks only: never beyond the chunks written.
                let len = std::fs::metadata(dir.path().join("ns/default/0000000000.seg"))
                    .unwrap()
                    .len();
                let relaid = engine.page_cache_relayouts().1;
                assert!(
                    relaid % chunk == 0 && relaid <= len / chunk * chunk,
                    "{relaid} of {len}"
                );
            },
        );
        assert_eq!(engine.seal_count(), 0);
        let (asked, bytes) = engine.page_cache_relayouts();
        assert!(asked > 0 && bytes > 0, "{asked} asked, {bytes} bytes");
        get_all(&engine, 0..n, 1);
        drop(engine);
    }

    /// The re-layout follows gets, not seals: sealed segments that no get reads are never
    /// re-read, and the one that gets read is re-laid out once, whole, while its gets keep
    /// returning the right values.
    #[test]
    fn only_sealed_segments_that_gets_read_are_laid_out_again_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let engine = small_synced_segments(dir.path());
        let value =
            |i: u32| -> Vec<u8> { (0..4096u32).map(|j| (i ^ j.rotate_left(3)) as u8).collect() };
        // About 62 records a segment: 10 sealed segments.
        let n = 650u32;
        for i in 0..n {
            engine
                .set("default", Some(&i.to_le_bytes()), &value(i))
                .unwrap();
        }
        Store::sync(&engine).unwrap();
        let seg_dir = dir.path().join("ns/default");
        let mut segs: Vec<PathBuf> = std::fs::read_dir(&seg_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segs.sort();
        assert!(segs.len() >= 10, "{} segments", segs.len());
        // Idle time in which the seal thread would re-lay out anything it had been sent.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(engine.page_cache_relayouts(), (0, 0), "nothing read yet");
        // Keys 0..40 are all in the first segment; 8 passes make it due more than once over.
        let first_len = std::fs::metadata(&segs[0]).unwrap().len();
        assert!(relayout_after_gets(first_len) < 40);
        let get_first = || {
            for k in 0..40u32 {
                let e = engine.get("default", &k.to_le_bytes()).unwrap().unwrap();
                assert!(e.value == value(k), "wrong value for key {k}");
            }
        };
        // The gets make it due; the re-layout then waits for them to pause.
        let mut passes = 0;
        while engine.page_cache_relayouts().0 == 0 {
            get_first();
            passes += 1;
            assert!(
                passes < 1000,
                "never asked for: {:?}",
                engine.page_cache_relayouts()
            );
        }
        wait_for_relaid(&engine, first_len);
        // Once, and only that segment (the whole file was cached: written and synced).
        assert_eq!(engine.page_cache_relayouts(), (1, first_len));
        for _ in 0..8 {
            get_first();
        }
        // Gets of the segment being written (never armed) and of the last sealed one.
        for k in n - 10..n {
            let e = engine.get("default", &k.to_le_bytes()).unwrap().unwrap();
            assert!(e.value == value(k), "wrong value for key {k}");
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(engine.page_cache_relayouts(), (1, first_len));
    }
}
