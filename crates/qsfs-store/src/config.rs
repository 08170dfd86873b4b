//! Engine configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use qsfs_core::{Backend, Mode};

use crate::engine::EngineObserver;

/// When appended records are forced to stable storage.
///
/// Whatever the policy, a write is handed to the operating system (one `pwrite`, no user-space
/// buffer) before `set`/`delete` return, so an acknowledged write survives the process being
/// killed. The policy decides what survives a power loss or kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` before every write is acknowledged: nothing acknowledged is ever lost.
    EveryWrite,
    /// A background thread syncs written segments every interval: a power loss loses at most
    /// the writes of the last interval.
    Periodic(Duration),
    /// Group commit: a write is acknowledged once an `fdatasync` that covers it has completed,
    /// like [`Durability::EveryWrite`], but concurrent writers share syncs (the first waiter
    /// syncs for every write already in the file). Nothing acknowledged is ever lost.
    Group,
    /// Never sync explicitly, not even when sealing a segment (the kernel writes back when it
    /// likes); [`qsfs_core::Store::sync`] still syncs on demand.
    None,
}

/// Configuration of an [`crate::Engine`].
#[derive(Clone)]
pub struct EngineConfig {
    /// A segment is sealed and a new one started when the next record would make it larger than
    /// this (a single record larger than it still fits). Default 256 MiB, at most 3 GiB.
    pub max_segment_size: u64,
    /// Seal a non-empty segment once it is this old, even if not full (checked on every write
    /// and by the background thread). Default: no age limit.
    pub max_segment_age: Option<Duration>,
    /// Sync policy. Default: [`Durability::Periodic`] every second.
    pub durability: Durability,
    /// Mode of newly created namespaces. Default [`Mode::User`].
    pub default_mode: Mode,
    /// Restrict every namespace to one mode (0-db's `--mode`): mode changes are refused and a
    /// namespace stored in the other mode cannot be opened. Default: mixed.
    pub single_mode: Option<Mode>,
    /// Compaction rewrites a sealed segment when the share of its bytes still needed (newest
    /// versions) is below this ratio. Default 0.5.
    pub compaction_threshold: f64,
    /// Older versions (history) whose timestamp is at least this old may be dropped by
    /// compaction; younger ones are copied forward. `None` keeps all history. Default `None`.
    pub history_retention: Option<Duration>,
    /// Below this many bytes available on the engine's disk, the background compactor
    /// ([`crate::spawn_compactor`]) works to give space back: every second it rewrites the sealed
    /// local segments that free the most, whatever their live ratio, as long as their live data
    /// fits in what is left, and drops superseded versions at once instead of after
    /// `history_retention` (without a retention nothing may go, and nothing is done). Without this, a full disk stays full: a segment
    /// is only rewritten when mostly dead, and rewriting needs room for its live data. `None`
    /// (the default) is twice `max_segment_size`, at most half the disk.
    pub low_space: Option<u64>,
    /// SETs fail with [`qsfs_core::Error::NoSpace`] rather than leave less than this many bytes
    /// (at most a quarter of the disk) available on the engine's disk; deletes and compaction
    /// may use them. An append-only
    /// store whose disk writes filled to the last byte can never give space back: a delete needs
    /// room for its tombstone and compaction for the live data it copies. 0 (the default)
    /// refuses nothing: a filesystem on the engine keeps its own reserve above it
    /// (`qsfs_fuse::FsConfig::reserve`), which must not be refused its metadata writes.
    pub write_reserve: u64,
    /// Told when segments are sealed or removed and namespaces change (the backup tier).
    pub observer: Option<Arc<dyn EngineObserver>>,
    /// Where offloaded segments are read from. Without one, reading an offloaded segment is
    /// [`qsfs_core::Error::Unavailable`].
    pub cold_tier: Option<Arc<dyn Backend>>,
    /// How long a read from the cold tier may take before it is [`qsfs_core::Error::Timeout`].
    pub cold_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_segment_size: 256 << 20,
            max_segment_age: None,
            durability: Durability::Periodic(Duration::from_secs(1)),
            default_mode: Mode::User,
            single_mode: None,
            compaction_threshold: 0.5,
            history_retention: None,
            low_space: None,
            write_reserve: 0,
            observer: None,
            cold_tier: None,
            cold_timeout: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("max_segment_size", &self.max_segment_size)
            .field("max_segment_age", &self.max_segment_age)
            .field("durability", &self.durability)
            .field("default_mode", &self.default_mode)
            .field("single_mode", &self.single_mode)
            .field("compaction_threshold", &self.compaction_threshold)
            .field("history_retention", &self.history_retention)
            .field("low_space", &self.low_space)
            .field("write_reserve", &self.write_reserve)
            .field("observer", &self.observer.is_some())
            .field("cold_tier", &self.cold_tier.as_ref().map(|b| b.name()))
            .field("cold_timeout", &self.cold_timeout)
            .finish()
    }
}

/// Largest accepted `max_segment_size`: offsets are 32-bit and a segment may exceed its limit
/// by one maximal record.
pub(crate) const MAX_SEGMENT_SIZE_LIMIT: u64 = 3 << 30;
/// Smallest accepted `max_segment_size`.
pub(crate) const MIN_SEGMENT_SIZE: u64 = 4096;
