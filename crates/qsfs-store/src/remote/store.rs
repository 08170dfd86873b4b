//! [`qsfs_core::Store`] over a 0-db server, so a filesystem can run on a remote node.

use bytes::Bytes;
use qsfs_core::{
    Credential, Cursor, Entry, Error, KeyMeta, Mode, NamespaceInfo, NamespaceProperty, Result,
    ScanOrder, ScanPage, SetOutcome, Store, StoreSpace, Timestamp, Version, VersionId,
};

use super::client::{map_error, ReplyExt, ZdbClient};
use crate::server::resp::Reply;
use crate::server::scan::{is_history_damaged, parse_history_damaged};

fn v(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

fn unexpected(cmd: &str, r: &Reply) -> Error {
    Error::InvalidArgument(format!("{cmd}: unexpected reply {r:?}"))
}

fn int(r: &Reply) -> Option<i64> {
    match r {
        Reply::Int(n) => Some(*n),
        _ => None,
    }
}

/// True for 0-db's `Internal Error`, also with a reason after it as `qsfs serve` adds one.
pub(super) fn is_internal_error(r: &Reply) -> bool {
    matches!(r, Reply::Error(e) if e.starts_with("Internal Error"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key for a message: as text when it is printable ASCII, else `0x` and hex (the filesystem's
/// keys are big-endian numbers).
pub(super) fn show_key(key: &[u8]) -> String {
    if !key.is_empty() && key.iter().all(|b| b.is_ascii_graphic()) {
        format!("{:?}", String::from_utf8_lossy(key))
    } else {
        format!("0x{}", hex(key))
    }
}

/// A HISTORY reply (already settled): the version it carries, without the deleted flag.
fn version_of(r: Reply) -> Result<Version> {
    let r = r.ok()?;
    let Reply::Array(items) = r else {
        return Err(unexpected("HISTORY", &r));
    };
    let mut it = items.into_iter();
    let (Some(prev), Some(ts), Some(val), None) = (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(Error::InvalidArgument("HISTORY: unexpected reply".into()));
    };
    let previous = match bulk(prev) {
        Some(b) if b.len() == 8 => {
            let mut id = [0u8; 8];
            id.copy_from_slice(&b);
            Some(VersionId(id))
        }
        _ => None,
    };
    let timestamp = bulk(ts)
        .and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    Ok(Version {
        value: bulk(val).unwrap_or_default().to_vec(),
        timestamp,
        deleted: false,
        previous,
    })
}

fn bulk(r: Reply) -> Option<Bytes> {
    match r {
        Reply::Bulk(b) => Some(b),
        _ => None,
    }
}

/// Parses NSINFO text (`key: value` lines).
pub fn parse_nsinfo(text: &str) -> NamespaceInfo {
    let mut i = NamespaceInfo::default();
    for line in text.lines() {
        let Some((k, val)) = line.split_once(": ") else {
            continue;
        };
        let num = || val.trim().parse::<u64>().unwrap_or(0);
        let yes = val.trim() == "yes";
        match k {
            "name" => i.name = val.to_string(),
            "entries" => i.entries = num(),
            "public" => i.public = yes,
            "worm" => i.worm = yes,
            "locked" => i.locked = yes,
            // Not in the original: qsfs serve tells a freeze apart from a lock.
            "frozen" => i.frozen = yes,
            "password" => i.password = yes,
            "data_size_bytes" => i.data_bytes = num(),
            "data_limits_bytes" => i.max_size = num(),
            "index_size_bytes" => i.index_bytes = num(),
            "mode" => {
                i.mode = if val.trim() == "sequential" {
                    Mode::Seq
                } else {
                    Mode::User
                }
            }
            "data_current_id" => i.current_segment = num(),
            "data_current_offset" => i.disk_bytes = num(),
            _ => {}
        }
    }
    i
}

/// The space figures of NSINFO text: `data_size_bytes`, `data_limits_bytes` (0 = no limit) and
/// `data_disk_freespace_bytes`, which the original 0-db and `qsfs serve` both report, and
/// `data_disk_total_bytes`, which only `qsfs serve` adds. `None` when one of the three is
/// missing or not a number: a server that does not tell its space, not a failure.
pub fn parse_nsinfo_space(text: &str) -> Option<StoreSpace> {
    let (mut used, mut limit, mut free, mut total) = (None, None, None, None);
    for line in text.lines() {
        let Some((k, val)) = line.split_once(": ") else {
            continue;
        };
        let num = val.trim().parse::<u64>().ok();
        match k {
            "data_size_bytes" => used = Some(num?),
            "data_limits_bytes" => limit = Some(num?),
            "data_disk_freespace_bytes" => free = Some(num?),
            "data_disk_total_bytes" => total = num,
            _ => {}
        }
    }
    let limit = limit?;
    Some(StoreSpace {
        limit: (limit > 0).then_some(limit),
        used: used?,
        disk_free: free?,
        // A total below what is free is not a disk size we can use.
        disk_total: total.filter(|t| *t >= free.unwrap_or(0)),
    })
}

impl Store for ZdbClient {
    fn set_at(
        &self,
        ns: &str,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp: Option<Timestamp>,
    ) -> Result<SetOutcome> {
        qsfs_core::check_value(value)?;
        let k = key.unwrap_or(b"");
        let mut req = v(&[b"SET", k, value]);
        if let Some(ts) = timestamp {
            req.push(ts.to_string().into_bytes());
        }
        // Re-sending a SET with a key is harmless (an identical value is a no-op); a SET that
        // allocates a sequential id is not repeated once sent.
        match self.call(ns, req, key.is_some())?.ok()? {
            Reply::Bulk(b) => Ok(SetOutcome::Written { key: b.to_vec() }),
            Reply::Nil => Ok(SetOutcome::Unchanged { key: k.to_vec() }),
            r => Err(unexpected("SET", &r)),
        }
    }

    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Entry>> {
        // HISTORY answers value and timestamp atomically in one request.
        match self.history_call(ns, key, None)? {
            Reply::Error(e) if e == "Key not found" => Ok(None),
            r => {
                let v = version_of(r)?;
                Ok(Some(Entry {
                    value: v.value,
                    timestamp: v.timestamp,
                }))
            }
        }
    }

    fn delete_at(&self, ns: &str, key: &[u8], timestamp: Option<Timestamp>) -> Result<()> {
        let mut req = v(&[b"DEL", key]);
        if let Some(ts) = timestamp {
            req.push(ts.to_string().into_bytes());
        }
        self.call(ns, req, false)?.ok().map(|_| ())
    }

    fn exists(&self, ns: &str, key: &[u8]) -> Result<bool> {
        let r = self.call(ns, v(&[b"EXISTS", key]), true)?.ok()?;
        Ok(int(&r) == Some(1))
    }

    fn meta(&self, ns: &str, key: &[u8]) -> Result<Option<KeyMeta>> {
        let r = self.pipeline(ns, &[v(&[b"LENGTH", key]), v(&[b"KEYTIME", key])], true)?;
        match (&r[0], &r[1]) {
            (Reply::Int(len), Reply::Int(ts)) => Ok(Some(KeyMeta {
                key: key.to_vec(),
                length: *len as u64,
                timestamp: *ts as u64,
            })),
            (Reply::Nil, _) | (_, Reply::Nil) => Ok(None),
            (Reply::Error(e), _) | (_, Reply::Error(e)) => Err(super::client::map_error(e)),
            (a, _) => Err(unexpected("LENGTH", a)),
        }
    }

    fn check(&self, ns: &str, key: &[u8]) -> Result<Option<bool>> {
        match self.call(ns, v(&[b"CHECK", key]), true)?.ok()? {
            Reply::Nil => Ok(None),
            Reply::Int(1) => Ok(Some(true)),
            Reply::Int(0) => Ok(Some(false)),
            Reply::Int(_) => Err(Error::Unavailable(
                "CHECK: payload unreadable on the server".into(),
            )),
            r => Err(unexpected("CHECK", &r)),
        }
    }

    fn scan(
        &self,
        ns: &str,
        cursor: Option<&Cursor>,
        limit: usize,
        order: ScanOrder,
    ) -> Result<ScanPage> {
        // A server page holds whatever the server chose; gather pages until `limit` or the end,
        // so that `next: None` really means the end.
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut entries = Vec::new();
        let mut next = cursor.cloned();
        loop {
            match self.scan_page(ns, next.as_ref(), order)? {
                None => {
                    next = None;
                    break;
                }
                Some((page, cur)) => {
                    entries.extend(page);
                    next = Some(cur);
                    if entries.len() >= limit {
                        break;
                    }
                }
            }
        }
        if entries.len() > limit {
            entries.truncate(limit);
            let last = entries.last().map(|e| e.key.clone()).unwrap_or_default();
            next = Some(self.cursor_after(ns, &last)?);
        }
        Ok(ScanPage { entries, next })
    }

    fn cursor_after(&self, ns: &str, key: &[u8]) -> Result<Cursor> {
        match self.call(ns, v(&[b"KEYCUR", key]), true)?.ok()? {
            Reply::Bulk(b) => Ok(Cursor(b.to_vec())),
            r => Err(unexpected("KEYCUR", &r)),
        }
    }

    fn history(&self, ns: &str, key: &[u8], at: Option<VersionId>) -> Result<Version> {
        let r = match self.history_call(ns, key, at)? {
            Reply::Error(e) if e.starts_with("Invalid arguments (") => {
                return Err(Error::InvalidArgument(e))
            }
            r => r,
        };
        let mut v = version_of(r)?;
        // HISTORY has no deleted flag: a tombstone reads as an empty value. `qsfs serve`
        // documents its ekeys as `segment << 32 | offset`, which DATA RAW reads with its flags
        // (admin only); against the original 0-db a tombstone is never in a chain anyway.
        v.deleted = match at {
            Some(id) if v.value.is_empty() && self.is_qsfs() => self.is_tombstone(ns, id),
            _ => false,
        };
        Ok(v)
    }

    /// `qsfs serve` names the version before a damaged one in HISTORY's error, so the older,
    /// intact versions stay reachable; the original 0-db does not verify payloads in HISTORY,
    /// so from it the link comes with the value as usual.
    fn version_before(
        &self,
        ns: &str,
        key: &[u8],
        at: Option<VersionId>,
    ) -> Result<Option<VersionId>> {
        let (reply, check) = self.history_exchange(ns, key, at)?;
        if let Reply::Error(e) = &reply {
            if let Some(previous) = parse_history_damaged(e) {
                return Ok(previous);
            }
        }
        match self.settle_history(ns, key, at, reply, check)? {
            Reply::Error(e) if e.starts_with("Invalid arguments (") => {
                Err(Error::InvalidArgument(e))
            }
            r => Ok(version_of(r)?.previous),
        }
    }

    fn namespace_create(&self, name: &str) -> Result<()> {
        qsfs_core::NamespaceName::new(name)?;
        if name == qsfs_core::DEFAULT_NAMESPACE {
            return Err(Error::AlreadyExists(name.into()));
        }
        self.call(
            &self.config().namespace,
            v(&[b"NSNEW", name.as_bytes()]),
            false,
        )?
        .ok()
        .map(|_| ())
    }

    fn namespace_delete(&self, name: &str) -> Result<()> {
        if name == qsfs_core::DEFAULT_NAMESPACE {
            return Err(Error::InvalidArgument(
                "cannot delete the default namespace".into(),
            ));
        }
        // The server refuses to delete the namespace a connection uses: send it from `default`.
        self.call(
            qsfs_core::DEFAULT_NAMESPACE,
            v(&[b"NSDEL", name.as_bytes()]),
            false,
        )?
        .ok()
        .map(|_| ())
    }

    fn namespace_list(&self) -> Result<Vec<String>> {
        match self
            .call(&self.config().namespace, v(&[b"NSLIST"]), true)?
            .ok()?
        {
            Reply::Array(items) => Ok(items
                .into_iter()
                .filter_map(bulk)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect()),
            r => Err(unexpected("NSLIST", &r)),
        }
    }

    fn namespace_info(&self, name: &str) -> Result<NamespaceInfo> {
        match self
            .call(
                &self.config().namespace,
                v(&[b"NSINFO", name.as_bytes()]),
                true,
            )?
            .ok()?
        {
            Reply::Bulk(b) => Ok(parse_nsinfo(&String::from_utf8_lossy(&b))),
            r => Err(unexpected("NSINFO", &r)),
        }
    }

    fn namespace_set(&self, name: &str, property: NamespaceProperty) -> Result<()> {
        let b = |x: bool| if x { "1".to_string() } else { "0".to_string() };
        let (prop, value) = match &property {
            NamespaceProperty::Password(p) => ("password", p.clone().unwrap_or_else(|| "*".into())),
            NamespaceProperty::Public(x) => ("public", b(*x)),
            NamespaceProperty::MaxSize(n) => ("maxsize", n.to_string()),
            NamespaceProperty::Worm(x) => ("worm", b(*x)),
            NamespaceProperty::Mode(m) => (
                "mode",
                if *m == Mode::Seq {
                    "seq".into()
                } else {
                    "user".into()
                },
            ),
            NamespaceProperty::Lock(x) => ("lock", b(*x)),
            NamespaceProperty::Freeze(x) => ("freeze", b(*x)),
            other => return Err(Error::Unsupported(format!("property {other:?}"))),
        };
        let req = v(&[b"NSSET", name.as_bytes(), prop.as_bytes(), value.as_bytes()]);
        self.call(&self.config().namespace, req, true)?.ok()?;
        if let NamespaceProperty::Password(p) = property {
            self.set_password(name, p.as_deref());
        }
        Ok(())
    }

    fn namespace_authenticate(&self, name: &str, credential: Credential<'_>) -> Result<bool> {
        let Credential::Plain(pw) = credential else {
            return Err(Error::Unsupported(
                "a challenge answer is bound to another server's nonce".into(),
            ));
        };
        let probe = ZdbClient::connect(super::client::ZdbConfig {
            namespace: qsfs_core::DEFAULT_NAMESPACE.into(),
            password: None,
            pool_size: 1,
            ..self.config().clone()
        })?;
        probe.set_password(name, Some(pw));
        match probe.call(name, v(&[b"PING"]), false) {
            Ok(_) => Ok(true),
            Err(Error::PermissionDenied(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn flush_namespace(&self, name: &str) -> Result<()> {
        self.call(name, v(&[b"FLUSH"]), true)?.ok().map(|_| ())
    }

    /// 0-db has no sync command: durability is the server's `--sync`/`--synctime` policy.
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// One NSINFO, sent on a connection that selected `ns`: a private namespace's NSINFO is
    /// answered to such a connection (and to admins) only.
    fn space(&self, ns: &str) -> Result<Option<StoreSpace>> {
        match self.call(ns, v(&[b"NSINFO", ns.as_bytes()]), true)?.ok()? {
            Reply::Bulk(b) => Ok(parse_nsinfo_space(&String::from_utf8_lossy(&b))),
            r => Err(unexpected("NSINFO", &r)),
        }
    }
}

impl ZdbClient {
    /// Asks `qsfs serve` whether the version `id` is a tombstone (false if it cannot tell).
    fn is_tombstone(&self, ns: &str, id: VersionId) -> bool {
        let loc = u64::from_le_bytes(id.0);
        let (segment, offset) = ((loc >> 32).to_string(), (loc & 0xffff_ffff).to_string());
        let req = v(&[b"DATA", b"RAW", segment.as_bytes(), offset.as_bytes()]);
        match self.call(ns, req, true) {
            Ok(Reply::Array(items)) => matches!(items.get(3), Some(Reply::Int(1))),
            _ => false,
        }
    }

    /// `HISTORY key [ekey]`, and when it answers an `Internal Error` about the live version,
    /// `CHECK key` on the same connection: see [`ZdbClient::settle_history`].
    fn history_exchange(
        &self,
        ns: &str,
        key: &[u8],
        at: Option<VersionId>,
    ) -> Result<(Reply, Option<Reply>)> {
        let mut req = v(&[b"HISTORY", key]);
        if let Some(a) = at {
            req.push(a.0.to_vec());
        }
        // CHECK speaks only of the live version.
        let live = at.is_none();
        let check = v(&[b"CHECK", key]);
        if live && !self.is_qsfs() {
            // The original 0-db returns a value without checking its CRC (GET and HISTORY
            // alike): CHECK, sent in the same round trip, re-reads it and does. A write by
            // another client between the two could make CHECK speak of a newer value; the
            // filesystem is the only writer of its namespaces.
            let mut r = self.pipeline(ns, &[req, check], true)?;
            let check = r.pop();
            let reply = r
                .pop()
                .ok_or_else(|| Error::Unavailable("no reply".into()))?;
            return Ok((reply, check));
        }
        self.call_then(ns, req, check, |r| live && is_internal_error(r))
    }

    /// HISTORY's reply, with an `Internal Error` turned into the error it stands for.
    ///
    /// 0-db answers `Internal Error` both for a payload it cannot read (a failing disk, an
    /// offloaded file it cannot get back) and, from `qsfs serve`, for one that fails its
    /// checksum. Only the second is one damaged record that a checker reports before going on,
    /// so it becomes [`Error::Corrupt`] only on evidence: for the live version `CHECK` answering
    /// `:0` (it re-reads the payload and recomputes its CRC, on the original as on ours), for an
    /// older one (which `CHECK` cannot ask about) `qsfs serve`'s own error saying so. Anything
    /// else stays the I/O error it was: the server may really be failing.
    fn settle_history(
        &self,
        ns: &str,
        key: &[u8],
        at: Option<VersionId>,
        reply: Reply,
        check: Option<Reply>,
    ) -> Result<Reply> {
        let Reply::Error(e) = &reply else {
            if matches!(reply, Reply::Array(_)) && matches!(check, Some(Reply::Int(0))) {
                // A value the server sent without checking (the original 0-db), and CHECK
                // says its CRC fails: never hand it on as if it were what was written.
                return Err(Error::corrupt(
                    format!(
                        "0-db {}, namespace {ns}, key {}",
                        self.endpoint(),
                        show_key(key)
                    ),
                    "the value fails its checksum (CHECK answers 0); the server sent it unchecked",
                ));
            }
            return Ok(reply);
        };
        if !is_internal_error(&reply) {
            return Ok(reply);
        }
        let damaged = match at {
            None => matches!(check, Some(Reply::Int(0))),
            Some(_) => is_history_damaged(e),
        };
        if !damaged {
            return Err(map_error(e));
        }
        let mut location = format!(
            "0-db {}, namespace {ns}, key {}",
            self.endpoint(),
            show_key(key)
        );
        if let Some(id) = at {
            location.push_str(&format!(", version {}", hex(&id.0)));
        }
        let detail = match at {
            None => "the value fails its checksum (CHECK answers 0)".to_string(),
            Some(_) => format!("the version fails its checksum ({e})"),
        };
        Err(Error::corrupt(location, detail))
    }

    /// [`ZdbClient::history_exchange`] then [`ZdbClient::settle_history`].
    fn history_call(&self, ns: &str, key: &[u8], at: Option<VersionId>) -> Result<Reply> {
        let (reply, check) = self.history_exchange(ns, key, at)?;
        self.settle_history(ns, key, at, reply, check)
    }

    /// One SCAN/RSCAN request: the entries and the cursor after them, `None` at the end.
    fn scan_page(
        &self,
        ns: &str,
        cursor: Option<&Cursor>,
        order: ScanOrder,
    ) -> Result<Option<(Vec<KeyMeta>, Cursor)>> {
        let cmd: &[u8] = if order == ScanOrder::Reverse {
            b"RSCAN"
        } else {
            b"SCAN"
        };
        let mut req = v(&[cmd]);
        if let Some(c) = cursor {
            req.push(c.0.clone());
        }
        let r = match self.call(ns, req, true)? {
            Reply::Error(e) if e == "No more data" => return Ok(None),
            r => r.ok()?,
        };
        let Reply::Array(mut parts) = r else {
            return Err(unexpected("SCAN", &r));
        };
        let (Some(Reply::Array(items)), Some(Reply::Bulk(next))) = (parts.pop(), parts.pop())
        else {
            return Err(Error::InvalidArgument("SCAN: unexpected reply".into()));
        };
        let mut entries = Vec::with_capacity(items.len());
        for it in items {
            let Reply::Array(f) = it else {
                return Err(Error::InvalidArgument("SCAN entry".into()));
            };
            match (f.first(), f.get(1), f.get(2)) {
                (Some(Reply::Bulk(k)), Some(Reply::Int(len)), Some(Reply::Int(ts))) => entries
                    .push(KeyMeta {
                        key: k.to_vec(),
                        length: *len as u64,
                        timestamp: u64::from(*ts as u32),
                    }),
                _ => return Err(Error::InvalidArgument("SCAN entry".into())),
            }
        }
        Ok(Some((entries, Cursor(next.to_vec()))))
    }
}

/// A remote store can itself be served (a proxy); the admin extras answer "unsupported".
impl crate::server::ServerStore for ZdbClient {}

#[cfg(test)]
mod tests {
    use super::*;

    /// NSINFO as the original 0-db writes it (Appendix B), space lines included.
    const ORIGINAL: &str = "# namespace\nname: fs-block\nentries: 3\npublic: yes\n\
        worm: no\nlocked: no\npassword: no\ndata_size_bytes: 6000\ndata_size_mb: 0.01\n\
        data_limits_bytes: 0\nindex_size_bytes: 200\nindex_size_kb: 0.20\n\
        next_internal_id: 0x00000000\nmode: userkey\n\
        index_disk_freespace_bytes: 5000000\nindex_disk_freespace_mb: 4.77\n\
        data_disk_freespace_bytes: 4000000\ndata_disk_freespace_mb: 3.81\n";

    #[test]
    fn nsinfo_without_a_limit_is_the_disk() {
        let s = parse_nsinfo_space(ORIGINAL).expect("the three fields are there");
        assert_eq!(
            s,
            StoreSpace {
                limit: None,
                used: 6000,
                disk_free: 4_000_000,
                disk_total: None,
            }
        );
        assert_eq!((s.available(), s.total()), (4_000_000, 4_006_000));
        let qsfs = format!("{ORIGINAL}frozen: no\ndata_disk_total_bytes: 100000000\n");
        let s = parse_nsinfo_space(&qsfs).expect("qsfs serve's NSINFO");
        assert_eq!((s.disk_total, s.total()), (Some(100_000_000), 100_000_000));
    }

    #[test]
    fn nsinfo_with_a_limit_is_the_limit() {
        let text = ORIGINAL.replace("data_limits_bytes: 0", "data_limits_bytes: 10000")
            + "space_available: 4000\n";
        let s = parse_nsinfo_space(&text).expect("fields are there");
        assert_eq!((s.limit, s.used), (Some(10_000), 6000));
        assert_eq!((s.available(), s.total()), (4000, 10_000));
    }

    #[test]
    fn nsinfo_missing_a_field_tells_nothing() {
        for field in [
            "data_size_bytes",
            "data_limits_bytes",
            "data_disk_freespace_bytes",
        ] {
            let text: String = ORIGINAL
                .lines()
                .filter(|l| !l.starts_with(&format!("{field}:")))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(parse_nsinfo_space(&text), None, "without {field}");
        }
        let garbled = ORIGINAL.replace("data_size_bytes: 6000", "data_size_bytes: lots");
        assert_eq!(parse_nsinfo_space(&garbled), None);
        assert_eq!(parse_nsinfo_space(""), None);
        // A total smaller than what is free is not used.
        let odd = format!("{ORIGINAL}data_disk_total_bytes: 10\n");
        assert_eq!(parse_nsinfo_space(&odd).map(|s| s.disk_total), Some(None));
    }
}
