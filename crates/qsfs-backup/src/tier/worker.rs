//! The offload worker: uploads and verification, manifests, the seal key, cold deletes, GC.
//!
//! One thread with its own small runtime. Engine calls are blocking and run on this thread,
//! outside any async task; pipeline calls run as tasks of a runtime whose threads run at a low
//! priority (`TierConfig::low_priority`), or of one at normal priority while the disk is over
//! its cap and writers wait for the uploads: compression, encryption, erasure coding
//! and hashing use the CPU the writers leave. This thread keeps its normal priority because it
//! takes engine locks (`seal_all` holds every writer). The engine's cold-tier reads use the
//! engine's own runtime, so a slow upload never delays a fetch.
//!
//! The queue is not a separate file: it is "every sealed, local segment that the state does
//! not list as confirmed", recomputed from [`Engine::segments`] on every pass. So it survives
//! kill -9 by construction, and a lost seal notification only delays the upload to the next
//! pass (at most a second).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use qsfs_core::{Backend, Error, HealthStatus, Result, Store};
use qsfs_store::{cold_key, Engine, Manifest, SegmentStats};

use super::metrics::TierMetrics;
use super::state::{Confirmed, Gate, PendingDelete, State, UploadedManifest};
use super::{manifest_key, BackendHealth, Shared, CUT_KEY, SEAL_KEY};
use crate::metadata::ObjectRecord;
use crate::pipeline::{Attrs, BLOCKING_THREADS};
use crate::progress::NoProgress;
use crate::stripe::{self, PlainHasher, ShardHash, Sum};

/// How often backend health is probed for `status`.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// The worker looks for work at least this often, notification or not.
const TICK: Duration = Duration::from_secs(1);

/// The worker thread's body.
pub(crate) fn run(shared: Arc<Shared>) {
    let runtimes = runtime("qsfs-tier-io", false).and_then(|rt| {
        let low = match shared.config.low_priority {
            true => Some(runtime("qsfs-tier-bg", true)?),
            false => None,
        };
        Ok((rt, low))
    });
    let (rt, low) = match runtimes {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "tier: cannot start the worker runtime");
            shared.live.lock().last_error = Some(format!("cannot start the worker runtime: {e}"));
            return;
        }
    };
    let mut w = Worker {
        shared: shared.clone(),
        rt,
        low,
        urgent: false,
        backoff: None,
        retry_at: Instant::now(),
        last_probe: None,
        last_gc: Instant::now(),
        bound: false,
        reconciled: false,
        cut: None,
        last_cut: Instant::now(),
        last_cut_bytes: 0,
        offloaded_at_cut: 0,
    };
    while !shared.stop.load(Ordering::Acquire) {
        TierMetrics::add(&shared.metrics.worker_rounds, 1);
        let did = w.tick();
        super::evict::enforce(&shared);
        shared.note_progress();
        if did || shared.stop.load(Ordering::Acquire) {
            continue;
        }
        let wait = w.idle_wait();
        let mut woken = shared.wake.0.lock();
        if !*woken {
            shared.wake.1.wait_for(&mut woken, wait);
        }
        *woken = false;
    }
    if let Some(low) = w.low.take() {
        low.shutdown_background();
    }
    w.rt.shutdown_background();
}

/// A runtime for the pipeline work; with `low`, its threads run at low priority.
fn runtime(name: &str, low: bool) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name(name)
        .on_thread_start(move || {
            if low {
                crate::cpu::become_background();
            }
        })
        .enable_all()
        .build()
}

/// Stores `reader` as `name`; with `deep` (the tier's `verify_deep`), every shard is confirmed
/// on its backend as it is written ([`Pipeline::store_verified`]), which is what the deep check
/// of an upload asks: no second pass reads the shards back.
async fn store(
    p: &crate::Pipeline,
    name: &str,
    reader: Box<dyn std::io::Read + Send>,
    deep: bool,
) -> Result<ObjectRecord> {
    if deep {
        p.store_verified(name, reader, Attrs::default(), &NoProgress)
            .await
    } else {
        p.store(name, reader, Attrs::default(), &NoProgress).await
    }
}

/// True when every sealed segment is confirmed (or offloaded) and deep-verified, every
/// namespace's newest manifest is uploaded and covers its newest sealed segment, and the
/// manifests of deleted namespaces are gone.
pub(crate) fn is_idle(shared: &Shared, engine: &Engine) -> bool {
    let Ok(names) = engine.namespace_list() else {
        return false;
    };
    let st = shared.state.lock().clone();
    for ns in names {
        let Ok(segs) = engine.segments(&ns) else {
            return false;
        };
        if segs
            .iter()
            .any(|s| is_backlog(&st, &ns, s) || is_unverified(&st, &ns, s))
        {
            return false;
        }
        match engine.manifest(&ns) {
            Ok(m) => {
                if st
                    .manifests
                    .get(&ns)
                    .is_none_or(|u| u.generation < m.generation)
                    && readiness(&st, &ns, &m, &segs) != Readiness::Never
                {
                    return false;
                }
                // The newest local manifest may itself be older than the newest seals (seals
                // by size capture one only now and then): a recovery would miss them.
                let newest = segs.iter().filter(|s| s.sealed).map(|s| s.id).max();
                if newest > st.manifests.get(&ns).and_then(|u| u.sealed_through) {
                    return false;
                }
            }
            Err(Error::NotFound(_)) => {} // deleted meanwhile
            Err(_) => return false,
        }
    }
    // A deleted namespace's manifest still in the backends would come back on recovery.
    st.seal_key_uploaded && !st.deletes.iter().any(|d| d.segment.is_none())
}

