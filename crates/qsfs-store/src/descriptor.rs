//! The namespace descriptor: the persisted properties of one namespace.
//!
//! Stored as `ns/<name>/namespace`: magic `QSFSNS01`, a little-endian `u32` body length, the body
//! (postcard encoding of [`Descriptor`]) and a crc32c of everything before it. Rewritten whole,
//! atomically (temporary file, fsync, rename, directory fsync), so a cleared password leaves no
//! bytes behind and a crash leaves the old or the new descriptor, never a mixture.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use qsfs_core::{Error, Mode, Result};

use crate::password::PasswordRecord;

const MAGIC: [u8; 8] = *b"QSFSNS01";
/// File name of the descriptor inside a namespace directory.
pub(crate) const DESCRIPTOR_FILE: &str = "namespace";

/// Persisted properties of a namespace. Lock and freeze are deliberately absent: they do not
/// survive a restart (0-db behaviour).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Descriptor {
    /// The namespace name (checked against the directory name on open).
    pub name: String,
    /// Key mode.
    pub mode: Mode,
    /// Readable without password.
    pub public: bool,
    /// Write-once.
    pub worm: bool,
    /// Cap on live value bytes (0 = none).
    pub max_size: u64,
    /// Password, hashed and sealed.
    pub password: Option<PasswordRecord>,
    /// Sealed segments whose local file was removed after they were copied to the cold tier,
    /// with their length in bytes.
    pub offloaded: BTreeMap<u32, u64>,
    /// After a flush: sequence numbers, id slots and segment ids continue from here.
    pub seqno_floor: u64,
    /// See `seqno_floor`.
    pub slot_floor: u64,
    /// See `seqno_floor`.
    pub segment_floor: u32,
}

impl Descriptor {
    /// A fresh descriptor with 0-db's defaults (public, no password, no limit).
    pub fn new(name: &str, mode: Mode) -> Descriptor {
        Descriptor {
            name: name.to_string(),
            mode,
            public: true,
            worm: false,
            max_size: 0,
            password: None,
            offloaded: BTreeMap::new(),
            seqno_floor: 0,
            slot_floor: 0,
            segment_floor: 0,
        }
    }

    /// Writes the descriptor atomically into `dir`.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let body = postcard::to_stdvec(self)
            .map_err(|e| Error::InvalidArgument(format!("descriptor: {e}")))?;
        let mut data = Vec::with_capacity(body.len() + 16);
        data.extend_from_slice(&MAGIC);
        data.extend_from_slice(&(body.len() as u32).to_le_bytes());
        data.extend_from_slice(&body);
        let crc = crc32c::crc32c(&data);
        data.extend_from_slice(&crc.to_le_bytes());
        let tmp = dir.join("namespace.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, dir.join(DESCRIPTOR_FILE))?;
            crate::segment::sync_dir(dir)
        };
        write().map_err(|e| Error::io(format!("write descriptor in {}", dir.display()), e))
    }

    /// Reads the descriptor of `dir`. `Ok(None)` if there is none (not our directory).
    pub fn load(dir: &Path) -> Result<Option<Descriptor>> {
        let path = dir.join(DESCRIPTOR_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        let bad = |d: &str| Error::corrupt(path.display().to_string(), d.to_string());
        if data.len() < 16 || data[0..8] != MAGIC {
            return Err(bad("not a qsfs namespace descriptor"));
        }
        let len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
        if data.len() != 12 + len + 4 {
            return Err(bad("descriptor length mismatch"));
        }
        let stored = u32::from_le_bytes([
            data[12 + len],
            data[13 + len],
            data[14 + len],
            data[15 + len],
        ]);
        if crc32c::crc32c(&data[..12 + len]) != stored {
            return Err(bad("descriptor checksum mismatch"));
        }
        let d: Descriptor = postcard::from_bytes(&data[12..12 + len])
            .map_err(|e| bad(&format!("descriptor: {e}")))?;
        Ok(Some(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Descriptor::load(dir.path()).unwrap().is_none());
        let mut d = Descriptor::new("photos", Mode::Seq);
        d.worm = true;
        d.max_size = 77;
        d.offloaded.insert(3, 4096);
        d.store(dir.path()).unwrap();
        let back = Descriptor::load(dir.path()).unwrap().unwrap();
        assert_eq!(
            (back.name.as_str(), back.mode, back.worm, back.max_size),
            ("photos", Mode::Seq, true, 77)
        );
        assert_eq!(back.offloaded.get(&3), Some(&4096));
        let p = dir.path().join(DESCRIPTOR_FILE);
        let mut raw = std::fs::read(&p).unwrap();
        raw[13] ^= 0xff;
        std::fs::write(&p, raw).unwrap();
        assert!(matches!(
            Descriptor::load(dir.path()),
            Err(Error::Corrupt { .. })
        ));
    }
}
