//! Keeping the engine's local bytes under the cap, and slowing writers while it is exceeded.
//!
//! Only segments that are sealed, still local, confirmed stored and deep-verified (every shard
//! read back and checked, see the worker) are evicted, least recently read first, then oldest.
//! The active segment and anything not yet confirmed stay: when that alone exceeds the cap, the
//! cap is reported unmet (status, metric, a warning at most once a minute) and writes go on.
//!
//! Writers wait at the write gate ([`super::gate`]) while a seal has left the engine over the
//! cap and uploads can catch up.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use qsfs_core::Store;

use super::gate::Pass;
use super::metrics::TierMetrics;
use super::Shared;

/// Longest a writer is held back after a seal.
const THROTTLE_MAX: Duration = Duration::from_secs(60);
/// A failure streak this long means the backends are not taking data: writers are not held.
const STALLED_AFTER_FAILURES: u32 = 3;
/// The cap-unmet warning is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A segment that may be evicted.
struct Candidate {
    last_read: u64,
    id: u32,
    ns: String,
}

/// Evicts confirmed segments until the engine is under the cap (or nothing more can go).
pub(crate) fn enforce(shared: &Shared) {
    let m = &shared.metrics;
    let Some(cap) = shared.config.local_cap else {
        m.cap_unmet.store(false, Ordering::Relaxed);
        return;
    };
    let Some(engine) = shared.engine() else {
        return;
    };
    let mut local = engine.local_bytes();
    TierMetrics::set(&m.local_bytes, local);
    if local <= cap {
        m.cap_unmet.store(false, Ordering::Relaxed);
        return;
    }
    let st = shared.state.lock().clone();
    let mut candidates = Vec::new();
    for ns in engine.namespace_list().unwrap_or_default() {
        for s in engine.segments(&ns).unwrap_or_default() {
            if s.sealed && !s.offloaded && st.is_verified(&ns, s.id, s.length) {
                candidates.push(Candidate {
                    last_read: s.last_read,
                    id: s.id,
                    ns: ns.clone(),
                });
            }
        }
    }
    candidates.sort_by(|a, b| (a.last_read, a.id, &a.ns).cmp(&(b.last_read, b.id, &b.ns)));
    for c in candidates {
        if local <= cap || shared.stop.load(Ordering::Acquire) {
            break;
        }
        match engine.offload_segment(&c.ns, c.id) {
            Ok(()) => {
                TierMetrics::add(&m.evictions, 1);
                local = engine.local_bytes();
                TierMetrics::set(&m.local_bytes, local);
                shared.note_progress();
            }
            Err(e) => {
                tracing::warn!(ns = %c.ns, segment = c.id, error = %e, "tier: eviction failed")
            }
        }
    }
    let unmet = local > cap;
    m.cap_unmet.store(unmet, Ordering::Relaxed);
    if unmet {
        let mut last = shared.last_cap_warning.lock();
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                local_bytes = local,
                cap,
                backlog_segments = TierMetrics::get(&m.backlog_segments),
                "tier: local disk over its cap and nothing more can be evicted yet \
                 (segments wait for upload); writes continue"
            );
        }
    }
}

/// Holds a writer before its write while the engine is over the cap after a seal and the
/// worker can make progress, so writers cannot outrun uploads without bound. `seals` is the
/// engine's seal count the writer saw (see [`super::gate`]).
pub(crate) fn admit(shared: &Shared, seals: u64) {
    if shared.config.local_cap.is_none() || shared.gate.is_open_for(seals) {
        return;
    }
    let m = &shared.metrics;
    let start = Instant::now();
    m.writers_held.fetch_add(1, Ordering::Relaxed);
    let held = wait(shared, seals);
    m.writers_held.fetch_sub(1, Ordering::Relaxed);
    if held {
        TierMetrics::add(&m.write_holds, 1);
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        TierMetrics::add(&m.write_hold_ms, ms);
    }
}

/// Waits until the gate opens. The release point is the cap itself, which is where eviction
/// stops: the writers released go on to fill the active segment, and that segment is the
/// overshoot. Opens at once when the backends are failing or nothing can move (writes keep
/// working, the cap is reported unmet), and after at most [`THROTTLE_MAX`]. Returns whether
/// the writer had to wait.
fn wait(shared: &Shared, seals: u64) -> bool {
    let gate = &shared.gate;
    let (Some(cap), Some(engine)) = (shared.config.local_cap, shared.engine()) else {
        gate.force_open(seals);
        return false;
    };
    let deadline = Instant::now() + THROTTLE_MAX;
    let mut held = false;
    loop {
        let expired = Instant::now() >= deadline;
        let stuck = || {
            expired
                || shared.stop.load(Ordering::Acquire)
                || shared.live.lock().failures >= STALLED_AFTER_FAILURES
                || !movable(&engine)
        };
        match gate.pass(seals, || engine.local_bytes() > cap, stuck) {
            Pass::Closed => {}
            pass => {
                if pass == Pass::Released && expired {
                    tracing::debug!("tier: writers released after the longest throttle");
                }
                shared.changed.notify_all();
                return held;
            }
        }
        held = true;
        shared.kick();
        let mut live = shared.live.lock();
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        shared.changed.wait_for(&mut live, wait);
    }
}

/// Progress is possible only if something waits for upload or can be evicted now.
fn movable(engine: &qsfs_store::Engine) -> bool {
    engine
        .namespace_list()
        .unwrap_or_default()
        .iter()
        .any(|ns| {
            engine
                .segments(ns)
                .unwrap_or_default()
                .iter()
                .any(|s| s.sealed && !s.offloaded)
        })
}
