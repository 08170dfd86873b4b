//! An engine whose cold tier is the backup pipeline: fill a segment, seal it, upload it
//! (encrypted, 2+1 erasure-coded over three backends), evict the local copy, and read the values
//! back, now fetched range by range from the cold tier; finally restore the segment locally.
//!
//! Run: `cargo run --example tiered_engine`

use std::sync::Arc;

use bytes::Bytes;
use qsfs::backup::backends::Memory;
use qsfs::backup::crypto::{KdfParams, KeySource};
use qsfs::backup::placement::Policy;
use qsfs::backup::{Pipeline, Settings};
use qsfs::core::{Backend, Store};
use qsfs::store::{cold_key, Engine, EngineConfig};

fn main() -> anyhow::Result<()> {
    // The pipeline is async; the engine is synchronous and runs its cold reads on a runtime of
    // its own, so this thread stays outside any runtime and enters `rt` only to upload.
    let rt = tokio::runtime::Runtime::new()?;
    let data: Vec<Arc<dyn Backend>> = (0..3)
        .map(|i| Arc::new(Memory::new(format!("d{i}"))) as _)
        .collect();
    let meta: Vec<Arc<dyn Backend>> = (0..3)
        .map(|i| Arc::new(Memory::new(format!("m{i}"))) as _)
        .collect();
    let settings = Settings {
        policy: Policy::new(2, 1),
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        ..Settings::default()
    };
    let key = KeySource::passphrase("example passphrase");
    let pipeline = Arc::new(rt.block_on(Pipeline::open(settings, vec![data], meta, &key))?);

    let dir = tempfile::tempdir()?;
    let config = EngineConfig {
        cold_tier: Some(pipeline.clone()),
        ..EngineConfig::default()
    };
    let engine = Engine::open(dir.path(), config)?;

    let values: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| (format!("k{i:02}"), vec![i as u8; 10_000 + i]))
        .collect();
    for (k, v) in &values {
        engine.set("default", Some(k.as_bytes()), v)?;
    }
    // Seal the current segment: it becomes immutable and eligible for the cold tier.
    engine.rotate("default")?;
    let sealed: Vec<_> = engine
        .segments("default")?
        .into_iter()
        .filter(|s| s.sealed && !s.offloaded)
        .collect();
    assert!(!sealed.is_empty(), "rotation sealed nothing");

    for seg in &sealed {
        // Upload under the key the engine will look for, then evict the local file.
        let bytes = Bytes::from(std::fs::read(&seg.path)?);
        rt.block_on(pipeline.put(&cold_key("default", seg.id), bytes))?;
        engine.offload_segment("default", seg.id)?;
        assert!(!seg.path.exists(), "offloading keeps the local file");
    }
    assert!(engine
        .segments("default")?
        .iter()
        .any(|s| s.offloaded && s.size == 0));

    // Reads now go to the pipeline (decrypt + decode) and return the same bytes.
    for (k, v) in &values {
        assert_eq!(
            engine
                .get("default", k.as_bytes())?
                .map(|e| e.value)
                .as_ref(),
            Some(v)
        );
    }

    // Bring the segments home again; reads are local and still identical.
    for seg in &sealed {
        engine.restore_segment("default", seg.id)?;
        assert!(seg.path.exists());
    }
    for (k, v) in &values {
        assert_eq!(
            engine
                .get("default", k.as_bytes())?
                .map(|e| e.value)
                .as_ref(),
            Some(v)
        );
    }

    println!(
        "tiered_engine: ok ({} values read back from {} offloaded segment(s))",
        values.len(),
        sealed.len()
    );
    Ok(())
}
