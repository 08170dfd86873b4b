//! The tier's durable state: what is confirmed stored, which manifests are uploaded, which cold
//! objects wait to be deleted.
//!
//! One small file, `tier.state`, rewritten whole on every change: temp file, fsync, rename,
//! fsync of the directory, so a crash (kill -9, power loss) leaves either the old or the new
//! state. Layout: `MAGIC ‖ crc32c(payload) u32 LE ‖ len(payload) u64 LE ‖ payload` with payload =
//! postcard([`State`]). Version 1 files (every confirmation deep-verified at once) are read and
//! written back as version 2. A state that fails its checksum is refused, never guessed at: losing it
//! would mean re-uploading everything, and misreading it could mean evicting unconfirmed data.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use qsfs_core::{Error, Result};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"QSTIER2\0";
/// Version 1: no `verified` flag, because every confirmation was deep-verified before it was
/// recorded.
const MAGIC_V1: &[u8; 8] = b"QSTIER1\0";
const FILE: &str = "tier.state";

/// A segment whose cold copy was read back and verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Confirmed {
    /// Segment length in bytes.
    pub length: u64,
    /// SHA-256 of the segment file.
    pub sha256: [u8; 32],
    /// Object id of the verified cold copy (a later replacement of the same name has another).
    pub object_id: [u8; 16],
    /// Every shard was read back and its checksum verified (`verify_deep`). Until then the
    /// upload counts for the backlog, manifests and cuts (its record was read back from the
    /// metadata quorum with the right size and checksum), but the segment is never evicted.
    pub verified: bool,
}

/// The newest manifest of a namespace that reached the backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UploadedManifest {
    /// Its generation.
    pub generation: u64,
    /// Highest sealed segment it covers.
    pub sealed_through: Option<u32>,
    /// Segments it references.
    pub segments: BTreeSet<u32>,
    /// Object id of the manifest object.
    pub object_id: [u8; 16],
}

/// When a pending delete may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Gate {
    /// A segment removed from a live namespace: once a manifest of the namespace with
    /// `sealed_through >= after` that does not reference the segment is uploaded.
    Manifest {
        /// Highest segment id of the namespace when the segment was removed.
        after: u32,
    },
    /// The namespace was deleted: the manifest object goes first, the segments after it.
    /// Waits until a recovery cut taken after the deletion is uploaded (becoming
    /// [`Gate::CutWithout`]): until then the uploaded cut may still name the namespace.
    NamespaceGone,
    /// A deleted namespace that the uploaded cut no longer names: may go.
    CutWithout,
}

/// A cold object to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingDelete {
    /// Namespace.
    pub ns: String,
    /// The segment, or `None` for the namespace's manifest object.
    pub segment: Option<u32>,
    /// When it may run.
    pub gate: Gate,
    /// Object id of the copy meant; `None` = not known (the object is checked at delete time).
    pub object_id: Option<[u8; 16]>,
}

/// Everything the tier must not forget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    /// Confirmed segments by (namespace, segment id).
    pub confirmed: BTreeMap<(String, u32), Confirmed>,
    /// Uploaded manifests by namespace.
    pub manifests: BTreeMap<String, UploadedManifest>,
    /// Cold objects waiting to be deleted.
    pub deletes: Vec<PendingDelete>,
    /// The engine's seal key is stored in the backends.
    pub seal_key_uploaded: bool,
}

/// [`Confirmed`] as version 1 wrote it.
#[derive(Deserialize)]
struct ConfirmedV1 {
    length: u64,
    sha256: [u8; 32],
    object_id: [u8; 16],
}

/// [`State`] as version 1 wrote it.
#[derive(Deserialize)]
struct StateV1 {
    confirmed: BTreeMap<(String, u32), ConfirmedV1>,
    manifests: BTreeMap<String, UploadedManifest>,
    deletes: Vec<PendingDelete>,
    seal_key_uploaded: bool,
}

impl From<StateV1> for State {
    fn from(v: StateV1) -> State {
        State {
            confirmed: v
                .confirmed
                .into_iter()
                .map(|(k, c)| {
                    let c = Confirmed {
                        length: c.length,
                        sha256: c.sha256,
                        object_id: c.object_id,
                        verified: true,
                    };
                    (k, c)
                })
                .collect(),
            manifests: v.manifests,
            deletes: v.deletes,
            seal_key_uploaded: v.seal_key_uploaded,
        }
    }
}

