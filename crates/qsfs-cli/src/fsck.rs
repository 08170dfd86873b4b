//! `qsfs fsck`: checks the filesystem's layout offline and, with `--repair`, fixes it. Only
//! parses and wires: the check is `qsfs_fuse::fsck::check`. Exits 0 when the filesystem is
//! clean (or every problem was repaired), 1 when problems remain.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use qsfs_core::Store;
use qsfs_fuse::fsck::{FsckReport, Problem, Salvage};
use qsfs_fuse::layout::{decode, Lock, Namespaces, LOCK_KEY};
use qsfs_store::{Engine, EngineConfig};

/// Arguments of `qsfs fsck`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Root directory holding the engine data (ROOT/engine).
    #[arg(long, env = "QSFS_ROOT")]
    pub root: Option<PathBuf>,
    /// A remote store instead of the embedded engine: zdb://[PASSWORD@]host:port[/namespace]
    /// or zdb+unix://[PASSWORD@]/path/to/socket[#namespace]. A URL with a password is better
    /// given in QSFS_STORE than on the command line, where any user can read it (`ps`).
    #[arg(long, env = "QSFS_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Namespace prefix of the filesystem.
    #[arg(long, default_value = "qsfs")]
    pub prefix: String,
    /// Fix what can be fixed: link counts, dangling names, unreachable inodes (to /lost+found),
    /// block maps; records that fail their checksum or do not decode are restored from their
    /// newest intact older version, else rebuilt (a minimal inode from its names: mode 0600 or
    /// 0700, owner of its directory, size from its stored blocks). Damaged data blocks and
    /// symlinks with no intact version are reported, never replaced or made up.
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

/// The line tag of a problem: what repair did to it, or that it remains.
fn tag(p: &Problem) -> &'static str {
    match (p.repaired, p.salvage) {
        (false, _) => "problem",
        (true, Some(Salvage::Restored)) => "restored",
        (true, Some(Salvage::Rebuilt)) => "rebuilt",
        (true, None) => "repaired",
    }
}

/// ", R damaged records restored, B rebuilt" for a repair that brought damaged records back.
fn salvaged(report: &FsckReport) -> String {
    let count = |how| {
        report
            .problems
            .iter()
            .filter(|p| p.repaired && p.salvage == Some(how))
            .count()
    };
    let (restored, rebuilt) = (count(Salvage::Restored), count(Salvage::Rebuilt));
    if restored + rebuilt == 0 {
        return String::new();
    }
    format!(
        " ({} damaged records: {restored} restored from an older version, {rebuilt} rebuilt)",
        restored + rebuilt
    )
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
            println!("{}: {}", tag(p), p.description);
        }
        let remaining = report.remaining();
        let salvaged = salvaged(&report);
        if report.problems.is_empty() {
            println!("clean");
        } else if remaining == 0 {
            println!("{} problems, all repaired{salvaged}", report.problems.len());
        } else {
            println!(
                "{} problems, {remaining} remain{salvaged}{}",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(repaired: bool, salvage: Option<Salvage>) -> Problem {
        Problem {
            description: "x".into(),
            repaired,
            salvage,
        }
    }

    #[test]
    fn restored_and_rebuilt_records_are_tagged_and_counted() {
        let report = FsckReport {
            problems: vec![
                problem(true, Some(Salvage::Restored)),
                problem(true, Some(Salvage::Rebuilt)),
                problem(true, Some(Salvage::Restored)),
                problem(true, None),
                problem(false, Some(Salvage::Rebuilt)),
                problem(false, None),
            ],
            ..FsckReport::default()
        };
        let tags: Vec<&str> = report.problems.iter().map(tag).collect();
        assert_eq!(
            tags,
            ["restored", "rebuilt", "restored", "repaired", "problem", "problem"]
        );
        assert_eq!(
            salvaged(&report),
            " (3 damaged records: 2 restored from an older version, 1 rebuilt)"
        );
        assert_eq!(salvaged(&FsckReport::default()), "");
    }
}
