//! Progress reporting: the library calls a [`Progress`]; the command-line tool draws bars.

/// Receives progress of long operations. Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// A new unit of work starts (`total` bytes if known).
    fn start(&self, _what: &str, _total: Option<u64>) {}
    /// `bytes` more bytes are done.
    fn advance(&self, _bytes: u64) {}
    /// The unit of work is finished.
    fn finish(&self, _what: &str) {}
}

/// Ignores progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
