//! Records of format 5: format 4's plaintext checksums, XXH3-128 checksums of the shards. A
//! shard checksum only finds which shard spoiled a stripe; the stripe's tag authenticates it.

use crate::common;

use bytes::Bytes;
use common::*;
use qsfs_backup::metadata::ObjectRecord;
use qsfs_backup::pipeline::ProblemKind;
use qsfs_backup::progress::NoProgress;
use qsfs_backup::stripe::ShardHash;
use qsfs_core::Backend;

const STRIPE: usize = 1024;

async fn format_5_rig() -> Rig {
    let mut s = settings(2, 2, STRIPE);
    s.format = ShardHash::Xxh3Tag;
    rig_with(s, 4, 3).await
}

/// The backend that holds shard `j` of stripe `i` of `rec`.
fn holder<'a>(
    r: &'a Rig,
    rec: &ObjectRecord,
    i: usize,
    j: usize,
) -> &'a qsfs_backup::backends::Memory {
    let name = &rec.backends[rec.stripes[i].shards[j].backend as usize];
    r.data
        .iter()
        .find(|d| d.name() == *name)
        .expect("backend of the shard")
}

#[tokio::test]
async fn format_5_sums_every_shard_with_xxh3_128() {
    let r = format_5_rig().await;
    let mut data = random_bytes(3 * STRIPE, 51);
    data.extend(text_bytes(STRIPE));
    r.pipeline
        .put("obj", Bytes::from(data.clone()))
        .await
        .expect("put");
    let rec = r.pipeline.record("obj").await.expect("record");
    assert_eq!(rec.shard_hash, ShardHash::Xxh3Tag);
    for (i, st) in rec.stripes.iter().enumerate() {
        for (j, sum) in st.meta.shard_sums.iter().enumerate() {
            let key = ObjectRecord::shard_key("t", &rec.object_id, i as u64, j);
            let shard = holder(&r, &rec, i, j).get(&key).await.expect("shard");
            let xxh3 = twox_hash::XxHash3_128::oneshot(&shard).to_le_bytes();
            assert_eq!(sum[..16], xxh3, "stripe {i} shard {j}");
            assert_eq!(sum[16..], [0; 16], "zero padding");
        }
    }
    assert_eq!(r.pipeline.get("obj").await.expect("get"), data);
}

/// A node may change a shard so that it still matches its XXH3 checksum (XXH3 is no
/// cryptographic hash). Simulated here by changing the shard and putting the checksum of the
/// changed bytes in the record the read is given: the stripe then fails its tag although every
/// shard matches, and the read must find the spoiling shard by decoding other sets of shards.
#[tokio::test]
async fn a_shard_forged_to_match_its_checksum_is_found_and_read_around() {
    let r = format_5_rig().await;
    let data = random_bytes(3 * STRIPE, 52);
    r.pipeline
        .put("obj", Bytes::from(data.clone()))
        .await
        .expect("put");
    let rec = r.pipeline.record("obj").await.expect("record");
    let mut forged = rec.clone();
    for (i, j) in [(1usize, 0usize), (2, 1)] {
        let key = ObjectRecord::shard_key("t", &rec.object_id, i as u64, j);
        let node = holder(&r, &rec, i, j);
        assert!(node.tamper(&key, |v| v[9] ^= 0x81));
        let changed = node.get(&key).await.expect("shard");
        forged.stripes[i].meta.shard_sums[j] = ShardHash::Xxh3Tag.sum(&changed);
    }
    assert_eq!(r.pipeline.read_all(&forged).await.expect("read"), data);
    assert_eq!(
        r.pipeline.read_stripe(&forged, 2).await.expect("stripe 2"),
        data[2 * STRIPE..]
    );
    let (problems, _) = r
        .pipeline
        .read_to(&forged, Box::new(std::io::sink()), &NoProgress)
        .await
        .expect("read_to");
    let mut found: Vec<(u64, usize, ProblemKind)> = problems
        .iter()
        .map(|p| (p.stripe, p.shard, p.kind))
        .collect();
    found.sort_by_key(|f| (f.0, f.1));
    assert_eq!(
        found,
        [(1, 0, ProblemKind::Corrupt), (2, 1, ProblemKind::Corrupt)],
        "{problems:?}"
    );
    assert!(
        problems[0].detail.contains("spoils the stripe"),
        "{}",
        problems[0]
    );

    // Three forged shards in one stripe of 2+2 leave no two good ones: a clear error, never
    // wrong data.
    for j in [1, 2] {
        let key = ObjectRecord::shard_key("t", &rec.object_id, 1, j);
        let node = holder(&r, &rec, 1, j);
        assert!(node.tamper(&key, |v| v[3] ^= 0x11));
        let changed = node.get(&key).await.expect("shard");
        forged.stripes[1].meta.shard_sums[j] = ShardHash::Xxh3Tag.sum(&changed);
    }
    let Err(e) = r.pipeline.read_all(&forged).await else {
        panic!("a stripe with three of four shards forged read back");
    };
    assert!(e.to_string().contains("authenticate"), "{e}");
}
