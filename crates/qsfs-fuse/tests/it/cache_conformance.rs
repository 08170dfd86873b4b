//! The Cache conformance suite of qsfs-core, run against [`qsfs_fuse::BlockCache`].

use crate::common;

use std::sync::Arc;

use qsfs_core::Cache;
use qsfs_fuse::BlockCache;

#[test]
fn block_cache_conforms() {
    let (store, _dir) = common::engine();
    store.namespace_create("blocks").unwrap();
    let make = |capacity: u64| -> Arc<dyn Cache> {
        Arc::new(BlockCache::new(
            store.clone(),
            "blocks",
            64 * 1024,
            capacity,
        ))
    };
    qsfs_core::testing::cache::run(&make);
}

#[test]
fn small_block_cache_conforms() {
    let (store, _dir) = common::engine();
    store.namespace_create("small").unwrap();
    let make = |capacity: u64| -> Arc<dyn Cache> {
        Arc::new(BlockCache::new(store.clone(), "small", 4096, capacity))
    };
    qsfs_core::testing::cache::run(&make);
}
