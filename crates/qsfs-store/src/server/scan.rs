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
        Err(e) => {
            tracing::warn!(error = %e, "HISTORY failed");
            Reply::err("Internal Error")
        }
    }
}
