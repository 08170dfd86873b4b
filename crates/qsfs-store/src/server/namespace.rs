//! Namespace commands: NSNEW, NSDEL, NSLIST, NSINFO, NSSET, NSJUMP, SELECT, RELOAD, FLUSH.

use std::sync::atomic::Ordering;

use qsfs_core::{
    Credential, Error, Mode, NamespaceName, NamespaceProperty, DEFAULT_NAMESPACE,
    MAX_NAMESPACE_LEN, MAX_PASSWORD_LEN,
};

use super::dispatch::{Shared, ERR_DENIED, ERR_READONLY};
use super::resp::Reply;
use super::session::{constant_time_eq, is_secure_word, Session};

fn utf8(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

/// The reply when namespace `name` cannot be used: `otherwise` (the original's words for a
/// missing one), or, for a namespace the store found damaged, an error that says so.
fn unusable(name: &str, e: &Error, otherwise: &'static str) -> Reply {
    match e {
        Error::Corrupt { .. } => super::dispatch::damaged(name),
        _ => Reply::err(otherwise),
    }
}

/// NSNEW.
pub fn nsnew(sh: &Shared, name: &[u8]) -> Reply {
    if name.len() > MAX_NAMESPACE_LEN {
        return Reply::err("Namespace too long");
    }
    let Some(name) = utf8(name).filter(|n| *n != DEFAULT_NAMESPACE) else {
        return Reply::err("This name is not allowed");
    };
    if NamespaceName::new(name).is_err() {
        return Reply::err("This name is not allowed");
    }
    match sh.store.namespace_create(name) {
        Ok(()) => {}
        Err(Error::AlreadyExists(_)) => return Reply::err("This namespace is not available"),
        Err(e @ Error::Corrupt { .. }) => return unusable(name, &e, ""),
        Err(e) => {
            tracing::warn!(error = %e, "NSNEW failed");
            return Reply::err("Could not create namespace");
        }
    }
    if let Some(mode @ Mode::Seq) = sh.mode() {
        if let Err(e) = sh.store.namespace_set(name, NamespaceProperty::Mode(mode)) {
            tracing::warn!(error = %e, "NSNEW could not set the server mode");
            return Reply::err("Could not create namespace");
        }
    }
    sh.hooks.fire("namespace-created", vec![name.to_string()]);
    Reply::ok()
}

/// NSDEL.
pub fn nsdel(sh: &Shared, s: &Session, name: &[u8]) -> Reply {
    let Some(name) = utf8(name) else {
        return Reply::err("This namespace doesn't exists");
    };
    if name == DEFAULT_NAMESPACE {
        return Reply::err("Cannot remove default namespace");
    }
    if let Err(e) = sh.store.namespace_info(name) {
        return unusable(name, &e, "This namespace doesn't exists");
    }
    if s.ns.name == name {
        return Reply::err("Cannot remove namespace you're currently using.");
    }
    match sh.store.namespace_delete(name) {
        Ok(()) => {
            sh.ns_deleted(name);
            sh.hooks.fire("namespace-deleted", vec![name.to_string()]);
            Reply::ok()
        }
        Err(Error::NotFound(_)) => Reply::err("This namespace doesn't exists"),
        Err(e) => {
            tracing::warn!(error = %e, "NSDEL failed");
            Reply::err("Internal Error")
        }
    }
}

/// NSLIST: every name, `default` first.
pub fn nslist(sh: &Shared) -> Reply {
    match sh.store.namespace_list() {
        Ok(names) => Reply::Array(names.into_iter().map(Reply::bulk).collect()),
        Err(_) => Reply::err("Internal Error"),
    }
}

/// NSINFO. Unlike the original, a private password-protected namespace is described only to
/// admins and to connections that selected it.
pub fn nsinfo(sh: &Shared, s: &Session, name: &[u8]) -> Reply {
    let Some(name) = utf8(name) else {
        return Reply::err("Namespace not found");
    };
    let info = match sh.store.namespace_info(name) {
        Ok(i) => i,
        Err(e) => return unusable(name, &e, "Namespace not found"),
    };
    if info.password && !info.public && !s.admin && s.ns.name != name {
        sh.stats
            .commands_unauthorized
            .fetch_add(1, Ordering::Relaxed);
        return Reply::err(ERR_DENIED);
    }
    let state = sh.ns_state(name).ok();
    Reply::bulk(super::info::nsinfo_text(sh, s, &info, state.as_deref()))
}

fn boolean(v: &[u8]) -> bool {
    v.first() == Some(&b'1')
}

/// NSSET ns property value (spec §9.2).
pub fn nsset(sh: &Shared, name: &[u8], prop: &[u8], value: &[u8]) -> Reply {
    if value.len() > MAX_PASSWORD_LEN {
        return Reply::err("Argument too long");
    }
    let Some(name) = utf8(name) else {
        return Reply::err("Namespace not found");
    };
    let state = match sh.ns_state(name) {
        Ok(s) => s,
        Err(e) => return unusable(name, &e, "Namespace not found"),
    };
    let is_default = name == DEFAULT_NAMESPACE;
    let property = match prop {
        b"lock" | b"freeze" | b"mode" => None,
        _ if is_default => return Reply::err("Cannot update default namespace"),
        b"password" => match utf8(value) {
            Some("*") => Some(NamespaceProperty::Password(None)),
            Some(p) => Some(NamespaceProperty::Password(Some(p.to_string()))),
            None => return Reply::err("Invalid property value"),
        },
        b"public" => Some(NamespaceProperty::Public(boolean(value))),
        b"maxsize" => match utf8(value).and_then(|v| v.parse::<u64>().ok()) {
            // Bytes, decimal: `u64::from_str` takes digits only (and a `+`).
            Some(n) => Some(NamespaceProperty::MaxSize(n)),
            None => return Reply::err("Invalid property value (expected: bytes, decimal)"),
        },
        b"worm" => Some(NamespaceProperty::Worm(boolean(value))),
        _ => return Reply::err("Invalid property"),
    };
    let result = match (prop, property) {
        (_, Some(p)) => sh.store.namespace_set(name, p),
        (b"mode", _) => {
            let mode = match value {
                b"user" => Mode::User,
                b"seq" => Mode::Seq,
                _ => return Reply::err("Invalid property value (expected: user, seq)"),
            };
            if sh.mode().is_some() {
                return Reply::err(
                    "This server instance is configured to use a single runtime mode",
                );
            }
            match sh.store.namespace_set(name, NamespaceProperty::Mode(mode)) {
                Ok(()) => {
                    state.set_mode(mode);
                    Ok(())
                }
                Err(Error::Unsupported(_)) => Err(Error::Unsupported(String::new())),
                Err(_) => return Reply::err("Cannot change mode of used namespace"),
            }
        }
        (b"lock", _) => {
            let on = boolean(value);
            state.locked.store(on, Ordering::SeqCst);
            if !on {
                state.frozen.store(false, Ordering::SeqCst);
            }
            // The server enforces lock and freeze itself; telling the store is best effort.
            let _ = sh.store.namespace_set(name, NamespaceProperty::Lock(on));
            Ok(())
        }
        _ => {
            let on = boolean(value);
            state.frozen.store(on, Ordering::SeqCst);
            let _ = sh.store.namespace_set(name, NamespaceProperty::Freeze(on));
            Ok(())
        }
    };
    match result {
        Ok(()) => {
            sh.hooks.fire("namespace-updated", vec![name.to_string()]);
            Reply::ok()
        }
        Err(e) => {
            tracing::warn!(error = %e, "NSSET failed");
            Reply::err("Internal Error")
        }
    }
}

/// NSJUMP: rotate the current namespace's segment.
pub fn nsjump(sh: &Shared, s: &Session) -> Reply {
    match sh.store.rotate(&s.ns.name) {
        Ok(()) => Reply::ok(),
        Err(e) => Reply::err(format!("Cannot jump: {e}")),
    }
}

/// RELOAD ns.
pub fn reload(sh: &Shared, name: &[u8]) -> Reply {
    let Some(name) = utf8(name) else {
        return Reply::err("Namespace not found");
    };
    if let Err(e) = sh.store.namespace_info(name) {
        return unusable(name, &e, "Namespace not found");
    }
    match sh.store.reload(name) {
        Ok(()) => {
            sh.hooks.fire("namespace-reloaded", vec![name.to_string()]);
            Reply::ok()
        }
        Err(e) => Reply::err(format!("Cannot reload: {e}")),
    }
}

/// FLUSH: empties the current namespace for real. Needs a private, password-protected
/// namespace (as the original) and write access (unlike the original).
pub fn flush(sh: &Shared, s: &Session) -> Reply {
    let info = match sh.store.namespace_info(&s.ns.name) {
        Ok(i) => i,
        Err(_) => return Reply::err("Internal Error"),
    };
    if info.public || !info.password {
        return Reply::err("Flushing public namespace denied");
    }
    if !s.writable {
        return Reply::err(ERR_READONLY);
    }
    match sh.store.flush_namespace(&s.ns.name) {
        Ok(()) => Reply::ok(),
        Err(e) => {
            tracing::warn!(error = %e, "FLUSH failed");
            Reply::err("Internal Error")
        }
    }
}

/// SELECT ns [pw] | SELECT ns SECURE hash (spec §6).
pub fn select(sh: &Shared, s: &mut Session, name: &[u8], rest: &[bytes::Bytes]) -> Reply {
    let Some(name) = utf8(name) else {
        return Reply::err("Namespace not found");
    };
    let info = match sh.store.namespace_info(name) {
        Ok(i) => i,
        Err(e) => return unusable(name, &e, "Namespace not found"),
    };
    let state = match sh.ns_state(name) {
        Ok(st) => st,
        Err(e) => return unusable(name, &e, "Namespace not found"),
    };
    // Under --protect, `default` carries the admin password (in memory only).
    let protect_pw = if sh.config.protect && name == DEFAULT_NAMESPACE {
        sh.config.admin_password.clone()
    } else {
        None
    };
    let has_password = protect_pw.is_some() || info.password;
    let public = protect_pw.is_some() || info.public;
    let granted = if !has_password {
        true
    } else if rest.is_empty() {
        if !public {
            return Reply::err("Namespace protected and private");
        }
        false
    } else if rest.len() == 2 && is_secure_word(&rest[0]) {
        let Some(nonce) = s.nonce.take() else {
            return Reply::err("No CHALLENGE requested, secure authentication not available");
        };
        let Some(digest) = utf8(&rest[1]).filter(|d| d.len() == 40) else {
            s.nonce = Some(nonce);
            return Reply::err("Invalid hash length");
        };
        let digest = digest.to_ascii_lowercase();
        let ok = match &protect_pw {
            Some(pw) => constant_time_eq(
                super::session::secure_digest(&nonce, pw).as_bytes(),
                digest.as_bytes(),
            ),
            None => sh
                .store
                .namespace_authenticate(
                    name,
                    Credential::Challenge {
                        nonce: &nonce,
                        digest: &digest,
                    },
                )
                .unwrap_or(false),
        };
        if !ok {
            return Reply::err("Access denied");
        }
        true
    } else {
        let pw = &rest[0];
        if pw.len() > 255 {
            return Reply::err("Password too long");
        }
        let ok = match (&protect_pw, utf8(pw)) {
            (Some(admin), _) => constant_time_eq(admin.as_bytes(), pw),
            (None, Some(p)) => sh
                .store
                .namespace_authenticate(name, Credential::Plain(p))
                .unwrap_or(false),
            (None, None) => false,
        };
        if !ok {
            return Reply::err("Access denied");
        }
        true
    };
    s.ns = state;
    s.writable = granted;
    Reply::ok()
}
