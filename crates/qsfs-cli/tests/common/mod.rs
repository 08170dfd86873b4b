//! Helpers shared by the tests that run the real `qsfs` binary.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// True if `p` is a mountpoint (read from this process's mount table).
pub fn is_mounted(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = p.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// The storage-chain harness (`tests/chain_*.rs`).
pub mod chain;
