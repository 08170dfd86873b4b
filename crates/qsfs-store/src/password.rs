//! Namespace passwords: never stored in plain text.
//!
//! A password is kept in two forms. An argon2id hash (PHC string, random salt) checks a password
//! presented in plain (`SELECT ns pw`). 0-db's `SELECT ns SECURE h` proves knowledge of the
//! password with `sha1(nonce ":" password)`, which needs the password itself, so it is also kept
//! *sealed*: encrypted with AES-256-GCM-SIV under the engine's key (`engine.key`, 32 random bytes,
//! mode 0600), with the namespace name as associated data so a sealed password cannot be moved to
//! another namespace. Someone who copies the namespace directories without `engine.key` learns
//! nothing but the argon2 hash.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use qsfs_core::{Error, Result};

/// The engine's sealing key.
pub(crate) struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// Loads `engine.key` from the engine root, creating it (0600) on first use.
    pub fn load_or_create(root: &Path) -> Result<SealKey> {
        let path = root.join("engine.key");
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(32));
                f.read_to_end(&mut bytes)
                    .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    // Never made anew: namespace passwords are sealed under this key.
                    Error::corrupt(
                        path.display().to_string(),
                        format!(
                            "the engine key is {} bytes, not 32: put back the file from a backup \
                             (`qsfs` never writes a key over one that exists)",
                            bytes.len()
                        ),
                    )
                })?;
                Ok(SealKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                SealKey::store(root, &key)?;
                Ok(SealKey(key))
            }
            Err(e) => Err(Error::io(format!("open {}", path.display()), e)),
        }
    }

    /// Writes `key` as `engine.key` of `root` (0600, synced, atomically).
    pub fn store(root: &Path, key: &[u8; 32]) -> Result<()> {
        let path = root.join("engine.key");
        let tmp = root.join("engine.key.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        f.write_all(key)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| Error::io(format!("rename {}", path.display()), e))?;
        crate::segment::sync_dir(root).map_err(|e| Error::io("sync engine directory", e))
    }

    /// The key material, for a backup of the engine ([`crate::Engine::export_seal_key`]).
    pub fn export(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(self.0.to_vec())
    }
}

/// A stored password: hash for plain checks, sealed copy for challenge checks.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct PasswordRecord {
    /// argon2id PHC string.
    phc: String,
    /// 12-byte nonce followed by the AES-256-GCM-SIV ciphertext of the password.
    sealed: Vec<u8>,
}

impl std::fmt::Debug for PasswordRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordRecord(..)")
    }
}

fn hasher() -> Argon2<'static> {
    // Modest parameters: SELECT checks a password per connection, and 0-db passwords are short
    // shared secrets that the sealed copy protects anyway.
    let params = Params::new(4096, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl PasswordRecord {
    /// Hashes and seals `password` for namespace `ns`.
    pub fn new(password: &str, ns: &str, key: &SealKey) -> Result<PasswordRecord> {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt)
            .map_err(|e| Error::InvalidArgument(format!("salt: {e}")))?;
        let phc = hasher()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| Error::InvalidArgument(format!("cannot hash password: {e}")))?
            .to_string();
        let cipher = Aes256GcmSiv::new_from_slice(&key.0)
            .map_err(|_| Error::InvalidArgument("bad key".into()))?;
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: password.as_bytes(),
                    aad: ns.as_bytes(),
                },
            )
            .map_err(|_| Error::InvalidArgument("cannot seal password".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ct);
        Ok(PasswordRecord { phc, sealed })
    }

    /// True if `password` is the password.
    pub fn verify_plain(&self, password: &str) -> bool {
        match PasswordHash::new(&self.phc) {
            Ok(h) => hasher().verify_password(password.as_bytes(), &h).is_ok(),
            Err(_) => false,
        }
    }

    /// True if `digest` is the lowercase hex SHA-1 of `nonce ":" password` (0-db SECURE).
    pub fn verify_challenge(
        &self,
        ns: &str,
        key: &SealKey,
        nonce: &str,
        digest: &str,
    ) -> Result<bool> {
        if self.sealed.len() < 12 {
            return Err(Error::corrupt(
                format!("namespace {ns} descriptor"),
                "sealed password too short",
            ));
        }
        let cipher = Aes256GcmSiv::new_from_slice(&key.0)
            .map_err(|_| Error::InvalidArgument("bad key".into()))?;
        let (n, ct) = self.sealed.split_at(12);
        let n = Nonce::try_from(n).map_err(|_| {
            Error::corrupt(
                format!("namespace {ns} descriptor"),
                "sealed password nonce",
            )
        })?;
        let password = cipher
            .decrypt(
                &n,
                Payload {
                    msg: ct,
                    aad: ns.as_bytes(),
                },
            )
            .map_err(|_| {
                Error::corrupt(
                    format!("namespace {ns} descriptor"),
                    "sealed password does not open with engine.key (key file replaced?)",
                )
            })?;
        let mut h = Sha1::new();
        h.update(nonce.as_bytes());
        h.update(b":");
        h.update(&password);
        let expected = hex::encode(h.finalize());
        Ok(constant_time_eq(
            expected.as_bytes(),
            digest.to_ascii_lowercase().as_bytes(),
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_challenge() {
        let dir = tempfile::tempdir().unwrap();
        let key = SealKey::load_or_create(dir.path()).unwrap();
        let rec = PasswordRecord::new("s3cret", "ns1", &key).unwrap();
        assert!(rec.verify_plain("s3cret"));
        assert!(!rec.verify_plain("s3cre"));
        let mut h = Sha1::new();
        h.update(b"0011223344556677:s3cret");
        let digest = hex::encode(h.finalize());
        assert!(rec
            .verify_challenge("ns1", &key, "0011223344556677", &digest)
            .unwrap());
        assert!(!rec
            .verify_challenge("ns1", &key, "0011223344556678", &digest)
            .unwrap());
        // Bound to the namespace name.
        assert!(rec
            .verify_challenge("ns2", &key, "0011223344556677", &digest)
            .is_err());
        // Nothing readable on disk: neither the password nor its bytes appear in the record.
        let bytes = postcard::to_stdvec(&rec).unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"s3cret"));
        // The key file is private and stable.
        let again = SealKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.0, key.0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("engine.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
