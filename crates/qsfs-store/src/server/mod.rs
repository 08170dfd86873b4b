//! The 0-db-compatible RESP server (`qsfs serve`).
//!
//! It speaks the wire protocol of 0-db v2.0.7 (`spec/zdb-protocol.md`): the same commands,
//! prefix-matched names, reply shapes and error strings, so redis-cli, 0-db-fs and 0-stor work
//! against it unchanged. It serves any [`ServerStore`] (the embedded engine, or even a remote
//! 0-db through [`crate::remote`]), on TCP and/or a unix socket, with every connection on its own
//! task, replies of one read coalesced into one write (no 42 ms stall), a connection limit, and a
//! graceful shutdown. Differences from the original are listed in `docs/compatibility.md`.
//!
//! Layout: [`resp`] frames requests and encodes replies; [`command`] holds the table and parses
//! a [`command::Command`]; [`session`] is the per-connection state (namespace, admin, AUTH);
//! the command families live in `keys`, `scan`, `namespace` and `admin`; [`hooks`] runs the
//! `--hook` program; `listener` owns sockets, connections and shutdown.

pub mod command;
pub mod hooks;
pub mod resp;
pub mod session;

mod admin;
mod dispatch;
mod engine_ext;
mod group;
mod info;
mod keys;
mod listener;
mod namespace;
pub(crate) mod scan;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qsfs_core::{Error, Mode, Result, SetOutcome, Store};

pub use dispatch::{Blocking, Shared, Step};
pub use listener::{Server, ServerHandle};

/// One raw entry of a data file, as `DATA RAW` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// The key.
    pub key: Vec<u8>,
    /// Offset of the previous entry in the same file.
    pub previous: u64,
    /// Payload checksum as 0-db computes it.
    pub crc: u32,
    /// Entry flags (1 = deleted).
    pub flags: u8,
    /// Write time.
    pub timestamp: u64,
    /// Payload (empty for a tombstone).
    pub payload: Vec<u8>,
}

