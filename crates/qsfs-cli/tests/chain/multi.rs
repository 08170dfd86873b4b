//! Issue #6 acceptance, **multi**: the faults of the original's acceptance scenario together,
//! in its order — the backup process, a backend, the filesystem — then restarted in reverse.
//!
//! qsfs runs the backup (the tier) inside `qsfs up`, so the mapping is:
//! 1. *backup process killed*: `qsfs up` SIGKILLed while the upload backlog is not empty (held
//!    there by a frozen node, resumed afterwards)
//!    (it must come back at once, since it is also the filesystem the next faults need);
//! 2. *a backend lost*: one of the four `qsfs serve` nodes SIGKILLed; with 2+2 over four nodes
//!    no upload can be placed any more, so the backlog grows while writes go on;
//! 3. *the filesystem killed*: `qsfs up` SIGKILLed during writes, with the backend still down.
//!
//! Restart in reverse: `qsfs up` (with the node still down: every synced file reads, including
//! evicted ones, from three of four nodes), then the node; the backlog drains; every synced
//! file is intact, also after a remount and after recovering a fresh root from the backends.

#![allow(clippy::unwrap_used)]

use crate::common;
use common::chain::*;
use std::time::{Duration, Instant};

#[test]
fn backup_backend_and_filesystem_faults_then_reverse_restart() {
    let mut c = Chain::new(Opts {
        nodes: 4,
        local_cap: 16 * MIB,
        segment_size: 4 * MIB,
        seal_after: 2,
        ..Opts::default()
    });
    c.up();
    let mut files = write_files(&c.mnt, "a/f", 12, 2 * MIB as usize, 100_000);
    c.wait_drained(Duration::from_secs(300));

    // 1. The backup process dies with uploads pending. A frozen node holds every upload, so
    // the backlog is certain to be there when it dies (fast uploads drain it between polls).
    let w = Writer::start(&c.mnt, "b/f", MIB as usize, 110_000, 10_000);
    w.wait_acked(12);
    c.nodes[2].pause();
    let end = Instant::now() + Duration::from_secs(60);
    while c
        .status()
        .is_none_or(|s| s["backlog_segments"].as_u64().unwrap_or(0) == 0)
    {
        assert!(
            Instant::now() < end,
            "never saw backlog_segments > 0 with a node frozen (last status {:?})",
            c.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.kill_up_keep_mount();
    let (acked, unacked, _) = w.finish();
    lazy_unmount(&c.mnt);
    c.nodes[2].resume();
    files.extend(acked);
    c.up();
    check_unacked(&c.mnt, &unacked);

    // 2. A backend dies while the (restarted) chain works.
    c.nodes[3].kill();
    files.extend(write_files(&c.mnt, "c/f", 6, MIB as usize, 120_000));

    // 3. The filesystem dies during writes.
    let w = Writer::start(&c.mnt, "d/f", MIB as usize, 130_000, 10_000);
    w.wait_acked(12);
    c.kill_up_keep_mount();
    let (acked, unacked, _) = w.finish();
    lazy_unmount(&c.mnt);
    files.extend(acked);

    // Reverse: the filesystem first, with the backend still down.
    c.up();
    verify_all(&c.mnt, &files, "filesystem back, backend still down");
    check_unacked(&c.mnt, &unacked);
    let st = c.status_or_panic();
    assert!(
        st["backends"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["up"] == false)),
        "status does not report the dead node: {st}"
    );
    // Then the backend, with its storage.
    c.nodes[3].spawn();
    c.wait_drained(Duration::from_secs(300));
    c.remount();
    verify_all(&c.mnt, &files, "all restarted, drained, remounted");

    // The backends hold everything that was synced.
    c.kill_up();
    c.recover_lost_machine();
    verify_all(&c.mnt, &files, "recovered from the backends");
    c.stop_up();
}
