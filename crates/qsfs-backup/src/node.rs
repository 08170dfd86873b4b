//! A backend as the pipeline sees it: a name, a group, a timeout on every call and a health
//! cache, so a dead or silent node costs one timeout, not one per request.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use qsfs_core::{Backend, Error, Health, HealthStatus, Result};

/// Timeouts and cache lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Limit on one call (a shard read or write).
    pub op: Duration,
    /// Limit on a health probe.
    pub health: Duration,
    /// How long a node that failed is skipped before it is tried again.
    pub down_for: Duration,
    /// How long a successful probe is trusted.
    pub health_ttl: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            op: Duration::from_secs(30),
            health: Duration::from_secs(3),
            down_for: Duration::from_secs(30),
            health_ttl: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    down_until: Option<Instant>,
    reason: String,
    /// Until when the node takes no new shards, though it still answers: a write it refused
    /// (full, read-only, a wrong checksum confirmed) says nothing about what it already holds.
    no_writes_until: Option<Instant>,
    no_writes_reason: String,
    last_probe: Option<(Instant, Health)>,
}

/// One configured backend.
#[derive(Debug)]
pub struct Node {
    /// The backend's name (as recorded in metadata).
    pub name: String,
    /// Index of its placement group.
    pub group: usize,
    backend: Arc<dyn Backend>,
    timeouts: Timeouts,
    state: Mutex<State>,
}

impl Node {
    /// Wraps `backend`.
    pub fn new(backend: Arc<dyn Backend>, group: usize, timeouts: Timeouts) -> Self {
        Node {
            name: backend.name(),
            group,
            backend,
            timeouts,
            state: Mutex::new(State::default()),
        }
    }

    /// The wrapped backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// True while the node is known to be down.
    pub fn is_down(&self) -> bool {
        let s = self.state.lock();
        s.down_until.is_some_and(|t| Instant::now() < t)
    }

    /// Why the node is considered down (empty if it is not).
    pub fn down_reason(&self) -> String {
        if self.is_down() {
            self.state.lock().reason.clone()
        } else {
            String::new()
        }
    }

    /// Marks the node down for the configured time.
    pub fn mark_down(&self, reason: impl Into<String>) {
        let mut s = self.state.lock();
        s.down_until = Some(Instant::now() + self.timeouts.down_for);
        s.reason = reason.into();
        s.last_probe = None;
    }

    /// True while the node answers and may be given new shards.
    pub fn takes_writes(&self) -> bool {
        let s = self.state.lock();
        let now = Instant::now();
        s.down_until.is_none_or(|t| now >= t) && s.no_writes_until.is_none_or(|t| now >= t)
    }

    /// Why the node takes no new shards (empty if it does).
    pub fn no_writes_reason(&self) -> String {
        if self.is_down() {
            return self.down_reason();
        }
        let s = self.state.lock();
        match s.no_writes_until {
            Some(t) if Instant::now() < t => s.no_writes_reason.clone(),
            _ => String::new(),
        }
    }

    /// Gives the node no new shards for the configured time, while it stays in use for reads.
    pub fn mark_no_writes(&self, reason: impl Into<String>) {
        let mut s = self.state.lock();
        s.no_writes_until = Some(Instant::now() + self.timeouts.down_for);
        s.no_writes_reason = reason.into();
    }

    fn mark_up(&self) {
        let mut s = self.state.lock();
        s.down_until = None;
        s.reason.clear();
    }

    async fn call<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        if self.is_down() {
            return Err(Error::Unavailable(format!(
                "{} is down ({})",
                self.name,
                self.down_reason()
            )));
        }
        match tokio::time::timeout(self.timeouts.op, fut).await {
            Err(_) => {
                let msg = format!(
                    "{}: {what} took longer than {:?}",
                    self.name, self.timeouts.op
                );
                self.mark_down(&msg);
                Err(Error::Timeout(msg))
            }
            Ok(Err(e)) => {
                if e.is_retryable() || matches!(e, Error::Io { .. }) {
                    self.mark_down(e.detail());
                }
                Err(e)
            }
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// `put` with timeout and health bookkeeping.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.call("put", self.backend.put(key, data)).await
    }

    /// `put_new` (a key never stored before) with timeout and health bookkeeping.
    pub async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        self.call("put", self.backend.put_new(key, data)).await
    }

    /// `put_verified` (a put, then the node confirms it holds exactly those bytes) with
    /// timeout and health bookkeeping.
    pub async fn put_verified(&self, key: &str, data: Bytes, new: bool) -> Result<()> {
        self.call("put", self.backend.put_verified(key, data, new))
            .await
    }

    /// `get` with timeout and health bookkeeping.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.call("get", self.backend.get(key)).await
    }

    /// `get_range` with timeout and health bookkeeping.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.call("get_range", self.backend.get_range(key, range))
            .await
    }

    /// `delete` with timeout and health bookkeeping.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.call("delete", self.backend.delete(key)).await
    }

    /// `exists` with timeout and health bookkeeping.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        self.call("exists", self.backend.exists(key)).await
    }

    /// `size` with timeout and health bookkeeping.
    pub async fn size(&self, key: &str) -> Result<Option<u64>> {
        self.call("size", self.backend.size(key)).await
    }

    /// `list` with timeout and health bookkeeping.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.call("list", self.backend.list(prefix)).await
    }

    /// Probes the node (bounded by the health timeout), or answers from the cache while a
    /// previous answer is fresh. `force` ignores the cache.
    pub async fn probe(&self, force: bool) -> Health {
        if !force {
            let s = self.state.lock();
            if let Some((at, h)) = &s.last_probe {
                if at.elapsed() < self.timeouts.health_ttl {
                    return h.clone();
                }
            }
            if s.down_until.is_some_and(|t| Instant::now() < t) {
                return Health::down(s.reason.clone());
            }
        }
        let h = match tokio::time::timeout(self.timeouts.health, self.backend.health()).await {
            Ok(h) => h,
            Err(_) => Health::down(format!("no answer within {:?}", self.timeouts.health)),
        };
        if h.status == HealthStatus::Down {
            self.mark_down(h.detail.clone());
        } else {
            self.mark_up();
            self.state.lock().last_probe = Some((Instant::now(), h.clone()));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Memory;

    #[tokio::test]
    async fn a_down_node_says_why_without_repeating_the_kind() {
        let mem = Arc::new(Memory::new("m1"));
        let node = Node::new(mem.clone(), 0, Timeouts::default());
        mem.set_down(true);
        let first = node.get("k").await.unwrap_err();
        assert!(matches!(first, Error::Unavailable(_)), "{first}");
        let second = node.get("k").await.unwrap_err().to_string();
        assert_eq!(second, "unavailable: m1 is down (m1 is down)");
        assert_eq!(second.matches("unavailable").count(), 1, "{second}");
    }
}
