//! Keys and authenticated encryption.
//!
//! Key hierarchy (restic-like, so a passphrase change re-wraps one key and re-encrypts nothing):
//!
//! ```text
//! passphrase ──Argon2id(salt, params)──► KEK ─┐       (or a raw 32-byte key: 0-stor v2 hex key)
//!                                             └─unwraps─► master key (random, in the repository's
//!                                                         public config, wrapped)
//! master ──HMAC-SHA256(label)──► wrap key  (wraps each object's random data key)
//!                          ├──► meta key  (encrypts metadata records)
//!                          └──► name key  (keyed hash of paths → record keys)
//! ```
//!
//! Every cipher is AES-256-GCM-SIV: misuse resistant, so even a repeated nonce only reveals that
//! two identical messages were sealed, never the key. Key material lives in [`Zeroizing`]
//! buffers and has redacted `Debug` output.

use aes_gcm_siv::aead::{Aead, AeadInOut, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{BackupError, Result};
use qsfs_core::Error;

/// Length of every key.
pub const KEY_LEN: usize = 32;
/// Length of an AES-GCM-SIV nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM-SIV tag.
pub const TAG_LEN: usize = 16;

/// A 32-byte secret that is wiped on drop and never printed.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SecretKey(Zeroizing::new(bytes))
    }

    /// A fresh random key from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut k[..]);
        SecretKey(k)
    }

    /// Parses 64 hex characters (the 0-stor v2 config format). The error never echoes the input.
    pub fn from_hex(hex_str: &str) -> Result<Self> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(hex_str.trim(), &mut k[..]).map_err(|_| {
            BackupError::Config("encryption key must be 64 hex characters (value not shown)".into())
        })?;
        Ok(SecretKey(k))
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A sub-key for one purpose: HMAC-SHA256(self, label).
    pub fn derive(&self, label: &str) -> SecretKey {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..])
            .expect("HMAC accepts any key length");
        mac.update(label.as_bytes());
        let out = mac.finalize().into_bytes();
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(&out);
        SecretKey(k)
    }

    fn cipher(&self) -> Aes256GcmSiv {
        Aes256GcmSiv::new_from_slice(&self.0[..]).expect("32-byte key")
    }

    /// Seals `plain` with a random nonce: `nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        let ct = self
            .cipher()
            .encrypt(&Nonce::from(nonce), Payload { msg: plain, aad })
            .expect("AES-GCM-SIV encryption of an in-memory buffer cannot fail");
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`SecretKey::seal`] produced. `None` if the tag does not verify (wrong key, other
    /// associated data, or modified bytes) or the input is too short.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).ok()?;
        self.cipher()
            .decrypt(&nonce, Payload { msg: ct, aad })
            .ok()
            .map(Zeroizing::new)
    }

    /// Encrypts `buf` in place with an explicit nonce, appending the tag.
    pub fn seal_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) {
        self.cipher()
            .encrypt_in_place(&Nonce::from(*nonce), aad, buf)
            .expect("AES-GCM-SIV encryption of an in-memory buffer cannot fail");
    }

    /// Decrypts `buf` (ciphertext ‖ tag) in place; `false` if it does not authenticate.
    pub fn open_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> bool {
        self.cipher()
            .decrypt_in_place(&Nonce::from(*nonce), aad, buf)
            .is_ok()
    }
}

/// Argon2id cost parameters, stored in clear with the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about a quarter second on a laptop core.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// Where the key-encryption key comes from.
#[derive(Clone)]
pub enum KeySource {
    /// A passphrase stretched with Argon2id.
    Passphrase(Zeroizing<String>),
    /// A raw 32-byte key (for example a 0-stor v2 config's hex key).
    Raw(SecretKey),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Passphrase(_) => f.write_str("KeySource::Passphrase(<redacted>)"),
            KeySource::Raw(_) => f.write_str("KeySource::Raw(<redacted>)"),
        }
    }
}

impl KeySource {
    /// A passphrase source.
    pub fn passphrase(p: impl Into<String>) -> Self {
        KeySource::Passphrase(Zeroizing::new(p.into()))
    }

    fn kek(&self, kdf: Option<&KdfHeader>) -> Result<SecretKey> {
        match (self, kdf) {
            (KeySource::Raw(k), _) => Ok(k.clone()),
            (KeySource::Passphrase(p), Some(h)) => {
                let params = argon2::Params::new(
                    h.params.memory_kib,
                    h.params.iterations,
                    h.params.parallelism,
                    Some(KEY_LEN),
                )
                .map_err(|e| BackupError::Config(format!("bad Argon2id parameters: {e}")))?;
                let a = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    params,
                );
                let mut out = Zeroizing::new([0u8; KEY_LEN]);
                a.hash_password_into(p.as_bytes(), &h.salt, &mut out[..])
                    .map_err(|e| BackupError::Config(format!("Argon2id failed: {e}")))?;
                Ok(SecretKey(out))
            }
            (KeySource::Passphrase(_), None) => Err(BackupError::Config(
                "this repository was created with a raw key; a passphrase cannot open it".into(),
            )
            .into()),
        }
    }
}

