//! What [`super::check`] does with a record it cannot use: one whose bytes fail the store's
//! checksum (`get` answers [`Error::Corrupt`]) or that does not decode.
//!
//! The store is append-only, so the versions before a damaged one are usually still on disk:
//! [`older_intact`] walks them (through [`Store::version_before`], which reads record headers,
//! not the damaged value) and returns the newest one that reads intact and decodes. When none
//! does, [`rebuild`] makes a minimal inode from what the rest of the layout still says of it.

use std::collections::HashMap;

use qsfs_core::{Error, Result, Store, Timestamp};

use serde::de::DeserializeOwned;

use crate::layout::{decode, decode_dirent, Body, Dirent, Inode, Kind, ROOT_INO};

/// Older versions looked at before giving up. The newest intact one is what a salvage wants;
/// the bound keeps a key rewritten many times from costing a walk of its whole history.
const MAX_VERSIONS: usize = 64;

/// A live record as [`read_all`] found it.
pub(super) enum Read {
    /// Its value, read intact by the store (it may still fail to decode).
    Value(Vec<u8>),
    /// The store's error for it, which names where the damage is.
    Damaged(String),
}

impl Read {
    /// The record decoded, or why it cannot be used (the store's damage, or the decode error;
    /// `what` names it).
    pub(super) fn decoded<T: DeserializeOwned>(self, what: &str) -> std::result::Result<T, String> {
        match self {
            Read::Value(v) => decode::<T>(&v, what).map_err(|e| e.to_string()),
            Read::Damaged(why) => Err(why),
        }
    }

    /// The dirent record of `name` decoded ([`decode_dirent`]), or why it cannot be used.
    pub(super) fn dirent(&self, name: &[u8], what: &str) -> std::result::Result<Dirent, String> {
        match self {
            Read::Value(v) => decode_dirent(name, v, what).map_err(|e| e.to_string()),
            Read::Damaged(why) => Err(why.clone()),
        }
    }
}

/// True for an error about one record's bytes, which fsck reports before going on. Anything
/// else (an I/O error, a store that is down) is about the whole check and aborts it.
pub(super) fn is_record_damage(e: &Error) -> bool {
    matches!(e, Error::Corrupt { .. })
}

