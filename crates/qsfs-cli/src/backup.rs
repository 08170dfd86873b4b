//! `qsfs backup`: parses arguments, loads the config, opens the pipeline and prints what the
//! library's operations (`qsfs_backup::ops`) return. Exit status 0 only on full success.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use qsfs_backup::config::{Config, ZdbConnector, ZdbSpec};
use qsfs_backup::ops::{self, RetrieveOptions, ScrubOptions};
use qsfs_backup::pipeline::Pipeline;
use qsfs_backup::progress::Progress;
use qsfs_backup::stripe::ShardHash;
use qsfs_store::remote::LazyZdbBackend;

use crate::key::read_secret;

/// Opens `zdb://` and 0-stor v2 backends with qsfs-store's 0-db client. The connection is made
/// on first use, off the async workers: a node that is down when the repository is opened is
/// one missing shard, not a failed command.
pub struct ZdbConnect;

impl ZdbConnector for ZdbConnect {
    fn connect(&self, spec: &ZdbSpec) -> qsfs_core::Result<Arc<dyn qsfs_core::Backend>> {
        Ok(Arc::new(LazyZdbBackend::new(
            &spec.address,
            &spec.namespace,
            spec.password.clone(),
        )?))
    }
}

/// Arguments of `qsfs backup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file: a qsfs backup config or a 0-stor v2 config (detected by its fields).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// File holding the repository passphrase (else `QSFS_PASSPHRASE`, else a prompt).
    #[arg(long, value_name = "FILE", global = true)]
    keyfile: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Store files or directories (recursively); `-` reads standard input (needs --name).
    Store {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Object name for standard input: a path, resolved as `retrieve` resolves its PATH
        /// (relative to the current directory, `..` and `.` folded), so the same words find it.
        #[arg(long)]
        name: Option<String>,
        /// Confirm every shard on its backend as it is written (a 0-db node checks its copy
        /// against the CRC of what was sent; other backends read it back). Same as
        /// `verify_writes = true` in the config.
        #[arg(long)]
        verify: bool,
    },
    /// Retrieve an object to its path, or to OUT (`-` = standard output). A directory that
    /// was stored comes back whole: every file under it, to its path or under OUT.
    Retrieve {
        /// The path it was stored from.
        path: PathBuf,
        /// Where to write it.
        #[arg(short = 'o', long = "out", value_name = "OUT")]
        out: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
        /// Only bytes START..END.
        #[arg(long, value_name = "START..END")]
        range: Option<String>,
    },
    /// Check one object or all: records readable, shards present (--deep: read and verified).
    Check {
        /// The object (default: all).
        path: Option<PathBuf>,
        /// Read and verify every shard.
        #[arg(long)]
        deep: bool,
    },
    /// Re-create missing or corrupt shards of one object, or of all with --all.
    Rebuild {
        /// The object.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        path: Option<PathBuf>,
        /// Every object.
        #[arg(long)]
        all: bool,
    },
    /// List stored objects with size and health.
    List,
    /// Show every backend: reachable, latency, used, free.
    Status,
    /// Deep-check and repair everything; resumable, rate-limited.
    Scrub {
        /// Average read rate limit in MiB/s.
        #[arg(long, value_name = "MIB_PER_S")]
        rate: Option<u64>,
        /// Where the resume cursor is kept (default: CONFIG.scrub-state).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Ignore a saved cursor and start from the beginning.
        #[arg(long)]
        restart: bool,
    },
    /// Delete an object.
    Delete {
        /// The object.
        path: PathBuf,
    },
    /// Remove superseded and orphaned shards and old record versions.
    Gc,
    /// Change the passphrase (re-wraps the repository key; no data is re-encrypted).
    ChangePassphrase {
        /// File holding the new passphrase (else `QSFS_NEW_PASSPHRASE`, else a prompt).
        #[arg(long, value_name = "FILE")]
        new_keyfile: Option<PathBuf>,
    },
}

/// Runs `qsfs backup`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(qsfs_backup::pipeline::BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

/// Progress bars on standard error (when it is a terminal): one bar per file, or for a
/// directory one bar for all of it, counting files, since its small files move at once.
struct Bars {
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    /// (files done, files in all) of the directory under way.
    batch: std::sync::Mutex<Option<(u64, u64)>>,
    enabled: bool,
    hidden: bool,
}

