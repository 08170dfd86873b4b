//! Issue #6 acceptance, **baseline**: with a local cap of 64 MiB and 8 MiB segments, 300 MiB of
//! random files written through a real `qsfs up` mount keep ROOT/engine within the cap plus one
//! segment (plus a small documented slack), the upload backlog drains, and after a remount
//! (fresh page cache) every file reads back with its SHA-256, which fetches evicted segments
//! back from the `qsfs serve` backends.

#![allow(clippy::unwrap_used)]

use crate::common;
use common::chain::*;
use std::time::Duration;

/// Local files that are neither segment data nor bounded by the cap: index snapshots, recovery
/// manifests, namespace descriptors, the lock and the tier's queue state. A few KiB each for
/// this workload; 4 MiB leaves room without hiding a segment too many (8 MiB).
const SLACK: u64 = 4 * MIB;

#[test]
fn baseline_local_disk_stays_bounded_and_everything_reads_back() {
    let cap = 64 * MIB;
    let segment = 8 * MIB;
    let mut c = Chain::new(Opts {
        nodes: 4,
        local_cap: cap,
        segment_size: segment,
        seal_after: 2,
        ..Opts::default()
    });
    c.up();
    let sampler = c.sampler();
    // 150 files of 2 MiB = 300 MiB, in two directories.
    let mut files = write_files(&c.mnt, "a/f", 75, 2 * MIB as usize, 1_000);
    files.extend(write_files(&c.mnt, "b/f", 75, 2 * MIB as usize, 2_000));
    let during = sampler.max();
    let status = c.wait_drained(Duration::from_secs(400));
    // Eviction follows the last uploads: keep sampling a little after the drain.
    std::thread::sleep(Duration::from_secs(3));
    let largest = sampler.at_max();
    let (max, samples) = sampler.finish();
    eprintln!(
        "engine bytes: max {max} ({:.1} MiB) over {samples} samples, {during} during writes; \
         status after drain: {status}",
        max as f64 / MIB as f64
    );
    assert!(samples > 5, "too few samples ({samples})");
    let bound = cap + segment + SLACK;
    assert!(
        max <= bound,
        "ROOT/engine reached {max} bytes ({:.1} MiB) > cap {cap} + one segment {segment} + \
         slack {SLACK}; status: {status}\nROOT/engine at the largest sample:\n{largest}",
        max as f64 / MIB as f64
    );
    assert_eq!(
        status["local_cap"].as_u64(),
        Some(cap),
        "status local_cap: {status}"
    );
    let local = status["local_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no local_bytes in {status}"));
    assert!(local <= bound, "status local_bytes {local} > {bound}");
    assert_eq!(status["backlog_bytes"].as_u64(), Some(0), "{status}");
    // After the drain nobody waits at the write gate, and the holds are counted.
    assert_eq!(status["writes_held"].as_bool(), Some(false), "{status}");
    assert!(status["write_holds"].as_u64().is_some(), "{status}");
    let backends = status["backends"].as_array().expect("backends array");
    assert!(
        !backends.is_empty() && backends.iter().all(|b| b["up"] == true),
        "backend health: {status}"
    );

    // Same mount first (engine reads, some fetch-back), then a fresh one.
    verify_all(&c.mnt, &files, "before remount");
    c.remount();
    verify_all(&c.mnt, &files, "after remount (fetch-back)");
    // Reading everything back must not have pulled the whole data set onto the local disk.
    let after_reads = c.engine_bytes();
    assert!(
        after_reads <= bound,
        "ROOT/engine holds {after_reads} bytes after reading everything back (bound {bound})"
    );
    c.stop_up();
}
