//! [`qsfs_core::Backend`] over a 0-db namespace, so the backup pipeline can keep shards on 0-db
//! nodes (the original's or `qsfs serve`).
//!
//! Every blob is stored with a checksum, so a node that returns damaged bytes is caught here.
//!
//! * **User-mode namespace**: the Backend key is the 0-db key. A blob up to 8 MiB (less a 5-byte
//!   header) is one value `0x00 | crc32c u32 LE | data`. A larger one is split into 8 MiB chunks
//!   stored under `0x01 <hash of key>:<generation>:<n>` keys (invisible to `list`, which only
//!   shows valid Backend keys), then the key gets a manifest `0x01 | total u64 | chunks u32 |
//!   generation u64 | sha256`. The manifest is written last, so a reader sees the old blob or
//!   the new one, never a mixture; the old generation's chunks are deleted afterwards.
//! * **Seq-mode namespace** (0-stor's data nodes): the server chooses the keys, so every blob is
//!   written as data records (`'D' | bytes`) followed by a manifest record (`'M' | key length
//!   u8 | key | total u64 | count u32 | ids | sha256`). The key → manifest map is kept in memory
//!   and rebuilt on first use by scanning the namespace (only small records are fetched);
//!   replaced and deleted blobs have their records deleted.
//!   The map lives in this process, so a seq namespace must have one writing adapter at a time
//!   (as 0-stor gives each data namespace to one writer).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use qsfs_core::{check_object_key, Backend, Error, Health, HealthStatus, Mode, Result, Store};
use sha2::{Digest, Sha256};

use super::client::{ReplyExt, ZdbClient};
use super::store::{is_internal_error, parse_nsinfo, parse_nsinfo_space, show_key};
use crate::server::resp::Reply;

/// Largest value a 0-db server accepts.
const MAX_VALUE: usize = qsfs_core::MAX_VALUE_LEN;
/// Length of a user-mode manifest value.
const MANIFEST_LEN: usize = 53;
/// Seq-mode records at most this long are fetched when rebuilding the key map.
const MANIFEST_MAX: u64 = 64 * 1024;

/// A 0-db namespace used as a blob store.
#[derive(Clone)]
pub struct ZdbBackend {
    client: Arc<ZdbClient>,
    ns: String,
    mode: Mode,
    /// Seq mode: key → (manifest id, data ids). `None` until rebuilt.
    seq_map: Arc<Mutex<Option<HashMap<String, SeqObject>>>>,
    /// Serialises writers of seq mode so the map stays consistent.
    seq_write: Arc<tokio::sync::Mutex<()>>,
}

/// A user-mode manifest: (generation, chunk count, total length, sha256).
type Manifest = (u64, u32, u64, [u8; 32]);

#[derive(Debug, Clone)]
struct SeqObject {
    manifest: Vec<u8>,
    data: Vec<Vec<u8>>,
    total: u64,
    digest: [u8; 32],
}

impl std::fmt::Debug for ZdbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZdbBackend")
            .field("ns", &self.ns)
            .field("mode", &self.mode)
            .finish()
    }
}

fn corrupt(what: String, detail: &str) -> Error {
    Error::corrupt(what, detail)
}

fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Unavailable(format!("blocking task: {e}"))
}

