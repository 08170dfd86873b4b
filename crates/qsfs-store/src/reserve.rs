//! The write reserve: disk space that new values may not use ([`crate::EngineConfig::write_reserve`]).
//!
//! The engine is append-only: a delete appends a tombstone, and compaction needs room for a
//! segment's live data before it can remove the segment. A disk that SETs filled to the last
//! byte could therefore never give space back, even after its clients deleted most of what
//! they wrote (measured: `qsfs serve` on a 32 MiB tmpfs with 4 MiB segments, filled, then half
//! of the values deleted: nothing came back, because no segment's live half fitted in the
//! 60 KiB left). So SETs stop short of the reserve, and deletes and compaction may use it.

use parking_lot::Mutex;
use qsfs_core::{reserve_on, DiskSpace, Error, Result, SpaceBudget};

/// The reserve and the running budget of bytes that may still be written before it.
#[derive(Debug)]
pub(crate) struct WriteReserve {
    bytes: u64,
    budget: Mutex<SpaceBudget>,
}

impl WriteReserve {
    /// A reserve of `bytes`, and never more than a quarter of the disk (0: every write is
    /// admitted, the disk is never measured).
    pub(crate) fn new(bytes: u64) -> WriteReserve {
        WriteReserve {
            bytes,
            budget: Mutex::new(SpaceBudget::default()),
        }
    }

    /// The bytes kept back on a disk of `total` bytes.
    pub(crate) fn kept(&self, total: u64) -> u64 {
        reserve_on(self.bytes, total)
    }

    /// Admits a write of about `adding` bytes, or [`Error::NoSpace`] if it would leave less
    /// than the reserve available. The disk (`measure`) is read at most once a second while the
    /// budget lasts, and always before a refusal, so space given back is seen at once.
    pub(crate) fn admit(
        &self,
        adding: u64,
        measure: impl FnOnce() -> Result<DiskSpace>,
    ) -> Result<()> {
        if self.bytes == 0 {
            return Ok(());
        }
        let mut measured = None;
        let fits = self.budget.lock().take(adding, || {
            let disk = measure()?;
            let kept = self.kept(disk.total);
            measured = Some((disk.available, kept));
            Ok::<_, Error>(disk.available.saturating_sub(kept))
        })?;
        if let (false, Some((available, kept))) = (fits, measured) {
            return Err(Error::NoSpace(format!(
                "{available} bytes available on the data disk, and the last {kept} are kept for \
                 deletes and compaction"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(available: u64) -> impl FnOnce() -> Result<DiskSpace> {
        move || {
            Ok(DiskSpace {
                total: 1 << 30,
                free: available,
                available,
            })
        }
    }

    #[test]
    fn no_reserve_never_measures() {
        let r = WriteReserve::new(0);
        r.admit(u64::MAX, || panic!("measured")).unwrap();
    }

    #[test]
    fn writes_stop_at_the_reserve_and_the_budget_runs_down() {
        let r = WriteReserve::new(100);
        r.admit(50, disk(200)).unwrap();
        // 50 of the 100 writable bytes are left: trusted without measuring.
        r.admit(50, || panic!("measured within the budget"))
            .unwrap();
        // Past the budget: measured, and the reserve is kept.
        let err = r.admit(1, disk(100)).unwrap_err();
        assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
        // Space came back (a delete and a compaction): measured again at once.
        r.admit(1, disk(102)).unwrap();
    }

    #[test]
    fn the_reserve_is_at_most_a_quarter_of_the_disk() {
        let r = WriteReserve::new(u64::MAX);
        let quarter = || {
            Ok(DiskSpace {
                total: 400,
                free: 150,
                available: 150,
            })
        };
        // 150 available, 100 (a quarter of 400) kept: 50 may be written, not 51.
        assert!(matches!(r.admit(51, quarter), Err(Error::NoSpace(_))));
        r.admit(50, quarter).unwrap();
    }
}
