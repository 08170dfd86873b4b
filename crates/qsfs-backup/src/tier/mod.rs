//! The cold tier of the storage chain: offload, eviction, fetch-back, GC across tiers, recovery.
//!
//! ```text
//! FUSE → Engine ──observer──► Tier worker ──store/verify/delete──► Pipeline → Backends
//!          └────cold_tier───► FetchCache ──read_stripe────────────┘
//! ```
//!
//! * The **worker** (a thread with its own small runtime) uploads every sealed segment through
//!   the [`Pipeline`] under [`qsfs_store::cold_key`], reads the record back from the metadata
//!   quorum, checks size and whole-object checksum against what it computed while reading the
//!   file, and only then records the segment as confirmed in its durable state. With
//!   `verify_deep` every shard is confirmed on its backend as it is written
//!   ([`Pipeline::store_verified`]); only a verified segment may be evicted. It also uploads
//!   each namespace's recovery manifest and
//!   the engine's seal key, and deletes cold objects that no uploaded manifest references.
//! * **Eviction** keeps the engine's local bytes under `local_cap` by offloading confirmed
//!   segments, least recently read first; writers are slowed down (never stopped) while the
//!   disk is over the cap and the worker is making progress.
//! * The **fetch cache** is the engine's cold tier: range reads fetch only the stripes they
//!   need, share concurrent fetches and keep decoded stripes in memory.
//! * [`recover`] rebuilds an engine directory from the manifests alone.
//!
//! See `docs/tier.md` for the rules and why the deletion rule is safe.

pub mod cut;
mod evict;
mod fetch;
mod gate;
mod metrics;
mod recover;
mod state;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use qsfs_core::{Error, Result};
use qsfs_store::{Engine, EngineObserver};
use serde::{Deserialize, Serialize};

use crate::pipeline::Pipeline;

pub use cut::CUT_KEY;
pub use fetch::FetchCache;
pub use metrics::TierMetrics;
pub use recover::{recover, RecoverReport};

use state::{Gate, Journal, PendingDelete, State};

/// Object key of a namespace's recovery manifest.
pub fn manifest_key(ns: &str) -> String {
    format!("manifests/{}", hex::encode(ns.as_bytes()))
}

/// Object key of the engine's seal key (encrypted by the pipeline like everything else).
pub const SEAL_KEY: &str = "engine/seal-key";

/// Tunables of the tier.
#[derive(Debug, Clone)]
pub struct TierConfig {
    /// Most bytes the engine may keep on local disk; `None` = no eviction.
    pub local_cap: Option<u64>,
    /// Bytes of decoded stripes kept in memory by the fetch cache.
    pub read_cache_bytes: u64,
    /// First retry delay after a failed upload.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How often the pipeline's garbage collection (orphaned shards) runs.
    pub gc_every: Duration,
    /// Confirm every shard of an upload on its backend ([`qsfs_core::Backend::verify`]) as it
    /// is written, before its segment may be evicted. A confirmation an earlier version
    /// recorded unverified is checked by reading its shards back, when the disk is over its
    /// cap or once the backlog is uploaded.
    pub verify_deep: bool,
    /// Run the upload work (compression, encryption, erasure coding, hashing, verification) on
    /// threads of low priority (nice 10), so that it takes the CPU the writers
    /// leave rather than sharing it with them. While the disk is over its cap (writers wait
    /// for the uploads) the work runs at normal priority.
    pub low_priority: bool,
    /// How often a recovery cut is taken ([`Engine::seal_all`]: unsealed writes are sealed
    /// and the manifests of every namespace captured at one instant) and uploaded once its
    /// segments are. This bounds how old the newest recoverable state is, as long as the cut
    /// is small (see `cut_small`).
    pub cut_every: Duration,
    /// A cut holds every namespace's whole index, so its upload grows with the data kept, not
    /// with the data changed. Once the last cut was larger than this many bytes, the next one
    /// is taken only after the segments uploaded since hold `cut_amortize` times its size, or
    /// after `cut_every_max`: the cuts then cost at most 1/`cut_amortize` of the uploads.
    pub cut_small: u64,
    /// See `cut_small`; 0 takes every cut at `cut_every` whatever its size.
    pub cut_amortize: u64,
    /// The longest a large cut waits for enough new data (the bound on how old the newest
    /// recoverable state is once cuts are large).
    pub cut_every_max: Duration,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            local_cap: None,
            read_cache_bytes: 64 << 20,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            gc_every: Duration::from_secs(600),
            verify_deep: true,
            low_priority: true,
            cut_every: Duration::from_secs(60),
            cut_small: 16 << 20,
            cut_amortize: 8,
            cut_every_max: Duration::from_secs(900),
        }
    }
}

