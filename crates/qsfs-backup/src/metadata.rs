//! Object records: what an object is and where its shards are, encrypted, bound to their path
//! and version, replicated over the metadata backends and read with a quorum.
//!
//! Keys on a metadata backend (nothing in them reveals a path):
//!
//! ```text
//! {prefix}/repo                         public repository header (JSON, no secret in clear)
//! {prefix}/m/{hmac(path)}/{version:016x} one envelope per record version
//! {prefix}/m/{hmac(path)}/latest          the newest envelope again (repository format 2)
//! ```
//!
//! Looking a record up in a format 1 repository lists the backend's keys, which a 0-db node
//! can only do by scanning all of them: storing a directory of 4,000 small files over 0-db
//! nodes took 80 s, quadratic in the files. Format 2 reads `latest` with a quorum (the highest
//! version among the envelopes that authenticate), then asks whether the next version exists,
//! and the next, which finds a newer version whose `latest` was not written (a crash between
//! the two writes, a backend that failed the second). Only then is a version taken as the
//! newest, so `latest` never hides a newer record and is never trusted unauthenticated.
//!
//! Envelope = `"QSM2" ‖ version (u64 LE) ‖ nonce ‖ AES-256-GCM-SIV(meta key, postcard(record))`,
//! associated data = format label ‖ repository id ‖ path hash ‖ version. Format 2 differs from
//! format 1 (`"QSM1"`, still read) only in its shard checksums: BLAKE3 instead of SHA-256
//! ([`ObjectRecord::shard_hash`]); format 3 (`"QSM3"`) also has BLAKE3 plaintext checksums;
//! format 4 (`"QSM4"`) keeps those only for compressed stripes and takes an uncompressed
//! stripe's AEAD tag as its plaintext checksum; format 5 (`"QSM5"`, what `qsfs backup` writes)
//! sums the shards with XXH3-128 instead of BLAKE3. The label in the associated data binds the
//! format, so an envelope relabelled to another one does not authenticate. A record moved to another path's key or
//! to another version's key does not authenticate. A new version is always the highest listed
//! version + 1, readers take the highest version a read quorum reports, and an older envelope
//! replayed under its own key is simply superseded; so a rollback needs the newest version to be
//! deleted from every metadata backend, which a read quorum over a write quorum detects as long
//! as one replica survives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::join_all;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::crypto::Keys;
use crate::error::BackupError;
use crate::node::Node;
use crate::stripe::{ShardHash, StripeId, StripeMeta, Sum};
use qsfs_core::{Error, Result};

/// One shard's location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLoc {
    /// Index into [`ObjectRecord::backends`].
    pub backend: u16,
}

/// One stripe: how it was encoded and where its k+m shards are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeRecord {
    /// Encoding facts and checksums.
    pub meta: StripeMeta,
    /// Location of each shard, in shard order.
    pub shards: Vec<ShardLoc>,
}

/// Everything known about one version of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// The object's name (a normalised absolute path for files, any key for blobs).
    pub name: String,
    /// Record version: +1 on every store, rebuild and delete of this name.
    pub version: u64,
    /// True for a deletion marker (keeps the version counter monotonic).
    pub deleted: bool,
    /// The version that wrote the data (bound into each stripe's associated data).
    pub data_version: u64,
    /// Random id of the stored data, part of every shard key.
    pub object_id: [u8; 16],
    /// Plaintext size in bytes.
    pub size: u64,
    /// Modification time of the source (seconds, nanoseconds since the epoch), if a file.
    pub mtime: Option<(i64, u32)>,
    /// Unix permission bits of the source, if a file.
    pub mode: Option<u32>,
    /// When this version was written (seconds since the epoch).
    pub stored_at: u64,
    /// Data shards per stripe.
    pub k: u16,
    /// Parity shards per stripe.
    pub m: u16,
    /// Plaintext bytes per stripe (the last one may be shorter).
    pub stripe_size: u32,
    /// Whole-object checksum ([`crate::stripe::object_sum`]).
    pub checksum: Sum,
    /// The data key wrapped by the repository key (never the key itself).
    pub wrapped_key: Vec<u8>,
    /// Names of the backends shards live on.
    pub backends: Vec<String>,
    /// The stripes.
    pub stripes: Vec<StripeRecord>,
    /// The checksum of the shards: not in the encoded record but given by its envelope's format
    /// (which the envelope authenticates), so records of format 1 decode unchanged.
    #[serde(skip)]
    pub shard_hash: ShardHash,
}

