//! Counters and gauges of the tier, plain atomics so that a metrics endpoint can read them
//! without a lock and without the tier knowing about the exporter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters (monotonic) and gauges (current values) of the tier.
#[derive(Debug, Default)]
pub struct TierMetrics {
    /// Counter: segment bytes uploaded and verified.
    pub bytes_offloaded: AtomicU64,
    /// Counter: segments uploaded and verified.
    pub segments_offloaded: AtomicU64,
    /// Counter: plaintext bytes fetched back from the backends (cache misses only).
    pub bytes_fetched: AtomicU64,
    /// Counter: stripe reads served from the read cache.
    pub cache_hits: AtomicU64,
    /// Counter: stripe reads that had to fetch from the backends.
    pub cache_misses: AtomicU64,
    /// Counter: segments evicted from local disk.
    pub evictions: AtomicU64,
    /// Counter: failed upload (or verification) attempts.
    pub upload_failures: AtomicU64,
    /// Counter: cold objects deleted (segments of removed data, manifests of deleted namespaces).
    pub cold_deleted: AtomicU64,
    /// Gauge: sealed segments not yet confirmed stored.
    pub backlog_segments: AtomicU64,
    /// Gauge: bytes of those segments.
    pub backlog_bytes: AtomicU64,
    /// Gauge: segments uploaded but not yet deep-verified.
    pub unverified_segments: AtomicU64,
    /// Counter: recovery cuts uploaded.
    pub cuts_uploaded: AtomicU64,
    /// Gauge: bytes of the last recovery cut uploaded (about the size of every index).
    pub cut_bytes: AtomicU64,
    /// Gauge: bytes of the engine directory on local disk.
    pub local_bytes: AtomicU64,
    /// Gauge: true while the local cap cannot be met.
    pub cap_unmet: AtomicBool,
    /// Gauge: cold deletes waiting for their manifest.
    pub pending_deletes: AtomicU64,
    /// Gauge: writers waiting at the write gate now.
    pub writers_held: AtomicU64,
    /// Counter: writes held at the write gate (the engine over its cap after a seal).
    pub write_holds: AtomicU64,
    /// Counter: milliseconds those writes waited, summed over the writers.
    pub write_hold_ms: AtomicU64,
    /// Counter: rounds of the worker, each looking for work once. An idle tier adds about one
    /// a second; a fast climb with nothing to do is a worker spinning.
    pub worker_rounds: AtomicU64,
}

impl TierMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Ordering::Relaxed);
    }

    /// Reads one counter or gauge.
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
}
