//! A backend over any [`::object_store::ObjectStore`]: S3-compatible object storage (cargo
//! feature `s3`, backend string `s3://bucket[/prefix]`), and the crate's in-memory and local
//! filesystem stores, which the tests use to hold this adapter to the Backend contract.
//!
//! The mapping is direct: a key is an object path (keys are already valid object paths), a
//! range read is one ranged GET, a put is one PUT (atomic on every object store: readers see
//! the old object or the new one), a listing is a prefix listing. Timeouts and retries of the
//! remote stores are object_store's own client settings ([`S3Spec`] sets them from the backup
//! config's timeouts), so a slow or dead endpoint ends as [`Error::Timeout`] /
//! [`Error::Unavailable`] instead of a hang.
//!
//! Object stores list by whole path segments (`a/b` is not a prefix of `a/bc`), while
//! [`Backend::list`] takes any string prefix: a listing asks for the prefix's directory and
//! keeps the keys that start with the whole prefix.
//!
//! A put is a single PUT, so a blob is limited to what one PUT accepts (5 GiB on AWS); the
//! pipeline writes shards of a few MiB.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::object_store::path::Path as ObjectPath;
use ::object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use qsfs_core::{check_object_key, Backend, Error, Health, Result};

#[cfg(feature = "s3")]
use crate::config::S3Spec;

/// The object [`ObjectStoreBackend::health`] looks up: its absence is the normal answer, and
/// any answer at all (found or not found) proves the store is reachable and the credentials
/// are accepted.
const PROBE_KEY: &str = "qsfs-health-probe";

/// A [`Backend`] over an [`ObjectStore`].
#[derive(Debug, Clone)]
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    name: String,
    health_timeout: Duration,
}

impl ObjectStoreBackend {
    /// A backend named `name` (as recorded in the backup metadata, so it must stay the same
    /// across runs) over `store`. Wrap the store in [`::object_store::prefix::PrefixStore`] to
    /// confine it to a prefix.
    pub fn new(name: impl Into<String>, store: Arc<dyn ObjectStore>) -> Self {
        ObjectStoreBackend {
            store,
            name: name.into(),
            health_timeout: Duration::from_secs(3),
        }
    }

    /// Sets how long [`Backend::health`] waits before reporting the store down.
    pub fn with_health_timeout(mut self, timeout: Duration) -> Self {
        self.health_timeout = timeout;
        self
    }

    /// An S3-compatible bucket. Endpoint, region and credentials come from the standard AWS
    /// environment variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`, ...), overridden by the
    /// values `spec` carries from the backup config. One request is limited to `op_timeout`
    /// and retried by object_store's client (with back-off) for at most `op_timeout` in all.
    #[cfg(feature = "s3")]
    pub fn s3(spec: &S3Spec, op_timeout: Duration, health_timeout: Duration) -> Result<Self> {
        use ::object_store::aws::AmazonS3Builder;
        use ::object_store::{BackoffConfig, ClientOptions, RetryConfig};

        let mut b = AmazonS3Builder::from_env().with_bucket_name(&spec.bucket);
        if let Some(v) = &spec.endpoint {
            b = b.with_endpoint(v);
        }
        if let Some(v) = &spec.region {
            b = b.with_region(v);
        }
        if let Some(v) = &spec.access_key_id {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = &spec.secret_access_key {
            b = b.with_secret_access_key(v);
        }
        if let Some(v) = &spec.session_token {
            b = b.with_token(v);
        }
        if let Some(v) = spec.allow_http {
            b = b.with_allow_http(v);
        }
        if let Some(v) = spec.virtual_hosted_style {
            b = b.with_virtual_hosted_style_request(v);
        }
        let mut client = ClientOptions::new()
            .with_timeout(op_timeout)
            .with_connect_timeout(op_timeout.min(Duration::from_secs(5)));
        if let Some(v) = spec.allow_http {
            client = client.with_allow_http(v);
        }
        b = b.with_client_options(client).with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: op_timeout,
        });
        // Builder errors name the missing or bad setting, never a secret's value.
        let s3 = b.build().map_err(|e| {
            Error::InvalidArgument(format!("backend {spec}: {}", redacted_builder_error(&e)))
        })?;
        let store: Arc<dyn ObjectStore> = match &spec.prefix {
            Some(p) => Arc::new(::object_store::prefix::PrefixStore::new(
                s3,
                ObjectPath::from(p.as_str()),
            )),
            None => Arc::new(s3),
        };
        Ok(ObjectStoreBackend::new(spec.to_string(), store).with_health_timeout(health_timeout))
    }

    fn path(key: &str) -> Result<ObjectPath> {
        check_object_key(key)?;
        ObjectPath::parse(key).map_err(|e| Error::InvalidArgument(format!("key {key:?}: {e}")))
    }

    fn err(&self, what: &str, key: &str, e: ::object_store::Error) -> Error {
        map_error(&format!("{}: {what} {key}", self.name), e)
    }

    /// Whether `key` exists, as one HEAD request.
    async fn head(&self, key: &str, path: &ObjectPath) -> Result<Option<u64>> {
        match self.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(::object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("head", key, e)),
        }
    }
}

