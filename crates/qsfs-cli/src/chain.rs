//! Wiring of the storage chain shared by `qsfs up`, `qsfs recover`, `qsfs status` and
//! `qsfs serve --backup-config`: the root layout, the config, the pipeline, the tier and the
//! engine settings that connect them, and the status file a running chain keeps up to date.
//!
//! Root layout: `ROOT/qsfs.toml` (config), `ROOT/qsfs.key` (generated key file),
//! `ROOT/engine` (engine), `ROOT/tier` (tier state), `ROOT/status.json` (written by a running
//! `qsfs up`), `ROOT/backends/node0..3` (the default local backends).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use qsfs_backup::config::{ChainSettings, Config};
use qsfs_backup::crypto::KeySource;
use qsfs_backup::stripe::ShardHash;
use qsfs_backup::tier::{BackendHealth, Tier, TierConfig, TierMetrics, TierStatus};
use qsfs_backup::Pipeline;
use qsfs_store::EngineConfig;
use serde::{Deserialize, Serialize};

use crate::backup::ZdbConnect;
use crate::key::{self, Missing};
use crate::metrics::ChainView;

/// Default engine segment size of the chain.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Default age after which a non-empty segment is sealed (and so uploaded).
pub const DEFAULT_SEAL_AFTER: Duration = Duration::from_secs(60);
/// Default bytes of fetched stripes kept in memory.
pub const DEFAULT_READ_CACHE: u64 = 64 << 20;

/// The paths of one root.
#[derive(Debug, Clone)]
pub struct Root {
    /// The root directory.
    pub dir: PathBuf,
}

impl Root {
    /// The root `--root`/`QSFS_ROOT` names, else `~/.threefold`.
    pub fn resolve(explicit: Option<PathBuf>) -> Root {
        Root {
            dir: crate::root::resolve(explicit),
        }
    }
    /// The default config file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("qsfs.toml")
    }
    /// The engine directory.
    pub fn engine(&self) -> PathBuf {
        self.dir.join("engine")
    }
    /// The tier state directory.
    pub fn tier(&self) -> PathBuf {
        self.dir.join("tier")
    }
    /// The status file of a running `qsfs up`.
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    /// Left by `qsfs recover`: the next `qsfs up` takes over the mount lock that came back
    /// with the filesystem (it names the lost machine), as `--force` would, then removes it.
    pub fn takeover(&self) -> PathBuf {
        self.dir.join("takeover")
    }
}

/// Loads `explicit`, else `ROOT/qsfs.toml`; with `create`, writes the default local config
/// there first if it does not exist.
pub fn load_config(
    root: &Root,
    explicit: Option<&Path>,
    create: bool,
) -> anyhow::Result<(PathBuf, Config)> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let p = root.config();
            if create && !p.exists() {
                std::fs::create_dir_all(&root.dir)
                    .with_context(|| format!("creating {}", root.dir.display()))?;
                let text = Config::default_local_toml(&root.dir);
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                {
                    Ok(mut f) => {
                        f.write_all(text.as_bytes())
                            .and_then(|_| f.sync_all())
                            .with_context(|| format!("writing {}", p.display()))?;
                        eprintln!(
                            "qsfs: wrote {} (four local backends, 2+2; edit it to use remote ones)",
                            p.display()
                        );
                    }
                    // Another process wrote it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
                }
            }
            p
        }
    };
    let config = Config::load(&path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("loading {}", path.display()))?;
    Ok((path, config))
}

/// The key for `config`: none if it carries its own (0-stor v2), else from the root's sources.
pub fn secret(
    config: &Config,
    keyfile: Option<&Path>,
    root: &Root,
    missing: Missing,
) -> anyhow::Result<Option<KeySource>> {
    if config.key.is_some() {
        return Ok(None);
    }
    key::root_secret(keyfile, &root.dir, missing).map(Some)
}