/// Health of one backend, as last probed by the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    /// Backend name (`meta:` prefixed for metadata backends).
    pub name: String,
    /// Answering.
    pub up: bool,
    /// Status detail.
    pub detail: String,
}

/// A snapshot of the tier for `qsfs status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierStatus {
    /// Bytes of the engine directory on local disk.
    pub local_bytes: u64,
    /// The configured cap.
    pub local_cap: Option<u64>,
    /// Sealed segments not yet confirmed stored.
    pub backlog_segments: u64,
    /// Their bytes.
    pub backlog_bytes: u64,
    /// Segments uploaded but not yet deep-verified (not evictable until they are).
    #[serde(default)]
    pub unverified_segments: u64,
    /// Segments uploaded and verified since start.
    pub uploaded_segments: u64,
    /// Segments evicted since start.
    pub evicted_segments: u64,
    /// Cold objects waiting to be deleted.
    pub pending_deletes: u64,
    /// The local cap cannot be met (nothing more is evictable).
    pub cap_unmet: bool,
    /// Writers are held at the write gate now: a seal left the engine over its cap and they
    /// wait for uploads and eviction.
    #[serde(default)]
    pub writes_held: bool,
    /// Writes held at the gate since start.
    #[serde(default)]
    pub write_holds: u64,
    /// Milliseconds they waited, summed over the writers.
    #[serde(default)]
    pub write_hold_ms: u64,
    /// The last upload, verification or delete failure, cleared by the next success.
    pub last_error: Option<String>,
    /// Backend health from the worker's last probe.
    pub backends: Vec<BackendHealth>,
}

/// What the worker reports to the rest of the tier.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub last_error: Option<String>,
    pub backends: Vec<BackendHealth>,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// When an upload last succeeded.
    pub last_success: Option<Instant>,
    /// Bumped on every confirmation and eviction (throttled writers wait for a change).
    pub progress: u64,
}

pub(crate) struct Shared {
    pub pipeline: Arc<Pipeline>,
    pub dir: PathBuf,
    pub config: TierConfig,
    pub state: Mutex<State>,
    /// Where changes of `state` are made durable (taken with `state` held, never alone).
    pub journal: Mutex<Journal>,
    pub metrics: Arc<TierMetrics>,
    pub fetch: Arc<FetchCache>,
    pub engine: Mutex<Option<Engine>>,
    /// Set when the worker should look for work now.
    pub wake: (Mutex<bool>, Condvar),
    pub live: Mutex<Live>,
    /// Signalled with `live` changes (progress, idle).
    pub changed: Condvar,
    pub stop: AtomicBool,
    /// Someone waits for the tier to be idle: take a cut now rather than at the next period.
    pub cut_requested: AtomicBool,
    pub worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Rate limit of the cap-unmet warning.
    pub last_cap_warning: Mutex<Option<Instant>>,
    /// Set when a seal left the engine over its cap: every writer waits (see
    /// [`evict::admit`]) until eviction brings it back under.
    pub gate: gate::WriteGate,
}

impl Shared {
    pub fn engine(&self) -> Option<Engine> {
        self.engine.lock().clone()
    }

    pub fn kick(&self) {
        *self.wake.0.lock() = true;
        self.wake.1.notify_one();
    }

    /// Applies `f` to the state and persists it. The in-memory state changes only if the file
    /// was written, so memory never claims more than a restart would find.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T> {
        let mut st = self.state.lock();
        let mut next = st.clone();
        let out = f(&mut next);
        if next != *st {
            self.journal.lock().commit(&st, &next)?;
            *st = next;
        }
        TierMetrics::set(&self.metrics.pending_deletes, st.deletes.len() as u64);
        Ok(out)
    }

    pub fn note_progress(&self) {
        let mut l = self.live.lock();
        l.progress += 1;
        drop(l);
        self.changed.notify_all();
    }
}

