//! INFO and NSINFO text (spec Appendix B) and the counters behind them.

use std::fmt::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use qsfs_core::NamespaceInfo;

use super::dispatch::Shared;
use super::session::{NsState, Session};

/// Server-wide counters shown by INFO.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted since start.
    pub clients_lifetime: AtomicU64,
    /// Requests run.
    pub commands_executed: AtomicU64,
    /// Requests answered with an error.
    pub commands_failed: AtomicU64,
    /// Requests refused for lack of admin rights.
    pub commands_unauthorized: AtomicU64,
    /// Bytes received.
    pub network_rx_bytes: AtomicU64,
    /// Bytes sent.
    pub network_tx_bytes: AtomicU64,
}

fn mb(b: u64) -> String {
    format!("{:.2}", b as f64 / (1024.0 * 1024.0))
}

/// The INFO text.
pub fn info_text(sh: &Shared) -> String {
    let st = &sh.stats;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let boot = sh
        .boot
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let uptime = sh.boot.elapsed().unwrap_or_default().as_secs();
    let mut t = String::new();
    let _ = writeln!(t, "# server");
    let _ = writeln!(t, "server_name: 0-db (zdb)");
    let _ = writeln!(t, "server_revision: qsfs-{}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(t, "engine_revision: qsfs-{}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(t, "instance_id: {}", sh.instance_id);
    let _ = writeln!(t, "boot_time: {boot}");
    let _ = writeln!(t, "uptime: {uptime}");
    let _ = writeln!(t, "\n# clients");
    let _ = writeln!(t, "clients_lifetime: {}", get(&st.clients_lifetime));
    let _ = writeln!(t, "\n# internals");
    let _ = writeln!(t, "sequential_key_size: 8");
    let _ = writeln!(t, "data_version: 3");
    let _ = writeln!(t, "index_version: 4");
    let _ = writeln!(t, "\n# stats");
    let _ = writeln!(t, "commands_executed: {}", get(&st.commands_executed));
    let _ = writeln!(t, "commands_failed: {}", get(&st.commands_failed));
    let _ = writeln!(
        t,
        "commands_unauthorized: {}",
        get(&st.commands_unauthorized)
    );
    // The store does its own I/O accounting; these per-file counters of the original stay 0.
    for f in ["index_disk_read_failed", "index_disk_write_failed"] {
        let _ = writeln!(t, "{f}: 0");
    }
    for f in ["data_disk_read_failed", "data_disk_write_failed"] {
        let _ = writeln!(t, "{f}: 0");
    }
    for f in [
        "index_disk_read",
        "index_disk_write",
        "data_disk_read",
        "data_disk_write",
    ] {
        let _ = writeln!(t, "{f}_bytes: 0");
        let _ = writeln!(t, "{f}_mb: 0.00");
    }
    let (rx, tx) = (get(&st.network_rx_bytes), get(&st.network_tx_bytes));
    let _ = writeln!(t, "network_rx_bytes: {rx}");
    let _ = writeln!(t, "network_rx_mb: {}", mb(rx));
    let _ = writeln!(t, "network_tx_bytes: {tx}");
    let _ = writeln!(t, "network_tx_mb: {}", mb(tx));
    t
}

/// Free bytes on the filesystem holding `path` (0 if unknown).
pub fn free_space(path: &Path) -> u64 {
    qsfs_core::DiskSpace::of(path).map_or(0, |d| d.available)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The NSINFO text; paths only for admins.
pub fn nsinfo_text(sh: &Shared, s: &Session, i: &NamespaceInfo, st: Option<&NsState>) -> String {
    let locked = i.locked
        || i.frozen
        || st.is_some_and(|st| {
            st.locked.load(Ordering::Relaxed) || st.frozen.load(Ordering::Relaxed)
        });
    let next_id = sh.store.next_seq_id(&i.name).unwrap_or(0);
    let index_ram: u64 = i.index_bytes;
    let mut t = String::new();
    let _ = writeln!(t, "# namespace");
    let _ = writeln!(t, "name: {}", i.name);
    let _ = writeln!(t, "entries: {}", i.entries);
    let _ = writeln!(t, "public: {}", yes(i.public));
    let _ = writeln!(t, "worm: {}", yes(i.worm));
    let _ = writeln!(t, "locked: {}", yes(locked));
    let _ = writeln!(t, "password: {}", yes(i.password));
    let _ = writeln!(t, "data_size_bytes: {}", i.data_bytes);
    let _ = writeln!(t, "data_size_mb: {}", mb(i.data_bytes));
    let _ = writeln!(t, "data_limits_bytes: {}", i.max_size);
    let _ = writeln!(t, "index_size_bytes: {index_ram}");
    let _ = writeln!(t, "index_size_kb: {:.2}", index_ram as f64 / 1024.0);
    let _ = writeln!(t, "next_internal_id: 0x{:08x}", next_id.swap_bytes());
    let _ = writeln!(t, "mode: {}", i.mode);
    for f in [
        "stats_index_io_errors",
        "stats_index_io_error_last",
        "stats_index_faults",
    ] {
        let _ = writeln!(t, "{f}: 0");
    }
    for f in ["stats_data_io_errors", "stats_data_io_error_last"] {
        let _ = writeln!(t, "{f}: 0");
    }
    // Damage found in the data (when it was loaded or verified): never hidden behind a 0.
    let _ = writeln!(t, "stats_data_faults: {}", sh.store.data_faults(&i.name));
    if i.max_size > 0 {
        let _ = writeln!(
            t,
            "space_available: {}",
            i.max_size.saturating_sub(i.data_bytes)
        );
    }
    // The data disk's free space as SETs see it: without the write reserve, which they may not
    // use (a filesystem on this server keeps its own reserve above it).
    let space = sh.store.space(&i.name).ok().flatten();
    let dfree = space.map_or_else(|| free_space(&sh.config.data_root), |s| s.disk_free);
    let ifree = free_space(&sh.config.index_root);
    let _ = writeln!(t, "index_disk_freespace_bytes: {ifree}");
    let _ = writeln!(t, "index_disk_freespace_mb: {}", mb(ifree));
    let _ = writeln!(t, "data_disk_freespace_bytes: {dfree}");
    let _ = writeln!(t, "data_disk_freespace_mb: {}", mb(dfree));
    // Not in the original (which folds it into `locked`): lets clients tell a freeze apart.
    let frozen = i.frozen || st.is_some_and(|st| st.frozen.load(Ordering::Relaxed));
    let _ = writeln!(t, "frozen: {}", yes(frozen));
    // Not in the original either: the data disk's size, so a filesystem on this server can
    // report it (statfs) instead of guessing from used plus free.
    let dtotal = space
        .and_then(|s| s.disk_total)
        .unwrap_or_else(|| qsfs_core::DiskSpace::of(&sh.config.data_root).map_or(0, |d| d.total));
    let _ = writeln!(t, "data_disk_total_bytes: {dtotal}");
    if s.admin {
        let path = i
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let (seg, off) = sh
            .store
            .current_position(&i.name)
            .unwrap_or((i.current_segment, 0));
        let _ = writeln!(t, "data_path: {path}");
        let _ = writeln!(t, "data_active: {path}/{seg}");
        let _ = writeln!(t, "index_path: {path}");
        let _ = writeln!(t, "index_active: {path}/{seg}");
        let _ = writeln!(t, "data_current_id: {seg}");
        let _ = writeln!(t, "data_current_offset: {off}");
    }
    t
}