/// Whether a manifest can be uploaded.
#[derive(Debug, PartialEq, Eq)]
enum Readiness {
    /// Every segment it references is safely in the backends.
    Ready,
    /// Some are still being uploaded.
    Wait,
    /// It references a segment that is gone without ever reaching the backends (removed by
    /// compaction before its upload): only the namespace's next manifest can be uploaded. The
    /// uploaded one stays valid meanwhile (everything it references is kept).
    Never,
}

fn readiness(st: &State, ns: &str, m: &Manifest, segs: &[SegmentStats]) -> Readiness {
    let local: BTreeMap<u32, &SegmentStats> = segs.iter().map(|s| (s.id, s)).collect();
    // A segment removed since the manifest was captured still has its cold copy if it was
    // confirmed: its pending delete keeps it until a manifest without it is uploaded.
    let kept: BTreeSet<u32> = st
        .deletes
        .iter()
        .filter(|d| d.ns == ns && d.object_id.is_some())
        // A namespace deleted and created again reuses ids: the old one's objects are not this
        // one's segments.
        .filter(|d| matches!(d.gate, Gate::Manifest { .. }))
        .filter_map(|d| d.segment)
        .collect();
    let mut out = Readiness::Ready;
    for &(id, len) in &m.segments {
        if st.is_confirmed(ns, id, len) || kept.contains(&id) {
            continue;
        }
        match local.get(&id) {
            Some(s) if s.offloaded => {}
            Some(_) => out = Readiness::Wait,
            None => return Readiness::Never,
        }
    }
    out
}

fn is_backlog(st: &State, ns: &str, s: &SegmentStats) -> bool {
    s.sealed && !s.offloaded && !st.is_confirmed(ns, s.id, s.length)
}

/// Uploaded, but its shards not yet read back: not evictable.
fn is_unverified(st: &State, ns: &str, s: &SegmentStats) -> bool {
    s.sealed
        && !s.offloaded
        && st.is_confirmed(ns, s.id, s.length)
        && !st.is_verified(ns, s.id, s.length)
}

/// Parses `segments/<hex ns>/<id>.seg`.
fn parse_cold_key(key: &str) -> Option<(String, u32)> {
    let rest = key.strip_prefix("segments/")?;
    let (hex_ns, file) = rest.split_once('/')?;
    let id = file.strip_suffix(".seg")?.parse().ok()?;
    let ns = String::from_utf8(hex::decode(hex_ns).ok()?).ok()?;
    (cold_key(&ns, id) == key).then_some((ns, id))
}

/// The whole-object checksum of a stream, computed while the pipeline reads it, from the
/// pipeline's own per-stripe plaintext checksums ([`ShardHash::plain_sum`] of its format):
/// the tier checks the record read back from the metadata quorum against what it read
/// itself, not against what the pipeline says it stored.
struct Hashes {
    stripe: PlainHasher,
    format: ShardHash,
    in_stripe: usize,
    stripe_size: usize,
    sums: Vec<Sum>,
    total: u64,
}

impl Hashes {
    fn new(stripe_size: usize, format: ShardHash) -> Self {
        Hashes {
            stripe: PlainHasher::new(format),
            format,
            in_stripe: 0,
            stripe_size,
            sums: Vec::new(),
            total: 0,
        }
    }

    fn update(&mut self, mut b: &[u8]) {
        self.total += b.len() as u64;
        while !b.is_empty() {
            let n = (self.stripe_size - self.in_stripe).min(b.len());
            self.stripe.update(&b[..n]);
            self.in_stripe += n;
            b = &b[n..];
            if self.in_stripe == self.stripe_size {
                let done = std::mem::replace(&mut self.stripe, PlainHasher::new(self.format));
                self.sums.push(done.finish());
                self.in_stripe = 0;
            }
        }
    }

    /// The pipeline's whole-object checksum of the bytes seen.
    fn finish(mut self) -> Sum {
        if self.in_stripe > 0 {
            self.sums.push(self.stripe.finish());
        }
        stripe::object_sum(self.sums)
    }
}

struct HashingReader<R> {
    inner: R,
    hashes: Arc<Mutex<Hashes>>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hashes.lock().update(&buf[..n]);
        Ok(n)
    }
}

struct Worker {
    shared: Arc<Shared>,
    /// Normal priority: `block_on` of everything, and the pipeline work while writers wait
    /// for it (`urgent`).
    rt: tokio::runtime::Runtime,
    /// Low priority (`TierConfig::low_priority`): the pipeline work otherwise.
    low: Option<tokio::runtime::Runtime>,
    /// The disk is over its cap: writers are held until uploads and eviction make room, so
    /// the uploads must not yield to other processes (a writer waiting on a low-priority
    /// thread would wait for everything else on the machine).
    urgent: bool,
    backoff: Option<Duration>,
    retry_at: Instant,
    last_probe: Option<Instant>,
    last_gc: Instant,
    bound: bool,
    reconciled: bool,
    /// The cut taken and waiting for its segments to be uploaded.
    cut: Option<PendingCut>,
    last_cut: Instant,
    /// Bytes of the last cut uploaded by this process (0: none yet).
    last_cut_bytes: u64,
    /// `bytes_offloaded` when the last cut was taken.
    offloaded_at_cut: u64,
}

