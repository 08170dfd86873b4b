//! qsfs-backup (being written).
pub mod backends;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod error;
pub mod metadata;
pub mod node;
pub mod ops;
pub mod pipeline;
pub mod placement;
pub mod progress;
pub mod stripe;
