//! `qsfs fsck`: checks the filesystem's layout offline and, with `--repair`, fixes it. Only
//! parses and wires: the check is `qsfs_fuse::fsck::check`. Exits 0 when the filesystem is
//! clean (or every problem was repaired), 1 when problems remain.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use qsfs_core::Store;
use qsfs_fuse::layout::{decode, Lock, Namespaces, LOCK_KEY};
use qsfs_store::{Engine, EngineConfig};

/// Arguments of `qsfs fsck`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Root directory holding the engine data (ROOT/engine).
    #[arg(long, env = "QSFS_ROOT")]
    pub root: Option<PathBuf>,
    /// A remote store instead of the embedded engine: zdb://host:port[/namespace].
    #[arg(long)]
    pub store: Option<String>,
    /// Namespace prefix of the filesystem.
    #[arg(long, default_value = "qsfs")]
    pub prefix: String,
    /// Fix what can be fixed (link counts, dangling names, unreachable inodes, block maps).
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn open_store(args: &Args) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(url) = &args.store {
        let client = qsfs_store::remote::ZdbClient::from_url(url)
            .with_context(|| format!("connecting to {}", qsfs_store::remote::redact(url)))?;
        let store: Arc<dyn Store> = Arc::new(client);
        refuse_if_mounted(&*store, &args.prefix)?;
        return Ok(store);
    }
    let dir = crate::root::resolve(args.root.clone()).join("engine");
    if !dir.is_dir() {
        bail!("no qsfs engine in {}", dir.display());
    }
    let config = EngineConfig {
        history_retention: Some(Duration::from_secs(60)),
        max_segment_size: 64 << 20,
        max_segment_age: Some(Duration::from_secs(600)),
        ..EngineConfig::default()
    };
    // The engine's directory lock admits one process: a mounted filesystem holds it, so this
    // open failing is how a mount is detected (a mount lock left by a crash does not matter).
    let engine = Engine::open(&dir, config).with_context(|| {
        format!(
            "cannot open the engine in {}: is the filesystem mounted (or `qsfs serve` running \
             on this root)? Unmount it before running fsck",
            dir.display()
        )
    })?;
    Ok(Arc::new(engine))
}

/// Over a shared server nothing stops a mount from writing meanwhile, so its mount lock decides:
/// fsck runs only when the lock is absent or held by a dead process on this host.
fn refuse_if_mounted(store: &dyn Store, prefix: &str) -> anyhow::Result<()> {
    let ns = Namespaces::new(prefix);
    let entry = match store.get(&ns.sup, LOCK_KEY) {
        Ok(e) => e,
        Err(qsfs_core::Error::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e).context("reading the mount lock"),
    };
    let Some(entry) = entry else { return Ok(()) };
    let lock: Lock = decode(&entry.value, "mount lock")?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let dead = lock.host == host && !lock.pid_alive();
    if !dead {
        bail!(
            "filesystem {prefix:?} is mounted by process {} on host {}: unmount it before \
             running fsck",
            lock.pid,
            lock.host
        );
    }
    Ok(())
}

/// Runs `qsfs fsck`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = open_store(&args)?;
    let report = qsfs_fuse::fsck::check(&*store, &args.prefix, args.repair)
        .context("checking the filesystem")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} inodes, {} dirents, {} listing pages, {} blocks, {} block maps, {} xattr \
             records, {} orphans",
            report.inodes,
            report.dirents,
            report.pages,
            report.blocks,
            report.chunks,
            report.xattrs,
            report.orphans
        );
        for p in &report.problems {
            let tag = if p.repaired { "repaired" } else { "problem" };
            println!("{tag}: {}", p.description);
        }
        let remaining = report.remaining();
        if report.problems.is_empty() {
            println!("clean");
        } else if remaining == 0 {
            println!("{} problems, all repaired", report.problems.len());
        } else {
            println!(
                "{} problems, {remaining} remain{}",
                report.problems.len(),
                if args.repair {
                    ""
                } else {
                    " (run with --repair)"
                }
            );
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