/// A recovery cut not yet uploaded.
struct PendingCut {
    manifests: Vec<Manifest>,
    /// Namespace deletions it does not name: released when it is uploaded.
    released: Vec<PendingDelete>,
}

impl Worker {
    /// How long to sleep after a round that found nothing to do: until a retry, a cut or a
    /// backend gc falls due, a [`TICK`] at most. Whatever else makes work (a seal, a writer
    /// held at the gate, a requested cut, shutdown) kicks the worker awake. Each round reads
    /// the length of every segment, so a short floor here was a busy loop (measured: idle,
    /// 76 segments, 18,500 `statx` a second and 12 % of a core).
    fn idle_wait(&self) -> Duration {
        let now = Instant::now();
        let c = &self.shared.config;
        // Checked: a configured interval may be too long to add to an instant ("never").
        let at = |from: Instant, every: Duration| from.checked_add(every).unwrap_or(now + TICK);
        let mut due = (now + TICK)
            .min(at(self.last_cut, self.cut_interval()))
            .min(at(self.last_gc, c.gc_every));
        if self.backoff.is_some() {
            due = due.min(self.retry_at);
        }
        due.saturating_duration_since(now)
            .max(Duration::from_millis(10))
    }

    /// True once the last cut is large enough that the next waits for new data.
    fn amortizing(&self) -> bool {
        let c = &self.shared.config;
        c.cut_amortize > 0 && self.last_cut_bytes > c.cut_small
    }

    /// When the next cut falls due by time alone. An amortized one may come earlier, when
    /// enough data is uploaded: the worker is awake then anyway.
    fn cut_interval(&self) -> Duration {
        let c = &self.shared.config;
        if self.amortizing() {
            c.cut_every_max.max(c.cut_every)
        } else {
            c.cut_every
        }
    }

    /// Whether a cut is due without being asked for.
    fn cut_due(&self) -> bool {
        let c = &self.shared.config;
        let age = self.last_cut.elapsed();
        if age < c.cut_every {
            return false;
        }
        if !self.amortizing() || age >= c.cut_every_max {
            return true;
        }
        let since = TierMetrics::get(&self.shared.metrics.bytes_offloaded)
            .saturating_sub(self.offloaded_at_cut);
        since >= self.last_cut_bytes.saturating_mul(c.cut_amortize)
    }

