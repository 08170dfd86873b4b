//! A connection-pooled client for any 0-db server (the original or `qsfs serve`).
//!
//! Blocking (the [`qsfs_core::Store`] trait is synchronous); the async [`super::ZdbBackend`]
//! runs it on tokio's blocking pool. Each pooled connection remembers which namespace it has
//! selected, so a burst of requests on one namespace costs one SELECT per connection. Requests
//! can be pipelined: every request of a batch goes out in one write and the replies are read
//! back in order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use qsfs_core::{Error, ReadOnlyReason, Result};

use crate::server::resp::{encode_request, parse_reply, Reply};
use crate::server::session::secure_digest;

/// Where and how to reach a server.
#[derive(Clone)]
pub struct ZdbConfig {
    /// `host:port` for TCP.
    pub address: String,
    /// A unix socket path instead of TCP.
    pub socket: Option<PathBuf>,
    /// Namespace used when none is given (`zdb://…/ns`).
    pub namespace: String,
    /// Password of [`ZdbConfig::namespace`].
    pub password: Option<String>,
    /// Admin password (`AUTH`), if the server has one and admin commands are needed.
    pub admin_password: Option<String>,
    /// Use the SECURE challenge instead of sending passwords in clear.
    pub secure: bool,
    /// Connect time-out.
    pub connect_timeout: Duration,
    /// Time-out of one request/reply exchange.
    pub io_timeout: Duration,
    /// Idle connections kept for reuse.
    pub pool_size: usize,
    /// Attempts after a connection failure before giving up.
    pub retries: u32,
    /// First back-off delay; doubles on each retry, capped at 2 s.
    pub backoff: Duration,
}

impl std::fmt::Debug for ZdbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Passwords are never logged.
        f.debug_struct("ZdbConfig")
            .field("address", &self.address)
            .field("socket", &self.socket)
            .field("namespace", &self.namespace)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl ZdbConfig {
    /// A config for `host:port`, namespace `default`.
    pub fn new(address: impl Into<String>) -> Self {
        ZdbConfig {
            address: address.into(),
            socket: None,
            namespace: qsfs_core::DEFAULT_NAMESPACE.into(),
            password: None,
            admin_password: None,
            secure: true,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            pool_size: 16,
            retries: 4,
            backoff: Duration::from_millis(50),
        }
    }

    /// Parses `zdb://[password@]host[:port][/namespace]` (port 9900 by default) or
    /// `zdb+unix://[password@]/path/to/socket[#namespace]`.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("not a zdb:// URL: {}", redact(url)));
        if let Some(rest) = url.strip_prefix("zdb+unix://") {
            let (pw, rest) = split_password(rest);
            let (path, ns) = rest
                .split_once('#')
                .unwrap_or((rest, qsfs_core::DEFAULT_NAMESPACE));
            if path.is_empty() {
                return Err(bad());
            }
            let mut c = ZdbConfig::new("");
            c.socket = Some(PathBuf::from(path));
            c.namespace = ns.to_string();
            c.password = pw;
            return Ok(c);
        }
        let rest = url.strip_prefix("zdb://").ok_or_else(bad)?;
        let (pw, rest) = split_password(rest);
        let (hostport, ns) = match rest.split_once('/') {
            Some((h, "")) => (h, qsfs_core::DEFAULT_NAMESPACE),
            Some((h, n)) => (h, n),
            None => (rest, qsfs_core::DEFAULT_NAMESPACE),
        };
        if hostport.is_empty() {
            return Err(bad());
        }
        let has_port = match hostport.rsplit_once(':') {
            Some((h, p)) => !h.ends_with(':') && p.parse::<u16>().is_ok() && !h.is_empty(),
            None => false,
        };
        let address = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:9900")
        };
        let mut c = ZdbConfig::new(address);
        qsfs_core::NamespaceName::new(ns)?;
        c.namespace = ns.to_string();
        c.password = pw;
        Ok(c)
    }
}

fn split_password(s: &str) -> (Option<String>, &str) {
    match s.rsplit_once('@') {
        Some((pw, rest)) if !pw.is_empty() => (Some(pw.to_string()), rest),
        Some((_, rest)) => (None, rest),
        None => (None, s),
    }
}

