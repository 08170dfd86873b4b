//! One stripe: a fixed-size slice of an object, compressed, encrypted and erasure-coded on its
//! own, so memory stays bounded and a byte range needs only the stripes that hold it.
//!
//! ```text
//! plain ─zstd (kept only if it shrinks)─► AES-256-GCM-SIV(data key, nonce = stripe index,
//!        AAD = object id ‖ stripe index ‖ data version ‖ flags ‖ plain length) ─► RS k+m ─► shards
//! ```
//!
//! Which checksums a stripe carries depends on its record's format ([`ShardHash`]): format 1 has
//! SHA-256 for the plaintext and for each shard, format 2 BLAKE3 for the shards (several times
//! faster than SHA-256 even with SHA-NI, and hashed over k+m shards), format 3 BLAKE3 for the
//! plaintext too. The whole-object checksum is SHA-256 over the stripes' plaintext checksums.

use std::cell::RefCell;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec;
use crate::crypto::{SecretKey, NONCE_LEN, TAG_LEN};
use qsfs_core::{Error, Result};

/// A SHA-256 digest.
pub type Sum = [u8; 32];

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Sum {
    Sha256::digest(data).into()
}

/// The checksums of an object's stripes, which is also its record's format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ShardHash {
    /// SHA-256 for shards and plaintext (records of format 1).
    #[default]
    Sha256,
    /// BLAKE3 for shards, SHA-256 for the plaintext (records of format 2).
    Blake3,
    /// BLAKE3 for shards and plaintext (records of format 3): the plaintext checksum was the
    /// largest single cost of storing and of retrieving.
    Blake3Plain,
}

impl ShardHash {
    /// The checksum of `shard`.
    pub fn sum(self, shard: &[u8]) -> Sum {
        match self {
            ShardHash::Sha256 => sha256(shard),
            ShardHash::Blake3 | ShardHash::Blake3Plain => *blake3::hash(shard).as_bytes(),
        }
    }

    /// The checksum of a stripe's plaintext ([`StripeMeta::plain_sum`]).
    pub fn plain_sum(self, plain: &[u8]) -> Sum {
        match self {
            ShardHash::Sha256 | ShardHash::Blake3 => sha256(plain),
            ShardHash::Blake3Plain => *blake3::hash(plain).as_bytes(),
        }
    }
}

/// Which stripe of which object: everything bound into the stripe's associated data.
#[derive(Debug, Clone, Copy)]
pub struct StripeId {
    /// Random id of the stored object version.
    pub object_id: [u8; 16],
    /// Stripe index within the object.
    pub index: u64,
    /// Version of the record that wrote the data.
    pub data_version: u64,
}

/// How a stripe was encoded; kept in the object's metadata record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeMeta {
    /// Plaintext bytes in this stripe.
    pub plain_len: u32,
    /// Whether zstd was applied.
    pub compressed: bool,
    /// Ciphertext bytes (before padding into shards).
    pub cipher_len: u32,
    /// Checksum of the plaintext ([`ShardHash::plain_sum`]; feeds the whole-object checksum).
    pub plain_sum: Sum,
    /// Checksum of each of the k+m shards ([`ShardHash::sum`]).
    pub shard_sums: Vec<Sum>,
}

fn nonce(index: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..8].copy_from_slice(&index.to_le_bytes());
    n[8..].copy_from_slice(b"qsfs");
    n
}

fn aad(id: &StripeId, compressed: bool, plain_len: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(48);
    a.extend_from_slice(b"qsfs-stripe-v1");
    a.extend_from_slice(&id.object_id);
    a.extend_from_slice(&id.index.to_le_bytes());
    a.extend_from_slice(&id.data_version.to_le_bytes());
    a.push(u8::from(compressed));
    a.extend_from_slice(&plain_len.to_le_bytes());
    a
}

/// Compresses `plain` if that pays. A sample is tried first so incompressible data (media,
/// already-compressed or encrypted files) costs almost nothing.
fn maybe_compress(plain: &[u8], level: i32) -> Option<Vec<u8>> {
    if level <= 0 || plain.len() < 64 {
        return None;
    }
    const SAMPLE: usize = 64 * 1024;
    thread_local! {
        // Creating a zstd context per call cost more than compressing the sample of an
        // incompressible stripe.
        static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let c = match slot.as_mut() {
            Some((l, c)) if *l == level => c,
            _ => {
                &mut slot
                    .insert((level, zstd::bulk::Compressor::new(level).ok()?))
                    .1
            }
        };
        if plain.len() > 2 * SAMPLE {
            let sample = c.compress(&plain[..SAMPLE]).ok()?;
            if sample.len() * 100 > SAMPLE * 97 {
                return None;
            }
        }
        let out = c.compress(plain).ok()?;
        (out.len() < plain.len()).then_some(out)
    })
}

