//! State shared by every connection, and the one function that runs a request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::RwLock;
use qsfs_core::{Error, Mode};
use tokio::sync::{broadcast, Semaphore};

use super::command::{self, Command, CommandId};
use super::hooks::Hooks;
use super::info::Stats;
use super::resp::Reply;
use super::session::{NsState, Session};
use super::{admin, keys, namespace, scan, ReadTarget, ServerConfig, ServerStore};

/// Plain SETs checked and ready for the store (see [`Shared::execute_sets`]).
struct PreparedSets {
    /// One per SET: the reply of a refused one, `None` for one to store.
    replies: Vec<Option<Reply>>,
    /// The index in `replies` of each item.
    slots: Vec<usize>,
    /// Key and value of each SET to store.
    items: Vec<(Bytes, Bytes)>,
}

/// The table entry of SET.
static SET_ID: std::sync::LazyLock<CommandId> =
    std::sync::LazyLock::new(|| command::lookup(b"SET", true).unwrap_or(usize::MAX));

/// `Namespace is temporarily frozen (read-write disabled)`.
pub const ERR_FROZEN: &str = "Namespace is temporarily frozen (read-write disabled)";
/// `Namespace is temporarily locked (read-only)`.
pub const ERR_LOCKED: &str = "Namespace is temporarily locked (read-only)";
/// `Namespace is in read-only mode`.
pub const ERR_READONLY: &str = "Namespace is in read-only mode";
/// `Permission denied`.
pub const ERR_DENIED: &str = "Permission denied";
const ERR_DETACHED: &str = "Your active namespace is not available anymore (probably removed).";

/// Requests running on the blocking pool at once, over all worker threads. More wait for a turn
/// in their connection's task (no thread waits), so a flood of cold reads cannot start a thread
/// each.
const BLOCKING_REQUESTS: usize = 64;

/// A command another connection ran, for WAIT and MIRROR.
#[derive(Debug, Clone)]
pub struct Event {
    /// Connection that ran it.
    pub conn: u64,
    /// Its namespace.
    pub ns: Arc<str>,
    /// The table entry.
    pub command: CommandId,
    /// The arguments, only while some connection mirrors.
    pub args: Option<Arc<Vec<Bytes>>>,
}

/// What a request produced.
#[derive(Debug)]
pub struct Outcome {
    /// The reply; `None` for WAIT, which answers later.
    pub reply: Option<Reply>,
    /// Close the connection after sending the reply.
    pub close: bool,
}

/// How far [`Shared::step`] got with a request.
#[derive(Debug)]
pub enum Step {
    /// It ran.
    Done(Outcome),
    /// It may wait for more than the local disk (a cold-tier fetch, the `missing-data` hook):
    /// run it with [`Blocking::run`].
    Blocking(Blocking),
}

/// A checked request left for the blocking pool, with a copy of its connection's session.
#[derive(Debug)]
pub struct Blocking {
    session: Session,
    id: CommandId,
    cmd: Command,
    args: Vec<Bytes>,
}

impl Blocking {
    /// Runs the request on tokio's blocking pool and waits for it in the calling task, so the
    /// thread's other tasks (connections) go on meanwhile. `session` gets back what the request
    /// changed. A task that stops waiting leaves the request to finish on its own.
    pub async fn run(self, sh: &Arc<Shared>, session: &mut Session) -> Outcome {
        let Blocking {
            session: mut s,
            id,
            cmd,
            args,
        } = self;
        // Never closed, so never `None`.
        let turn = sh.blocking.clone().acquire_owned().await.ok();
        let shared = sh.clone();
        let job = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let outcome = shared.finish(&mut s, id, cmd, args);
            (s, outcome)
        });
        match job.await {
            Ok((s, outcome)) => {
                *session = s;
                outcome
            }
            Err(e) => {
                // A panic (fatal in `qsfs serve`) or a runtime shutting down.
                tracing::error!(error = %e, "a request on the blocking pool failed");
                Outcome {
                    reply: Some(Reply::err("Internal Error")),
                    close: true,
                }
            }
        }
    }
}

