//! Shared types and limits. The limits are those of the original 0-db, so that data and
//! clients move between qsfs and 0-db unchanged.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::{Error, Result};

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// Largest value, in bytes (8 MiB).
pub const MAX_VALUE_LEN: usize = 8 * 1024 * 1024;
/// Longest namespace name, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 128;
/// Longest namespace password that can be set, in bytes.
pub const MAX_PASSWORD_LEN: usize = 63;
/// Size of a sequential-mode key: a little-endian `u64`.
pub const SEQ_KEY_LEN: usize = 8;
/// The namespace that always exists and cannot be deleted.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Seconds since the Unix epoch.
pub type Timestamp = u64;

/// Returns the current time as a [`Timestamp`].
pub fn now() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a key against [`MAX_KEY_LEN`] and refuses an empty key.
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("empty key".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::TooLarge {
            what: "key",
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

/// Checks a value against [`MAX_VALUE_LEN`].
pub fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::TooLarge {
            what: "value",
            len: value.len(),
            max: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

/// A validated namespace name: 1–128 bytes, not `.` or `..`, no `/` and no NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NamespaceName(String);

impl NamespaceName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::InvalidArgument("empty namespace name".into()));
        }
        if name.len() > MAX_NAMESPACE_LEN {
            return Err(Error::TooLarge {
                what: "namespace name",
                len: name.len(),
                max: MAX_NAMESPACE_LEN,
            });
        }
        if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "namespace name not allowed: {name:?}"
            )));
        }
        Ok(NamespaceName(name))
    }

    /// The `default` namespace.
    pub fn default_ns() -> Self {
        NamespaceName(DEFAULT_NAMESPACE.to_string())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `default`.
    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_NAMESPACE
    }
}

impl TryFrom<String> for NamespaceName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        NamespaceName::new(s)
    }
}

impl TryFrom<&str> for NamespaceName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        NamespaceName::new(s)
    }
}

impl From<NamespaceName> for String {
    fn from(n: NamespaceName) -> String {
        n.0
    }
}

impl fmt::Display for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for NamespaceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// How keys are chosen in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Mode {
    /// The caller chooses keys (1–255 bytes).
    #[default]
    User,
    /// The store assigns 8-byte little-endian sequential ids; a caller may only update a live id.
    Seq,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::User => "userkey",
            Mode::Seq => "sequential",
        })
    }
}

/// What a `set` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOutcome {
    /// A new version was appended under `key` (in seq mode, the id the store chose).
    Written {
        /// The key written.
        key: Vec<u8>,
    },
    /// The live value was byte-identical: nothing was written (0-db answers nil).
    Unchanged {
        /// The key that already held the value.
        key: Vec<u8>,
    },
}

impl SetOutcome {
    /// The key, whatever happened.
    pub fn key(&self) -> &[u8] {
        match self {
            SetOutcome::Written { key } | SetOutcome::Unchanged { key } => key,
        }
    }

    /// True if a new version was written.
    pub fn written(&self) -> bool {
        matches!(self, SetOutcome::Written { .. })
    }
}

/// The live value of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value bytes.
    pub value: Vec<u8>,
    /// When this version was written.
    pub timestamp: Timestamp,
}

/// What is known about a live key without reading its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMeta {
    /// The key.
    pub key: Vec<u8>,
    /// Length of the live value in bytes.
    pub length: u64,
    /// When the live version was written.
    pub timestamp: Timestamp,
}

/// Opaque identifier of one stored version of a key (0-db's 8-byte *ekey*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(pub [u8; 8]);

/// One version of a key, as returned by [`crate::Store::history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The value of this version; empty for a tombstone.
    pub value: Vec<u8>,
    /// When this version was written.
    pub timestamp: Timestamp,
    /// True if this version is a deletion.
    pub deleted: bool,
    /// The next older version, if any.
    pub previous: Option<VersionId>,
}

/// Opaque, resumable scan position. It stays valid when the key it points after is updated or
/// deleted. The engine's cursors are 17 bytes, the size 0-db clients expect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(pub Vec<u8>);

/// Scan direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScanOrder {
    /// Oldest write first (0-db `SCAN`).
    #[default]
    Forward,
    /// Newest write first (0-db `RSCAN`).
    Reverse,
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// Live keys, in scan order.
    pub entries: Vec<KeyMeta>,
    /// Where to resume; `None` when the scan reached the end.
    pub next: Option<Cursor>,
}

/// A namespace property, as set by 0-db's `NSSET`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NamespaceProperty {
    /// Set (`Some`) or clear (`None`) the password. Stored only as a salted hash or sealed,
    /// never in plain text.
    Password(Option<String>),
    /// Public namespaces can be read without the password.
    Public(bool),
    /// Cap on live value bytes; 0 means unlimited.
    MaxSize(u64),
    /// Write-once: no overwrite and no delete.
    Worm(bool),
    /// Key mode; only for a namespace that was never written.
    Mode(Mode),
    /// Read-only until unlocked. Not persisted. `Lock(false)` also unfreezes.
    Lock(bool),
    /// No reads or writes until unfrozen. Not persisted.
    Freeze(bool),
}

/// A credential presented to open a password-protected namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// The password itself.
    Plain(&'a str),
    /// 0-db's SECURE form: lowercase hex SHA-1 of `nonce ":" password`.
    Challenge {
        /// The nonce the server handed out.
        nonce: &'a str,
        /// The client's 40-char hex digest.
        digest: &'a str,
    },
}

/// What a namespace looks like now (0-db's `NSINFO`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceInfo {
    /// The name.
    pub name: String,
    /// Key mode.
    pub mode: Mode,
    /// Number of live keys.
    pub entries: u64,
    /// Sum of live value lengths.
    pub data_bytes: u64,
    /// Bytes the namespace's files occupy on local disk (all segments, index).
    pub disk_bytes: u64,
    /// Bytes held by the index (in memory and persisted).
    pub index_bytes: u64,
    /// True if a password is set.
    pub password: bool,
    /// True if readable without the password.
    pub public: bool,
    /// Cap on live bytes; 0 = unlimited.
    pub max_size: u64,
    /// Write-once mode.
    pub worm: bool,
    /// Temporarily read-only.
    pub locked: bool,
    /// Temporarily inaccessible.
    pub frozen: bool,
    /// Id of the segment currently appended to.
    pub current_segment: u64,
    /// Directory holding the namespace's files, if local.
    pub path: Option<std::path::PathBuf>,
}
