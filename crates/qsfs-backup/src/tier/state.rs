//! The tier's durable state: what is confirmed stored, which manifests are uploaded, which cold
//! objects wait to be deleted.
//!
//! Two files. `tier.state` is a snapshot, replaced whole and atomically (temp file, fsync,
//! rename, fsync of the directory): `MAGIC ‖ crc32c(payload) u32 LE ‖ len(payload) u64 LE ‖
//! payload` with payload = postcard((sequence number, [`State`])). `tier.journal` holds the
//! changes made since, one record per change, appended and synced before the change counts:
//! `len u32 LE ‖ crc32c(seq ‖ payload) u32 LE ‖ seq u64 LE ‖ payload` with payload =
//! postcard([`Change`] list). So a confirmation costs a record of its own size, not a rewrite
//! of everything confirmed. When the journal outgrows the snapshot, a new snapshot is written
//! and the journal emptied; a crash between the two leaves records the snapshot already holds,
//! which their sequence numbers skip.
//!
//! A torn last record (a crash while appending) is a change that never counted and is cut.
//! Anything else that fails its checksum is refused, never guessed at: losing the state would
//! mean re-uploading everything, and misreading it could mean evicting unconfirmed data.
//! Version 1 snapshots (no journal; every confirmation deep-verified at once) are read.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use qsfs_core::{Error, Result};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"QSTIER2\0";
const JOURNAL: &str = "tier.journal";
/// Journal record header: length, crc32c, sequence number.
const RECORD_HEADER: usize = 16;
/// The journal is folded into a new snapshot once it is larger than this and than the
/// snapshot.
const JOURNAL_MIN: u64 = if cfg!(test) { 16 << 10 } else { 1 << 20 };
/// Version 1: no `verified` flag, because every confirmation was deep-verified before it was
/// recorded.
const MAGIC_V1: &[u8; 8] = b"QSTIER1\0";
const FILE: &str = "tier.state";

/// A segment whose cold copy was read back and verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Confirmed {
    /// Segment length in bytes.
    pub length: u64,
    /// The pipeline's whole-object checksum of the segment as the tier read it (older states
    /// hold the file's plain SHA-256 here). Nothing decides on it: the check happened before
    /// the confirmation was recorded.
    pub checksum: [u8; 32],
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
                        checksum: c.sha256,
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

    /// Loads the snapshot of `dir` and its sequence number; an absent file is an empty state.
    fn load_snapshot(dir: &Path) -> Result<(u64, State)> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(b) => Self::decode(&b).map_err(|d| Error::corrupt(path.display().to_string(), d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, State::default())),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    /// Replaces the snapshot of `dir` atomically and durably, as of journal record `seq`.
    fn save_snapshot(&self, dir: &Path, seq: u64) -> Result<u64> {
        let path = Self::path(dir);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let bytes = self.encode(seq)?;
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
        Ok(bytes.len() as u64)
    }

    fn encode(&self, seq: u64) -> Result<Vec<u8>> {
        let payload = postcard::to_allocvec(&(seq, self))
            .map_err(|e| Error::InvalidArgument(format!("encode tier state: {e}")))?;
        let mut out = Vec::with_capacity(payload.len() + 20);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    fn decode(b: &[u8]) -> std::result::Result<(u64, State), String> {
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
            postcard::from_bytes::<StateV1>(payload).map(|v| (0, State::from(v)))
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

/// One change to the state, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Change {
    /// A confirmation added or replaced.
    Confirm((String, u32), Confirmed),
    /// A confirmation removed.
    Unconfirm((String, u32)),
    /// The uploaded manifests, all of them (they change together, with each uploaded cut).
    Manifests(BTreeMap<String, UploadedManifest>),
    /// The pending deletes, all of them.
    Deletes(Vec<PendingDelete>),
    /// Whether the seal key is stored.
    SealKey(bool),
}

impl Change {
    /// The changes that turn `old` into `new`.
    fn diff(old: &State, new: &State) -> Vec<Change> {
        let mut out = Vec::new();
        for (k, c) in &new.confirmed {
            if old.confirmed.get(k) != Some(c) {
                out.push(Change::Confirm(k.clone(), c.clone()));
            }
        }
        for k in old.confirmed.keys() {
            if !new.confirmed.contains_key(k) {
                out.push(Change::Unconfirm(k.clone()));
            }
        }
        if old.manifests != new.manifests {
            out.push(Change::Manifests(new.manifests.clone()));
        }
        if old.deletes != new.deletes {
            out.push(Change::Deletes(new.deletes.clone()));
        }
        if old.seal_key_uploaded != new.seal_key_uploaded {
            out.push(Change::SealKey(new.seal_key_uploaded));
        }
        out
    }

    fn apply(self, st: &mut State) {
        match self {
            Change::Confirm(k, c) => {
                st.confirmed.insert(k, c);
            }
            Change::Unconfirm(k) => {
                st.confirmed.remove(&k);
            }
            Change::Manifests(m) => st.manifests = m,
            Change::Deletes(d) => st.deletes = d,
            Change::SealKey(b) => st.seal_key_uploaded = b,
        }
    }
}

/// The state's files, open for changes.
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    file: std::fs::File,
    /// Bytes of valid records.
    len: u64,
    /// Sequence number of the last record (or of the snapshot).
    seq: u64,
    snapshot_len: u64,
}