/// Encodes one stripe into k+m shards, with the checksums of format `hash`.
///
/// Takes the plaintext by value: when it does not compress it is encrypted and padded in place,
/// so a stripe costs no copy (give it spare capacity of [`encode_headroom`] bytes to avoid any
/// reallocation).
pub fn encode(
    plain: Vec<u8>,
    id: &StripeId,
    key: &SecretKey,
    (k, m): (usize, usize),
    level: i32,
    hash: ShardHash,
) -> Result<(StripeMeta, Vec<Bytes>)> {
    let plain_len = u32::try_from(plain.len())
        .map_err(|_| Error::InvalidArgument("stripe larger than 4 GiB".into()))?;
    let plain_sum = hash.plain_sum(&plain);
    let (mut buf, compressed) = match maybe_compress(&plain, level) {
        Some(c) => (c, true),
        None => (plain, false),
    };
    let needed = codec::shard_len(buf.len() + TAG_LEN, k) * k;
    buf.reserve_exact(needed.saturating_sub(buf.len()));
    key.seal_in_place(&nonce(id.index), &aad(id, compressed, plain_len), &mut buf);
    let cipher_len = buf.len() as u32;
    let shards = codec::encode(buf, k, m)?;
    let shard_sums = shards.iter().map(|s| hash.sum(s)).collect();
    Ok((
        StripeMeta {
            plain_len,
            compressed,
            cipher_len,
            plain_sum,
            shard_sums,
        },
        shards,
    ))
}

/// Spare capacity a stripe buffer needs so [`encode`] never reallocates it (tag and padding).
pub fn encode_headroom(k: usize) -> usize {
    TAG_LEN + 4 * k + 4
}

/// Decodes a stripe of format `hash` from its shards (`None` = missing or failed its checksum;
/// at least k must be present). `location` names the stripe in errors.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    shards: &mut [Option<Bytes>],
    meta: &StripeMeta,
    id: &StripeId,
    key: &SecretKey,
    (k, m): (usize, usize),
    hash: ShardHash,
    location: &str,
) -> Result<Vec<u8>> {
    codec::reconstruct_data(shards, k, m)?;
    let mut buf = codec::join(shards, k, meta.cipher_len as usize)?;
    if !key.open_in_place(
        &nonce(id.index),
        &aad(id, meta.compressed, meta.plain_len),
        &mut buf,
    ) {
        return Err(Error::corrupt(
            location,
            "stripe does not authenticate (tampered or misplaced)",
        ));
    }
    let plain = if meta.compressed {
        zstd::bulk::decompress(&buf, meta.plain_len as usize)
            .map_err(|e| Error::corrupt(location, format!("zstd: {e}")))?
    } else {
        buf
    };
    if plain.len() != meta.plain_len as usize || hash.plain_sum(&plain) != meta.plain_sum {
        return Err(Error::corrupt(
            location,
            "stripe plaintext checksum mismatch",
        ));
    }
    Ok(plain)
}

/// The whole-object checksum: SHA-256 over the stripes' plaintext SHA-256s, in order. Computed
/// per stripe in parallel on store and verified on every full retrieve.
pub fn object_sum(stripe_sums: impl IntoIterator<Item = Sum>) -> Sum {
    let mut h = Sha256::new();
    h.update(b"qsfs-object-v1");
    for s in stripe_sums {
        h.update(s);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: u64) -> StripeId {
        StripeId {
            object_id: [9; 16],
            index,
            data_version: 1,
        }
    }

    #[test]
    fn round_trip_compressible_and_random() {
        let key = SecretKey::random();
        let text = b"hello hello hello ".repeat(10_000);
        let random: Vec<u8> = (0..200_000).map(|_| rand::random::<u8>()).collect();
        let formats = [ShardHash::Sha256, ShardHash::Blake3, ShardHash::Blake3Plain];
        for (data, expect_compressed) in
            [(&text[..], true), (&random[..], false), (&b""[..], false)]
        {
            for format in formats {
                let (meta, shards) =
                    encode(data.to_vec(), &id(3), &key, (3, 2), 3, format).expect("encode");
                for (s, sum) in shards.iter().zip(&meta.shard_sums) {
                    let want = match format {
                        ShardHash::Sha256 => sha256(s),
                        _ => *blake3::hash(s).as_bytes(),
                    };
                    assert_eq!(*sum, want);
                }
                let want = match format {
                    ShardHash::Blake3Plain => *blake3::hash(data).as_bytes(),
                    _ => sha256(data),
                };
                assert_eq!(meta.plain_sum, want);
                assert_eq!(meta.compressed, expect_compressed);
                let mut s: Vec<Option<Bytes>> = shards.into_iter().map(Some).collect();
                s[0] = None;
                s[4] = None;
                assert_eq!(
                    decode(&mut s, &meta, &id(3), &key, (3, 2), format, "t").expect("decode"),
                    data
                );
                // Read as another format, the plaintext checksum no longer matches.
                let other =
                    formats[(formats.iter().position(|f| *f == format).unwrap_or(0) + 2) % 3];
                if (format == ShardHash::Blake3Plain) != (other == ShardHash::Blake3Plain) {
                    let e = decode(&mut s, &meta, &id(3), &key, (3, 2), other, "t")
                        .expect_err("wrong plaintext checksum");
                    assert!(e.to_string().contains("checksum"), "{e}");
                }
            }
        }
    }

    #[test]
    fn misplaced_stripe_is_rejected() {
        let key = SecretKey::random();
        let (meta, shards) = encode(
            b"some data".to_vec(),
            &id(1),
            &key,
            (2, 1),
            0,
            ShardHash::Sha256,
        )
        .expect("encode");
        assert_eq!(meta.shard_sums[0], sha256(&shards[0]));
        let mut s: Vec<Option<Bytes>> = shards.into_iter().map(Some).collect();
        let e = decode(
            &mut s,
            &meta,
            &id(2),
            &key,
            (2, 1),
            ShardHash::Sha256,
            "obj stripe 2",
        )
        .expect_err("other index");
        assert!(e.to_string().contains("obj stripe 2"), "{e}");
    }
}
