//! Pipeline throughput against its own parts, measured in one run on the same bytes:
//!
//! * `cipher/aes256gcmsiv`: bare AES-256-GCM-SIV over the object, stripe by stripe (baseline);
//! * `rs/encode_2+2`: bare Reed-Solomon 2+2 over the object;
//! * `pipeline/store`: the whole pipeline storing the object from a file, 2+2 over 4 LocalDir
//!   backends (plus 3 LocalDir metadata backends);
//! * `pipeline/retrieve`: reading it back (verified) into a sink;
//! * `pipeline/retrieve_2_down`: the same with 2 of the 4 backends down;
//! * `pipeline/memory/…`: the same three over 4 in-memory backends: the pipeline's own cost
//!   (read, compress, seal, encode, hash, record), with no file system under the shards;
//! * `placement/10x20_16+4`: one placement over 10 groups of 20 backends.
//!
//! Peak RSS after the pipeline benchmarks is printed (they run first, before the bare ones
//! allocate whole-object buffers). Object size: `QSFS_BENCH_MIB` (default 64).
//!
//! Run: `cargo bench -p qsfs-backup --bench pipeline` (backends under the system temp dir, so
//! on disk with fsync) or `QSFS_BENCH_DIR=/dev/shm cargo bench ...` (tmpfs: no disk waits).
//! Objects are stored in record format 5, as `qsfs backup` stores them (`QSFS_BENCH_FORMAT=4`:
//! format 4, BLAKE3 shard checksums); `QSFS_BENCH_FORMAT=3`
//! measures format 3, the storage tier's.
//!
//! With `QSFS_BENCH_CIPHER_FILE=FILE` it only times bare AES-256-GCM-SIV over FILE's bytes (default-size
//! stripes, best of 5, one core) and prints `cipher_seconds=S`: the baseline of
//! `crates/qsfs-backup/bench/backup-bench.sh`, measured on the very file it stores. With
//! `QSFS_BENCH_MEMORY=1` as well, it then prints `memory_store_seconds` and
//! `memory_retrieve_seconds`: best of 3 over in-memory backends, the pipeline's own cost on
//! that file.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{black_box, BenchmarkGroup, Criterion, Throughput};
use qsfs_backup::backends::{LocalDir, Memory};
use qsfs_backup::crypto::{KdfParams, KeySource, SecretKey};
use qsfs_backup::pipeline::Attrs;
use qsfs_backup::placement::{self, Policy};
use qsfs_backup::progress::NoProgress;
use qsfs_backup::stripe::ShardHash;
use qsfs_backup::{Pipeline, Settings};
use qsfs_core::{Backend, Error, Health, Result};

/// The allocator the `qsfs` program runs with, so the pipeline is measured as it runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stands in for a dead node under the name of a real one.
#[derive(Debug)]
struct Dead(String);

#[async_trait]
impl Backend for Dead {
    fn name(&self) -> String {
        self.0.clone()
    }
    async fn put(&self, _: &str, _: Bytes) -> Result<()> {
        Err(Error::Unavailable("dead".into()))
    }
    async fn get(&self, _: &str) -> Result<Bytes> {
        Err(Error::Unavailable("dead".into()))
    }
    async fn delete(&self, _: &str) -> Result<()> {
        Err(Error::Unavailable("dead".into()))
    }
    async fn exists(&self, _: &str) -> Result<bool> {
        Err(Error::Unavailable("dead".into()))
    }
    async fn list(&self, _: &str) -> Result<Vec<String>> {
        Err(Error::Unavailable("dead".into()))
    }
    async fn health(&self) -> Health {
        Health::down("dead")
    }
}

/// Store, retrieve and degraded retrieve of one object over one set of data backends.
struct Cases<'a> {
    rt: &'a tokio::runtime::Runtime,
    settings: &'a Settings,
    key: &'a KeySource,
    src: &'a std::path::Path,
}