/// `url` with its password (if any) replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((head, tail)) => {
            let scheme = head.split("://").next().unwrap_or("zdb");
            format!("{scheme}://***@{tail}")
        }
        None => url.to_string(),
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bulk replies at least this long are read straight into their own buffer (one copy, from the
/// socket) instead of through the connection's read buffer.
const DIRECT_BULK: usize = 64 * 1024;
/// Largest read into the connection's buffer.
const READ_CHUNK: usize = 64 * 1024;
/// First read while waiting for a reply: small, so that a big bulk reply is mostly read by the
/// direct path rather than copied through the read buffer.
const FIRST_READ: usize = 4 * 1024;

/// The length of a bulk reply of at least [`DIRECT_BULK`] bytes at the front of `buf`, with its
/// header's length: `None` for anything else (left to the general parser).
fn big_bulk_header(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.first() != Some(&b'$') {
        return None;
    }
    let head = &buf[..buf.len().min(24)];
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let n: usize = std::str::from_utf8(&head[1..end]).ok()?.parse().ok()?;
    (DIRECT_BULK..=crate::server::resp::MAX_FRAME)
        .contains(&n)
        .then_some((end + 2, n))
}

/// Writes every byte of `bufs`, in as few system calls as the socket allows.
fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Requests encoded for the wire: protocol framing plus borrowed payloads, so a large value is
/// handed to the socket without being copied into a request buffer first.
#[derive(Default)]
pub struct Wire<'a> {
    parts: Vec<Cow<'a, [u8]>>,
    requests: usize,
}

impl<'a> Wire<'a> {
    /// An empty batch.
    pub fn new() -> Self {
        Wire::default()
    }

    /// Adds one request whose arguments are each the concatenation of their slices.
    pub fn push(&mut self, args: &[&[&'a [u8]]]) {
        let mut head = BytesMut::with_capacity(16 + 16 * args.len());
        head.put_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            let len: usize = arg.iter().map(|s| s.len()).sum();
            head.put_slice(format!("${len}\r\n").as_bytes());
            if len < DIRECT_BULK {
                for s in *arg {
                    head.put_slice(s);
                }
            } else {
                self.parts
                    .push(Cow::Owned(std::mem::take(&mut head).to_vec()));
                self.parts.extend(arg.iter().map(|s| Cow::Borrowed(*s)));
            }
            head.put_slice(b"\r\n");
        }
        self.parts.push(Cow::Owned(head.to_vec()));
        self.requests += 1;
    }

    /// Requests in the batch.
    pub fn len(&self) -> usize {
        self.requests
    }

    /// True if no request was added.
    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }
}

/// One live connection.
struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    /// Scratch space for reads into `rbuf`, kept across requests.
    chunk: Vec<u8>,
    /// The namespace this connection has selected.
    ns: String,
}

impl Conn {
    fn send(&mut self, reqs: &[Vec<Vec<u8>>]) -> std::io::Result<Vec<Reply>> {
        let mut out = BytesMut::new();
        for r in reqs {
            encode_request(r, &mut out);
        }
        self.stream.write_all(&out)?;
        self.replies(reqs.len())
    }

    fn send_wire(&mut self, wire: &Wire<'_>) -> std::io::Result<Vec<Reply>> {
        let mut slices: Vec<IoSlice<'_>> = wire.parts.iter().map(|p| IoSlice::new(p)).collect();
        write_all_vectored(&mut self.stream, &mut slices)?;
        self.replies(wire.requests)
    }

    fn replies(&mut self, n: usize) -> std::io::Result<Vec<Reply>> {
        let mut replies = Vec::with_capacity(n);
        while replies.len() < n {
            replies.push(self.reply()?);
        }
        Ok(replies)
    }

    /// Reads one reply.
    fn reply(&mut self) -> std::io::Result<Reply> {
        loop {
            match parse_reply(&mut self.rbuf) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
            if let Some((head, len)) = big_bulk_header(&self.rbuf) {
                return self.direct_bulk(head, len);
            }
            let want = if self.rbuf.is_empty() {
                FIRST_READ
            } else {
                READ_CHUNK
            };
            if self.chunk.len() < want {
                self.chunk.resize(want, 0);
            }
            let n = self.stream.read(&mut self.chunk[..want])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.rbuf.extend_from_slice(&self.chunk[..n]);
        }
    }