/// Salt and cost of the passphrase KDF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfHeader {
    /// Argon2id costs.
    pub params: KdfParams,
    /// Random salt.
    pub salt: [u8; 16],
}

/// The repository's public configuration, stored in clear (JSON) on every metadata backend. It
/// holds nothing secret: the master key in it is wrapped by the key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoHeader {
    /// Format version ([`REPO_FORMAT`] for new repositories).
    pub format: u32,
    /// Random identifier of the repository, bound into every metadata record.
    pub repo_id: [u8; 16],
    /// KDF parameters when the key source is a passphrase.
    pub kdf: Option<KdfHeader>,
    /// `nonce ‖ AES-GCM-SIV(KEK, master key) ‖ tag`.
    pub wrapped_master: Vec<u8>,
}

/// Repository format of new repositories: 2 = every record's newest version is also kept
/// under a fixed key (`metadata.rs`), so a lookup needs no listing. Format 1 repositories are
/// still opened (and looked up by listing); programs that know only format 1 refuse format 2.
pub const REPO_FORMAT: u32 = 2;

/// The header's associated data; from format 2 on it binds the format too, so a header
/// relabelled to another format does not unlock.
fn header_aad(format: u32, repo_id: &[u8; 16]) -> Vec<u8> {
    let mut aad = match format {
        1 => b"qsfs-master-v1".to_vec(),
        f => format!("qsfs-master-v{f}").into_bytes(),
    };
    aad.extend_from_slice(repo_id);
    aad
}

impl RepoHeader {
    /// Creates a repository: a random master key wrapped under `source`.
    pub fn create(source: &KeySource, params: KdfParams) -> Result<(RepoHeader, Keys)> {
        let mut repo_id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut repo_id);
        let kdf = match source {
            KeySource::Passphrase(_) => {
                let mut salt = [0u8; 16];
                rand::rngs::OsRng.fill_bytes(&mut salt);
                Some(KdfHeader { params, salt })
            }
            KeySource::Raw(_) => None,
        };
        let kek = source.kek(kdf.as_ref())?;
        let master = SecretKey::random();
        let wrapped_master = kek.seal(&header_aad(REPO_FORMAT, &repo_id), &master.0[..]);
        let header = RepoHeader {
            format: REPO_FORMAT,
            repo_id,
            kdf,
            wrapped_master,
        };
        Ok((header, Keys::from_master(&master, repo_id)))
    }

    /// Unwraps the master key; [`BackupError::WrongKey`] if `source` is not the right secret.
    pub fn unlock(&self, source: &KeySource) -> Result<Keys> {
        if !(1..=REPO_FORMAT).contains(&self.format) {
            return Err(
                BackupError::Config(format!("unknown repository format {}", self.format)).into(),
            );
        }
        let kek = source.kek(self.kdf.as_ref())?;
        let plain = kek
            .open(
                &header_aad(self.format, &self.repo_id),
                &self.wrapped_master,
            )
            .ok_or(BackupError::WrongKey)?;
        let bytes: [u8; KEY_LEN] = plain[..].try_into().map_err(|_| BackupError::WrongKey)?;
        Ok(Keys::from_master(
            &SecretKey::from_bytes(bytes),
            self.repo_id,
        ))
    }

    /// Re-wraps the master key under a new secret; nothing else changes.
    pub fn rewrap(
        &self,
        old: &KeySource,
        new: &KeySource,
        params: KdfParams,
    ) -> Result<RepoHeader> {
        let kek = old.kek(self.kdf.as_ref())?;
        let master = kek
            .open(
                &header_aad(self.format, &self.repo_id),
                &self.wrapped_master,
            )
            .ok_or(BackupError::WrongKey)?;
        let kdf = match new {
            KeySource::Passphrase(_) => {
                let mut salt = [0u8; 16];
                rand::rngs::OsRng.fill_bytes(&mut salt);
                Some(KdfHeader { params, salt })
            }
            KeySource::Raw(_) => None,
        };
        let new_kek = new.kek(kdf.as_ref())?;
        let wrapped_master = new_kek.seal(&header_aad(self.format, &self.repo_id), &master);
        Ok(RepoHeader {
            format: self.format,
            repo_id: self.repo_id,
            kdf,
            wrapped_master,
        })
    }

    /// Encodes as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a header always serialises")
    }

    /// Decodes JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt("repository header", e.to_string()))
    }
}

/// The working keys of an open repository.
#[derive(Clone, Debug)]
pub struct Keys {
    /// Wraps per-object data keys.
    wrap: SecretKey,
    /// Encrypts metadata records.
    pub(crate) meta: SecretKey,
    /// Keys the path hash.
    name: SecretKey,
    /// The repository id, bound into every record.
    pub(crate) repo_id: [u8; 16],
}

