//! The recovery manifest: everything needed to rebuild one namespace from the cold tier.
//!
//! Captured at seals (every cut, and seals by size once enough data was sealed since: see
//! `docs/engine-format.md` §7), when the index snapshot covers exactly the sealed segments, and
//! persisted as `ns/<name>/manifest`: magic `QSFSMAN1`, a little-endian `u32` format version, a
//! little-endian `u64` body length, the body (postcard encoding of the fields below) and a
//! crc32c of everything before it. Written whole and atomically (temporary file, fsync, rename,
//! directory fsync). The same bytes are what [`Manifest::to_bytes`] returns, so the backup tier
//! can store them as they are. The generation grows by one at every new manifest (seal, flush,
//! property change) and survives restarts, so the newest manifest of a namespace is the one with
//! the largest generation.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use qsfs_core::{Error, Result};

use crate::descriptor::Descriptor;

const MAGIC: [u8; 8] = *b"QSFSMAN1";
const VERSION: u32 = 1;
/// Magic, version, body length.
const HEAD_LEN: usize = 8 + 4 + 8;
/// File name of the manifest inside a namespace directory.
pub(crate) const MANIFEST_FILE: &str = "manifest";

/// The recovery manifest of one namespace: its properties, the sealed segments its index may
/// point into, and that index. See the module documentation of `manifest.rs` and
/// `docs/engine-format.md`.
#[derive(Clone)]
pub struct Manifest {
    /// The namespace.
    pub namespace: String,
    /// Grows by one at every new manifest of the namespace (seal, flush, property change).
    pub generation: u64,
    /// The newest sealed segment the index covers; `None` if the namespace holds no sealed
    /// segment (never sealed, or flushed since).
    pub sealed_through: Option<u32>,
    /// `(id, length)` of every sealed segment (local or offloaded) that existed at the seal: the
    /// index may point into any of them.
    pub segments: Vec<(u32, u64)>,
    /// Properties (password record included, sealed under the engine key).
    pub(crate) descriptor: Descriptor,
    /// The index snapshot (format of `ns/<name>/index`), covering exactly the sealed segments.
    pub(crate) index: Vec<u8>,
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("namespace", &self.namespace)
            .field("generation", &self.generation)
            .field("sealed_through", &self.sealed_through)
            .field("segments", &self.segments.len())
            .field("index_bytes", &self.index.len())
            .finish()
    }
}

/// What is encoded: [`Manifest`] as it is, borrowed.
#[derive(Serialize)]
struct BodyRef<'a> {
    namespace: &'a str,
    generation: u64,
    sealed_through: Option<u32>,
    segments: &'a [(u32, u64)],
    descriptor: &'a Descriptor,
    index: &'a [u8],
}

#[derive(Deserialize)]
struct Body {
    namespace: String,
    generation: u64,
    sealed_through: Option<u32>,
    segments: Vec<(u32, u64)>,
    descriptor: Descriptor,
    index: Vec<u8>,
}