    /// Reads a bulk reply of `len` bytes whose `head`-byte header is at the front of `rbuf`
    /// into a buffer of its own, straight from the socket.
    fn direct_bulk(&mut self, head: usize, len: usize) -> std::io::Result<Reply> {
        self.rbuf.advance(head);
        let total = len + 2;
        let mut v = Vec::with_capacity(total);
        let have = self.rbuf.len().min(total);
        v.extend_from_slice(&self.rbuf[..have]);
        self.rbuf.advance(have);
        let rest = (total - have) as u64;
        // On the concrete socket types, so the read fills the spare capacity without zeroing it.
        let got = match &mut self.stream {
            Stream::Tcp(s) => s.take(rest).read_to_end(&mut v)?,
            Stream::Unix(s) => s.take(rest).read_to_end(&mut v)?,
        };
        if got as u64 != rest {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if &v[len..] != b"\r\n" {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "bulk reply not terminated",
            ));
        }
        v.truncate(len);
        Ok(Reply::Bulk(Bytes::from(v)))
    }

    fn one(&mut self, req: Vec<Vec<u8>>) -> std::io::Result<Reply> {
        let mut r = self.send(&[req])?;
        r.pop()
            .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
    }
}

/// Turns a 0-db error string into the qsfs error a caller can act on.
pub fn map_error(msg: &str) -> Error {
    let m = msg.to_string();
    match msg {
        "Key not found"
        | "Namespace not found"
        | "This namespace doesn't exists"
        | "No more data" => Error::NotFound(m),
        "Access denied"
        | "Permission denied"
        | "Namespace protected and private"
        | "Unauthorized" => Error::PermissionDenied(m),
        "Namespace is in read-only mode" => Error::ReadOnly {
            reason: ReadOnlyReason::Session,
            what: m,
        },
        "Namespace is protected by worm mode"
        | "Cannot delete a key when namespace is in worm mode" => Error::ReadOnly {
            reason: ReadOnlyReason::Worm,
            what: m,
        },
        "Namespace is temporarily locked (read-only)" => Error::ReadOnly {
            reason: ReadOnlyReason::Locked,
            what: m,
        },
        "Namespace is temporarily frozen (read-write disabled)" => Error::ReadOnly {
            reason: ReadOnlyReason::Frozen,
            what: m,
        },
        "No space left on this namespace" => Error::NoSpace(m),
        "This namespace is not available" => Error::AlreadyExists(m),
        "Key too large" | "Invalid key" => Error::TooLarge {
            what: "key",
            len: qsfs_core::MAX_KEY_LEN + 1,
            max: qsfs_core::MAX_KEY_LEN,
        },
        "Payload too big" => Error::TooLarge {
            what: "value",
            len: qsfs_core::MAX_VALUE_LEN + 1,
            max: qsfs_core::MAX_VALUE_LEN,
        },
        "Command not supported" | "Command disabled in release code, not yet available" => {
            Error::Unsupported(m)
        }
        "Cannot write data right now" | "Cannot write index right now" => Error::Io {
            context: "0-db server".into(),
            source: std::io::Error::other(m),
        },
        // `qsfs serve` adds the reason after the original's string.
        _ if msg.starts_with("Internal Error") => Error::Io {
            context: "0-db server".into(),
            source: std::io::Error::other(m),
        },
        _ => Error::InvalidArgument(m),
    }
}

/// Reply helpers.
pub trait ReplyExt {
    /// The reply, or the mapped error for an error reply.
    fn ok(self) -> Result<Reply>;
}

impl ReplyExt for Reply {
    fn ok(self) -> Result<Reply> {
        match self {
            Reply::Error(e) => Err(map_error(&e)),
            r => Ok(r),
        }
    }
}

/// A pooled, reconnecting client.
///
/// Its calls block the calling thread on the network (with the configured timeouts), as the
/// synchronous [`qsfs_core::Store`] it implements must. From async code, call it through
/// `tokio::task::spawn_blocking` (as [`ZdbBackend`](crate::remote::ZdbBackend) does), never
/// directly inside a task: a slow server would stall that runtime worker and every task on it.
pub struct ZdbClient {
    config: ZdbConfig,
    pool: Mutex<Vec<Conn>>,
    passwords: RwLock<HashMap<String, String>>,
    /// Whether the server is `qsfs serve` (INFO `server_revision: qsfs-…`), asked once.
    qsfs: std::sync::OnceLock<bool>,
    /// Batches sent for callers ([`ZdbClient::round_trips`]).
    round_trips: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ZdbClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZdbClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn io_err(e: std::io::Error, what: &str) -> Error {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            Error::Timeout(format!("{what}: {e}"))
        }
        _ => Error::Unavailable(format!("{what}: {e}")),
    }
}

