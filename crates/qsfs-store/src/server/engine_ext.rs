//! The embedded engine's answers to the admin commands (`NSJUMP`, `RELOAD`, `DATA RAW`, ...).

use qsfs_core::{Error, Result, SetOutcome};

use super::{RawEntry, ReadTarget, ServerStore};
use crate::Engine;

impl ServerStore for Engine {
    fn read_may_wait(&self, ns: &str, target: ReadTarget<'_>) -> bool {
        match target {
            ReadTarget::Value(key) => self.value_needs_fetch(ns, key),
            ReadTarget::History(_) => self.namespace_needs_fetch(ns),
            ReadTarget::Segment(file) => {
                u32::try_from(file).is_ok_and(|s| self.segment_needs_fetch(ns, s))
            }
        }
    }

    fn rotate(&self, ns: &str) -> Result<()> {
        Engine::rotate(self, ns)
    }

    fn set_many(&self, ns: &str, items: &[(&[u8], &[u8])]) -> Result<Vec<Result<SetOutcome>>> {
        Engine::set_many(self, ns, items)
    }

    fn reload(&self, ns: &str) -> Result<()> {
        Engine::reload(self, ns)
    }

    /// The engine never rewrites a closed file in place (its index is a checksummed snapshot
    /// plus the segments themselves), so no index file is ever dirty.
    fn dirty_index(&self, ns: &str) -> Result<Vec<u64>> {
        self.stats(ns).map(|_| Vec::new())
    }

    fn reset_dirty_index(&self, ns: &str) -> Result<()> {
        self.stats(ns).map(|_| ())
    }

    fn raw_entry(&self, ns: &str, file: u64, offset: u64) -> Result<RawEntry> {
        let segment =
            u32::try_from(file).map_err(|_| Error::NotFound(format!("segment {file} of {ns}")))?;
        match self.read_raw(ns, segment, offset)? {
            None => Err(Error::InvalidArgument("EOF".into())),
            Some(r) => Ok(RawEntry {
                key: r.key,
                previous: r.previous.map_or(0, |v| u64::from_le_bytes(v.0)),
                crc: r.value_crc,
                flags: u8::from(r.deleted),
                timestamp: r.timestamp,
                payload: r.value,
            }),
        }
    }

    fn current_position(&self, ns: &str) -> Option<(u64, u64)> {
        self.stats(ns)
            .ok()
            .map(|s| (u64::from(s.current_segment), s.current_offset))
    }

    fn next_seq_id(&self, ns: &str) -> Option<u64> {
        self.stats(ns).ok().map(|s| s.next_id)
    }

    fn data_faults(&self, ns: &str) -> u64 {
        self.stats(ns).map_or(0, |s| s.damage.len() as u64)
    }
}
