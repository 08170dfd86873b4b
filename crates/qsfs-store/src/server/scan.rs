//! Scanning and history: SCAN, SCANX, RSCAN, KEYCUR, HISTORY.

use bytes::Bytes;
use qsfs_core::{Cursor, Error, ScanOrder, VersionId};

use super::dispatch::{frozen, Shared};
use super::resp::Reply;
use super::session::Session;

/// Cursor length on the wire (0-db clients check it).
pub const CURSOR_LEN: usize = 17;
/// The cursor handed out when a page reached the end and the store gave no resume point: a scan
/// resumed from it answers `No more data`.
const END_CURSOR: [u8; CURSOR_LEN] = [0xff; CURSOR_LEN];

/// SCAN / RSCAN.
pub fn scan(sh: &Shared, s: &mut Session, cursor: Option<&[u8]>, reverse: bool) -> Reply {
    if let Some(r) = frozen(s) {
        return r;
    }
    let cursor = match cursor {
        None => None,
        Some(c) if c.len() != CURSOR_LEN => return Reply::err("Invalid key format"),
        Some(c) if c == END_CURSOR => return Reply::err("No more data"),
        Some(c) => Some(Cursor(c.to_vec())),
    };
    let order = if reverse {
        ScanOrder::Reverse
    } else {
        ScanOrder::Forward
    };
    let page = match sh
        .store
        .scan(&s.ns.name, cursor.as_ref(), sh.config.scan_batch, order)
    {
        Ok(p) => p,
        Err(Error::InvalidArgument(_) | Error::Corrupt { .. } | Error::NotFound(_)) => {
            return Reply::err("Invalid key format")
        }
        Err(e) => {
            tracing::warn!(error = %e, "SCAN failed");
            return Reply::err("Internal Error");
        }
    };
    let Some(last) = page.entries.last() else {
        return Reply::err("No more data");
    };
    let next = match page.next {
        Some(c) => c.0,
        None => match sh.store.cursor_after(&s.ns.name, &last.key) {
            Ok(c) => c.0,
            Err(_) => END_CURSOR.to_vec(),
        },
    };
    let entries = page
        .entries
        .into_iter()
        .map(|m| {
            Reply::Array(vec![
                Reply::bulk(m.key),
                Reply::Int(m.length as i64),
                // The original prints the u32 timestamp as a signed int.
                Reply::Int(i64::from(m.timestamp as u32 as i32)),
            ])
        })
        .collect();
    Reply::Array(vec![Reply::bulk(next), Reply::Array(entries)])
}

/// KEYCUR: a cursor that resumes after `key`.
pub fn keycur(sh: &Shared, s: &mut Session, key: &[u8]) -> Reply {
    if let Some(r) = frozen(s) {
        return r;
    }
    match sh.store.cursor_after(&s.ns.name, key) {
        Ok(c) => Reply::bulk(c.0),
        Err(Error::NotFound(_) | Error::InvalidArgument(_)) => Reply::err("Key not found"),
        Err(e) => {
            tracing::warn!(error = %e, "KEYCUR failed");
            Reply::err("Internal Error")
        }
    }
}

