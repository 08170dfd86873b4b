//! Losing backends, corrupting shards, tampering with metadata, silent backends.

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use qsfs_backup::ops::{self, RetrieveOptions};
use qsfs_backup::progress::NoProgress;
use qsfs_core::{Backend, Error};

fn subsets(n: usize, max: usize) -> Vec<Vec<usize>> {
    (0u32..(1 << n))
        .filter(|s| s.count_ones() as usize <= max)
        .map(|s| (0..n).filter(|i| s & (1 << i) != 0).collect())
        .collect()
}

/// For each geometry: every subset of ≤ m lost backends still retrieves byte-identical data;
/// m+1 lost gives a clear error naming the missing shards and leaves no output file.
#[tokio::test]
async fn loss_matrix() {
    for (k, m) in [(2, 1), (2, 2), (4, 2), (10, 5)] {
        let stripe = 1024;
        let r = rig(k, m, stripe).await;
        // Several stripes for the small geometries, one for 10+5 to keep 4944 retrieves fast.
        let len = if k + m > 6 { 900 } else { 2 * stripe + 100 };
        let data = random_bytes(len, (k * 100 + m) as u64);
        r.pipeline
            .put("obj", Bytes::from(data.clone()))
            .await
            .expect("put");
        let rec = r.pipeline.record("obj").await.expect("record");
        let n = k + m;
        for lost in subsets(n, m) {
            for &i in &lost {
                r.data[i].set_down(true);
            }
            let got = r
                .pipeline
                .read_all(&rec)
                .await
                .unwrap_or_else(|e| panic!("{k}+{m} losing {lost:?}: {e}"));
            assert!(got == data, "{k}+{m} losing {lost:?}: bytes differ");
            for &i in &lost {
                r.data[i].set_down(false);
            }
        }
        // m + 1 lost: a few subsets, through the file-level retrieve.
        let dir = tempfile::tempdir().expect("tempdir");
        for start in 0..3.min(n) {
            let lost: Vec<usize> = (0..=m).map(|i| (start + i * 2) % n).collect();
            let mut uniq = lost.clone();
            uniq.sort_unstable();
            uniq.dedup();
            if uniq.len() != m + 1 {
                continue;
            }
            for &i in &uniq {
                r.data[i].set_down(true);
            }
            let out = dir.path().join(format!("out-{start}"));
            let e = ops::retrieve_to_path(
                &r.pipeline,
                "obj",
                &out,
                &RetrieveOptions::default(),
                &NoProgress,
            )
            .await
            .expect_err("m+1 lost must fail");
            let msg = e.to_string();
            assert!(
                msg.contains("needs") && msg.contains("mem-d"),
                "{k}+{m}: unclear error: {msg}"
            );
            for &i in &uniq {
                assert!(
                    msg.contains(&format!("mem-d{i}")),
                    "{k}+{m}: error does not name mem-d{i}: {msg}"
                );
            }
            assert!(
                e.is_retryable(),
                "only unreachable backends: worth a retry: {e:?}"
            );
            assert_eq!(
                std::fs::read_dir(dir.path()).expect("dir").count(),
                0,
                "no partial output file"
            );
            for &i in &uniq {
                r.data[i].set_down(false);
            }
        }
    }
}

