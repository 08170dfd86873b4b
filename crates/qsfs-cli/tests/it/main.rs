//! The tests that run the real `qsfs` binary (`serve`, `mount`, `up`, `backup`), one module per
//! subject, linked into one binary: one link instead of one per file keeps CI's build short. The
//! issue #6 scenarios are the `chain` binary; `serve_group` stays a binary of its own because it
//! floods the loopback with connections.

#[path = "../common/mod.rs"]
mod common;

mod backup_cli;
mod backup_zdb_e2e;
mod fsck_remote;
mod mount_cli;
mod mount_remote;
mod mount_remote_space;
mod serve_cold;
mod serve_process;
mod up_cli;
