//! `qsfs serve`: the 0-db-compatible server. Parses the original's flags (spec Appendix A) and
//! wires [`qsfs_store::Engine`] to [`qsfs_store::server`]; all behaviour lives in the library.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use qsfs_core::Mode;
use qsfs_store::server::hooks::Hooks;
use qsfs_store::server::{Server, ServerConfig};
use qsfs_store::{Durability, Engine, EngineConfig};

/// Arguments of `qsfs serve` (the original 0-db flags; `-flag` works like `--flag`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TCP address to listen on [default: 127.0.0.1].
    #[arg(long, value_name = "ADDR")]
    listen: Option<IpAddr>,
    /// TCP port [default: 9900].
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Unix socket path; replaces TCP unless --dualnet, --listen or --port is given too.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// With --socket: listen on TCP as well.
    #[arg(long)]
    dualnet: bool,
    /// Data directory.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./zdb-data",
        env = "DATADIR"
    )]
    data: PathBuf,
    /// Index directory (accepted for compatibility; qsfs keeps its index beside the data).
    #[arg(long, value_name = "DIR", env = "INDEXDIR")]
    index: Option<PathBuf>,
    /// Key mode of every namespace: user, seq (or direct = seq). Absent = mixed.
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// Segment (data file) rotation size: bytes or k/M/G/T suffix, at least 512 KiB.
    #[arg(long, value_name = "SIZE", env = "DATASIZE")]
    datasize: Option<String>,
    /// Admin password.
    #[arg(long, value_name = "PASS", env = "ADMIN", hide_env_values = true)]
    admin: Option<String>,
    /// Write-protect `default` with the admin password (needs --admin).
    #[arg(long, env = "PROTECT")]
    protect: bool,
    /// Size limit of the `default` namespace in bytes.
    #[arg(long, value_name = "BYTES")]
    maxsize: Option<u64>,
    /// Rotate the segment of a changed namespace every SEC seconds.
    #[arg(long, value_name = "SEC")]
    rotate: Option<u64>,
    /// fsync every write before acknowledging it.
    #[arg(long)]
    sync: bool,
    /// fsync at most every SEC seconds.
    #[arg(long, value_name = "SEC")]
    synctime: Option<u64>,
    /// fsync before rotations (always done by qsfs; accepted).
    #[arg(long)]
    secure: bool,
    /// Hook executable run on events.
    #[arg(long, value_name = "EXE")]
    hook: Option<PathBuf>,
    /// Accepted for compatibility; set QSFS_LOG=debug for debug logging.
    #[arg(long)]
    verbose: bool,
    /// Most clients served at once.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_connections: usize,
    /// Only accept full command names (no 0-db prefix matching).
    #[arg(long)]
    strict_commands: bool,
    /// Threads serving connections, each with its own event loop; a client stays on the one
    /// it was given [default: one per core]. A read that has to wait (the missing-data hook,
    /// the cold tier) runs on a pool of its own and holds up only its own client.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Seconds between background compactions, which give back the disk space of overwritten
    /// and deleted values (0: never, as the original 0-db, whose disk only grows). While the
    /// disk is low, compaction also runs every second.
    #[arg(long, value_name = "SEC", default_value_t = 60)]
    compact_every: u64,
    /// Seconds an overwritten or deleted value stays reachable with HISTORY before compaction
    /// may drop it, or `forever` (the original 0-db's behaviour: then nothing is compacted).
    #[arg(long, value_name = "SEC|forever", default_value = "86400")]
    keep_history: String,
    /// Disk space SETs leave free for deletes and compaction, at most a quarter of the disk
    /// (suffixes k, M, G, T): a SET that would use it fails with "No space left on this
    /// namespace", so a disk that clients filled can still take their DELs and give the space
    /// back. Default: one segment (--datasize) and a sixteenth, what compaction needs to rewrite
    /// any segment; 0 lets SETs fill the disk, as the original 0-db.
    #[arg(long, value_name = "BYTES")]
    reserve: Option<String>,
    /// Not supported: run under a supervisor instead.
    #[arg(long, hide = true)]
    background: bool,
    /// Not supported (only with --background).
    #[arg(long, hide = true, value_name = "FILE")]
    logfile: Option<PathBuf>,
    /// Not supported.
    #[arg(long, hide = true)]
    dump: bool,
    /// Back the engine up through this backup config (the storage chain of `qsfs up`, in the
    /// server process): sealed segments are uploaded, evicted beyond the config's `local_cap`
    /// and fetched back on read.
    #[arg(long, value_name = "FILE")]
    backup_config: Option<PathBuf>,
    /// With --backup-config: file holding the passphrase (else QSFS_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE", requires = "backup_config")]
    keyfile: Option<PathBuf>,
    /// With --backup-config: directory of the upload state [default: DATA.tier].
    #[arg(long, value_name = "DIR", requires = "backup_config")]
    tier_state: Option<PathBuf>,
    /// With --backup-config: address of the Prometheus endpoint [default: the config's
    /// `metrics`, else 127.0.0.1:9109].
    #[arg(long, value_name = "ADDR", requires = "backup_config")]
    metrics: Option<SocketAddr>,
}