#[cfg(feature = "s3")]
fn redacted_builder_error(e: &::object_store::Error) -> String {
    // The builder reports which setting is missing or malformed; its messages carry URLs and
    // names, not credentials, but keep only the first line to stay short.
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Maps an object_store error to the qsfs error a caller can act on: a missing object is
/// [`Error::NotFound`], refused credentials [`Error::PermissionDenied`], and a transport
/// failure (the client already retried it) [`Error::Unavailable`] or [`Error::Timeout`].
fn map_error(context: &str, e: ::object_store::Error) -> Error {
    use ::object_store::Error as E;
    match e {
        E::NotFound { .. } => Error::NotFound(context.to_string()),
        E::AlreadyExists { .. } => Error::AlreadyExists(context.to_string()),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            Error::PermissionDenied(format!("{context}: {e}"))
        }
        E::InvalidPath { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            Error::InvalidArgument(format!("{context}: {e}"))
        }
        E::NotSupported { .. } | E::NotImplemented { .. } => {
            Error::Unsupported(format!("{context}: {e}"))
        }
        other => {
            // A local store's disk errors keep their meaning; everything else from a remote
            // store is a transport or server failure that may pass.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&other);
            let mut io_kind = None;
            while let Some(s) = source {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    io_kind = Some(io.kind());
                    break;
                }
                source = s.source();
            }
            let text = format!("{context}: {other}");
            use std::io::ErrorKind as K;
            match io_kind {
                Some(K::NotFound) => Error::NotFound(context.to_string()),
                Some(K::StorageFull) => Error::NoSpace(text),
                Some(K::TimedOut) => Error::Timeout(text),
                Some(K::PermissionDenied) => Error::PermissionDenied(text),
                // The network errors under a remote store's client: worth another try later.
                Some(
                    K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::BrokenPipe
                    | K::HostUnreachable
                    | K::NetworkUnreachable
                    | K::UnexpectedEof
                    | K::Interrupted,
                )
                | None => {
                    // The client's own limit ("operation timed out"); its retry summary names
                    // `retry_timeout` whatever the cause, so that word alone says nothing.
                    if text.contains("timed out") {
                        Error::Timeout(text)
                    } else {
                        Error::Unavailable(text)
                    }
                }
                // A local store's disk error (a name too long, a read-only disk, ...).
                Some(kind) => Error::Io {
                    context: context.to_string(),
                    source: std::io::Error::new(kind, text),
                },
            }
        }
    }
}