/// What a request is about to read, for [`ServerStore::read_may_wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadTarget<'a> {
    /// The live value of a key (GET, MGET, CHECK).
    Value(&'a [u8]),
    /// Any version of a key (HISTORY walks its chain).
    History(&'a [u8]),
    /// A record of data file `n` (DATA RAW).
    Segment(u64),
}

/// What the server needs beyond [`Store`]: the engine-level operations of 0-db's admin
/// commands. Every method has a default that answers [`Error::Unsupported`], so a store that
/// lacks one makes the matching command fail with a clear error instead of faking it.
pub trait ServerStore: Store {
    /// Plain SETs (no timestamp) of many keys of `ns`, outcomes in order: what a pipelining
    /// client sent in one read. A store that can append them together overrides this; the
    /// default sets them one by one.
    fn set_many(&self, ns: &str, items: &[(&[u8], &[u8])]) -> Result<Vec<Result<SetOutcome>>> {
        Ok(items
            .iter()
            .map(|(k, v)| self.set_at(ns, (!k.is_empty()).then_some(*k), v, None))
            .collect())
    }

    /// True if reading `target` in `ns` may wait for more than the local disk (a cold-tier
    /// fetch, the `missing-data` hook). The server then runs the request on tokio's blocking
    /// pool, so the other connections of its event loop go on meanwhile. Must be cheap and must
    /// not fetch anything; it runs before every such read. The default, `false`, runs every
    /// request on the event loop.
    fn read_may_wait(&self, ns: &str, target: ReadTarget<'_>) -> bool {
        let _ = (ns, target);
        false
    }

    /// Closes the current segment of `ns` and starts a new one (`NSJUMP`, `--rotate`).
    fn rotate(&self, ns: &str) -> Result<()> {
        let _ = ns;
        Err(Error::Unsupported(
            "segment rotation is not available on this store".into(),
        ))
    }

    /// Drops and reloads the namespace's in-memory state from disk (`RELOAD`).
    fn reload(&self, ns: &str) -> Result<()> {
        let _ = ns;
        Err(Error::Unsupported(
            "reload is not available on this store".into(),
        ))
    }

    /// Ids of index files rewritten since the last reset (`INDEX DIRTY`).
    fn dirty_index(&self, ns: &str) -> Result<Vec<u64>> {
        let _ = ns;
        Err(Error::Unsupported(
            "dirty index tracking is not available on this store".into(),
        ))
    }

    /// Clears the dirty set (`INDEX DIRTY RESET`).
    fn reset_dirty_index(&self, ns: &str) -> Result<()> {
        let _ = ns;
        Err(Error::Unsupported(
            "dirty index tracking is not available on this store".into(),
        ))
    }

    /// Reads one raw entry of data file `file` at `offset` (`DATA RAW`).
    fn raw_entry(&self, ns: &str, file: u64, offset: u64) -> Result<RawEntry> {
        let _ = (ns, file, offset);
        Err(Error::Unsupported(
            "raw data access is not available on this store".into(),
        ))
    }

    /// The segment being appended to and the offset of the next record in it (NSINFO
    /// `data_current_id` / `data_current_offset`, where a `DATA RAW` reader stops).
    fn current_position(&self, ns: &str) -> Option<(u64, u64)> {
        let _ = ns;
        None
    }

    /// The next sequential id of `ns`, if the store knows it (NSINFO `next_internal_id`).
    fn next_seq_id(&self, ns: &str) -> Option<u64> {
        let _ = ns;
        None
    }

    /// Damaged places the store found in `ns`'s data (NSINFO `stats_data_faults`).
    fn data_faults(&self, ns: &str) -> u64 {
        let _ = ns;
        0
    }
}

/// How the server behaves; the CLI fills it from `qsfs serve` flags.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP address to listen on (`--listen` + `--port`); `None` = no TCP.
    pub tcp: Option<std::net::SocketAddr>,
    /// Unix socket path (`--socket`).
    pub socket: Option<PathBuf>,
    /// Admin password (`--admin`); `None` = every connection is admin.
    pub admin_password: Option<String>,
    /// `--protect`: `default` is write-protected with the admin password.
    pub protect: bool,
    /// `--mode`: `None` = mixed (namespaces start in user mode and may switch while fresh).
    pub mode: Option<Mode>,
    /// `--maxsize` for `default` (in memory only).
    pub default_maxsize: Option<u64>,
    /// `--rotate`: rotate segments of changed namespaces this often.
    pub rotate_every: Option<Duration>,
    /// `--hook`: program run on events.
    pub hook: Option<PathBuf>,
    /// Index and data roots as given on the command line (for hook arguments).
    pub index_root: PathBuf,
    /// Data root as given on the command line.
    pub data_root: PathBuf,
    /// Most connections served at once; further ones get `Too many connections` and are closed.
    pub max_connections: usize,
    /// A client that leaves half a request buffered for this long gets `Timeout` and is closed.
    /// Idle clients with nothing buffered are kept forever, as by the original.
    pub partial_frame_timeout: Duration,
    /// Accept only full command names (no prefix matching).
    pub strict_commands: bool,
    /// Entries returned per SCAN call.
    pub scan_batch: usize,
    /// Threads that serve connections, each with its own event loop (a connection stays on
    /// the thread it was given when accepted); 0 = one per core.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tcp: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9900))),
            socket: None,
            admin_password: None,
            protect: false,
            mode: None,
            default_maxsize: None,
            rotate_every: None,
            hook: None,
            index_root: PathBuf::from("zdb-index"),
            data_root: PathBuf::from("zdb-data"),
            max_connections: 10_000,
            partial_frame_timeout: Duration::from_secs(60),
            strict_commands: false,
            scan_batch: 128,
            workers: 0,
        }
    }
}

impl ServerConfig {
    /// The hook instance id: `tcp://<addr>:<port>` or `unix://<path>`.
    pub fn instance_id(&self) -> String {
        match (&self.socket, &self.tcp) {
            (Some(p), _) => format!("unix://{}", p.display()),
            (None, Some(a)) => format!("tcp://{}:{}", a.ip(), a.port()),
            (None, None) => "tcp://".to_string(),
        }
    }
}

/// Starts a server for `store` (a convenience for [`Server::bind`]).
pub async fn serve(store: Arc<dyn ServerStore>, config: ServerConfig) -> Result<ServerHandle> {
    Server::bind(store, config).await.map(Server::spawn)
}