/// Everything the connections share.
pub struct Shared {
    /// The store served.
    pub store: Arc<dyn ServerStore>,
    /// The configuration.
    pub config: ServerConfig,
    namespaces: RwLock<HashMap<String, Arc<NsState>>>,
    /// Counters for INFO.
    pub stats: Stats,
    /// WAIT and MIRROR notifications.
    pub events: broadcast::Sender<Event>,
    /// Connections in MIRROR mode.
    pub mirrors: AtomicU64,
    /// Connections subscribed to `events` (waiting or mirroring).
    pub listeners: AtomicU64,
    /// The hook runner.
    pub hooks: Hooks,
    /// Random id shown in INFO.
    pub instance_id: u32,
    /// Start time (INFO `boot_time`).
    pub boot: SystemTime,
    next_conn: AtomicU64,
    /// Turns on the blocking pool ([`BLOCKING_REQUESTS`]).
    blocking: Arc<Semaphore>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Builds the shared state; the namespace states are loaded lazily.
    pub fn new(store: Arc<dyn ServerStore>, config: ServerConfig) -> Self {
        let (events, _) = broadcast::channel(4096);
        let hooks = Hooks::new(config.hook.clone(), config.instance_id());
        Shared {
            store,
            config,
            namespaces: RwLock::new(HashMap::new()),
            stats: Stats::default(),
            events,
            mirrors: AtomicU64::new(0),
            listeners: AtomicU64::new(0),
            hooks,
            instance_id: rand::random(),
            boot: SystemTime::now(),
            next_conn: AtomicU64::new(1),
            blocking: Arc::new(Semaphore::new(BLOCKING_REQUESTS)),
        }
    }

