//! Per-connection state (spec §3) and the SECURE challenge arithmetic (§5).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use qsfs_core::Mode;
use sha1::{Digest, Sha1};

use super::command::CommandId;

/// Shared, in-memory state of one namespace, seen by every connection that selected it.
#[derive(Debug)]
pub struct NsState {
    /// Name of the namespace.
    pub name: String,
    mode: AtomicU8,
    /// Set when the namespace was deleted: connections still on it are detached.
    pub deleted: AtomicBool,
    /// `NSSET lock 1`: reads work, writes do not. Not persisted.
    pub locked: AtomicBool,
    /// `NSSET freeze 1`: neither reads nor writes. Not persisted.
    pub frozen: AtomicBool,
    /// Written since the last `--rotate` tick.
    pub changed: AtomicBool,
    /// The store found the namespace damaged: every key command is refused, saying so.
    pub damaged: bool,
}

impl NsState {
    /// A fresh state.
    pub fn new(name: &str, mode: Mode) -> Self {
        NsState {
            name: name.to_string(),
            mode: AtomicU8::new(mode_byte(mode)),
            deleted: AtomicBool::new(false),
            locked: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
            changed: AtomicBool::new(false),
            damaged: false,
        }
    }

    /// The state of a namespace the store found damaged (see [`NsState::damaged`]).
    pub fn damaged(name: &str) -> Self {
        NsState {
            damaged: true,
            ..NsState::new(name, Mode::User)
        }
    }

    /// The key mode, as cached by the server.
    pub fn mode(&self) -> Mode {
        if self.mode.load(Ordering::Relaxed) == 1 {
            Mode::Seq
        } else {
            Mode::User
        }
    }

    /// Updates the cached mode after an `NSSET mode`.
    pub fn set_mode(&self, m: Mode) {
        self.mode.store(mode_byte(m), Ordering::Relaxed);
    }
}

fn mode_byte(m: Mode) -> u8 {
    match m {
        Mode::Seq => 1,
        _ => 0,
    }
}

/// A pending `WAIT`.
#[derive(Debug, Clone)]
pub struct Wait {
    /// The table entry watched; `None` = any command (`*`).
    pub command: Option<CommandId>,
    /// When to answer `Timeout`.
    pub deadline: Instant,
}

/// What one connection knows about itself.
#[derive(Debug, Clone)]
pub struct Session {
    /// Connection id, unique for the server's lifetime (never 0).
    pub id: u64,
    /// The selected namespace.
    pub ns: Arc<NsState>,
    /// Admin rights (everyone without `--admin`; after a successful AUTH otherwise).
    pub admin: bool,
    /// Write access to the selected namespace, decided at SELECT time.
    pub writable: bool,
    /// The nonce of the last `AUTH SECURE CHALLENGE`; consumed by any use.
    pub nonce: Option<String>,
    /// Pending WAIT, if any.
    pub wait: Option<Wait>,
    /// After MIRROR: receives a frame for every command of other clients.
    pub mirror: bool,
    /// After MASTER: the last argument of every command is an origin id.
    pub master: bool,
}

/// A fresh 8-byte nonce as 16 lowercase hex characters.
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// Lowercase hex SHA-1 of `nonce ":" password`, the SECURE proof.
pub fn secure_digest(nonce: &str, password: &str) -> String {
    let mut h = Sha1::new();
    h.update(nonce.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    hex::encode(h.finalize())
}

/// Compares in time independent of where the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True if `word` is a case-insensitive prefix of `SECURE` (the original's lenient match).
pub fn is_secure_word(word: &[u8]) -> bool {
    !word.is_empty() && word.len() <= 6 && b"SECURE"[..word.len()].eq_ignore_ascii_case(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha1_of_nonce_colon_password() {
        // sha1("abc:pw"), computed independently with sha1sum.
        assert_eq!(
            secure_digest("abc", "pw"),
            "2137f79c88412ed50aafcc4e5d9e48cb1a212a5b"
        );
        let d = secure_digest("0011223344556677", "secret");
        assert_eq!(d.len(), 40);
        assert_ne!(d, secure_digest("0011223344556678", "secret"));
        assert!(d
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn nonces_are_fresh_hex() {
        let (a, b) = (new_nonce(), new_nonce());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }

    #[test]
    fn secure_word_prefixes() {
        assert!(is_secure_word(b"SECURE"));
        assert!(is_secure_word(b"sec"));
        assert!(!is_secure_word(b"SECURED"));
        assert!(!is_secure_word(b""));
        assert!(!is_secure_word(b"PLAIN"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