impl ObjectRecord {
    /// Which stripe `index` of this record is, as bound into the stripe's associated data.
    pub fn stripe_id(&self, index: u64) -> StripeId {
        StripeId {
            object_id: self.object_id,
            index,
            data_version: self.data_version,
        }
    }

    /// The key of shard `shard` of stripe `stripe` on its backend.
    pub fn shard_key(prefix: &str, object_id: &[u8; 16], stripe: u64, shard: usize) -> String {
        format!(
            "{prefix}/d/{}/{stripe:08x}.{shard:03}",
            hex::encode(object_id)
        )
    }

    /// Bytes stored on backends for this object (all shards).
    pub fn stored_bytes(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| {
                (crate::codec::shard_len(s.meta.cipher_len as usize, self.k as usize)
                    * s.shards.len()) as u64
            })
            .sum()
    }

    /// Index of `name` in the backend table, adding it if new.
    pub fn backend_index(&mut self, name: &str) -> u16 {
        if let Some(i) = self.backends.iter().position(|b| b == name) {
            return i as u16;
        }
        self.backends.push(name.to_string());
        (self.backends.len() - 1) as u16
    }
}

/// Parses a shard key back into (object id hex, stripe, shard).
pub fn parse_shard_key<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, u64, usize)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("/d/")?;
    let (oid, tail) = rest.split_once('/')?;
    let (stripe, shard) = tail.split_once('.')?;
    Some((
        oid,
        u64::from_str_radix(stripe, 16).ok()?,
        shard.parse().ok()?,
    ))
}

const MAGIC_V1: &[u8; 4] = b"QSM1";
const MAGIC_V2: &[u8; 4] = b"QSM2";
const MAGIC_V3: &[u8; 4] = b"QSM3";
const MAGIC_V4: &[u8; 4] = b"QSM4";
const MAGIC_V5: &[u8; 4] = b"QSM5";

fn aad(keys: &Keys, hash: &str, version: u64, format: ShardHash) -> Vec<u8> {
    let mut a = match format {
        ShardHash::Sha256 => b"qsfs-meta-v1".to_vec(),
        ShardHash::Blake3 => b"qsfs-meta-v2".to_vec(),
        ShardHash::Blake3Plain => b"qsfs-meta-v3".to_vec(),
        ShardHash::Blake3Tag => b"qsfs-meta-v4".to_vec(),
        ShardHash::Xxh3Tag => b"qsfs-meta-v5".to_vec(),
    };
    a.extend_from_slice(&keys.repo_id);
    a.extend_from_slice(hash.as_bytes());
    a.extend_from_slice(&version.to_le_bytes());
    a
}

/// Seals a record into its envelope.
pub fn seal(keys: &Keys, rec: &ObjectRecord) -> Result<Vec<u8>> {
    let hash = keys.name_hash(&rec.name);
    let plain = postcard::to_allocvec(rec)
        .map_err(|e| Error::InvalidArgument(format!("encode record: {e}")))?;
    let mut out = match rec.shard_hash {
        ShardHash::Sha256 => MAGIC_V1.to_vec(),
        ShardHash::Blake3 => MAGIC_V2.to_vec(),
        ShardHash::Blake3Plain => MAGIC_V3.to_vec(),
        ShardHash::Blake3Tag => MAGIC_V4.to_vec(),
        ShardHash::Xxh3Tag => MAGIC_V5.to_vec(),
    };
    out.extend_from_slice(&rec.version.to_le_bytes());
    out.extend_from_slice(
        &keys
            .meta
            .seal(&aad(keys, &hash, rec.version, rec.shard_hash), &plain),
    );
    Ok(out)
}