/// Every live key of `ns` with its value or its damage (`get` may find a key gone between scan
/// and get: then it is left out).
pub(super) fn read_all(store: &dyn Store, ns: &str) -> Result<Vec<(Vec<u8>, Read)>> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.scan(ns, cursor.as_ref(), 1024, Default::default())?;
        for m in page.entries {
            match store.get(ns, &m.key) {
                Ok(Some(e)) => out.push((m.key, Read::Value(e.value))),
                Ok(None) => {}
                Err(e) if is_record_damage(&e) => out.push((m.key, Read::Damaged(e.to_string()))),
                Err(e) => return Err(e),
            }
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// An intact older version of a record, decoded.
pub(super) struct Older<T> {
    /// The decoded value.
    pub value: T,
    /// When that version was written.
    pub timestamp: Timestamp,
}

/// The newest version of `key` before the live one that the store reads intact and `decode`
/// accepts. The walk stops at a tombstone (what lies before it belonged to an earlier life of
/// the key, e.g. a name since deleted and created again), at a link the store no longer holds
/// (compaction dropped it) or at a damaged record header (its link cannot be trusted).
pub(super) fn older_intact<T>(
    store: &dyn Store,
    ns: &str,
    key: &[u8],
    decode: impl Fn(&[u8]) -> Option<T>,
) -> Result<Option<Older<T>>> {
    let mut at = None;
    for _ in 0..MAX_VERSIONS {
        let prev = match store.version_before(ns, key, at) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(e) if is_record_damage(&e) || is_end_of_history(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match store.history(ns, key, Some(prev)) {
            Ok(v) if v.deleted => return Ok(None),
            Ok(v) => {
                if let Some(value) = decode(&v.value) {
                    return Ok(Some(Older {
                        value,
                        timestamp: v.timestamp,
                    }));
                }
            }
            Err(e) if is_record_damage(&e) => {}
            Err(e) if is_end_of_history(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        at = Some(prev);
    }
    Ok(None)
}

/// The store's answers for a version it no longer holds (or a key deleted meanwhile).
fn is_end_of_history(e: &Error) -> bool {
    matches!(e, Error::NotFound(_) | Error::InvalidArgument(_))
}

/// What the layout still says of an inode whose record is lost.
pub(super) struct Clues {
    /// The kind a dirent naming it records.
    pub named_as: Option<Kind>,
    /// The directory a dirent naming it is in.
    pub parent: Option<u64>,
    /// Owner and group of that directory (`0:0` if unknown).
    pub owner: (u32, u32),
    /// Listing pages are stored under its number.
    pub has_pages: bool,
}

/// A minimal inode for `ino` from `clues`, or `None` for a symlink: its target was only in the
/// lost record, and any target made up could resolve to a real file (wrong data, silently).
///
/// The kind is what a dirent says; else a directory if it has listing pages, else a file (its
/// blocks, if any, are its data). Mode: 0600 for files and special files, 0700 for directories
/// (the root: 0755, as a fresh filesystem's), never setuid/setgid/sticky: the real permissions
/// are lost, and a guess wider than them could show a file to users who never could read it,
/// while one narrower only takes its owner a `chmod`. Owner and group are the directory's
/// (the best guess there is; the root's are 0:0). Times are now. Link count, size, the
/// directory's counts and the file's chunk list are left for the passes that reconcile every
/// inode with the dirents, pages and blocks. A device comes back as device 0 (nothing opens).
pub(super) fn rebuild(ino: u64, clues: &Clues) -> Option<Inode> {
    let kind = if ino == ROOT_INO {
        Kind::Dir
    } else if let Some(k) = clues.named_as {
        k
    } else if clues.has_pages {
        Kind::Dir
    } else {
        Kind::File
    };
    let (perm, (uid, gid)) = match kind {
        Kind::Symlink => return None,
        Kind::Dir if ino == ROOT_INO => (0o755, (0, 0)),
        Kind::Dir => (0o700, clues.owner),
        _ => (0o600, clues.owner),
    };
    let body = match kind {
        Kind::File => Body::File {
            chunks: Default::default(),
            blocks: 0,
        },
        Kind::Dir => Body::Dir {
            parent: clues.parent.unwrap_or(ROOT_INO),
            entries: 0,
            tail_page: 0,
            tail_used: 0,
        },
        _ => Body::Special,
    };
    Some(Inode::new(kind, perm, uid, gid, body))
}

/// `ts` (seconds since the epoch) as `YYYY-MM-DD hh:mm:ss UTC`.
pub(super) fn utc(ts: Timestamp) -> String {
    let secs = ts % 86_400;
    let (y, m, d) = civil_from_days((ts / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a day number.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The path of `ino` from the root through `names` (inode -> the directory and name of one of
/// its names), or `inode N` when no name reaches it from the root.
pub(super) fn path_of(ino: u64, names: &HashMap<u64, (u64, Vec<u8>)>) -> String {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut at = ino;
    // Bounded: a cycle has been cut by now, but a path is not worth a hang.
    for _ in 0..4096 {
        if at == ROOT_INO {
            let mut out = String::new();
            for p in parts.iter().rev() {
                out.push('/');
                out.push_str(&String::from_utf8_lossy(p));
            }
            return if out.is_empty() { "/".into() } else { out };
        }
        let Some((parent, name)) = names.get(&at) else {
            break;
        };
        parts.push(name);
        at = *parent;
    }
    format!("inode {ino}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_827_696), "2000-02-29 12:34:56 UTC");
        assert_eq!(utc(1_796_083_200), "2026-12-01 00:00:00 UTC");
    }

    #[test]
    fn rebuilt_inodes_are_safe_and_symlinks_are_not_made_up() {
        let clues = |named_as, has_pages| Clues {
            named_as,
            parent: Some(7),
            owner: (1000, 100),
            has_pages,
        };
        let file = rebuild(9, &clues(Some(Kind::File), false)).unwrap();
        assert_eq!(
            (file.kind, file.perm, file.uid, file.gid),
            (Kind::File, 0o600, 1000, 100)
        );
        let dir = rebuild(9, &clues(None, true)).unwrap();
        assert_eq!((dir.kind, dir.perm), (Kind::Dir, 0o700));
        assert!(matches!(dir.body, Body::Dir { parent: 7, .. }));
        let unnamed = rebuild(9, &clues(None, false)).unwrap();
        assert_eq!(unnamed.kind, Kind::File);
        let root = rebuild(ROOT_INO, &clues(None, false)).unwrap();
        assert_eq!((root.kind, root.perm, root.uid), (Kind::Dir, 0o755, 0));
        let fifo = rebuild(9, &clues(Some(Kind::Fifo), false)).unwrap();
        assert_eq!((fifo.perm, fifo.body), (0o600, Body::Special));
        assert!(rebuild(9, &clues(Some(Kind::Symlink), false)).is_none());
    }

    #[test]
    fn paths_climb_to_the_root_or_name_the_inode() {
        let names = HashMap::from([
            (5, (ROOT_INO, b"d".to_vec())),
            (6, (5, b"f".to_vec())),
            (8, (77, b"x".to_vec())),
        ]);
        assert_eq!(path_of(6, &names), "/d/f");
        assert_eq!(path_of(ROOT_INO, &names), "/");
        assert_eq!(path_of(8, &names), "inode 8");
    }
}