impl Bars {
    fn new(enabled: bool) -> Self {
        Bars {
            bar: std::sync::Mutex::new(None),
            batch: std::sync::Mutex::new(None),
            enabled: enabled && std::io::stderr().is_terminal(),
            hidden: false,
        }
    }

    fn show(&self, what: &str, total: Option<u64>) {
        let bar = match total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::new_spinner(),
        };
        if self.hidden {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:30!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }

    /// Removes the bar (the operation ended, perhaps before every file was reported).
    fn clear(&self) {
        if let Ok(mut b) = self.batch.lock() {
            *b = None;
        }
        if let Ok(mut b) = self.bar.lock() {
            if let Some(b) = b.take() {
                b.finish_and_clear();
            }
        }
    }

    fn in_batch(&self) -> bool {
        self.batch.lock().is_ok_and(|b| b.is_some())
    }

    /// Counts one file of the directory done; the bar goes once all are.
    fn one_done(&self) {
        let Ok(mut batch) = self.batch.lock() else {
            return;
        };
        let Some((done, all)) = batch.as_mut() else {
            return;
        };
        *done += 1;
        let (done, all) = (*done, *all);
        drop(batch);
        if done >= all {
            self.clear();
        } else if let Ok(b) = self.bar.lock() {
            if let Some(b) = b.as_ref() {
                b.set_message(format!("{done}/{all} files"));
            }
        }
    }
}

