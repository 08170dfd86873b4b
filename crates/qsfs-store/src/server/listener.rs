//! Sockets, connections and shutdown.
//!
//! Each connection is a task: it reads whatever arrived, runs every complete request in it,
//! and sends all the replies in one write (with `TCP_NODELAY`), which is what removes the
//! original's 42 ms pipelining stall. Connections are handed round-robin to worker threads, one
//! per core, each running its own single-threaded event loop: a request is then read, run and
//! answered on one thread, with none of the cross-thread wake-ups (a futex and a context switch
//! each) that a work-stealing runtime pays for every readiness event of a ping-pong client.
//! A request that may wait for more than the local disk (a cold-tier fetch, the `missing-data`
//! hook) runs on tokio's blocking pool while its connection's task waits for it, so the other
//! connections of the thread go on; the rest of that connection's batch runs after it, in order.
//! An idle connection is a parked task: no CPU and no buffers (a read buffer is taken only once
//! the socket is readable and given back when drained).
//! Shutdown stops accepting, lets every connection finish the batch it is running, syncs the
//! store and runs the `close` / `namespace-closing` hooks.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use qsfs_core::{Error, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::dispatch::{Blocking, Event, Shared, Step};
use super::resp::{self, Outbox, Reply};
use super::session::Session;
use super::{command, ServerConfig, ServerStore};

/// Bytes read per syscall at most; the buffer grows further only while a large request arrives.
const READ_CHUNK: usize = 256 * 1024;
/// The answer to half a request followed by silence, before the connection is closed.
const ERR_PARTIAL_TIMEOUT: &str = "Timeout: incomplete request, connection closed";
/// A reply buffer larger than this is given back after it was sent.
const KEEP_BUFFER: usize = 4096;
/// Parts per vectored write (well under the kernel's `IOV_MAX`).
const MAX_IOVECS: usize = 64;

/// A connected socket the server can wait on before it allocates a read buffer, so an idle
/// connection holds no buffer at all.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Waits until the socket is readable (or closed).
    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send + '_;
}

impl Socket for tokio::net::TcpStream {
    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send + '_ {
        self.readable()
    }
}

impl Socket for tokio::net::UnixStream {
    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send + '_ {
        self.readable()
    }
}

/// Reads what is there without waiting (`WouldBlock` when nothing is). Through `AsyncRead`
/// rather than `try_read`: a read that does not fill the buffer shows that the socket is
/// drained, and tokio then forgets its readiness, so an unpipelined client costs one `recv` per
/// request instead of a second one that only answers `EAGAIN`.
fn read_now<S: Socket>(stream: &mut S, buf: &mut BytesMut) -> std::io::Result<usize> {
    let read = std::pin::pin!(stream.read_buf(buf));
    match read.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
    }
}

thread_local! {
    /// Read buffers that drained connections of this thread gave back, so a request does not
    /// cost a 256 KiB `malloc` and `free` (each free of that size makes glibc consolidate its
    /// heap) while idle connections still hold no buffer. Several, because the connections
    /// whose SETs wait for one group commit each hold theirs until it is written.
    static SPARES: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Most read buffers a thread keeps for later connections (at most [`MAX_SPARE`] bytes each).
const SPARES_KEPT: usize = 32;

/// One of this thread's spare read buffers (empty, possibly without capacity).
fn take_spare() -> BytesMut {
    SPARES.with(|s| s.borrow_mut().pop()).unwrap_or_default()
}

/// Gives an empty read buffer back to this thread. Once the requests cut from it are dropped,
/// its next `reserve` reuses the whole allocation from the start; while a request still holds
/// a part (a MIRROR event, say), `reserve` allocates anew and nothing is shared by mistake.
fn give_spare(buf: BytesMut) {
    if buf.capacity() > 0 && buf.capacity() <= MAX_SPARE {
        SPARES.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARES_KEPT {
                s.push(buf);
            }
        });
    }
}

/// A drained buffer with more room than this left is not kept. A spare can still hold the
/// allocation of one large frame (up to [`resp::MAX_FRAME`]): one per thread at most.
const MAX_SPARE: usize = 2 * READ_CHUNK;

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    tcp: Option<TcpListener>,
    unix: Option<UnixListener>,
}

/// A running server: its address, and the way to stop it.
#[derive(Debug)]
pub struct ServerHandle {
    /// The TCP address actually bound (port 0 resolved).
    pub local_addr: Option<SocketAddr>,
    /// The unix socket path, if any.
    pub socket: Option<std::path::PathBuf>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

impl ServerHandle {
    /// Stops accepting, waits for in-flight requests, syncs the store.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after [`ServerHandle::shutdown`] or a fatal error).
    pub async fn wait(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| Error::Unavailable(format!("server task: {e}")))?
    }

