//! Issue #6 acceptance, **backend loss**: a 2+2 policy over six `qsfs serve` nodes (metadata
//! on the same six). Two nodes are stopped while files are written and read: writes keep
//! uploading onto the four left, and everything stays readable, including data only the
//! backends hold (evicted, fetched back after a remount). One node comes back with empty
//! storage; `qsfs backup rebuild --all` with the same config and key restores full redundancy:
//! `qsfs backup check --deep` is clean for every object, and every file still reads back.

#![allow(clippy::unwrap_used)]

use crate::common;
use common::chain::*;
use std::time::Duration;

#[test]
fn two_of_six_backends_lost_then_one_replaced_and_rebuilt() {
    let mut c = Chain::new(Opts {
        nodes: 6,
        local_cap: 16 * MIB,
        segment_size: 4 * MIB,
        seal_after: 2,
        ..Opts::default()
    });
    c.up();
    let mut files = write_files(&c.mnt, "a/f", 12, 2 * MIB as usize, 70_000);
    c.wait_drained(Duration::from_secs(300));
    let clean = c.check_deep();
    assert!(
        clean.status.success(),
        "check --deep before any loss: {}",
        text(&clean)
    );

    // Two nodes gone during writes and reads.
    c.nodes[0].kill();
    files.extend(write_files(&c.mnt, "b/f", 6, 2 * MIB as usize, 80_000));
    c.nodes[1].kill();
    files.extend(write_files(&c.mnt, "c/f", 6, 2 * MIB as usize, 90_000));
    verify_all(&c.mnt, &files, "two of six nodes down");
    let drained = c.wait_drained(Duration::from_secs(300));
    let down = drained["backends"]
        .as_array()
        .map(|b| b.iter().filter(|b| b["up"] == false).count())
        .unwrap_or(0);
    assert!(
        down >= 2,
        "status does not report the two dead nodes: {drained}"
    );
    c.remount();
    verify_all(&c.mnt, &files, "two down, after remount (fetch-back)");

    // Node 0 is replaced by an empty machine on the same address; node 1 stays dead.
    c.nodes[0].replace_empty();
    c.stop_up();
    let degraded = c.check_deep();
    assert!(
        !degraded.status.success(),
        "check --deep is clean with a node emptied and one dead: {}",
        text(&degraded)
    );
    let rebuilt = c.backup(&["rebuild", "--all"]);
    assert!(
        rebuilt.status.success(),
        "rebuild --all: {}",
        text(&rebuilt)
    );
    let check = c.check_deep();
    assert!(
        check.status.success(),
        "check --deep after rebuild: {}",
        text(&check)
    );

    // The rebuilt repository serves the filesystem: remount and read everything.
    c.up();
    verify_all(&c.mnt, &files, "after rebuild");
    c.stop_up();
}
