//! The write gate: every write to the engine passes it, and a seal that leaves the engine over
//! its local cap closes it until eviction brings the engine back under.
//!
//! A verdict holds for the seals it was judged at. Writers carry the engine's seal count (read
//! before their write), so after a seal none of them goes on with an older verdict: the first
//! one judges, with the gate's lock held, on figures that include the seal. A verdict reached
//! on older figures can therefore never reopen a gate that a later seal closed.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct WriteGate {
    /// `seals << 1 | open`: the seal count of the last verdict, and the verdict.
    state: AtomicU64,
    /// Held while a verdict is reached and stored.
    judge: Mutex<()>,
}

impl Default for WriteGate {
    fn default() -> Self {
        WriteGate {
            state: AtomicU64::new(1),
            judge: Mutex::new(()),
        }
    }
}

impl WriteGate {
    /// True if a writer that saw `seals` may go on: the gate is open and judged since. One
    /// atomic load, the cost on every write's path.
    pub fn is_open_for(&self, seals: u64) -> bool {
        let g = self.state.load(Ordering::Acquire);
        g & 1 == 1 && g >> 1 >= seals
    }

    /// Judges the gate for a writer that saw `seals`: closed if `over()` (evaluated now, with
    /// the lock held, so on figures that include every seal judged so far). Returns whether the
    /// gate is open.
    pub fn judge(&self, seals: u64, over: impl FnOnce() -> bool) -> bool {
        let _judging = self.judge.lock();
        let at = (self.state.load(Ordering::Acquire) >> 1).max(seals);
        let open = !over();
        self.state
            .store(at << 1 | u64::from(open), Ordering::Release);
        open
    }

    /// Opens the gate whatever the figures (the backends are failing, nothing can move, or a
    /// writer waited its longest).
    pub fn force_open(&self, seals: u64) {
        self.judge(seals, || false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_needs_a_new_verdict() {
        let g = WriteGate::default();
        assert!(g.is_open_for(0));
        assert!(!g.is_open_for(1), "seal 1 was never judged");
        assert!(g.judge(1, || false));
        assert!(g.is_open_for(1));
        assert!(!g.judge(2, || true));
        assert!(!g.is_open_for(1), "closed for older writers too");
        assert!(!g.is_open_for(2));
    }

    #[test]
    fn an_older_writer_cannot_roll_the_verdict_back() {
        let g = WriteGate::default();
        assert!(!g.judge(5, || true));
        // A writer that saw seal 3 judges open: the verdict still stands for seal 5.
        assert!(g.judge(3, || false));
        assert!(g.is_open_for(5));
        assert!(!g.is_open_for(6));
        g.force_open(6);
        assert!(g.is_open_for(6));
    }
}
