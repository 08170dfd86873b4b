//! Pieces `qsfs mount` and `qsfs up` share: the stop signals, the engine settings a filesystem
//! wants, the background compactor, and serving a mount in the foreground until it is unmounted
//! or signalled.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};
use qsfs_fuse::{Fs, MountOptions};
use qsfs_store::{Engine, EngineConfig};

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread. Call before any thread exists, so
/// every thread inherits the mask and only the thread waiting on the returned set receives them.
pub fn block_stop_signals() -> anyhow::Result<SigSet> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;
    Ok(signals)
}

/// The engine settings of a filesystem's embedded engine.
pub fn fs_engine_config() -> EngineConfig {
    EngineConfig {
        // A filesystem has no use for old versions of blocks: deleted and overwritten data may be
        // dropped by compaction after a minute, so space comes back online.
        history_retention: Some(Duration::from_secs(60)),
        max_segment_size: 64 << 20,
        max_segment_age: Some(Duration::from_secs(600)),
        ..EngineConfig::default()
    }
}

/// The engine's low-space mark for a filesystem whose reserve is `reserve` on the disk of `dir`
/// (created if missing): twice the reserve, so the engine gives space back before the
/// filesystem refuses writes.
pub fn low_space(dir: &Path, reserve: u64) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let disk = qsfs_core::DiskSpace::of(dir)?;
    Ok(2 * qsfs_fuse::space::reserve_bytes(reserve, disk.total))
}

/// Opens the engine in `dir` (created if missing).
pub fn open_engine(dir: &Path, config: EngineConfig) -> anyhow::Result<Arc<Engine>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let engine = Engine::open(dir, config).with_context(|| {
        format!(
            "opening the engine in {} (is qsfs already using this root?)",
            dir.display()
        )
    })?;
    Ok(Arc::new(engine))
}

/// Starts compacting the filesystem's namespaces every `every`: unlinked, truncated and
/// overwritten data leaves the disk only through it, since the engine compacts only when asked.
pub fn spawn_compactor(engine: &Arc<Engine>, every: Duration) {
    if let Err(e) = qsfs_store::spawn_compactor(engine, every.max(Duration::from_secs(1)), |ns| {
        ns.starts_with("qsfs-")
    }) {
        tracing::warn!(error = %e, "no background compaction");
    }
}

/// Mounts `fs` on `mountpoint` and serves it until it is unmounted from elsewhere or one of
/// `signals` arrives; returns once the final flush is done.
pub fn serve(
    fs: Fs,
    mountpoint: &Path,
    options: &MountOptions,
    signals: SigSet,
) -> anyhow::Result<()> {
    let mut mounted = qsfs_fuse::mount(fs, mountpoint, options)
        .with_context(|| format!("mounting on {}", mountpoint.display()))?;
    eprintln!(
        "qsfs: mounted on {} (stop with Ctrl-C or `fusermount3 -u`)",
        mountpoint.display()
    );
    if let Some(stopper) = mounted.stopper() {
        std::thread::Builder::new()
            .name("qsfs-signals".into())
            .spawn(move || {
                if let Ok(sig) = signals.wait() {
                    tracing::info!(signal = ?sig, "unmounting");
                    stopper.stop();
                }
            })
            .context("starting the signal thread")?;
    }
    mounted.wait().context("serving the filesystem")?;
    eprintln!("qsfs: unmounted {}", mountpoint.display());
    Ok(())
}