/// The tier: create with [`Tier::new`], put [`Tier::observer`] and [`Tier::cold_tier`] in the
/// engine's config, open the engine, then [`Tier::start`] it.
#[derive(Clone)]
pub struct Tier {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl Tier {
    /// A tier storing through `pipeline`, with its durable state in `state_dir` (created if
    /// needed). Fails if the state file exists but is damaged.
    pub fn new(pipeline: Arc<Pipeline>, state_dir: &Path, config: TierConfig) -> Result<Tier> {
        if pipeline.settings().format.tags_plaintext() {
            // The tier checks each upload's stored record against a checksum of what it read
            // itself; the checksum of an uncompressed stripe in formats 4 and 5 is its AEAD tag,
            // which only sealing the stripe again would give.
            return Err(Error::InvalidArgument(
                "the storage tier needs a record format of hashed plaintext (1 to 3), not 4 or 5"
                    .into(),
            ));
        }
        std::fs::create_dir_all(state_dir)
            .map_err(|e| Error::io(format!("create {}", state_dir.display()), e))?;
        let (journal, state) = Journal::open(state_dir)?;
        let metrics = Arc::new(TierMetrics::default());
        TierMetrics::set(&metrics.pending_deletes, state.deletes.len() as u64);
        let fetch = Arc::new(FetchCache::new(
            pipeline.clone(),
            config.read_cache_bytes,
            metrics.clone(),
        ));
        Ok(Tier {
            shared: Arc::new(Shared {
                pipeline,
                dir: state_dir.to_path_buf(),
                config,
                state: Mutex::new(state),
                journal: Mutex::new(journal),
                metrics,
                fetch,
                engine: Mutex::new(None),
                wake: (Mutex::new(false), Condvar::new()),
                live: Mutex::new(Live::default()),
                changed: Condvar::new(),
                stop: AtomicBool::new(false),
                cut_requested: AtomicBool::new(false),
                worker: Mutex::new(None),
                last_cap_warning: Mutex::new(None),
                gate: gate::WriteGate::default(),
            }),
        })
    }

    /// The observer to put in `EngineConfig::observer`.
    pub fn observer(&self) -> Arc<dyn EngineObserver> {
        Arc::new(TierObserver(Arc::downgrade(&self.shared)))
    }

    /// The cold tier to put in `EngineConfig::cold_tier`: the fetch cache over the pipeline.
    pub fn cold_tier(&self) -> Arc<dyn qsfs_core::Backend> {
        self.shared.fetch.clone()
    }

    /// Starts the worker for `engine` (opened with this tier's observer and cold tier). It
    /// reconciles first: every sealed, local, unconfirmed segment is queued.
    pub fn start(&self, engine: Engine) -> Result<()> {
        let mut w = self.shared.worker.lock();
        if w.is_some() {
            return Err(Error::InvalidArgument("tier already started".into()));
        }
        *self.shared.engine.lock() = Some(engine);
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name("qsfs-tier".into())
            .spawn(move || worker::run(shared))
            .map_err(|e| Error::io("start the tier worker", e))?;
        *w = Some(handle);
        Ok(())
    }

    /// The current state, cheaply (no network call: backend health is the worker's last probe).
    pub fn status(&self) -> TierStatus {
        let m = &self.shared.metrics;
        let live = self.shared.live.lock();
        TierStatus {
            local_bytes: TierMetrics::get(&m.local_bytes),
            local_cap: self.shared.config.local_cap,
            backlog_segments: TierMetrics::get(&m.backlog_segments),
            backlog_bytes: TierMetrics::get(&m.backlog_bytes),
            unverified_segments: TierMetrics::get(&m.unverified_segments),
            uploaded_segments: TierMetrics::get(&m.segments_offloaded),
            evicted_segments: TierMetrics::get(&m.evictions),
            pending_deletes: TierMetrics::get(&m.pending_deletes),
            cap_unmet: m.cap_unmet.load(Ordering::Relaxed),
            writes_held: TierMetrics::get(&m.writers_held) > 0,
            write_holds: TierMetrics::get(&m.write_holds),
            write_hold_ms: TierMetrics::get(&m.write_hold_ms),
            last_error: live.last_error.clone(),
            backends: live.backends.clone(),
        }
    }