impl ZdbClient {
    /// Connects once to check the server answers (and the credentials work).
    pub fn connect(config: ZdbConfig) -> Result<Self> {
        let retries = config.retries;
        Self::connect_with(config, retries)
    }

    /// [`ZdbClient::connect`], but a failed first connection is not retried: for callers that
    /// work around a node that is down (erasure-coded backups) rather than wait for it. Later
    /// requests retry as configured.
    pub fn connect_fail_fast(config: ZdbConfig) -> Result<Self> {
        Self::connect_with(config, 0)
    }

    fn connect_with(config: ZdbConfig, retries: u32) -> Result<Self> {
        let mut passwords = HashMap::new();
        if let Some(pw) = &config.password {
            passwords.insert(config.namespace.clone(), pw.clone());
        }
        let client = ZdbClient {
            config,
            pool: Mutex::new(Vec::new()),
            passwords: RwLock::new(passwords),
            qsfs: std::sync::OnceLock::new(),
            round_trips: std::sync::atomic::AtomicU64::new(0),
        };
        let ns = client.config.namespace.clone();
        let ping = [vec![b"PING".to_vec()]];
        let reply = client
            .exchange(&ns, true, retries, |conn| conn.send(&ping))?
            .pop()
            .ok_or_else(|| Error::Unavailable("no reply".into()))?;
        if reply != Reply::Status("PONG".into()) {
            return Err(Error::Unavailable(format!(
                "unexpected PING reply {reply:?}"
            )));
        }
        Ok(client)
    }

