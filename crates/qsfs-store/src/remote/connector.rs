//! A [`ZdbBackend`] that connects on first use, so a backup repository can be opened while some
//! of its 0-db nodes are down: that is exactly when erasure coding is needed.
//!
//! [`ZdbBackend::new`] talks to the server (PING, NSINFO) and blocks; here it runs on tokio's
//! blocking pool the first time the backend is used, and is tried again on the next use if the
//! node did not answer. A failed attempt is remembered for [`RETRY_AFTER`], so the many
//! concurrent requests of a pipeline fail at once instead of each waiting out the client's
//! retries: blocking threads are few and are needed by the nodes that do answer.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use qsfs_core::{Backend, Error, Health, NamespaceName, Result};
use tokio::sync::OnceCell;

use super::backend::ZdbBackend;
use super::client::{ZdbClient, ZdbConfig};

/// How long a failed connection attempt is remembered before the next one is made.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Connection attempts after a failure, per request. The client's default (4, about 0.75 s of
/// back-off) is made for a single user; a backup pipeline reads around a dead node instead.
const RETRIES: u32 = 2;

/// A 0-db namespace as a backup [`Backend`], connected lazily.
pub struct LazyZdbBackend {
    name: String,
    config: ZdbConfig,
    inner: OnceCell<Arc<ZdbBackend>>,
    /// When and why the last connection attempt failed.
    failed: Mutex<Option<(Instant, String)>>,
}

impl std::fmt::Debug for LazyZdbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyZdbBackend")
            .field("name", &self.name)
            .field("connected", &self.inner.initialized())
            .finish()
    }
}

impl LazyZdbBackend {
    /// A backend on `namespace` of the server at `address` (`host:port`), with its password.
    /// Nothing is sent until the backend is first used; only the arguments are checked here.
    pub fn new(address: &str, namespace: &str, password: Option<String>) -> Result<Self> {
        NamespaceName::new(namespace)?;
        if address.is_empty() || !address.contains(':') {
            return Err(Error::InvalidArgument(format!(
                "0-db address {address:?}: expected host:port"
            )));
        }
        let mut config = ZdbConfig::new(address);
        config.namespace = namespace.to_string();
        config.password = password;
        config.retries = RETRIES;
        Ok(Self::with_config(config))
    }

    /// A backend with a full client configuration (time-outs, retries, unix socket, ...).
    pub fn with_config(config: ZdbConfig) -> Self {
        let endpoint = match &config.socket {
            Some(p) => format!("unix:{}", p.display()),
            None => config.address.clone(),
        };
        LazyZdbBackend {
            // The same name ZdbBackend gives itself, known before connecting.
            name: format!("zdb://{endpoint}/{}", config.namespace),
            config,
            inner: OnceCell::new(),
            failed: Mutex::new(None),
        }
    }

    /// The connected backend, connecting now if this is the first use.
    pub async fn backend(&self) -> Result<&Arc<ZdbBackend>> {
        self.inner
            .get_or_try_init(|| async {
                if let Some((at, why)) = self.failed.lock().as_ref() {
                    if at.elapsed() < RETRY_AFTER {
                        return Err(Error::Unavailable(why.clone()));
                    }
                }
                let config = self.config.clone();
                let r = tokio::task::spawn_blocking(move || {
                    // A node that refuses or drops the first connection is down for now: the
                    // pipeline reads around it at once instead of after the client's back-off.
                    ZdbBackend::new(Arc::new(ZdbClient::connect_fail_fast(config)?))
                })
                .await
                .map_err(|e| Error::Unavailable(format!("blocking task: {e}")))
                .and_then(|r| r);
                match r {
                    Ok(b) => {
                        *self.failed.lock() = None;
                        Ok(Arc::new(b))
                    }
                    Err(e) => {
                        *self.failed.lock() = Some((Instant::now(), e.to_string()));
                        Err(e)
                    }
                }
            })
            .await
    }
}

#[async_trait]
impl Backend for LazyZdbBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.backend().await?.put(key, data).await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        self.backend().await?.put_new(key, data).await
    }

    async fn put_verified(&self, key: &str, data: Bytes, new: bool) -> Result<()> {
        self.backend().await?.put_verified(key, data, new).await
    }

    async fn verify(&self, key: &str, expected: &Bytes) -> Result<()> {
        self.backend().await?.verify(key, expected).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        self.backend().await?.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.backend().await?.get_range(key, range).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.backend().await?.delete(key).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.backend().await?.exists(key).await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        self.backend().await?.size(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.backend().await?.list(prefix).await
    }

    async fn health(&self) -> Health {
        match self.backend().await {
            Ok(b) => b.health().await,
            Err(e) => Health::down(e.detail()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_refused_without_connecting() {
        assert!(LazyZdbBackend::new("127.0.0.1:9900", "", None).is_err());
        assert!(LazyZdbBackend::new("nohost", "default", None).is_err());
        let b = LazyZdbBackend::new("127.0.0.1:9900", "data", Some("pw".into())).unwrap();
        assert_eq!(b.name(), "zdb://127.0.0.1:9900/data");
        assert!(!format!("{b:?}").contains("pw"));
    }

    #[tokio::test]
    async fn an_unreachable_node_is_down_not_fatal() {
        // A port nobody listens on: bind, note it, release.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = ZdbConfig::new(format!("127.0.0.1:{port}"));
        config.retries = 0;
        let b = LazyZdbBackend::with_config(config);
        assert!(b.get("x").await.is_err());
        let h = b.health().await;
        assert_eq!(h.status, qsfs_core::HealthStatus::Down);
        assert!(!h.detail.is_empty());
        // Within RETRY_AFTER the failure is answered from memory, without a new attempt.
        let t = Instant::now();
        assert!(b.exists("x").await.is_err());
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_first_connection_that_fails_is_not_retried() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // A node that accepts and hangs up at once, counting the connections.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        let mut config = ZdbConfig::new(addr.to_string());
        config.retries = 2;
        config.backoff = Duration::from_millis(1);
        // The client sees the hang-up only after the accept was counted.
        assert!(ZdbClient::connect(config.clone()).is_err());
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert!(ZdbClient::connect_fail_fast(config.clone()).is_err());
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        let b = LazyZdbBackend::with_config(config);
        assert!(b.get("x").await.is_err());
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }
}