    /// A sender that stops the server when `true` is sent (for signal handlers).
    pub fn shutdown_sender(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

impl Server {
    /// Binds the configured TCP address and/or unix socket.
    pub async fn bind(store: Arc<dyn ServerStore>, config: ServerConfig) -> Result<Server> {
        let tcp = match config.tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| Error::io(format!("bind {addr}"), e))?,
            ),
            None => None,
        };
        let unix = match &config.socket {
            Some(path) => {
                // The original unlinks a stale socket file and re-creates it.
                let _ = std::fs::remove_file(path);
                Some(
                    UnixListener::bind(path)
                        .map_err(|e| Error::io(format!("bind {}", path.display()), e))?,
                )
            }
            None => None,
        };
        if tcp.is_none() && unix.is_none() {
            return Err(Error::InvalidArgument("nothing to listen on".into()));
        }
        let mut config = config;
        if let (Some(l), Some(addr)) = (&tcp, config.tcp.as_mut()) {
            if let Ok(a) = l.local_addr() {
                *addr = a;
            }
        }
        let shared = Arc::new(Shared::new(store, config));
        if let Some(max) = shared.config.default_maxsize {
            let _ = shared.store.namespace_set(
                qsfs_core::DEFAULT_NAMESPACE,
                qsfs_core::NamespaceProperty::MaxSize(max),
            );
        }
        match shared.ns_state(qsfs_core::DEFAULT_NAMESPACE) {
            // A damaged `default` answers its commands with errors; the others serve.
            Ok(_) | Err(Error::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(Server { shared, tcp, unix })
    }

    /// The shared state (for tests and the CLI).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Runs the `ready` hook; a non-zero status is an error (the original exits 0 then).
    pub fn ready_hook(&self) -> Result<()> {
        match self.shared.hooks.run("ready", vec![]) {
            Some(0) | None => Ok(()),
            Some(code) => Err(Error::Unavailable(format!(
                "ready hook exited with status {code}"
            ))),
        }
    }

    /// Starts serving on the current tokio runtime.
    pub fn spawn(self) -> ServerHandle {
        let (tx, rx) = watch::channel(false);
        let local_addr = self.tcp.as_ref().and_then(|l| l.local_addr().ok());
        let socket = self.shared.config.socket.clone();
        let task = tokio::spawn(self.run(rx));
        ServerHandle {
            local_addr,
            socket,
            shutdown: tx,
            task,
        }
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let Server { shared, tcp, unix } = self;
        let mut workers = Workers::start(&shared);
        let limit = Arc::new(Semaphore::new(shared.config.max_connections));
        // Every connection holds a clone; when all are dropped the receiver ends.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let rotate = shared.config.rotate_every.map(|every| {
            let sh = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    for ns in sh.ns_states() {
                        if ns.changed.swap(false, Ordering::Relaxed) {
                            if let Err(e) = sh.store.rotate(&ns.name) {
                                tracing::warn!(ns = %ns.name, error = %e, "rotation failed");
                            }
                        }
                    }
                }
            })
        });
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                r = accept_tcp(&tcp) => match r {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        start(&shared, &limit, &alive_tx, &shutdown, &mut workers, Accepted::Tcp(stream));
                    }
                    Err(e) => accept_error(e).await,
                },
                r = accept_unix(&unix) => match r {
                    Ok(stream) => start(&shared, &limit, &alive_tx, &shutdown, &mut workers, Accepted::Unix(stream)),
                    Err(e) => accept_error(e).await,
                },
            }
        }
        drop((tcp, unix));
        if let Some(r) = rotate {
            r.abort();
        }
        drop(alive_tx);
        let _ = alive_rx.recv().await;
        let sh = shared.clone();
        tokio::task::spawn_blocking(move || {
            // Every connection has ended: the workers' loops end with their queues.
            workers.stop();
            let synced = sh.store.sync();
            sh.hooks.run("close", vec![]);
            for ns in sh.store.namespace_list().unwrap_or_default() {
                // name, index file, current data file, dirty index ids (always none in qsfs).
                let dir = sh
                    .store
                    .namespace_info(&ns)
                    .ok()
                    .and_then(|i| i.path)
                    .unwrap_or_default();
                let seg = sh.store.current_position(&ns).map_or(0, |(s, _)| s);
                let index = dir.join("index").display().to_string();
                let data = dir.join(format!("{seg:010}.seg")).display().to_string();
                sh.hooks
                    .fire("namespace-closing", vec![ns, index, data, String::new()]);
            }
            if let Some(p) = &sh.config.socket {
                let _ = std::fs::remove_file(p);
            }
            synced
        })
        .await
        .map_err(|e| Error::Unavailable(format!("shutdown task: {e}")))?
    }
}