    /// Connects to a `zdb://` URL.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::connect(ZdbConfig::from_url(url)?)
    }

    /// The configuration.
    pub fn config(&self) -> &ZdbConfig {
        &self.config
    }

    /// Remembers the password of namespace `ns` for later SELECTs.
    pub fn set_password(&self, ns: &str, password: Option<&str>) {
        let mut p = self.passwords.write();
        match password {
            Some(pw) => p.insert(ns.to_string(), pw.to_string()),
            None => p.remove(ns),
        };
    }

    fn open(&self) -> std::io::Result<Conn> {
        let c = &self.config;
        let stream = match &c.socket {
            Some(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(c.io_timeout))?;
                s.set_write_timeout(Some(c.io_timeout))?;
                Stream::Unix(s)
            }
            None => {
                let mut last = std::io::Error::other("address resolved to nothing");
                let mut found = None;
                for addr in c.address.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, c.connect_timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(c.io_timeout))?;
                s.set_write_timeout(Some(c.io_timeout))?;
                Stream::Tcp(s)
            }
        };
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::new(),
            chunk: Vec::new(),
            ns: qsfs_core::DEFAULT_NAMESPACE.into(),
        };
        if let Some(admin) = &c.admin_password {
            let r = if c.secure {
                let nonce = conn.one(vec![
                    b"AUTH".to_vec(),
                    b"SECURE".to_vec(),
                    b"CHALLENGE".to_vec(),
                ])?;
                let Reply::Status(nonce) = nonce else {
                    return Err(std::io::Error::other(format!(
                        "AUTH challenge refused: {nonce:?}"
                    )));
                };
                conn.one(vec![
                    b"AUTH".to_vec(),
                    b"SECURE".to_vec(),
                    secure_digest(&nonce, admin).into_bytes(),
                ])?
            } else {
                conn.one(vec![b"AUTH".to_vec(), admin.as_bytes().to_vec()])?
            };
            if r.is_error() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "admin AUTH refused",
                ));
            }
        }
        Ok(conn)
    }

    /// SELECTs `ns` on `conn` unless it already has it.
    fn select(&self, conn: &mut Conn, ns: &str) -> std::io::Result<Result<()>> {
        if conn.ns == ns {
            return Ok(Ok(()));
        }
        let pw = self.passwords.read().get(ns).cloned();
        let reply = match pw {
            None => conn.one(vec![b"SELECT".to_vec(), ns.as_bytes().to_vec()])?,
            Some(pw) if self.config.secure => {
                let nonce = conn.one(vec![
                    b"AUTH".to_vec(),
                    b"SECURE".to_vec(),
                    b"CHALLENGE".to_vec(),
                ])?;
                let Reply::Status(nonce) = nonce else {
                    return Ok(Err(Error::PermissionDenied(
                        "SECURE challenge refused".into(),
                    )));
                };
                conn.one(vec![
                    b"SELECT".to_vec(),
                    ns.as_bytes().to_vec(),
                    b"SECURE".to_vec(),
                    secure_digest(&nonce, &pw).into_bytes(),
                ])?
            }
            Some(pw) => conn.one(vec![
                b"SELECT".to_vec(),
                ns.as_bytes().to_vec(),
                pw.into_bytes(),
            ])?,
        };
        Ok(match reply {
            Reply::Error(e) => Err(map_error(&e)),
            _ => {
                conn.ns = ns.to_string();
                Ok(())
            }
        })
    }

    fn take(&self) -> std::io::Result<Conn> {
        if let Some(c) = self.pool.lock().pop() {
            return Ok(c);
        }
        self.open()
    }

    fn give(&self, c: Conn) {
        let mut p = self.pool.lock();
        if p.len() < self.config.pool_size {
            p.push(c);
        }
    }

    /// Sends `reqs` in one write on a connection that selected `ns` and reads every reply.
    /// `retry` says whether the batch may be sent again after a connection failure (true for
    /// reads and for writes that are safe to repeat).
    pub fn pipeline(&self, ns: &str, reqs: &[Vec<Vec<u8>>], retry: bool) -> Result<Vec<Reply>> {
        self.exchange(ns, retry, self.config.retries, |conn| conn.send(reqs))
    }

    /// [`ZdbClient::pipeline`] for requests framed by a [`Wire`]: their payloads go to the
    /// socket without being copied.
    pub fn pipeline_wire(&self, ns: &str, wire: &Wire<'_>, retry: bool) -> Result<Vec<Reply>> {
        self.exchange(ns, retry, self.config.retries, |conn| conn.send_wire(wire))
    }

    /// `SET key value` where the value is the concatenation of `parts`, sent without copying
    /// them. An identical value already there answers nil: that is success too.
    pub fn set_parts(&self, ns: &str, key: &[u8], parts: &[&[u8]]) -> Result<()> {
        let mut wire = Wire::new();
        let cmd: &[u8] = b"SET";
        wire.push(&[&[cmd], &[key], parts]);
        // Sending the same keyed value again is harmless, so the request may be retried.
        let mut r = self.pipeline_wire(ns, &wire, true)?;
        match r
            .pop()
            .ok_or_else(|| Error::Unavailable("no reply".into()))?
            .ok()?
        {
            Reply::Bulk(_) | Reply::Nil => Ok(()),
            r => Err(Error::InvalidArgument(format!(
                "SET: unexpected reply {r:?}"
            ))),
        }
    }

    fn exchange(
        &self,
        ns: &str,
        retry: bool,
        retries: u32,
        mut send: impl FnMut(&mut Conn) -> std::io::Result<Vec<Reply>>,
    ) -> Result<Vec<Reply>> {
        let mut delay = self.config.backoff;
        let mut attempt = 0;
        loop {
            let mut sent = false;
            let r = (|| -> std::io::Result<Result<Vec<Reply>>> {
                let mut conn = self.take()?;
                if let Err(e) = self.select(&mut conn, ns)? {
                    self.give(conn);
                    return Ok(Err(e));
                }
                sent = true;
                self.round_trips
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let replies = send(&mut conn)?;
                self.give(conn);
                Ok(Ok(replies))
            })();
            match r {
                Ok(result) => return result,
                Err(e) if attempt < retries && (retry || !sent) => {
                    tracing::debug!(error = %e, attempt, "0-db connection failed, retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                Err(e) => return Err(io_err(e, &format!("0-db {}", self.endpoint()))),
            }
        }
    }

    /// Round trips made so far for requests and pipelined batches (each counts once, retries
    /// included; the AUTH and SELECT of a new connection are not counted). Lets tests and
    /// benchmarks count what an operation costs on the wire.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One request on namespace `ns`.
    pub fn call(&self, ns: &str, req: Vec<Vec<u8>>, retry: bool) -> Result<Reply> {
        let mut r = self.pipeline(ns, &[req], retry)?;
        r.pop().ok_or_else(|| Error::Unavailable("no reply".into()))
    }

    /// A read on namespace `ns`, followed on the same connection by `then` when `wanted`
    /// accepts the first reply: for a follow-up question about what that reply said (a CHECK
    /// after a failed read), which must reach the same server and namespace. Reads only: the
    /// pair may be sent again after a connection failure.
    pub fn call_then(
        &self,
        ns: &str,
        req: Vec<Vec<u8>>,
        then: Vec<Vec<u8>>,
        wanted: impl Fn(&Reply) -> bool,
    ) -> Result<(Reply, Option<Reply>)> {
        let (req, then) = ([req], [then]);
        let mut replies = self.exchange(ns, true, self.config.retries, |conn| {
            let mut r = conn.send(&req)?;
            if r.first().is_some_and(&wanted) {
                r.extend(conn.send(&then)?);
            }
            Ok(r)
        })?;
        let second = if replies.len() > 1 {
            replies.pop()
        } else {
            None
        };
        let first = replies
            .pop()
            .ok_or_else(|| Error::Unavailable("no reply".into()))?;
        Ok((first, second))
    }

    /// Values of many keys with one `MGET` per 1000 keys (`None` for missing ones).
    pub fn mget(&self, ns: &str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let reqs: Vec<Vec<Vec<u8>>> = keys
            .chunks(1000)
            .map(|chunk| {
                let mut r = vec![b"MGET".to_vec()];
                r.extend(chunk.iter().map(|k| k.to_vec()));
                r
            })
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for reply in self.pipeline(ns, &reqs, true)? {
            let Reply::Array(items) = reply.ok()? else {
                return Err(Error::InvalidArgument("MGET: unexpected reply".into()));
            };
            for i in items {
                out.push(match i.ok()? {
                    Reply::Bulk(b) => Some(b.to_vec()),
                    _ => None,
                });
            }
        }
        Ok(out)
    }

    /// True if the server is `qsfs serve` rather than the original 0-db.
    pub fn is_qsfs(&self) -> bool {
        *self.qsfs.get_or_init(|| {
            let ns = self.config.namespace.clone();
            matches!(self.call(&ns, vec![b"INFO".to_vec()], true),
                Ok(Reply::Bulk(text)) if String::from_utf8_lossy(&text).contains("\nserver_revision: qsfs-"))
        })
    }

    /// `host:port` or the socket path, for messages.
    pub fn endpoint(&self) -> String {
        match &self.config.socket {
            Some(p) => format!("unix:{}", p.display()),
            None => self.config.address.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = ZdbConfig::from_url("zdb://10.1.2.3:9901/data").unwrap();
        assert_eq!(
            (
                c.address.as_str(),
                c.namespace.as_str(),
                c.password.is_none()
            ),
            ("10.1.2.3:9901", "data", true)
        );
        let c = ZdbConfig::from_url("zdb://s3cr@t@host/ns1").unwrap();
        assert_eq!(
            (c.address.as_str(), c.namespace.as_str()),
            ("host:9900", "ns1")
        );
        assert_eq!(c.password.as_deref(), Some("s3cr@t"));
        let c = ZdbConfig::from_url("zdb://host:1234").unwrap();
        assert_eq!(
            (c.address.as_str(), c.namespace.as_str()),
            ("host:1234", "default")
        );
        let c = ZdbConfig::from_url("zdb+unix://pw@/run/zdb.sock#meta").unwrap();
        assert_eq!(c.socket, Some(PathBuf::from("/run/zdb.sock")));
        assert_eq!(c.namespace, "meta");
        assert!(ZdbConfig::from_url("http://x").is_err());
        assert!(ZdbConfig::from_url("zdb://").is_err());
        assert!(ZdbConfig::from_url("zdb://h/../x").is_err());
        assert!(!format!("{c:?}").contains("pw"));
        assert_eq!(redact("zdb://secret@h:1/n"), "zdb://***@h:1/n");
    }

    #[test]
    fn error_mapping() {
        assert!(map_error("Key not found").is_not_found());
        assert!(matches!(
            map_error("Namespace is protected by worm mode"),
            Error::ReadOnly {
                reason: ReadOnlyReason::Worm,
                ..
            }
        ));
        assert!(matches!(
            map_error("No space left on this namespace"),
            Error::NoSpace(_)
        ));
        assert!(matches!(
            map_error("This namespace is not available"),
            Error::AlreadyExists(_)
        ));
        for e in [
            "Internal Error",
            "Internal Error: data unavailable",
            "Internal Error (damaged payload, previous none)",
        ] {
            assert!(matches!(map_error(e), Error::Io { .. }), "{e}");
        }
    }
}
