//! `qsfs status`: local usage against the cap, upload backlog and backend health of a root.
//! From the status file of a running `qsfs up` when there is one; otherwise from what can be
//! read offline (engine bytes on disk, the config's cap, a health probe of every backend, which
//! needs no key).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use qsfs_backup::config::{BackendSpec, Config};
use qsfs_core::{Backend, HealthStatus};
use serde::Serialize;

use crate::chain::{self, Root, StatusFile};

/// A status file older than this is from a process that stopped writing it.
const STALE_MS: u64 = 10_000;

/// Arguments of `qsfs status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Root directory [default: ~/.threefold].
    #[arg(long, env = "QSFS_ROOT")]
    pub root: Option<PathBuf>,
    /// Config file, for the offline report [default: ROOT/qsfs.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Backend_ {
    name: String,
    up: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Report {
    running: bool,
    /// Everything sealed is backed up and the recovery manifests are current (None: offline).
    idle: Option<bool>,
    pid: Option<u32>,
    mountpoint: Option<PathBuf>,
    local_bytes: u64,
    local_cap: Option<u64>,
    /// None: unknown (nothing running to ask).
    backlog_segments: Option<u64>,
    backlog_bytes: Option<u64>,
    /// Uploaded but not yet read back and verified (not evictable until they are).
    unverified_segments: Option<u64>,
    uploaded_segments: Option<u64>,
    evicted_segments: Option<u64>,
    pending_deletes: Option<u64>,
    cap_unmet: Option<bool>,
    /// Writers waiting at the write gate now (the local disk over its cap after a seal).
    writes_held: Option<bool>,
    /// Writes held there since start, and the milliseconds they waited in all.
    write_holds: Option<u64>,
    write_hold_ms: Option<u64>,
    last_error: Option<String>,
    /// Size and available bytes of the disk holding the engine (None: it does not exist yet).
    disk_total: Option<u64>,
    disk_available: Option<u64>,
    backends: Vec<Backend_>,
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks the process exists without touching it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn live(root: &Root) -> Option<StatusFile> {
    let text = std::fs::read(root.status()).ok()?;
    let s: StatusFile = serde_json::from_slice(&text).ok()?;
    let fresh = chain::now_ms().saturating_sub(s.updated_ms) <= STALE_MS;
    (s.running && fresh && pid_alive(s.pid)).then_some(s)
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn open_spec(spec: &BackendSpec) -> Result<Arc<dyn Backend>, (String, String)> {
    match spec {
        BackendSpec::Local { path: p, name } => {
            let name = name.clone();
            // Opening a local backend creates its directory: a missing one is reported, not
            // made up.
            if !p.is_dir() {
                return Err((name, "directory missing".into()));
            }
            qsfs_backup::backends::LocalDir::open(p)
                .map(|b| Arc::new(b.named(name.clone())) as Arc<dyn Backend>)
                .map_err(|e| (name, e.to_string()))
        }
        BackendSpec::Zdb(z) => {
            qsfs_store::remote::LazyZdbBackend::new(&z.address, &z.namespace, z.password.clone())
                .map(|b| Arc::new(b) as Arc<dyn Backend>)
                .map_err(|e| {
                    (
                        format!("zdb://{}/{}", z.address, z.namespace),
                        e.to_string(),
                    )
                })
        }
        BackendSpec::Memory(n) => Err((format!("memory:{n}"), "in-memory backend".into())),
        BackendSpec::S3(s) => {
            let t = qsfs_backup::node::Timeouts::default();
            s.open(t.op, t.health)
                .map_err(|e| (s.to_string(), e.to_string()))
        }
    }
}

async fn probe(config: &Config) -> Vec<Backend_> {
    let specs = config.groups.iter().flatten().chain(config.meta.iter());
    let mut out: Vec<Backend_> = Vec::new();
    for spec in specs {
        let b = match open_spec(spec) {
            Ok(b) => {
                let h = b.health().await;
                Backend_ {
                    name: b.name(),
                    up: h.status != HealthStatus::Down,
                    detail: h.detail,
                }
            }
            Err((name, detail)) => Backend_ {
                name,
                up: false,
                detail,
            },
        };
        if !out.iter().any(|x| x.name == b.name) {
            out.push(b);
        }
    }
    out
}

fn offline(root: &Root, config: Option<&Path>) -> anyhow::Result<Report> {
    let (local_cap, backends) = if config.is_some() || root.config().exists() {
        let (_, config) = chain::load_config(root, config, false)?;
        let rt = chain::runtime()?;
        (config.chain.local_cap, rt.block_on(probe(&config)))
    } else {
        (None, Vec::new())
    };
    Ok(Report {
        running: false,
        idle: None,
        pid: None,
        mountpoint: None,
        local_bytes: dir_bytes(&root.engine()),
        local_cap,
        backlog_segments: None,
        backlog_bytes: None,
        unverified_segments: None,
        uploaded_segments: None,
        evicted_segments: None,
        pending_deletes: None,
        cap_unmet: None,
        writes_held: None,
        write_holds: None,
        write_hold_ms: None,
        last_error: None,
        disk_total: None,
        disk_available: None,
        backends,
    })
}

fn from_live(s: StatusFile) -> Report {
    let t = s.tier;
    Report {
        running: true,
        idle: Some(s.idle),
        pid: Some(s.pid),
        mountpoint: Some(s.mountpoint),
        local_bytes: t.local_bytes,
        local_cap: t.local_cap,
        backlog_segments: Some(t.backlog_segments),
        backlog_bytes: Some(t.backlog_bytes),
        unverified_segments: Some(t.unverified_segments),
        uploaded_segments: Some(t.uploaded_segments),
        evicted_segments: Some(t.evicted_segments),
        pending_deletes: Some(t.pending_deletes),
        cap_unmet: Some(t.cap_unmet),
        writes_held: Some(t.writes_held),
        write_holds: Some(t.write_holds),
        write_hold_ms: Some(t.write_hold_ms),
        last_error: t.last_error,
        disk_total: None,
        disk_available: None,
        backends: t
            .backends
            .into_iter()
            .map(|b| Backend_ {
                name: b.name,
                up: b.up,
                detail: b.detail,
            })
            .collect(),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into())
}

/// Runs `qsfs status`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = Root::resolve(args.root.clone());
    let report = match live(&root) {
        Some(s) => from_live(s),
        None => offline(&root, args.config.as_deref()).context("offline status")?,
    };
    let mut report = report;
    if let Ok(disk) = qsfs_core::DiskSpace::of(&root.engine()) {
        report.disk_total = Some(disk.total);
        report.disk_available = Some(disk.available);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let h = crate::backup::human;
    match (&report.pid, &report.mountpoint) {
        (Some(pid), Some(m)) => println!("running     pid {pid}, mounted on {}", m.display()),
        _ => println!("running     no (figures below read offline)"),
    }
    println!(
        "local       {} {}{}",
        h(report.local_bytes),
        report
            .local_cap
            .map(|c| format!("of {}", h(c)))
            .unwrap_or_else(|| "(no local_cap set: nothing is evicted)".into()),
        if report.cap_unmet == Some(true) {
            "  (CAP CANNOT BE MET: nothing more is backed up to evict)"
        } else {
            ""
        }
    );
    if let (Some(total), Some(available)) = (report.disk_total, report.disk_available) {
        println!(
            "disk        {} available of {} (writes stop at the reserve; deleting gives space back)",
            h(available),
            h(total)
        );
    }
    println!(
        "backlog     {} segment(s), {}; {} uploaded but not verified yet",
        opt(report.backlog_segments),
        report
            .backlog_bytes
            .map(h)
            .unwrap_or_else(|| "unknown".into()),
        opt(report.unverified_segments)
    );
    if let Some(idle) = report.idle {
        println!(
            "backed up   {}",
            if idle {
                "yes: all sealed data and the recovery manifests are in the backups (newer writes follow within seal_after; seal_max_after once the index is over 16 MiB)"
            } else {
                "not yet (uploads or manifests pending)"
            }
        );
    }
    if report.running {
        println!(
            "uploaded    {} segment(s), {} evicted, {} delete(s) pending",
            opt(report.uploaded_segments),
            opt(report.evicted_segments),
            opt(report.pending_deletes)
        );
        println!(
            "writes      {}; {} held since start, {:.1} s waited in all",
            if report.writes_held == Some(true) {
                "HELD: waiting for uploads to bring the local disk under its cap"
            } else {
                "flowing"
            },
            opt(report.write_holds),
            report.write_hold_ms.unwrap_or(0) as f64 / 1000.0
        );
    }
    if let Some(e) = &report.last_error {
        println!("last error  {e}");
    }
    for b in &report.backends {
        println!(
            "backend     {:4} {} {}",
            if b.up { "up" } else { "DOWN" },
            b.name,
            b.detail
        );
    }
    Ok(ExitCode::SUCCESS)
}