impl Progress for Bars {
    fn start(&self, what: &str, total: Option<u64>) {
        if self.enabled && !self.in_batch() {
            self.show(what, total);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Ok(b) = self.bar.lock() {
            if let Some(b) = b.as_ref() {
                b.inc(bytes);
            }
        }
    }

    fn finish(&self, _what: &str) {
        if self.in_batch() {
            self.one_done();
        } else {
            self.clear();
        }
    }

    fn batch(&self, units: u64, bytes: u64) {
        if !self.enabled || units == 0 {
            return;
        }
        self.show(&format!("0/{units} files"), Some(bytes));
        if let Ok(mut b) = self.batch.lock() {
            *b = Some((0, units));
        }
    }

    fn skip(&self, _what: &str, bytes: u64) {
        if self.in_batch() {
            self.advance(bytes);
            self.one_done();
        }
    }
}

fn parse_range(s: &str) -> anyhow::Result<std::ops::Range<u64>> {
    let (a, b) = s.split_once("..").context("range must be START..END")?;
    let a: u64 = a.parse().context("range start")?;
    let b: u64 = b.parse().context("range end")?;
    if b < a {
        bail!("range end {b} is before its start {a}");
    }
    Ok(a..b)
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn human(bytes: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// The text form of a rebuild: one line per object that was not clean, then the totals.
fn print_rebuild(r: &ops::RebuildReport) {
    use ops::RebuildStatus as S;
    for o in &r.objects {
        let rep = &o.report;
        let done = format!(
            "{} shard(s) re-created ({}), {} moved, {} metadata replica(s) restored",
            rep.rewritten,
            human(rep.bytes_rewritten),
            rep.moved,
            rep.metadata_replicas
        );
        match o.status {
            S::Clean => {}
            S::Repaired => println!("REPAIRED  {}: {done}", rep.name),
            S::Partial => println!(
                "PARTIAL   {}: {done}; {} lost shard(s) not placed, {} not verified",
                rep.name,
                rep.unplaced.len(),
                rep.not_verified.len()
            ),
            S::Failed => println!(
                "FAILED    {}: {}; before that: {done}",
                rep.name,
                o.error.as_deref().unwrap_or("error")
            ),
        }
        if o.status != S::Clean && !rep.unreachable_backends.is_empty() {
            println!(
                "          unreachable: {}",
                rep.unreachable_backends.join(", ")
            );
        }
    }
    for e in &r.unreadable_records {
        println!("UNREADABLE {e}");
    }
    println!(
        "rebuild: {} object(s) checked: {} clean, {} repaired, {} partial, {} failed; \
         {} shard(s) re-created ({}), {} moved, {} metadata replica(s) restored",
        r.objects_checked,
        r.objects_clean,
        r.objects_repaired,
        r.objects_partial,
        r.objects_failed,
        r.shards_rewritten,
        human(r.bytes_rewritten),
        r.shards_moved,
        r.metadata_replicas
    );
    if !r.unreachable_backends.is_empty() {
        println!(
            "unreachable backends: {}",
            r.unreachable_backends.join(", ")
        );
    }
}

/// Prints what a directory retrieve did, one line per file; fails if any file failed.
fn retrieved_tree(
    results: &[(String, qsfs_core::Result<ops::RetrieveReport>)],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ok = results.iter().all(|(_, r)| r.is_ok());
    if json {
        let files: Vec<serde_json::Value> = results
            .iter()
            .map(|(name, r)| match r {
                Ok(rep) => serde_json::json!({ "name": name, "ok": true, "report": rep }),
                Err(e) => serde_json::json!({ "name": name, "ok": false, "error": e.to_string() }),
            })
            .collect();
        print_json(&serde_json::json!({ "files": files, "ok": ok }))?;
        return Ok(code(ok));
    }
    for (name, r) in results {
        match r {
            Ok(rep) => {
                for p in &rep.problems {
                    eprintln!("warning: {p}");
                }
                println!("retrieved {name} ({})", human(rep.bytes));
            }
            Err(e) => eprintln!("failed {name}: {e}"),
        }
    }
    Ok(code(ok))
}

fn code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run_async(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(&args.config).map_err(anyhow::Error::from)?;
    // Format 5: an uncompressed stripe's plaintext is covered by its AEAD tag, with no second
    // hash, and shards carry XXH3 checksums. Every format is read. The storage chain uses
    // format 3, whose plaintext checksums the tier recomputes from what it reads (see
    // `chain::open_pipeline`).
    config.settings.format = ShardHash::Xxh3Tag;
    if let Command::Store { verify: true, .. } = args.command {
        config.settings.verify_writes = true;
    }
    // Only a store starts a repository: any other command over metadata backends without a
    // header says so instead of making one with whatever passphrase it was given.
    config.settings.create = matches!(args.command, Command::Store { .. });
    let secret = if config.key.is_some() {
        None
    } else {
        Some(read_secret(
            args.keyfile.as_deref(),
            "QSFS_PASSPHRASE",
            "qsfs backup passphrase: ",
        )?)
    };
    let pipeline = config.open(secret.clone(), Some(&ZdbConnect)).await?;
    let progress = Bars::new(!args.quiet && !args.json);
    let json = args.json;
    match args.command {
        Command::Store { paths, name, .. } => {
            store(&pipeline, &config, &paths, name, &progress, json).await
        }
        Command::Retrieve {
            path,
            out,
            force,
            range,
        } => {
            let name = config.object_name(&path)?;
            let range = range.as_deref().map(parse_range).transpose()?;
            let report = match out.as_deref() {
                Some(o) if o == Path::new("-") => {
                    ops::retrieve_to_writer(
                        &pipeline,
                        &name,
                        Box::new(std::io::stdout()),
                        range,
                        &progress,
                    )
                    .await?
                }
                other => {
                    let root = other
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| config.local_path(&name));
                    let target = match other {
                        Some(o) => ops::file_target(&name, o),
                        None => root.clone(),
                    };
                    let opts = RetrieveOptions { force, range };
                    match ops::retrieve_to_path(&pipeline, &name, &target, &opts, &progress).await {
                        // Not an object: maybe a directory that was stored.
                        Err(qsfs_core::Error::NotFound(_)) if opts.range.is_none() => {
                            let results =
                                ops::retrieve_tree(&pipeline, &name, &root, &opts, &progress).await;
                            progress.clear();
                            return retrieved_tree(&results?, json);
                        }
                        r => r?,
                    }
                }
            };
            for p in &report.problems {
                eprintln!("warning: {p}");
            }
            if report.repaired > 0 {
                eprintln!("repaired {} shard(s) of {name}", report.repaired);
            }
            if json {
                print_json(&report)?;
            } else if out.as_deref() != Some(Path::new("-")) {
                println!("retrieved {name} ({})", human(report.bytes));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { path, deep } => {
            let name = path.as_deref().map(|p| config.object_name(p)).transpose()?;
            let (results, unreadable) = ops::check(&pipeline, name.as_deref(), deep).await?;
            let ok = unreadable.is_empty() && results.iter().all(|h| h.is_clean());
            if json {
                let bad: Vec<String> = unreadable.iter().map(|e| e.to_string()).collect();
                print_json(
                    &serde_json::json!({ "objects": results, "unreadable_records": bad, "ok": ok }),
                )?;
            } else {
                for h in &results {
                    let state = if h.is_clean() {
                        "ok"
                    } else if h.margin >= 0 {
                        "DEGRADED"
                    } else {
                        "LOST"
                    };
                    println!(
                        "{state:9} {} ({} stripes, margin {})",
                        h.name,
                        h.stripes,
                        h.margin.min(999)
                    );
                    for p in &h.problems {
                        println!("          {p}");
                    }
                }
                for e in &unreadable {
                    println!("UNREADABLE {e}");
                }
            }
            Ok(code(ok))
        }
        Command::Rebuild { path, all } => {
            let name = if all {
                None
            } else {
                path.as_deref().map(|p| config.object_name(p)).transpose()?
            };
            let report = ops::rebuild_report(&pipeline, name.as_deref()).await?;
            if json {
                print_json(&report)?;
            } else {
                print_rebuild(&report);
            }
            Ok(code(report.is_complete()))
        }
        Command::List => {
            let (entries, unreadable) = ops::list(&pipeline).await?;
            if json {
                let bad: Vec<String> = unreadable.iter().map(|e| e.to_string()).collect();
                print_json(&serde_json::json!({ "objects": entries, "unreadable_records": bad }))?;
            } else {
                for e in &entries {
                    println!(
                        "{:9} {:>10} v{:<4} {}+{} {}",
                        e.health,
                        human(e.size),
                        e.version,
                        e.k,
                        e.m,
                        e.name
                    );
                }
                for e in &unreadable {
                    println!("UNREADABLE {e}");
                }
            }
            Ok(code(unreadable.is_empty()))
        }
        Command::Status => {
            let rows = ops::status(&pipeline).await;
            let ok = rows.iter().all(|r| r.status == "up");
            if json {
                print_json(&rows)?;
            } else {
                println!(
                    "{:5} {:40} {:5} {:8} {:>10} {:>10} {:>10}",
                    "role", "backend", "group", "status", "latency", "used", "free"
                );
                for r in &rows {
                    let opt = |v: Option<u64>| v.map(human).unwrap_or_else(|| "-".into());
                    println!(
                        "{:5} {:40} {:5} {:8} {:>8.1}ms {:>10} {:>10} {}",
                        r.role,
                        r.name,
                        r.group.map(|g| g.to_string()).unwrap_or_default(),
                        r.status,
                        r.latency_ms,
                        opt(r.used_bytes),
                        opt(r.free_bytes),
                        r.detail
                    );
                }
            }
            Ok(code(ok))
        }
        Command::Scrub {
            rate,
            state,
            restart,
        } => {
            let state = state.unwrap_or_else(|| {
                let mut s = args.config.clone().into_os_string();
                s.push(".scrub-state");
                PathBuf::from(s)
            });
            let resume_after = if restart {
                None
            } else {
                std::fs::read_to_string(&state)
                    .ok()
                    .map(|s| s.trim().to_string())
            };
            let opts = ScrubOptions {
                rate: rate.map(|r| r * 1024 * 1024),
                resume_after,
            };
            let state_for_cb = state.clone();
            let mut save = move |cursor: &str| {
                if let Err(e) = std::fs::write(&state_for_cb, cursor) {
                    tracing::warn!("saving scrub cursor to {}: {e}", state_for_cb.display());
                }
            };
            let report = ops::scrub(&pipeline, &opts, &mut save).await?;
            let ok = report.failures.is_empty() && report.unreadable_records.is_empty();
            let _ = std::fs::remove_file(&state);
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "scrubbed {} object(s) ({} skipped from a previous run), {} repaired, {} failed",
                    report.objects,
                    report.skipped,
                    report.repairs.len(),
                    report.failures.len()
                );
                for (n, e) in &report.failures {
                    println!("FAILED {n}: {e}");
                }
                for e in &report.unreadable_records {
                    println!("UNREADABLE {e}");
                }
            }
            Ok(code(ok))
        }
        Command::Delete { path } => {
            let name = config.object_name(&path)?;
            ops::delete(&pipeline, &name).await?;
            if json {
                print_json(&serde_json::json!({ "deleted": name }))?;
            } else {
                println!("deleted {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc => {
            let report = ops::gc(&pipeline).await?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "removed {} shard(s) and {} old record version(s)",
                    report.shards_deleted, report.records_deleted
                );
                for b in &report.skipped_backends {
                    println!("skipped unreachable backend {b}");
                }
            }
            Ok(code(report.skipped_backends.is_empty()))
        }
        Command::ChangePassphrase { new_keyfile } => {
            let Some(old) = secret else {
                bail!("this config carries its own key; there is no passphrase to change")
            };
            let new = read_secret(
                new_keyfile.as_deref(),
                "QSFS_NEW_PASSPHRASE",
                "new passphrase: ",
            )?;
            pipeline.change_key(&old, &new).await?;
            if !json {
                println!("passphrase changed");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn store(
    pipeline: &Pipeline,
    config: &Config,
    paths: &[PathBuf],
    name: Option<String>,
    progress: &Bars,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    let mut out = Vec::new();
    for p in paths {
        let results = if p == Path::new("-") {
            let Some(n) = name.clone() else {
                bail!("storing standard input needs --name NAME")
            };
            // Stored under the name `retrieve NAME` looks for, not the words as typed.
            let n = config.object_name(Path::new(&n))?;
            vec![(
                n.clone(),
                ops::store_reader(pipeline, &n, Box::new(std::io::stdin()), progress).await,
            )]
        } else if config.root.is_some() {
            // Names relative to root: one file at a time through the config's naming.
            let n = config.object_name(p)?;
            let f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
            vec![(
                n.clone(),
                ops::store_reader(pipeline, &n, Box::new(f), progress).await,
            )]
        } else {
            let results = ops::store_path(pipeline, p, progress).await;
            progress.clear();
            match results {
                Ok(r) => r,
                Err(e) => vec![(p.display().to_string(), Err(e))],
            }
        };
        for (n, r) in results {
            match r {
                Ok(rep) => {
                    if !json {
                        let what = if rep.unchanged { "unchanged" } else { "stored" };
                        println!(
                            "{what} {} ({}, version {})",
                            rep.name,
                            human(rep.size),
                            rep.version
                        );
                    }
                    if rep.changed_while_read {
                        eprintln!(
                            "warning: {} changed while it was read: the stored copy may mix \
                             old and new content; store it again once it is still",
                            rep.name
                        );
                    }
                    out.push(serde_json::to_value(&rep)?);
                }
                Err(e) => {
                    ok = false;
                    if !json {
                        println!("FAILED {n}: {e}");
                    }
                    out.push(serde_json::json!({ "name": n, "error": e.to_string() }));
                }
            }
        }
    }
    if json {
        print_json(&out)?;
    }
    Ok(code(ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bars() -> Bars {
        Bars {
            bar: std::sync::Mutex::new(None),
            batch: std::sync::Mutex::new(None),
            enabled: true,
            hidden: true,
        }
    }

    fn shown(b: &Bars) -> Option<(u64, Option<u64>, String)> {
        let bar = b.bar.lock().unwrap();
        bar.as_ref()
            .map(|b| (b.position(), b.length(), b.message()))
    }

    /// Files of a directory move at once: one bar counts them all, whichever file's bytes
    /// arrive, and goes once every file is done.
    #[test]
    fn a_directory_has_one_bar_for_files_that_move_at_once() {
        let b = bars();
        b.batch(3, 300);
        b.start("a", Some(100));
        b.start("b", Some(100));
        b.advance(100);
        b.advance(50);
        b.finish("a");
        b.skip("c", 100);
        b.advance(50);
        assert_eq!(shown(&b), Some((300, Some(300), "2/3 files".into())));
        b.finish("b");
        assert_eq!(shown(&b), None);
        // A file on its own gets its own bar again.
        b.start("d", Some(10));
        b.advance(4);
        assert_eq!(shown(&b), Some((4, Some(10), "d".into())));
        b.finish("d");
        assert_eq!(shown(&b), None);
    }
}