impl Keys {
    fn from_master(master: &SecretKey, repo_id: [u8; 16]) -> Self {
        Keys {
            wrap: master.derive("qsfs wrap v1"),
            meta: master.derive("qsfs meta v1"),
            name: master.derive("qsfs name v1"),
            repo_id,
        }
    }

    /// Keyed hash of an object name (32 hex chars): the record key reveals nothing about the path.
    pub fn name_hash(&self, name: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.name.0[..]).expect("any key length");
        mac.update(name.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Wraps a fresh data key for object `object_id`.
    pub fn wrap_data_key(&self, key: &SecretKey, object_id: &[u8; 16]) -> Vec<u8> {
        self.wrap.seal(object_id, &key.0[..])
    }

    /// Unwraps an object's data key.
    pub fn unwrap_data_key(
        &self,
        wrapped: &[u8],
        object_id: &[u8; 16],
        object: &str,
    ) -> Result<SecretKey> {
        let plain = self
            .wrap
            .open(object_id, wrapped)
            .ok_or_else(|| BackupError::Tampered {
                what: format!("data key of {object}"),
                detail: "does not unwrap under the repository key".into(),
            })?;
        let bytes: [u8; KEY_LEN] = plain[..].try_into().map_err(|_| BackupError::Tampered {
            what: format!("data key of {object}"),
            detail: "wrong length".into(),
        })?;
        Ok(SecretKey::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> KdfParams {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn passphrase_unlocks_and_wrong_one_does_not() {
        let (h, keys) =
            RepoHeader::create(&KeySource::passphrase("correct horse"), cheap()).expect("create");
        let again = RepoHeader::from_json(&h.to_json())
            .expect("json")
            .unlock(&KeySource::passphrase("correct horse"));
        assert_eq!(again.expect("unlock").name_hash("/a"), keys.name_hash("/a"));
        let wrong = h.unlock(&KeySource::passphrase("wrong"));
        assert!(
            matches!(wrong, Err(Error::PermissionDenied(_))),
            "{wrong:?}"
        );
    }

    #[test]
    fn rewrap_keeps_the_master_key() {
        let old = KeySource::passphrase("one");
        let (h, keys) = RepoHeader::create(&old, cheap()).expect("create");
        let new = KeySource::Raw(SecretKey::random());
        let h2 = h.rewrap(&old, &new, cheap()).expect("rewrap");
        assert_eq!(
            h2.unlock(&new).expect("new unlocks").name_hash("x"),
            keys.name_hash("x")
        );
        assert!(h2.unlock(&old).is_err());
    }

    /// A header of the first format still unlocks; a header relabelled to another format
    /// does not (the format decides how records are looked up, so it is authenticated).
    #[test]
    fn the_format_is_bound_into_the_header() {
        let source = KeySource::Raw(SecretKey::random());
        let (h2, keys) = RepoHeader::create(&source, cheap()).expect("create");
        assert_eq!(h2.format, REPO_FORMAT);
        let kek = source.kek(None).expect("kek");
        let master = kek
            .open(&header_aad(2, &h2.repo_id), &h2.wrapped_master)
            .expect("format 2 wrapping");
        let h1 = RepoHeader {
            format: 1,
            wrapped_master: kek.seal(&header_aad(1, &h2.repo_id), &master),
            ..h2.clone()
        };
        assert_eq!(
            h1.unlock(&source).expect("format 1").name_hash("x"),
            keys.name_hash("x")
        );
        for (h, relabelled) in [(&h1, 2), (&h2, 1)] {
            let forged = RepoHeader {
                format: relabelled,
                ..h.clone()
            };
            assert!(forged.unlock(&source).is_err(), "format {relabelled}");
        }
        let future = RepoHeader {
            format: REPO_FORMAT + 1,
            ..h2
        };
        assert!(future.unlock(&source).is_err());
    }

    #[test]
    fn data_keys_bound_to_object() {
        let (_, keys) =
            RepoHeader::create(&KeySource::Raw(SecretKey::random()), cheap()).expect("create");
        let dk = SecretKey::random();
        let w = keys.wrap_data_key(&dk, &[1; 16]);
        assert_eq!(
            keys.unwrap_data_key(&w, &[1; 16], "o")
                .expect("unwrap")
                .expose(),
            dk.expose()
        );
        assert!(keys.unwrap_data_key(&w, &[2; 16], "o").is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let k = SecretKey::from_bytes([0xab; 32]);
        assert!(!format!("{k:?}").contains("ab"));
        assert!(!format!("{:?}", KeySource::passphrase("hunter2")).contains("hunter2"));
        assert!(SecretKey::from_hex("zz")
            .expect_err("bad")
            .to_string()
            .contains("not shown"));
    }
}
