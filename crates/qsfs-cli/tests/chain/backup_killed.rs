//! Issue #6 acceptance, **backup process killed**: the tier runs inside `qsfs up`, so the
//! backup process dying mid-upload is `qsfs up` getting SIGKILL while the upload backlog is not
//! empty. Every file was synced before the kill. After a restart the durable queue resumes, the
//! backlog drains, every file reads back, and the backends alone hold everything: a fresh root
//! recovered from them serves every file.

#![allow(clippy::unwrap_used)]

use crate::common;
use common::chain::*;
use std::time::{Duration, Instant};

#[test]
fn kill_during_uploads_loses_nothing() {
    let mut c = Chain::new(Opts {
        nodes: 4,
        local_cap: 16 * MIB,
        segment_size: 4 * MIB,
        seal_after: 2,
        ..Opts::default()
    });
    c.up();
    let mut files = write_files(&c.mnt, "a/f", 8, MIB as usize, 10_000);

    // Keep writing until the status shows uploads pending, then stop the writer (its last
    // file synced) and kill at once, so the kill lands while uploads are queued or in flight.
    // The status file is rewritten every 2 s and synced 1 MiB files can take well under 10 ms
    // each: the bound leaves room for several status periods.
    const MAX_FILES: usize = 1000;
    let w = Writer::start(&c.mnt, "b/f", MIB as usize, 20_000, MAX_FILES);
    let end = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        if let Some(s) = c.status() {
            if s["backlog_segments"].as_u64().unwrap_or(0) > 0 && w.acked() >= 16 {
                break s;
            }
        }
        assert!(
            Instant::now() < end && w.acked() < MAX_FILES,
            "never saw backlog_segments > 0 while writing {} MiB (last status {:?}): the kill \
             cannot land during uploads",
            w.acked(),
            c.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (acked, unacked, err) = w.finish();
    assert!(err.is_none(), "writer failed before the kill: {err:?}");
    assert!(unacked.is_empty(), "{unacked:?}");
    c.kill_up();
    eprintln!(
        "killed with backlog (status just before): {seen}; {} files",
        acked.len()
    );
    files.extend(acked);

    c.up();
    verify_all(&c.mnt, &files, "after restart");
    let drained = c.wait_drained(Duration::from_secs(300));
    eprintln!("drained: {drained}");
    c.remount();
    verify_all(&c.mnt, &files, "after drain and remount");

    // Nothing the kill interrupted is missing from the backups.
    c.kill_up();
    c.recover_lost_machine();
    verify_all(&c.mnt, &files, "recovered from the backends");
    c.stop_up();
}
