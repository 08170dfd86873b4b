//! qsfs-backup (being written).
pub mod backends;
pub mod codec;
pub mod crypto;
pub mod error;
pub mod node;
pub mod placement;
pub mod stripe;
