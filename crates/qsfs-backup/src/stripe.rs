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
//! plaintext too. Format 4 hashes the plaintext only where the cipher does not cover it: a
//! compressed stripe's plaintext is BLAKE3-hashed (it is what the decompressor outputs), while an
//! uncompressed stripe's plaintext checksum is its AES-256-GCM-SIV tag, which already
//! authenticates every plaintext byte (see [`ShardHash::Blake3Tag`]). Format 5 keeps format 4's
//! plaintext checksums and sums each shard with XXH3-128, at a tenth of BLAKE3's cost (see
//! [`ShardHash::Xxh3Tag`]). The whole-object checksum is SHA-256 over the stripes' plaintext
//! checksums.

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
    /// BLAKE3 for shards and for the plaintext of compressed stripes; the plaintext checksum of
    /// an uncompressed stripe is its AEAD tag ([`tag_sum`]) (records of format 4).
    ///
    /// The tag is a MAC of the stripe's plaintext under the object's data key, nonce and
    /// associated data: a stripe that opens has exactly the plaintext that was sealed, so a
    /// second hash over those bytes added a full pass over the object and no protection. A
    /// compressed stripe's plaintext is the decompressor's output, which the tag does not cover,
    /// so it keeps its BLAKE3.
    Blake3Tag,
    /// Format 4's plaintext checksums; XXH3-128 for the shards, zero-padded to 32 bytes (records
    /// of format 5).
    ///
    /// A shard checksum finds which shard spoiled a stripe that fails its tag; it need not
    /// authenticate anything, since the tag authenticates every byte a stripe is decoded from.
    /// BLAKE3 of the k+m shards (twice the data at 2+2) was the largest cost of a store after
    /// the cipher itself, at a third of the cipher's speed; XXH3 runs at memory speed, as in
    /// RocksDB's block checksums. What a cryptographic shard hash gave besides: a node could not
    /// make a changed shard match its checksum. Under this format such a shard makes its stripe
    /// fail to open, and the stripe is then decoded from other sets of k shards
    /// ([`decode_any`]): the shard is found and skipped as a damaged one would be, and a repair
    /// writes only shards of a stripe that opened.
    Xxh3Tag,
}

impl ShardHash {
    /// The checksum of `shard`.
    pub fn sum(self, shard: &[u8]) -> Sum {
        match self {
            ShardHash::Sha256 => sha256(shard),
            ShardHash::Blake3 | ShardHash::Blake3Plain | ShardHash::Blake3Tag => {
                *blake3::hash(shard).as_bytes()
            }
            ShardHash::Xxh3Tag => {
                let mut s = [0u8; 32];
                s[..16].copy_from_slice(&twox_hash::XxHash3_128::oneshot(shard).to_le_bytes());
                s
            }
        }
    }

    /// The checksum of a stripe's plaintext ([`StripeMeta::plain_sum`]) when it is a hash of the
    /// plaintext: always, except for the uncompressed stripes of formats 4 and 5 ([`tag_sum`]).
    pub fn plain_sum(self, plain: &[u8]) -> Sum {
        let mut h = PlainHasher::new(self);
        h.update(plain);
        h.finish()
    }

    /// Whether a stripe's plaintext checksum is its AEAD tag rather than a hash.
    fn sums_by_tag(self, compressed: bool) -> bool {
        self.tags_plaintext() && !compressed
    }

    /// Whether the plaintext checksum of an uncompressed stripe is its AEAD tag (formats 4 and
    /// 5), which only sealing the plaintext again gives.
    pub fn tags_plaintext(self) -> bool {
        matches!(self, ShardHash::Blake3Tag | ShardHash::Xxh3Tag)
    }
}

/// [`ShardHash::plain_sum`] fed piece by piece, for a caller that sees a stripe's plaintext in
/// parts (the storage tier hashes a file while the pipeline reads it).
pub enum PlainHasher {
    /// Formats 1 and 2.
    Sha256(Box<Sha256>),
    /// Formats 3 to 5 (4 and 5 only for compressed stripes; see [`ShardHash::Blake3Tag`]).
    Blake3(Box<blake3::Hasher>),
}

impl PlainHasher {
    /// A hasher of `format`'s plaintext checksum.
    pub fn new(format: ShardHash) -> Self {
        match format {
            ShardHash::Sha256 | ShardHash::Blake3 => PlainHasher::Sha256(Box::default()),
            ShardHash::Blake3Plain | ShardHash::Blake3Tag | ShardHash::Xxh3Tag => {
                PlainHasher::Blake3(Box::default())
            }
        }
    }

