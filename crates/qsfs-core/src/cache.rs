//! The `Cache` seam: the block cache between a filesystem and a Store.

use bytes::Bytes;

use crate::error::Result;

/// Names one block of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    /// The file's inode number.
    pub inode: u64,
    /// The block's index within the file (byte offset / block size).
    pub index: u64,
}

/// Counters of a cache, for status and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Bytes held now (clean and dirty).
    pub bytes: u64,
    /// Bytes held that the Store has not seen yet.
    pub dirty_bytes: u64,
    /// The configured bound on `bytes`.
    pub capacity: u64,
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to the Store.
    pub misses: u64,
    /// Blocks written to the Store.
    pub blocks_written: u64,
}

/// A write-back block cache in front of a Store.
///
/// Its first job is to shape what reaches an append-only Store: partial writes are merged into
/// whole blocks so each block is written once per flush rather than once per `write()`. Its
/// second job is speed (hits, read-ahead).
///
/// Contract:
/// * memory stays within `capacity` bytes plus at most one block per concurrent writer: when
///   full, clean blocks are evicted first and dirty ones are written back before eviction;
/// * [`Cache::read`] sees every earlier [`Cache::write`], flushed or not;
/// * after [`Cache::flush`] returns `Ok`, every earlier write of the flushed inodes is in the
///   Store with the Store's durability;
/// * [`Cache::discard`] forgets blocks (truncate, unlink) without writing them back.
pub trait Cache: Send + Sync {
    /// Size of every block in bytes.
    fn block_size(&self) -> usize;

    /// The current content of a block (loaded from the Store on a miss); `None` for a block that
    /// was never written (a hole). A returned block may be shorter than `block_size`.
    fn read(&self, block: BlockId) -> Result<Option<Bytes>>;

    /// Writes `data` at `offset` within `block` (`offset + data.len() <= block_size`). Bytes
    /// between the old end of the block and `offset` read as zero.
    fn write(&self, block: BlockId, offset: usize, data: &[u8]) -> Result<()>;

    /// Forgets every block of `inode` with index `>= from_index`, dirty or clean, and cuts the
    /// block at `from_index - 1` to `keep_in_last` bytes if given. Nothing is written back.
    fn discard(&self, inode: u64, from_index: u64, keep_in_last: Option<usize>) -> Result<()>;

    /// Writes dirty blocks of `inode` (or of every inode when `None`) to the Store.
    fn flush(&self, inode: Option<u64>) -> Result<()>;

    /// Current counters.
    fn stats(&self) -> CacheStats;
}
