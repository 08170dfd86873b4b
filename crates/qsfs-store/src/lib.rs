//! qsfs-store (being written).

pub mod remote;
pub mod server;
