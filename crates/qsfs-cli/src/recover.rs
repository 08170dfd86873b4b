//! `qsfs recover`: rebuilds a root's engine from the backups alone (the namespaces' recovery
//! manifests and the engine's seal key), on a fresh machine with only the config and the key.
//! No segment data is read: `qsfs up` afterwards serves every file, fetching data on read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::chain::{self, Root};
use crate::key::Missing;

/// Arguments of `qsfs recover`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Root directory to restore into [default: ~/.threefold].
    #[arg(long, env = "QSFS_ROOT")]
    pub root: Option<PathBuf>,
    /// Config file [default: ROOT/qsfs.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// File holding the passphrase [default: QSFS_PASSPHRASE, ROOT/qsfs.key, a prompt].
    #[arg(long, value_name = "FILE")]
    pub keyfile: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn non_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// Runs `qsfs recover`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = Root::resolve(args.root.clone());
    let engine_dir = root.engine();
    if non_empty_dir(&engine_dir) {
        bail!(
            "{} exists and is not empty: recover only restores into an empty root (move it away \
             first if you mean to replace it)",
            engine_dir.display()
        );
    }
    if non_empty_dir(&root.tier()) {
        bail!(
            "{} holds the upload state of another engine: remove it before recovering",
            root.tier().display()
        );
    }
    if args.config.is_none() && !root.config().exists() {
        bail!(
            "no config: pass --config FILE or put it at {}",
            root.config().display()
        );
    }
    let (_, config) = chain::load_config(&root, args.config.as_deref(), false)?;
    let secret = chain::secret(&config, args.keyfile.as_deref(), &root, Missing::Fail)?;
    let rt = chain::runtime()?;
    let pipeline = chain::open_pipeline(&rt, &config, secret)?;
    let report = rt
        .block_on(qsfs_backup::tier::recover(&pipeline, &engine_dir))
        .map_err(anyhow::Error::from)
        .with_context(|| format!("recovering into {}", engine_dir.display()))?;
    // The filesystem comes back with the mount lock of the machine that was lost, which
    // would make `up` refuse it (another host's lock). Recovering is the explicit take-over.
    std::fs::write(
        root.takeover(),
        "written by `qsfs recover`: the next `qsfs up` takes over the restored mount lock\n",
    )
    .with_context(|| format!("writing {}", root.takeover().display()))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "namespaces": report.namespaces,
                "segments": report.segments,
                "logical_bytes": report.logical_bytes,
                "elapsed_ms": report.elapsed.as_millis() as u64,
                "mount_lock": "taken over by the next qsfs up",
            }))?
        );
    } else {
        println!(
            "recovered {} namespace(s), {} segment(s) ({} bytes, left in the backups) in {:.2} s",
            report.namespaces,
            report.segments,
            report.logical_bytes,
            report.elapsed.as_secs_f64()
        );
        println!(
            "the mount lock restored with the filesystem (the lost machine's) is taken over by \
             the next `qsfs up` of this root: make sure the old machine is really gone"
        );
        println!("now run `qsfs up MOUNTPOINT` with the same root to serve it");
    }
    Ok(ExitCode::SUCCESS)
}
