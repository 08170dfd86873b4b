//! Records of format 4: an uncompressed stripe's plaintext checksum is its AEAD tag, a compressed
//! stripe's is still BLAKE3 of what the decompressor must give back.

use crate::common;

use bytes::Bytes;
use common::*;
use qsfs_backup::metadata::ObjectRecord;
use qsfs_backup::ops;
use qsfs_backup::progress::NoProgress;
use qsfs_backup::stripe::ShardHash;
use qsfs_core::Backend;

const STRIPE: usize = 1024;

/// Two random stripes, two text stripes, a short random one: stripes 2 and 3 compress.
fn mixed() -> Vec<u8> {
    let mut v = random_bytes(2 * STRIPE, 41);
    v.extend(text_bytes(2 * STRIPE));
    v.extend(random_bytes(100, 42));
    v
}

async fn format_4_rig() -> Rig {
    let mut s = settings(2, 2, STRIPE);
    s.format = ShardHash::Blake3Tag;
    rig_with(s, 4, 3).await
}

/// The ciphertext of stripe `i` (data shards joined, padding dropped), read from the backends.
async fn ciphertext(r: &Rig, rec: &ObjectRecord, i: usize) -> Vec<u8> {
    let st = &rec.stripes[i];
    let mut out = Vec::new();
    for (j, loc) in st.shards.iter().take(rec.k as usize).enumerate() {
        let name = &rec.backends[loc.backend as usize];
        let node = r
            .data
            .iter()
            .find(|d| d.name() == *name)
            .expect("backend of the shard");
        let key = ObjectRecord::shard_key("t", &rec.object_id, i as u64, j);
        out.extend_from_slice(&node.get(&key).await.expect("shard"));
    }
    out.truncate(st.meta.cipher_len as usize);
    out
}

#[tokio::test]
async fn format_4_hashes_only_the_plaintext_the_tag_does_not_cover() {
    let r = format_4_rig().await;
    let data = mixed();
    r.pipeline
        .put("obj", Bytes::from(data.clone()))
        .await
        .expect("put");
    let rec = r.pipeline.record("obj").await.expect("record");
    assert_eq!(rec.shard_hash, ShardHash::Blake3Tag);
    let compressed: Vec<bool> = rec.stripes.iter().map(|s| s.meta.compressed).collect();
    assert_eq!(compressed, [false, false, true, true, false]);
    for (i, st) in rec.stripes.iter().enumerate() {
        let plain = &data[i * STRIPE..((i + 1) * STRIPE).min(data.len())];
        if st.meta.compressed {
            assert_eq!(st.meta.plain_sum, *blake3::hash(plain).as_bytes(), "{i}");
        } else {
            let ct = ciphertext(&r, &rec, i).await;
            let tag = &ct[ct.len() - 16..];
            assert_eq!(&st.meta.plain_sum[..16], tag, "stripe {i}: its tag");
            assert_eq!(st.meta.plain_sum[16..], [0; 16], "stripe {i}: zero padding");
        }
    }
    assert_eq!(r.pipeline.get("obj").await.expect("get"), data);

    // A flipped byte in a shard of an uncompressed stripe: found by its shard checksum, the
    // read falls back to the other shards, and check --deep reports it until repaired.
    let key = ObjectRecord::shard_key("t", &rec.object_id, 1, 0);
    assert!(r.data.iter().any(|d| d.tamper(&key, |v| v[5] ^= 0x10)));
    assert_eq!(
        r.pipeline.get("obj").await.expect("get, one bad shard"),
        data
    );
    let (health, errors) = ops::check(&r.pipeline, Some("obj"), true)
        .await
        .expect("check");
    assert!(errors.is_empty());
    assert!(!health[0].is_clean(), "the bad shard is reported");
    r.pipeline.repair(&rec, None).await.expect("repair");
    let (health, _) = ops::check(&r.pipeline, Some("obj"), true)
        .await
        .expect("check");
    assert!(health[0].is_clean(), "{:?}", health[0]);
}

/// Changes one byte of `f` in place, keeping its size, mode and modification time.
fn change_keeping_attrs(f: &std::path::Path, at: usize) {
    let mtime = std::fs::metadata(f)
        .and_then(|m| m.modified())
        .expect("mtime");
    let mut bytes = std::fs::read(f).expect("read");
    bytes[at] ^= 1;
    std::fs::write(f, bytes).expect("write");
    std::fs::File::options()
        .write(true)
        .open(f)
        .and_then(|h| h.set_modified(mtime))
        .expect("set mtime");
}

#[tokio::test]
async fn unchanged_files_of_format_4_are_recognised_by_their_tags() {
    let r = format_4_rig().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("f.bin");
    std::fs::write(&f, mixed()).expect("write");
    let a = ops::store_file(&r.pipeline, &f, &NoProgress)
        .await
        .expect("store");
    assert!(!a.unchanged);
    let again = ops::store_file(&r.pipeline, &f, &NoProgress)
        .await
        .expect("store again");
    assert!(again.unchanged, "same bytes: same tags");
    // Same size and times, one byte changed: in an uncompressed stripe (checked by its tag),
    // then in a compressed one (checked by BLAKE3).
    let mut version = a.version;
    for at in [STRIPE + 7, 2 * STRIPE + 300] {
        change_keeping_attrs(&f, at);
        let c = ops::store_file(&r.pipeline, &f, &NoProgress)
            .await
            .expect("store changed");
        assert!(!c.unchanged, "byte {at} changed");
        assert_eq!(c.version, version + 1);
        version = c.version;
        let same = ops::store_file(&r.pipeline, &f, &NoProgress)
            .await
            .expect("store unchanged");
        assert!(same.unchanged);
    }
    let rec = r.pipeline.record(&a.name).await.expect("record");
    assert_eq!(
        r.pipeline.read_all(&rec).await.expect("read"),
        std::fs::read(&f).expect("read")
    );
}
