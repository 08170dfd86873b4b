//! The pipeline end to end over in-memory backends: round trips, ranges, conformance.

use crate::common;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use qsfs_backup::stripe::ShardHash;
use qsfs_core::Backend;

#[tokio::test]
async fn pipeline_passes_the_backend_conformance_suite() {
    let r = rig(2, 2, 1 << 20).await;
    qsfs_core::testing::backend::run(&r.pipeline).await;
}

#[tokio::test]
async fn edge_sizes_round_trip() {
    let stripe = 4096;
    let r = rig(3, 2, stripe).await;
    for (i, len) in [0, 1, stripe - 1, stripe, stripe + 1, 3 * stripe + 7]
        .into_iter()
        .enumerate()
    {
        for data in [random_bytes(len, i as u64), text_bytes(len)] {
            let key = format!("obj/{i}");
            r.pipeline
                .put(&key, Bytes::from(data.clone()))
                .await
                .expect("put");
            assert_eq!(r.pipeline.get(&key).await.expect("get"), data, "size {len}");
        }
    }
}

#[tokio::test]
async fn shards_of_a_stripe_go_to_distinct_backends() {
    let r = rig(2, 2, 4096).await;
    r.pipeline
        .put("o", Bytes::from(random_bytes(10_000, 1)))
        .await
        .expect("put");
    let rec = r.pipeline.record("o").await.expect("record");
    for st in &rec.stripes {
        let mut b: Vec<u16> = st.shards.iter().map(|s| s.backend).collect();
        b.sort_unstable();
        b.dedup();
        assert_eq!(b.len(), 4);
    }
    // Every data backend holds exactly one shard of each of the 3 stripes.
    for d in &r.data {
        assert_eq!(d.keys().len(), 3, "{}", qsfs_core::Backend::name(d));
    }
}

#[tokio::test]
async fn a_range_reads_only_the_stripes_it_needs() {
    let stripe = 4096;
    let r = rig(2, 1, stripe).await;
    let data = random_bytes(5 * stripe, 9);
    r.pipeline
        .put("o", Bytes::from(data.clone()))
        .await
        .expect("put");
    let rec = r.pipeline.record("o").await.expect("record");
    // Make every shard of stripes 0, 1, 3 and 4 unreadable: a range inside stripe 2 still works.
    for d in &r.data {
        for k in d.keys() {
            if k.contains("/d/") && !k.contains("00000002.") {
                d.tamper(&k, |v| v.clear());
            }
        }
    }
    let got = r
        .pipeline
        .read_range(&rec, (2 * stripe + 10) as u64..(3 * stripe - 10) as u64)
        .await
        .expect("range");
    assert_eq!(&got[..], &data[2 * stripe + 10..3 * stripe - 10]);
    assert!(
        r.pipeline.read_range(&rec, 0..10).await.is_err(),
        "stripe 0 is gone"
    );
}

#[tokio::test]
async fn restore_replaces_and_versions_grow() {
    let r = rig(2, 1, 4096).await;
    r.pipeline
        .put("o", Bytes::from_static(b"one"))
        .await
        .expect("put");
    r.pipeline
        .put("o", Bytes::from_static(b"two!"))
        .await
        .expect("put");
    let rec = r.pipeline.record("o").await.expect("record");
    assert_eq!(rec.version, 2);
    assert_eq!(
        r.pipeline.get("o").await.expect("get"),
        Bytes::from_static(b"two!")
    );
    let gc = r.pipeline.gc().await.expect("gc");
    assert_eq!(
        gc.shards_deleted, 3,
        "the three shards of version 1 are superseded"
    );
    assert_eq!(
        r.pipeline.get("o").await.expect("get after gc"),
        Bytes::from_static(b"two!")
    );
    r.pipeline.delete("o").await.expect("delete");
    assert!(!r.pipeline.exists("o").await.expect("exists"));
    r.pipeline
        .put("o", Bytes::from_static(b"three"))
        .await
        .expect("put after delete");
    assert_eq!(r.pipeline.record("o").await.expect("record").version, 4);
}

