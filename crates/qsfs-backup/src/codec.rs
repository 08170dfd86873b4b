//! Reed-Solomon k+m over equal-sized shards (`reed-solomon-simd`, GF(2^16)).
//!
//! The library wants shards of an even, non-zero number of bytes, so a ciphertext of `L` bytes
//! is cut into k shards of `shard_len(L, k)` bytes, zero-padded; the true length is kept in the
//! stripe's metadata.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use qsfs_core::{Error, Result};

/// Largest k + m accepted (the policy check keeps it far below the library's limits).
pub const MAX_SHARDS: usize = 256;

/// Bytes per shard for a ciphertext of `len` bytes cut into `k` shards: even and at least 2.
pub fn shard_len(len: usize, k: usize) -> usize {
    let per = len.div_ceil(k.max(1)).max(2);
    per + (per & 1)
}

fn rs_err(e: reed_solomon_simd::Error) -> Error {
    Error::corrupt("reed-solomon", e.to_string())
}

thread_local! {
    // One coder per (rayon) thread, reset for each stripe: a new one per stripe allocated and
    // cleared its working space every time, which cost more than the coding itself at 2+2.
    static ENCODER: RefCell<Option<ReedSolomonEncoder>> = const { RefCell::new(None) };
    static DECODER: RefCell<Option<ReedSolomonDecoder>> = const { RefCell::new(None) };
}

/// The m parity shards of `originals` (k shards of `s` bytes each).
fn parity<T: AsRef<[u8]>>(originals: &[T], m: usize, s: usize) -> Result<Vec<Bytes>> {
    let k = originals.len();
    ENCODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let enc = match slot.as_mut() {
            Some(e) => {
                e.reset(k, m, s).map_err(rs_err)?;
                e
            }
            None => slot.insert(ReedSolomonEncoder::new(k, m, s).map_err(rs_err)?),
        };
        for o in originals {
            enc.add_original_shard(o).map_err(rs_err)?;
        }
        let res = enc.encode().map_err(rs_err)?;
        // One buffer for all the parity shards, sliced: one allocation per stripe, not m.
        let mut out = parity_buffer(m * s);
        for r in res.recovery_iter() {
            out.extend_from_slice(r);
        }
        let out = out.freeze();
        keep_parity_buffer(&out);
        Ok((0..m).map(|i| out.slice(i * s..(i + 1) * s)).collect())
    })
}

/// Parity buffers handed out recently, reused once every shard cut from them is gone.
///
/// A fresh megabyte per stripe was mapped by the allocator and given back to the kernel after
/// the shards were sent, so every stripe paid a page fault per 4 KiB of parity: 80 % of the page
/// faults of a store and about a tenth of its CPU time.
static PARITY_POOL: Mutex<Vec<Bytes>> = Mutex::new(Vec::new());
/// Most buffers the pool keeps: more than the stripes a pipeline has in flight, few enough that
/// idle ones hold little memory.
const PARITY_POOL_MAX: usize = 16;

/// An empty buffer of at least `len` bytes of capacity, reused from the pool when one is free.
fn parity_buffer(len: usize) -> BytesMut {
    let mut pool = PARITY_POOL.lock();
    // Unique = no shard of it is alive any more: only the pool's handle is left.
    while let Some(i) = pool.iter().position(Bytes::is_unique) {
        let b = pool.swap_remove(i);
        if let Ok(mut m) = b.try_into_mut() {
            if m.capacity() >= len {
                m.clear();
                return m;
            }
        }
    }
    BytesMut::with_capacity(len)
}

/// Keeps a handle on `buf` so [`parity_buffer`] can reuse it once its shards are dropped.
fn keep_parity_buffer(buf: &Bytes) {
    let mut pool = PARITY_POOL.lock();
    if pool.len() >= PARITY_POOL_MAX {
        pool.remove(0);
    }
    pool.push(buf.clone());
}

/// Cuts `data` into k zero-padded data shards and computes m parity shards.
pub fn encode(data: Vec<u8>, k: usize, m: usize) -> Result<Vec<Bytes>> {
    let s = shard_len(data.len(), k);
    let mut padded = data;
    padded.resize(s * k, 0);
    let padded = Bytes::from(padded);
    let originals: Vec<Bytes> = (0..k).map(|i| padded.slice(i * s..(i + 1) * s)).collect();
    let parity = parity(&originals, m, s)?;
    let mut all = originals;
    all.extend(parity);
    Ok(all)
}

/// Fills every `None` in `shards` (k data then m parity, all of one length) from any k present
/// ones. Errors if fewer than k are present.
pub fn reconstruct(shards: &mut [Option<Bytes>], k: usize, m: usize) -> Result<()> {
    reconstruct_data(shards, k, m)?;
    if shards[k..].iter().any(Option::is_none) {
        let originals: Vec<&Bytes> = shards[..k].iter().flatten().collect();
        let s = originals.first().map_or(0, |o| o.len());
        let parity = parity(&originals, m, s)?;
        for (i, p) in parity.into_iter().enumerate() {
            if shards[k + i].is_none() {
                shards[k + i] = Some(p);
            }
        }
    }
    Ok(())
}

