//! [`TimeoutStore`]: a Store decorator that bounds how long any call may take.
//!
//! A remote store that is down or stalled must not freeze every process touching the mount.
//! Each call runs on a small pool of worker threads and the caller waits at most the configured
//! time; past it the answer is [`qsfs_core::Error::Timeout`], which the filesystem turns into
//! `EIO`. A stalled call keeps its worker busy until the store answers; calls queued behind it
//! time out the same way, and the pool recovers by itself once the store is back.

use parking_lot::Mutex;
use qsfs_core::{
    Credential, Cursor, Entry, Error, KeyMeta, NamespaceInfo, NamespaceProperty, Result, ScanOrder,
    ScanPage, SetOutcome, Store, StoreSpace, Timestamp, Version, VersionId,
};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

type Job = Box<dyn FnOnce(&dyn Store) + Send>;

/// A Store whose calls give up after a timeout.
pub struct TimeoutStore {
    inner: Arc<dyn Store>,
    timeout: Duration,
    jobs: Mutex<Sender<Job>>,
}

impl std::fmt::Debug for TimeoutStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutStore")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TimeoutStore {
    /// Wraps `inner`; every call waits at most `timeout`, served by `workers` threads.
    pub fn new(inner: Arc<dyn Store>, timeout: Duration, workers: usize) -> Self {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            let store = inner.clone();
            let _ = std::thread::Builder::new()
                .name(format!("qsfs-store-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock().recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job(&*store);
                });
        }
        TimeoutStore {
            inner,
            timeout,
            jobs: Mutex::new(tx),
        }
    }

    fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&dyn Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = sync_channel(1);
        let job: Job = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        self.jobs
            .lock()
            .send(job)
            .map_err(|_| Error::Unavailable(format!("store {what}: no worker left")))?;
        match rx.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!(
                "store {what} took longer than {:?}",
                self.timeout
            ))),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

impl Store for TimeoutStore {
    fn set_at(
        &self,
        ns: &str,
        key: Option<&[u8]>,
        value: &[u8],
        t: Option<Timestamp>,
    ) -> Result<SetOutcome> {
        let (ns, key, value) = (ns.to_string(), key.map(<[u8]>::to_vec), value.to_vec());
        self.call("set", move |s| s.set_at(&ns, key.as_deref(), &value, t))
    }
    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Entry>> {
        let (ns, key) = (ns.to_string(), key.to_vec());
        self.call("get", move |s| s.get(&ns, &key))
    }
    fn get_may_wait(&self, ns: &str, key: &[u8]) -> bool {
        // A probe, not a read: it answers from memory, so it needs no time limit.
        self.inner.get_may_wait(ns, key)
    }
    fn delete_at(&self, ns: &str, key: &[u8], t: Option<Timestamp>) -> Result<()> {
        let (ns, key) = (ns.to_string(), key.to_vec());
        self.call("delete", move |s| s.delete_at(&ns, &key, t))
    }
    fn exists(&self, ns: &str, key: &[u8]) -> Result<bool> {
        let (ns, key) = (ns.to_string(), key.to_vec());
        self.call("exists", move |s| s.exists(&ns, &key))
    }
    fn meta(&self, ns: &str, key: &[u8]) -> Result<Option<KeyMeta>> {
        let (ns, key) = (ns.to_string(), key.to_vec());
        self.call("meta", move |s| s.meta(&ns, &key))
    }
    fn check(&self, ns: &str, key: &[u8]) -> Result<Option<bool>> {
        let (ns, key) = (ns.to_string(), key.to_vec());
        self.call("check", move |s| s.check(&ns, &key))
    }
    fn scan(
        &self,
        ns: &str,
        cursor: Option<&Cursor>,
        limit: usize,
        order: ScanOrder,
    ) -> Result<ScanPage> {
        let (ns, cursor) = (ns.to_string(), cursor.cloned());
        self.call("scan", move |s| s.scan(&ns, cursor.as_ref(), limit, order))
    }
    fn cursor_after(&self, ns: &str, key: &[u8]) -> Result<Cursor> {
        let (ns, key) = (ns.to_string(), key.to_vec());
        self.call("cursor", move |s| s.cursor_after(&ns, &key))
    }
    fn history(&self, ns: &str, key: &[u8], at: Option<VersionId>) -> Result<Version> {
        let (ns, key) = (ns.to_string(), key.to_vec());
        self.call("history", move |s| s.history(&ns, &key, at))
    }
    fn namespace_create(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.call("namespace create", move |s| s.namespace_create(&name))
    }
    fn namespace_delete(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.call("namespace delete", move |s| s.namespace_delete(&name))
    }
    fn namespace_list(&self) -> Result<Vec<String>> {
        self.call("namespace list", move |s| s.namespace_list())
    }
    fn namespace_info(&self, name: &str) -> Result<NamespaceInfo> {
        let name = name.to_string();
        self.call("namespace info", move |s| s.namespace_info(&name))
    }
    fn namespace_set(&self, name: &str, property: NamespaceProperty) -> Result<()> {
        let name = name.to_string();
        self.call("namespace set", move |s| s.namespace_set(&name, property))
    }
    fn namespace_authenticate(&self, name: &str, credential: Credential<'_>) -> Result<bool> {
        // Credentials borrow; this call is local to the session set-up, so it is not bounded.
        self.inner.namespace_authenticate(name, credential)
    }
    fn flush_namespace(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.call("flush", move |s| s.flush_namespace(&name))
    }
    fn sync(&self) -> Result<()> {
        self.call("sync", move |s| s.sync())
    }
    fn space(&self, ns: &str) -> Result<Option<StoreSpace>> {
        let ns = ns.to_string();
        self.call("space", move |s| s.space(&ns))
    }
}
