//! Shared helpers of the qsfs-fuse integration tests.
#![allow(dead_code)]

pub mod mem_store;

use std::sync::Arc;

/// A fresh store for one test.
pub fn store() -> Arc<dyn qsfs_core::Store> {
    Arc::new(mem_store::MemStore::new())
}
