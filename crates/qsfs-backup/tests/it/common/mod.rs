//! Shared set-up for the pipeline tests: pipelines over Memory backends with fast timeouts.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use qsfs_backup::backends::Memory;
use qsfs_backup::crypto::{KdfParams, KeySource};
use qsfs_backup::node::Timeouts;
use qsfs_backup::pipeline::{Pipeline, Settings};
use qsfs_backup::placement::Policy;
use qsfs_backup::stripe::ShardHash;
use qsfs_core::Backend;

pub struct Rig {
    pub data: Vec<Memory>,
    pub meta: Vec<Memory>,
    pub pipeline: Pipeline,
}

pub fn settings(k: usize, m: usize, stripe: usize) -> Settings {
    Settings {
        policy: Policy {
            k,
            m,
            redundant_groups: 0,
            redundant_nodes: 0,
            max_shards_per_backend: 1,
        },
        stripe_size: stripe,
        compression_level: 1,
        parallel_stripes: 3,
        timeouts: Timeouts {
            op: Duration::from_millis(300),
            health: Duration::from_millis(200),
            down_for: Duration::ZERO,
            health_ttl: Duration::ZERO,
        },
        prefix: "t".into(),
        meta_write_quorum: None,
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        create: true,
        verify_writes: false,
        format: ShardHash::Blake3,
    }
}

pub fn key() -> KeySource {
    KeySource::passphrase("test passphrase")
}

pub async fn open_over(
    s: Settings,
    data: &[Memory],
    meta: &[Memory],
    key: &KeySource,
) -> qsfs_core::Result<Pipeline> {
    let groups = vec![data
        .iter()
        .map(|m| Arc::new(m.clone()) as Arc<dyn Backend>)
        .collect()];
    let meta = meta
        .iter()
        .map(|m| Arc::new(m.clone()) as Arc<dyn Backend>)
        .collect();
    Pipeline::open(s, groups, meta, key).await
}

pub async fn rig_with(s: Settings, backends: usize, metas: usize) -> Rig {
    let data: Vec<Memory> = (0..backends)
        .map(|i| Memory::new(format!("mem-d{i}")))
        .collect();
    let meta: Vec<Memory> = (0..metas)
        .map(|i| Memory::new(format!("mem-m{i}")))
        .collect();
    let pipeline = open_over(s, &data, &meta, &key())
        .await
        .expect("open pipeline");
    Rig {
        data,
        meta,
        pipeline,
    }
}

pub async fn rig(k: usize, m: usize, stripe: usize) -> Rig {
    rig_with(settings(k, m, stripe), k + m, 3).await
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    r.fill(&mut v[..]);
    v
}

pub fn text_bytes(len: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog; "
        .iter()
        .cycle()
        .take(len)
        .copied()
        .collect()
}