/// Opens an envelope found at `hash`/`version`, checking everything it claims.
pub fn open(
    keys: &Keys,
    hash: &str,
    version: u64,
    env: &[u8],
    location: &str,
) -> Result<ObjectRecord> {
    let tampered = |detail: &str| -> Error {
        BackupError::Tampered {
            what: format!("metadata record {location}"),
            detail: detail.into(),
        }
        .into()
    };
    if env.len() < 12 {
        return Err(tampered("not a qsfs metadata envelope"));
    }
    let format = match &env[..4] {
        m if m == MAGIC_V1 => ShardHash::Sha256,
        m if m == MAGIC_V2 => ShardHash::Blake3,
        m if m == MAGIC_V3 => ShardHash::Blake3Plain,
        m if m == MAGIC_V4 => ShardHash::Blake3Tag,
        m if m == MAGIC_V5 => ShardHash::Xxh3Tag,
        _ => return Err(tampered("not a qsfs metadata envelope")),
    };
    let claimed = u64::from_le_bytes(env[4..12].try_into().map_err(|_| tampered("short"))?);
    if claimed != version {
        return Err(tampered(&format!(
            "envelope says version {claimed}, stored as version {version} (replayed?)"
        )));
    }
    let plain = keys
        .meta
        .open(&aad(keys, hash, version, format), &env[12..])
        .ok_or_else(|| {
            tampered(
                "does not authenticate for this path and version (swapped, replayed or modified)",
            )
        })?;
    let mut rec: ObjectRecord =
        postcard::from_bytes(&plain).map_err(|e| tampered(&format!("undecodable: {e}")))?;
    rec.shard_hash = format;
    if rec.version != version || keys.name_hash(&rec.name) != hash {
        return Err(tampered("record names another path or version"));
    }
    Ok(rec)
}

/// The replicated record store over the metadata backends.
#[derive(Debug, Clone)]
pub struct MetaStore {
    nodes: Vec<Arc<Node>>,
    prefix: String,
    write_quorum: usize,
    /// Repository format 2: `latest` keys are kept and looked up instead of listings.
    latest_keys: bool,
}

/// Records [`MetaStore::all`] reads at once.
const RECORDS_AT_ONCE: usize = 16;

/// A path hash with the versions the quorum reported.
type Listing = BTreeMap<String, BTreeSet<u64>>;

impl MetaStore {
    /// A store over `nodes`; writes need `write_quorum` acknowledgements (default majority),
    /// reads need `n − write_quorum + 1` answers so they always see the newest write.
    pub fn new(nodes: Vec<Arc<Node>>, prefix: &str, write_quorum: Option<usize>) -> Result<Self> {
        let n = nodes.len();
        if n == 0 {
            return Err(
                BackupError::Config("at least one metadata backend is needed".into()).into(),
            );
        }
        let w = write_quorum.unwrap_or(n / 2 + 1);
        if w == 0 || w > n {
            return Err(BackupError::Config(format!(
                "metadata write quorum {w} must be within 1..={n}"
            ))
            .into());
        }
        Ok(MetaStore {
            nodes,
            prefix: prefix.to_string(),
            write_quorum: w,
            latest_keys: false,
        })
    }

    /// Keeps and reads `latest` keys (repository format 2) instead of listing versions.
    pub fn use_latest_keys(&mut self, on: bool) {
        self.latest_keys = on;
    }

    /// The metadata backends.
    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    fn read_quorum(&self) -> usize {
        self.nodes.len() - self.write_quorum + 1
    }

    /// An error naming the backends that did not answer, unless `answered` make a read quorum.
    fn check_read_quorum(&self, answered: usize, errors: &[String]) -> Result<()> {
        if answered >= self.read_quorum() {
            return Ok(());
        }
        Err(BackupError::NoQuorum(format!(
            "{answered} of {} metadata backends answered, {} needed; {}",
            self.nodes.len(),
            self.read_quorum(),
            errors.join("; ")
        ))
        .into())
    }

    /// The key of the repository header.
    pub fn header_key(&self) -> String {
        format!("{}/repo", self.prefix)
    }

    fn record_key(&self, hash: &str, version: u64) -> String {
        format!("{}/m/{hash}/{version:016x}", self.prefix)
    }

    fn latest_key(&self, hash: &str) -> String {
        format!("{}/m/{hash}/latest", self.prefix)
    }