/// The storage chain of a server started with `--backup-config`.
struct Chain {
    tier: qsfs_backup::tier::Tier,
    _metrics: Option<crate::metrics::MetricsServer>,
}

/// Opens the backup pipeline and the tier, and plugs them into `engine`'s config.
fn open_chain(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    engine: &mut EngineConfig,
) -> anyhow::Result<Option<Chain>> {
    let Some(path) = &args.backup_config else {
        return Ok(None);
    };
    let config = qsfs_backup::config::Config::load(path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("loading {}", path.display()))?;
    let secret = if config.key.is_some() {
        None
    } else {
        Some(crate::key::read_secret(
            args.keyfile.as_deref(),
            crate::key::PASSPHRASE_ENV,
            "qsfs backup passphrase: ",
        )?)
    };
    let pipeline = crate::chain::open_pipeline(rt, &config, secret)?;
    let initial = crate::chain::probe_backends(rt, &pipeline);
    let state = args.tier_state.clone().unwrap_or_else(|| {
        let mut s = args.data.clone().into_os_string();
        s.push(".tier");
        PathBuf::from(s)
    });
    let tier =
        qsfs_backup::tier::Tier::new(pipeline, &state, crate::chain::tier_config(&config.chain))
            .map_err(anyhow::Error::from)
            .context("opening the tier state")?;
    let mut chain = config.chain.clone();
    if args.datasize.is_some() {
        // An explicit --datasize wins over the config's segment_size.
        chain.segment_size = Some(engine.max_segment_size);
    }
    *engine = crate::chain::engine_config(engine.clone(), &chain, &tier);
    let addr = match args.metrics.or(config.chain.metrics) {
        Some(a) => a,
        None => crate::metrics::DEFAULT_ADDR
            .parse()
            .context("metrics address")?,
    };
    let view = tier.clone();
    let sources = crate::metrics::Sources {
        fs: None,
        chain: Some(Box::new(move || crate::chain::chain_view(&view, &initial))),
    };
    let metrics = match crate::metrics::start(addr, sources) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("no metrics endpoint: {e:#}");
            None
        }
    };
    Ok(Some(Chain {
        tier,
        _metrics: metrics,
    }))
}

/// The original accepts long options with one dash (`-port 9900`); turns them into `--port`.
/// Call on the process arguments before parsing.
pub fn normalize_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    const LONG: [&str; 22] = [
        "listen",
        "port",
        "socket",
        "dualnet",
        "data",
        "index",
        "mode",
        "datasize",
        "admin",
        "protect",
        "maxsize",
        "rotate",
        "sync",
        "synctime",
        "secure",
        "hook",
        "verbose",
        "background",
        "logfile",
        "dump",
        "help",
        "version",
    ];
    args.into_iter()
        .map(|a| match a.to_str() {
            Some(s) if s.starts_with('-') && !s.starts_with("--") && LONG.contains(&&s[1..]) => {
                format!("-{s}").into()
            }
            _ => a,
        })
        .collect()
}