/// The runtime the pipeline's async calls run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(qsfs_backup::pipeline::BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Opens the pipeline of `config`.
pub fn open_pipeline(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    secret: Option<KeySource>,
) -> anyhow::Result<Arc<Pipeline>> {
    // The chain stores with BLAKE3 plaintext checksums: the tier recomputes the whole-object
    // checksum of every segment it uploads to check the stored record, and with SHA-256 that
    // second pass was the largest cost of an upload. Objects of every format stay readable.
    let mut config = config.clone();
    config.settings.format = ShardHash::Blake3Plain;
    let pipeline = rt
        .block_on(config.open(secret, Some(&ZdbConnect)))
        .map_err(anyhow::Error::from)
        .context("opening the backup repository (is the key right?)")?;
    Ok(Arc::new(pipeline))
}

/// The tier settings from the config's chain keys.
pub fn tier_config(chain: &ChainSettings) -> TierConfig {
    TierConfig {
        local_cap: chain.local_cap,
        read_cache_bytes: chain.read_cache.unwrap_or(DEFAULT_READ_CACHE),
        cut_every: chain.seal_after.unwrap_or(DEFAULT_SEAL_AFTER),
        cut_every_max: chain
            .seal_max_after
            .unwrap_or(TierConfig::default().cut_every_max),
        gc_every: chain.gc_every.unwrap_or(TierConfig::default().gc_every),
        ..TierConfig::default()
    }
}

/// `base` with the chain's segment settings and the tier plugged in.
pub fn engine_config(base: EngineConfig, chain: &ChainSettings, tier: &Tier) -> EngineConfig {
    EngineConfig {
        max_segment_size: chain.segment_size.unwrap_or(DEFAULT_SEGMENT_SIZE),
        // Sealing by age is the tier's recovery cut (every `seal_after`), which seals every
        // namespace at one instant; sealing each namespace on its own clock adds nothing.
        max_segment_age: None,
        history_retention: chain.history_retention.or(base.history_retention),
        cold_tier: Some(tier.cold_tier()),
        observer: Some(tier.observer()),
        ..base
    }
}

/// Probes every backend of the pipeline once: the health reported until the tier's own probes
/// come in, so every configured backend is known from the start. Backends used for both data
/// and metadata appear once.
pub fn probe_backends(rt: &tokio::runtime::Runtime, pipeline: &Pipeline) -> Vec<BackendHealth> {
    let rows = rt.block_on(qsfs_backup::ops::status(pipeline));
    let mut out: Vec<BackendHealth> = Vec::new();
    for r in rows {
        if out.iter().any(|b| b.name == r.name) {
            continue;
        }
        out.push(BackendHealth {
            name: r.name,
            up: r.status != "down",
            detail: r.detail,
        });
    }
    out
}

/// The tier's status, with `initial` backend health for backends it has not probed yet. A
/// backend that serves both data and metadata (the tier reports its metadata role as
/// `meta:NAME`) is one backend, up only if up in both roles.
pub fn tier_status(tier: &Tier, initial: &[BackendHealth]) -> TierStatus {
    let mut s = tier.status();
    let mut merged: Vec<BackendHealth> = Vec::new();
    let probed = std::mem::take(&mut s.backends);
    let fallback = initial.iter().filter(|b| {
        !probed
            .iter()
            .any(|p| base_name(&p.name) == base_name(&b.name))
    });
    for b in probed.iter().chain(fallback) {
        let name = base_name(&b.name);
        match merged.iter_mut().find(|m| m.name == name) {
            Some(m) => {
                if !b.up {
                    m.up = false;
                    m.detail = b.detail.clone();
                }
            }
            None => merged.push(BackendHealth {
                name: name.to_string(),
                up: b.up,
                detail: b.detail.clone(),
            }),
        }
    }
    s.backends = merged;
    s
}

fn base_name(name: &str) -> &str {
    name.strip_prefix("meta:").unwrap_or(name)
}