/// HISTORY key [ekey]. Unlike the original, the 3-argument form only reaches versions that
/// belong to `key` (the store checks the ekey against the key's own chain).
pub fn history(sh: &Shared, s: &mut Session, key: &[u8], ekey: Option<&[u8]>) -> Reply {
    if let Some(r) = frozen(s) {
        return r;
    }
    let at = match ekey {
        None => None,
        Some(e) if e.len() != 8 => return Reply::err("Invalid arguments"),
        Some(_) if key.is_empty() => return Reply::err("Invalid arguments (invalid key)"),
        Some(e) if e.iter().all(|&b| b == 0) => return Reply::err("No more history"),
        Some(e) => {
            let mut id = [0u8; 8];
            id.copy_from_slice(e);
            Some(VersionId(id))
        }
    };
    match sh.store.history(&s.ns.name, key, at) {
        Ok(v) => Reply::Array(vec![
            v.previous
                .map_or(Reply::Nil, |p| Reply::bulk(Bytes::copy_from_slice(&p.0))),
            Reply::bulk(v.timestamp.to_string()),
            Reply::bulk(v.value),
        ]),
        Err(Error::NotFound(_)) if at.is_none() => Reply::err("Key not found"),
        Err(Error::InvalidArgument(_)) if at.is_none() => Reply::err("Key not found"),
        Err(Error::NotFound(_)) => Reply::err("Invalid arguments (index query)"),
        Err(Error::InvalidArgument(_)) => Reply::err("Invalid arguments (invalid key)"),
        Err(e @ Error::Corrupt { .. }) => {
            tracing::warn!(error = %e, "HISTORY: damaged version");
            // The record header (with its link to the older version) is checked apart from the
            // payload: when it still reads, a checker can go on to the older, intact versions.
            match sh.store.version_before(&s.ns.name, key, at) {
                Ok(previous) => Reply::err(history_damaged(previous)),
                Err(Error::Corrupt { .. }) => Reply::err(HISTORY_DAMAGED_HEADER),
                Err(_) => Reply::err("Internal Error"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "HISTORY failed");
            Reply::err("Internal Error")
        }
    }
}

/// HISTORY's error for a version whose record header fails its checksum: its link to the older
/// versions cannot be trusted, so none is given.
pub const HISTORY_DAMAGED_HEADER: &str = "Internal Error (damaged record)";

/// True for HISTORY's errors about a damaged version ([`history_damaged`],
/// [`HISTORY_DAMAGED_HEADER`]), as opposed to a read that failed.
pub fn is_history_damaged(msg: &str) -> bool {
    msg == HISTORY_DAMAGED_HEADER || parse_history_damaged(msg).is_some()
}

/// The start of HISTORY's error for a version whose payload fails its checksum.
const HISTORY_DAMAGED: &str = "Internal Error (damaged payload, previous ";

/// HISTORY's error for a version whose payload fails its checksum but whose record header reads:
/// the original's `Internal Error`, with the reason and the ekey of the version before it (16
/// hex digits of the 8 ekey bytes in wire order, or `none` at the end of the chain). An error,
/// not a reply carrying the damaged bytes or a nil payload, so that a client that knows nothing
/// of it fails as it would on the original's `Internal Error` instead of reading a wrong value.
pub fn history_damaged(previous: Option<VersionId>) -> String {
    let prev = match previous {
        Some(v) => v.0.iter().map(|b| format!("{b:02x}")).collect(),
        None => "none".to_string(),
    };
    format!("{HISTORY_DAMAGED}{prev})")
}

/// Reads a [`history_damaged`] error back: `Some(previous)` for one, `None` for any other error.
pub fn parse_history_damaged(msg: &str) -> Option<Option<VersionId>> {
    let prev = msg.strip_prefix(HISTORY_DAMAGED)?.strip_suffix(')')?;
    if prev == "none" {
        return Some(None);
    }
    if prev.len() != 16 || !prev.is_ascii() {
        return None;
    }
    let mut id = [0u8; 8];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&prev[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(Some(VersionId(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_history_error_round_trips() {
        let id = VersionId([0, 1, 0x7f, 0x80, 0xab, 0xcd, 0xef, 0xff]);
        let msg = history_damaged(Some(id));
        assert_eq!(
            msg,
            "Internal Error (damaged payload, previous 00017f80abcdefff)"
        );
        assert_eq!(parse_history_damaged(&msg), Some(Some(id)));
        assert_eq!(parse_history_damaged(&history_damaged(None)), Some(None));
        assert_eq!(parse_history_damaged("Internal Error"), None);
        assert!(is_history_damaged(&msg) && is_history_damaged(HISTORY_DAMAGED_HEADER));
        assert!(!is_history_damaged("Internal Error"));
        assert!(!is_history_damaged("Internal Error: data unavailable"));
        assert_eq!(
            parse_history_damaged("Internal Error (damaged payload, previous 00zz)"),
            None
        );
    }
}
