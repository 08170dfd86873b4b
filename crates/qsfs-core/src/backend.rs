//! The `Backend` seam: an async blob store.

use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::time::Duration;

use crate::error::{Error, Result};

/// How a backend is doing, as told by [`Backend::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the backend answered.
    pub status: HealthStatus,
    /// How long the probe took.
    pub latency: Duration,
    /// Bytes used, if the backend knows.
    pub used_bytes: Option<u64>,
    /// Bytes still free, if the backend knows.
    pub free_bytes: Option<u64>,
    /// A short human explanation when not `Up`.
    pub detail: String,
}

impl Health {
    /// A healthy answer with the given latency.
    pub fn up(latency: Duration) -> Self {
        Health {
            status: HealthStatus::Up,
            latency,
            used_bytes: None,
            free_bytes: None,
            detail: String::new(),
        }
    }

    /// A down answer with a reason.
    pub fn down(detail: impl Into<String>) -> Self {
        Health {
            status: HealthStatus::Down,
            latency: Duration::ZERO,
            used_bytes: None,
            free_bytes: None,
            detail: detail.into(),
        }
    }
}

/// Coarse health of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// Answers normally.
    Up,
    /// Answers, but slowly, nearly full, or read-only.
    Degraded,
    /// Does not answer.
    Down,
}

/// An async blob store: the leaves (local directory, 0-db node, memory, S3) and the backup
/// pipeline, which is itself a `Backend` over N others.
///
/// Keys are non-empty UTF-8 strings of at most 255 bytes made of `[A-Za-z0-9._/-]`, no `..`
/// component and no leading `/` ([`check_object_key`]); implementations map them to their own
/// naming. A `put` is atomic: a concurrent or later `get` sees the whole old blob or the whole
/// new one, never a mixture or a prefix. Transient failures (unreachable, timeout) are
/// [`Error::Unavailable`] / [`Error::Timeout`] so callers can tell them from a missing blob
/// ([`Error::NotFound`]).
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A short name for logs and status tables (e.g. `local:/srv/b1`, `zdb://10.0.0.3:9900/ns`).
    fn name(&self) -> String;

    /// Whether `name`, as a backup record wrote it, means this backend: its own name, or an
    /// older spelling of it (a `local:` directory named by the path it was reached by). Records
    /// find their shards' backends by name, so without this a renamed backend's shards are
    /// unreachable.
    fn answers_to(&self, name: &str) -> bool {
        name == self.name()
    }

    /// Stores `data` under `key`, replacing any previous blob atomically.
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;

    /// [`Backend::put`] for a key that was never stored before, such as one built from a fresh
    /// random id: an implementation may skip what only replacing a blob needs (the 0-db adapter
    /// saves the round trip that looks for a chunked blob's manifest to clean up). Storing over
    /// an existing key this way is still atomic and still correct for readers, but parts of the
    /// old blob may be left behind as unreferenced space. The default is [`Backend::put`].
    async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        self.put(key, data).await
    }

    /// [`Backend::put`] (or [`Backend::put_new`] when `new`) then [`Backend::verify`] of the
    /// same bytes; the 0-db adapter does both in one round trip.
    async fn put_verified(&self, key: &str, data: Bytes, new: bool) -> Result<()> {
        match new {
            true => self.put_new(key, data.clone()).await?,
            false => self.put(key, data.clone()).await?,
        }
        self.verify(key, &data).await
    }

    /// The whole blob; [`Error::NotFound`] if absent.
    async fn get(&self, key: &str) -> Result<Bytes>;

    /// Confirms that the backend holds exactly `expected` under `key`, as read from its
    /// storage now: [`Error::Corrupt`] if it holds other bytes, [`Error::NotFound`] if nothing.
    /// The default reads the blob back and compares. A backend that can prove it from a
    /// checksum of the stored bytes overrides this so the blob does not travel back (the 0-db
    /// adapter: the node re-reads the value and checks its CRC, and the CRC is compared with
    /// one computed from `expected`).
    async fn verify(&self, key: &str, expected: &Bytes) -> Result<()> {
        let held = self.get(key).await?;
        same_bytes(&self.name(), key, &held, expected)
    }

    /// Bytes `range` of the blob, clipped to its end (a range past the end gives fewer bytes or
    /// none); [`Error::NotFound`] if absent. The default fetches the whole blob.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let all = self.get(key).await?;
        Ok(slice_range(&all, range))
    }

    /// Removes the blob. Removing an absent blob is not an error (idempotent).
    async fn delete(&self, key: &str) -> Result<()>;

    /// True if the blob exists.
    async fn exists(&self, key: &str) -> Result<bool>;

    /// The blob's length in bytes, `None` if it is absent: what a quick check compares with
    /// the length it expects, so a truncated blob is found without reading it. The default
    /// reads the blob; backends override it with a lookup.
    async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key).await {
            Ok(b) => Ok(Some(b.len() as u64)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every key that starts with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;

    /// Probes the backend. Never fails: an unreachable backend is [`HealthStatus::Down`].
    async fn health(&self) -> Health;
}

/// What [`Backend::verify`] answers for a blob read back: `Ok` if `held` is `expected`, else
/// [`Error::Corrupt`] naming `backend` and `key`.
pub fn same_bytes(backend: &str, key: &str, held: &[u8], expected: &[u8]) -> Result<()> {
    if held == expected {
        return Ok(());
    }
    Err(Error::corrupt(
        format!("{backend} key {key}"),
        format!(
            "holds {} bytes that differ from the {} expected",
            held.len(),
            expected.len()
        ),
    ))
}

/// The part of `data` that `range` covers, clipped to its end.
pub fn slice_range(data: &Bytes, range: Range<u64>) -> Bytes {
    let len = data.len() as u64;
    let start = range.start.min(len) as usize;
    let end = range.end.min(len).max(range.start.min(len)) as usize;
    data.slice(start..end)
}

/// Checks an object key against the rules of [`Backend`].
pub fn check_object_key(key: &str) -> Result<()> {
    let ok_chars = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
    if key.is_empty() || key.len() > 255 || !ok_chars || key.starts_with('/') {
        return Err(Error::InvalidArgument(format!("bad object key {key:?}")));
    }
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::InvalidArgument(format!("bad object key {key:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys() {
        assert!(check_object_key("seg/default/00000001").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "sp ace", "a/./b", "x/"] {
            assert!(check_object_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_clip() {
        let b = Bytes::from_static(b"0123456789");
        assert_eq!(slice_range(&b, 2..5), Bytes::from_static(b"234"));
        assert_eq!(slice_range(&b, 8..50), Bytes::from_static(b"89"));
        assert_eq!(slice_range(&b, 20..30), Bytes::new());
        #[allow(clippy::reversed_empty_ranges)] // a reversed range is what is being tested
        let reversed = 5..2;
        assert_eq!(slice_range(&b, reversed), Bytes::new());
    }
}
