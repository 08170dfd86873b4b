//! The block cache stores dirty blocks from three places at once: the background writer, a
//! flush from another thread without the filesystem lock (the flush timer), and the request
//! thread's own flushes and evictions, all releasing the cache lock while the store works.
//! This hammers writes, truncations (discard, then deleting the keys, as the filesystem does)
//! and reads against a model while a second thread flushes in a loop: an older copy landing
//! after a newer one, or a block landing after its key was deleted, shows up as a difference.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use qsfs_core::{BlockId, Cache};
use qsfs_fuse::BlockCache;

const BS: usize = 4096;
const INODES: u64 = 3;
const BLOCKS: u64 = 12;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn key(id: BlockId) -> Vec<u8> {
    let mut k = id.inode.to_be_bytes().to_vec();
    k.extend_from_slice(&id.index.to_be_bytes());
    k
}

#[test]
fn concurrent_flushes_never_land_stale_or_deleted_blocks() {
    for seed in [
        0x9e37_79b9_7f4a_7c15,
        0x0123_4567_89ab_cdef,
        0xdead_beef_f00d_cafe,
    ] {
        race_round(seed);
    }
}

fn race_round(seed: u64) {
    let (store, _dir) = common::engine();
    store.namespace_create("race").unwrap();
    // Eight blocks of budget: evictions, the background writer and streaming all kick in.
    let cache = Arc::new(BlockCache::new(store.clone(), "race", BS, 8 * BS as u64));
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (f, stop) = (cache.flusher(), stop.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::SeqCst) {
                f.flush().unwrap();
                rounds += 1;
            }
            rounds
        })
    };
    let mut model: HashMap<BlockId, Vec<u8>> = HashMap::new();
    let mut rng = Rng(seed);
    for step in 0..20_000u64 {
        let id = BlockId {
            inode: 1 + rng.below(INODES),
            index: rng.below(BLOCKS),
        };
        let fill = (step % 251) as u8 + 1;
        match rng.below(10) {
            0..=3 => {
                let data = vec![fill; BS];
                cache.write(id, 0, &data).unwrap();
                model.insert(id, data);
            }
            4..=5 => {
                let off = rng.below(BS as u64 - 100) as usize;
                let len = 1 + rng.below(99) as usize;
                cache.write(id, off, &vec![fill; len]).unwrap();
                let b = model.entry(id).or_default();
                if b.len() < off + len {
                    b.resize(off + len, 0);
                }
                b[off..off + len].fill(fill);
            }
            6 => {
                // Truncate: drop the cached blocks from `index` on (cutting the one before),
                // then delete their keys, as the filesystem's truncate does.
                let keep = (rng.below(2) == 0).then(|| 1 + rng.below(BS as u64 - 1) as usize);
                cache.discard(id.inode, id.index, keep).unwrap();
                for index in id.index..BLOCKS {
                    let gone = BlockId {
                        inode: id.inode,
                        index,
                    };
                    model.remove(&gone);
                    match store.delete("race", &key(gone)) {
                        Ok(()) | Err(qsfs_core::Error::NotFound(_)) => {}
                        Err(e) => panic!("delete: {e}"),
                    }
                }
                if let (Some(keep), Some(last)) = (keep, id.index.checked_sub(1)) {
                    let last = BlockId {
                        inode: id.inode,
                        index: last,
                    };
                    if let Some(b) = model.get_mut(&last) {
                        b.truncate(keep);
                    }
                }
            }
            7 => cache.flush(Some(id.inode)).unwrap(),
            _ => {
                let got = cache.read(id).unwrap().map(|b| b.to_vec());
                assert_eq!(
                    got.as_ref(),
                    model.get(&id),
                    "read of {id:?} at step {step}"
                );
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let rounds = flusher.join().unwrap();
    assert!(rounds > 0);
    cache.flush(None).unwrap();
    for inode in 1..=INODES {
        for index in 0..BLOCKS {
            let id = BlockId { inode, index };
            let stored = store.get("race", &key(id)).unwrap().map(|e| e.value);
            assert_eq!(stored.as_ref(), model.get(&id), "stored {id:?}");
        }
    }
}
