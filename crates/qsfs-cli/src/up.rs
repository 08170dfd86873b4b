//! `qsfs up`: the whole storage chain in one process. FUSE → embedded engine under
//! `ROOT/engine` → tier (offload, eviction, fetch-back) → backup pipeline → backends. With no
//! config it creates everything under the root: `ROOT/qsfs.toml` with four local directory
//! backends (2+2), a key, the engine. Runs in the foreground until unmounted or signalled, then
//! flushes, stops the tier and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use qsfs_backup::tier::Tier;
use qsfs_fuse::{Capacity, Fs, FsConfig};

use crate::chain::{self, Root, StatusWriter};
use crate::fsmount;
use crate::key::Missing;
use crate::metrics;

/// Arguments of `qsfs up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to mount on (created if missing).
    pub mountpoint: PathBuf,
    /// Root directory holding config, key, engine and tier state [default: ~/.threefold].
    #[arg(long, env = "QSFS_ROOT")]
    pub root: Option<PathBuf>,
    /// Config file [default: ROOT/qsfs.toml, written the first time].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// File holding the passphrase [default: QSFS_PASSPHRASE, ROOT/qsfs.key, a prompt, or a
    /// generated ROOT/qsfs.key].
    #[arg(long, value_name = "FILE")]
    pub keyfile: Option<PathBuf>,
    /// Address of the Prometheus endpoint [default: the config's `metrics`, else
    /// 127.0.0.1:9109].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Mount options, comma separated: allow_other, ro, rw.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Take over a mount lock held by another host (as `qsfs mount --force`). Not needed
    /// after `qsfs recover`, which is itself the take-over.
    #[arg(long)]
    pub force: bool,
    /// At a clean stop, seal what was written last and wait up to this many seconds for the
    /// backups to be current (0: do not wait; pending uploads go out at the next start).
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    pub drain_timeout: u64,
    /// Serve without uploading anything for this run: the backups fall behind and nothing is
    /// evicted (the local cap is not kept). The upload queue is durable: the next start
    /// without this flag uploads what was written meanwhile. For a machine off the network
    /// for a while, and to measure what offload costs.
    #[arg(long)]
    pub no_offload: bool,
    /// Threads serving requests that wait for the store, as `qsfs mount --threads`.
    #[arg(long, value_name = "N", default_value_t = qsfs_fuse::fetch::DEFAULT_READ_THREADS,
          value_parser = crate::mount::read_threads)]
    pub threads: usize,
    /// Local disk space kept free for deletes and compaction, at most a quarter of the disk
    /// (suffixes K, M, G): writes fail with "No space left on device" rather than use it.
    /// While less than twice this is available, the engine gives back the space of deleted and
    /// overwritten data within seconds.
    #[arg(long, default_value = "64M", value_parser = crate::mount::parse_size)]
    pub reserve: u64,
}

/// Seconds between background compactions of the filesystem's namespaces.
const COMPACT_EVERY: Duration = Duration::from_secs(60);

