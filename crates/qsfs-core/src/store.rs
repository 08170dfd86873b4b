//! The `Store` seam: a namespaced, append-only key-value store.

use crate::disk::StoreSpace;
use crate::error::Result;
use crate::types::{
    Credential, Cursor, Entry, KeyMeta, NamespaceInfo, NamespaceProperty, ScanOrder, ScanPage,
    SetOutcome, Timestamp, Version, VersionId,
};

/// A namespaced, append-only key-value store with history.
///
/// Implemented by the embedded engine (`qsfs_store::Engine`) and by a client of any
/// 0-db-compatible server. Every method is synchronous and thread-safe: many threads may call
/// one store at once. Nothing is ever overwritten in place: an update appends a new version
/// that links to the previous one, and a delete appends a tombstone.
///
/// Namespaces are named by `&str`; an implementation validates names (see
/// [`crate::NamespaceName`]) and answers [`crate::Error::NotFound`] for an unknown one. The
/// `default` namespace always exists.
///
/// Errors follow [`crate::Error`]'s policy: a key over 255 bytes or a value over 8 MiB is
/// [`crate::Error::TooLarge`], a write to a locked/worm/frozen namespace is
/// [`crate::Error::ReadOnly`], a cap reached is [`crate::Error::NoSpace`].
pub trait Store: Send + Sync {
    /// Stores `value` under `key` with an explicit timestamp (`None` = now).
    ///
    /// * User mode: `key` is required (1–255 bytes).
    /// * Seq mode: `key = None` allocates the next id; `Some(id)` updates a live id and any other
    ///   key is [`crate::Error::InvalidArgument`].
    ///
    /// A byte-identical live value is not written again: the answer is
    /// [`SetOutcome::Unchanged`]. When `Ok` returns, the write is as durable as the store's
    /// configured durability promises.
    fn set_at(
        &self,
        ns: &str,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp: Option<Timestamp>,
    ) -> Result<SetOutcome>;

    /// [`Store::set_at`] with the current time.
    fn set(&self, ns: &str, key: Option<&[u8]>, value: &[u8]) -> Result<SetOutcome> {
        self.set_at(ns, key, value, None)
    }

    /// The live value of `key`, or `None` if it never existed or was deleted.
    /// A value that fails its checksum is [`crate::Error::Corrupt`], never returned.
    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Entry>>;

    /// True if [`Store::get`] of `key` in `ns` may wait for more than local memory and disk (a
    /// remote store, a cold-tier fetch). A caller others wait on moves such reads off its
    /// thread and reads the others in place. Fetches nothing. The default, for a store that
    /// cannot tell, is `true`.
    fn get_may_wait(&self, ns: &str, key: &[u8]) -> bool {
        let _ = (ns, key);
        true
    }

    /// Deletes `key` by appending a tombstone (history is kept). A missing or already deleted
    /// key is [`crate::Error::NotFound`].
    fn delete_at(&self, ns: &str, key: &[u8], timestamp: Option<Timestamp>) -> Result<()>;

    /// [`Store::delete_at`] with the current time.
    fn delete(&self, ns: &str, key: &[u8]) -> Result<()> {
        self.delete_at(ns, key, None)
    }

    /// True if `key` is live. Should not read the value.
    fn exists(&self, ns: &str, key: &[u8]) -> Result<bool> {
        Ok(self.meta(ns, key)?.is_some())
    }

    /// Length and timestamp of the live version of `key`, without reading its value.
    fn meta(&self, ns: &str, key: &[u8]) -> Result<Option<KeyMeta>>;

    /// Re-reads the live value and verifies its checksum: `Some(true)` intact, `Some(false)`
    /// corrupt, `None` if the key is not live.
    fn check(&self, ns: &str, key: &[u8]) -> Result<Option<bool>>;

    /// Up to `limit` live keys after `cursor` (from the start when `None`), in write order
    /// (`Forward`: the key written least recently first) or its reverse. Resuming with
    /// [`ScanPage::next`] continues after the last returned key, even if that key was updated or
    /// deleted meanwhile. Every key live for the whole scan is returned exactly once.
    fn scan(
        &self,
        ns: &str,
        cursor: Option<&Cursor>,
        limit: usize,
        order: ScanOrder,
    ) -> Result<ScanPage>;

    /// A cursor that makes [`Store::scan`] resume right after the live `key`.
    fn cursor_after(&self, ns: &str, key: &[u8]) -> Result<Cursor>;

    /// A version of `key`: the live one when `at` is `None` (a deleted key is
    /// [`crate::Error::NotFound`]), else the version `at` names, which must belong to `key`
    /// (else [`crate::Error::InvalidArgument`]). Older versions are reachable through
    /// [`Version::previous`], also after a delete, until compaction's retention drops them.
    fn history(&self, ns: &str, key: &[u8], at: Option<VersionId>) -> Result<Version>;

    /// The id of the version before the one `at` names (the live one when `None`), or `None` if
    /// it is the oldest: [`Store::history`] without reading that version's value. How a checker
    /// reaches the older versions of a key whose live value fails its checksum (`history` of it
    /// is [`crate::Error::Corrupt`]). A damaged record header is still `Corrupt`. The default
    /// asks `history`, which reads the value.
    fn version_before(
        &self,
        ns: &str,
        key: &[u8],
        at: Option<VersionId>,
    ) -> Result<Option<VersionId>> {
        Ok(self.history(ns, key, at)?.previous)
    }

    /// Creates a namespace with default properties ([`crate::Error::AlreadyExists`] if present).
    fn namespace_create(&self, name: &str) -> Result<()>;

    /// Deletes a namespace and all its data. `default` cannot be deleted.
    fn namespace_delete(&self, name: &str) -> Result<()>;

    /// All namespace names, `default` first.
    fn namespace_list(&self) -> Result<Vec<String>>;

    /// Counters and properties of a namespace.
    fn namespace_info(&self, name: &str) -> Result<NamespaceInfo>;

    /// Changes one property.
    fn namespace_set(&self, name: &str, property: NamespaceProperty) -> Result<()>;

    /// Checks a credential against the namespace password. `Ok(false)` for a wrong one; a
    /// namespace without password accepts anything.
    fn namespace_authenticate(&self, name: &str, credential: Credential<'_>) -> Result<bool>;

    /// Deletes every key of the namespace (0-db `FLUSH`), keeping the namespace and its
    /// properties.
    fn flush_namespace(&self, name: &str) -> Result<()>;

    /// Makes every acknowledged write durable now, whatever the configured policy.
    fn sync(&self) -> Result<()>;

    /// How much namespace `ns` may still grow by, and the figures behind it: its limit (0-db's
    /// `maxsize`) if any, its live payload bytes, and the free (and, when known, total) bytes
    /// of the disk holding the store's data. What a filesystem's `statfs` and its reserve are
    /// measured against when the store is not on a local disk it can look at.
    ///
    /// `Ok(None)` when the store cannot tell (the default; a server that does not report these
    /// figures), which is not an error. An unknown namespace is [`crate::Error::NotFound`] for
    /// a store that can tell. When `Some`, the figures are consistent: `limit` is `None` for an
    /// unlimited namespace (never `Some(0)`), `disk_free <= disk_total` when the total is
    /// known, and `used` is what [`Store::namespace_info`] calls `data_bytes`. The figures are
    /// a snapshot: writers elsewhere may change them at once. May take a round trip.
    fn space(&self, ns: &str) -> Result<Option<StoreSpace>> {
        let _ = ns;
        Ok(None)
    }
}
