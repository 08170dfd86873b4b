//! Progress reporting: the library calls a [`Progress`]; the command-line tool draws bars.

/// Receives progress of long operations. Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// A new unit of work starts (`total` bytes if known).
    fn start(&self, _what: &str, _total: Option<u64>) {}
    /// `bytes` more bytes are done.
    fn advance(&self, _bytes: u64) {}
    /// The unit of work is finished (whether it succeeded or not).
    fn finish(&self, _what: &str) {}
    /// A batch of `units` units of work, `bytes` bytes in all, starts. Its units may run
    /// several at a time: each runs between [`Progress::start`] and [`Progress::finish`], or is
    /// reported by [`Progress::skip`], and `advance` does not say which unit moved.
    fn batch(&self, _units: u64, _bytes: u64) {}
    /// A unit of `bytes` bytes needed no work (a file already stored as it is).
    fn skip(&self, _what: &str, _bytes: u64) {}
}

/// Ignores progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
