//! Objects written by earlier binaries still read back: each fixture in `tests/data/` is the
//! whole content of the backends (one metadata, three data, 2+1, 1 KiB stripes) after
//! `qsfs backup store` of the same 5,000-byte file, by the binary that wrote that format:
//! format 3 by session 7's `qsfs` (before format 4 existed), format 4 by session 8's, format 5
//! by session 23's.
//!
//! A fixture is made with `examples/dump_backends.rs`, from the backends a `qsfs backup`
//! config of `local:/tmp/qsfs-fixture-vN/{m1,b1,b2,b3}` filled, passphrase "fixture passphrase".

use crate::common;

use bytes::Bytes;
use common::*;
use qsfs_backup::backends::Memory;
use qsfs_backup::crypto::KeySource;
use qsfs_backup::stripe::ShardHash;
use qsfs_core::Backend;
use sha2::{Digest, Sha256};

/// The stored file: 2 KiB of text (its stripes compress) then SHA-256 blocks (they do not).
fn content() -> Vec<u8> {
    let mut v = b"the quick brown fox jumps over the lazy dog; ".repeat(100);
    v.truncate(2048);
    let random: Vec<u8> = (0u64..93)
        .flat_map(|j| Sha256::digest(j.to_le_bytes()))
        .collect();
    v.extend_from_slice(&random[..2952]);
    v
}

/// The backends of a fixture, under the names they had when the object was stored.
async fn load(text: &str) -> (Vec<Memory>, Vec<Memory>) {
    let (mut data, mut meta): (Vec<Memory>, Vec<Memory>) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut f = line.split('\t');
        let (Some(name), Some(key), Some(value)) = (f.next(), f.next(), f.next()) else {
            panic!("bad fixture line {line:?}");
        };
        let list = if name.ends_with("/m1") {
            &mut meta
        } else {
            &mut data
        };
        if list.iter().all(|m| m.name() != name) {
            list.push(Memory::new(name));
        }
        let m = list.iter().find(|m| m.name() == name).expect("just added");
        let value = hex::decode(value).expect("hex");
        m.put(key, Bytes::from(value)).await.expect("put");
    }
    data.sort_by_key(|m| m.name());
    (data, meta)
}

async fn reads_back(text: &str, dir: &str, format: ShardHash, compressed: [bool; 5]) {
    let (data, meta) = load(text).await;
    assert_eq!((data.len(), meta.len()), (3, 1));
    let mut s = settings(2, 1, 1024);
    s.prefix = "qsfs".into();
    s.create = false;
    let p = open_over(
        s,
        &data,
        &meta,
        &KeySource::passphrase("fixture passphrase"),
    )
    .await
    .expect("open the fixture's repository");
    let rec = p
        .record(&format!("/tmp/{dir}/obj.bin"))
        .await
        .expect("record");
    assert_eq!(rec.shard_hash, format);
    let flags: Vec<bool> = rec.stripes.iter().map(|s| s.meta.compressed).collect();
    assert_eq!(flags, compressed);
    assert_eq!(p.read_all(&rec).await.expect("read"), content());
    assert!(p.inspect(&rec, true, None).await.is_clean());
    // With one data backend gone, the stripes decode from parity.
    data[0].set_down(true);
    assert_eq!(p.read_all(&rec).await.expect("read, one down"), content());
}

#[tokio::test]
async fn an_object_stored_in_format_3_by_the_session_7_binary_reads_back() {
    let text = include_str!("../data/format3.txt");
    let compressed = [true, true, false, false, false];
    reads_back(text, "qsfs-fixture-v3", ShardHash::Blake3Plain, compressed).await;
}

#[tokio::test]
async fn an_object_stored_in_format_4_reads_back() {
    let text = include_str!("../data/format4.txt");
    let compressed = [true, true, false, false, false];
    reads_back(text, "qsfs-fixture-v4", ShardHash::Blake3Tag, compressed).await;
}

#[tokio::test]
async fn an_object_stored_in_format_5_reads_back() {
    let text = include_str!("../data/format5.txt");
    let compressed = [true, true, false, false, false];
    reads_back(text, "qsfs-fixture-v5", ShardHash::Xxh3Tag, compressed).await;
}