/// What the metrics endpoint reports about `tier`.
pub fn chain_view(tier: &Tier, initial: &[BackendHealth]) -> ChainView {
    let s = tier_status(tier, initial);
    let m = tier.metrics();
    let g = TierMetrics::get;
    ChainView {
        local_bytes: s.local_bytes,
        local_cap: s.local_cap,
        cap_unmet: s.cap_unmet,
        backlog_segments: s.backlog_segments,
        backlog_bytes: s.backlog_bytes,
        pending_deletes: s.pending_deletes,
        bytes_offloaded: g(&m.bytes_offloaded),
        segments_offloaded: g(&m.segments_offloaded),
        bytes_fetched: g(&m.bytes_fetched),
        fetch_cache_hits: g(&m.cache_hits),
        fetch_cache_misses: g(&m.cache_misses),
        evictions: g(&m.evictions),
        upload_failures: g(&m.upload_failures),
        cold_deleted: g(&m.cold_deleted),
        writers_held: g(&m.writers_held),
        write_holds: g(&m.write_holds),
        write_hold_ms: g(&m.write_hold_ms),
        tier_rounds: g(&m.worker_rounds),
        cuts_uploaded: g(&m.cuts_uploaded),
        cut_bytes: g(&m.cut_bytes),
        backends: s.backends.iter().map(|b| (b.name.clone(), b.up)).collect(),
    }
}

/// Seals every namespace's non-empty current segment and waits up to `timeout` for the tier to
/// upload them and the manifests, so that a clean stop leaves the backups current (a recovery
/// then loses nothing). Whatever is not uploaded in time stays queued for the next start.
pub fn drain(engine: &qsfs_store::Engine, tier: &Tier, timeout: Duration) {
    use qsfs_core::Store;
    // A fresh segment holds only its 32-byte header.
    const EMPTY: u64 = 32;
    let mut sealed = 0;
    for ns in engine.namespace_list().unwrap_or_default() {
        let open = engine
            .segments(&ns)
            .map(|segs| segs.iter().any(|s| !s.sealed && s.length > EMPTY))
            .unwrap_or(false);
        if open {
            match engine.rotate(&ns) {
                Ok(()) => sealed += 1,
                Err(e) => tracing::warn!(ns = %ns, error = %e, "sealing at stop"),
            }
        }
    }
    if timeout.is_zero() {
        return;
    }
    if !tier.wait_idle(Duration::ZERO) {
        eprintln!(
            "qsfs: uploading what is not backed up yet ({sealed} segment(s) just sealed; at most {} s)",
            timeout.as_secs()
        );
        if !tier.wait_idle(timeout) {
            let s = tier.status();
            eprintln!(
                "qsfs: {} segment(s) ({} bytes) not uploaded yet and {} not read back and \
                 verified yet: that is done at the next start",
                s.backlog_segments, s.backlog_bytes, s.unverified_segments
            );
        }
    }
}

/// What a running `qsfs up` writes to `ROOT/status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusFile {
    /// True while the writing process serves the mount.
    pub running: bool,
    /// Its process id.
    pub pid: u32,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// When this was written, unix milliseconds.
    pub updated_ms: u64,
    /// True when every sealed segment is confirmed in the backups and every namespace's newest
    /// recovery manifest is uploaded: what `qsfs recover` would restore is current, up to the
    /// data not yet sealed (at most `seal_after` old, `seal_max_after` once the index is over 16 MiB).
    #[serde(default)]
    pub idle: bool,
    /// The tier's status.
    #[serde(flatten)]
    pub tier: TierStatus,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `status` to `path` atomically (a reader never sees half a file).
pub fn write_status(path: &Path, status: &StatusFile) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(status)?;
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Keeps `ROOT/status.json` up to date from a thread until dropped, then writes it once more
/// with `running: false`.
pub struct StatusWriter {
    stop: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusWriter {
    /// Starts writing the status of `tier` for the mount on `mountpoint` every `every`.
    pub fn start(
        path: PathBuf,
        mountpoint: PathBuf,
        tier: Tier,
        initial: Vec<BackendHealth>,
        every: Duration,
    ) -> anyhow::Result<StatusWriter> {
        let stop = Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("qsfs-status".into())
            .spawn(move || {
                let write = |running: bool| {
                    let status = StatusFile {
                        running,
                        pid: std::process::id(),
                        mountpoint: mountpoint.clone(),
                        updated_ms: now_ms(),
                        idle: tier.wait_idle(Duration::ZERO),
                        tier: tier_status(&tier, &initial),
                    };
                    if let Err(e) = write_status(&path, &status) {
                        tracing::warn!(error = %e, "status file");
                    }
                };
                let mut stopped = s.0.lock();
                while !*stopped {
                    write(true);
                    s.1.wait_for(&mut stopped, every);
                }
                write(false);
            })
            .context("starting the status thread")?;
        Ok(StatusWriter {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