impl State {
    /// Path of the state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// Loads the state of `dir`; an absent file is an empty state.
    pub fn load(dir: &Path) -> Result<State> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(b) => Self::decode(&b).map_err(|d| Error::corrupt(path.display().to_string(), d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    /// Replaces the state file of `dir` atomically and durably.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let bytes = self.encode()?;
        let io = |what: &str, p: &Path| {
            let ctx = format!("{what} {}", p.display());
            move |e| Error::io(ctx, e)
        };
        let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", dir))?;
        Ok(())
    }

    fn encode(&self) -> Result<Vec<u8>> {
        let payload = postcard::to_allocvec(self)
            .map_err(|e| Error::InvalidArgument(format!("encode tier state: {e}")))?;
        let mut out = Vec::with_capacity(payload.len() + 20);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    fn decode(b: &[u8]) -> std::result::Result<State, String> {
        if b.len() < 20 || (&b[..8] != MAGIC && &b[..8] != MAGIC_V1) {
            return Err("not a tier state file (bad magic or too short)".into());
        }
        let crc = u32::from_le_bytes(b[8..12].try_into().map_err(|_| "short header")?);
        let len = u64::from_le_bytes(b[12..20].try_into().map_err(|_| "short header")?);
        let payload = &b[20..];
        if payload.len() as u64 != len {
            return Err(format!("length {} but {len} recorded", payload.len()));
        }
        if crc32c::crc32c(payload) != crc {
            return Err("checksum mismatch".into());
        }
        let parsed = if &b[..8] == MAGIC_V1 {
            postcard::from_bytes::<StateV1>(payload).map(State::from)
        } else {
            postcard::from_bytes(payload)
        };
        parsed.map_err(|e| format!("does not parse: {e}"))
    }

    /// Sealed segments of `ns` that are confirmed.
    pub fn is_confirmed(&self, ns: &str, segment: u32, length: u64) -> bool {
        self.confirmed
            .get(&(ns.to_string(), segment))
            .is_some_and(|c| c.length == length)
    }

    /// Sealed segments of `ns` that are confirmed and deep-verified: only those may be evicted.
    pub fn is_verified(&self, ns: &str, segment: u32, length: u64) -> bool {
        self.confirmed
            .get(&(ns.to_string(), segment))
            .is_some_and(|c| c.length == length && c.verified)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_state() -> impl Strategy<Value = State> {
        let confirmed = prop::collection::btree_map(
            ("[a-z]{0,6}", any::<u32>()),
            (
                any::<u64>(),
                any::<[u8; 32]>(),
                any::<[u8; 16]>(),
                any::<bool>(),
            )
                .prop_map(|(length, sha256, object_id, verified)| Confirmed {
                    length,
                    sha256,
                    object_id,
                    verified,
                }),
            0..20,
        );
        let manifests = prop::collection::btree_map(
            "[a-z]{0,6}",
            (
                any::<u64>(),
                any::<Option<u32>>(),
                prop::collection::btree_set(any::<u32>(), 0..10),
                any::<[u8; 16]>(),
            )
                .prop_map(|(generation, sealed_through, segments, object_id)| {
                    UploadedManifest {
                        generation,
                        sealed_through,
                        segments,
                        object_id,
                    }
                }),
            0..5,
        );
        let deletes = prop::collection::vec(
            (
                "[a-z]{0,6}",
                any::<Option<u32>>(),
                prop_oneof![
                    any::<u32>().prop_map(|after| Gate::Manifest { after }),
                    Just(Gate::NamespaceGone)
                ],
                any::<Option<[u8; 16]>>(),
            )
                .prop_map(|(ns, segment, gate, object_id)| PendingDelete {
                    ns,
                    segment,
                    gate,
                    object_id,
                }),
            0..10,
        );
        (confirmed, manifests, deletes, any::<bool>()).prop_map(
            |(confirmed, manifests, deletes, seal_key_uploaded)| State {
                confirmed,
                manifests,
                deletes,
                seal_key_uploaded,
            },
        )
    }

    proptest! {
        #[test]
        fn round_trip_through_the_file(state in arb_state()) {
            let dir = tempfile::tempdir().unwrap();
            state.save(dir.path()).unwrap();
            prop_assert_eq!(State::load(dir.path()).unwrap(), state);
        }

        #[test]
        fn any_flipped_bit_is_detected(state in arb_state(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut b = state.encode().unwrap();
            let i = pos.index(b.len());
            b[i] ^= 1 << bit;
            prop_assert!(State::decode(&b).is_err());
        }

        #[test]
        fn truncation_is_detected(state in arb_state(), pos in any::<prop::sample::Index>()) {
            let b = state.encode().unwrap();
            let cut = pos.index(b.len());
            prop_assert!(State::decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn version_1_reads_as_deep_verified() {
        /// (length, sha256, object id): a version 1 confirmation.
        type ConfirmedV1 = (u64, [u8; 32], [u8; 16]);
        #[derive(Serialize)]
        struct V1 {
            confirmed: BTreeMap<(String, u32), ConfirmedV1>,
            manifests: BTreeMap<String, UploadedManifest>,
            deletes: Vec<PendingDelete>,
            seal_key_uploaded: bool,
        }
        // postcard writes a struct as its fields in order, as it does a tuple.
        let v1 = V1 {
            confirmed: [(("data".to_string(), 7), (4096, [1; 32], [2; 16]))].into(),
            manifests: BTreeMap::new(),
            deletes: Vec::new(),
            seal_key_uploaded: true,
        };
        let payload = postcard::to_allocvec(&v1).unwrap();
        let mut b = MAGIC_V1.to_vec();
        b.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        b.extend_from_slice(&payload);
        let st = State::decode(&b).unwrap();
        assert!(st.is_verified("data", 7, 4096));
        assert!(st.seal_key_uploaded);
        assert_eq!(st.confirmed[&("data".to_string(), 7)].object_id, [2; 16]);
        // Written back as version 2.
        assert_eq!(&st.encode().unwrap()[..8], MAGIC);
    }

    #[test]
    fn absent_is_empty_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), State::default());
        std::fs::write(State::path(dir.path()), b"not a state").unwrap();
        assert!(matches!(
            State::load(dir.path()),
            Err(Error::Corrupt { .. })
        ));
    }
}
