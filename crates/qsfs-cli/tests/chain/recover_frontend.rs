//! Issue #6 acceptance, **recover_frontend**: 300 MiB written through `qsfs up`, the backlog
//! drains, the mount is SIGKILLed, the whole root except the config and the key is deleted,
//! `qsfs recover` rebuilds it from the backends alone, and a new `qsfs up` serves every file
//! with its SHA-256 (data fetched lazily on read).

#![allow(clippy::unwrap_used)]

use crate::common;
use common::chain::*;
use std::time::{Duration, Instant};

#[test]
fn recover_a_lost_frontend_from_config_and_key() {
    let segment = 8 * MIB;
    let mut c = Chain::new(Opts {
        nodes: 4,
        local_cap: 64 * MIB,
        segment_size: segment,
        seal_after: 2,
        ..Opts::default()
    });
    c.up();
    std::fs::create_dir(c.mnt.join("empty-dir")).unwrap();
    let mut files = write_files(&c.mnt, "a/f", 75, 2 * MIB as usize, 1_000);
    files.extend(write_files(&c.mnt, "b/c/f", 75, 2 * MIB as usize, 2_000));
    c.wait_drained(Duration::from_secs(400));
    c.kill_up();
    c.wipe_root();

    let t = Instant::now();
    c.recover();
    let took = t.elapsed();
    // Recovery restores metadata only: the data stays in the backends until it is read.
    let restored = c.engine_bytes();
    eprintln!("qsfs recover took {took:?}; ROOT/engine after recover: {restored} bytes");
    assert!(
        restored < segment,
        "recover brought {restored} bytes into ROOT/engine for 300 MiB of data: it should \
         restore the index, not the segments"
    );

    c.up();
    verify_all(&c.mnt, &files, "after recover");
    assert!(c.mnt.join("empty-dir").is_dir(), "empty directory lost");
    // The recovered filesystem is a normal one: it takes writes and survives a remount.
    files.extend(write_files(&c.mnt, "new/f", 4, MIB as usize, 3_000));
    c.remount();
    verify_all(&c.mnt, &files, "after recover, write and remount");
    c.stop_up();
}