#[tokio::test]
async fn metadata_keys_reveal_no_names_and_no_plaintext() {
    let r = rig(2, 1, 4096).await;
    let secret = text_bytes(3000);
    r.pipeline
        .put("secret-name", Bytes::from(secret.clone()))
        .await
        .expect("put");
    for m in r.meta.iter().chain(&r.data) {
        for k in m.keys() {
            assert!(!k.contains("secret"), "key {k} leaks the name");
            let v = m.get(&k).await.expect("get");
            assert!(
                !v.windows(8).any(|w| w == &secret[..8]),
                "{k} holds plaintext"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn round_trip_any_geometry(
        k in 1usize..5, m in 1usize..4, len_sel in 0usize..7, compressible in any::<bool>(),
        seed in any::<u64>(), a in 0u64..20_000, b in 0u64..20_000, format in 0usize..4,
    ) {
        let stripe = 2048usize;
        let len = [0, 1, stripe - 1, stripe, stripe + 1, 4 * stripe + 3, (seed % 9000) as usize][len_sel];
        let data = if compressible { text_bytes(len) } else { random_bytes(len, seed) };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let mut s = common::settings(k, m, stripe);
            s.format = [
                ShardHash::Sha256,
                ShardHash::Blake3,
                ShardHash::Blake3Plain,
                ShardHash::Blake3Tag,
            ][format];
            let r = common::rig_with(s, k + m, 3).await;
            r.pipeline.put("p/o", Bytes::from(data.clone())).await.expect("put");
            // Lose m backends, chosen by the seed.
            for i in 0..m {
                r.data[(seed as usize + i * 7) % (k + m)].set_down(true);
            }
            let got = r.pipeline.get("p/o").await.expect("get");
            assert_eq!(got.len(), data.len());
            assert!(got == data);
            let (lo, hi) = (a.min(b), a.max(b));
            let got = r.pipeline.get_range("p/o", lo..hi).await.expect("range");
            let want = qsfs_core::slice_range(&Bytes::from(data.clone()), lo..hi);
            assert!(got == want, "range {lo}..{hi} of {len}");
        });
    }
}

/// A Memory backend with a quirk in its writes.
#[derive(Debug)]
struct Quirky(qsfs_backup::backends::Memory, Quirk);

#[derive(Debug, Clone, Copy)]
enum Quirk {
    /// Writes of stripe 0's shards are held back, so later stripes of a store finish first.
    FirstStripeLate,
    /// It acknowledges a put and keeps other bytes (a byte flipped).
    Garbles,
}

#[async_trait::async_trait]
impl Backend for Quirky {
    fn name(&self) -> String {
        self.0.name()
    }
    async fn put(&self, key: &str, data: Bytes) -> qsfs_core::Result<()> {
        match self.1 {
            Quirk::FirstStripeLate if key.contains("/d/") && key.contains("/00000000.") => {
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                self.0.put(key, data).await
            }
            Quirk::FirstStripeLate => self.0.put(key, data).await,
            Quirk::Garbles => {
                let mut v = data.to_vec();
                if let Some(b) = v.get_mut(7) {
                    *b ^= 0x10;
                }
                self.0.put(key, v.into()).await
            }
        }
    }
    async fn get(&self, key: &str) -> qsfs_core::Result<Bytes> {
        self.0.get(key).await
    }
    async fn delete(&self, key: &str) -> qsfs_core::Result<()> {
        self.0.delete(key).await
    }
    async fn exists(&self, key: &str) -> qsfs_core::Result<bool> {
        self.0.exists(key).await
    }
    async fn list(&self, prefix: &str) -> qsfs_core::Result<Vec<String>> {
        self.0.list(prefix).await
    }
    async fn health(&self) -> qsfs_core::Health {
        self.0.health().await
    }
}

/// Stripes finish out of order (stripe 0 last); the record still lists them in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripes_written_out_of_order_are_recorded_in_order() {
    let stripe = 4096;
    let mut s = settings(2, 2, stripe);
    s.parallel_stripes = 4;
    s.timeouts.op = std::time::Duration::from_secs(5);
    let data: Vec<std::sync::Arc<dyn Backend>> = (0..4)
        .map(|i| {
            let m = qsfs_backup::backends::Memory::new(format!("late-{i}"));
            std::sync::Arc::new(Quirky(m, Quirk::FirstStripeLate)) as std::sync::Arc<dyn Backend>
        })
        .collect();
    let meta = vec![
        std::sync::Arc::new(qsfs_backup::backends::Memory::new("meta"))
            as std::sync::Arc<dyn Backend>,
    ];
    let p = qsfs_backup::Pipeline::open(s, vec![data], meta, &key())
        .await
        .expect("open");
    let content = random_bytes(3 * stripe + 100, 9);
    p.put("obj", Bytes::from(content.clone()))
        .await
        .expect("put");
    assert_eq!(p.get("obj").await.expect("get").as_ref(), &content[..]);
}

