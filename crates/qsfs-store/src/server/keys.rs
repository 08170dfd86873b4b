//! Key and value commands: SET, SETX, GET, MGET, DEL, EXISTS, CHECK, LENGTH, KEYTIME, DBSIZE.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use qsfs_core::{Error, Mode, ReadOnlyReason, SetOutcome, MAX_KEY_LEN};

use super::command::ERR_INVALID_KEY;
use super::dispatch::{atoi, frozen, Shared, ERR_DENIED, ERR_FROZEN, ERR_LOCKED, ERR_READONLY};
use super::resp::Reply;
use super::session::Session;

/// GET of a value whose segment is neither local nor obtainable from the cold tier.
pub const ERR_DATA_UNAVAILABLE: &str = "Internal Error: data unavailable";

fn locked(s: &Session) -> Option<Reply> {
    s.ns.locked
        .load(Ordering::Relaxed)
        .then(|| Reply::err(ERR_LOCKED))
}

/// Maps the read-only reasons every write shares.
fn readonly_reply(reason: ReadOnlyReason, worm: &str) -> Reply {
    Reply::err(match reason {
        ReadOnlyReason::Worm => worm,
        ReadOnlyReason::Frozen => ERR_FROZEN,
        ReadOnlyReason::Session => ERR_READONLY,
        _ => ERR_LOCKED,
    })
}

/// SET / SETX, in the check order of spec §4.6.
pub fn set(sh: &Shared, s: &mut Session, key: &[u8], value: &[u8], ts: Option<&[u8]>) -> Reply {
    if let Err(r) = set_check(sh, s, key, ts) {
        return r;
    }
    let timestamp = ts.map(|t| atoi(t).max(0) as u64);
    let k = if key.is_empty() { None } else { Some(key) };
    let result = sh.store.set_at(&s.ns.name, k, value, timestamp);
    set_reply(s, result)
}

/// SET's checks before the store is asked; `Err` holds the reply.
pub fn set_check(sh: &Shared, s: &Session, key: &[u8], ts: Option<&[u8]>) -> Result<(), Reply> {
    if ts.is_some() && !s.admin {
        sh.stats
            .commands_unauthorized
            .fetch_add(1, Ordering::Relaxed);
        return Err(Reply::err(ERR_DENIED));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Reply::err("Key too large"));
    }
    if !s.writable {
        return Err(Reply::err(ERR_READONLY));
    }
    if let Some(r) = frozen(s).or_else(|| locked(s)) {
        return Err(r);
    }
    if key.is_empty() && s.ns.mode() == Mode::User {
        return Err(Reply::err("Invalid argument, key needed"));
    }
    Ok(())
}

/// SET's reply to what the store answered.
pub fn set_reply(s: &Session, result: qsfs_core::Result<SetOutcome>) -> Reply {
    let mode = s.ns.mode();
    match result {
        Ok(SetOutcome::Written { key }) => {
            s.ns.changed.store(true, Ordering::Relaxed);
            Reply::bulk(key)
        }
        Ok(SetOutcome::Unchanged { .. }) => Reply::Nil,
        Err(Error::ReadOnly { reason, .. }) => {
            readonly_reply(reason, "Namespace is protected by worm mode")
        }
        Err(Error::NoSpace(_)) => Reply::err("No space left on this namespace"),
        Err(Error::TooLarge { what: "key", .. }) => Reply::err("Key too large"),
        Err(Error::InvalidArgument(_) | Error::NotFound(_)) if mode == Mode::Seq => {
            Reply::err("Invalid key, only update authorized")
        }
        Err(Error::InvalidArgument(_)) => Reply::err("Invalid argument, key needed"),
        Err(e) => {
            tracing::warn!(ns = %s.ns.name, error = %e, "SET failed");
            Reply::err("Cannot write data right now")
        }
    }
}

fn get_one(sh: &Shared, s: &Session, key: &[u8]) -> Reply {
    if key.is_empty() {
        return Reply::Nil;
    }
    match sh.store.get(&s.ns.name, key) {
        Ok(Some(e)) => Reply::bulk(e.value),
        Ok(None) | Err(Error::NotFound(_) | Error::InvalidArgument(_)) => Reply::Nil,
        Err(Error::ReadOnly {
            reason: ReadOnlyReason::Frozen,
            ..
        }) => Reply::err(ERR_FROZEN),
        Err(e @ (Error::Unavailable(_) | Error::Timeout(_))) => {
            // Offloaded and not restorable (no cold tier, the tier failed, the missing-data
            // hook did not put the file back): the original's string, with the reason.
            tracing::warn!(ns = %s.ns.name, error = %e, "GET: data unavailable");
            Reply::err(ERR_DATA_UNAVAILABLE)
        }
        Err(e) => {
            tracing::warn!(ns = %s.ns.name, error = %e, "GET failed");
            Reply::err("Internal Error")
        }
    }
}