    /// Hashes the next part.
    pub fn update(&mut self, part: &[u8]) {
        match self {
            PlainHasher::Sha256(h) => h.update(part),
            PlainHasher::Blake3(h) => {
                h.update(part);
            }
        }
    }

    /// The checksum of every part so far.
    pub fn finish(self) -> Sum {
        match self {
            PlainHasher::Sha256(h) => h.finalize().into(),
            PlainHasher::Blake3(h) => *h.finalize().as_bytes(),
        }
    }
}

/// The plaintext checksum of an uncompressed stripe of formats 4 and 5: its AES-256-GCM-SIV tag,
/// zero-padded to the size of a hash.
pub fn tag_sum(tag: &[u8; TAG_LEN]) -> Sum {
    let mut s = [0u8; 32];
    s[..TAG_LEN].copy_from_slice(tag);
    s
}

/// The tag at the end of a sealed buffer (`None` if it is too short to hold one).
fn tag_of(sealed: &[u8]) -> Option<[u8; TAG_LEN]> {
    sealed
        .len()
        .checked_sub(TAG_LEN)
        .and_then(|at| sealed[at..].try_into().ok())
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
    let compressed_buf = maybe_compress(&plain, level);
    let compressed = compressed_buf.is_some();
    let hashed_sum = (!hash.sums_by_tag(compressed)).then(|| hash.plain_sum(&plain));
    let mut buf = compressed_buf.unwrap_or(plain);
    let needed = codec::shard_len(buf.len() + TAG_LEN, k) * k;
    buf.reserve_exact(needed.saturating_sub(buf.len()));
    key.seal_in_place(&nonce(id.index), &aad(id, compressed, plain_len), &mut buf);
    let plain_sum = match hashed_sum {
        Some(s) => s,
        None => tag_sum(
            &tag_of(&buf).ok_or_else(|| Error::corrupt("stripe", "sealed stripe has no tag"))?,
        ),
    };
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
    let by_tag = hash.sums_by_tag(meta.compressed);
    let tag = tag_of(&buf);
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
    // The tag opened above authenticates an uncompressed stripe's plaintext; comparing it with
    // the record ties the record to this very ciphertext.
    let sum_ok = if by_tag {
        tag.map(|t| tag_sum(&t)) == Some(meta.plain_sum)
    } else {
        hash.plain_sum(&plain) == meta.plain_sum
    };
    if plain.len() != meta.plain_len as usize || !sum_ok {
        return Err(Error::corrupt(
            location,
            "stripe plaintext checksum mismatch",
        ));
    }
    Ok(plain)
}

/// Most sets of k shards [`decode_any`] tries: every set for the usual codes (70 at 4+4), a
/// bound on a stripe of many shards.
pub const MAX_SHARD_SETS: usize = 256;

/// A stripe opened by [`decode_any`].
#[derive(Debug)]
pub struct Opened {
    /// The stripe's plaintext.
    pub plain: Vec<u8>,
    /// All k+m shards as stored, re-encoded from the set that opened.
    pub shards: Vec<Bytes>,
    /// The present shards that differ from those (the ones that spoiled the stripe).
    pub spoiled: Vec<usize>,
}