/// Parses `--datasize`: plain bytes or a `k`/`M`/`G`/`T` suffix (case-sensitive, as 0-db).
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        Some('T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("invalid size {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} too large"))
}

/// The most event-loop threads `--workers` accepts (each has its own runtime and descriptors).
const MAX_WORKERS: usize = 1024;

fn build_config(args: &Args) -> anyhow::Result<(ServerConfig, EngineConfig)> {
    if args.background || args.logfile.is_some() || args.dump {
        bail!("--background, --logfile and --dump are not supported: run qsfs serve under a supervisor");
    }
    if args.protect && args.admin.is_none() {
        bail!("--protect needs --admin");
    }
    if args.workers.is_some_and(|n| n == 0 || n > MAX_WORKERS) {
        bail!("--workers must be between 1 and {MAX_WORKERS}");
    }
    let mode = match args.mode.as_deref() {
        None | Some("mix") | Some("mixed") => None,
        Some("user") => Some(Mode::User),
        Some("seq") => Some(Mode::Seq),
        Some("direct") => {
            tracing::warn!("--mode direct is deprecated, using seq");
            Some(Mode::Seq)
        }
        Some(other) => bail!("invalid mode {other:?} (expected user or seq)"),
    };
    let mut engine = EngineConfig::default();
    if let Some(ds) = &args.datasize {
        let size = parse_size(ds)?;
        if size < 512 * 1024 {
            bail!("--datasize must be at least 512 KiB");
        }
        engine.max_segment_size = size;
    }
    engine.durability = if args.sync {
        // Every write synced before its reply, as 0-db's --sync; concurrent clients share syncs.
        Durability::Group
    } else if let Some(s) = args.synctime {
        Durability::Periodic(Duration::from_secs(s.max(1)))
    } else {
        engine.durability
    };
    if let Some(m) = mode {
        engine.default_mode = m;
        engine.single_mode = Some(m);
    }
    engine.write_reserve = match &args.reserve {
        Some(r) => parse_size(r)?,
        None => engine.max_segment_size + engine.max_segment_size / 16 + (64 << 10),
    };
    engine.history_retention = match args.keep_history.as_str() {
        "forever" => None,
        s => Some(Duration::from_secs(s.parse().map_err(|_| {
            anyhow::anyhow!("--keep-history must be seconds or \"forever\", not {s:?}")
        })?)),
    };
    let tcp_wanted =
        args.socket.is_none() || args.dualnet || args.listen.is_some() || args.port.is_some();
    let tcp = tcp_wanted.then(|| {
        SocketAddr::new(
            args.listen.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            args.port.unwrap_or(9900),
        )
    });
    let server = ServerConfig {
        tcp,
        socket: args.socket.clone(),
        admin_password: args.admin.clone(),
        protect: args.protect,
        mode,
        default_maxsize: args.maxsize,
        rotate_every: args.rotate.map(|s| Duration::from_secs(s.max(1))),
        hook: args.hook.clone(),
        index_root: args.index.clone().unwrap_or_else(|| args.data.clone()),
        data_root: args.data.clone(),
        max_connections: args.max_connections.max(1),
        strict_commands: args.strict_commands,
        workers: args.workers.unwrap_or(0),
        ..ServerConfig::default()
    };
    Ok((server, engine))
}

/// Tells the hook about sealed segments (0-db's `jump-index` / `jump-data`).
struct HookObserver {
    hooks: Hooks,
}

impl qsfs_store::EngineObserver for HookObserver {
    fn on_segment_sealed(&self, _ns: &str, segment: u32, path: &Path) {
        // qsfs has no index files of its own per segment: the index snapshot stands for them.
        let dir = path.parent().unwrap_or(Path::new("."));
        let next = dir.join(format!("{:010}.seg", u64::from(segment) + 1));
        let index = dir.join("index").display().to_string();
        let (old, new) = (path.display().to_string(), next.display().to_string());
        self.hooks
            .fire("jump-index", vec![index.clone(), index, String::new()]);
        self.hooks.fire("jump-data", vec![old, new]);
    }

    fn on_segment_missing(&self, _ns: &str, _segment: u32, path: &Path) -> bool {
        // Blocking, as the original: the hook is expected to put the file back; 0 = retry.
        self.hooks
            .run("missing-data", vec![path.display().to_string()])
            == Some(0)
    }
}