#[async_trait]
impl Backend for ObjectStoreBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = Self::path(key)?;
        self.store
            .put_opts(&path, PutPayload::from(data), PutOptions::default())
            .await
            .map_err(|e| self.err("put", key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = Self::path(key)?;
        let res = self
            .store
            .get_opts(&path, GetOptions::default())
            .await
            .map_err(|e| self.err("get", key, e))?;
        res.bytes().await.map_err(|e| self.err("read", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = Self::path(key)?;
        if range.start >= range.end {
            // No bytes wanted, but an absent blob must still be NotFound.
            return match self.head(key, &path).await? {
                Some(_) => Ok(Bytes::new()),
                None => Err(Error::NotFound(format!("{}: {key}", self.name))),
            };
        }
        let opts = GetOptions::new().with_range(Some(GetRange::Bounded(range.clone())));
        let fetched = match self.store.get_opts(&path, opts).await {
            Ok(res) => res.bytes().await,
            Err(e) => Err(e),
        };
        match fetched {
            Ok(b) => Ok(b),
            Err(e @ ::object_store::Error::NotFound { .. }) => Err(self.err("get", key, e)),
            Err(e) => {
                // A range that starts at or past the end is refused by the stores (HTTP 416,
                // or InvalidGetRange locally); the contract clips it to nothing. Only this
                // failure path pays the extra HEAD.
                match self.head(key, &path).await {
                    Ok(Some(len)) if range.start >= len => Ok(Bytes::new()),
                    Ok(None) => Err(Error::NotFound(format!("{}: {key}", self.name))),
                    _ => Err(self.err("get range of", key, e)),
                }
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = Self::path(key)?;
        match self.store.delete(&path).await {
            // S3 answers a delete of an absent object with success; the local store does not.
            Ok(()) | Err(::object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        let path = Self::path(key)?;
        Ok(self.head(key, &path).await?.is_some())
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = Self::path(key)?;
        self.head(key, &path).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = match prefix.rsplit_once('/') {
            Some((dir, _)) => Some(
                ObjectPath::parse(dir)
                    .map_err(|e| Error::InvalidArgument(format!("prefix {prefix:?}: {e}")))?,
            ),
            None => None,
        };
        let metas: Vec<_> = self
            .store
            .list(dir.as_ref())
            .try_collect()
            .await
            .map_err(|e| self.err("list", prefix, e))?;
        let mut keys: Vec<String> = metas
            .into_iter()
            .map(|m| m.location.to_string())
            // Objects other tools put in the bucket under names qsfs cannot use are skipped.
            .filter(|k| k.starts_with(prefix) && check_object_key(k).is_ok())
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn health(&self) -> Health {
        let start = Instant::now();
        let probe = ObjectPath::from(PROBE_KEY);
        match tokio::time::timeout(self.health_timeout, self.store.head(&probe)).await {
            Ok(Ok(_)) | Ok(Err(::object_store::Error::NotFound { .. })) => {
                Health::up(start.elapsed())
            }
            Ok(Err(e)) => Health::down(map_error(&self.name, e).to_string()),
            Err(_) => Health::down(format!(
                "{}: no answer within {:?}",
                self.name, self.health_timeout
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::object_store::local::LocalFileSystem;
    use ::object_store::memory::InMemory;
    use ::object_store::prefix::PrefixStore;

    #[tokio::test]
    async fn conformance_in_memory() {
        let b = ObjectStoreBackend::new("mem", Arc::new(InMemory::new()));
        qsfs_core::testing::backend::run(&b).await;
    }

    #[tokio::test]
    async fn conformance_in_memory_under_a_prefix() {
        let inner = Arc::new(InMemory::new());
        inner
            .put(
                &ObjectPath::from("other/conformance/x"),
                Bytes::from_static(b"o").into(),
            )
            .await
            .expect("put outside");
        let b = ObjectStoreBackend::new("mem/p", Arc::new(PrefixStore::new(inner.clone(), "p/q")));
        qsfs_core::testing::backend::run(&b).await;
        b.put("k", Bytes::from_static(b"v")).await.expect("put");
        // The key lives under the prefix, and what is outside it is neither seen nor touched.
        assert!(inner.head(&ObjectPath::from("p/q/k")).await.is_ok());
        assert_eq!(b.list("").await.expect("list"), vec!["k".to_string()]);
        assert!(inner
            .head(&ObjectPath::from("other/conformance/x"))
            .await
            .is_ok());
    }

    /// LocalFileSystem stages a put in `NAME#N` next to its target, so a 254- or 255-byte last
    /// segment (which the Backend contract allows) does not fit a file name, and the
    /// conformance suite runs with 253-byte keys at most; `LocalDir` is the local backend qsfs
    /// configures.
    #[tokio::test]
    async fn local_filesystem_keeps_the_contract_but_for_maximal_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = LocalFileSystem::new_with_prefix(dir.path())
            .expect("local store")
            .with_automatic_cleanup(true);
        let b = ObjectStoreBackend::new("objfs", Arc::new(fs));
        qsfs_core::testing::backend::run_with_longest_key(&b, 253).await;
        // The limit shows as a plain, non-retryable error, not as an unreachable backend.
        let e = b
            .put(&"k".repeat(255), Bytes::from_static(b"m"))
            .await
            .expect_err("255-byte name plus the staging suffix");
        assert!(!e.is_retryable(), "{e}");
    }

    #[tokio::test]
    async fn list_takes_any_string_prefix() {
        let b = ObjectStoreBackend::new("mem", Arc::new(InMemory::new()));
        for k in ["s/ab", "s/abc/d", "s/b", "s/a", "t"] {
            b.put(k, Bytes::from_static(b"x")).await.expect("put");
        }
        assert_eq!(b.list("s/ab").await.expect("list"), vec!["s/ab", "s/abc/d"]);
        assert_eq!(
            b.list("s/a").await.expect("list"),
            vec!["s/a", "s/ab", "s/abc/d"]
        );
        assert_eq!(b.list("s").await.expect("list").len(), 4);
        assert_eq!(b.list("").await.expect("list").len(), 5);
    }

    #[tokio::test]
    async fn a_missing_directory_maps_to_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = LocalFileSystem::new_with_prefix(dir.path()).expect("local store");
        let b = ObjectStoreBackend::new("objfs", Arc::new(fs));
        b.put("a/b", Bytes::from_static(b"x")).await.expect("put");
        std::fs::remove_dir_all(dir.path().join("a")).expect("rm");
        assert!(matches!(b.get("a/b").await, Err(Error::NotFound(_))));
        assert!(matches!(
            b.get_range("a/b", 0..1).await,
            Err(Error::NotFound(_))
        ));
        assert!(!b.exists("a/b").await.expect("exists"));
    }
}