impl Cases<'_> {
    fn run(
        &self,
        g: &mut BenchmarkGroup<'_, WallTime>,
        prefix: &str,
        data: Vec<Arc<dyn Backend>>,
        meta: Vec<Arc<dyn Backend>>,
    ) {
        let rt = self.rt;
        let open = |data| {
            rt.block_on(Pipeline::open(
                self.settings.clone(),
                vec![data],
                meta.clone(),
                self.key,
            ))
            .expect("open")
        };
        let p = open(data.clone());
        let store = || {
            let f = std::fs::File::open(self.src).expect("open");
            let stored =
                rt.block_on(p.store("bench/object", Box::new(f), Attrs::default(), &NoProgress));
            black_box(stored.expect("store"));
        };
        // The object the retrieves read, whichever cases a filter selects.
        store();
        // Each store supersedes the last; its shards are collected outside the timing, so the
        // backends hold one copy (not one per iteration: a growing tmpfs or disk measures the
        // machine's page allocation, not the pipeline).
        g.bench_function(format!("{prefix}store"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = std::time::Instant::now();
                    store();
                    spent += t.elapsed();
                    rt.block_on(p.gc()).expect("gc");
                }
                spent
            })
        });
        let rec = rt.block_on(p.record("bench/object")).expect("record");
        g.bench_function(format!("{prefix}retrieve"), |b| {
            b.iter(|| {
                rt.block_on(p.read_to(&rec, Box::new(std::io::sink()), &NoProgress))
                    .expect("retrieve")
            })
        });
        let degraded = data
            .iter()
            .enumerate()
            .map(|(i, d)| match i {
                0 | 1 => Arc::new(Dead(d.name())) as Arc<dyn Backend>,
                _ => d.clone(),
            })
            .collect();
        let p2 = open(degraded);
        g.bench_function(format!("{prefix}retrieve_2_down"), |b| {
            b.iter(|| {
                rt.block_on(p2.read_to(&rec, Box::new(std::io::sink()), &NoProgress))
                    .expect("degraded retrieve")
            })
        });
    }
}