    /// The state of namespace `name`, loading its mode from the store the first time.
    pub fn ns_state(&self, name: &str) -> Result<Arc<NsState>, Error> {
        if let Some(s) = self.namespaces.read().get(name) {
            return Ok(s.clone());
        }
        let info = self.store.namespace_info(name)?;
        let mut map = self.namespaces.write();
        Ok(map
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(NsState::new(name, info.mode)))
            .clone())
    }

    /// Forgets a deleted namespace and detaches connections still using it.
    pub fn ns_deleted(&self, name: &str) {
        if let Some(s) = self.namespaces.write().remove(name) {
            s.deleted.store(true, Ordering::SeqCst);
        }
    }

    /// Every namespace state loaded so far.
    pub fn ns_states(&self) -> Vec<Arc<NsState>> {
        self.namespaces.read().values().cloned().collect()
    }

    /// A new session on `default`.
    pub fn new_session(&self) -> Result<Session, Error> {
        let ns = match self.ns_state(qsfs_core::DEFAULT_NAMESPACE) {
            Ok(ns) => ns,
            // A damaged `default` answers its commands with errors; the connection still
            // serves every other namespace (not cached: it is no namespace to remember).
            Err(Error::Corrupt { .. }) => Arc::new(NsState::damaged(qsfs_core::DEFAULT_NAMESPACE)),
            Err(e) => return Err(e),
        };
        self.stats.clients_lifetime.fetch_add(1, Ordering::Relaxed);
        Ok(Session {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            ns,
            admin: self.config.admin_password.is_none(),
            writable: !self.config.protect,
            nonce: None,
            wait: None,
            mirror: false,
            master: false,
        })
    }

    /// The server-wide mode (`--mode`), `None` when mixed.
    pub fn mode(&self) -> Option<Mode> {
        self.config.mode
    }

    /// Runs one request on this thread, whatever it waits for.
    pub fn execute(&self, session: &mut Session, args: Vec<Bytes>) -> Outcome {
        match self.step(session, args) {
            Step::Done(outcome) => outcome,
            Step::Blocking(b) => {
                let Blocking {
                    session: mut s,
                    id,
                    cmd,
                    args,
                } = b;
                let outcome = self.finish(&mut s, id, cmd, args);
                *session = s;
                outcome
            }
        }
    }

    /// Runs one request, unless it may wait for more than the local disk (see
    /// [`ServerStore::read_may_wait`]): that one is checked and handed back as
    /// [`Step::Blocking`], for the caller to run off its thread.
    pub fn step(&self, session: &mut Session, mut args: Vec<Bytes>) -> Step {
        if session.ns.deleted.load(Ordering::SeqCst) {
            return Step::Done(Outcome {
                reply: Some(Reply::err(ERR_DETACHED)),
                close: true,
            });
        }
        let stats = &self.stats;
        stats.commands_executed.fetch_add(1, Ordering::Relaxed);
        if session.master && args.len() > 1 {
            args.pop();
        }
        let Some(id) = command::lookup(&args[0], self.config.strict_commands) else {
            stats.commands_failed.fetch_add(1, Ordering::Relaxed);
            return Step::Done(Outcome {
                reply: Some(Reply::err("Command not supported")),
                close: false,
            });
        };
        let cmd = match Command::parse(id, &args) {
            Err(r) => return Step::Done(self.conclude(session, id, Some(r), args)),
            Ok(cmd) if cmd.admin_only() && !session.admin => {
                stats.commands_unauthorized.fetch_add(1, Ordering::Relaxed);
                return Step::Done(self.conclude(session, id, Some(Reply::err(ERR_DENIED)), args));
            }
            Ok(cmd) => cmd,
        };
        if self.may_wait(session, &cmd) {
            return Step::Blocking(Blocking {
                session: session.clone(),
                id,
                cmd,
                args,
            });
        }
        Step::Done(self.finish(session, id, cmd, args))
    }

    /// True if `cmd` may wait for more than the local disk. Only reads of values can, and
    /// only those the store says are not local, so the common request runs where it arrived.
    fn may_wait(&self, s: &Session, cmd: &Command) -> bool {
        let (store, ns) = (&self.store, s.ns.name.as_str());
        match cmd {
            Command::Get { key } | Command::Check { key } => {
                store.read_may_wait(ns, ReadTarget::Value(key))
            }
            Command::Mget { keys } => keys
                .iter()
                .any(|k| store.read_may_wait(ns, ReadTarget::Value(k))),
            Command::History { key, .. } => store.read_may_wait(ns, ReadTarget::History(key)),
            Command::Data { args } if args.len() >= 3 && args[0].eq_ignore_ascii_case(b"RAW") => {
                let file = atoi(&args[1]).max(0) as u64;
                store.read_may_wait(ns, ReadTarget::Segment(file))
            }
            // Reloads a namespace from disk, and from the cold tier what is evicted: slow
            // whatever it finds, and rare.
            Command::Reload { .. } => true,
            _ => false,
        }
    }

    /// Runs a checked request.
    fn finish(
        &self,
        session: &mut Session,
        id: CommandId,
        cmd: Command,
        args: Vec<Bytes>,
    ) -> Outcome {
        let reply = self.run(session, cmd);
        self.conclude(session, id, reply, args)
    }

    /// Counts a failure and tells WAIT and MIRROR connections.
    fn conclude(
        &self,
        session: &Session,
        id: CommandId,
        reply: Option<Reply>,
        args: Vec<Bytes>,
    ) -> Outcome {
        if reply.as_ref().is_some_and(Reply::is_error) {
            self.stats.commands_failed.fetch_add(1, Ordering::Relaxed);
        }
        self.publish(session, id, args);
        Outcome {
            reply,
            close: false,
        }
    }

    /// Tells WAIT and MIRROR connections about a command `session` ran.
    fn publish(&self, session: &Session, id: CommandId, args: Vec<Bytes>) {
        // An atomic rather than `receiver_count`, which takes the channel's lock.
        if self.listeners.load(Ordering::Relaxed) > 0 {
            let mirror = self.mirrors.load(Ordering::Relaxed) > 0;
            let _ = self.events.send(Event {
                conn: session.id,
                ns: Arc::from(session.ns.name.as_str()),
                command: id,
                args: mirror.then(|| Arc::new(args)),
            });
        }
    }

    /// True if `args` is a plain `SET key value` that [`Shared::execute_sets`] may run together
    /// with its neighbours.
    pub fn batchable_set(&self, session: &Session, args: &[Bytes]) -> bool {
        args.len() == 3
            && !session.master
            && command::lookup(&args[0], self.config.strict_commands) == Some(*SET_ID)
    }

    /// Runs consecutive plain SETs of one read (each [`Shared::batchable_set`]) with the checks,
    /// counters, notifications and replies of [`Shared::execute`], but one store call, so their
    /// records are appended together. Replies are in order.
    pub fn execute_sets(&self, session: &mut Session, sets: Vec<Vec<Bytes>>) -> Vec<Outcome> {
        if sets.len() == 1 || session.ns.deleted.load(Ordering::SeqCst) {
            return sets
                .into_iter()
                .map(|args| self.execute(session, args))
                .collect();
        }
        let prepared = self.prepare_sets(session, &sets);
        let outcomes = if prepared.items.is_empty() {
            Ok(Vec::new())
        } else {
            let refs: Vec<(&[u8], &[u8])> = prepared
                .items
                .iter()
                .map(|(k, v)| (&k[..], &v[..]))
                .collect();
            self.store.set_many(&session.ns.name, &refs)
        };
        self.finish_sets(session, sets, prepared, outcomes)
    }

    /// [`Shared::execute_sets`] for the SETs at the end of a read: they are written together
    /// with those the other connections of this thread run in the same event-loop pass (see
    /// `group`), and this returns once they are written and synced as the durability asks.
    pub async fn execute_sets_together(
        &self,
        session: &mut Session,
        sets: Vec<Vec<Bytes>>,
    ) -> Vec<Outcome> {
        if session.ns.deleted.load(Ordering::SeqCst) {
            return sets
                .into_iter()
                .map(|args| self.execute(session, args))
                .collect();
        }
        let mut prepared = self.prepare_sets(session, &sets);
        let outcomes = if prepared.items.is_empty() {
            Ok(Vec::new())
        } else {
            let items = std::mem::take(&mut prepared.items);
            super::group::set_together(&self.store, &session.ns.name, items).await
        };
        self.finish_sets(session, sets, prepared, outcomes)
    }

    /// SET's checks for each of `sets`: the replies of those refused, and the items to store.
    fn prepare_sets(&self, session: &Session, sets: &[Vec<Bytes>]) -> PreparedSets {
        self.stats
            .commands_executed
            .fetch_add(sets.len() as u64, Ordering::Relaxed);
        let mut prepared = PreparedSets {
            replies: Vec::with_capacity(sets.len()),
            slots: Vec::with_capacity(sets.len()),
            items: Vec::with_capacity(sets.len()),
        };
        for (i, args) in sets.iter().enumerate() {
            match keys::set_check(self, session, &args[1], None) {
                Ok(()) => {
                    prepared.items.push((args[1].clone(), args[2].clone()));
                    prepared.slots.push(i);
                    prepared.replies.push(None);
                }
                Err(r) => prepared.replies.push(Some(r)),
            }
        }
        prepared
    }

    /// The replies to `sets`, given what the store answered for the prepared items; counts
    /// failures and tells WAIT and MIRROR connections.
    fn finish_sets(
        &self,
        session: &Session,
        sets: Vec<Vec<Bytes>>,
        prepared: PreparedSets,
        outcomes: qsfs_core::Result<Vec<qsfs_core::Result<qsfs_core::SetOutcome>>>,
    ) -> Vec<Outcome> {
        let PreparedSets {
            mut replies, slots, ..
        } = prepared;
        match outcomes {
            Ok(results) => {
                for (i, r) in slots.iter().zip(results) {
                    replies[*i] = Some(keys::set_reply(session, r));
                }
            }
            Err(e) => {
                let r = keys::set_reply(session, Err(e));
                for i in &slots {
                    replies[*i] = Some(r.clone());
                }
            }
        }
        let stats = &self.stats;
        sets.into_iter()
            .zip(replies)
            .map(|(args, reply)| {
                let reply = reply.unwrap_or(Reply::Nil);
                if reply.is_error() {
                    stats.commands_failed.fetch_add(1, Ordering::Relaxed);
                }
                self.publish(session, *SET_ID, args);
                Outcome {
                    reply: Some(reply),
                    close: false,
                }
            })
            .collect()
    }

    fn run(&self, s: &mut Session, cmd: Command) -> Option<Reply> {
        Some(match cmd {
            Command::NotValid => Reply::err("This is not a valid command"),
            Command::Wait { command, timeout } => {
                return admin::wait(s, &command, timeout.as_deref())
            }
            Command::Mirror => admin::mirror(self, s),
            Command::Master => {
                s.master = true;
                Reply::Status("Hello, master".into())
            }
            Command::Ping => Reply::Status("PONG".into()),
            Command::Time => admin::time(),
            Command::Auth { args } => admin::auth(self, s, &args),
            Command::Hooks => self.hooks.list_reply(),
            Command::Index { args } => admin::index(self, s, &args),
            Command::Data { args } => admin::data(self, s, &args),
            Command::Set {
                key,
                value,
                timestamp,
                ..
            } => keys::set(self, s, &key, &value, timestamp.as_deref()),
            Command::Get { key } => keys::get(self, s, &key),
            Command::Mget { keys: k } => keys::mget(self, s, &k),
            Command::Del { key, timestamp } => keys::del(self, s, &key, timestamp.as_deref()),
            Command::Exists { key } => keys::exists(self, s, &key),
            Command::Check { key } => keys::check(self, s, &key),
            Command::Length { key } => keys::length(self, s, &key, false),
            Command::Keytime { key } => keys::length(self, s, &key, true),
            Command::Dbsize => keys::dbsize(self, s),
            Command::Scan { cursor, reverse } => scan::scan(self, s, cursor.as_deref(), reverse),
            Command::Kscan => Reply::err("Command disabled in release code, not yet available"),
            Command::History { key, ekey } => scan::history(self, s, &key, ekey.as_deref()),
            Command::Keycur { key } => scan::keycur(self, s, &key),
            Command::Info => Reply::bulk(super::info::info_text(self)),
            Command::Stop => Reply::err("Unauthorized"),
            Command::NsNew { name } => namespace::nsnew(self, &name),
            Command::NsDel { name } => namespace::nsdel(self, s, &name),
            Command::NsList => namespace::nslist(self),
            Command::NsSet {
                name,
                property,
                value,
            } => namespace::nsset(self, &name, &property, &value),
            Command::NsInfo { name } => namespace::nsinfo(self, s, &name),
            Command::NsJump => namespace::nsjump(self, s),
            Command::Select { name, rest } => namespace::select(self, s, &name, &rest),
            Command::Reload { name } => namespace::reload(self, &name),
            Command::Flush => namespace::flush(self, s),
        })
    }
}

/// C `atoi` on an argument (timestamps and numbers are parsed leniently by the original).
pub fn atoi(b: &[u8]) -> i64 {
    let s = std::str::from_utf8(b).unwrap_or("");
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for c in digits.bytes().take_while(u8::is_ascii_digit) {
        v = v.saturating_mul(10).saturating_add(i64::from(c - b'0'));
    }
    if neg {
        -v
    } else {
        v
    }
}

/// A frozen check: the error reply when the session's namespace is frozen.
/// The refusal of every key command on a frozen namespace, or on one the store found damaged.
pub fn frozen(s: &Session) -> Option<Reply> {
    if s.ns.damaged {
        return Some(damaged(&s.ns.name));
    }
    s.ns.frozen
        .load(Ordering::Relaxed)
        .then(|| Reply::err(ERR_FROZEN))
}

/// The reply about namespace `name`, which the store found damaged. What is damaged, with its
/// paths on the server, goes to the server's log only.
pub fn damaged(name: &str) -> Reply {
    Reply::err(format!(
        "Namespace {name} is damaged and unavailable until repaired (see the server log)"
    ))
}
