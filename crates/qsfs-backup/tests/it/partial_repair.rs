//! Rebuild when some shards have nowhere to go: repair what can be repaired, report the rest.

use crate::common;

use bytes::Bytes;
use common::*;
use qsfs_backup::ops::{self, ScrubOptions};
use qsfs_core::Backend;

/// 2+2 over exactly 4 backends: one is wiped (replaced by an empty, healthy one), another is
/// down. The wiped one's shards are re-created in place; the down one's cannot move anywhere
/// (every other backend holds a shard of each stripe), so they are left in place, reported as
/// not verified, and the rebuild is a partial result. Once the down backend returns, a second
/// rebuild does nothing and a deep check is clean. The data stays readable throughout.
#[tokio::test]
async fn rebuild_repairs_what_it_can_and_reports_the_rest() {
    let r = rig(2, 2, 1024).await;
    let data = random_bytes(2500, 7);
    r.pipeline
        .put("obj", Bytes::from(data.clone()))
        .await
        .expect("put");
    let rec = r.pipeline.record("obj").await.expect("record");
    assert_eq!(rec.stripes.len(), 3);
    let shards_on = |i: usize| r.data[i].len();
    assert!(
        (0..4).all(|i| shards_on(i) == 3),
        "one shard per stripe each"
    );

    r.data[0].wipe();
    r.data[1].set_down(true);
    assert_eq!(r.pipeline.get("obj").await.expect("get, degraded"), data);

    let (results, unreadable) = ops::rebuild(&r.pipeline, Some("obj"))
        .await
        .expect("rebuild runs");
    assert!(unreadable.is_empty());
    assert_eq!(results.len(), 1);
    let e = results[0]
        .as_ref()
        .expect_err("a partial repair is an error");
    let msg = e.to_string();
    assert!(msg.contains("partial repair"), "{msg}");
    assert!(msg.contains("3 shard(s) re-created"), "{msg}");
    assert!(msg.contains("3 shard(s) not verified"), "{msg}");
    assert!(msg.contains("0 lost shard(s) could not be placed"), "{msg}");
    assert!(
        msg.contains("mem-d1"),
        "names the unreachable backend: {msg}"
    );
    assert!(
        e.is_retryable(),
        "a retry once the backend is back helps: {e:?}"
    );
    assert_eq!(shards_on(0), 3, "the wiped backend got its shards back");
    assert_eq!(shards_on(1), 3, "the down backend's shards were left alone");
    let after = r.pipeline.record("obj").await.expect("record");
    assert_eq!(
        after.version, rec.version,
        "nothing moved, so the record is unchanged"
    );
    assert_eq!(after.stripes, rec.stripes);
    assert_eq!(r.pipeline.get("obj").await.expect("get"), data);

    // The structured report of the same state: nothing left to re-create, 3 shards unverified.
    let rep = r.pipeline.repair(&after, None).await.expect("repair");
    assert!(!rep.is_complete());
    assert_eq!((rep.rewritten, rep.moved), (0, 0));
    assert!(rep.unplaced.is_empty());
    assert_eq!(rep.not_verified.len(), 3);
    assert!(rep
        .not_verified
        .iter()
        .all(|p| p.backend.contains("mem-d1")));
    assert_eq!(rep.unreachable_backends.len(), 1);
    assert!(rep.unreachable_backends[0].contains("mem-d1"));

    // Scrub in the same situation: repairs what it can and lists the object as a failure.
    r.data[0].wipe();
    let rep = ops::scrub(&r.pipeline, &ScrubOptions::default(), &mut |_| {})
        .await
        .expect("scrub");
    assert_eq!(rep.objects, 1);
    assert_eq!(rep.failures.len(), 1);
    assert!(rep.failures[0].1.contains("mem-d1"), "{:?}", rep.failures);
    assert_eq!(rep.repairs.len(), 1);
    assert_eq!(rep.repairs[0].rewritten, 3);
    assert_eq!(rep.repairs[0].not_verified.len(), 3);
    assert_eq!(shards_on(0), 3);

    // The down backend returns: nothing left to do, and everything verifies.
    r.data[1].set_down(false);
    let (results, _) = ops::rebuild(&r.pipeline, Some("obj"))
        .await
        .expect("rebuild runs");
    let rep = results[0].as_ref().expect("complete this time");
    assert!(rep.is_complete());
    assert_eq!((rep.rewritten, rep.moved), (0, 0));
    assert!(rep.problems.is_empty());
    let (checks, _) = ops::check(&r.pipeline, Some("obj"), true)
        .await
        .expect("check");
    assert!(checks[0].is_clean(), "{:?}", checks[0].problems);
    assert_eq!(
        r.pipeline.record("obj").await.expect("record").version,
        rec.version
    );
    assert_eq!(r.pipeline.get("obj").await.expect("get"), data);
}

/// A stripe that cannot be read does not stop the other stripes of the object from being
/// repaired; the object's rebuild still fails with the unreadable stripe named.
#[tokio::test]
async fn an_unreadable_stripe_does_not_block_the_others() {
    let r = rig(2, 1, 1024).await;
    let data = random_bytes(2500, 9);
    r.pipeline
        .put("obj", Bytes::from(data.clone()))
        .await
        .expect("put");
    let rec = r.pipeline.record("obj").await.expect("record");
    let hex: String = rec.object_id.iter().map(|b| format!("{b:02x}")).collect();
    // Stripe 0 loses two of its three shards (too many); stripe 2 loses one (repairable).
    let mut lost0 = 0;
    for (i, d) in r.data.iter().enumerate() {
        for k in d.keys() {
            let stripe0 = k.contains(&hex) && k.contains("/00000000.");
            let stripe2 = k.contains(&hex) && k.contains("/00000002.");
            if (stripe0 && lost0 < 2) || (stripe2 && i == 0) {
                assert!(d.tamper(&k, |v| v[0] ^= 0xff));
                lost0 += usize::from(stripe0);
            }
        }
    }
    assert_eq!(lost0, 2, "shard keys are laid out as expected");
    let e = r
        .pipeline
        .repair(&rec, None)
        .await
        .expect_err("stripe 0 is unreadable");
    assert!(e.to_string().contains("stripe 0"), "{e}");
    let h = r.pipeline.inspect(&rec, true, None).await;
    assert!(
        h.problems.iter().all(|p| p.stripe == 0),
        "stripe 2 was repaired anyway: {:?}",
        h.problems
    );
    assert_eq!(h.problems.len(), 2);
}