impl Manifest {
    /// The encoded manifest (the bytes of the manifest file).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut out);
        out
    }

    /// Length of [`Manifest::to_bytes`], without encoding the index into memory.
    pub fn encoded_len(&self) -> usize {
        let size =
            postcard::serialize_with_flavor(&self.body(), postcard::ser_flavors::Size::default());
        HEAD_LEN + size.unwrap_or(0) + 4
    }

    /// Appends [`Manifest::to_bytes`] to `out` with no copy of its own: the index can be
    /// hundreds of megabytes, and a recovery cut holds every namespace's.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        // Serialising plain data into a Vec cannot fail; an empty body would be rejected on
        // read rather than silently accepted.
        let _ = postcard::to_io(&self.body(), &mut *out);
        let body_len = (out.len() - start - HEAD_LEN) as u64;
        out[start + 12..start + HEAD_LEN].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    fn body(&self) -> BodyRef<'_> {
        BodyRef {
            namespace: &self.namespace,
            generation: self.generation,
            sealed_through: self.sealed_through,
            segments: &self.segments,
            descriptor: &self.descriptor,
            index: &self.index,
        }
    }

    /// Decodes and checks a manifest: [`Error::Corrupt`] if it is damaged or not a manifest.
    pub fn from_bytes(b: &[u8]) -> Result<Manifest> {
        let bad = |d: String| Error::corrupt("namespace manifest", d);
        if b.len() < HEAD_LEN + 4 || b[0..8] != MAGIC {
            return Err(bad("not a qsfs namespace manifest".into()));
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != VERSION {
            return Err(bad(format!("unsupported manifest version {version}")));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[12..20]);
        let len = u64::from_le_bytes(len);
        if (b.len() - HEAD_LEN - 4) as u64 != len {
            return Err(bad("manifest length mismatch".into()));
        }
        let end = b.len() - 4;
        let stored = u32::from_le_bytes([b[end], b[end + 1], b[end + 2], b[end + 3]]);
        if crc32c::crc32c(&b[..end]) != stored {
            return Err(bad("manifest checksum mismatch".into()));
        }
        let body: Body =
            postcard::from_bytes(&b[HEAD_LEN..end]).map_err(|e| bad(format!("manifest: {e}")))?;
        if body.descriptor.name != body.namespace {
            return Err(bad("manifest descriptor names another namespace".into()));
        }
        Ok(Manifest {
            namespace: body.namespace,
            generation: body.generation,
            sealed_through: body.sealed_through,
            segments: body.segments,
            descriptor: body.descriptor,
            index: body.index,
        })
    }

    /// Writes the manifest atomically into the namespace directory `dir`; `sync` = false
    /// skips the fsyncs (an engine configured with [`crate::Durability::None`]).
    pub(crate) fn store(&self, dir: &Path, sync: bool) -> Result<u64> {
        write_atomic(dir, &self.to_bytes(), sync)
    }

    /// Reads the manifest of the namespace directory `dir`; `Ok(None)` if there is none.
    pub(crate) fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST_FILE);
        match std::fs::read(&path) {
            Ok(d) => Manifest::from_bytes(&d).map(Some).map_err(|e| match e {
                Error::Corrupt { detail, .. } => Error::corrupt(path.display().to_string(), detail),
                other => other,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }
}

/// Writes manifest bytes into `dir` atomically; returns the size written.
pub(crate) fn write_atomic(dir: &Path, data: &[u8], sync: bool) -> Result<u64> {
    let tmp = dir.join("manifest.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        if sync {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, dir.join(MANIFEST_FILE))?;
        if sync {
            crate::segment::sync_dir(dir)?;
        }
        Ok(())
    };
    write().map_err(|e| Error::io(format!("write manifest in {}", dir.display()), e))?;
    Ok(data.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use qsfs_core::Mode;

    fn manifest(
        name: &str,
        generation: u64,
        sealed: Option<u32>,
        segments: Vec<(u32, u64)>,
        index: Vec<u8>,
    ) -> Manifest {
        let mut descriptor = Descriptor::new(name, Mode::Seq);
        descriptor.max_size = generation;
        Manifest {
            namespace: name.to_string(),
            generation,
            sealed_through: sealed,
            segments,
            descriptor,
            index,
        }
    }

    proptest! {
        #[test]
        fn roundtrip(name in "[a-z]{1,20}", generation in any::<u64>(),
                     sealed in proptest::option::of(any::<u32>()),
                     segments in proptest::collection::vec((any::<u32>(), any::<u64>()), 0..20),
                     index in proptest::collection::vec(any::<u8>(), 0..300)) {
            let m = manifest(&name, generation, sealed, segments.clone(), index.clone());
            let bytes = m.to_bytes();
            let back = Manifest::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back.namespace, &name);
            prop_assert_eq!(back.generation, generation);
            prop_assert_eq!(back.sealed_through, sealed);
            prop_assert_eq!(&back.segments, &segments);
            prop_assert_eq!(&back.index, &index);
            prop_assert_eq!(back.descriptor.max_size, generation);
            prop_assert_eq!(back.to_bytes(), bytes);
        }

        #[test]
        fn any_damage_is_rejected(index in proptest::collection::vec(any::<u8>(), 0..100),
                                  at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let bytes = manifest("ns", 7, Some(3), vec![(0, 100), (3, 4096)], index).to_bytes();
            let mut bad = bytes.clone();
            let i = at.index(bad.len());
            bad[i] ^= flip;
            let rejected = matches!(Manifest::from_bytes(&bad), Err(Error::Corrupt { .. }));
            prop_assert!(rejected, "damage at {} accepted", i);
            prop_assert!(Manifest::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        }
    }

    #[test]
    fn store_and_load() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Manifest::load(dir.path()).unwrap().is_none());
        let m = manifest("ns", 3, None, vec![], vec![1, 2, 3]);
        m.store(dir.path(), true).unwrap();
        let back = Manifest::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.to_bytes(), m.to_bytes());
        assert!(!dir.path().join("manifest.tmp").exists());
    }
}