/// Test-only: set to anything, `qsfs serve` panics once it is ready, so tests can check what a
/// panic does (the `crash` hook, then abort). Read from the environment at start-up only:
/// nothing a client sends can reach it.
const TEST_PANIC_ENV: &str = "QSFS_TEST_PANIC_AFTER_READY";

/// Makes any panic in the server fatal, after firing the `crash` hook (0-db fires it on
/// SIGSEGV; a panic is Rust's equivalent). A panicked task would otherwise leave the others
/// serving from state it may have left half-changed; the engine is crash-safe, so aborting and
/// letting the supervisor restart is the safe choice. The hook is not waited for, as in 0-db.
fn install_crash_hook(hooks: &Hooks) {
    let hooks = hooks.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        hooks.fire_detached("crash");
        std::process::abort();
    }));
}

/// Runs `qsfs serve`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, mut engine_config) = build_config(&args)?;
    let hooks = Hooks::new(config.hook.clone(), config.instance_id());
    install_crash_hook(&hooks);
    let test_panic = std::env::var_os(TEST_PANIC_ENV).is_some();
    hooks.run(
        "namespaces-init",
        vec![
            config.index_root.display().to_string(),
            config.data_root.display().to_string(),
        ],
    );
    if hooks.enabled() {
        if args.backup_config.is_some() {
            bail!("--hook and --backup-config cannot be combined: the backup tier is the engine's observer");
        }
        engine_config.observer = Some(Arc::new(HookObserver {
            hooks: hooks.clone(),
        }));
    }
    let rt = crate::chain::runtime()?;
    let chain = open_chain(&args, &rt, &mut engine_config)?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("create {}", args.data.display()))?;
    let engine = Engine::open(&args.data, engine_config).context("open the engine")?;
    let served = Arc::new(engine.clone());
    if args.compact_every > 0 {
        // Holds the engine only while it works: it ends once the server has let go of it.
        qsfs_store::spawn_compactor(&served, Duration::from_secs(args.compact_every), |_| true)
            .context("starting the compactor")?;
    }
    if let Some(c) = &chain {
        c.tier
            .start(engine.clone())
            .map_err(anyhow::Error::from)
            .context("starting the tier")?;
    }
    let drain_engine = engine.clone();
    let result = rt.block_on(async move {
        // Installed before the first client can be answered: a client that sees the server
        // ready and sends SIGTERM must get the clean stop, not the default action of the signal.
        use tokio::signal::unix::{signal, SignalKind};
        let signals = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        let server = Server::bind(served, config).await.context("listen")?;
        if let Err(e) = server.ready_hook() {
            bail!("{e}");
        }
        let handle = server.spawn();
        tracing::info!(addr = ?handle.local_addr, socket = ?handle.socket, "qsfs serve ready");
        if test_panic {
            // In a task, like a bug in a connection would.
            tokio::spawn(async { panic!("{TEST_PANIC_ENV} is set") });
        }
        let stop = handle.shutdown_sender();
        tokio::spawn(async move {
            let (Ok(mut term), Ok(mut int)) = signals else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received, shutting down");
            let _ = stop.send(true);
        });
        handle.wait().await.context("shutdown")?;
        Ok(ExitCode::SUCCESS)
    });
    if let Some(c) = chain {
        // Seal the last writes and give them a bounded time to reach the backups; the upload
        // queue is durable: what is still pending goes out at the next start.
        if result.is_ok() {
            crate::chain::drain(&drain_engine, &c.tier, Duration::from_secs(20));
        }
        c.tier.shutdown();
    }
    drop(drain_engine);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512k").unwrap(), 512 * 1024);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("64m").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn single_dash_long_options() {
        let a = normalize_args(["qsfs", "serve", "-port", "9901", "-v", "--sync"].map(Into::into));
        let a: Vec<String> = a.into_iter().map(|s| s.into_string().unwrap()).collect();
        assert_eq!(a, ["qsfs", "serve", "--port", "9901", "-v", "--sync"]);
    }
}
