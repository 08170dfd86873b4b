//! Server and administration commands: AUTH, TIME, WAIT, MIRROR, INDEX, DATA.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::command;
use super::dispatch::{atoi, Shared};
use super::resp::Reply;
use super::session::{constant_time_eq, is_secure_word, new_nonce, secure_digest, Session, Wait};

/// TIME: seconds and microseconds, both as bulk strings.
pub fn time() -> Reply {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Reply::Array(vec![
        Reply::bulk(now.as_secs().to_string()),
        Reply::bulk(now.subsec_micros().to_string()),
    ])
}

/// AUTH pw | AUTH SECURE CHALLENGE | AUTH SECURE hash (spec §5). Every nonce is one-shot.
pub fn auth(sh: &Shared, s: &mut Session, args: &[Bytes]) -> Reply {
    let admin = sh.config.admin_password.as_deref();
    if args.len() == 1 {
        let Some(admin) = admin else {
            return Reply::err("Authentication disabled");
        };
        if args[0].len() > 128 {
            return Reply::err("Password too long");
        }
        if constant_time_eq(admin.as_bytes(), &args[0]) {
            s.admin = true;
            return Reply::ok();
        }
        return Reply::err("Access denied");
    }
    if !is_secure_word(&args[0]) {
        return Reply::err("Only SECURE extra method supported");
    }
    if args[1].eq_ignore_ascii_case(b"CHALLENGE") {
        let nonce = new_nonce();
        s.nonce = Some(nonce.clone());
        return Reply::Status(nonce);
    }
    let Some(admin) = admin else {
        return Reply::err("Authentication disabled");
    };
    let Some(nonce) = s.nonce.clone() else {
        return Reply::err("No CHALLENGE requested, secure authentication not available");
    };
    if args[1].len() != 40 {
        return Reply::err("Invalid hash length");
    }
    s.nonce = None;
    let want = secure_digest(&nonce, admin);
    if constant_time_eq(want.as_bytes(), &args[1].to_ascii_lowercase()) {
        s.admin = true;
        Reply::ok()
    } else {
        Reply::err("Access denied")
    }
}

/// WAIT cmd [timeout_ms]: no reply now; the connection answers when the event or the timeout
/// comes.
pub fn wait(s: &mut Session, cmd: &[u8], timeout: Option<&[u8]>) -> Option<Reply> {
    let command = if cmd == b"*" {
        None
    } else {
        match command::lookup(cmd, false) {
            Some(id) if id != 0 => Some(id),
            _ => return Some(Reply::err("Unknown command to watch")),
        }
    };
    let ms = match timeout {
        None => 5000,
        Some(t) if t.len() > 16 => return Some(Reply::err("Invalid timeout")),
        Some(t) => atoi(t),
    };
    if !(100..=1_800_000).contains(&ms) {
        return Some(Reply::err("Invalid timeout"));
    }
    s.wait = Some(Wait {
        command,
        deadline: Instant::now() + Duration::from_millis(ms as u64),
    });
    None
}

/// MIRROR: from now on this connection receives every command other clients run.
pub fn mirror(sh: &Shared, s: &mut Session) -> Reply {
    if !s.mirror {
        s.mirror = true;
        sh.mirrors.fetch_add(1, Ordering::SeqCst);
    }
    Reply::Status("Starting mirroring".into())
}

/// INDEX DIRTY [RESET].
pub fn index(sh: &Shared, s: &Session, args: &[Bytes]) -> Reply {
    let Some(sub) = args.first() else {
        return Reply::err("Missing arguments");
    };
    if !sub.eq_ignore_ascii_case(b"DIRTY") {
        return Reply::err("Unknown INDEX subcommand");
    }
    match args.get(1) {
        None => match sh.store.dirty_index(&s.ns.name) {
            Ok(ids) => Reply::Array(ids.into_iter().map(|i| Reply::Int(i as i64)).collect()),
            Err(e) => Reply::err(format!("Cannot read dirty index list: {e}")),
        },
        Some(w) if w.eq_ignore_ascii_case(b"RESET") => {
            match sh.store.reset_dirty_index(&s.ns.name) {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::err(format!("Cannot reset dirty index list: {e}")),
            }
        }
        Some(_) => Reply::err("Unknown INDEX DIRTY subcommand"),
    }
}

/// DATA RAW fileid offset. Unlike the original, a tombstone is returned with its flags.
pub fn data(sh: &Shared, s: &Session, args: &[Bytes]) -> Reply {
    let Some(sub) = args.first() else {
        return Reply::err("Missing arguments");
    };
    if !sub.eq_ignore_ascii_case(b"RAW") {
        return Reply::err("Unknown DATA subcommand");
    }
    if args.len() < 3 {
        return Reply::err("Missing arguments");
    }
    let (file, offset) = (atoi(&args[1]).max(0) as u64, atoi(&args[2]).max(0) as u64);
    match sh.store.raw_entry(&s.ns.name, file, offset) {
        Ok(e) => Reply::Array(vec![
            Reply::bulk(e.key),
            Reply::Int(e.previous as i64),
            Reply::bulk(format!("0x{:08x}", e.crc)),
            Reply::Int(i64::from(e.flags)),
            Reply::Int(e.timestamp as i64),
            if e.payload.is_empty() {
                Reply::Nil
            } else {
                Reply::bulk(e.payload)
            },
        ]),
        Err(qsfs_core::Error::NotFound(_)) => Reply::err("Invalid Request"),
        Err(qsfs_core::Error::InvalidArgument(m)) if m.contains("EOF") => Reply::err("EOF"),
        Err(qsfs_core::Error::Unsupported(m)) => Reply::err(m),
        Err(_) => Reply::err("Unexpected Internal Error"),
    }
}