    /// One unit of work; true if something was done (look again at once).
    fn tick(&mut self) -> bool {
        let Some(engine) = self.shared.engine() else {
            return false;
        };
        if self.last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY) {
            self.probe();
        }
        self.update_backlog(&engine);
        if Instant::now() < self.retry_at {
            return false;
        }
        match self.step(&engine) {
            Ok(did) => {
                self.backoff = None;
                if did {
                    let mut l = self.shared.live.lock();
                    l.failures = 0;
                    l.last_error = None;
                    l.last_success = Some(Instant::now());
                }
                did
            }
            Err(e) => {
                let c = &self.shared.config;
                let next = self
                    .backoff
                    .map_or(c.retry_min, |b| (b * 2).min(c.retry_max))
                    .max(Duration::from_millis(10));
                self.backoff = Some(next);
                self.retry_at = Instant::now() + next;
                TierMetrics::add(&self.shared.metrics.upload_failures, 1);
                tracing::warn!(error = %e, retry_in = ?next, "tier: offload step failed");
                let mut l = self.shared.live.lock();
                l.failures += 1;
                l.last_error = Some(e.to_string());
                false
            }
        }
    }

    fn probe(&mut self) {
        self.last_probe = Some(Instant::now());
        let p = &self.shared.pipeline;
        let (data, meta) = self.rt.block_on(p.refresh_health(false));
        let mut out = Vec::new();
        for (n, h) in p.nodes().iter().zip(data) {
            out.push(health(n.name.clone(), &h));
        }
        for (n, h) in p.meta_nodes().iter().zip(meta) {
            out.push(health(format!("meta:{}", n.name), &h));
        }
        self.shared.live.lock().backends = out;
    }

    fn update_backlog(&self, engine: &Engine) {
        let st = self.shared.state.lock().clone();
        let (mut n, mut bytes, mut unverified) = (0u64, 0u64, 0u64);
        for ns in engine.namespace_list().unwrap_or_default() {
            for s in engine.segments(&ns).unwrap_or_default() {
                if is_backlog(&st, &ns, &s) {
                    n += 1;
                    bytes += s.length;
                } else if is_unverified(&st, &ns, &s) {
                    unverified += 1;
                }
            }
        }
        let m = &self.shared.metrics;
        TierMetrics::set(&m.unverified_segments, unverified);
        TierMetrics::set(&m.backlog_segments, n);
        TierMetrics::set(&m.backlog_bytes, bytes);
        TierMetrics::set(&m.local_bytes, engine.local_bytes());
    }

    fn step(&mut self, engine: &Engine) -> Result<bool> {
        if !self.bound {
            self.bind(engine)?;
            self.bound = true;
        }
        if !self.reconciled {
            self.reconcile(engine)?;
            self.reconciled = true;
        }
        if !self.shared.state.lock().seal_key_uploaded {
            self.upload_seal_key(engine)?;
            return Ok(true);
        }
        // Before the backlog: under sustained writes the backlog is never empty, and the
        // recovery point must still move.
        if self.cut_step(engine)? {
            return Ok(true);
        }
        // Deep verification is what eviction waits for: first when the disk is over its cap,
        // otherwise once the backlog is uploaded, so that it does not slow the uploads (and
        // the writers) while data is coming in.
        let over_cap = self
            .shared
            .config
            .local_cap
            .is_some_and(|cap| engine.local_bytes() > cap);
        self.urgent = over_cap;
        if over_cap && self.verify_step(engine, true)? {
            return Ok(true);
        }
        if let Some((ns, seg)) = self.next_backlog(engine)? {
            self.upload_segment(engine, &ns, &seg)?;
            return Ok(true);
        }
        if self.run_deletes(engine)? {
            return Ok(true);
        }
        if self.verify_step(engine, false)? {
            return Ok(true);
        }
        if self.last_gc.elapsed() >= self.shared.config.gc_every {
            self.last_gc = Instant::now();
            match self.rt.block_on(self.shared.pipeline.gc()) {
                Ok(r) => tracing::info!(
                    shards = r.shards_deleted,
                    records = r.records_deleted,
                    "tier: backend gc"
                ),
                Err(e) => tracing::warn!(error = %e, "tier: backend gc skipped"),
            }
        }
        Ok(false)
    }

    /// Refuses to work for an engine that the backends' manifests do not describe: an empty
    /// engine started over backends that hold a filesystem would otherwise overwrite its
    /// manifests and, through the deletion rule, delete its segments. Checked once per state.
    fn bind(&self, engine: &Engine) -> Result<()> {
        let p = &self.shared.pipeline;
        let refuse = |what: String| {
            Error::InvalidArgument(format!(
                "{what}: this engine is not the one backed up there; run `qsfs recover` to \
                 restore it, or use other backends; nothing is uploaded or deleted until then"
            ))
        };
        // The seal key is random per engine directory and restored by recovery: the identity.
        match self.rt.block_on(p.get(SEAL_KEY)) {
            Ok(stored) => {
                let mine = engine.export_seal_key()?;
                if stripe::sha256(&stored) != stripe::sha256(&mine) {
                    return Err(refuse("the backends hold another engine's seal key".into()));
                }
            }
            Err(Error::NotFound(_)) => {
                // No key (never uploaded): the manifests, if any, must describe this engine.
                let cut = match self.rt.block_on(p.get(CUT_KEY)) {
                    Ok(bytes) => super::cut::decode(&bytes)?,
                    Err(Error::NotFound(_)) => Vec::new(),
                    Err(e) => return Err(e),
                };
                for m in cut {
                    if m.segments.is_empty() {
                        continue;
                    }
                    let local: BTreeSet<(u32, u64)> = match engine.segments(&m.namespace) {
                        Ok(s) => s.iter().map(|s| (s.id, s.length)).collect(),
                        Err(Error::NotFound(_)) => BTreeSet::new(),
                        Err(e) => return Err(e),
                    };
                    if !m.segments.iter().any(|s| local.contains(s)) {
                        return Err(refuse(format!(
                            "the backends hold namespace {:?} with {} segments this engine lacks",
                            m.namespace,
                            m.segments.len()
                        )));
                    }
                }
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Finds what the state should know after a crash: confirmed segments the engine no longer
    /// has, and cold objects of live namespaces that the engine no longer has (their removal
    /// notification was lost). Both become deletes under the manifest rule.
    fn reconcile(&self, engine: &Engine) -> Result<()> {
        let cold = self.rt.block_on(self.shared.pipeline.list("segments/"))?;
        let mut by_ns: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for key in &cold {
            if let Some((ns, id)) = parse_cold_key(key) {
                by_ns.entry(ns).or_default().push(id);
            }
        }
        let mut found = Vec::new();
        for ns in engine.namespace_list()? {
            let segs = engine.segments(&ns)?;
            let ids: BTreeMap<u32, u64> = segs.iter().map(|s| (s.id, s.length)).collect();
            let after = ids.keys().max().copied().unwrap_or(0);
            let st = self.shared.state.lock().clone();
            let pending: BTreeSet<u32> = st
                .deletes
                .iter()
                .filter(|d| d.ns == ns)
                .filter_map(|d| d.segment)
                .collect();
            for ((n, id), c) in st.confirmed.range((ns.clone(), 0)..=(ns.clone(), u32::MAX)) {
                debug_assert_eq!(n, &ns);
                if !ids.contains_key(id) {
                    found.push((ns.clone(), *id, after, Some(c.object_id)));
                }
            }
            for id in by_ns.get(&ns).into_iter().flatten() {
                if ids.contains_key(id)
                    || pending.contains(id)
                    || st.confirmed.contains_key(&(ns.clone(), *id))
                {
                    continue;
                }
                let rec = match self
                    .rt
                    .block_on(self.shared.pipeline.record(&cold_key(&ns, *id)))
                {
                    Ok(r) => r,
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                found.push((ns.clone(), *id, after, Some(rec.object_id)));
            }
        }
        if !found.is_empty() {
            tracing::info!(
                objects = found.len(),
                "tier: cold segments the engine no longer has, queued for deletion"
            );
        }
        self.shared.update(|st| {
            for (ns, id, after, object_id) in found {
                st.confirmed.remove(&(ns.clone(), id));
                st.deletes.push(PendingDelete {
                    ns,
                    segment: Some(id),
                    gate: Gate::Manifest { after },
                    object_id,
                });
            }
        })
    }

    fn upload_seal_key(&self, engine: &Engine) -> Result<()> {
        let key = engine.export_seal_key()?;
        let len = key.len() as u64;
        let mut h = self.hashes();
        h.update(&key);
        let sum = h.finish();
        let p = self.shared.pipeline.clone();
        let deep = self.shared.config.verify_deep;
        let rec = self.on_pool(async move {
            let reader = Box::new(std::io::Cursor::new(key));
            store(&p, SEAL_KEY, reader, deep).await
        })??;
        self.verify(&rec, len, sum)?;
        self.shared.update(|st| st.seal_key_uploaded = true)
    }

    /// The oldest backlog segment over all namespaces (lowest id first, so every namespace
    /// progresses).
    fn next_backlog(&self, engine: &Engine) -> Result<Option<(String, SegmentStats)>> {
        let st = self.shared.state.lock().clone();
        let mut best: Option<(String, SegmentStats)> = None;
        for ns in engine.namespace_list()? {
            let segs = match engine.segments(&ns) {
                Ok(s) => s,
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            if let Some(s) = segs.into_iter().find(|s| is_backlog(&st, &ns, s)) {
                if best.as_ref().is_none_or(|(_, b)| s.id < b.id) {
                    best = Some((ns, s));
                }
            }
        }
        Ok(best)
    }

    /// Runs `fut` as a task of a worker runtime (not on this thread: the low-priority one
    /// unless writers wait for the uploads) and waits for it.
    fn on_pool<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let pool = match (&self.low, self.urgent) {
            (Some(low), false) => low,
            _ => &self.rt,
        };
        self.rt
            .block_on(pool.spawn(fut))
            .map_err(|e| Error::Unavailable(format!("tier task: {e}")))
    }

    /// Reads the record back from the metadata quorum and checks it against what was sent;
    /// returns the record read back.
    /// A fresh whole-object checksum in the pipeline's record format.
    fn hashes(&self) -> Hashes {
        let settings = self.shared.pipeline.settings();
        Hashes::new(settings.stripe_size, settings.format)
    }

    fn verify(&self, sent: &ObjectRecord, len: u64, sum: Sum) -> Result<ObjectRecord> {
        let p = self.shared.pipeline.clone();
        let name = sent.name.clone();
        let back = self.on_pool(async move { p.record(&name).await })??;
        if back.object_id != sent.object_id {
            return Err(Error::Unavailable(format!(
                "{}: the record read back belongs to another upload",
                sent.name
            )));
        }
        if back.size != len || back.checksum != sum {
            return Err(Error::corrupt(
                sent.name.clone(),
                format!(
                    "stored copy does not match: {} bytes (sent {len}), checksum {}",
                    back.size,
                    if back.checksum == sum {
                        "equal"
                    } else {
                        "differs"
                    }
                ),
            ));
        }
        Ok(back)
    }

    /// With `verify_deep`, reads every shard of `rec` back and verifies its checksum.
    fn deep_check(&self, rec: &ObjectRecord) -> Result<()> {
        if !self.shared.config.verify_deep {
            return Ok(());
        }
        let p = self.shared.pipeline.clone();
        let r = rec.clone();
        let h = self.on_pool(async move { p.inspect(&r, true, None).await })?;
        if let Some(first) = h.problems.first() {
            return Err(Error::Unavailable(format!(
                "{}: verification found {} bad shard(s), first: {first}",
                rec.name,
                h.problems.len()
            )));
        }
        Ok(())
    }

    /// Deep-verifies one uploaded segment that is not yet ([`Self::deep_check`]): the least
    /// recently read first when eviction waits for it (`for_eviction`, the order eviction
    /// takes), else the oldest. A copy that fails loses its confirmation, so the segment is
    /// uploaded again. True if one was checked.
    fn verify_step(&self, engine: &Engine, for_eviction: bool) -> Result<bool> {
        let st = self.shared.state.lock().clone();
        let mut best: Option<(u64, u32, String)> = None;
        for ns in engine.namespace_list()? {
            let segs = match engine.segments(&ns) {
                Ok(s) => s,
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            for s in segs.iter().filter(|s| is_unverified(&st, &ns, s)) {
                let c = (if for_eviction { s.last_read } else { 0 }, s.id, ns.clone());
                if best.as_ref().is_none_or(|b| c < *b) {
                    best = Some(c);
                }
            }
        }
        let Some((_, id, ns)) = best else {
            return Ok(false);
        };
        let k = (ns.clone(), id);
        let Some(object_id) = st.confirmed.get(&k).map(|c| c.object_id) else {
            return Ok(false);
        };
        let key = cold_key(&ns, id);
        let p = self.shared.pipeline.clone();
        let name = key.clone();
        let problem = match self.on_pool(async move { p.record(&name).await })? {
            Ok(rec) if rec.object_id == object_id => self.deep_check(&rec).err(),
            Ok(_) | Err(Error::NotFound(_)) => Some(Error::Unavailable(format!(
                "{key}: the verified upload is no longer the stored one"
            ))),
            Err(e) => return Err(e),
        };
        let same = |st: &State| {
            st.confirmed
                .get(&k)
                .is_some_and(|c| c.object_id == object_id)
        };
        if let Some(e) = problem {
            self.shared.update(|st| {
                if same(st) {
                    st.confirmed.remove(&k);
                }
            })?;
            tracing::warn!(error = %e, "tier: a stored segment failed verification; uploading it again");
            return Err(e);
        }
        self.shared.update(|st| {
            if same(st) {
                if let Some(c) = st.confirmed.get_mut(&k) {
                    c.verified = true;
                }
            }
        })?;
        self.shared.note_progress();
        tracing::debug!(ns, segment = id, "tier: segment deep-verified");
        Ok(true)
    }

    fn upload_segment(&self, engine: &Engine, ns: &str, seg: &SegmentStats) -> Result<()> {
        let key = cold_key(ns, seg.id);
        let file = match std::fs::File::open(&seg.path) {
            Ok(f) => f,
            // Offloaded or removed since it was listed: the next pass sees the new state.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("open {}", seg.path.display()), e)),
        };
        // Which file this is: the path may name another namespace's segment later (deleted
        // and created again), so "still there" means the same file, not the same name.
        let identity = |m: &std::fs::Metadata| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        };
        let uploaded_file = file
            .metadata()
            .map(|m| identity(&m))
            .map_err(|e| Error::io(format!("stat {}", seg.path.display()), e))?;
        let hashes = Arc::new(Mutex::new(self.hashes()));
        let reader = HashingReader {
            inner: file.take(seg.length),
            hashes: hashes.clone(),
        };
        let started = Instant::now();
        let p = self.shared.pipeline.clone();
        let name = key.clone();
        let deep = self.shared.config.verify_deep;
        let rec = self.on_pool(async move { store(&p, &name, Box::new(reader), deep).await })??;
        let h = std::mem::replace(&mut *hashes.lock(), self.hashes());
        let total = h.total;
        let sum = h.finish();
        if total != seg.length {
            return Err(Error::corrupt(
                seg.path.display().to_string(),
                format!("read {total} bytes of a sealed segment of {}", seg.length),
            ));
        }
        self.verify(&rec, seg.length, sum)?;
        self.rt.block_on(self.shared.fetch.invalidate(&key));
        let object_id = rec.object_id;
        // Engine calls may deliver events to the observer, which takes the state lock: never
        // call the engine inside `update`.
        let now = engine.segments(ns).ok();
        let same_file = std::fs::metadata(&seg.path)
            .map(|m| identity(&m) == uploaded_file)
            .unwrap_or(false);
        let still_there = same_file && now.is_some_and(|s| s.iter().any(|s| s.id == seg.id));
        self.shared.update(|st| {
            let k = (ns.to_string(), seg.id);
            if let Some(d) = st.deletes.iter_mut().find(|d| {
                d.ns == ns
                    && d.segment == Some(seg.id)
                    && d.object_id.is_none()
                    && matches!(d.gate, Gate::Manifest { .. })
            }) {
                // Removed while it was uploading: the copy just made is what must go.
                d.object_id = Some(object_id);
            } else if still_there {
                st.confirmed.insert(
                    k,
                    Confirmed {
                        length: seg.length,
                        checksum: sum,
                        object_id,
                        // With `verify_deep` every shard was confirmed as it was written;
                        // without it nothing more is asked.
                        verified: true,
                    },
                );
            } else {
                // Removed (or its namespace deleted) before the notification reached the
                // state. Never confirmed, so no uploaded manifest can reference this copy
                // (see `readiness`): it may go without waiting for a manifest.
                st.deletes.push(PendingDelete {
                    ns: ns.to_string(),
                    segment: Some(seg.id),
                    gate: Gate::NamespaceGone,
                    object_id: Some(object_id),
                });
            }
        })?;
        let m = &self.shared.metrics;
        TierMetrics::add(&m.segments_offloaded, 1);
        TierMetrics::add(&m.bytes_offloaded, seg.length);
        tracing::debug!(ns, segment = seg.id, bytes = seg.length, took = ?started.elapsed(), "tier: segment stored and verified");
        Ok(())
    }

    /// Takes a recovery cut when one is due, and uploads the pending cut once every segment it
    /// names is safely in the backends. True if something was done.
    fn cut_step(&mut self, engine: &Engine) -> Result<bool> {
        let Some(pending) = self.cut.take() else {
            let requested = self.shared.cut_requested.swap(false, Ordering::AcqRel);
            if !requested && !self.cut_due() {
                return Ok(false);
            }
            self.last_cut = Instant::now();
            self.offloaded_at_cut = TierMetrics::get(&self.shared.metrics.bytes_offloaded);
            // Namespace deletions known before the cut is taken are not in it: its upload
            // releases them. Taken first, so a deletion racing the cut waits for the next one.
            let released: Vec<PendingDelete> = self
                .shared
                .state
                .lock()
                .deletes
                .iter()
                .filter(|d| d.segment.is_none() && d.gate == Gate::NamespaceGone)
                .cloned()
                .collect();
            let manifests = engine.seal_all()?;
            let st = self.shared.state.lock().clone();
            let unchanged = released.is_empty()
                && manifests.len() == st.manifests.len()
                && manifests.iter().all(|m| {
                    st.manifests
                        .get(&m.namespace)
                        .is_some_and(|u| u.generation == m.generation)
                });
            if !unchanged {
                self.cut = Some(PendingCut {
                    manifests,
                    released,
                });
            }
            return Ok(!unchanged);
        };
        let st = self.shared.state.lock().clone();
        // A namespace deleted after the cut was taken (and perhaps created again, reusing
        // segment ids): the cut's manifest of it must not be matched against the new one's
        // segments. Take a new cut. A deletion an uploaded cut already released happened before
        // this cut was taken, so the name in it is the new namespace: counting it would drop
        // and retake cuts forever, and starve the backlog behind them.
        let deleted_since = st.deletes.iter().any(|d| {
            d.segment.is_none()
                && d.gate == Gate::NamespaceGone
                && !pending.released.contains(d)
                && pending.manifests.iter().any(|m| m.namespace == d.ns)
        });
        if deleted_since {
            self.shared.cut_requested.store(true, Ordering::Release);
            return Ok(true);
        }
        let mut ready = true;
        for m in &pending.manifests {
            let segs = match engine.segments(&m.namespace) {
                Ok(s) => s,
                // Deleted since the cut: its segments may be gone; take a new cut.
                Err(Error::NotFound(_)) => {
                    self.shared.cut_requested.store(true, Ordering::Release);
                    return Ok(true);
                }
                Err(e) => return Err(e),
            };
            match readiness(&st, &m.namespace, m, &segs) {
                Readiness::Ready => {}
                Readiness::Wait => ready = false,
                // A segment it names was compacted away before reaching the backends: this
                // cut can never be uploaded; the next one will not name that segment.
                Readiness::Never => {
                    self.shared.cut_requested.store(true, Ordering::Release);
                    return Ok(true);
                }
            }
        }
        if !ready {
            self.cut = Some(pending);
            return Ok(false);
        }
        let bytes = super::cut::encode(&pending.manifests)?;
        let mut h = self.hashes();
        h.update(&bytes);
        let sum = h.finish();
        let len = bytes.len() as u64;
        let p = self.shared.pipeline.clone();
        let deep = self.shared.config.verify_deep;
        let stored = self
            .on_pool(async move {
                let reader = Box::new(std::io::Cursor::new(bytes));
                store(&p, CUT_KEY, reader, deep).await
            })
            .and_then(|r| r);
        let checked = stored.and_then(|rec| self.verify(&rec, len, sum).map(|_| rec));
        let rec = match checked {
            Ok(rec) => rec,
            Err(e) => {
                self.cut = Some(pending);
                return Err(e);
            }
        };
        let object_id = rec.object_id;
        self.shared.update(|st| {
            st.manifests = pending
                .manifests
                .iter()
                .map(|m| {
                    let u = UploadedManifest {
                        generation: m.generation,
                        sealed_through: m.sealed_through,
                        segments: m.segments.iter().map(|s| s.0).collect(),
                        object_id,
                    };
                    (m.namespace.clone(), u)
                })
                .collect();
            for d in st.deletes.iter_mut() {
                if pending.released.contains(d) {
                    d.gate = Gate::CutWithout;
                }
            }
        })?;
        self.last_cut_bytes = len;
        TierMetrics::add(&self.shared.metrics.cuts_uploaded, 1);
        TierMetrics::set(&self.shared.metrics.cut_bytes, len);
        tracing::debug!(
            namespaces = pending.manifests.len(),
            bytes = len,
            "tier: recovery cut uploaded"
        );
        Ok(true)
    }

    /// Whether a pending delete may run now.
    fn eligible(st: &State, d: &PendingDelete) -> bool {
        match (d.gate, d.segment) {
            (Gate::Manifest { after }, Some(s)) => st.manifests.get(&d.ns).is_some_and(|u| {
                u.sealed_through.is_some_and(|t| t >= after) && !u.segments.contains(&s)
            }),
            (Gate::Manifest { .. }, None) => false,
            (Gate::NamespaceGone, None) => false,
            (Gate::CutWithout, None) => true,
            (Gate::NamespaceGone | Gate::CutWithout, Some(_)) => !st
                .deletes
                .iter()
                .any(|o| o.ns == d.ns && o.segment.is_none()),
        }
    }

    /// Runs the deletes that are safe now; true if any ran.
    fn run_deletes(&self, engine: &Engine) -> Result<bool> {
        let st = self.shared.state.lock().clone();
        let ready: Vec<PendingDelete> = st
            .deletes
            .iter()
            .filter(|d| Self::eligible(&st, d))
            .cloned()
            .collect();
        if ready.is_empty() {
            return Ok(false);
        }
        let p = &self.shared.pipeline;
        for d in ready {
            let live = engine.segments(&d.ns).ok();
            let key = match d.segment {
                Some(s) => {
                    // A namespace deleted and created again reuses ids: an object of unknown
                    // origin under the name of a segment the engine has now may be the new
                    // one's copy. One known by its object id is the old upload (a new upload
                    // gets a new id), so it goes, and the name is free for the new one's.
                    if d.object_id.is_none()
                        && live.as_ref().is_some_and(|l| l.iter().any(|x| x.id == s))
                    {
                        self.forget(&d)?;
                        continue;
                    }
                    if d.gate == Gate::NamespaceGone && live.is_some() && d.object_id.is_none() {
                        // Created again: an object of unknown origin may be the new one's.
                        self.forget(&d)?;
                        continue;
                    }
                    cold_key(&d.ns, s)
                }
                None => {
                    if live.is_some() && d.object_id.is_none() {
                        self.forget(&d)?;
                        continue;
                    }
                    manifest_key(&d.ns)
                }
            };
            match self.rt.block_on(p.record(&key)) {
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
                Ok(rec) => {
                    if d.object_id.is_none_or(|id| id == rec.object_id) {
                        match self.rt.block_on(p.delete_object(&key)) {
                            Ok(()) | Err(Error::NotFound(_)) => {}
                            Err(e) => return Err(e),
                        }
                        self.rt.block_on(self.shared.fetch.invalidate(&key));
                        TierMetrics::add(&self.shared.metrics.cold_deleted, 1);
                        tracing::debug!(key, "tier: cold object deleted");
                    }
                }
            }
            if d.segment.is_none() {
                self.queue_namespace_leftovers(&d.ns, live.as_deref())?;
            }
            self.forget(&d)?;
        }
        Ok(true)
    }

    /// Once a deleted namespace is out of the uploaded cut: every cold segment still under its
    /// prefix that nothing accounts for (uploads whose confirmation was lost) is queued too.
    ///
    /// `live` is the namespace's segments if it was created again. Then the objects under the
    /// prefix that the new incarnation may need stay: those of segments the engine has (local
    /// or offloaded), confirmed ones, those the uploaded cut names and those a pending delete
    /// already governs. The rest belong to the old incarnation: the uploaded cut was taken
    /// after the deletion, so it names only the new one's segments, each of them in one of
    /// those sets (a removed segment keeps its pending delete until a cut without it is
    /// uploaded), and uploads run on this thread, so none is half done now. They are deleted
    /// by object id, so a later upload under the same name is never touched.
    fn queue_namespace_leftovers(&self, ns: &str, live: Option<&[SegmentStats]>) -> Result<()> {
        let prefix = format!("segments/{}/", hex::encode(ns.as_bytes()));
        let p = self.shared.pipeline.clone();
        let keys = self.on_pool(async move { p.list(&prefix).await })??;
        let st = self.shared.state.lock().clone();
        let known = |id: u32| {
            st.deletes
                .iter()
                .any(|d| d.ns == ns && d.segment == Some(id))
        };
        let mut found = Vec::new();
        for (n, id) in keys.iter().filter_map(|k| parse_cold_key(k)) {
            if n != ns || known(id) {
                continue;
            }
            let Some(live) = live else {
                found.push((id, None));
                continue;
            };
            let needed = live.iter().any(|s| s.id == id)
                || st.confirmed.contains_key(&(ns.to_string(), id))
                || st
                    .manifests
                    .get(ns)
                    .is_some_and(|m| m.segments.contains(&id));
            if needed {
                continue;
            }
            let p = self.shared.pipeline.clone();
            let key = cold_key(ns, id);
            match self.on_pool(async move { p.record(&key).await })? {
                Ok(rec) => found.push((id, Some(rec.object_id))),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if live.is_some() && !found.is_empty() {
            tracing::info!(
                ns,
                objects = found.len(),
                "tier: cold segments of a deleted namespace's old incarnation, queued for deletion"
            );
        }
        self.shared.update(|st| {
            for (id, object_id) in found {
                if st
                    .deletes
                    .iter()
                    .any(|d| d.ns == ns && d.segment == Some(id))
                {
                    continue;
                }
                st.deletes.push(PendingDelete {
                    ns: ns.to_string(),
                    segment: Some(id),
                    gate: Gate::NamespaceGone,
                    object_id,
                });
            }
        })
    }

    fn forget(&self, d: &PendingDelete) -> Result<()> {
        self.shared.update(|st| st.deletes.retain(|x| x != d))
    }
}

fn health(name: String, h: &qsfs_core::Health) -> BackendHealth {
    BackendHealth {
        name,
        up: h.status != HealthStatus::Down,
        detail: match h.status {
            HealthStatus::Up => format!("up ({} ms)", h.latency.as_millis()),
            HealthStatus::Degraded => format!("degraded: {}", h.detail),
            HealthStatus::Down => format!("down: {}", h.detail),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_keys_parse_back() {
        for (ns, id) in [("default", 0), ("a b/c", 42), ("", u32::MAX)] {
            assert_eq!(
                parse_cold_key(&cold_key(ns, id)),
                Some((ns.to_string(), id))
            );
        }
        assert_eq!(parse_cold_key("segments/zz/0000000001.seg"), None);
        assert_eq!(parse_cold_key("manifests/00"), None);
    }

    #[test]
    fn hashes_match_the_pipeline_checksum_in_every_format() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        for format in [ShardHash::Sha256, ShardHash::Blake3, ShardHash::Blake3Plain] {
            let mut h = Hashes::new(4096, format);
            for chunk in data.chunks(333) {
                h.update(chunk);
            }
            let want = stripe::object_sum(data.chunks(4096).map(|c| format.plain_sum(c)));
            assert_eq!(h.finish(), want, "{format:?}");
        }
    }
}