async fn accept_error(e: std::io::Error) {
    // Out of file descriptors and the like: back off instead of spinning.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

async fn accept_tcp(l: &Option<TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn accept_unix(l: &Option<UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// A connection just accepted.
enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// An accepted connection on its way to a worker: detached from the accepting thread's event
/// loop, with what its task holds.
struct Handoff {
    stream: StdStream,
    permit: OwnedSemaphorePermit,
    alive: mpsc::Sender<()>,
    shutdown: watch::Receiver<bool>,
}

enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// The connection threads, each with a single-threaded runtime fed by a queue.
struct Workers {
    queues: Vec<mpsc::UnboundedSender<Handoff>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next: usize,
}

impl Workers {
    /// Starts `config.workers` threads (one per core when 0). A thread that cannot be started
    /// is left out; with none, connections run on the caller's runtime as tasks.
    fn start(shared: &Arc<Shared>) -> Workers {
        let n = match shared.config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut workers = Workers {
            queues: Vec::new(),
            threads: Vec::new(),
            next: 0,
        };
        for i in 0..n {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a connection runtime");
                    break;
                }
            };
            let (tx, mut rx) = mpsc::unbounded_channel::<Handoff>();
            let sh = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("qsfs-conn-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some(h) = rx.recv().await {
                            tokio::spawn(serve_handoff(sh.clone(), h));
                        }
                    })
                });
            match thread {
                Ok(t) => {
                    workers.queues.push(tx);
                    workers.threads.push(t);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a connection thread");
                    break;
                }
            }
        }
        workers
    }

    /// Gives `h` to the next worker; gives it back if there is none (or it is gone).
    fn dispatch(&mut self, mut h: Handoff) -> Option<Handoff> {
        for _ in 0..self.queues.len() {
            let i = self.next % self.queues.len();
            self.next = self.next.wrapping_add(1);
            match self.queues[i].send(h) {
                Ok(()) => return None,
                Err(mpsc::error::SendError(back)) => h = back,
            }
        }
        Some(h)
    }

    /// Closes the queues and waits for the threads (called once every connection has ended).
    fn stop(self) {
        drop(self.queues);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Registers a handed-off connection with the current thread's event loop and serves it.
async fn serve_handoff(shared: Arc<Shared>, h: Handoff) {
    let Handoff {
        stream,
        permit,
        alive,
        shutdown,
    } = h;
    let result = match stream {
        StdStream::Tcp(s) => match tokio::net::TcpStream::from_std(s) {
            Ok(s) => connection(&shared, s, shutdown).await,
            Err(e) => Err(e),
        },
        StdStream::Unix(s) => match tokio::net::UnixStream::from_std(s) {
            Ok(s) => connection(&shared, s, shutdown).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended");
    }
    drop(permit);
    drop(alive);
}

fn start(
    shared: &Arc<Shared>,
    limit: &Arc<Semaphore>,
    alive: &mpsc::Sender<()>,
    shutdown: &watch::Receiver<bool>,
    workers: &mut Workers,
    stream: Accepted,
) {
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        tokio::spawn(async move {
            let refuse = b"-Too many connections\r\n";
            match stream {
                Accepted::Tcp(mut s) => {
                    let _ = s.write_all(refuse).await;
                    let _ = s.shutdown().await;
                }
                Accepted::Unix(mut s) => {
                    let _ = s.write_all(refuse).await;
                    let _ = s.shutdown().await;
                }
            }
        });
        return;
    };
    // Detached from this thread's event loop (non-blocking, as `from_std` on the worker needs).
    let detached = match stream {
        Accepted::Tcp(s) => s.into_std().map(StdStream::Tcp),
        Accepted::Unix(s) => s.into_std().map(StdStream::Unix),
    };
    let stream = match detached {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand a connection over");
            return;
        }
    };
    let handoff = Handoff {
        stream,
        permit,
        alive: alive.clone(),
        shutdown: shutdown.clone(),
    };
    if let Some(h) = workers.dispatch(handoff) {
        tokio::spawn(serve_handoff(shared.clone(), h));
    }
}

