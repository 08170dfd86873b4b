//! qsfs-backup (being written).
pub mod backends;
pub mod error;
