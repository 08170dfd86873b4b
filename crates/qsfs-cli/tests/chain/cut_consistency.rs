//! Issue #6, recovery cuts: `qsfs up` is SIGKILLed within `seal_after` of replacing several
//! files, the root is wiped, `qsfs recover` restores it from the backups, and every file reads
//! back whole: its content before the round or after it, never a mix.
//!
//! A file's change spans the filesystem's namespaces (data blocks, block maps, inodes,
//! directories). Before recovery cuts, each namespace's manifest was captured at its own seal,
//! so a recovery could pair a new block map with old blocks, or a new inode with an old size,
//! and serve bytes no one wrote. Each file is replaced atomically (written to a temporary
//! name, synced, renamed over), so at every instant it is wholly old or wholly new, and so
//! must it be in whatever cut the backups hold when the machine dies.

#![allow(clippy::unwrap_used)]

use crate::common;
use common::chain::*;
use rand::{Rng, SeedableRng};
use std::time::Duration;

const FILES: usize = 8;
const ROUNDS: u64 = 3;

fn name(i: usize) -> String {
    format!("d{}/f{i}", i % 3)
}

/// Sizes differ between versions, so an old inode over new blocks (or the reverse) shows.
fn size(i: usize, version: u64) -> usize {
    96 * 1024 + ((i as u64 * 37_000 + version * 91_000) % 400_000) as usize
}

/// Replaces `mnt/name` atomically with version `version` of file `i`; returns its SHA-256.
fn replace(mnt: &std::path::Path, i: usize, version: u64) -> Sum {
    let tmp = mnt.join(format!("{}.tmp", name(i)));
    let sum = write_file(&tmp, size(i, version), version * 1000 + i as u64).unwrap();
    std::fs::rename(&tmp, mnt.join(name(i))).unwrap();
    sum
}

#[test]
fn a_kill_within_seal_after_of_writes_recovers_every_file_whole() {
    let mut c = Chain::new(Opts {
        nodes: 4,
        local_cap: 256 * MIB,
        // Small segments: uploads run while a round writes, so the kill lands at any point
        // of a cut's life (taken, partly uploaded, uploaded).
        segment_size: MIB,
        seal_after: 1,
        ..Opts::default()
    });
    c.up();
    let mut current: Vec<Sum> = (0..FILES).map(|i| replace(&c.mnt, i, 0)).collect();
    c.wait_drained(Duration::from_secs(60));

    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let mut outcomes = Vec::new();
    for round in 1..=ROUNDS {
        let new: Vec<Sum> = (0..FILES).map(|i| replace(&c.mnt, i, round)).collect();
        // Within seal_after (1 s) of the writes, or just past it: a cut may be taken, be
        // uploading, or be uploaded when the machine dies.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1500)));
        c.kill_up();
        c.recover_lost_machine();
        let mut fresh = 0;
        for i in 0..FILES {
            let data = std::fs::read(c.mnt.join(name(i))).unwrap();
            let got = sha256(&data);
            assert!(
                got == current[i] || got == new[i],
                "round {round}: {} ({} bytes read) is neither its content before the round \
                 nor after it ({} bytes): a recovery mixed two instants",
                name(i),
                data.len(),
                size(i, round),
            );
            fresh += usize::from(got == new[i]);
            current[i] = got;
        }
        outcomes.push(fresh);
    }
    eprintln!("files recovered with the round's new content, per round: {outcomes:?} of {FILES}");
    c.stop_up();
}