    /// The metrics, for an exporter.
    pub fn metrics(&self) -> Arc<TierMetrics> {
        self.shared.metrics.clone()
    }

    /// Waits until every sealed segment is confirmed stored and every namespace's newest
    /// manifest is uploaded; false if `timeout` passed first (or the tier is not started).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(engine) = self.shared.engine() else {
                return false;
            };
            if worker::is_idle(&self.shared, &engine) {
                return true;
            }
            drop(engine);
            self.shared.cut_requested.store(true, Ordering::Release);
            self.shared.kick();
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let mut live = self.shared.live.lock();
            let wait = (deadline - now).min(Duration::from_millis(200));
            self.shared.changed.wait_for(&mut live, wait);
        }
    }

    /// Stops the worker (finishing the step in progress) and releases the engine handle.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.kick();
        self.shared.changed.notify_all();
        let handle = self.shared.worker.lock().take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        self.shared.engine.lock().take();
    }
}

/// The engine's view of the tier. Holds the tier weakly: the engine keeps its observer for its
/// whole life, and the tier holds the engine until shutdown.
struct TierObserver(Weak<Shared>);

impl TierObserver {
    fn persist(&self, what: &str, f: impl FnOnce(&Shared, &mut State)) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        // Without the record the start-up reconciliation finds the object again.
        if let Err(e) = shared.update(|st| f(&shared, st)) {
            tracing::error!(error = %e, "tier: cannot record {what}");
        }
        shared.kick();
    }
}

impl EngineObserver for TierObserver {
    fn on_segment_sealed(&self, _ns: &str, _segment: u32, _path: &Path) {
        if let Some(s) = self.0.upgrade() {
            s.kick();
        }
    }

    fn on_segment_removed(&self, ns: &str, segment: u32) {
        // The highest segment id now: the next manifest sealed at or above it was captured
        // after this removal, so it cannot reference the segment.
        let after = self
            .0
            .upgrade()
            .and_then(|s| s.engine())
            .and_then(|e| e.segments(ns).ok())
            .and_then(|segs| segs.iter().map(|s| s.id).max())
            .unwrap_or(segment)
            .max(segment);
        self.persist("a removed segment", |_, st| {
            let object_id = st
                .confirmed
                .remove(&(ns.to_string(), segment))
                .map(|c| c.object_id);
            st.deletes.push(PendingDelete {
                ns: ns.to_string(),
                segment: Some(segment),
                gate: Gate::Manifest { after },
                object_id,
            });
        });
    }

    fn on_namespace_updated(&self, _ns: &str) {
        if let Some(s) = self.0.upgrade() {
            s.kick();
        }
    }

    fn on_namespace_deleted(&self, ns: &str) {
        self.persist("a deleted namespace", |_, st| {
            let manifest = st.manifests.remove(ns);
            st.deletes.push(PendingDelete {
                ns: ns.to_string(),
                segment: None,
                gate: Gate::NamespaceGone,
                object_id: manifest.map(|m| m.object_id),
            });
            let ids: Vec<(String, u32)> = st
                .confirmed
                .keys()
                .filter(|(n, _)| n == ns)
                .cloned()
                .collect();
            for k in ids {
                let c = st.confirmed.remove(&k);
                st.deletes.push(PendingDelete {
                    ns: ns.to_string(),
                    segment: Some(k.1),
                    gate: Gate::NamespaceGone,
                    object_id: c.map(|c| c.object_id),
                });
            }
            for d in st.deletes.iter_mut().filter(|d| d.ns == ns) {
                d.gate = Gate::NamespaceGone;
            }
        });
    }

    // No `throttle`: the sealing writer meets the gate at its next write, like every other
    // writer (`admit`); holding it after the seal as well would be a second mechanism.

    fn admit(&self, _ns: &str, seals: u64) {
        if let Some(s) = self.0.upgrade() {
            evict::admit(&s, seals);
        }
    }
}
