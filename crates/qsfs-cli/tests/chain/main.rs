//! The acceptance scenarios of issue #6 (the whole chain: `qsfs up` over `qsfs serve` backends),
//! one module per scenario, linked into one binary. They run side by side: most of a scenario's
//! time is waiting (for seals by age, drains, restarts), and each one's nodes listen on ports no
//! neighbour can take (`common::chain::reserved_port`), so a killed node comes back where it was.

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