/// Decodes a stripe from any k of the present `shards` that open: for a stripe that failed to
/// open although its shards matched their checksums, and for a repair, which must write only
/// shards of a stripe that opens.
///
/// A set that opens is authentic: only the data key's holder can make a stripe whose tag
/// verifies, so its shards are the ones stored, and comparing the others with what they encode
/// to finds each changed one. Errors with the first set's error if no set (of at most
/// [`MAX_SHARD_SETS`]) opens.
#[allow(clippy::too_many_arguments)]
pub fn decode_any(
    shards: &[Option<Bytes>],
    meta: &StripeMeta,
    id: &StripeId,
    key: &SecretKey,
    (k, m): (usize, usize),
    hash: ShardHash,
    location: &str,
) -> Result<Opened> {
    use itertools::Itertools;
    let present: Vec<usize> = (0..shards.len()).filter(|&j| shards[j].is_some()).collect();
    let mut first_err = None;
    for set in present.iter().combinations(k).take(MAX_SHARD_SETS) {
        let mut trial: Vec<Option<Bytes>> = vec![None; shards.len()];
        for &j in set {
            trial[j] = shards[j].clone();
        }
        match decode(&mut trial, meta, id, key, (k, m), hash, location) {
            Ok(plain) => {
                codec::reconstruct(&mut trial, k, m)?;
                let spoiled = present
                    .iter()
                    .copied()
                    .filter(|&j| trial[j] != shards[j])
                    .collect();
                let shards = trial.into_iter().flatten().collect();
                return Ok(Opened {
                    plain,
                    shards,
                    spoiled,
                });
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| {
        Error::corrupt(
            location,
            format!("{} shards present, {k} needed", present.len()),
        )
    }))
}

/// The plaintext checksum a stripe stored as `meta`/`id` in format `hash` has if its plaintext
/// is `plain`, computed from a local copy (to tell whether a file changed since it was stored).
/// An uncompressed stripe of format 4 or 5 is sealed again into `scratch` to get its tag.
pub fn local_plain_sum(
    plain: &[u8],
    meta: &StripeMeta,
    id: &StripeId,
    key: &SecretKey,
    hash: ShardHash,
    scratch: &mut Vec<u8>,
) -> Sum {
    if !hash.sums_by_tag(meta.compressed) {
        return hash.plain_sum(plain);
    }
    scratch.clear();
    scratch.extend_from_slice(plain);
    key.seal_in_place(
        &nonce(id.index),
        &aad(id, false, u32::try_from(plain.len()).unwrap_or(u32::MAX)),
        scratch,
    );
    // A stripe too short for a tag cannot match a recorded one.
    tag_of(scratch).map_or([0xff; 32], |t| tag_sum(&t))
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

    /// What a stripe's plaintext checksum is in `format`: SHA-256, BLAKE3 or the tag.
    fn sum_kind(format: ShardHash, compressed: bool) -> u8 {
        match format {
            ShardHash::Sha256 | ShardHash::Blake3 => 0,
            ShardHash::Blake3Plain => 1,
            ShardHash::Blake3Tag | ShardHash::Xxh3Tag if compressed => 1,
            ShardHash::Blake3Tag | ShardHash::Xxh3Tag => 2,
        }
    }

    #[test]
    fn round_trip_compressible_and_random() {
        let key = SecretKey::random();
        let text = b"hello hello hello ".repeat(10_000);
        let random: Vec<u8> = (0..200_000).map(|_| rand::random::<u8>()).collect();
        let formats = [
            ShardHash::Sha256,
            ShardHash::Blake3,
            ShardHash::Blake3Plain,
            ShardHash::Blake3Tag,
            ShardHash::Xxh3Tag,
        ];
        let mut scratch = Vec::new();
        for (data, expect_compressed) in
            [(&text[..], true), (&random[..], false), (&b""[..], false)]
        {
            for format in formats {
                let (meta, shards) =
                    encode(data.to_vec(), &id(3), &key, (3, 2), 3, format).expect("encode");
                for (s, sum) in shards.iter().zip(&meta.shard_sums) {
                    let want = match format {
                        ShardHash::Sha256 => sha256(s),
                        ShardHash::Xxh3Tag => {
                            let mut w = [0u8; 32];
                            let x = twox_hash::XxHash3_128::oneshot(s);
                            w[..16].copy_from_slice(&x.to_le_bytes());
                            w
                        }
                        _ => *blake3::hash(s).as_bytes(),
                    };
                    assert_eq!(*sum, want);
                }
                let cipher: Vec<u8> = shards[..3].concat()[..meta.cipher_len as usize].to_vec();
                let want = match sum_kind(format, expect_compressed) {
                    0 => sha256(data),
                    1 => *blake3::hash(data).as_bytes(),
                    _ => tag_sum(&tag_of(&cipher).expect("tag")),
                };
                assert_eq!(meta.plain_sum, want, "{format:?}");
                assert_eq!(meta.compressed, expect_compressed);
                assert_eq!(
                    local_plain_sum(data, &meta, &id(3), &key, format, &mut scratch),
                    meta.plain_sum,
                    "{format:?}"
                );
                if !data.is_empty() {
                    let mut changed = data.to_vec();
                    changed[data.len() / 2] ^= 1;
                    assert_ne!(
                        local_plain_sum(&changed, &meta, &id(3), &key, format, &mut scratch),
                        meta.plain_sum,
                        "{format:?}"
                    );
                }
                let mut s: Vec<Option<Bytes>> = shards.into_iter().map(Some).collect();
                s[0] = None;
                s[4] = None;
                assert_eq!(
                    decode(&mut s, &meta, &id(3), &key, (3, 2), format, "t").expect("decode"),
                    data
                );
                // Read as a format whose plaintext checksum is another kind, it no longer matches.
                for other in formats {
                    if sum_kind(other, meta.compressed) != sum_kind(format, meta.compressed) {
                        let e = decode(&mut s, &meta, &id(3), &key, (3, 2), other, "t")
                            .expect_err("wrong plaintext checksum");
                        assert!(e.to_string().contains("checksum"), "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_format_4_record_must_name_the_tag_its_stripe_carries() {
        let key = SecretKey::random();
        let random: Vec<u8> = (0..100_000).map(|_| rand::random::<u8>()).collect();
        let (mut meta, shards) = encode(
            random.clone(),
            &id(5),
            &key,
            (2, 2),
            1,
            ShardHash::Blake3Tag,
        )
        .expect("encode");
        assert!(!meta.compressed);
        let open = |s: &mut Vec<Option<Bytes>>, meta: &StripeMeta| {
            decode(s, meta, &id(5), &key, (2, 2), ShardHash::Blake3Tag, "t")
        };
        let mut s: Vec<Option<Bytes>> = shards.iter().cloned().map(Some).collect();
        let good = open(&mut s, &meta);
        assert_eq!(good.expect("decode"), random);
        // The stripe authenticates, but its record holds another checksum: rejected.
        meta.plain_sum[3] ^= 1;
        let e = open(&mut s, &meta).expect_err("record does not match the stripe");
        assert!(e.to_string().contains("checksum"), "{e}");
        // A flipped ciphertext byte (its shard checksum not consulted here) fails the tag.
        meta.plain_sum[3] ^= 1;
        let mut bad = shards[1].to_vec();
        bad[10] ^= 0x40;
        let mut s: Vec<Option<Bytes>> = shards.into_iter().map(Some).collect();
        s[1] = Some(Bytes::from(bad));
        let e = open(&mut s, &meta).expect_err("tampered ciphertext");
        assert!(e.to_string().contains("authenticate"), "{e}");
    }

    /// What a node that forged shards to match their XXH3 checksums hands out.
    struct Forged {
        plain: Vec<u8>,
        meta: StripeMeta,
        key: SecretKey,
        stored: Vec<Bytes>,
        served: Vec<Option<Bytes>>,
    }

    /// A stripe of 3+2 random bytes in format 5 whose shards `changed` are served changed, with
    /// checksums that match the changed bytes.
    fn with_forged_shards(changed: &[usize]) -> Forged {
        let key = SecretKey::random();
        let plain: Vec<u8> = (0..30_000).map(|_| rand::random::<u8>()).collect();
        let (mut meta, stored) =
            encode(plain.clone(), &id(7), &key, (3, 2), 3, ShardHash::Xxh3Tag).expect("encode");
        let mut served: Vec<Option<Bytes>> = stored.iter().cloned().map(Some).collect();
        for &j in changed {
            let mut b = stored[j].to_vec();
            b[j * 100 + 1] ^= 0x24;
            meta.shard_sums[j] = ShardHash::Xxh3Tag.sum(&b);
            served[j] = Some(Bytes::from(b));
        }
        Forged {
            plain,
            meta,
            key,
            stored,
            served,
        }
    }

    #[test]
    fn a_shard_that_matches_its_checksum_but_spoils_the_stripe_is_found() {
        for changed in [vec![0], vec![4], vec![1, 3]] {
            let f = with_forged_shards(&changed);
            let open = |shards: &[Option<Bytes>]| {
                decode_any(
                    shards,
                    &f.meta,
                    &id(7),
                    &f.key,
                    (3, 2),
                    ShardHash::Xxh3Tag,
                    "t",
                )
            };
            if changed != [4] {
                // The first three shards include a changed one: they do not open.
                let first = decode(
                    &mut f.served.clone(),
                    &f.meta,
                    &id(7),
                    &f.key,
                    (3, 2),
                    ShardHash::Xxh3Tag,
                    "t",
                );
                let e = first.expect_err("a changed data shard spoils the stripe");
                assert!(e.to_string().contains("authenticate"), "{e}");
            }
            let opened = open(&f.served).expect("some set of 3 opens");
            assert_eq!(opened.plain, f.plain, "{changed:?}");
            assert_eq!(opened.spoiled, changed);
            assert_eq!(opened.shards, f.stored, "every shard as it was stored");
            // One shard fewer: with two changed, no set of three good shards is left.
            let mut fewer = f.served.clone();
            let gone = (0..5).find(|j| !changed.contains(j)).expect("a good shard");
            fewer[gone] = None;
            let r = open(&fewer);
            assert_eq!(r.is_ok(), changed.len() == 1, "{changed:?} without {gone}");
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
