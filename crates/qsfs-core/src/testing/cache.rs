//! Conformance suite for [`Cache`] implementations.
//!
//! [`run`] takes a factory that builds a cache of a given capacity over one and the same Store
//! each time it is called. A second cache built by the factory is how the suite looks at what
//! reached the Store: it sees flushed data and nothing else. The suite uses inode numbers from
//! `1_000_000` up, so it can share a store with other tests.
//!
//! ```text
//! qsfs_core::testing::cache::run(&|capacity| Arc::new(MyCache::new(store.clone(), capacity)));
//! ```

use std::sync::Arc;

use crate::cache::{BlockId, Cache};

/// Builds a cache of the given capacity in bytes over the suite's store.
pub type Factory<'a> = &'a dyn Fn(u64) -> Arc<dyn Cache>;

const BIG: u64 = 256 * 1024 * 1024;

fn id(inode: u64, index: u64) -> BlockId {
    BlockId { inode, index }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

/// Runs every check; panics with a message naming the first that fails.
pub fn run(make: Factory<'_>) {
    holes_read_as_none(make);
    partial_writes_merge_and_zero_fill(make);
    small_writes_coalesce_into_one_store_write(make);
    flush_persists_and_nothing_reaches_the_store_before(make);
    flush_of_one_inode_leaves_others_dirty(make);
    memory_stays_bounded_and_evicted_data_is_kept(make);
    discard_forgets_and_cuts(make);
    discard_cuts_a_flushed_block(make);
    writes_beyond_a_block_are_refused(make);
    concurrent_writers_all_land(make);
}

fn holes_read_as_none(make: Factory<'_>) {
    let c = make(BIG);
    assert!(c.block_size() > 0, "block size must be positive");
    assert_eq!(
        c.read(id(1_000_000, 0)).expect("read"),
        None,
        "a never-written block is a hole"
    );
    assert_eq!(
        c.read(id(1_000_000, u64::MAX / 2)).expect("read"),
        None,
        "far holes too"
    );
}

fn partial_writes_merge_and_zero_fill(make: Factory<'_>) {
    let c = make(BIG);
    let b = id(1_000_001, 3);
    c.write(b, 100, b"hello").expect("write");
    c.write(b, 2, b"ab").expect("write");
    let got = c.read(b).expect("read").expect("block exists");
    assert_eq!(got.len(), 105, "block length is the highest byte written");
    assert_eq!(
        &got[..2],
        &[0, 0],
        "gap before the first write reads as zero"
    );
    assert_eq!(&got[2..4], b"ab");
    assert!(
        got[4..100].iter().all(|&x| x == 0),
        "gap between writes reads as zero"
    );
    assert_eq!(&got[100..], b"hello");
    c.write(b, 101, b"ELL").expect("overwrite");
    assert_eq!(&c.read(b).expect("read").expect("block")[100..], b"hELLo");
}

fn small_writes_coalesce_into_one_store_write(make: Factory<'_>) {
    let c = make(BIG);
    let bs = c.block_size();
    let b = id(1_000_002, 0);
    let before = c.stats().blocks_written;
    let piece = (bs / 64).max(1);
    for i in 0..bs / piece {
        c.write(b, i * piece, &pattern(i as u64, piece))
            .expect("write");
    }
    assert!(c.stats().dirty_bytes > 0, "writes are held dirty");
    c.flush(Some(b.inode)).expect("flush");
    assert_eq!(
        c.stats().blocks_written - before,
        1,
        "{} small writes into one block must reach the store as one block write",
        bs / piece
    );
    assert_eq!(c.stats().dirty_bytes, 0, "nothing dirty after flush");
    c.flush(Some(b.inode)).expect("second flush");
    assert_eq!(
        c.stats().blocks_written - before,
        1,
        "a clean block is not written again"
    );
}

fn flush_persists_and_nothing_reaches_the_store_before(make: Factory<'_>) {
    let c = make(BIG);
    let bs = c.block_size();
    let data = pattern(7, bs);
    let b = id(1_000_003, 5);
    c.write(b, 0, &data).expect("write");
    assert_eq!(
        c.read(b).expect("read").as_deref(),
        Some(&data[..]),
        "read sees the write"
    );
    assert_eq!(
        make(BIG).read(b).expect("read"),
        None,
        "write-back: not in the store yet"
    );
    c.flush(None).expect("flush");
    assert_eq!(
        make(BIG).read(b).expect("read").as_deref(),
        Some(&data[..]),
        "flushed data persists"
    );
}

fn flush_of_one_inode_leaves_others_dirty(make: Factory<'_>) {
    let c = make(BIG);
    c.write(id(1_000_004, 0), 0, b"one").expect("write");
    c.write(id(1_000_005, 0), 0, b"two").expect("write");
    c.flush(Some(1_000_004)).expect("flush");
    let other = make(BIG);
    assert_eq!(
        other.read(id(1_000_004, 0)).expect("read").as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(
        other.read(id(1_000_005, 0)).expect("read"),
        None,
        "other inode not flushed"
    );
    assert!(c.stats().dirty_bytes > 0);
    c.flush(None).expect("flush all");
    assert_eq!(
        make(BIG).read(id(1_000_005, 0)).expect("read").as_deref(),
        Some(&b"two"[..])
    );
}

fn memory_stays_bounded_and_evicted_data_is_kept(make: Factory<'_>) {
    let probe = make(BIG);
    let bs = probe.block_size() as u64;
    let capacity = 4 * bs;
    let c = make(capacity);
    assert_eq!(c.stats().capacity, capacity);
    let ino = 1_000_006;
    for i in 0..32u64 {
        c.write(id(ino, i), 0, &pattern(i, bs as usize))
            .expect("write");
        let s = c.stats();
        assert!(
            s.bytes <= capacity + bs,
            "cache holds {} bytes over a {capacity} budget",
            s.bytes
        );
    }
    for i in 0..32u64 {
        let got = c
            .read(id(ino, i))
            .expect("read")
            .expect("evicted block must come back");
        assert_eq!(&got[..], &pattern(i, bs as usize)[..], "block {i} content");
        assert!(c.stats().bytes <= capacity + bs);
    }
    c.flush(None).expect("flush");
    let fresh = make(BIG);
    for i in 0..32u64 {
        let got = fresh.read(id(ino, i)).expect("read").expect("persisted");
        assert_eq!(
            &got[..],
            &pattern(i, bs as usize)[..],
            "block {i} after flush"
        );
    }
}

fn discard_forgets_and_cuts(make: Factory<'_>) {
    let c = make(BIG);
    let bs = c.block_size();
    let ino = 1_000_007;
    for i in 0..4 {
        c.write(id(ino, i), 0, &pattern(i, bs)).expect("write");
    }
    c.discard(ino, 2, Some(10)).expect("discard");
    let kept = c.read(id(ino, 1)).expect("read").expect("block 1 kept");
    assert_eq!(
        &kept[..],
        &pattern(1, bs)[..10],
        "the last kept block is cut to 10 bytes"
    );
    assert_eq!(
        c.read(id(ino, 0)).expect("read").as_deref(),
        Some(&pattern(0, bs)[..])
    );
    assert_eq!(
        c.read(id(ino, 2)).expect("read"),
        None,
        "discarded block is gone"
    );
    assert_eq!(
        c.read(id(ino, 3)).expect("read"),
        None,
        "discarded block is gone"
    );
    c.write(id(ino, 1), 20, b"x").expect("re-extend");
    let re = c.read(id(ino, 1)).expect("read").expect("block");
    assert!(
        re[10..20].iter().all(|&b| b == 0),
        "cut bytes never come back"
    );
    c.flush(None).expect("flush");
    let fresh = make(BIG);
    assert_eq!(
        fresh.read(id(ino, 2)).expect("read"),
        None,
        "discarded data was not written back"
    );
    assert_eq!(
        fresh.read(id(ino, 3)).expect("read"),
        None,
        "discarded data was not written back"
    );
    assert_eq!(
        fresh.read(id(ino, 1)).expect("read").expect("block").len(),
        21
    );
    c.discard(ino, 0, None).expect("discard all");
    assert_eq!(c.read(id(ino, 5)).expect("read"), None);
}

fn discard_cuts_a_flushed_block(make: Factory<'_>) {
    let c = make(BIG);
    let bs = c.block_size();
    let ino = 1_000_008;
    c.write(id(ino, 0), 0, &pattern(3, bs)).expect("write");
    c.flush(None).expect("flush");
    let c2 = make(BIG);
    c2.discard(ino, 1, Some(5))
        .expect("cut a block the cache never held");
    assert_eq!(c2.read(id(ino, 0)).expect("read").expect("block").len(), 5);
    c2.flush(None).expect("flush");
    assert_eq!(
        make(BIG).read(id(ino, 0)).expect("read").as_deref(),
        Some(&pattern(3, bs)[..5]),
        "the cut reaches the store on flush"
    );
}

fn writes_beyond_a_block_are_refused(make: Factory<'_>) {
    let c = make(BIG);
    let bs = c.block_size();
    assert!(
        c.write(id(1_000_009, 0), bs - 1, b"ab").is_err(),
        "overflowing write is an error"
    );
    assert_eq!(
        c.read(id(1_000_009, 0)).expect("read"),
        None,
        "and changes nothing"
    );
}

fn concurrent_writers_all_land(make: Factory<'_>) {
    let c = make(BIG);
    let bs = c.block_size();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let c = c.clone();
            s.spawn(move || {
                for i in 0..8u64 {
                    c.write(id(1_000_010 + t, i), 0, &pattern(t * 100 + i, bs))
                        .expect("write");
                }
            });
        }
    });
    c.flush(None).expect("flush");
    let fresh = make(BIG);
    for t in 0..4u64 {
        for i in 0..8u64 {
            let got = fresh
                .read(id(1_000_010 + t, i))
                .expect("read")
                .expect("block");
            assert_eq!(
                &got[..],
                &pattern(t * 100 + i, bs)[..],
                "writer {t} block {i}"
            );
        }
    }
}
