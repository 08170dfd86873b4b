//! The recovery cut: the manifests of every namespace taken at one instant
//! ([`Engine::seal_all`]), stored as one object so that it is replaced atomically.
//!
//! A filesystem spreads one change over several namespaces (data blocks, block maps, inodes).
//! Manifests uploaded namespace by namespace, each from its own seal, could pair a block map
//! with blocks older than it, and a recovery would then serve wrong bytes. A cut cannot.
//!
//! Encoding: magic `QSFSCUT1`, then the postcard encoding of a list of
//! [`Manifest::to_bytes`] blobs (each carrying its own checksum); the pipeline adds
//! authentication and shard checksums on top.
//!
//! [`Engine::seal_all`]: qsfs_store::Engine::seal_all

use qsfs_core::{Error, Result};
use qsfs_store::Manifest;

/// Object key of the uploaded cut.
pub const CUT_KEY: &str = "manifests/cut";

const MAGIC: &[u8; 8] = b"QSFSCUT1";

/// Encodes a cut.
///
/// The bytes are those of `postcard` over the list of blobs, but written in place: each
/// manifest holds its namespace's whole index (hundreds of megabytes for a large filesystem),
/// and encoding the blobs, then the list, then the output would hold three more copies of it.
pub fn encode(manifests: &[Manifest]) -> Result<Vec<u8>> {
    let lens: Vec<usize> = manifests.iter().map(Manifest::encoded_len).collect();
    let prefix = |n: usize| {
        postcard::to_stdvec(&n).map_err(|e| Error::InvalidArgument(format!("encode cut: {e}")))
    };
    let total = MAGIC.len() + 10 + lens.iter().map(|l| 10 + l).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&prefix(manifests.len())?);
    for (m, len) in manifests.iter().zip(lens) {
        out.extend_from_slice(&prefix(len)?);
        let start = out.len();
        m.write_to(&mut out);
        if out.len() - start != len {
            return Err(Error::InvalidArgument(format!(
                "encode cut: manifest of {} is {} bytes, {len} announced",
                m.namespace,
                out.len() - start
            )));
        }
    }
    Ok(out)
}

/// Decodes a cut; every manifest is checked, and no namespace may appear twice.
pub fn decode(bytes: &[u8]) -> Result<Vec<Manifest>> {
    let body = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| Error::corrupt(CUT_KEY, "not a qsfs recovery cut"))?;
    let blobs: Vec<Vec<u8>> =
        postcard::from_bytes(body).map_err(|e| Error::corrupt(CUT_KEY, e.to_string()))?;
    let manifests = blobs
        .iter()
        .map(|b| Manifest::from_bytes(b))
        .collect::<Result<Vec<_>>>()?;
    let mut names: Vec<&str> = manifests.iter().map(|m| m.namespace.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::corrupt(CUT_KEY, "a namespace appears twice"));
    }
    Ok(manifests)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use qsfs_core::Store;
    use qsfs_store::{Durability, Engine, EngineConfig};

    fn cut_of_an_engine() -> Vec<Manifest> {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            durability: Durability::None,
            ..EngineConfig::default()
        };
        let e = Engine::open(dir.path(), config).unwrap();
        e.namespace_create("other").unwrap();
        e.set("default", Some(b"k"), b"v").unwrap();
        e.set("other", Some(b"k2"), b"v2").unwrap();
        e.seal_all().unwrap()
    }

    #[test]
    fn a_cut_roundtrips() {
        let cut = cut_of_an_engine();
        assert_eq!(cut.len(), 2);
        let back = decode(&encode(&cut).unwrap()).unwrap();
        let names = |c: &[Manifest]| -> Vec<(String, u64)> {
            c.iter()
                .map(|m| (m.namespace.clone(), m.generation))
                .collect()
        };
        assert_eq!(names(&back), names(&cut));
        assert_eq!(back[0].to_bytes(), cut[0].to_bytes());
    }

    #[test]
    fn a_cut_is_postcards_list_of_manifest_blobs() {
        // Cuts already uploaded were encoded this way, and every version decodes them. Enough
        // keys that the blobs' length prefixes take several bytes.
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            durability: Durability::None,
            ..EngineConfig::default()
        };
        let e = Engine::open(dir.path(), config).unwrap();
        e.namespace_create("other").unwrap();
        for i in 0..2000u32 {
            e.set("default", Some(&i.to_le_bytes()), b"v").unwrap();
        }
        e.set("other", Some(b"k2"), b"v2").unwrap();
        let cut = e.seal_all().unwrap();
        assert!(cut.iter().any(|m| m.encoded_len() > 1 << 14), "{cut:?}");
        let blobs: Vec<Vec<u8>> = cut.iter().map(Manifest::to_bytes).collect();
        let mut old = MAGIC.to_vec();
        old.extend_from_slice(&postcard::to_stdvec(&blobs).unwrap());
        assert_eq!(encode(&cut).unwrap(), old);
        for m in &cut {
            assert_eq!(m.encoded_len(), m.to_bytes().len());
        }
    }

    #[test]
    fn damage_and_duplicates_are_refused() {
        let cut = cut_of_an_engine();
        let good = encode(&cut).unwrap();
        for i in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipped byte {i} accepted");
        }
        assert!(decode(&good[..good.len() - 3]).is_err());
        let twice = encode(&[cut[0].clone(), cut[0].clone()]).unwrap();
        assert!(decode(&twice).is_err());
    }
}
