//! Issue #6 acceptance, **filesystem killed**: `qsfs up` gets SIGKILL while a writer is busy.
//! Every file whose write and `sync_all` returned before the kill is intact after a restart;
//! files being written may be absent or partial but readable; nothing else is harmed, and the
//! restarted chain uploads, evicts and reads back as before.

#![allow(clippy::unwrap_used)]

use crate::common;
use common::chain::*;
use std::time::Duration;

#[test]
fn kill_during_writes_keeps_synced_files() {
    let mut c = Chain::new(Opts {
        nodes: 4,
        local_cap: 16 * MIB,
        segment_size: 4 * MIB,
        seal_after: 2,
        ..Opts::default()
    });
    c.up();
    // Older files, partly evicted by the time of the kill.
    let mut files = write_files(&c.mnt, "old/f", 12, 2 * MIB as usize, 30_000);
    c.wait_drained(Duration::from_secs(300));

    let w = Writer::start(&c.mnt, "new/f", MIB as usize, 40_000, 10_000);
    w.wait_acked(24);
    // The writer is mid-file: kill under it, let it fail on the dead mount, then unmount.
    c.kill_up_keep_mount();
    let (acked, unacked, err) = w.finish();
    lazy_unmount(&c.mnt);
    eprintln!(
        "{} files acknowledged before the kill, {} in flight; writer ended with {err:?}",
        acked.len(),
        unacked.len()
    );
    files.extend(acked);

    c.up();
    verify_all(&c.mnt, &files, "after kill -9 and restart");
    check_unacked(&c.mnt, &unacked);
    // Files in flight can be rewritten; the chain works on.
    for (name, _) in &unacked {
        let sum = write_file(&c.mnt.join(name), MIB as usize, 50_000).unwrap();
        files.insert(name.clone(), (sum, MIB));
    }
    files.extend(write_files(&c.mnt, "after/f", 8, MIB as usize, 60_000));
    c.wait_drained(Duration::from_secs(300));
    c.remount();
    verify_all(&c.mnt, &files, "after drain and remount");
    c.stop_up();
}
