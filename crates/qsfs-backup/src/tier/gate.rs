//! The write gate: every write to the engine passes it, and a seal that leaves the engine over
//! its local cap closes it until eviction brings the engine back under.
//!
//! A verdict holds for the seals it was judged at. Writers carry the engine's seal count (read
//! before their write), so after a seal none of them goes on with an older verdict: the first
//! one judges, with the gate's lock held, on figures that include the seal. A verdict reached
//! on older figures can therefore never reopen a gate that a later seal closed.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// What a writer found at the gate ([`WriteGate::pass`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Under the cap: go on.
    Open,
    /// Over the cap, but nothing can bring the engine under it soon: go on (opened for all).
    Released,
    /// Over the cap: wait for eviction.
    Closed,
}

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

    /// A writer's look at the gate: [`Pass::Open`] if the verdict for `seals` is open or is
    /// judged open now (`over()` false); else [`Pass::Released`] (the gate forced open) if
    /// `stuck()`, or [`Pass::Closed`]. `stuck` is only asked once `over` said yes, so it may be
    /// costly: the throttle's lists the segments that can move, which waits for the seals in
    /// flight to be durable, and no writer under the cap should wait for that.
    pub fn pass(
        &self,
        seals: u64,
        over: impl FnOnce() -> bool,
        stuck: impl FnOnce() -> bool,
    ) -> Pass {
        if self.is_open_for(seals) || self.judge(seals, over) {
            return Pass::Open;
        }
        if stuck() {
            self.force_open(seals);
            return Pass::Released;
        }
        Pass::Closed
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

    #[test]
    fn a_writer_under_the_cap_never_asks_whether_anything_can_move() {
        let g = WriteGate::default();
        let pass = g.pass(1, || false, || panic!("asked under the cap"));
        assert_eq!(pass, Pass::Open);
        assert!(g.is_open_for(1));
        // Already judged for this seal: neither question is asked again.
        let pass = g.pass(1, || panic!("judged twice"), || panic!("asked"));
        assert_eq!(pass, Pass::Open);
    }

    #[test]
    fn over_the_cap_a_writer_waits_unless_nothing_can_move() {
        let g = WriteGate::default();
        assert_eq!(g.pass(1, || true, || false), Pass::Closed);
        assert!(!g.is_open_for(1));
        assert_eq!(g.pass(1, || true, || true), Pass::Released);
        assert!(g.is_open_for(1), "released for every writer of that seal");
        assert_eq!(g.pass(2, || true, || false), Pass::Closed);
    }
}