/// GET.
pub fn get(sh: &Shared, s: &mut Session, key: &[u8]) -> Reply {
    if key.len() > MAX_KEY_LEN {
        return Reply::err(ERR_INVALID_KEY);
    }
    if let Some(r) = frozen(s) {
        return r;
    }
    get_one(sh, s, key)
}

/// MGET: one element per key, each as GET answers it.
pub fn mget(sh: &Shared, s: &mut Session, keys: &[Bytes]) -> Reply {
    if keys.iter().any(|k| k.len() > MAX_KEY_LEN) {
        return Reply::err(ERR_INVALID_KEY);
    }
    if let Some(r) = frozen(s) {
        return r;
    }
    Reply::Array(keys.iter().map(|k| get_one(sh, s, k)).collect())
}

/// DEL.
pub fn del(sh: &Shared, s: &mut Session, key: &[u8], ts: Option<&[u8]>) -> Reply {
    if ts.is_some() && !s.admin {
        sh.stats
            .commands_unauthorized
            .fetch_add(1, Ordering::Relaxed);
        return Reply::err(ERR_DENIED);
    }
    if key.len() > MAX_KEY_LEN {
        return Reply::err(ERR_INVALID_KEY);
    }
    if !s.writable {
        return Reply::err(ERR_READONLY);
    }
    if let Some(r) = frozen(s).or_else(|| locked(s)) {
        return r;
    }
    let timestamp = ts.map(|t| atoi(t).max(0) as u64);
    match sh.store.delete_at(&s.ns.name, key, timestamp) {
        Ok(()) => {
            s.ns.changed.store(true, Ordering::Relaxed);
            Reply::ok()
        }
        Err(Error::NotFound(_) | Error::InvalidArgument(_)) => Reply::err("Key not found"),
        Err(Error::ReadOnly { reason, .. }) => {
            readonly_reply(reason, "Cannot delete a key when namespace is in worm mode")
        }
        Err(e) => {
            tracing::warn!(ns = %s.ns.name, error = %e, "DEL failed");
            Reply::err("Cannot delete key (data)")
        }
    }
}

/// EXISTS.
pub fn exists(sh: &Shared, s: &mut Session, key: &[u8]) -> Reply {
    if key.len() > MAX_KEY_LEN {
        return Reply::err(ERR_INVALID_KEY);
    }
    if let Some(r) = frozen(s) {
        return r;
    }
    match sh.store.exists(&s.ns.name, key) {
        Ok(b) => Reply::Int(i64::from(b)),
        Err(Error::NotFound(_) | Error::InvalidArgument(_)) => Reply::Int(0),
        Err(e) => {
            tracing::warn!(error = %e, "EXISTS failed");
            Reply::err("Internal Error")
        }
    }
}

/// CHECK: `:1` intact, `:0` checksum mismatch, `:-1` unreadable, nil when missing.
pub fn check(sh: &Shared, s: &mut Session, key: &[u8]) -> Reply {
    if key.len() > MAX_KEY_LEN {
        return Reply::err(ERR_INVALID_KEY);
    }
    if let Some(r) = frozen(s) {
        return r;
    }
    match sh.store.check(&s.ns.name, key) {
        Ok(Some(ok)) => Reply::Int(i64::from(ok)),
        Ok(None) | Err(Error::NotFound(_) | Error::InvalidArgument(_)) => Reply::Nil,
        Err(Error::Corrupt { .. }) => Reply::Int(0),
        Err(_) => Reply::Int(-1),
    }
}

/// LENGTH (or KEYTIME with `time`), answered from the index.
pub fn length(sh: &Shared, s: &mut Session, key: &[u8], time: bool) -> Reply {
    if key.len() > MAX_KEY_LEN {
        return Reply::err(ERR_INVALID_KEY);
    }
    if let Some(r) = frozen(s) {
        return r;
    }
    match sh.store.meta(&s.ns.name, key) {
        Ok(Some(m)) if time => Reply::Int(m.timestamp.min(u64::from(u32::MAX)) as i64),
        Ok(Some(m)) => Reply::Int(m.length as i64),
        Ok(None) | Err(Error::NotFound(_) | Error::InvalidArgument(_)) => Reply::Nil,
        Err(e) => {
            tracing::warn!(error = %e, "LENGTH/KEYTIME failed");
            Reply::err("Internal Error")
        }
    }
}

/// DBSIZE: live keys of the current namespace (no frozen check, like the original).
pub fn dbsize(sh: &Shared, s: &mut Session) -> Reply {
    if s.ns.damaged {
        return super::dispatch::damaged(&s.ns.name);
    }
    match sh.store.namespace_info(&s.ns.name) {
        Ok(i) => Reply::Int(i.entries as i64),
        Err(_) => Reply::err("Internal Error"),
    }
}