/// Flip a byte in or truncate shards: detected, retrieve succeeds, rebuild repairs, clean after.
#[tokio::test]
async fn corruption_is_detected_and_repaired() {
    let r = rig(2, 2, 1024).await;
    let data = random_bytes(3000, 5);
    r.pipeline
        .put("obj", Bytes::from(data.clone()))
        .await
        .expect("put");
    let rec = r.pipeline.record("obj").await.expect("record");
    // Stripe 0: flip a byte on one backend; stripe 1: truncate on two backends.
    let mut damaged = 0;
    for (i, d) in r.data.iter().enumerate() {
        for key in d.keys() {
            if key.contains("00000000.") && i == 0 {
                assert!(d.tamper(&key, |v| v[7] ^= 0x40));
                damaged += 1;
            }
            if key.contains("00000001.") && (i == 1 || i == 2) {
                assert!(d.tamper(&key, |v| v.truncate(v.len() / 2)));
                damaged += 1;
            }
        }
    }
    assert_eq!(damaged, 3);
    let h = r.pipeline.inspect(&rec, true, None).await;
    assert_eq!(h.problems.len(), 3, "{:?}", h.problems);
    assert!(h
        .problems
        .iter()
        .all(|p| p.kind == qsfs_backup::pipeline::ProblemKind::Corrupt));
    assert_eq!(h.margin, 0);
    // Retrieve succeeds, reports, and read-repair fixes.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("o");
    let rep = ops::retrieve_to_path(
        &r.pipeline,
        "obj",
        &out,
        &RetrieveOptions::default(),
        &NoProgress,
    )
    .await
    .expect("retrieve despite corruption");
    assert_eq!(std::fs::read(&out).expect("read"), data);
    assert!(!rep.problems.is_empty(), "problems are reported");
    assert_eq!(rep.repaired, 3);
    let h = r.pipeline.inspect(&rec, true, None).await;
    assert!(h.is_clean(), "second deep check clean: {:?}", h.problems);

    // Again, repaired by an explicit rebuild this time.
    let victim = r
        .data
        .iter()
        .find(|d| d.keys().iter().any(|k| k.contains("00000002.")))
        .expect("holder");
    let key = victim
        .keys()
        .into_iter()
        .find(|k| k.contains("00000002."))
        .expect("key");
    assert!(victim.tamper(&key, |v| v[0] ^= 1));
    let (reports, _) = ops::rebuild(&r.pipeline, Some("obj"))
        .await
        .expect("rebuild");
    assert!(reports[0].as_ref().expect("report").rewritten >= 1);
    let (checks, _) = ops::check(&r.pipeline, Some("obj"), true)
        .await
        .expect("check");
    assert!(checks[0].is_clean());
    assert_eq!(r.pipeline.get("obj").await.expect("get"), data);

    // More than m corrupt in one stripe: a clean error, not wrong data.
    for d in r.data.iter().take(3) {
        for key in d.keys() {
            if key.contains("00000000.") {
                d.tamper(&key, |v| v[1] ^= 1);
            }
        }
    }
    let e = r.pipeline.get("obj").await.expect_err("3 of 4 corrupt");
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
}

/// A dead backend is replaced: rebuild moves only its shards, onto a spare, and the object then
/// survives losing m other originals.
#[tokio::test]
async fn rebuild_onto_a_spare() {
    let r = rig_with(settings(2, 2, 1024), 5, 3).await;
    let data = random_bytes(2500, 11);
    r.pipeline
        .put("obj", Bytes::from(data.clone()))
        .await
        .expect("put");
    let rec = r.pipeline.record("obj").await.expect("record");
    let used: Vec<usize> = (0..5).filter(|&i| !r.data[i].is_empty()).collect();
    assert_eq!(used.len(), 4, "one backend is spare");
    let victim = used[0];
    r.data[victim].set_down(true);
    r.data[victim].wipe();
    let rep = r.pipeline.repair(&rec, None).await.expect("repair");
    assert_eq!(rep.rewritten, 3, "one shard per stripe re-created");
    assert_eq!(rep.moved, 3);
    let spare = (0..5).find(|i| !used.contains(i)).expect("spare");
    assert_eq!(r.data[spare].keys().len(), 3, "the spare got them");
    let rec2 = r.pipeline.record("obj").await.expect("record");
    assert!(rec2.version > rec.version);
    // Lose two more originals: still readable.
    r.data[used[1]].set_down(true);
    r.data[used[2]].set_down(true);
    assert_eq!(r.pipeline.get("obj").await.expect("get"), data);
}

/// A backend that refuses a write (here: full) takes no new shards for a while, but what it
/// already holds stays readable: with two other backends gone, an object needs it.
#[tokio::test]
async fn a_backend_that_refuses_writes_still_serves_reads() {
    let mut s = settings(2, 2, 1024);
    s.timeouts.down_for = Duration::from_secs(60);
    let r = rig_with(s, 4, 3).await;
    let data = random_bytes(1500, 21);
    r.pipeline
        .put("old", Bytes::from(data.clone()))
        .await
        .expect("put");
    r.data[0].set_full(true);
    // 2+2 over 4 backends needs all four, so the full one must be asked, and refuses.
    let e = r
        .pipeline
        .put("new", Bytes::from(random_bytes(1500, 22)))
        .await
        .expect_err("only 3 backends take writes");
    assert!(e.to_string().contains("mem-d0 (write failed"), "{e}");
    r.data[1].set_down(true);
    r.data[2].set_down(true);
    assert_eq!(
        r.pipeline.get("old").await.expect("read from the full one"),
        data
    );
}