impl ZdbBackend {
    /// A backend on the client's namespace; its mode is read from the server (NSINFO).
    pub fn new(client: Arc<ZdbClient>) -> Result<Self> {
        let ns = client.config().namespace.clone();
        let mode = client.namespace_info(&ns)?.mode;
        Ok(ZdbBackend {
            client,
            ns,
            mode,
            seq_map: Arc::new(Mutex::new(None)),
            seq_write: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Connects to a `zdb://` URL and builds the backend (blocking).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::new(Arc::new(ZdbClient::from_url(url)?))
    }

    /// The namespace's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ZdbBackend) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(join_err)?
    }

    fn location(&self, key: &str) -> String {
        format!("zdb {}/{} key {key}", self.client.endpoint(), self.ns)
    }

    // ---- user mode ----

    fn chunk_key(key: &str, generation: u64, n: u32) -> Vec<u8> {
        let h = Sha256::digest(key.as_bytes());
        let mut k = vec![0x01];
        k.extend_from_slice(format!("{}:{generation:016x}:{n}", hex::encode(&h[..16])).as_bytes());
        k
    }

    /// Whether `data` is stored as one value (else as chunks and a manifest).
    fn fits_one_value(data: &[u8]) -> bool {
        data.len() + 5 <= MAX_VALUE
    }

    /// Stores `data` as one value `0x00 | crc32c | data`.
    fn user_set_value(&self, key: &str, data: &[u8]) -> Result<()> {
        // Header and data go to the socket as they are: no copy of the value is made. The
        // engine's crc32c (folded with PCLMULQDQ): the `crc32c` crate's loop took a twentieth
        // of a backup's client CPU on its own.
        let crc = crate::segment::value_crc(data).to_le_bytes();
        self.client
            .set_parts(&self.ns, key.as_bytes(), &[&[0], &crc, data])
    }

    /// `CHECK`, `LENGTH` and `KEYCUR` of `key` (after `SET key 0x00|crc|data` when `set`) in
    /// one round trip, and the node's CRC compared with the value's (one CRC pass over `data`).
    /// `Ok(false)`: the node gave no CRC to compare (an older `qsfs serve`), so the caller
    /// reads the blob back.
    fn user_confirm(&self, key: &str, data: &[u8], set: bool) -> Result<bool> {
        let k = key.as_bytes();
        let crc = crate::segment::value_crc(data);
        let crc_bytes = crc.to_le_bytes();
        let mut wire = super::client::Wire::new();
        if set {
            wire.push(&[&[b"SET"], &[k], &[&[0], &crc_bytes, data]]);
        }
        for cmd in [b"CHECK".as_slice(), b"LENGTH", b"KEYCUR"] {
            wire.push(&[&[cmd], &[k]]);
        }
        // A SET of the same keyed value again is harmless, so the batch may be retried.
        let mut replies = self.client.pipeline_wire(&self.ns, &wire, true)?;
        if set {
            match replies.first().cloned().map(ReplyExt::ok).transpose()? {
                Some(Reply::Bulk(_) | Reply::Nil) => {}
                r => {
                    return Err(Error::InvalidArgument(format!(
                        "SET: unexpected reply {r:?}"
                    )))
                }
            }
            replies.remove(0);
        }
        let [check, length, cursor]: [Reply; 3] = replies
            .try_into()
            .map_err(|_| Error::Unavailable(format!("{}: missing replies", self.location(key))))?;
        let held = |detail: String| corrupt(self.location(key), &detail);
        match check.ok()? {
            Reply::Int(1) => {}
            Reply::Int(0) => {
                return Err(held(
                    "the node's copy fails its checksum (CHECK answers 0)".into(),
                ))
            }
            Reply::Nil => return Err(Error::NotFound(self.location(key))),
            r => {
                return Err(Error::io(
                    format!("{}: CHECK answers {r:?}", self.location(key)),
                    std::io::Error::other("the node cannot read its copy"),
                ))
            }
        }
        let stored_len = data.len() + 5;
        match length.ok()? {
            Reply::Int(n) if n == stored_len as i64 => {}
            Reply::Int(n) => {
                return Err(held(format!(
                    "the node holds {n} bytes, {stored_len} were stored"
                )))
            }
            Reply::Nil => return Err(Error::NotFound(self.location(key))),
            r => {
                return Err(Error::InvalidArgument(format!(
                    "LENGTH: unexpected reply {r:?}"
                )))
            }
        }
        let cursor = match cursor.ok()? {
            Reply::Bulk(c) if c.len() == 17 => c,
            r => {
                return Err(Error::InvalidArgument(format!(
                    "KEYCUR: unexpected reply {r:?}"
                )))
            }
        };
        let want = stored_crc(data, crc);
        let field = |at: usize| {
            u32::from_le_bytes([cursor[at], cursor[at + 1], cursor[at + 2], cursor[at + 3]])
        };
        let (got, want) = if self.client.is_qsfs() {
            // `0x51 | seqno | value crc32c | cursor crc`; zero from a server that predates it.
            if field(9) == 0 && want != 0 {
                return Ok(false);
            }
            (field(9), want)
        } else {
            // The original's `key length | file | payload length | offset | CRC`, its CRC
            // being CRC-32C with initial value 0 and no final XOR.
            if field(5) as usize != stored_len {
                return Err(held(format!(
                    "the node's cursor gives {} bytes, {stored_len} were stored",
                    field(5)
                )));
            }
            (field(13), want ^ zeros_crc(stored_len))
        };
        if got != want {
            return Err(held(format!(
                "the node's CRC of its copy is {got:08x}, the value stored has {want:08x}"
            )));
        }
        Ok(true)
    }

    fn user_put(&self, key: &str, data: &[u8]) -> Result<()> {
        // A manifest being replaced must be read first: its chunks are deleted only through it.
        let old = self.user_manifest(key)?;
        if Self::fits_one_value(data) {
            self.user_set_value(key, data)?;
        } else {
            let generation: u64 = rand::random();
            let chunks: Vec<&[u8]> = data.chunks(MAX_VALUE).collect();
            // A few chunks per round trip: pipelined, without holding too much in flight.
            for (group_no, group) in chunks.chunks(4).enumerate() {
                let reqs: Vec<Vec<Vec<u8>>> = group
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let n = (group_no * 4 + i) as u32;
                        vec![
                            b"SET".to_vec(),
                            Self::chunk_key(key, generation, n),
                            c.to_vec(),
                        ]
                    })
                    .collect();
                for r in self.client.pipeline(&self.ns, &reqs, true)? {
                    r.ok()?;
                }
            }
            let mut m = BytesMut::with_capacity(MANIFEST_LEN);
            m.put_u8(1);
            m.put_u64_le(data.len() as u64);
            m.put_u32_le(chunks.len() as u32);
            m.put_u64_le(generation);
            m.put_slice(&Sha256::digest(data));
            self.client.set(&self.ns, Some(key.as_bytes()), &m)?;
        }
        if let Some((generation, count, _, _)) = old {
            self.delete_chunks(key, generation, count);
        }
        Ok(())
    }

    /// The chunked manifest of `key`, if it has one: (generation, chunks, total, sha256).
    ///
    /// LENGTH is answered from the server's index, so only a value of a manifest's length is
    /// fetched: replacing a shard (or writing a new one) no longer reads the old value back.
    fn user_manifest(&self, key: &str) -> Result<Option<Manifest>> {
        let len = self.client.call(
            &self.ns,
            vec![b"LENGTH".to_vec(), key.as_bytes().to_vec()],
            true,
        )?;
        match len {
            Reply::Int(n) if n == MANIFEST_LEN as i64 => {}
            Reply::Int(_) | Reply::Nil => return Ok(None),
            Reply::Error(e) if e == "Key not found" => return Ok(None),
            r => {
                r.ok()?;
                return Ok(None);
            }
        }
        Ok(self
            .user_value(key)?
            .and_then(|v| Self::parse_user_manifest(&v)))
    }

    /// [`Backend::size`] of a blob in user mode.
    fn user_size(&self, key: &str) -> Result<Option<u64>> {
        let len = self.client.call(
            &self.ns,
            vec![b"LENGTH".to_vec(), key.as_bytes().to_vec()],
            true,
        )?;
        let n = match len {
            Reply::Int(n) => n,
            Reply::Nil => return Ok(None),
            Reply::Error(e) if e == "Key not found" => return Ok(None),
            r => {
                r.ok()?;
                return Ok(None);
            }
        };
        if n == MANIFEST_LEN as i64 {
            if let Some((_, _, total, _)) = self.user_manifest(key)? {
                return Ok(Some(total));
            }
        }
        match u64::try_from(n).ok().and_then(|n| n.checked_sub(5)) {
            Some(len) => Ok(Some(len)),
            None => Err(corrupt(self.location(key), "value shorter than its header")),
        }
    }

    /// The raw value of `key` (`None` if it has none), as the reply's own buffer.
    fn user_value(&self, key: &str) -> Result<Option<Bytes>> {
        self.get_checked(key, key.as_bytes())
    }

    /// `GET record` (a blob's value, one of its chunks, a seq-mode record) for the blob `key`:
    /// the value as the reply's own buffer, `None` if there is none.
    ///
    /// 0-db answers `Internal Error` both for a payload it cannot read (a failing disk, an
    /// offloaded file it cannot get back) and, from `qsfs serve`, for one that fails its
    /// checksum. Only the second is a damaged shard, which the pipeline repairs from the other
    /// nodes while the first may pass, so the record is asked about with `CHECK` on the same
    /// connection (it re-reads the payload and recomputes its CRC, on the original as on ours):
    /// `:0` is [`Error::Corrupt`] naming the node, namespace, blob and record; anything else
    /// stays the error the server's answer maps to (the node may really be failing).
    fn get_checked(&self, key: &str, record: &[u8]) -> Result<Option<Bytes>> {
        let (reply, check) = self.client.call_then(
            &self.ns,
            vec![b"GET".to_vec(), record.to_vec()],
            vec![b"CHECK".to_vec(), record.to_vec()],
            is_internal_error,
        )?;
        let internal = is_internal_error(&reply);
        match reply {
            Reply::Bulk(b) => Ok(Some(b)),
            Reply::Nil => Ok(None),
            Reply::Error(e) if e == "Key not found" => Ok(None),
            Reply::Error(e) if internal => {
                if matches!(check, Some(Reply::Int(0))) {
                    let detail = format!(
                        "the value fails its checksum on the server (GET: {e}; CHECK answers 0)"
                    );
                    Err(corrupt(
                        format!("{}, record {}", self.location(key), show_key(record)),
                        &detail,
                    ))
                } else {
                    Err(super::client::map_error(&e))
                }
            }
            r => Err(match r.ok() {
                Err(e) => e,
                Ok(r) => Error::InvalidArgument(format!("GET: unexpected reply {r:?}")),
            }),
        }
    }

    /// Values of `records` of the blob `key` with one MGET, as [`ZdbClient::mget`]; when the
    /// server fails one of them, each is asked again with [`ZdbBackend::get_checked`], so a
    /// damaged record is [`Error::Corrupt`] like a damaged single value.
    fn mget_checked(&self, key: &str, records: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        match self.client.mget(&self.ns, records) {
            Err(Error::Io { .. }) => records
                .iter()
                .map(|r| Ok(self.get_checked(key, r)?.map(|b| b.to_vec())))
                .collect(),
            r => r,
        }
    }

    fn parse_user_manifest(v: &[u8]) -> Option<Manifest> {
        if v.len() != MANIFEST_LEN || v[0] != 1 {
            return None;
        }
        let total = u64::from_le_bytes(v[1..9].try_into().ok()?);
        let count = u32::from_le_bytes(v[9..13].try_into().ok()?);
        let generation = u64::from_le_bytes(v[13..21].try_into().ok()?);
        let digest: [u8; 32] = v[21..53].try_into().ok()?;
        Some((generation, count, total, digest))
    }

    fn delete_chunks(&self, key: &str, generation: u64, count: u32) {
        let reqs: Vec<Vec<Vec<u8>>> = (0..count)
            .map(|n| vec![b"DEL".to_vec(), Self::chunk_key(key, generation, n)])
            .collect();
        // Leftover chunks only waste space; a failure here must not fail the caller.
        if let Err(e) = self.client.pipeline(&self.ns, &reqs, true) {
            tracing::warn!(error = %e, "could not delete old chunks");
        }
    }

    fn user_get(&self, key: &str) -> Result<Bytes> {
        let Some(v) = self.user_value(key)? else {
            return Err(Error::NotFound(self.location(key)));
        };
        match v.first() {
            Some(0) if v.len() >= 5 => {
                let crc = u32::from_le_bytes([v[1], v[2], v[3], v[4]]);
                if crate::segment::value_crc(&v[5..]) != crc {
                    return Err(corrupt(self.location(key), "checksum mismatch"));
                }
                Ok(v.slice(5..))
            }
            Some(1) => {
                let Some((generation, count, total, digest)) = Self::parse_user_manifest(&v) else {
                    return Err(corrupt(self.location(key), "bad manifest"));
                };
                let mut out = BytesMut::with_capacity(total as usize);
                let keys: Vec<Vec<u8>> = (0..count)
                    .map(|n| Self::chunk_key(key, generation, n))
                    .collect();
                for group in keys.chunks(4) {
                    let refs: Vec<&[u8]> = group.iter().map(|k| k.as_slice()).collect();
                    for part in self.mget_checked(key, &refs)? {
                        let part =
                            part.ok_or_else(|| corrupt(self.location(key), "chunk missing"))?;
                        out.extend_from_slice(&part);
                    }
                }
                if out.len() as u64 != total || Sha256::digest(&out)[..] != digest {
                    return Err(corrupt(self.location(key), "checksum mismatch"));
                }
                Ok(out.freeze())
            }
            _ => Err(corrupt(self.location(key), "unknown blob header")),
        }
    }

    fn user_delete(&self, key: &str) -> Result<()> {
        let old = self.user_manifest(key)?;
        match self.client.delete(&self.ns, key.as_bytes()) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if let Some((generation, count, _, _)) = old {
            self.delete_chunks(key, generation, count);
        }
        Ok(())
    }

    /// Every key of the namespace, in scan order.
    fn all_keys(&self) -> Result<Vec<qsfs_core::KeyMeta>> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page =
                self.client
                    .scan(&self.ns, cursor.as_ref(), 0, qsfs_core::ScanOrder::Forward)?;
            if page.entries.is_empty() {
                return Ok(out);
            }
            out.extend(page.entries);
            match page.next {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    // ---- seq mode ----

    fn seq_load(&self) -> Result<()> {
        if self.seq_map.lock().is_some() {
            return Ok(());
        }
        let small: Vec<Vec<u8>> = self
            .all_keys()?
            .into_iter()
            .filter(|m| m.length <= MANIFEST_MAX)
            .map(|m| m.key)
            .collect();
        let mut map: HashMap<String, SeqObject> = HashMap::new();
        let mut stale = Vec::new();
        for group in small.chunks(256) {
            let refs: Vec<&[u8]> = group.iter().map(|k| k.as_slice()).collect();
            for (id, value) in group.iter().zip(self.mget_skipping_damaged(&refs)?) {
                let Some(v) = value else { continue };
                if let Some((key, obj)) = Self::parse_seq_manifest(id.clone(), &v) {
                    // Later manifests win: a crash between writing a new one and deleting
                    // the old one leaves both.
                    if let Some(old) = map.insert(key, obj) {
                        stale.push(old);
                    }
                }
            }
        }
        *self.seq_map.lock() = Some(map);
        for old in stale {
            self.seq_delete_records(&old);
        }
        Ok(())
    }

    /// [`ZdbBackend::mget_checked`] for the key map's rebuild: a damaged record is skipped
    /// (logged) rather than failing every read of the namespace. A damaged data record is
    /// reported by the read of its blob; a blob whose manifest is damaged is missing, which the
    /// pipeline repairs like a lost shard.
    fn mget_skipping_damaged(&self, records: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        match self.client.mget(&self.ns, records) {
            Err(Error::Io { .. }) => records
                .iter()
                .map(|r| match self.get_checked("(key map)", r) {
                    Ok(v) => Ok(v.map(|b| b.to_vec())),
                    Err(e @ Error::Corrupt { .. }) => {
                        tracing::warn!(error = %e, "damaged record skipped");
                        Ok(None)
                    }
                    Err(e) => Err(e),
                })
                .collect(),
            r => r,
        }
    }

    fn parse_seq_manifest(id: Vec<u8>, v: &[u8]) -> Option<(String, SeqObject)> {
        if v.first() != Some(&b'M') || v.len() < 2 {
            return None;
        }
        let kl = v[1] as usize;
        let key = std::str::from_utf8(v.get(2..2 + kl)?).ok()?.to_string();
        let mut p = 2 + kl;
        let total = u64::from_le_bytes(v.get(p..p + 8)?.try_into().ok()?);
        p += 8;
        let count = u32::from_le_bytes(v.get(p..p + 4)?.try_into().ok()?) as usize;
        p += 4;
        let mut data = Vec::with_capacity(count.min(8192));
        for _ in 0..count {
            data.push(v.get(p..p + 8)?.to_vec());
            p += 8;
        }
        let digest: [u8; 32] = v.get(p..p + 32)?.try_into().ok()?;
        (p + 32 == v.len()).then_some((
            key,
            SeqObject {
                manifest: id,
                data,
                total,
                digest,
            },
        ))
    }

    fn seq_delete_records(&self, obj: &SeqObject) {
        let mut reqs: Vec<Vec<Vec<u8>>> = obj
            .data
            .iter()
            .map(|id| vec![b"DEL".to_vec(), id.clone()])
            .collect();
        reqs.push(vec![b"DEL".to_vec(), obj.manifest.clone()]);
        if let Err(e) = self.client.pipeline(&self.ns, &reqs, true) {
            tracing::warn!(error = %e, "could not delete replaced records");
        }
    }

    fn seq_put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.seq_load()?;
        let mut ids = Vec::new();
        for chunk in data
            .chunks(MAX_VALUE - 1)
            .chain(data.is_empty().then_some(&[][..]))
        {
            let mut v = Vec::with_capacity(chunk.len() + 1);
            v.push(b'D');
            v.extend_from_slice(chunk);
            ids.push(self.client.set(&self.ns, None, &v)?.key().to_vec());
        }
        let digest: [u8; 32] = Sha256::digest(data).into();
        let mut m = Vec::with_capacity(48 + key.len() + 8 * ids.len());
        m.push(b'M');
        m.push(key.len() as u8);
        m.extend_from_slice(key.as_bytes());
        m.extend_from_slice(&(data.len() as u64).to_le_bytes());
        m.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in &ids {
            m.extend_from_slice(id);
        }
        m.extend_from_slice(&digest);
        if m.len() as u64 > MANIFEST_MAX {
            return Err(Error::TooLarge {
                what: "blob",
                len: data.len(),
                max: 8000 * MAX_VALUE,
            });
        }
        let manifest = self.client.set(&self.ns, None, &m)?.key().to_vec();
        let obj = SeqObject {
            manifest,
            data: ids,
            total: data.len() as u64,
            digest,
        };
        let old = self
            .seq_map
            .lock()
            .as_mut()
            .and_then(|map| map.insert(key.to_string(), obj));
        if let Some(old) = old {
            self.seq_delete_records(&old);
        }
        Ok(())
    }

    fn seq_object(&self, key: &str) -> Result<Option<SeqObject>> {
        self.seq_load()?;
        Ok(self
            .seq_map
            .lock()
            .as_ref()
            .and_then(|m| m.get(key).cloned()))
    }

    fn seq_get(&self, key: &str) -> Result<Bytes> {
        let obj = self
            .seq_object(key)?
            .ok_or_else(|| Error::NotFound(self.location(key)))?;
        let mut out = BytesMut::with_capacity(obj.total as usize);
        for group in obj.data.chunks(4) {
            let refs: Vec<&[u8]> = group.iter().map(|k| k.as_slice()).collect();
            for part in self.mget_checked(key, &refs)? {
                let part = part.ok_or_else(|| corrupt(self.location(key), "record missing"))?;
                if part.first() != Some(&b'D') {
                    return Err(corrupt(self.location(key), "not a data record"));
                }
                out.extend_from_slice(&part[1..]);
            }
        }
        if out.len() as u64 != obj.total || Sha256::digest(&out)[..] != obj.digest {
            return Err(corrupt(self.location(key), "checksum mismatch"));
        }
        Ok(out.freeze())
    }

    fn seq_delete(&self, key: &str) -> Result<()> {
        self.seq_load()?;
        let old = self.seq_map.lock().as_mut().and_then(|m| m.remove(key));
        if let Some(old) = old {
            self.seq_delete_records(&old);
        }
        Ok(())
    }
}