/// Serves one client until it leaves, errs fatally, or the server stops.
async fn connection<S: Socket>(
    sh: &Arc<Shared>,
    mut stream: S,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut session = match sh.new_session() {
        Ok(s) => s,
        Err(e) => {
            stream
                .write_all(format!("-Internal Error: {e}\r\n").as_bytes())
                .await?;
            return Ok(());
        }
    };
    let mut buf = BytesMut::new();
    let mut out = Outbox::default();
    let mut events: Option<broadcast::Receiver<Event>> = None;
    // One wait for shutdown for the connection's whole life: a fresh `changed()` per request
    // would register and unregister with the channel every time, and every connection shares
    // that channel's lock.
    let stop = shutdown.changed();
    tokio::pin!(stop);
    let result = loop {
        if (session.wait.is_some() || session.mirror) && events.is_none() {
            sh.listeners.fetch_add(1, Ordering::SeqCst);
            events = Some(sh.events.subscribe());
        } else if session.wait.is_none() && !session.mirror && events.is_some() {
            sh.listeners.fetch_sub(1, Ordering::SeqCst);
            events = None;
        }
        let deadline = session
            .wait
            .as_ref()
            .map(|w| tokio::time::Instant::from_std(w.deadline));
        let partial = (!buf.is_empty()).then_some(sh.config.partial_frame_timeout);
        tokio::select! {
            r = stream.ready() => {
                if let Err(e) = r {
                    break Err(e);
                }
                if buf.capacity() == 0 {
                    buf = take_spare();
                }
                // A large value is received straight into a buffer of its whole frame: no
                // regrowth (and copy) every READ_CHUNK, and fewer, larger reads.
                let need = resp::needed(&buf);
                if need > buf.capacity() {
                    buf.reserve(need - buf.len());
                } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
                let n = match read_now(&mut stream, &mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => break Err(e),
                };
                if n == 0 {
                    break Ok(());
                }
                sh.stats.network_rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                let close = match process_all(sh, &mut session, &mut buf, &mut out, &mut events, &mut stream).await {
                    Ok(close) => close,
                    Err(e) => break Err(e),
                };
                if let Err(e) = flush(sh, &mut stream, &mut out).await {
                    break Err(e);
                }
                if close {
                    break Ok(());
                }
                if buf.is_empty() {
                    // Nothing pending: an idle connection keeps no read buffer; its thread
                    // keeps it for the next connection that has something to read.
                    give_spare(std::mem::take(&mut buf));
                }
            }
            ev = recv(&mut events) => {
                if let Some(ev) = ev {
                    notify(&mut session, &ev, &mut out);
                    if let Err(e) = flush(sh, &mut stream, &mut out).await {
                        break Err(e);
                    }
                }
            }
            _ = sleep_until(deadline) => {
                session.wait = None;
                out.push(&Reply::err("Timeout"));
                if let Err(e) = flush(sh, &mut stream, &mut out).await {
                    break Err(e);
                }
            }
            _ = sleep_for(partial) => {
                // Half a request and then silence: answer and free the buffer. Not WAIT's bare
                // "Timeout", which a client may be waiting for on another connection.
                out.push(&Reply::err(ERR_PARTIAL_TIMEOUT));
                let _ = flush(sh, &mut stream, &mut out).await;
                break Ok(());
            }
            _ = &mut stop => break Ok(()),
        }
    };
    if session.mirror {
        sh.mirrors.fetch_sub(1, Ordering::SeqCst);
    }
    if events.is_some() {
        sh.listeners.fetch_sub(1, Ordering::SeqCst);
    }
    let _ = stream.shutdown().await;
    result
}