/// Swapped records, replayed records and a wrong passphrase give clear errors, never data.
#[tokio::test]
async fn tampering_is_refused() {
    let r = rig(2, 1, 1024).await;
    r.pipeline
        .put("a", Bytes::from_static(b"contents of a"))
        .await
        .expect("put a");
    r.pipeline
        .put("b", Bytes::from_static(b"contents of b"))
        .await
        .expect("put b");
    let rec_keys = |m: &qsfs_backup::backends::Memory| -> Vec<String> {
        // The versioned keys (each record's newest envelope is under `latest` too).
        m.keys()
            .into_iter()
            .filter(|k| k.contains("/m/") && !k.ends_with("/latest"))
            .collect()
    };
    // Swap the two records on every metadata backend.
    let mut saved = Vec::new();
    for m in &r.meta {
        let ks = rec_keys(m);
        assert_eq!(ks.len(), 2);
        let (va, vb) = (
            m.get(&ks[0]).await.expect("get"),
            m.get(&ks[1]).await.expect("get"),
        );
        saved.push((ks.clone(), va.clone(), vb.clone()));
        m.put(&ks[0], vb).await.expect("put");
        m.put(&ks[1], va).await.expect("put");
    }
    for name in ["a", "b"] {
        let e = r.pipeline.get(name).await.expect_err("swapped");
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains("swapped"), "{e}");
    }
    let e = r
        .pipeline
        .list("")
        .await
        .expect_err("list refuses tampered records");
    assert!(matches!(e, Error::Corrupt { .. }));
    for (m, (ks, va, vb)) in r.meta.iter().zip(&saved) {
        m.put(&ks[0], va.clone()).await.expect("restore");
        m.put(&ks[1], vb.clone()).await.expect("restore");
    }
    assert_eq!(
        r.pipeline.get("a").await.expect("restored"),
        Bytes::from_static(b"contents of a")
    );

    // Replay: keep version 1 of "a", store version 2, put version 1 back.
    let old: Vec<(String, Bytes)> = {
        let mut v = Vec::new();
        for m in &r.meta {
            for k in rec_keys(m) {
                v.push((k.clone(), m.get(&k).await.expect("get")));
            }
        }
        v
    };
    r.pipeline
        .put("a", Bytes::from_static(b"version two of a"))
        .await
        .expect("put v2");
    let v1_keys: Vec<&(String, Bytes)> = old
        .iter()
        .filter(|(k, _)| k.ends_with("0000000000000001"))
        .collect();
    // (1) the old envelope under its own key again: superseded, version 2 still served.
    for (m, (k, v)) in r.meta.iter().zip(v1_keys.iter().step_by(2)) {
        m.put(k, v.clone()).await.expect("replay");
    }
    assert_eq!(
        r.pipeline.get("a").await.expect("v2"),
        Bytes::from_static(b"version two of a")
    );
    // (2) the old envelope under the new version's key: rejected.
    for m in &r.meta {
        let v2 = rec_keys(m)
            .into_iter()
            .find(|k| k.ends_with("0000000000000002"))
            .expect("v2 key");
        let hash_dir = v2.rsplit_once('/').expect("dir").0.to_string();
        let (_, v1) = old
            .iter()
            .find(|(k, _)| k.starts_with(&hash_dir))
            .expect("old of same path");
        m.put(&v2, v1.clone()).await.expect("replay as v2");
    }
    let e = r.pipeline.get("a").await.expect_err("replayed");
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("replayed"), "{e}");

    // Wrong passphrase: refused at open.
    let e = open_over(
        settings(2, 1, 1024),
        &r.data,
        &r.meta,
        &qsfs_backup::crypto::KeySource::passphrase("nope"),
    )
    .await
    .expect_err("wrong passphrase");
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    assert!(e.to_string().contains("wrong passphrase"));
}