impl ZdbBackend {
    /// Confirms the node holds `data` under `key`: by [`ZdbBackend::user_confirm`] when
    /// `by_crc` (after its SET when `set`), else, or when the node gives no CRC, by reading
    /// the blob back.
    async fn confirm(&self, key: &str, data: &Bytes, by_crc: bool, set: bool) -> Result<()> {
        if by_crc {
            let (k, d) = (key.to_string(), data.clone());
            if self.blocking(move |b| b.user_confirm(&k, &d, set)).await? {
                return Ok(());
            }
        }
        let held = self.get(key).await?;
        qsfs_core::same_bytes(&self.name(), key, &held, data)
    }
}

/// The standard CRC-32C of the value [`ZdbBackend::user_set_value`] stores for `data`
/// (`0x00 | crc32c(data) | data`), without a second pass over `data`.
/// `crc` is `data`'s own crc32c.
fn stored_crc(data: &[u8], crc: u32) -> u32 {
    let mut header = [0u8; 5];
    header[1..].copy_from_slice(&crc.to_le_bytes());
    crc32c::crc32c_combine(crc32c::crc32c(&header), crc, data.len())
}

/// The standard CRC-32C of `n` zero bytes. The original 0-db's CRC of a value is the standard
/// one XOR this: its register starts at 0 instead of all ones and is not inverted at the end,
/// and CRC is linear in the starting register.
fn zeros_crc(n: usize) -> u32 {
    // Doubling: the CRC of 2^i zero bytes combined into those of n's set bits.
    let (mut acc, mut pow, mut pow_len, mut rest) = (0u32, crc32c::crc32c(&[0]), 1usize, n);
    while rest > 0 {
        if rest & 1 == 1 {
            acc = crc32c::crc32c_combine(acc, pow, pow_len);
        }
        pow = crc32c::crc32c_combine(pow, pow, pow_len);
        pow_len *= 2;
        rest >>= 1;
    }
    acc
}