impl Journal {
    /// Loads the state of `dir` (snapshot plus journal) and opens the journal for appending;
    /// a torn last record is cut.
    pub fn open(dir: &Path) -> Result<(Journal, State)> {
        let (mut seq, mut st) = State::load_snapshot(dir)?;
        let snapshot_len = std::fs::metadata(State::path(dir)).map_or(0, |m| m.len());
        let path = dir.join(JOURNAL);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        let corrupt = |d: String| Error::corrupt(path.display().to_string(), d);
        let mut at = 0usize;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let header = rest.get(..RECORD_HEADER);
            let len = header.map(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
            let Some(body) = len.and_then(|l| rest.get(8..RECORD_HEADER + l)) else {
                break; // torn: the append never completed, the change never counted
            };
            let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if crc32c::crc32c(body) != crc {
                if at + RECORD_HEADER + len.unwrap_or(0) == bytes.len() {
                    break; // the last record, torn within
                }
                return Err(corrupt(format!("record at byte {at} fails its checksum")));
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&body[..8]);
            let rseq = u64::from_le_bytes(n);
            at += body.len() + 8;
            if rseq <= seq {
                continue; // already in the snapshot (a crash while folding the journal)
            }
            if rseq != seq + 1 {
                return Err(corrupt(format!("record {rseq} follows {seq}")));
            }
            let changes: Vec<Change> = postcard::from_bytes(&body[8..])
                .map_err(|e| corrupt(format!("record {rseq} does not parse: {e}")))?;
            for c in changes {
                c.apply(&mut st);
            }
            seq = rseq;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        if (at as u64) < bytes.len() as u64 {
            file.set_len(at as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(format!("cut the torn tail of {}", path.display()), e))?;
        }
        let j = Journal {
            dir: dir.to_path_buf(),
            file,
            len: at as u64,
            seq,
            snapshot_len,
        };
        Ok((j, st))
    }

    /// Makes `new` (which was `old`) durable: one journal record, or a new snapshot when the
    /// journal has outgrown it.
    pub fn commit(&mut self, old: &State, new: &State) -> Result<()> {
        let changes = Change::diff(old, new);
        if changes.is_empty() {
            return Ok(());
        }
        if self.len > JOURNAL_MIN.max(self.snapshot_len) {
            return self.fold(new);
        }
        let payload = postcard::to_allocvec(&changes)
            .map_err(|e| Error::InvalidArgument(format!("encode a tier state change: {e}")))?;
        let seq = self.seq + 1;
        let mut body = Vec::with_capacity(payload.len() + 8);
        body.extend_from_slice(&seq.to_le_bytes());
        body.extend_from_slice(&payload);
        let len = u32::try_from(payload.len())
            .map_err(|_| Error::InvalidArgument("tier state change too large".into()))?;
        let mut rec = Vec::with_capacity(body.len() + 8);
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        rec.extend_from_slice(&body);
        let path = self.dir.join(JOURNAL);
        let written = self
            .file
            .write_all(&rec)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Whatever part of the record reached the file must not be followed by the next
            // one (it would read as a damaged record in the middle): cut it.
            let _ = self.file.set_len(self.len);
            return Err(Error::io(format!("append to {}", path.display()), e));
        }
        self.len += rec.len() as u64;
        self.seq = seq;
        Ok(())
    }