/// A backend that never answers is treated as down within the configured timeout.
#[tokio::test]
async fn silent_backend_costs_one_timeout() {
    let mut s = settings(2, 2, 1024);
    s.timeouts.down_for = Duration::from_secs(60);
    let r = rig_with(s, 5, 3).await;
    let data = random_bytes(5000, 3);
    r.pipeline
        .put("obj", Bytes::from(data.clone()))
        .await
        .expect("put");
    let rec = r.pipeline.record("obj").await.expect("record");
    let holder = (0..5).find(|&i| !r.data[i].is_empty()).expect("holder");
    r.data[holder].set_hanging(true);
    let t = Instant::now();
    assert_eq!(r.pipeline.read_all(&rec).await.expect("read"), data);
    let took = t.elapsed();
    // Bounded by the 300 ms op timeout (plus slack), not by the hanging backend.
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Stores skip it (health probe times out after 200 ms) and still meet the policy.
    r.pipeline
        .put("obj2", Bytes::from(data.clone()))
        .await
        .expect("degraded write");
    let rec2 = r.pipeline.record("obj2").await.expect("record");
    assert!(!rec2.backends.contains(&format!("mem-d{holder}")));
    // A silent metadata backend: the quorum (2 of 3) still answers.
    r.meta[0].set_hanging(true);
    assert_eq!(
        r.pipeline
            .get("obj2")
            .await
            .expect("get with a silent meta backend"),
        data
    );
}

/// With too few backends for the policy, stores fail fast naming the unreachable ones.
#[tokio::test]
async fn store_without_enough_backends_names_them() {
    let r = rig(2, 2, 1024).await;
    r.data[1].set_down(true);
    let e = r
        .pipeline
        .put("obj", Bytes::from_static(b"x"))
        .await
        .expect_err("3 of 4 left for 2+2");
    let msg = e.to_string();
    assert!(msg.contains("mem-d1"), "{msg}");
    assert!(
        r.data.iter().all(|d| d.keys().is_empty()),
        "nothing half-written"
    );
}

/// Metadata survives losing a minority of its backends, and writes need a majority.
#[tokio::test]
async fn metadata_quorum() {
    let r = rig(2, 1, 1024).await;
    r.meta[0].set_down(true);
    r.pipeline
        .put("o", Bytes::from_static(b"hello"))
        .await
        .expect("2 of 3 meta up");
    r.meta[0].set_down(false);
    r.meta[1].set_down(true);
    assert_eq!(
        r.pipeline.get("o").await.expect("read"),
        Bytes::from_static(b"hello")
    );
    r.meta[2].set_down(true);
    let e = r.pipeline.get("o").await.expect_err("1 of 3");
    assert!(e.to_string().contains("quorum"), "{e}");
    assert!(e.is_retryable(), "unavailable, not corrupt: {e:?}");
    r.meta[1].set_down(false);
    r.meta[2].set_down(false);
    // Rebuild re-replicates the record to the backend that missed it.
    let (reports, _) = ops::rebuild(&r.pipeline, Some("o")).await.expect("rebuild");
    assert_eq!(reports[0].as_ref().expect("report").metadata_replicas, 1);
    assert_eq!(
        r.meta[0]
            .keys()
            .iter()
            .filter(|k| k.contains("/m/") && !k.ends_with("/latest"))
            .count(),
        1
    );
}

/// A backend behind a real socket that accepts connections and never answers.
#[derive(Debug)]
struct Silent {
    addr: std::net::SocketAddr,
}

impl Silent {
    async fn ask<T>(&self) -> qsfs_core::Result<T> {
        use tokio::io::AsyncReadExt;
        let mut s = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| Error::io("connect", e))?;
        let mut b = [0u8; 1];
        let _ = s.read(&mut b).await;
        Err(Error::Unavailable("connection closed".into()))
    }
}

#[async_trait::async_trait]
impl Backend for Silent {
    fn name(&self) -> String {
        format!("silent://{}", self.addr)
    }
    async fn put(&self, _: &str, _: Bytes) -> qsfs_core::Result<()> {
        self.ask().await
    }
    async fn get(&self, _: &str) -> qsfs_core::Result<Bytes> {
        self.ask().await
    }
    async fn delete(&self, _: &str) -> qsfs_core::Result<()> {
        self.ask().await
    }
    async fn exists(&self, _: &str) -> qsfs_core::Result<bool> {
        self.ask().await
    }
    async fn list(&self, _: &str) -> qsfs_core::Result<Vec<String>> {
        self.ask().await
    }
    async fn health(&self) -> qsfs_core::Health {
        match self.ask::<()>().await {
            Ok(()) => qsfs_core::Health::up(Duration::ZERO),
            Err(e) => qsfs_core::Health::down(e.to_string()),
        }
    }
}

