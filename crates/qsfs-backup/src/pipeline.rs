//! The pipeline: objects in, shards out, over N backends.
//!
//! [`Pipeline`] stores a byte stream as stripes (see [`crate::stripe`]), places each stripe's
//! k+m shards on distinct healthy backends ([`crate::placement`]), writes them in parallel, and
//! writes an encrypted record ([`crate::metadata`]). Reading fetches k shards per stripe (data
//! shards first, skipping backends known to be down, falling back to parity as fetches fail),
//! verifies every shard's SHA-256, decodes, decrypts and checks each stripe and then the whole
//! object. It is itself a [`Backend`], so it composes with anything that takes one.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use qsfs_core::{check_object_key, Backend, Error, Health, HealthStatus, Result};

use crate::crypto::{KdfParams, KeySource, Keys, RepoHeader, SecretKey};
use crate::error::BackupError;
use crate::metadata::{parse_shard_key, MetaStore, ObjectRecord, ShardLoc, StripeRecord};
use crate::node::{Node, Timeouts};
use crate::placement::{self, Policy};
use crate::progress::{NoProgress, Progress};
use crate::stripe::{self, ShardHash, StripeId, StripeMeta};

/// Blocking threads a runtime driving a pipeline needs: backend I/O for the stripes in flight
/// (the CPU work runs on rayon's pool, one thread per core, see [`on_cpu`]; an object's reader
/// or writer on a thread of its own, see [`on_own_thread`]). Allocator arenas grow with the thread count and keep freed stripe buffers, so a
/// runtime with tokio's default (512) shows a much higher peak RSS for the same work.
pub const BLOCKING_THREADS: usize = 8;

/// Runs CPU-bound stripe work (hashing, cipher, Reed-Solomon, zstd) on rayon's global pool, or
/// on a low-priority pool when the calling thread is the storage tier's background work.
///
/// Kept off tokio's blocking pool so that encoding never waits behind backend calls that block
/// a thread for a network round trip or an fsync (and the other way round), and so that the big
/// transient buffers of encoding are allocated by as many threads as there are cores, not by
/// every I/O thread. A panic in `f` becomes an error, not an abort.
pub async fn on_cpu<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    crate::cpu::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(Error::Unavailable("stripe worker panicked".into())),
        Err(_) => Err(Error::Unavailable("stripe worker vanished".into())),
    }
}

/// Moves each fetched shard that matches its recorded checksum into `good`; returns the indices
/// of those that do not.
fn keep_matching(
    good: &mut [Option<Bytes>],
    fetched: Vec<(usize, Bytes)>,
    meta: &stripe::StripeMeta,
    hash: ShardHash,
) -> Vec<usize> {
    let mut bad = Vec::new();
    for (j, b) in fetched {
        if hash.sum(&b) == meta.shard_sums[j] {
            good[j] = Some(b);
        } else {
            bad.push(j);
        }
    }
    bad
}

/// Runs `f` on a thread of its own: an object's reader or writer, which lives as long as the
/// object's transfer and waits on the stripes in flight.
///
/// Not on tokio's blocking pool: the backend calls of those stripes may need that pool (a
/// 0-db node or a local directory is driven by blocking calls), so several transfers each
/// holding a pool thread for a whole object could leave none for them and stall until their
/// timeouts. A panic in `f` becomes an error, not an abort.
pub fn on_own_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<impl std::future::Future<Output = Result<T>>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .map_err(|e| Error::io(format!("starting the {name} thread"), e))?;
    let name = name.to_string();
    Ok(async move {
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(Error::Unavailable(format!("{name} thread panicked"))),
            Err(_) => Err(Error::Unavailable(format!("{name} thread vanished"))),
        }
    })
}

/// Tunables of a pipeline.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redundancy policy.
    pub policy: Policy,
    /// Plaintext bytes per stripe.
    pub stripe_size: usize,
    /// zstd level (0 disables compression).
    pub compression_level: i32,
    /// Stripes in flight at once (being encoded and written, or read and decoded); bounds
    /// memory to about 4 × this × the stripe size. The CPU work itself uses one thread per core;
    /// the extra stripes keep the cores busy while others wait on backends.
    pub parallel_stripes: usize,
    /// Timeouts and health cache.
    pub timeouts: Timeouts,
    /// Key prefix on every backend (lets several repositories share backends).
    pub prefix: String,
    /// Metadata write quorum (default: a majority of the metadata backends).
    pub meta_write_quorum: Option<usize>,
    /// Argon2id costs for a new repository.
    pub kdf: KdfParams,
    /// Create the repository if no metadata backend has one.
    pub create: bool,
    /// Confirm every shard on its backend as it is written ([`Pipeline::store`] then works
    /// as [`Pipeline::store_verified`]). Off by default: a 0-db node confirms with a round trip
    /// of a few bytes, other backends read every shard back.
    pub verify_writes: bool,
    /// Record format (checksums) of newly stored objects; every format is read. Format 3
    /// (BLAKE3 throughout) by default: it is the fastest format a storage tier accepts (the
    /// tier recomputes each upload's whole-object checksum from the bytes it read, which
    /// format 4's AEAD-tag checksums do not allow). `qsfs backup` stores format 4.
    pub format: ShardHash,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: Policy {
                k: 2,
                m: 2,
                redundant_groups: 0,
                redundant_nodes: 0,
                max_shards_per_backend: 1,
            },
            // Small enough that the stripes in flight, their shards and the backends' copies of
            // them stay far under the memory bound; large enough that per-stripe costs (one
            // request per shard, ~200 bytes of record) stay negligible.
            stripe_size: 1 << 20,
            compression_level: 1,
            parallel_stripes: std::thread::available_parallelism()
                .map(|n| 2 * n.get() + 2)
                .unwrap_or(6)
                .clamp(4, 16),
            timeouts: Timeouts::default(),
            prefix: "qsfs".into(),
            format: ShardHash::Blake3Plain,
            meta_write_quorum: None,
            kdf: KdfParams::default(),
            create: true,
            verify_writes: false,
        }
    }
}

/// Attributes recorded with a stored file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Modification time (seconds, nanoseconds).
    pub mtime: Option<(i64, u32)>,
    /// Permission bits.
    pub mode: Option<u32>,
}

/// What is wrong with one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    /// The backend does not answer (down, timeout).
    Unreachable,
    /// The backend answered that the shard is not there.
    Missing,
    /// The shard is there but fails its checksum.
    Corrupt,
}

/// One shard that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShardProblem {
    /// Stripe index.
    pub stripe: u64,
    /// Shard index.
    pub shard: usize,
    /// Backend expected to hold it.
    pub backend: String,
    /// What is wrong.
    pub kind: ProblemKind,
    /// Details.
    pub detail: String,
}

impl std::fmt::Display for ShardProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stripe {} shard {} on {}: {:?} ({})",
            self.stripe, self.shard, self.backend, self.kind, self.detail
        )
    }
}

/// Result of checking one object.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ObjectHealth {
    /// The object.
    pub name: String,
    /// Stripes.
    pub stripes: usize,
    /// Every unusable shard found.
    pub problems: Vec<ShardProblem>,
    /// Fewest usable shards of any stripe minus k (negative: data lost for now).
    pub margin: i64,
}

impl ObjectHealth {
    /// True if every shard is present and (for a deep check) intact.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What a repair did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairReport {
    /// The object.
    pub name: String,
    /// Shards written (re-created).
    pub rewritten: usize,
    /// Shards that moved to another backend.
    pub moved: usize,
    /// Bytes of the shards written.
    pub bytes_rewritten: u64,
    /// Problems found before repair.
    pub problems: Vec<ShardProblem>,
    /// Metadata replicas re-written.
    pub metadata_replicas: usize,
    /// Missing or corrupt shards that no healthy backend could take under the placement policy
    /// (or every write failed): they stay lost, so the object remains degraded.
    pub unplaced: Vec<ShardProblem>,
    /// Shards on unreachable backends that could not be moved: left where they are (they may
    /// still be intact) and not verified by this repair.
    pub not_verified: Vec<ShardProblem>,
    /// Backends that did not answer during the repair, sorted.
    pub unreachable_backends: Vec<String>,
}