    /// Writes `st` as the new snapshot and empties the journal.
    fn fold(&mut self, st: &State) -> Result<()> {
        let seq = self.seq + 1;
        self.snapshot_len = st.save_snapshot(&self.dir, seq)?;
        self.seq = seq;
        let path = self.dir.join(JOURNAL);
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io(format!("empty {}", path.display()), e))?;
        self.len = 0;
        Ok(())
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
                .prop_map(|(length, checksum, object_id, verified)| Confirmed {
                    length,
                    checksum,
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

    /// Opens `dir`, commits each state in turn, reopens: the last one comes back. With
    /// `torn`, the journal then loses its last `torn` bytes (a crash while appending): the
    /// state comes back as of a commit, never between two.
    fn replay(states: &[State], torn: Option<usize>) -> (State, Vec<State>) {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut cur) = Journal::open(dir.path()).unwrap();
        let mut seen = vec![cur.clone()];
        for s in states {
            j.commit(&cur, s).unwrap();
            cur = s.clone();
            seen.push(cur.clone());
        }
        drop(j);
        if let Some(n) = torn {
            let p = dir.path().join(JOURNAL);
            let len = std::fs::metadata(&p).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(len.saturating_sub(n as u64)).unwrap();
        }
        let back = Journal::open(dir.path()).unwrap().1;
        // Opening again after the cut gives the same state, and appending still works.
        let (mut j, again) = Journal::open(dir.path()).unwrap();
        assert_eq!(again, back);
        j.commit(&back, &State::default()).unwrap();
        assert_eq!(Journal::open(dir.path()).unwrap().1, State::default());
        (back, seen)
    }

    proptest! {
        // Each case syncs a file per commit: fewer cases than the default 256.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn the_journal_brings_back_the_last_commit(states in prop::collection::vec(arb_state(), 1..12)) {
            let (back, _) = replay(&states, None);
            prop_assert_eq!(&back, states.last().unwrap());
        }

        #[test]
        fn a_torn_journal_comes_back_as_of_a_commit(states in prop::collection::vec(arb_state(), 1..8), torn in 1usize..200) {
            let (back, seen) = replay(&states, Some(torn));
            prop_assert!(seen.contains(&back));
        }

    }

    proptest! {
        #[test]
        fn round_trip_through_the_file(state in arb_state()) {
            let dir = tempfile::tempdir().unwrap();
            state.save_snapshot(dir.path(), 7).unwrap();
            prop_assert_eq!(State::load_snapshot(dir.path()).unwrap(), (7, state));
        }

        #[test]
        fn any_flipped_bit_is_detected(state in arb_state(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut b = state.encode(1).unwrap();
            let i = pos.index(b.len());
            b[i] ^= 1 << bit;
            prop_assert!(State::decode(&b).is_err());
        }

        #[test]
        fn truncation_is_detected(state in arb_state(), pos in any::<prop::sample::Index>()) {
            let b = state.encode(1).unwrap();
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
        let (seq, st) = State::decode(&b).unwrap();
        assert_eq!(seq, 0);
        assert!(st.is_verified("data", 7, 4096));
        assert!(st.seal_key_uploaded);
        assert_eq!(st.confirmed[&("data".to_string(), 7)].object_id, [2; 16]);
        // Written back as version 2.
        assert_eq!(&st.encode(1).unwrap()[..8], MAGIC);
    }

    #[test]
    fn a_long_journal_is_folded_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut cur) = Journal::open(dir.path()).unwrap();
        for i in 0..3000u32 {
            let mut next = cur.clone();
            next.confirmed.insert(
                (format!("namespace-{}", i % 7), i),
                Confirmed {
                    length: u64::from(i),
                    checksum: [i as u8; 32],
                    object_id: [3; 16],
                    verified: i % 2 == 0,
                },
            );
            j.commit(&cur, &next).unwrap();
            cur = next;
        }
        let journal = std::fs::metadata(dir.path().join(JOURNAL)).unwrap().len();
        let snapshot = std::fs::metadata(State::path(dir.path())).unwrap().len();
        assert!(
            journal <= JOURNAL_MIN.max(snapshot) + 4096,
            "journal never folded: {journal} bytes, snapshot {snapshot}"
        );
        assert_eq!(Journal::open(dir.path()).unwrap().1, cur);
    }

    #[test]
    fn a_damaged_record_before_the_last_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut cur) = Journal::open(dir.path()).unwrap();
        for b in [true, false, true] {
            let mut next = cur.clone();
            next.seal_key_uploaded = b;
            j.commit(&cur, &next).unwrap();
            cur = next;
        }
        drop(j);
        let p = dir.path().join(JOURNAL);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[RECORD_HEADER] ^= 1; // the first record's sequence number
        std::fs::write(&p, bytes).unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn absent_is_empty_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Journal::open(dir.path()).unwrap().1, State::default());
        std::fs::write(State::path(dir.path()), b"not a state").unwrap();
        assert!(matches!(
            Journal::open(dir.path()).map(|(_, s)| s),
            Err(Error::Corrupt { .. })
        ));
    }
}