#[tokio::test]
async fn socket_that_never_answers_is_down_within_the_timeout() {
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accept and hold every connection, never writing a byte.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let data: Vec<qsfs_backup::backends::Memory> = (0..4)
        .map(|i| qsfs_backup::backends::Memory::new(format!("d{i}")))
        .collect();
    let meta: Vec<qsfs_backup::backends::Memory> = (0..3)
        .map(|i| qsfs_backup::backends::Memory::new(format!("m{i}")))
        .collect();
    let mut group: Vec<Arc<dyn Backend>> = data
        .iter()
        .map(|m| Arc::new(m.clone()) as Arc<dyn Backend>)
        .collect();
    group.push(Arc::new(Silent { addr }));
    let metas = meta
        .iter()
        .map(|m| Arc::new(m.clone()) as Arc<dyn Backend>)
        .collect();
    let mut s = settings(2, 2, 1024);
    s.timeouts.down_for = Duration::from_secs(60);
    let p = qsfs_backup::Pipeline::open(s, vec![group], metas, &key())
        .await
        .expect("open");
    let bytes = random_bytes(3000, 2);
    // The store probes health (200 ms limit), skips the silent node and writes 2+2 on the rest.
    let t = Instant::now();
    p.put("o", Bytes::from(bytes.clone()))
        .await
        .expect("store with a silent backend");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let rec = p.record("o").await.expect("record");
    assert!(!rec.backends.iter().any(|b| b.starts_with("silent")));
    assert_eq!(p.get("o").await.expect("get"), bytes);
    let st = ops::status(&p).await;
    assert!(st
        .iter()
        .any(|r| r.name.starts_with("silent") && r.status == "down"));
    holder.abort();
}

/// A store that cannot be placed because backends are down says so once, and names them.
#[tokio::test]
async fn a_store_with_too_many_backends_down_names_them_once() {
    let r = rig(2, 2, 1024).await;
    r.data[0].set_down(true);
    r.data[3].set_down(true);
    let e = r
        .pipeline
        .put("obj", Bytes::from_static(b"data"))
        .await
        .expect_err("4 shards on 2 backends");
    let msg = e.to_string();
    assert_eq!(msg.matches("placement impossible").count(), 1, "{msg}");
    assert!(msg.contains("unreachable backends: mem-d0"), "{msg}");
    assert!(msg.contains("mem-d3"), "{msg}");
    assert!(e.is_retryable(), "{e:?}");
}

/// A quick check (not `--deep`) finds a truncated shard by its length, not only missing ones,
/// without reading any shard.
#[tokio::test]
async fn a_quick_check_finds_a_truncated_shard() {
    use qsfs_backup::metadata::ObjectRecord;
    use qsfs_backup::pipeline::ProblemKind;
    let r = rig(2, 2, 1024).await;
    r.pipeline
        .put("obj", Bytes::from(random_bytes(3000, 9)))
        .await
        .expect("put");
    let rec = r.pipeline.record("obj").await.expect("record");
    assert!(r.pipeline.inspect(&rec, false, None).await.is_clean());
    let key = ObjectRecord::shard_key("t", &rec.object_id, 1, 2);
    assert!(r
        .data
        .iter()
        .any(|d| d.tamper(&key, |v| v.truncate(v.len() - 1))));
    let gone = ObjectRecord::shard_key("t", &rec.object_id, 2, 0);
    for d in &r.data {
        let _ = d.delete(&gone).await;
    }
    let health = r.pipeline.inspect(&rec, false, None).await;
    let found: Vec<(u64, usize, ProblemKind)> = health
        .problems
        .iter()
        .map(|p| (p.stripe, p.shard, p.kind))
        .collect();
    assert_eq!(
        found,
        [(1, 2, ProblemKind::Corrupt), (2, 0, ProblemKind::Missing)],
        "{:?}",
        health.problems
    );
    assert!(
        health.problems[0].detail.contains("bytes, expected"),
        "{}",
        health.problems[0]
    );
}