/// `store_verified` confirms every shard on its node as it is written: a node that keeps
/// other bytes than it was sent gets none of the object (its shards go elsewhere), and a deep
/// check finds nothing to repair. A plain `store` takes the node's word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_store_confirms_each_shard_and_avoids_a_node_that_damages_it() {
    use qsfs_backup::backends::Memory;
    use std::sync::Arc;
    let nodes = || {
        let mut data: Vec<Arc<dyn Backend>> =
            vec![Arc::new(Quirky(Memory::new("garbling"), Quirk::Garbles))];
        data.extend((0..4).map(|i| Arc::new(Memory::new(format!("good{i}"))) as Arc<dyn Backend>));
        let meta: Vec<Arc<dyn Backend>> = (0..3)
            .map(|i| Arc::new(Memory::new(format!("meta{i}"))) as Arc<dyn Backend>)
            .collect();
        (data, meta)
    };
    let ((data, meta), (data2, meta2)) = (nodes(), nodes());
    let mut s = settings(2, 2, 4096);
    // A node whose write failed stays out of the placement for a while, as by default.
    s.timeouts.down_for = std::time::Duration::from_secs(60);
    let p = qsfs_backup::Pipeline::open(s, vec![data], meta, &key())
        .await
        .unwrap();
    let body: Vec<u8> = (0..40_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let store = |name: &'static str, verified: bool| {
        let (p, body) = (p.clone(), body.clone());
        async move {
            let r = Box::new(std::io::Cursor::new(body));
            let none = &qsfs_backup::progress::NoProgress;
            if verified {
                p.store_verified(name, r, Default::default(), none).await
            } else {
                p.store(name, r, Default::default(), none).await
            }
        }
    };

    // An object is placed on 4 of the 5 nodes: store until one lands on the garbling node.
    let mut plain = None;
    for _ in 0..30 {
        let rec = store("plain", false).await.unwrap();
        if rec.backends.iter().any(|b| b == "garbling") {
            plain = Some(rec);
            break;
        }
    }
    let plain = plain.expect("an object placed on the garbling node");
    assert!(!p.inspect(&plain, true, None).await.is_clean());

    let checked = store("checked", true).await.unwrap();
    // The same, asked for by the settings: `verify_writes` makes every store a verified one.
    let mut s = settings(2, 2, 4096);
    s.verify_writes = true;
    let set_by_settings = qsfs_backup::Pipeline::open(s, vec![data2], meta2, &key())
        .await
        .unwrap();
    for i in 0..10 {
        let r = Box::new(std::io::Cursor::new(body.clone()));
        let rec = set_by_settings
            .store(
                &format!("o{i}"),
                r,
                Default::default(),
                &qsfs_backup::progress::NoProgress,
            )
            .await
            .unwrap();
        assert!(
            !rec.backends.iter().any(|b| b == "garbling"),
            "{:?}",
            rec.backends
        );
    }
    assert!(
        !checked.backends.iter().any(|b| b == "garbling"),
        "{:?}",
        checked.backends
    );
    assert!(p.inspect(&checked, true, None).await.is_clean());
    assert_eq!(p.get("checked").await.unwrap(), body);
}

/// An object's reader and writer do not sit on tokio's blocking pool for the whole transfer:
/// the backends' calls need that pool (local directories and 0-db nodes are driven by
/// blocking calls), so a transfer holding one of its threads could starve its own stripes.
/// With a pool of one thread, a store and a retrieve of many stripes still finish.
#[test]
fn a_transfer_leaves_the_blocking_pool_to_its_backends() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let stripe = 4096;
    let mut s = settings(2, 2, stripe);
    s.timeouts.op = std::time::Duration::from_secs(20);
    let data: Vec<std::sync::Arc<dyn Backend>> = (0..4)
        .map(|i| {
            let b = qsfs_backup::backends::LocalDir::open(dir.path().join(format!("d{i}")))
                .expect("local dir");
            std::sync::Arc::new(b) as std::sync::Arc<dyn Backend>
        })
        .collect();
    let meta = vec![
        std::sync::Arc::new(qsfs_backup::backends::Memory::new("meta"))
            as std::sync::Arc<dyn Backend>,
    ];
    let content = random_bytes(12 * stripe + 7, 12);
    let back = rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            let p = qsfs_backup::Pipeline::open(s, vec![data], meta, &key())
                .await
                .expect("open");
            p.put("obj", Bytes::from(content.clone()))
                .await
                .expect("put");
            p.get("obj").await.expect("get")
        })
        .await
        .expect("the transfer stalled")
    });
    assert_eq!(back.as_ref(), &content[..]);
}