/// Fills the missing data shards only (what reading needs: parity is not re-computed). Errors
/// if fewer than k shards are present.
pub fn reconstruct_data(shards: &mut [Option<Bytes>], k: usize, m: usize) -> Result<()> {
    let present = shards.iter().filter(|s| s.is_some()).count();
    if present < k {
        return Err(Error::corrupt(
            "reed-solomon",
            format!("{present} shards present, {k} needed"),
        ));
    }
    if shards[..k].iter().any(Option::is_none) {
        let s = shards.iter().flatten().map(|s| s.len()).next().unwrap_or(0);
        let restored = DECODER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let dec = match slot.as_mut() {
                Some(d) => {
                    d.reset(k, m, s).map_err(rs_err)?;
                    d
                }
                None => slot.insert(ReedSolomonDecoder::new(k, m, s).map_err(rs_err)?),
            };
            for (i, sh) in shards[..k].iter().enumerate() {
                if let Some(sh) = sh {
                    dec.add_original_shard(i, sh).map_err(rs_err)?;
                }
            }
            for (i, sh) in shards[k..].iter().enumerate() {
                if let Some(sh) = sh {
                    dec.add_recovery_shard(i, sh).map_err(rs_err)?;
                }
            }
            let res = dec.decode().map_err(rs_err)?;
            Ok::<_, Error>(
                res.restored_original_iter()
                    .map(|(i, d)| (i, Bytes::copy_from_slice(d)))
                    .collect::<Vec<_>>(),
            )
        })?;
        for (i, s) in restored {
            shards[i] = Some(s);
        }
    }
    Ok(())
}

/// Joins the data shards and cuts the padding off: the original `len` bytes.
pub fn join(shards: &[Option<Bytes>], k: usize, len: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    for s in &shards[..k] {
        let s = s
            .as_ref()
            .ok_or_else(|| Error::corrupt("reed-solomon", "data shard missing after decode"))?;
        out.extend_from_slice(s);
    }
    if out.len() < len {
        return Err(Error::corrupt(
            "reed-solomon",
            "shards shorter than the recorded length",
        ));
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_k_shards_rebuild(len in 0usize..5000, k in 1usize..6, m in 1usize..5, seed in any::<u64>()) {
            let data: Vec<u8> = (0..len).map(|i| (i as u64).wrapping_mul(seed | 1).to_le_bytes()[3]).collect();
            let all = encode(data.clone(), k, m).expect("encode");
            prop_assert_eq!(all.len(), k + m);
            prop_assert!(all.iter().all(|s| s.len() == shard_len(len, k) && s.len() % 2 == 0));
            // Drop m shards chosen by the seed, rebuild, compare.
            let mut shards: Vec<Option<Bytes>> = all.iter().cloned().map(Some).collect();
            let mut order: Vec<usize> = (0..k + m).collect();
            order.sort_by_key(|&i| (i as u64 + 1).wrapping_mul(seed | 1).rotate_left(17));
            for &i in &order[..m] {
                shards[i] = None;
            }
            reconstruct(&mut shards, k, m).expect("reconstruct");
            for (a, b) in shards.iter().zip(&all) {
                prop_assert_eq!(a.as_ref().expect("filled"), b);
            }
            prop_assert_eq!(join(&shards, k, len).expect("join"), data);
        }
    }

    /// A parity buffer is reused only once no shard cut from it is alive: shards held while
    /// many more stripes are encoded (on several threads) keep their bytes.
    #[test]
    fn held_parity_shards_survive_later_stripes() {
        let stripe = |seed: u8| -> Vec<u8> { (0..40_000u32).map(|i| (i as u8) ^ seed).collect() };
        let held: Vec<(u8, Vec<Bytes>)> = (0..4u8)
            .map(|s| (s, encode(stripe(s), 2, 2).expect("encode")))
            .collect();
        let expected: Vec<Vec<Vec<u8>>> = held
            .iter()
            .map(|(_, sh)| sh.iter().map(|b| b.to_vec()).collect())
            .collect();
        std::thread::scope(|scope| {
            for t in 0..3u8 {
                scope.spawn(move || {
                    for s in 0..40u8 {
                        // Dropped at once: their buffers go back to the pool and are reused.
                        let all = encode(stripe(100 + t * 40 + s), 2, 2).expect("encode");
                        assert_eq!(all.len(), 4);
                    }
                });
            }
        });
        for ((seed, shards), want) in held.iter().zip(&expected) {
            let now: Vec<Vec<u8>> = shards.iter().map(|b| b.to_vec()).collect();
            assert_eq!(&now, want, "stripe {seed} changed under its holder");
            // And they still decode to the original.
            let mut opt: Vec<Option<Bytes>> =
                vec![None, None, Some(shards[2].clone()), Some(shards[3].clone())];
            reconstruct(&mut opt, 2, 2).expect("reconstruct");
            assert_eq!(join(&opt, 2, 40_000).expect("join"), stripe(*seed));
        }
    }

    #[test]
    fn too_few_is_an_error() {
        let all = encode(vec![7; 100], 2, 1).expect("encode");
        let mut shards = vec![Some(all[0].clone()), None, None];
        assert!(reconstruct(&mut shards, 2, 1).is_err());
    }
}