/// Runs `qsfs up`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let signals = fsmount::block_stop_signals()?;
    let options = crate::mount::mount_options(&args.options, args.threads)?;
    let root = Root::resolve(args.root.clone());
    std::fs::create_dir_all(&root.dir)
        .with_context(|| format!("creating {}", root.dir.display()))?;
    std::fs::create_dir_all(&args.mountpoint)
        .with_context(|| format!("creating mountpoint {}", args.mountpoint.display()))?;
    let (_, config) = chain::load_config(&root, args.config.as_deref(), args.config.is_none())?;
    let keyfile = crate::key::root_keyfile(&root.dir);
    let had_keyfile = keyfile.exists();
    let secret = chain::secret(&config, args.keyfile.as_deref(), &root, Missing::Generate)?;
    let generated = !had_keyfile && keyfile.exists();

    let rt = chain::runtime()?;
    let pipeline = match chain::open_pipeline(&rt, &config, secret) {
        Ok(p) => p,
        Err(e) => {
            // A key generated for a repository that already exists (made with another key)
            // opens nothing: do not leave it behind to be picked up next time.
            if generated {
                let _ = std::fs::remove_file(&keyfile);
                eprintln!(
                    "qsfs: no key given and {} did not exist; a generated one does not open the \
                     repository the backends already hold: pass its key with --keyfile or \
                     QSFS_PASSPHRASE",
                    keyfile.display()
                );
            }
            return Err(e);
        }
    };
    if generated {
        crate::key::warn_generated(&keyfile);
    }
    let initial = chain::probe_backends(&rt, &pipeline);
    let tier = Tier::new(pipeline, &root.tier(), chain::tier_config(&config.chain))
        .map_err(anyhow::Error::from)
        .context("opening the tier state")?;
    let engine_config = qsfs_store::EngineConfig {
        low_space: Some(fsmount::low_space(
            &root.engine(),
            FsConfig::default().reserve,
        )?),
        ..chain::engine_config(fsmount::fs_engine_config(), &config.chain, &tier)
    };
    let engine = fsmount::open_engine(&root.engine(), engine_config)?;
    if args.no_offload {
        eprintln!(
            "qsfs: --no-offload: nothing is uploaded or evicted in this run; the backups fall \
             behind until the next start without it"
        );
    } else {
        tier.start((*engine).clone())
            .map_err(anyhow::Error::from)
            .context("starting the tier")?;
    }
    fsmount::spawn_compactor(&engine, config.chain.compact_every.unwrap_or(COMPACT_EVERY));

    let result = serve(
        &args,
        &options,
        &root,
        &config,
        engine.clone(),
        &tier,
        initial,
        signals,
    );
    // The filesystem is flushed (or failed): seal its last writes and give the tier a bounded
    // time to upload them, then stop it before the engine closes. The queue is durable:
    // whatever is still pending goes out at the next start.
    if result.is_ok() {
        let wait = if args.no_offload {
            Duration::ZERO
        } else {
            Duration::from_secs(args.drain_timeout)
        };
        chain::drain(&engine, &tier, wait);
    }
    tier.shutdown();
    drop(engine);
    result?;
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn serve(
    args: &Args,
    options: &qsfs_fuse::MountOptions,
    root: &Root,
    config: &qsfs_backup::config::Config,
    engine: std::sync::Arc<qsfs_store::Engine>,
    tier: &Tier,
    initial: Vec<qsfs_backup::tier::BackendHealth>,
    signals: nix::sys::signal::SigSet,
) -> anyhow::Result<()> {
    let takeover = root.takeover().exists();
    let fs_config = FsConfig {
        capacity: Capacity::Disk(root.engine()),
        force: args.force || takeover,
        reserve: args.reserve,
        ..FsConfig::default()
    };
    let store: std::sync::Arc<dyn qsfs_core::Store> = engine;
    let fs = Fs::open(store, fs_config).context("opening the filesystem")?;
    if takeover {
        // The lock is this process's now: later starts check it as usual.
        match std::fs::remove_file(root.takeover()) {
            Ok(()) => eprintln!("qsfs: took over the mount lock restored by `qsfs recover`"),
            Err(e) => tracing::warn!("cannot remove {}: {e}", root.takeover().display()),
        }
    }

    let addr = match args.metrics.or(config.chain.metrics) {
        Some(a) => a,
        None => metrics::DEFAULT_ADDR.parse().context("metrics address")?,
    };
    let view_tier = tier.clone();
    let view_initial = initial.clone();
    let sources = metrics::Sources {
        fs: Some(fs.stats()),
        chain: Some(Box::new(move || {
            chain::chain_view(&view_tier, &view_initial)
        })),
    };
    // A second `qsfs up` on the same machine finds the default port taken: it runs without
    // an endpoint rather than not at all.
    let _metrics = match metrics::start(addr, sources) {
        Ok(m) => {
            eprintln!("qsfs: metrics on http://{}/metrics", m.addr());
            Some(m)
        }
        Err(e) => {
            tracing::warn!("no metrics endpoint: {e:#}");
            None
        }
    };
    let _status = StatusWriter::start(
        root.status(),
        args.mountpoint.clone(),
        tier.clone(),
        initial,
        Duration::from_secs(2),
    )?;
    fsmount::serve(fs, &args.mountpoint, options, signals)
}