/// The record format stored: format 5 as `qsfs backup` stores; `QSFS_BENCH_FORMAT=4` for
/// format 4 (BLAKE3 shard checksums), `=3` for the storage tier's.
fn bench_format() -> ShardHash {
    match std::env::var("QSFS_BENCH_FORMAT").as_deref() {
        Ok("3") => ShardHash::Blake3Plain,
        Ok("4") => ShardHash::Blake3Tag,
        _ => ShardHash::Xxh3Tag,
    }
}

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Seconds bare AES-256-GCM-SIV takes over `bytes`, cut as the pipeline cuts them.
fn bare_cipher_seconds(bytes: &[u8], stripe: usize) -> f64 {
    let dk = SecretKey::random();
    let mut buf = Vec::with_capacity(stripe + 16);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        for (i, chunk) in bytes.chunks(stripe).enumerate() {
            buf.clear();
            buf.extend_from_slice(chunk);
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
            dk.seal_in_place(&nonce, b"aad", &mut buf);
            black_box(&buf);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// As the `qsfs` command builds it: few blocking threads, so few malloc arenas keep freed
/// stripes.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(qsfs_backup::pipeline::BLOCKING_THREADS)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Best of 3 seconds to store `src` (2+2, record format 5 unless `QSFS_BENCH_FORMAT` says
/// otherwise) and to retrieve it into a sink, over
/// in-memory backends: the pipeline's own cost, with no server and no file system under the
/// shards, for comparison with the same store over real nodes.
fn memory_pipeline_seconds(src: &std::path::Path) -> (f64, f64) {
    let rt = runtime();
    let mem = |n, name: &str| -> Vec<Arc<dyn Backend>> {
        (0..n)
            .map(|i| Arc::new(Memory::new(format!("{name}{i}"))) as _)
            .collect()
    };
    let settings = Settings {
        kdf: KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        format: bench_format(),
        ..Settings::default()
    };
    let key = KeySource::passphrase("bench");
    let p = rt
        .block_on(Pipeline::open(
            settings,
            vec![mem(4, "data")],
            mem(3, "meta"),
            &key,
        ))
        .expect("open");
    let (mut store, mut retrieve) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let f = std::fs::File::open(src).expect("open");
        let t = std::time::Instant::now();
        rt.block_on(p.store("bench/object", Box::new(f), Attrs::default(), &NoProgress))
            .expect("store");
        store = store.min(t.elapsed().as_secs_f64());
        let rec = rt.block_on(p.record("bench/object")).expect("record");
        let t = std::time::Instant::now();
        rt.block_on(p.read_to(&rec, Box::new(std::io::sink()), &NoProgress))
            .expect("retrieve");
        retrieve = retrieve.min(t.elapsed().as_secs_f64());
        rt.block_on(p.gc()).expect("gc");
    }
    (store, retrieve)
}

fn main() {
    if let Ok(file) = std::env::var("QSFS_BENCH_CIPHER_FILE") {
        let bytes = std::fs::read(&file).expect("read the cipher benchmark's file");
        let s = bare_cipher_seconds(&bytes, Settings::default().stripe_size);
        drop(bytes);
        println!(
            "cipher_bytes={}",
            std::fs::metadata(&file).expect("stat").len()
        );
        println!("cipher_seconds={s:.4}");
        if std::env::var_os("QSFS_BENCH_MEMORY").is_some() {
            let (store, retrieve) = memory_pipeline_seconds(std::path::Path::new(&file));
            println!("memory_store_seconds={store:.4}");
            println!("memory_retrieve_seconds={retrieve:.4}");
        }
        return;
    }
    let mib: usize = std::env::var("QSFS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let size = mib << 20;
    let stripe = std::env::var("QSFS_BENCH_STRIPE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(Settings::default().stripe_size);
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let rt = runtime();
    // QSFS_BENCH_DIR=/dev/shm isolates the pipeline's CPU cost from the disk's fsync speed.
    let dir = match std::env::var("QSFS_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).expect("tempdir"),
        Err(_) => tempfile::tempdir().expect("tempdir"),
    };
    let src = dir.path().join("object.bin");
    {
        let mut f = std::fs::File::create(&src).expect("create");
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..mib {
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut chunk);
            f.write_all(&chunk).expect("write");
        }
    }
    let data_dirs: Vec<_> = (0..4)
        .map(|i| LocalDir::open(dir.path().join(format!("b{i}"))).expect("dir"))
        .collect();
    let meta: Vec<Arc<dyn Backend>> = (0..3)
        .map(|i| {
            Arc::new(LocalDir::open(dir.path().join(format!("m{i}"))).expect("dir"))
                as Arc<dyn Backend>
        })
        .collect();
    let mut settings = Settings {
        stripe_size: stripe,
        kdf: KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        format: bench_format(),
        ..Settings::default()
    };
    if let Some(par) = std::env::var("QSFS_BENCH_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.parallel_stripes = par;
    }
    let key = KeySource::passphrase("bench");
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(size as u64));
    let on = |g: &mut BenchmarkGroup<'_, WallTime>,
              prefix: &str,
              data: Vec<Arc<dyn Backend>>,
              meta: Vec<Arc<dyn Backend>>| {
        let cases = Cases {
            rt: &rt,
            settings: &settings,
            key: &key,
            src: &src,
        };
        cases.run(g, prefix, data, meta);
    };
    on(
        &mut g,
        "",
        data_dirs.iter().map(|d| Arc::new(d.clone()) as _).collect(),
        meta,
    );
    eprintln!(
        "peak RSS after pipeline benchmarks ({mib} MiB object): {} KiB",
        peak_rss_kib().unwrap_or(0)
    );
    // The pipeline's own cost: shards and records handed over in memory, no file system.
    let mem = |n, name: &str| {
        (0..n)
            .map(|i| Arc::new(Memory::new(format!("{name}{i}"))) as _)
            .collect()
    };
    on(&mut g, "memory/", mem(4, "data"), mem(3, "meta"));
    g.finish();

    // Baselines on the same bytes, stripe by stripe.
    let bytes = std::fs::read(&src).expect("read");
    let dk = SecretKey::random();
    let mut g = c.benchmark_group("cipher");
    g.throughput(Throughput::Bytes(size as u64));
    g.bench_function("aes256gcmsiv", |b| {
        b.iter(|| {
            for (i, chunk) in bytes.chunks(stripe).enumerate() {
                let mut buf = Vec::with_capacity(chunk.len() + 16);
                buf.extend_from_slice(chunk);
                let mut nonce = [0u8; 12];
                nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
                dk.seal_in_place(&nonce, b"aad", &mut buf);
                black_box(buf);
            }
        })
    });
    g.finish();
    let mut g = c.benchmark_group("rs");
    g.throughput(Throughput::Bytes(size as u64));
    g.bench_function("encode_2+2", |b| {
        b.iter(|| {
            for chunk in bytes.chunks(stripe) {
                black_box(qsfs_backup::codec::encode(chunk.to_vec(), 2, 2).expect("encode"));
            }
        })
    });
    g.finish();
    let mut g = c.benchmark_group("placement");
    let policy = Policy {
        k: 16,
        m: 4,
        redundant_groups: 1,
        redundant_nodes: 0,
        max_shards_per_backend: 1,
    };
    let groups: Vec<Vec<usize>> = (0..10).map(|g| (g * 20..g * 20 + 20).collect()).collect();
    g.bench_function("10x20_16+4", |b| {
        b.iter(|| placement::place(&policy, black_box(&groups), 7).expect("place"))
    });
    g.finish();
    c.final_summary();
}
