//! The whole stack in one process: a FUSE mount over an engine whose cold tier is the backup
//! pipeline (2+1 over three local directories). Files written through the mount end up in
//! sealed block segments, which are uploaded and evicted; one backend is then lost entirely, and
//! after a fresh mount (empty caches) the files still read back byte-identical: every block now
//! comes from the surviving shards, decrypted and decoded on the way up.

#![allow(clippy::unwrap_used)] // a test: a failed step should panic right there

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use qsfs::backup::backends::LocalDir;
use qsfs::backup::crypto::{KdfParams, KeySource};
use qsfs::backup::placement::Policy;
use qsfs::backup::{Pipeline, Settings};
use qsfs::core::{Backend, Store};
use qsfs::fuse::layout::Namespaces;
use qsfs::fuse::{mount, Fs, FsConfig, MountOptions};
use qsfs::store::{cold_key, Engine, EngineConfig};
use rand::{RngCore, SeedableRng};

fn leaves(nodes: &[PathBuf], role: &str) -> Vec<Arc<dyn Backend>> {
    nodes
        .iter()
        .map(|n| Arc::new(LocalDir::open(n.join(role)).unwrap()) as Arc<dyn Backend>)
        .collect()
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn files_survive_offload_and_a_lost_backend() {
    let work = tempfile::tempdir().unwrap();
    let nodes: Vec<PathBuf> = (0..3)
        .map(|i| work.path().join(format!("node{i}")))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let settings = Settings {
        policy: Policy::new(2, 1),
        stripe_size: 256 * 1024,
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        ..Settings::default()
    };
    let key = KeySource::passphrase("stack test");
    let pipeline = Arc::new(
        rt.block_on(Pipeline::open(
            settings,
            vec![leaves(&nodes, "data")],
            leaves(&nodes, "meta"),
            &key,
        ))
        .unwrap(),
    );

    let engine_dir = work.path().join("engine");
    let config = EngineConfig {
        cold_tier: Some(pipeline.clone()),
        ..EngineConfig::default()
    };
    let engine = Engine::open(&engine_dir, config).unwrap();
    let store: Arc<dyn Store> = Arc::new(engine.clone());
    let mnt = tempfile::tempdir().unwrap();

    // Sizes straddle the block size (128 KiB) and the stripe size; random bytes do not compress.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let files: Vec<(String, Vec<u8>)> = [(1 << 20) + 7, 200_000, 131_072, 10]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let mut v = vec![0u8; len];
            rng.fill_bytes(&mut v);
            (format!("dir/file{i}.bin"), v)
        })
        .collect();

    let fs = Fs::open(store.clone(), FsConfig::default()).unwrap();
    let mounted = mount(fs, mnt.path(), &MountOptions::default()).unwrap();
    std::fs::create_dir(mnt.path().join("dir")).unwrap();
    for (name, data) in &files {
        std::fs::write(mnt.path().join(name), data).unwrap();
    }
    // Unmounting flushes every dirty block to the engine and syncs it.
    mounted.unmount().unwrap();

    // Seal the block namespace and move its sealed segments to the cold tier.
    let block_ns = Namespaces::new(&FsConfig::default().prefix).block;
    engine.rotate(&block_ns).unwrap();
    let sealed: Vec<_> = engine
        .segments(&block_ns)
        .unwrap()
        .into_iter()
        .filter(|s| s.sealed && !s.offloaded && s.length > 0)
        .collect();
    let sealed_bytes: u64 = sealed.iter().map(|s| s.length).sum();
    let written: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    assert!(
        sealed_bytes >= written,
        "sealed block segments hold {sealed_bytes} bytes, less than the {written} written"
    );
    for seg in &sealed {
        let bytes = Bytes::from(std::fs::read(&seg.path).unwrap());
        rt.block_on(pipeline.put(&cold_key(&block_ns, seg.id), bytes))
            .unwrap();
        engine.offload_segment(&block_ns, seg.id).unwrap();
        assert!(!seg.path.exists());
    }

    // Lose node 1 completely: its shards and its metadata replica.
    assert!(
        count_files(&nodes[1].join("data")) > 0,
        "node 1 held no shards, so losing it proves nothing"
    );
    std::fs::remove_dir_all(&nodes[1]).unwrap();

    // A fresh mount has empty caches: every block is read from the engine, hence from the
    // cold tier, reconstructed from the two surviving backends.
    let fs = Fs::open(store, FsConfig::default()).unwrap();
    let mounted = mount(fs, mnt.path(), &MountOptions::default()).unwrap();
    for (name, data) in &files {
        let got = std::fs::read(mnt.path().join(name)).unwrap();
        assert!(
            got == *data,
            "{name} differs after offload and backend loss"
        );
    }
    mounted.unmount().unwrap();
    // Reads fetched ranges; they did not quietly bring the segments back to local disk.
    for seg in &sealed {
        assert!(!seg.path.exists(), "segment {} came back locally", seg.id);
    }
}