#[async_trait]
impl Backend for ZdbBackend {
    fn name(&self) -> String {
        format!("zdb://{}/{}", self.client.endpoint(), self.ns)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        check_object_key(key)?;
        let key = key.to_string();
        if self.mode == Mode::Seq {
            let _guard = self.seq_write.lock().await;
            return self.blocking(move |b| b.seq_put(&key, &data)).await;
        }
        self.blocking(move |b| b.user_put(&key, &data)).await
    }

    /// One round trip instead of two for a blob stored as one value: the LENGTH that looks for
    /// an old manifest to clean up is skipped, since a new key has none. A chunked blob (over
    /// 8 MiB) and seq mode take the path of [`Backend::put`], so a manifest that the key may
    /// hold after all is still read and its chunks deleted.
    async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        if self.mode == Mode::Seq || !Self::fits_one_value(&data) {
            return self.put(key, data).await;
        }
        check_object_key(key)?;
        let key = key.to_string();
        self.blocking(move |b| b.user_set_value(&key, &data)).await
    }

    /// A blob stored as one value is confirmed by the node without sending it back: `CHECK`
    /// (the node re-reads its copy and checks the CRC it computed on receipt), `LENGTH` and
    /// `KEYCUR` (whose cursor carries that CRC) in one round trip, the CRC compared with the
    /// one of the value `expected` makes. Chunked blobs, seq mode and a `qsfs serve` too old
    /// to put the CRC in its cursors are read back.
    async fn verify(&self, key: &str, expected: &Bytes) -> Result<()> {
        check_object_key(key)?;
        let confirm = self.mode == Mode::User && Self::fits_one_value(expected);
        self.confirm(key, expected, confirm, false).await
    }

    /// A new blob stored as one value: the SET and its confirmation go in one round trip.
    async fn put_verified(&self, key: &str, data: Bytes, new: bool) -> Result<()> {
        if new && self.mode == Mode::User && Self::fits_one_value(&data) {
            check_object_key(key)?;
            return self.confirm(key, &data, true, true).await;
        }
        match new {
            true => self.put_new(key, data.clone()).await?,
            false => self.put(key, data.clone()).await?,
        }
        self.verify(key, &data).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        check_object_key(key)?;
        let key = key.to_string();
        match self.mode {
            Mode::Seq => self.blocking(move |b| b.seq_get(&key)).await,
            _ => self.blocking(move |b| b.user_get(&key)).await,
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let all = self.get(key).await?;
        Ok(qsfs_core::slice_range(&all, range))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_object_key(key)?;
        let key = key.to_string();
        if self.mode == Mode::Seq {
            let _guard = self.seq_write.lock().await;
            return self.blocking(move |b| b.seq_delete(&key)).await;
        }
        self.blocking(move |b| b.user_delete(&key)).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        check_object_key(key)?;
        let key = key.to_string();
        match self.mode {
            Mode::Seq => {
                self.blocking(move |b| Ok(b.seq_object(&key)?.is_some()))
                    .await
            }
            _ => {
                self.blocking(move |b| b.client.exists(&b.ns, key.as_bytes()))
                    .await
            }
        }
    }

    /// A blob stored as one value: `LENGTH` less its 5-byte header, one round trip; a chunked
    /// one: the total its manifest records. Seq mode reads the blob.
    async fn size(&self, key: &str) -> Result<Option<u64>> {
        check_object_key(key)?;
        if self.mode == Mode::Seq {
            return match self.get(key).await {
                Ok(b) => Ok(Some(b.len() as u64)),
                Err(Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            };
        }
        let key = key.to_string();
        self.blocking(move |b| b.user_size(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.to_string();
        self.blocking(move |b| {
            let mut keys: Vec<String> = match b.mode {
                Mode::Seq => {
                    b.seq_load()?;
                    b.seq_map
                        .lock()
                        .as_ref()
                        .map(|m| m.keys().cloned().collect())
                        .unwrap_or_default()
                }
                _ => b
                    .all_keys()?
                    .into_iter()
                    .filter_map(|m| String::from_utf8(m.key).ok())
                    .filter(|k| check_object_key(k).is_ok())
                    .collect(),
            };
            keys.retain(|k| k.starts_with(&prefix));
            keys.sort();
            keys.dedup();
            Ok(keys)
        })
        .await
    }

    async fn health(&self) -> Health {
        let start = Instant::now();
        let r = self
            .blocking(|b| {
                let r = b.client.call(&b.ns, vec![b"PING".to_vec()], true)?;
                if r != Reply::Status("PONG".into()) {
                    return Err(Error::Unavailable(format!("PING answered {r:?}")));
                }
                let info = b.client.call(
                    &b.ns,
                    vec![b"NSINFO".to_vec(), b.ns.as_bytes().to_vec()],
                    true,
                )?;
                Ok(info.ok().ok())
            })
            .await;
        match r {
            Ok(info) => {
                let mut h = Health::up(start.elapsed());
                if let Some(Reply::Bulk(text)) = info {
                    let text = String::from_utf8_lossy(&text);
                    if let Some(space) = parse_nsinfo_space(&text) {
                        h.used_bytes = Some(space.used);
                        h.free_bytes = Some(space.disk_free);
                    }
                    if parse_nsinfo(&text).locked {
                        h.status = HealthStatus::Degraded;
                        h.detail = "namespace locked".into();
                    }
                }
                h
            }
            Err(e) => Health::down(e.detail()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The original's CRC (spec §11.3): the `crc32c` crate's `!crc32c_append(!0, data)`.
    fn zdb_crc(data: &[u8]) -> u32 {
        !crc32c::crc32c_append(!0, data)
    }

    #[test]
    fn the_originals_crc_check_value_comes_out_of_the_standard_one() {
        let data = b"123456789";
        assert_eq!(crc32c::crc32c(data), 0xe306_9283);
        assert_eq!(crc32c::crc32c(data) ^ zeros_crc(data.len()), 0x58e3_fa20);
        assert_eq!(zeros_crc(0), 0);
    }

    proptest! {
        #[test]
        fn crcs_of_a_stored_value_match_a_plain_pass(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let mut stored = vec![0u8];
            stored.extend_from_slice(&crate::segment::value_crc(&data).to_le_bytes());
            stored.extend_from_slice(&data);
            let crc = crate::segment::value_crc(&data);
            prop_assert_eq!(stored_crc(&data, crc), crc32c::crc32c(&stored));
            prop_assert_eq!(stored_crc(&data, crc) ^ zeros_crc(stored.len()), zdb_crc(&stored));
        }
    }
}