async fn recv(rx: &mut Option<broadcast::Receiver<Event>>) -> Option<Event> {
    match rx {
        Some(rx) => loop {
            match rx.recv().await {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "a WAIT/MIRROR client fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
            }
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn sleep_for(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Answers a WAIT or forwards a command to a MIRROR connection.
fn notify(s: &mut Session, ev: &Event, out: &mut Outbox) {
    if ev.conn == s.id {
        return;
    }
    if let Some(w) = &s.wait {
        if *ev.ns == *s.ns.name && w.command.is_none_or(|c| c == ev.command) {
            out.push(&Reply::Status(command::name(ev.command).to_string()));
            s.wait = None;
        }
    }
    if s.mirror {
        if let Some(args) = &ev.args {
            let ts = qsfs_core::now() as i64;
            let mut items = vec![
                Reply::Int(ts),
                Reply::bulk(ev.ns.to_string()),
                Reply::Int(ev.conn as i64),
            ];
            items.extend(args.iter().map(|a| Reply::Bulk(a.clone())));
            out.push(&Reply::Array(items));
        }
    }
}

/// [`process`], and each request it leaves for the blocking pool: the replies before it are
/// sent, it is awaited (the thread's other connections go on), then the rest of `buf` is
/// processed, so replies keep the order of the requests. True if the connection must close.
async fn process_all<S: Socket>(
    sh: &Arc<Shared>,
    session: &mut Session,
    buf: &mut BytesMut,
    out: &mut Outbox,
    events: &mut Option<broadcast::Receiver<Event>>,
    stream: &mut S,
) -> std::io::Result<bool> {
    let mut pending = None;
    let mut tail = Vec::new();
    let mut close = process(sh, session, buf, out, events, &mut pending, &mut tail);
    while let Some(job) = pending.take() {
        flush(sh, stream, out).await?;
        let outcome = job.run(sh, session).await;
        if let Some(r) = outcome.reply {
            out.push(&r);
        }
        if outcome.close {
            buf.clear();
            return Ok(true);
        }
        close = process(sh, session, buf, out, events, &mut pending, &mut tail);
    }
    if !tail.is_empty() {
        // Nothing of this read comes after these SETs, so they may wait for the other
        // connections' SETs of this pass and be written with them.
        for outcome in sh.execute_sets_together(session, tail).await {
            if let Some(r) = outcome.reply {
                out.push(&r);
            }
            if outcome.close {
                buf.clear();
                return Ok(true);
            }
        }
    }
    Ok(close)
}

/// Runs every complete request in `buf` until one is left for the blocking pool (in
/// `pending`); returns true if the connection must close. Plain SETs that end the read are
/// not run but left in `tail`, for [`process_all`] to write together with other connections'.
fn process(
    sh: &Shared,
    session: &mut Session,
    buf: &mut BytesMut,
    out: &mut Outbox,
    events: &mut Option<broadcast::Receiver<Event>>,
    pending: &mut Option<Blocking>,
    tail: &mut Vec<Vec<Bytes>>,
) -> bool {
    // Plain SETs are held back and run together when something else comes or the read is
    // used up, so their records reach the disk in one write.
    let mut sets: Vec<Vec<Bytes>> = Vec::new();
    let run_sets = |session: &mut Session, sets: &mut Vec<Vec<Bytes>>, out: &mut Outbox| {
        if sets.is_empty() {
            return false;
        }
        for outcome in sh.execute_sets(session, std::mem::take(sets)) {
            if let Some(r) = outcome.reply {
                out.push(&r);
            }
            if outcome.close {
                return true;
            }
        }
        false
    };
    loop {
        let parsed = resp::parse(buf);
        if let Ok(Some(frame)) = &parsed {
            if sh.batchable_set(session, &frame.args) {
                if let Ok(Some(frame)) = parsed {
                    sets.push(frame.args);
                }
                continue;
            }
        }
        if matches!(parsed, Ok(None)) && !sets.is_empty() {
            *tail = sets;
            return false;
        }
        if run_sets(session, &mut sets, out) {
            buf.clear();
            return true;
        }
        match parsed {
            Ok(Some(frame)) => {
                let outcome = match sh.step(session, frame.args) {
                    Step::Done(outcome) => outcome,
                    Step::Blocking(job) => {
                        *pending = Some(job);
                        return false;
                    }
                };
                // Subscribe right after WAIT/MIRROR so no later command of another client is
                // missed while this batch finishes.
                if (session.wait.is_some() || session.mirror) && events.is_none() {
                    sh.listeners.fetch_add(1, Ordering::SeqCst);
                    *events = Some(sh.events.subscribe());
                }
                if let Some(r) = outcome.reply {
                    out.push(&r);
                }
                if outcome.close {
                    return true;
                }
            }
            Ok(None) => return false,
            Err(e) => {
                out.push(&Reply::err(e.reply));
                sh.stats.commands_failed.fetch_add(1, Ordering::Relaxed);
                if e.close {
                    buf.clear();
                    return true;
                }
                let _ = buf.split_to(e.consumed);
            }
        }
    }
}

async fn flush<S: AsyncWrite + Unpin>(
    sh: &Shared,
    stream: &mut S,
    out: &mut Outbox,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let total = out.len();
    if let Some(all) = out.contiguous() {
        stream.write_all(all).await?;
    } else {
        // A large GET: its value goes out of the engine's buffer, not a copy of it.
        while !out.is_empty() {
            let n = stream.write_vectored(&out.slices(MAX_IOVECS)).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            out.advance(n);
        }
    }
    sh.stats
        .network_tx_bytes
        .fetch_add(total as u64, Ordering::Relaxed);
    // A large reply (say an 8 MiB GET) does not pin its buffer to the connection.
    out.clear(KEEP_BUFFER);
    Ok(())
}