impl RepairReport {
    /// True when every problem found was repaired (nothing left unplaced or unverified).
    pub fn is_complete(&self) -> bool {
        self.unplaced.is_empty() && self.not_verified.is_empty()
    }

    /// The error that describes what a partial repair left degraded (`None` when complete).
    pub fn remaining(&self) -> Option<BackupError> {
        if self.is_complete() {
            return None;
        }
        Some(BackupError::PartialRepair {
            object: self.name.clone(),
            rewritten: self.rewritten,
            unplaced: self.unplaced.len(),
            not_verified: self.not_verified.len(),
            unreachable: if self.unreachable_backends.is_empty() {
                "none".into()
            } else {
                self.unreachable_backends.join(", ")
            },
        })
    }
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Shards deleted (superseded or orphaned).
    pub shards_deleted: usize,
    /// Old metadata record versions deleted.
    pub records_deleted: usize,
    /// Backends that could not be listed (their orphans remain).
    pub skipped_backends: Vec<String>,
}

/// Limits the byte rate of background work (scrub).
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    start: std::time::Instant,
    done: Mutex<u64>,
}

impl RateLimiter {
    /// At most `bytes_per_sec` on average.
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bytes_per_sec: bytes_per_sec.max(1),
            start: std::time::Instant::now(),
            done: Mutex::new(0),
        }
    }

    /// Accounts `bytes` and sleeps as long as needed to stay under the rate.
    pub async fn take(&self, bytes: u64) {
        let total = {
            let mut d = self.done.lock();
            *d += bytes;
            *d
        };
        let due = Duration::from_secs_f64(total as f64 / self.bytes_per_sec as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// The erasure-coded, encrypted store over N backends.
#[derive(Debug, Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    nodes: Vec<Arc<Node>>,
    groups: Vec<Vec<usize>>,
    by_name: HashMap<String, usize>,
    /// Names records use that no backend has, with the one backend that answers to each (see
    /// [`Backend::answers_to`]), or none.
    aliases: Mutex<HashMap<String, Option<usize>>>,
    meta: MetaStore,
    keys: Keys,
}

impl Inner {
    /// The backend a record means by `name`: the one so named, else the only one that answers
    /// to it (a `local:` directory named by another path to it, as a relative path read from
    /// another directory was named before names were the config's own words).
    fn node_index(&self, name: &str) -> Option<usize> {
        if let Some(&i) = self.by_name.get(name) {
            return Some(i);
        }
        let mut aliases = self.aliases.lock();
        *aliases.entry(name.to_string()).or_insert_with(|| {
            let mut hits =
                (0..self.nodes.len()).filter(|&i| self.nodes[i].backend().answers_to(name));
            match (hits.next(), hits.next()) {
                (Some(i), None) => Some(i),
                _ => None,
            }
        })
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Pipeline {
    /// Opens (or, with `settings.create`, creates) the repository whose metadata lives on `meta`
    /// and whose shards go to `data_groups`, unlocking it with `key`.
    pub async fn open(
        settings: Settings,
        data_groups: Vec<Vec<Arc<dyn Backend>>>,
        meta: Vec<Arc<dyn Backend>>,
        key: &KeySource,
    ) -> Result<Self> {
        settings.policy.validate()?;
        if settings.stripe_size < 1024 || settings.stripe_size > (256 << 20) {
            return Err(BackupError::Config(format!(
                "stripe size {} must be within 1 KiB..=256 MiB",
                settings.stripe_size
            ))
            .into());
        }
        check_object_key(&settings.prefix).map_err(|_| {
            BackupError::Config(format!(
                "prefix {:?} must be a valid object key",
                settings.prefix
            ))
        })?;
        let mut nodes = Vec::new();
        let mut groups = Vec::new();
        let mut by_name = HashMap::new();
        for (g, members) in data_groups.into_iter().enumerate() {
            let mut ids = Vec::new();
            for b in members {
                let node = Arc::new(Node::new(b, g, settings.timeouts));
                if by_name.insert(node.name.clone(), nodes.len()).is_some() {
                    return Err(BackupError::Config(format!(
                        "backend {} is listed twice",
                        node.name
                    ))
                    .into());
                }
                ids.push(nodes.len());
                nodes.push(node);
            }
            groups.push(ids);
        }
        // The policy must be satisfiable with every backend up, or the config is wrong.
        placement::place(&settings.policy, &groups, 0)?;
        let meta_nodes: Vec<Arc<Node>> = meta
            .into_iter()
            .map(|b| Arc::new(Node::new(b, 0, settings.timeouts)))
            .collect();
        let mut meta = MetaStore::new(meta_nodes, &settings.prefix, settings.meta_write_quorum)?;
        let headers = meta.read_header().await?;
        let (format, keys) = if headers.is_empty() {
            if !settings.create {
                return Err(Error::NotFound(
                    "no backup repository on the metadata backends".into(),
                ));
            }
            let records = meta.any_record().await?;
            if let Some(k) = records {
                return Err(Error::corrupt(
                    "repository header",
                    format!(
                        "missing on every metadata backend, which still hold records ({k}): \
                         refusing to start a new repository over them; put back the header \
                         ({}/repo) from a copy",
                        settings.prefix
                    ),
                ));
            }
            let (header, keys) = RepoHeader::create(key, settings.kdf)?;
            meta.write_header(header.to_json()).await?;
            tracing::info!("created a new backup repository");
            (header.format, keys)
        } else {
            let (header, keys) = unlock_any(&headers, key)?;
            (header.format, keys)
        };
        meta.use_latest_keys(format >= 2);
        Ok(Pipeline {
            inner: Arc::new(Inner {
                settings,
                nodes,
                groups,
                by_name,
                aliases: Mutex::new(HashMap::new()),
                meta,
                keys,
            }),
        })
    }

    /// Re-wraps the repository key under a new secret. Data and records are untouched. Every
    /// metadata backend must be reachable, so no replica is left with the old wrapping alone.
    pub async fn change_key(&self, old: &KeySource, new: &KeySource) -> Result<()> {
        let (_, meta) = self.refresh_health(true).await;
        let down: Vec<String> = self
            .inner
            .meta
            .nodes()
            .iter()
            .zip(&meta)
            .filter(|(_, h)| h.status == HealthStatus::Down)
            .map(|(n, _)| n.name.clone())
            .collect();
        if !down.is_empty() {
            return Err(Error::Unavailable(format!(
                "changing the key needs every metadata backend; down: {}",
                down.join(", ")
            )));
        }
        let headers = self.inner.meta.read_header().await?;
        let (header, _) = unlock_any(&headers, old)?;
        let rewrapped = header.rewrap(old, new, self.inner.settings.kdf)?;
        self.inner.meta.write_header(rewrapped.to_json()).await
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Data backends, in config order.
    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.inner.nodes
    }

    /// Metadata backends.
    pub fn meta_nodes(&self) -> &[Arc<Node>] {
        self.inner.meta.nodes()
    }

    /// Probes every data and metadata backend in parallel (cached answers unless `force`).
    pub async fn refresh_health(&self, force: bool) -> (Vec<Health>, Vec<Health>) {
        let d = futures::future::join_all(self.inner.nodes.iter().map(|n| n.probe(force)));
        let m = futures::future::join_all(self.inner.meta.nodes().iter().map(|n| n.probe(force)));
        futures::join!(d, m)
    }

    fn place(&self, seed: u64) -> Result<Vec<usize>> {
        self.place_avoiding(seed, &[])
    }

    /// [`Pipeline::place`] without the nodes `avoid` (those a stripe's write just failed on,
    /// whether or not they count as down yet).
    fn place_avoiding(&self, seed: u64, avoid: &[usize]) -> Result<Vec<usize>> {
        let inner = &self.inner;
        let usable: Vec<Vec<usize>> = inner
            .groups
            .iter()
            .map(|g| {
                g.iter()
                    .copied()
                    .filter(|&i| inner.nodes[i].takes_writes() && !avoid.contains(&i))
                    .collect()
            })
            .collect();
        placement::place(&inner.settings.policy, &usable, seed).map_err(|e| {
            let down: Vec<String> = inner
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| match (n.takes_writes(), avoid.contains(&i)) {
                    (false, _) => Some(format!("{} ({})", n.name, n.no_writes_reason())),
                    (true, true) => Some(format!("{} (failed this write)", n.name)),
                    (true, false) => None,
                })
                .collect();
            match e {
                BackupError::Placement(why) if !down.is_empty() => BackupError::Placement(format!(
                    "{why}; unreachable backends: {}",
                    down.join(", ")
                ))
                .into(),
                e => e.into(),
            }
        })
    }

    /// The newest live record of `name`; [`Error::NotFound`] if never stored or deleted.
    pub async fn record(&self, name: &str) -> Result<ObjectRecord> {
        let rec = self.inner.meta.get(&self.inner.keys, name).await?;
        if rec.deleted {
            return Err(Error::NotFound(format!(
                "{name} was deleted (version {})",
                rec.version
            )));
        }
        Ok(rec)
    }

    /// Every live record, sorted by name, and the records that failed to open.
    pub async fn records(&self) -> Result<(Vec<ObjectRecord>, Vec<Error>)> {
        let (mut recs, problems) = self.inner.meta.all(&self.inner.keys).await?;
        recs.retain(|r| !r.deleted);
        recs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((recs, problems))
    }

    /// Every record in scrub order (by path hash), with the hash as a resume cursor.
    pub async fn records_by_hash(&self) -> Result<(Vec<(String, ObjectRecord)>, Vec<Error>)> {
        let (recs, problems) = self.inner.meta.all(&self.inner.keys).await?;
        let mut out: Vec<(String, ObjectRecord)> = recs
            .into_iter()
            .filter(|r| !r.deleted)
            .map(|r| (self.inner.keys.name_hash(&r.name), r))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((out, problems))
    }

    /// Stores everything `reader` yields as object `name`, replacing any previous version.
    pub async fn store(
        &self,
        name: &str,
        reader: Box<dyn Read + Send>,
        attrs: Attrs,
        progress: &dyn Progress,
    ) -> Result<ObjectRecord> {
        let verified = self.inner.settings.verify_writes;
        self.store_as(name, reader, attrs, progress, verified).await
    }

    /// [`Pipeline::store`], and every shard confirmed on its backend as it is written
    /// ([`Backend::verify`]: a 0-db node checks its copy against the CRC of what was sent,
    /// without sending it back; other backends read it back). A shard that does not confirm
    /// is written again elsewhere, as a failed write. The returned record describes shards
    /// that were each confirmed stored, so no deep check has to read them again.
    pub async fn store_verified(
        &self,
        name: &str,
        reader: Box<dyn Read + Send>,
        attrs: Attrs,
        progress: &dyn Progress,
    ) -> Result<ObjectRecord> {
        self.store_as(name, reader, attrs, progress, true).await
    }

    async fn store_as(
        &self,
        name: &str,
        reader: Box<dyn Read + Send>,
        attrs: Attrs,
        progress: &dyn Progress,
        verified: bool,
    ) -> Result<ObjectRecord> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("empty object name".into()));
        }
        let inner = &self.inner;
        let s = &inner.settings;
        let version = inner.meta.latest_version(&inner.keys, name).await? + 1;
        self.refresh_health(false).await;
        let mut object_id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut object_id);
        let seed = u64::from_le_bytes(object_id[..8].try_into().unwrap_or_default());
        let placement = Arc::new(Mutex::new(self.place(seed)?));
        let data_key = SecretKey::random();

        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1);
        let stripe_size = s.stripe_size;
        let headroom = stripe::encode_headroom(s.policy.k);
        let reader_task = on_own_thread("qsfs-reader", move || {
            let mut reader = reader;
            loop {
                // Read into spare capacity: no stripe-sized memset before every read.
                let mut buf = Vec::with_capacity(stripe_size + headroom);
                if let Err(e) = (&mut reader).take(stripe_size as u64).read_to_end(&mut buf) {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
                let filled = buf.len();
                if filled == 0 {
                    return;
                }
                if tx.blocking_send(Ok(buf)).is_err() || filled < stripe_size {
                    return;
                }
            }
        })?;

        let result: Result<Vec<(StripeMeta, Vec<usize>)>> = async {
            // Unordered: a slot is reused as soon as any stripe is written, not only when the
            // oldest one is (a stripe waiting on a slow node no longer holds up the others).
            // The results are put back in stripe order at the end.
            let mut inflight = FuturesUnordered::new();
            let mut out = Vec::new();
            let mut index = 0u64;
            loop {
                let next = rx.recv().await;
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(|e| Error::io(format!("reading {name}"), e))?;
                progress.advance(chunk.len() as u64);
                if inflight.len() >= s.parallel_stripes {
                    if let Some((i, r)) = inflight.next().await {
                        out.push((i, flatten(r)?));
                    }
                }
                let id = StripeId {
                    object_id,
                    index,
                    data_version: version,
                };
                let task = Aborting::spawn(self.clone().encode_and_write(
                    chunk,
                    id,
                    data_key.clone(),
                    placement.clone(),
                    (seed, verified),
                ));
                inflight.push(async move { (index, task.await) });
                index += 1;
            }
            while let Some((i, r)) = inflight.next().await {
                out.push((i, flatten(r)?));
            }
            out.sort_unstable_by_key(|(i, _)| *i);
            Ok(out.into_iter().map(|(_, r)| r).collect())
        }
        .await;
        // The reader thread ends on its own once the channel is gone (it may still be blocked in
        // a read of an interactive stdin, so it is not waited for).
        drop(rx);
        drop(reader_task);
        let stripes = match result {
            Ok(s) => s,
            Err(e) => {
                self.forget_object(&object_id).await;
                return Err(e);
            }
        };
        let mut rec = ObjectRecord {
            name: name.to_string(),
            version,
            deleted: false,
            data_version: version,
            object_id,
            size: stripes.iter().map(|(m, _)| u64::from(m.plain_len)).sum(),
            mtime: attrs.mtime,
            mode: attrs.mode,
            stored_at: now_secs(),
            k: s.policy.k as u16,
            m: s.policy.m as u16,
            stripe_size: s.stripe_size as u32,
            checksum: stripe::object_sum(stripes.iter().map(|(m, _)| m.plain_sum)),
            wrapped_key: inner.keys.wrap_data_key(&data_key, &object_id),
            backends: Vec::new(),
            stripes: Vec::new(),
            shard_hash: s.format,
        };
        for (meta, at) in stripes {
            let shards = at
                .iter()
                .map(|&n| ShardLoc {
                    backend: rec.backend_index(&inner.nodes[n].name),
                })
                .collect();
            rec.stripes.push(StripeRecord { meta, shards });
        }
        if let Err(e) = inner.meta.put(&inner.keys, &rec).await {
            self.forget_object(&object_id).await;
            return Err(e);
        }
        Ok(rec)
    }

    /// Best-effort removal of the shards of a store that failed (gc catches the rest).
    async fn forget_object(&self, object_id: &[u8; 16]) {
        let prefix = format!(
            "{}/d/{}/",
            self.inner.settings.prefix,
            hex::encode(object_id)
        );
        for n in &self.inner.nodes {
            if let Ok(keys) = n.list(&prefix).await {
                for k in keys {
                    let _ = n.delete(&k).await;
                }
            }
        }
    }

    async fn encode_and_write(
        self,
        chunk: Vec<u8>,
        id: StripeId,
        key: SecretKey,
        placement: Arc<Mutex<Vec<usize>>>,
        (seed, verified): (u64, bool),
    ) -> Result<(StripeMeta, Vec<usize>)> {
        let s = &self.inner.settings;
        let (k, m, level, format) = (s.policy.k, s.policy.m, s.compression_level, s.format);
        let (meta, shards) =
            on_cpu(move || stripe::encode(chunk, &id, &key, (k, m), level, format)).await??;
        let at = self
            .write_shards(&id, &shards, placement, (seed, verified))
            .await?;
        Ok((meta, at))
    }

    /// Writes a stripe's shards; when backends fail, places the stripe again without them.
    async fn write_shards(
        &self,
        id: &StripeId,
        shards: &[Bytes],
        placement: Arc<Mutex<Vec<usize>>>,
        (seed, verified): (u64, bool),
    ) -> Result<Vec<usize>> {
        let inner = &self.inner;
        let mut last_err = String::new();
        let mut failed_on = Vec::new();
        for attempt in 0..3 {
            let at = placement.lock().clone();
            let res = futures::future::join_all(at.iter().zip(shards).enumerate().map(
                |(j, (&n, data))| {
                    let key =
                        ObjectRecord::shard_key(&inner.settings.prefix, &id.object_id, id.index, j);
                    let node = inner.nodes[n].clone();
                    let data = data.clone();
                    async move {
                        // The key holds a fresh random object id, so on the first attempt it is
                        // new everywhere. A failed attempt may have left the shard on a node
                        // after all, so later attempts replace it the careful way.
                        match (verified, attempt == 0) {
                            (true, new) => node.put_verified(&key, data, new).await,
                            (false, true) => node.put_new(&key, data).await,
                            (false, false) => node.put(&key, data).await,
                        }
                    }
                },
            ))
            .await;
            let mut failed = false;
            for (&n, r) in at.iter().zip(res) {
                if let Err(e) = r {
                    failed = true;
                    failed_on.push(n);
                    // A node that stopped answering is already down; one that answered with a
                    // refusal still serves what it holds, so only writes avoid it.
                    if !inner.nodes[n].is_down() {
                        inner.nodes[n].mark_no_writes(format!("write failed: {e}"));
                    }
                    last_err = format!("{}: {e}", inner.nodes[n].name);
                }
            }
            if !failed {
                return Ok(at);
            }
            let new = self.place_avoiding(seed, &failed_on)?;
            *placement.lock() = new;
        }
        Err(Error::Unavailable(format!(
            "stripe {} could not be written: {last_err}",
            id.index
        )))
    }

    fn node_for(
        &self,
        rec: &ObjectRecord,
        loc: &ShardLoc,
    ) -> std::result::Result<Arc<Node>, String> {
        let name = rec
            .backends
            .get(loc.backend as usize)
            .ok_or("bad backend index in record")?;
        self.inner
            .node_index(name)
            .map(|i| self.inner.nodes[i].clone())
            .ok_or_else(|| name.clone())
    }

    fn backend_name(rec: &ObjectRecord, loc: &ShardLoc) -> String {
        rec.backends
            .get(loc.backend as usize)
            .cloned()
            .unwrap_or_else(|| "?".into())
    }

    /// Reads one shard and verifies it. `Err` carries the problem.
    async fn read_shard(
        &self,
        rec: &ObjectRecord,
        i: u64,
        j: usize,
    ) -> std::result::Result<Bytes, ShardProblem> {
        let b = self.fetch_shard(rec, i, j).await?;
        let (want, hash) = (rec.stripes[i as usize].meta.shard_sums[j], rec.shard_hash);
        let (b, ok) = on_cpu(move || {
            let ok = hash.sum(&b) == want;
            (b, ok)
        })
        .await
        .map_err(|e| Self::shard_problem(rec, i, j, ProblemKind::Unreachable, e.to_string()))?;
        if !ok {
            return Err(Self::checksum_mismatch(rec, i, j));
        }
        Ok(b)
    }

    fn shard_problem(
        rec: &ObjectRecord,
        i: u64,
        j: usize,
        kind: ProblemKind,
        detail: String,
    ) -> ShardProblem {
        ShardProblem {
            stripe: i,
            shard: j,
            backend: Self::backend_name(rec, &rec.stripes[i as usize].shards[j]),
            kind,
            detail,
        }
    }

    fn checksum_mismatch(rec: &ObjectRecord, i: u64, j: usize) -> ShardProblem {
        Self::shard_problem(rec, i, j, ProblemKind::Corrupt, "checksum mismatch".into())
    }

    /// Stripe `i` of `rec` opened from any k of `good` (shards that matched their checksums)
    /// and of `fetched` (not checked yet: those that fail their checksum are returned apart),
    /// see [`stripe::decode_any`]. What a read falls back to, and what a repair re-creates
    /// shards from, so that it never writes shards of a stripe that does not open.
    async fn open_stripe(
        &self,
        rec: &ObjectRecord,
        key: &SecretKey,
        i: u64,
        mut good: Vec<Option<Bytes>>,
        fetched: Vec<(usize, Bytes)>,
    ) -> Result<(Result<stripe::Opened>, Vec<usize>)> {
        let meta = rec.stripes[i as usize].meta.clone();
        let id = rec.stripe_id(i);
        let (key, hash) = (key.clone(), rec.shard_hash);
        let km = (rec.k as usize, rec.m as usize);
        let loc = format!("object {} stripe {i}", rec.name);
        on_cpu(move || {
            let bad = keep_matching(&mut good, fetched, &meta, hash);
            (
                stripe::decode_any(&good, &meta, &id, &key, km, hash, &loc),
                bad,
            )
        })
        .await
    }

    fn spoiling(rec: &ObjectRecord, i: u64, j: usize) -> ShardProblem {
        let detail = "matches its checksum but spoils the stripe".to_string();
        Self::shard_problem(rec, i, j, ProblemKind::Corrupt, detail)
    }

    /// Reads one shard and checks its length, but not its checksum: the caller verifies it
    /// ([`Pipeline::read_shard`], or [`Pipeline::fetch_stripe`] together with decoding).
    async fn fetch_shard(
        &self,
        rec: &ObjectRecord,
        i: u64,
        j: usize,
    ) -> std::result::Result<Bytes, ShardProblem> {
        let st = &rec.stripes[i as usize];
        let problem = |kind, detail: String| Self::shard_problem(rec, i, j, kind, detail);
        let node = self.node_for(rec, &st.shards[j]).map_err(|n| {
            problem(
                ProblemKind::Unreachable,
                format!("backend {n} is not in the config"),
            )
        })?;
        let key = ObjectRecord::shard_key(&self.inner.settings.prefix, &rec.object_id, i, j);
        match node.get(&key).await {
            Ok(b) => {
                let want = crate::codec::shard_len(st.meta.cipher_len as usize, rec.k as usize);
                if b.len() != want {
                    return Err(problem(
                        ProblemKind::Corrupt,
                        format!("{} bytes, expected {want}", b.len()),
                    ));
                }
                Ok(b)
            }
            Err(Error::NotFound(_)) => Err(problem(ProblemKind::Missing, "not found".into())),
            Err(e) if e.is_retryable() || matches!(e, Error::Io { .. }) => {
                Err(problem(ProblemKind::Unreachable, e.to_string()))
            }
            Err(e) => Err(problem(ProblemKind::Corrupt, e.to_string())),
        }
    }

    pub(crate) fn data_key(&self, rec: &ObjectRecord) -> Result<SecretKey> {
        self.inner
            .keys
            .unwrap_data_key(&rec.wrapped_key, &rec.object_id, &rec.name)
    }

    /// Fetches k good shards of stripe `i` (falling back shard by shard) and decodes it.
    ///
    /// The fetched shards are decoded in one CPU task: one hand-off to the CPU pool per stripe
    /// instead of one per shard plus one, since on these machines waking another thread costs
    /// more than hashing a shard. Their checksums are only computed when the stripe fails to
    /// authenticate; a shard that fails its checksum is then replaced by the next candidate
    /// and the stripe is tried again.
    async fn fetch_stripe(
        &self,
        rec: &ObjectRecord,
        key: &SecretKey,
        i: u64,
    ) -> Result<(Vec<u8>, Vec<ShardProblem>)> {
        let st = &rec.stripes[i as usize];
        let (k, m) = (rec.k as usize, rec.m as usize);
        // Data shards first (no decoding needed), backends known to be down last.
        let mut order: Vec<usize> = (0..k + m).collect();
        order.sort_by_key(|&j| {
            (
                self.node_for(rec, &st.shards[j])
                    .map(|n| n.is_down())
                    .unwrap_or(true),
                j >= k,
                j,
            )
        });
        let mut order = order.into_iter();
        // Shards that passed their checksum.
        let mut good: Vec<Option<Bytes>> = vec![None; k + m];
        let mut have = 0;
        let mut problems = Vec::new();
        let read = |j: usize| async move { (j, self.fetch_shard(rec, i, j).await) };
        loop {
            // Fetched, not verified yet.
            let mut fetched: Vec<(usize, Bytes)> = Vec::with_capacity(k - have);
            let mut inflight = FuturesUnordered::new();
            for j in order.by_ref().take(k - have) {
                inflight.push(read(j));
            }
            while let Some((j, r)) = inflight.next().await {
                match r {
                    Ok(b) => fetched.push((j, b)),
                    Err(p) => {
                        problems.push(p);
                        if let Some(next) = order.next() {
                            inflight.push(read(next));
                        }
                    }
                }
            }
            if have + fetched.len() < k {
                let have = have + fetched.len();
                let transient = problems.iter().all(|p| p.kind == ProblemKind::Unreachable);
                return Err(BackupError::Insufficient {
                    object: rec.name.clone(),
                    stripe: i,
                    have,
                    need: k,
                    missing: problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                    transient,
                }
                .into());
            }
            let meta = st.meta.clone();
            let id = rec.stripe_id(i);
            let sealed_with = key.clone();
            let loc = format!("object {} stripe {i}", rec.name);
            let hash = rec.shard_hash;
            let (back, bad, plain) = on_cpu(move || {
                // Optimistically: the stripe's tag authenticates every byte the decode uses, so
                // shards that decode need no checksum of their own. Only a stripe that fails
                // to decode pays for hashing its shards, to find the bad ones.
                let mut shards = good.clone();
                for (j, b) in &fetched {
                    shards[*j] = Some(b.clone());
                }
                let tried =
                    stripe::decode(&mut shards, &meta, &id, &sealed_with, (k, m), hash, &loc);
                if tried.is_ok() {
                    return (good, Vec::new(), Some(tried));
                }
                let bad = keep_matching(&mut good, fetched, &meta, hash);
                (good, bad, None)
            })
            .await?;
            if let Some(plain) = plain {
                return Ok((plain?, problems));
            }
            good = back;
            if bad.is_empty() {
                // Every shard matched its checksum, yet together they do not open.
                return self
                    .fetch_stripe_any_set(rec, key, i, good, order, problems)
                    .await;
            }
            have = good.iter().flatten().count();
            problems.extend(bad.into_iter().map(|j| Self::checksum_mismatch(rec, i, j)));
        }
    }

    /// The last resort of [`Pipeline::fetch_stripe`], for a stripe whose shards match their
    /// checksums but do not open together: a checksum that cannot tell (format 5's XXH3 can be
    /// matched on purpose) or a shard damaged before it was summed. Fetches the shards not tried
    /// yet and decodes from whichever set of k opens ([`stripe::decode_any`]); the shards that
    /// spoiled the stripe are reported as corrupt.
    async fn fetch_stripe_any_set(
        &self,
        rec: &ObjectRecord,
        key: &SecretKey,
        i: u64,
        good: Vec<Option<Bytes>>,
        rest: std::vec::IntoIter<usize>,
        mut problems: Vec<ShardProblem>,
    ) -> Result<(Vec<u8>, Vec<ShardProblem>)> {
        let reads = futures::future::join_all(
            rest.map(|j| async move { (j, self.fetch_shard(rec, i, j).await) }),
        )
        .await;
        let mut fetched = Vec::new();
        for (j, r) in reads {
            match r {
                Ok(b) => fetched.push((j, b)),
                Err(p) => problems.push(p),
            }
        }
        let (res, bad) = self.open_stripe(rec, key, i, good, fetched).await?;
        problems.extend(bad.into_iter().map(|j| Self::checksum_mismatch(rec, i, j)));
        let opened = res?;
        problems.extend(opened.spoiled.iter().map(|&j| Self::spoiling(rec, i, j)));
        Ok((opened.plain, problems))
    }

    /// Streams the whole object into `out` and verifies the whole-object checksum. Returns the
    /// shard problems met on the way (the data was still complete), for the caller to report:
    /// they are logged at debug level only (`qsfs backup retrieve` prints them as warnings, and
    /// they were said twice).
    ///
    /// Up to `parallel_stripes` stripes are fetched and decoded ahead, each in its own task, while
    /// a writer thread drains decoded stripes into `out` in order.
    pub async fn read_to(
        &self,
        rec: &ObjectRecord,
        out: Box<dyn Write + Send>,
        progress: &dyn Progress,
    ) -> Result<(Vec<ShardProblem>, Box<dyn Write + Send>)> {
        let key = self.data_key(rec)?;
        let shared = Arc::new(rec.clone());
        let mut problems = Vec::new();
        let mut sums = Vec::with_capacity(rec.stripes.len());
        let n = rec.stripes.len() as u64;
        let par = self.inner.settings.parallel_stripes.max(1) as u64;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let writer = on_own_thread("qsfs-writer", move || {
            let mut w = out;
            while let Some(plain) = rx.blocking_recv() {
                w.write_all(&plain)?;
            }
            Ok::<_, std::io::Error>(w)
        })?;
        let spawn = |i: u64| {
            let (me, rec, key) = (self.clone(), shared.clone(), key.clone());
            Aborting::spawn(async move { me.fetch_stripe(&rec, &key, i).await })
        };
        let result: Result<()> = async {
            let mut inflight = FuturesOrdered::new();
            let mut next = 0u64;
            while next < n.min(par) {
                inflight.push_back(spawn(next));
                next += 1;
            }
            while let Some(r) = inflight.next().await {
                let (plain, p) = flatten(r)?;
                if next < n {
                    inflight.push_back(spawn(next));
                    next += 1;
                }
                problems.extend(p);
                // `decode` already matched the plaintext against this checksum.
                sums.push(rec.stripes[sums.len()].meta.plain_sum);
                progress.advance(plain.len() as u64);
                if tx.send(plain).await.is_err() {
                    // The writer stopped: its error is reported below.
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer
            .await?
            .map_err(|e| Error::io("writing retrieved data", e));
        result?;
        let w = written?;
        if sums.len() as u64 != n || stripe::object_sum(sums) != rec.checksum {
            return Err(Error::corrupt(
                format!("object {}", rec.name),
                "whole-object checksum mismatch",
            ));
        }
        for p in &problems {
            tracing::debug!("{}: {p}", rec.name);
        }
        Ok((problems, w))
    }

    /// Reads the whole object into memory (verified).
    pub async fn read_all(&self, rec: &ObjectRecord) -> Result<Bytes> {
        let buf = SharedBuf::default();
        let (problems, _) = self
            .read_to(rec, Box::new(buf.clone()), &NoProgress)
            .await?;
        for p in &problems {
            tracing::warn!("{}: {p}", rec.name);
        }
        let v = std::mem::take(&mut *buf.0.lock());
        Ok(Bytes::from(v))
    }

    /// Bytes `range` of the object (clipped), fetching only the stripes that hold them.
    pub async fn read_range(&self, rec: &ObjectRecord, range: Range<u64>) -> Result<Bytes> {
        let start = range.start.min(rec.size);
        let end = range.end.min(rec.size).max(start);
        if start == end {
            return Ok(Bytes::new());
        }
        let key = self.data_key(rec)?;
        let ss = u64::from(rec.stripe_size);
        let (first, last) = (start / ss, (end - 1) / ss);
        let mut out = Vec::with_capacity((end - start) as usize);
        let key = &key;
        let mut inflight = futures::stream::iter(first..=last)
            .map(|i| self.fetch_stripe(rec, key, i))
            .buffered(self.inner.settings.parallel_stripes.max(1));
        let mut i = first;
        while let Some(r) = inflight.next().await {
            let (plain, _) = r?;
            let base = i * ss;
            let a = start.saturating_sub(base) as usize;
            let b = ((end - base) as usize).min(plain.len());
            out.extend_from_slice(&plain[a..b]);
            i += 1;
        }
        Ok(Bytes::from(out))
    }

    /// Stripe `i` of `rec`, decoded and verified against its checksum, fetching only that
    /// stripe's shards (k of them while they are good).
    pub async fn read_stripe(&self, rec: &ObjectRecord, i: u64) -> Result<Bytes> {
        if i >= rec.stripes.len() as u64 {
            return Err(Error::InvalidArgument(format!(
                "object {} has {} stripes, asked for stripe {i}",
                rec.name,
                rec.stripes.len()
            )));
        }
        let key = self.data_key(rec)?;
        let (plain, problems) = self.fetch_stripe(rec, &key, i).await?;
        for p in &problems {
            tracing::warn!("{}: {p}", rec.name);
        }
        Ok(Bytes::from(plain))
    }

    /// Checks every shard of `rec`: presence only, or (`deep`) read and verify each one.
    pub async fn inspect(
        &self,
        rec: &ObjectRecord,
        deep: bool,
        rate: Option<&RateLimiter>,
    ) -> ObjectHealth {
        let (k, m) = (rec.k as usize, rec.m as usize);
        let mut problems = Vec::new();
        let mut margin = i64::MAX;
        for (i, st) in rec.stripes.iter().enumerate() {
            let i = i as u64;
            let res = futures::future::join_all((0..k + m).map(|j| async move {
                if deep {
                    self.read_shard(rec, i, j).await.map(|_| ())
                } else {
                    let loc = &st.shards[j];
                    let p = |kind, detail: String| ShardProblem {
                        stripe: i,
                        shard: j,
                        backend: Self::backend_name(rec, loc),
                        kind,
                        detail,
                    };
                    let node = self
                        .node_for(rec, loc)
                        .map_err(|n| p(ProblemKind::Unreachable, format!("{n} not in config")))?;
                    let key =
                        ObjectRecord::shard_key(&self.inner.settings.prefix, &rec.object_id, i, j);
                    let want = crate::codec::shard_len(st.meta.cipher_len as usize, k) as u64;
                    match node.size(&key).await {
                        Ok(Some(len)) if len == want => Ok(()),
                        Ok(Some(len)) => Err(p(
                            ProblemKind::Corrupt,
                            format!("{len} bytes, expected {want}"),
                        )),
                        Ok(None) => Err(p(ProblemKind::Missing, "not found".into())),
                        Err(e) => Err(p(ProblemKind::Unreachable, e.to_string())),
                    }
                }
            }))
            .await;
            let bad: Vec<ShardProblem> = res.into_iter().filter_map(|r| r.err()).collect();
            margin = margin.min((k + m - bad.len()) as i64 - k as i64);
            problems.extend(bad);
            if let (Some(r), true) = (rate, deep) {
                let sl = crate::codec::shard_len(st.meta.cipher_len as usize, k);
                r.take((sl * (k + m)) as u64).await;
            }
        }
        if rec.stripes.is_empty() {
            margin = m as i64;
        }
        ObjectHealth {
            name: rec.name.clone(),
            stripes: rec.stripes.len(),
            problems,
            margin,
        }
    }

    /// Re-creates the missing or corrupt shards of `rec` (found by a deep check) and records
    /// where they went. A shard goes back to its backend if that one answers; otherwise to a
    /// healthy backend that holds no shard of the stripe, chosen so the policy still holds.
    ///
    /// Every shard that can be repaired is; one that cannot be placed does not stop the rest.
    /// Those are listed in the report (`unplaced`, `not_verified`: see
    /// [`RepairReport::is_complete`]) and the record only ever points at shards written.
    pub async fn repair(
        &self,
        rec: &ObjectRecord,
        rate: Option<&RateLimiter>,
    ) -> Result<RepairReport> {
        match self.repair_detailed(rec, rate).await {
            (report, None) => Ok(report),
            (_, Some(e)) => Err(e),
        }
    }

    /// [`Pipeline::repair`] that always returns its report: what was re-created stays known
    /// when the repair ends in an error (a stripe with fewer than k readable shards, a record
    /// that could not be written), which comes back next to it.
    pub async fn repair_detailed(
        &self,
        rec: &ObjectRecord,
        rate: Option<&RateLimiter>,
    ) -> (RepairReport, Option<Error>) {
        let mut report = RepairReport {
            name: rec.name.clone(),
            ..Default::default()
        };
        let err = self.repair_into(rec, rate, &mut report).await.err();
        (report, err)
    }

    async fn repair_into(
        &self,
        rec: &ObjectRecord,
        rate: Option<&RateLimiter>,
        report: &mut RepairReport,
    ) -> Result<()> {
        let inner = &self.inner;
        report.metadata_replicas = inner.meta.replicate(&inner.keys, rec).await.unwrap_or(0);
        let health = self.inspect(rec, true, rate).await;
        report.problems = health.problems.clone();
        if health.is_clean() {
            return Ok(());
        }
        self.refresh_health(false).await;
        let (k, m) = (rec.k as usize, rec.m as usize);
        let mut new = rec.clone();
        let policy = Policy {
            k,
            m,
            ..inner.settings.policy
        };
        let mut by_stripe: std::collections::BTreeMap<u64, Vec<&ShardProblem>> = Default::default();
        for p in &health.problems {
            by_stripe.entry(p.stripe).or_default().push(p);
        }
        // A stripe that cannot be read or rebuilt now does not stop the others from being
        // repaired; its error is returned once what could be repaired is recorded.
        let mut insufficient: Option<BackupError> = None;
        let mut failed: Option<Error> = None;
        let mut unreachable = std::collections::BTreeSet::new();
        let key = self.data_key(rec)?;
        'stripes: for (i, bad) in by_stripe {
            let st = &rec.stripes[i as usize];
            for p in bad.iter().filter(|p| p.kind == ProblemKind::Unreachable) {
                unreachable.insert(p.backend.clone());
            }
            let mut shards: Vec<Option<Bytes>> = vec![None; k + m];
            let reads =
                futures::future::join_all((0..k + m).map(|j| self.read_shard(rec, i, j))).await;
            for (j, r) in reads.into_iter().enumerate() {
                shards[j] = r.ok();
            }
            let have = shards.iter().filter(|s| s.is_some()).count();
            if have < k {
                tracing::warn!(
                    "repair of {}: stripe {i} has {have} of {k} shards",
                    rec.name
                );
                insufficient.get_or_insert(BackupError::Insufficient {
                    object: rec.name.clone(),
                    stripe: i,
                    have,
                    need: k,
                    missing: bad
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                    transient: bad.iter().all(|p| p.kind == ProblemKind::Unreachable),
                });
                continue;
            }
            let unread: Vec<usize> = (0..k + m).filter(|&j| shards[j].is_none()).collect();
            let opened = match self
                .open_stripe(rec, &key, i, shards, Vec::new())
                .await
                .and_then(|(opened, _)| opened)
            {
                Ok(o) => o,
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            let missing: Vec<usize> = (0..k + m)
                .filter(|j| unread.contains(j) || opened.spoiled.contains(j))
                .collect();
            for &j in &missing {
                let data = opened.shards[j].clone();
                if rec.shard_hash.sum(&data) != st.meta.shard_sums[j] {
                    failed.get_or_insert(Error::corrupt(
                        format!("object {} stripe {i} shard {j}", rec.name),
                        "rebuilt shard does not match its recorded checksum",
                    ));
                    continue 'stripes;
                }
                // The problem seen by the deep check; a shard that read fine then but not now
                // is treated as unreachable (it may well be intact).
                let problem = bad
                    .iter()
                    .find(|p| p.shard == j)
                    .map(|p| (*p).clone())
                    .or_else(|| {
                        opened
                            .spoiled
                            .contains(&j)
                            .then(|| Self::spoiling(rec, i, j))
                    })
                    .unwrap_or_else(|| ShardProblem {
                        stripe: i,
                        shard: j,
                        backend: Self::backend_name(rec, &st.shards[j]),
                        kind: ProblemKind::Unreachable,
                        detail: "did not answer during repair".into(),
                    });
                let key = ObjectRecord::shard_key(&inner.settings.prefix, &rec.object_id, i, j);
                let mut tried = Vec::new();
                let target = loop {
                    let t = match self.repair_target(&new, i, j, &policy, &tried) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!("repair of {}: {e}", rec.name);
                            break None;
                        }
                    };
                    match inner.nodes[t].put(&key, data.clone()).await {
                        Ok(()) => break Some(t),
                        Err(e) => {
                            tracing::warn!(
                                "repair: writing shard {j} of stripe {i} to {}: {e}",
                                inner.nodes[t].name
                            );
                            if e.is_retryable() {
                                unreachable.insert(inner.nodes[t].name.clone());
                            }
                            tried.push(t);
                        }
                    }
                };
                let Some(target) = target else {
                    // Nothing was written, so the record keeps pointing where it did: at a
                    // shard that may come back (unreachable) or at one known lost.
                    if problem.kind == ProblemKind::Unreachable {
                        report.not_verified.push(problem);
                    } else {
                        report.unplaced.push(problem);
                    }
                    continue;
                };
                report.rewritten += 1;
                report.bytes_rewritten += data.len() as u64;
                let name = inner.nodes[target].name.clone();
                let was = Self::backend_name(&new, &new.stripes[i as usize].shards[j]);
                // Back on the backend the record names (perhaps by an older name) is no move.
                if inner.node_index(&was) != Some(target) {
                    report.moved += 1;
                    let idx = new.backend_index(&name);
                    new.stripes[i as usize].shards[j].backend = idx;
                }
            }
        }
        report.unreachable_backends = unreachable.into_iter().collect();
        if report.moved > 0 {
            new.version = inner
                .meta
                .latest_version(&inner.keys, &rec.name)
                .await?
                .max(rec.version)
                + 1;
            inner.meta.put(&inner.keys, &new).await?;
        }
        if let Some(e) = insufficient {
            return Err(e.into());
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn repair_target(
        &self,
        rec: &ObjectRecord,
        i: u64,
        j: usize,
        policy: &Policy,
        tried: &[usize],
    ) -> Result<usize> {
        let inner = &self.inner;
        let st = &rec.stripes[i as usize];
        if let Ok(n) = self.node_for(rec, &st.shards[j]) {
            if n.takes_writes()
                && inner
                    .by_name
                    .get(&n.name)
                    .is_some_and(|i| !tried.contains(i))
            {
                if let Some(&idx) = inner.by_name.get(&n.name) {
                    return Ok(idx);
                }
            }
        }
        let holders: Vec<Option<usize>> = st
            .shards
            .iter()
            .map(|l| {
                self.node_for(rec, l)
                    .ok()
                    .and_then(|n| inner.by_name.get(&n.name).copied())
            })
            .collect();
        let lost_group = holders[j].map(|n| inner.nodes[n].group);
        let mut candidates: Vec<usize> = (0..inner.nodes.len())
            .filter(|c| inner.nodes[*c].takes_writes() && !tried.contains(c))
            .filter(|c| {
                holders
                    .iter()
                    .enumerate()
                    .filter(|(x, _)| *x != j)
                    .all(|(_, h)| *h != Some(*c))
            })
            .collect();
        candidates.sort_by_key(|&c| (Some(inner.nodes[c].group) != lost_group, c));
        for c in candidates {
            let assignment: Vec<(usize, usize)> = holders
                .iter()
                .enumerate()
                .filter_map(|(x, h)| if x == j { Some(c) } else { *h })
                .map(|n| (inner.nodes[n].group, n))
                .collect();
            if assignment.len() == st.shards.len()
                && placement::assignment_survives(policy, &assignment, inner.groups.len())
            {
                return Ok(c);
            }
        }
        Err(BackupError::Placement(format!(
            "no healthy backend can take shard {j} of stripe {i} of {} without breaking the policy",
            rec.name
        ))
        .into())
    }

    /// Deletes `name`: a deletion marker is recorded, then its shards are removed.
    pub async fn delete_object(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let rec = self.record(name).await?;
        let tomb = ObjectRecord {
            version: inner
                .meta
                .latest_version(&inner.keys, name)
                .await?
                .max(rec.version)
                + 1,
            deleted: true,
            size: 0,
            stripes: Vec::new(),
            backends: Vec::new(),
            wrapped_key: Vec::new(),
            ..rec.clone()
        };
        inner.meta.put(&inner.keys, &tomb).await?;
        let mut dels = Vec::new();
        for (i, st) in rec.stripes.iter().enumerate() {
            for (j, loc) in st.shards.iter().enumerate() {
                if let Ok(n) = self.node_for(&rec, loc) {
                    let key = ObjectRecord::shard_key(
                        &inner.settings.prefix,
                        &rec.object_id,
                        i as u64,
                        j,
                    );
                    dels.push(async move { n.delete(&key).await });
                }
            }
        }
        // Shards on unreachable backends are orphans now; gc removes them later.
        let _ = futures::future::join_all(dels).await;
        Ok(())
    }

    /// Removes shards no record references (superseded versions, failed stores, moved shards)
    /// and old record versions. Refuses to run if any record cannot be read, since its shards
    /// would look orphaned. Do not run concurrently with stores.
    pub async fn gc(&self) -> Result<GcReport> {
        let inner = &self.inner;
        let (recs, problems) = inner.meta.all(&inner.keys).await?;
        if let Some(p) = problems.first() {
            return Err(Error::Unavailable(format!(
                "gc refused: {} record(s) unreadable, first: {p}",
                problems.len()
            )));
        }
        // Kept shards by backend. A record naming a backend that nothing in the config answers
        // to means the names changed (a backend renamed, `localhost` for `127.0.0.1`): every
        // shard of the backends as now named would look unreferenced.
        let mut keep: Vec<std::collections::HashSet<String>> =
            vec![Default::default(); inner.nodes.len()];
        for rec in recs.iter().filter(|r| !r.deleted) {
            for (i, st) in rec.stripes.iter().enumerate() {
                for (j, loc) in st.shards.iter().enumerate() {
                    let name = Self::backend_name(rec, loc);
                    let Some(node) = inner.node_index(&name) else {
                        return Err(Error::InvalidArgument(format!(
                            "gc refused: records keep shards on backend {name}, which is not in \
                             the config (renamed?); with the names as they are, gc would delete \
                             shards those records need. Use the names the objects were stored \
                             with, or move the shards with rebuild first"
                        )));
                    };
                    let key = ObjectRecord::shard_key(
                        &inner.settings.prefix,
                        &rec.object_id,
                        i as u64,
                        j,
                    );
                    keep[node].insert(key);
                }
            }
        }
        let mut report = GcReport::default();
        let prefix = format!("{}/d/", inner.settings.prefix);
        for (at, n) in inner.nodes.iter().enumerate() {
            let keys = match n.list(&prefix).await {
                Ok(k) => k,
                Err(_) => {
                    report.skipped_backends.push(n.name.clone());
                    continue;
                }
            };
            for key in keys {
                if parse_shard_key(&inner.settings.prefix, &key).is_some()
                    && !keep[at].contains(&key)
                    && n.delete(&key).await.is_ok()
                {
                    report.shards_deleted += 1;
                }
            }
        }
        for (i, key) in inner.meta.superseded().await? {
            if inner.meta.nodes()[i].delete(&key).await.is_ok() {
                report.records_deleted += 1;
            }
        }
        Ok(report)
    }
}

/// The first header that `key` unlocks. Several headers (an interrupted passphrase change) must
/// all belong to the same repository.
fn unlock_any(headers: &[Vec<u8>], key: &KeySource) -> Result<(RepoHeader, Keys)> {
    // A copy that does not parse is one damaged replica: the others decide, as for a missing one.
    let mut parsed = Vec::new();
    let mut bad = None;
    for h in headers {
        match RepoHeader::from_json(h) {
            Ok(h) => parsed.push(h),
            Err(e) => {
                tracing::warn!("a copy of the repository header is damaged: {e}");
                bad = Some(e);
            }
        }
    }
    if let (true, Some(e)) = (parsed.is_empty(), bad) {
        return Err(e);
    }
    if parsed.windows(2).any(|w| w[0].repo_id != w[1].repo_id) {
        return Err(Error::corrupt(
            "repository header",
            "metadata backends hold headers of different repositories",
        ));
    }
    if parsed.len() > 1 {
        tracing::warn!(
            "metadata backends hold {} versions of the repository header",
            parsed.len()
        );
    }
    let mut last = Error::from(BackupError::WrongKey);
    for h in parsed {
        match h.unlock(key) {
            Ok(keys) => return Ok((h, keys)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn flatten<T>(r: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    r.map_err(|e| Error::Unavailable(format!("stripe task failed: {e}")))?
}

/// A spawned stripe task that is cancelled when dropped: a failed store or retrieve must not
/// leave stripes being written or fetched behind it.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Aborting<T> {
    fn spawn(f: impl std::future::Future<Output = T> + Send + 'static) -> Self
    where
        T: Send + 'static,
    {
        Aborting(tokio::spawn(f))
    }
}

impl<T> std::future::Future for Aborting<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A writer into memory that the caller can still reach after handing it over.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Backend for Pipeline {
    fn name(&self) -> String {
        let s = &self.inner.settings.policy;
        format!(
            "pipeline({}+{} over {} backends)",
            s.k,
            s.m,
            self.inner.nodes.len()
        )
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        check_object_key(key)?;
        self.store(
            key,
            Box::new(std::io::Cursor::new(data)),
            Attrs::default(),
            &NoProgress,
        )
        .await
        .map(|_| ())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        check_object_key(key)?;
        let rec = self.record(key).await?;
        self.read_all(&rec).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        check_object_key(key)?;
        let rec = self.record(key).await?;
        self.read_range(&rec, range).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_object_key(key)?;
        match self.delete_object(key).await {
            Err(Error::NotFound(_)) => Ok(()),
            r => r,
        }
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.size(key).await?.is_some())
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        check_object_key(key)?;
        match self.record(key).await {
            Ok(rec) => Ok(Some(rec.size)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let (recs, problems) = self.records().await?;
        if let Some(p) = problems.into_iter().next() {
            return Err(p);
        }
        Ok(recs
            .into_iter()
            .map(|r| r.name)
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    async fn health(&self) -> Health {
        let start = std::time::Instant::now();
        let (data, meta) = self.refresh_health(true).await;
        let down = data
            .iter()
            .filter(|h| h.status == HealthStatus::Down)
            .count();
        let meta_up = meta
            .iter()
            .filter(|h| h.status != HealthStatus::Down)
            .count();
        let placeable = self.place(0).is_ok();
        let mut h = Health::up(start.elapsed());
        h.used_bytes = data.iter().map(|h| h.used_bytes).sum();
        h.free_bytes = data.iter().map(|h| h.free_bytes).sum();
        if !placeable || meta_up < self.inner.meta.nodes().len() / 2 + 1 {
            h.status = HealthStatus::Down;
            h.detail = format!("{down} data backends down, {meta_up} metadata backends up");
        } else if down > 0 || meta_up < meta.len() {
            h.status = HealthStatus::Degraded;
            h.detail = format!(
                "{down} data backends down, {} metadata backends down",
                meta.len() - meta_up
            );
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Memory;

    async fn rig() -> (Vec<Memory>, Vec<Memory>, Pipeline) {
        let data: Vec<Memory> = (0..4).map(|i| Memory::new(format!("d{i}"))).collect();
        let meta: Vec<Memory> = (0..3).map(|i| Memory::new(format!("m{i}"))).collect();
        let settings = Settings {
            stripe_size: 4096,
            kdf: KdfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            // Format 2: `downgrade` turns its records into format 1, which differs from it
            // only in the shard checksums.
            format: ShardHash::Blake3,
            ..Settings::default()
        };
        let p = Pipeline::open(
            settings,
            vec![data
                .iter()
                .map(|d| Arc::new(d.clone()) as Arc<dyn Backend>)
                .collect()],
            meta.iter()
                .map(|d| Arc::new(d.clone()) as Arc<dyn Backend>)
                .collect(),
            &KeySource::passphrase("pw"),
        )
        .await
        .expect("open");
        (data, meta, p)
    }

    /// Rewrites `name`'s record as format 1 (SHA-256 shard checksums), as an older qsfs wrote it.
    async fn downgrade(p: &Pipeline, name: &str) -> ObjectRecord {
        let mut rec = p.record(name).await.expect("record");
        assert_eq!(rec.shard_hash, ShardHash::Blake3);
        for i in 0..rec.stripes.len() {
            for j in 0..rec.stripes[i].shards.len() {
                let b = p.read_shard(&rec, i as u64, j).await.expect("shard");
                rec.stripes[i].meta.shard_sums[j] = stripe::sha256(&b);
            }
        }
        rec.shard_hash = ShardHash::Sha256;
        rec.version += 1;
        p.inner.meta.put(&p.inner.keys, &rec).await.expect("put");
        rec
    }

    #[tokio::test]
    async fn format_1_records_still_read_check_and_repair() {
        let (data, _, p) = rig().await;
        let body: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        p.put("obj", Bytes::from(body.clone())).await.expect("put");
        let old = downgrade(&p, "obj").await;
        let rec = p.record("obj").await.expect("record");
        assert_eq!(
            (rec.shard_hash, rec.version),
            (ShardHash::Sha256, old.version)
        );
        assert_eq!(p.get("obj").await.expect("get"), body);
        assert!(p.inspect(&rec, true, None).await.is_clean());
        // A damaged shard is caught by its SHA-256 and rebuilt with a matching one.
        let key = ObjectRecord::shard_key("qsfs", &rec.object_id, 1, 0);
        assert!(data.iter().any(|d| d.tamper(&key, |v| v[3] ^= 1)));
        let h = p.inspect(&rec, true, None).await;
        assert_eq!(h.problems.len(), 1, "{:?}", h.problems);
        assert_eq!(h.problems[0].kind, ProblemKind::Corrupt);
        let report = p.repair(&rec, None).await.expect("repair");
        assert_eq!(report.rewritten, 1);
        assert!(p.inspect(&rec, true, None).await.is_clean());
        assert_eq!(p.get("obj").await.expect("get"), body);
    }

    #[tokio::test]
    async fn an_envelope_relabelled_to_the_other_format_does_not_authenticate() {
        let (_, meta, p) = rig().await;
        p.put("obj", Bytes::from_static(b"payload"))
            .await
            .expect("put");
        for m in &meta {
            for k in m.keys().into_iter().filter(|k| k.contains("/m/")) {
                assert!(m.tamper(&k, |v| v[3] = b'1'));
            }
        }
        let e = p.record("obj").await.expect_err("relabelled");
        assert!(
            e.to_string().contains("does not authenticate"),
            "unexpected error: {e}"
        );
    }

    /// The record keys of `name` on `m`: (versioned keys, `latest` key).
    fn record_keys(m: &Memory) -> (Vec<String>, Vec<String>) {
        m.keys()
            .into_iter()
            .filter(|k| k.contains("/m/"))
            .partition(|k| !k.ends_with("/latest"))
    }

    /// In a repository of format 2, storing and reading a record list nothing (a listing is a
    /// scan of every key on a 0-db node), and a `latest` left behind on a minority of the
    /// metadata backends, or behind versions whose `latest` was never written, hides nothing.
    #[tokio::test]
    async fn lookups_list_nothing_and_a_stale_latest_hides_no_version() {
        let (_, meta, p) = rig().await;
        let lists = |meta: &[Memory]| meta.iter().map(Memory::list_calls).sum::<usize>();
        let before = lists(&meta);
        let mut latest_of = Vec::new();
        for v in ["one", "two", "three"] {
            p.put("obj", Bytes::from(v)).await.expect("put");
            let (_, latest) = record_keys(&meta[0]);
            latest_of.push(meta[0].get(&latest[0]).await.expect("latest"));
        }
        assert_eq!(p.get("obj").await.expect("get"), Bytes::from("three"));
        assert!(matches!(p.record("other").await, Err(Error::NotFound(_))));
        assert_eq!(lists(&meta), before, "a lookup listed keys");
        let (versioned, latest) = record_keys(&meta[0]);
        assert_eq!(versioned.len(), 1, "older versions pruned: {versioned:?}");
        let (vkey, lkey) = (versioned[0].clone(), latest[0].clone());
        // One backend's `latest` rolled back: the quorum still sees version 3.
        meta[0]
            .put(&lkey, latest_of[0].clone())
            .await
            .expect("roll back");
        assert_eq!(p.get("obj").await.expect("get"), Bytes::from("three"));
        // Every `latest` at version 1, versions 2 and 3 present (their `latest` never
        // written): the probe forward finds version 3.
        let v2 = vkey.replace("0000000000000003", "0000000000000002");
        for m in &meta {
            m.put(&lkey, latest_of[0].clone())
                .await
                .expect("stale latest");
            m.put(&v2, latest_of[1].clone()).await.expect("version 2");
        }
        assert_eq!(p.get("obj").await.expect("get"), Bytes::from("three"));
        // No `latest` at all and versions 2 and 3: gc writes `latest` before it removes
        // version 2, which was the way to version 3.
        for m in &meta {
            m.delete(&lkey).await.expect("drop latest");
        }
        p.gc().await.expect("gc");
        assert_eq!(record_keys(&meta[1]), (vec![vkey], vec![lkey]));
        assert_eq!(p.get("obj").await.expect("get"), Bytes::from("three"));
    }
}
