//! Issue #6 acceptance, **GC safety**: files are overwritten many times and half of them
//! deleted while compaction runs and the tier deletes the backups of the segments it removes.
//! `qsfs up` has no knob for its compaction interval (60 s), history retention (60 s) or
//! backend GC interval (10 min), so this test waits for one compaction pass and then runs the
//! backend sweep itself (`qsfs backup gc`, the same `Pipeline::gc` the tier runs). Once
//! the backlog is empty and the collection has had its chance: every live file reads back (also
//! after a remount, so from the backends for evicted data), `qsfs backup check --deep` is clean,
//! the backends' usage shrank, and a fresh root recovered from the backends alone holds exactly
//! the live files, each intact, and none of the deleted ones.
//!
//! Backend usage is the live bytes the `qsfs serve` nodes report (NSINFO `data_size_bytes` of
//! the data and metadata namespaces): the nodes are append-only stores that reclaim disk in
//! their own compaction, so `du` of their directories is printed but not asserted on.

#![allow(clippy::unwrap_used)]

use crate::common;
use common::chain::*;
use std::time::{Duration, Instant};

/// Compaction, history and the backend sweep on a test's time scale (defaults: 60 s, 60 s,
/// 10 min).
const KNOBS: &str = "compact_every = 2\nhistory_retention = 1\ngc_every = 5\n";

#[test]
fn heavy_overwrites_and_deletes_then_gc_then_recover() {
    let mut c = Chain::new(Opts {
        nodes: 4,
        local_cap: 8 * MIB,
        segment_size: 2 * MIB,
        seal_after: 2,
        extra: KNOBS.into(),
    });
    c.up();
    let n = 24;
    let rounds = 6u64;
    let size = 512 * 1024;
    let mut live = Expected::new();
    let mut deleted = Vec::new();
    let mut peak = 0u64;
    for r in 0..rounds {
        for i in 0..n {
            let name = format!("f{i:03}");
            let sum = write_file(&c.mnt.join(&name), size, r * 1_000 + i as u64).unwrap();
            live.insert(name, (sum, size as u64));
        }
        peak = peak.max(c.backend_live_bytes());
    }
    // Half of the files go; a directory of them goes as a whole.
    for i in (1..n).step_by(2) {
        let name = format!("f{i:03}");
        delete_synced(&c.mnt, &name);
        live.remove(&name);
        deleted.push(name);
    }
    std::fs::create_dir(c.mnt.join("gone")).unwrap();
    write_file(&c.mnt.join("gone/x"), size, 9_999).unwrap();
    std::fs::remove_file(c.mnt.join("gone/x")).unwrap();
    std::fs::remove_dir(c.mnt.join("gone")).unwrap();

    c.wait_drained(Duration::from_secs(300));
    peak = peak.max(c.backend_live_bytes());
    let disk_before = c.backend_disk_bytes();
    verify_all(&c.mnt, &live, "live files after overwrites and deletes");

    // Compaction rewrites the mostly dead segments, GC deletes what they superseded: about 90%
    // of what was uploaded is dead, so usage must fall well below its peak.
    let end = Instant::now() + Duration::from_secs(240);
    let mut now = c.backend_live_bytes();
    while now * 4 > peak * 3 && Instant::now() < end {
        std::thread::sleep(Duration::from_secs(1));
        now = c.backend_live_bytes();
    }
    let status = c.wait_drained(Duration::from_secs(120));
    eprintln!(
        "backend live bytes: peak {peak}, after GC {now}; backend disk {disk_before} -> {}; \
         status {status}",
        c.backend_disk_bytes()
    );
    assert!(
        now * 4 <= peak * 3,
        "backend usage did not shrink enough: peak {peak} bytes, now {now} (status {status})"
    );

    verify_all(&c.mnt, &live, "after GC");
    c.remount();
    verify_all(&c.mnt, &live, "after GC and remount");
    c.stop_up();
    let check = c.check_deep();
    assert!(
        check.status.success(),
        "check --deep after GC: {}",
        text(&check)
    );
    // The repository-wide sweep the tier runs every `gc_every` (10 minutes, too long for a
    // test): the same `Pipeline::gc`, run by hand now that nothing stores. It must find
    // nothing live to delete.
    // Measured now, not at `now`: the remount and the clean stops since then sealed and
    // uploaded the filesystem's last metadata and a new cut.
    let unswept = c.backend_live_bytes();
    let gc = c.backup(&["gc"]);
    assert!(gc.status.success(), "backup gc: {}", text(&gc));
    let swept = c.backend_live_bytes();
    eprintln!(
        "backend live bytes before backup gc: {unswept}, after: {swept}; {}",
        String::from_utf8_lossy(&gc.stdout).trim()
    );
    assert!(
        swept <= unswept,
        "backup gc grew usage: {unswept} -> {swept}"
    );
    let check = c.check_deep();
    assert!(
        check.status.success(),
        "check --deep after backup gc: {}",
        text(&check)
    );

    // From the backends alone.
    c.recover_lost_machine();
    verify_all(&c.mnt, &live, "recovered after GC");
    let names = list_files(&c.mnt);
    let want: Vec<String> = live.keys().cloned().collect();
    assert_eq!(names, want, "recovered tree differs (deleted: {deleted:?})");
    assert!(!c.mnt.join("gone").exists(), "deleted directory came back");
    c.stop_up();
}