    /// The newest version of the record at `hash` (0 if none): from a listing in format 1,
    /// from the `latest` keys and a probe forward in format 2.
    async fn newest(&self, keys: &Keys, hash: &str) -> Result<u64> {
        if !self.latest_keys {
            let l = self.listing(&format!("{hash}/")).await?;
            return Ok(l.get(hash).and_then(|v| v.last().copied()).unwrap_or(0));
        }
        let key = self.latest_key(hash);
        let answers = join_all(self.nodes.iter().map(|n| n.get(&key))).await;
        let (mut answered, mut newest) = (0, 0);
        let mut errors = Vec::new();
        for (n, a) in self.nodes.iter().zip(answers) {
            match a {
                Ok(env) => {
                    answered += 1;
                    let claimed = env
                        .get(4..12)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u64::from_le_bytes);
                    let at = format!("{key} on {}", n.name);
                    match open(keys, hash, claimed, &env, &at) {
                        Ok(_) => newest = newest.max(claimed),
                        Err(e) => tracing::warn!(backend = %n.name, "{e}"),
                    }
                }
                Err(Error::NotFound(_)) => answered += 1,
                Err(e) => errors.push(format!("{}: {e}", n.name)),
            }
        }
        self.check_read_quorum(answered, &errors)?;
        loop {
            let next = self.record_key(hash, newest + 1);
            let found = join_all(self.nodes.iter().map(|n| n.exists(&next))).await;
            if !found.iter().any(|r| matches!(r, Ok(true))) {
                return Ok(newest);
            }
            newest += 1;
        }
    }

    /// Reads the repository header from every metadata backend: the distinct versions found
    /// (several only after an interrupted passphrase change). Empty if a read quorum answered
    /// and none has one.
    pub async fn read_header(&self) -> Result<Vec<Vec<u8>>> {
        let key = self.header_key();
        let answers = join_all(self.nodes.iter().map(|n| n.get(&key))).await;
        let mut found: Vec<Vec<u8>> = Vec::new();
        let mut answered = 0;
        let mut errors = Vec::new();
        for (n, a) in self.nodes.iter().zip(answers) {
            match a {
                Ok(b) => {
                    answered += 1;
                    if !found.iter().any(|f| f[..] == b[..]) {
                        found.push(b.to_vec());
                    }
                }
                Err(Error::NotFound(_)) => answered += 1,
                Err(e) => errors.push(format!("{}: {e}", n.name)),
            }
        }
        if found.is_empty() && answered < self.read_quorum() {
            return Err(BackupError::NoQuorum(format!(
                "repository header: {answered} of {} metadata backends answered, {} needed; {}",
                self.nodes.len(),
                self.read_quorum(),
                errors.join("; ")
            ))
            .into());
        }
        Ok(found)
    }

    /// A record key on any metadata backend, if one holds any: metadata without a header is a
    /// repository that lost its header, not room for a new one. Asked once, before a creation.
    pub async fn any_record(&self) -> Result<Option<String>> {
        let prefix = format!("{}/m/", self.prefix);
        let lists = join_all(self.nodes.iter().map(|n| n.list(&prefix))).await;
        Ok(lists
            .into_iter()
            .flatten()
            .find_map(|keys| keys.into_iter().next()))
    }

    /// Writes the repository header to every metadata backend (all must accept it at creation).
    pub async fn write_header(&self, bytes: Vec<u8>) -> Result<()> {
        let key = self.header_key();
        let data = Bytes::from(bytes);
        let res = join_all(self.nodes.iter().map(|n| n.put(&key, data.clone()))).await;
        let errs: Vec<String> = self
            .nodes
            .iter()
            .zip(res)
            .filter_map(|(n, r)| r.err().map(|e| format!("{}: {e}", n.name)))
            .collect();
        if errs.is_empty() {
            Ok(())
        } else {
            Err(BackupError::NoQuorum(format!(
                "writing the repository header: {}",
                errs.join("; ")
            ))
            .into())
        }
    }

    async fn listing(&self, sub: &str) -> Result<Listing> {
        let prefix = format!("{}/m/{sub}", self.prefix);
        let answers = join_all(self.nodes.iter().map(|n| n.list(&prefix))).await;
        let mut out = Listing::new();
        let mut answered = 0;
        let mut errors = Vec::new();
        for (n, a) in self.nodes.iter().zip(answers) {
            match a {
                Ok(keys) => {
                    answered += 1;
                    for k in keys {
                        let Some(rest) = k.strip_prefix(&format!("{}/m/", self.prefix)) else {
                            continue;
                        };
                        let Some((hash, ver)) = rest.split_once('/') else {
                            continue;
                        };
                        if let Ok(v) = u64::from_str_radix(ver, 16) {
                            out.entry(hash.to_string()).or_default().insert(v);
                        }
                    }
                }
                Err(e) => errors.push(format!("{}: {e}", n.name)),
            }
        }
        self.check_read_quorum(answered, &errors)?;
        Ok(out)
    }

    /// The highest version recorded for `name` (0 if none).
    pub async fn latest_version(&self, keys: &Keys, name: &str) -> Result<u64> {
        self.newest(keys, &keys.name_hash(name)).await
    }

    async fn fetch(&self, keys: &Keys, hash: &str, version: u64) -> Result<ObjectRecord> {
        let key = self.record_key(hash, version);
        let answers = join_all(self.nodes.iter().map(|n| n.get(&key))).await;
        let mut problems = Vec::new();
        let mut tampered = None;
        for (n, a) in self.nodes.iter().zip(answers) {
            match a {
                Ok(env) => match open(keys, hash, version, &env, &format!("{key} on {}", n.name)) {
                    Ok(rec) => return Ok(rec),
                    Err(e) => {
                        tracing::warn!(backend = %n.name, "{e}");
                        tampered = Some(e);
                    }
                },
                Err(e) => problems.push(format!("{}: {e}", n.name)),
            }
        }
        // Never fall back to an older version: that would be a rollback.
        match tampered {
            Some(e) => Err(e),
            None => Err(Error::Unavailable(format!(
                "record {key}: no replica readable: {}",
                problems.join("; ")
            ))),
        }
    }

    /// [`MetaStore::fetch`], following the record forward when a concurrent `put` pruned the
    /// listed version between the listing and the read (only ever to a newer version).
    async fn fetch_newest(
        &self,
        keys: &Keys,
        hash: &str,
        mut version: u64,
    ) -> Result<ObjectRecord> {
        for _ in 0..3 {
            match self.fetch(keys, hash, version).await {
                Err(e @ Error::Unavailable(_)) => match self.newest(keys, hash).await? {
                    newer if newer > version => version = newer,
                    _ => return Err(e),
                },
                r => return r,
            }
        }
        self.fetch(keys, hash, version).await
    }

    /// The newest record of `name`, tombstones included; [`Error::NotFound`] if never stored.
    pub async fn get(&self, keys: &Keys, name: &str) -> Result<ObjectRecord> {
        let hash = keys.name_hash(name);
        match self.newest(keys, &hash).await? {
            0 => Err(Error::NotFound(format!("no backup of {name}"))),
            v => self.fetch_newest(keys, &hash, v).await,
        }
    }

    /// Writes `rec` (its version must be new) to every metadata backend; succeeds with a write
    /// quorum, then removes older versions of the record where it can.
    pub async fn put(&self, keys: &Keys, rec: &ObjectRecord) -> Result<()> {
        let hash = keys.name_hash(&rec.name);
        let env = Bytes::from(seal(keys, rec)?);
        let key = self.record_key(&hash, rec.version);
        let res = join_all(self.nodes.iter().map(|n| n.put(&key, env.clone()))).await;
        let ok = res.iter().filter(|r| r.is_ok()).count();
        if ok < self.write_quorum {
            let errs: Vec<String> = self
                .nodes
                .iter()
                .zip(&res)
                .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{}: {e}", n.name)))
                .collect();
            // Leave no minority copy that a later quorum read could mistake for the newest.
            let _ = join_all(self.nodes.iter().map(|n| n.delete(&key))).await;
            return Err(BackupError::NoQuorum(format!(
                "record of {}: {ok} of {} metadata backends accepted it, {} needed; {}",
                rec.name,
                self.nodes.len(),
                self.write_quorum,
                errs.join("; ")
            ))
            .into());
        }
        self.write_latest_then_prune(&hash, &env, rec.version).await;
        Ok(())
    }

    /// Format 2: the newest envelope under `latest` too, on every backend that takes it (a
    /// backend that does not is corrected by the probe forward in [`MetaStore::newest`]).
    /// Returns on how many backends it is.
    async fn write_latest(&self, hash: &str, env: &Bytes) -> usize {
        let key = self.latest_key(hash);
        let done = join_all(self.nodes.iter().map(|n| n.put(&key, env.clone()))).await;
        done.iter().filter(|r| r.is_ok()).count()
    }

    /// [`MetaStore::write_latest`] (format 2), then [`MetaStore::prune`]. The probe forward
    /// starts from the `latest` a read quorum shows (or from version 1), so the older versions
    /// may go only once `latest` is on a write quorum: otherwise they are the way there.
    async fn write_latest_then_prune(&self, hash: &str, env: &Bytes, version: u64) {
        if self.latest_keys && self.write_latest(hash, env).await < self.write_quorum {
            return;
        }
        self.prune(hash, version).await;
    }

    /// Copies the newest of `versions` of the record at `hash` to its `latest` key; true once
    /// that is on a write quorum. The bytes are copied as they are: readers authenticate them.
    async fn settle_latest(&self, hash: &str, versions: &BTreeSet<u64>) -> bool {
        let Some(&newest) = versions.last() else {
            return false;
        };
        let key = self.record_key(hash, newest);
        for n in &self.nodes {
            if let Ok(env) = n.get(&key).await {
                return self.write_latest(hash, &env).await >= self.write_quorum;
            }
        }
        false
    }

    /// Removes versions older than `keep` of one record (best effort; `gc` retries). In
    /// format 2 only the version before `keep`: every put prunes, so no other is left but
    /// those of failed prunes, which `gc` lists and removes; a listing per put would scan
    /// a 0-db node's every key.
    async fn prune(&self, hash: &str, keep: u64) {
        if self.latest_keys {
            if keep > 1 {
                let key = self.record_key(hash, keep - 1);
                join_all(self.nodes.iter().map(|n| n.delete(&key))).await;
            }
            return;
        }
        for n in &self.nodes {
            let prefix = format!("{}/m/{hash}/", self.prefix);
            let Ok(keys) = n.list(&prefix).await else {
                continue;
            };
            for k in keys {
                let old = k
                    .rsplit('/')
                    .next()
                    .and_then(|v| u64::from_str_radix(v, 16).ok())
                    .is_some_and(|v| v < keep);
                if old {
                    let _ = n.delete(&k).await;
                }
            }
        }
    }

    /// Re-writes the newest version of a record to metadata backends that lack it (repair).
    pub async fn replicate(&self, keys: &Keys, rec: &ObjectRecord) -> Result<usize> {
        let hash = keys.name_hash(&rec.name);
        let key = self.record_key(&hash, rec.version);
        let env = Bytes::from(seal(keys, rec)?);
        let mut fixed = 0;
        for n in &self.nodes {
            if let Ok(false) = n.exists(&key).await {
                if n.put(&key, env.clone()).await.is_ok() {
                    fixed += 1;
                }
            }
        }
        self.write_latest_then_prune(&hash, &env, rec.version).await;
        Ok(fixed)
    }

    /// Every record (newest version of each path, tombstones included), and the problems met
    /// (records that do not authenticate), in path-hash order.
    pub async fn all(&self, keys: &Keys) -> Result<(Vec<ObjectRecord>, Vec<Error>)> {
        let l = self.listing("").await?;
        let mut recs = Vec::new();
        let mut problems = Vec::new();
        // Several reads in flight: one after the other, a listing of 4,000 records over
        // 0-db nodes on this machine took 1.6 s, and every millisecond of distance to the
        // nodes would have added 4 s.
        let mut fetched = futures::stream::iter(l.into_iter().filter_map(|(hash, versions)| {
            let v = *versions.last()?;
            Some(async move { self.fetch_newest(keys, &hash, v).await })
        }))
        .buffered(RECORDS_AT_ONCE);
        while let Some(r) = fetched.next().await {
            match r {
                Ok(r) => recs.push(r),
                Err(e) => problems.push(e),
            }
        }
        Ok((recs, problems))
    }

    /// Every record key on every backend, with the newest version per hash (for gc). In
    /// format 2 a record's older versions are listed only once its `latest` holds the newest
    /// on a write quorum (the rule the store that superseded them follows too).
    pub async fn superseded(&self) -> Result<Vec<(usize, String)>> {
        let mut l = self.listing("").await?;
        if self.latest_keys {
            let mut settled = Listing::new();
            for (hash, versions) in l {
                if versions.len() > 1 && !self.settle_latest(&hash, &versions).await {
                    continue;
                }
                settled.insert(hash, versions);
            }
            l = settled;
        }
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Ok(keys) = n.list(&format!("{}/m/", self.prefix)).await else {
                continue;
            };
            for k in keys {
                let Some(rest) = k.strip_prefix(&format!("{}/m/", self.prefix)) else {
                    continue;
                };
                let Some((hash, ver)) = rest.split_once('/') else {
                    continue;
                };
                let newest = l.get(hash).and_then(|v| v.last().copied());
                if let (Ok(v), Some(newest)) = (u64::from_str_radix(ver, 16), newest) {
                    if v < newest {
                        out.push((i, k.clone()));
                    }
                }
            }
        }
        Ok(out)
    }
}
