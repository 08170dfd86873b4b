//! The acceptance scenarios of issue #6 (the whole chain: `qsfs up` over `qsfs serve` backends),
//! one module per scenario, linked into one binary. They run one at a time (`common::chain`'s
//! `Chain` holds a lock): each restarts killed nodes on their old ports and loads the machine.

#[path = "../common/mod.rs"]
mod common;

mod backend_loss;
mod backup_killed;
mod baseline;
mod cut_consistency;
mod fs_killed;
mod gc_safety;
mod multi;
mod recover_frontend;
