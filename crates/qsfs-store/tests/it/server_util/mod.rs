//! Helpers shared by the server tests: a real engine in a temporary directory served on
//! 127.0.0.1:0, and a raw-bytes client.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use qsfs_store::server::resp::{encode_request, parse_reply, Reply};
use qsfs_store::server::{Server, ServerConfig, ServerHandle};
use qsfs_store::{Engine, EngineConfig};

pub struct TestServer {
    pub addr: SocketAddr,
    pub rt: tokio::runtime::Runtime,
    pub handle: Option<ServerHandle>,
    pub engine: Engine,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start(config: ServerConfig) -> TestServer {
        Self::start_with(config, EngineConfig::default())
    }

    pub fn start_with(config: ServerConfig, engine_config: EngineConfig) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Self::start_at(&root, dir, config, engine_config)
    }

    /// A server over the engine in `root` (which outlives it: a test can stop it, change its
    /// files and serve them again); `dir` is only kept.
    pub fn start_at(
        root: &std::path::Path,
        dir: tempfile::TempDir,
        mut config: ServerConfig,
        engine_config: EngineConfig,
    ) -> TestServer {
        let engine = Engine::open(root, engine_config).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        if config.tcp.is_some() {
            config.tcp = Some("127.0.0.1:0".parse().unwrap());
        }
        config.index_root = root.to_path_buf();
        config.data_root = root.to_path_buf();
        let e2 = engine.clone();
        let handle =
            rt.block_on(async move { Server::bind(Arc::new(e2), config).await.unwrap().spawn() });
        let addr = handle
            .local_addr
            .unwrap_or_else(|| "127.0.0.1:1".parse().unwrap());
        TestServer {
            addr,
            rt,
            handle: Some(handle),
            engine,
            dir,
        }
    }

    pub fn default() -> TestServer {
        Self::start(ServerConfig::default())
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown()).unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.rt.block_on(h.shutdown());
        }
    }
}

pub struct Client {
    pub s: TcpStream,
    buf: BytesMut,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            s,
            buf: BytesMut::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads exactly `expected.len()` bytes and compares them.
    pub fn expect_raw(&mut self, expected: &[u8]) {
        while self.buf.len() < expected.len() {
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(
                n > 0,
                "connection closed; got so far {:?}, wanted {:?}",
                String::from_utf8_lossy(&self.buf),
                String::from_utf8_lossy(expected)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let got = self.buf.split_to(expected.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    /// Sends raw bytes and checks the exact reply bytes.
    pub fn raw(&mut self, req: &[u8], expected: &[u8]) {
        self.send_raw(req);
        self.expect_raw(expected);
    }

    pub fn read_reply(&mut self) -> Reply {
        loop {
            if let Some(r) = parse_reply(&mut self.buf).unwrap() {
                return r;
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        let mut b = BytesMut::new();
        encode_request(args, &mut b);
        self.send_raw(&b);
        self.read_reply()
    }

    /// Expects the server to have closed the connection.
    pub fn expect_closed(&mut self) {
        let mut chunk = [0u8; 64];
        match self.s.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected close, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected close, got {e}"),
        }
    }
}

pub fn bulk(s: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(bytes::Bytes::copy_from_slice(s.as_ref()))
}

pub fn err(s: &str) -> Reply {
    Reply::Error(s.to_string())
}

pub fn ok() -> Reply {
    Reply::Status("OK".into())
}

/// The wire form of a request.
pub fn req<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_request(args, &mut b);
    b.to_vec()
}

/// Commands a scripted server received: (connection number, command in upper case).
pub type CommandLog = Arc<std::sync::Mutex<Vec<(usize, String)>>>;

/// A scripted RESP server on 127.0.0.1:0, one thread per connection: every request is logged
/// and answered by `answer(command in upper case)`.
pub fn scripted_server(
    answer: impl Fn(&str) -> Reply + Send + Sync + 'static,
) -> (SocketAddr, CommandLog) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let log: CommandLog = Arc::default();
    let (log2, answer) = (Arc::clone(&log), Arc::new(answer));
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let (mut s, log, answer) = (s.unwrap(), Arc::clone(&log2), Arc::clone(&answer));
            std::thread::spawn(move || {
                let mut buf = BytesMut::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(Reply::Array(args)) = parse_reply(&mut buf).unwrap() {
                        let Some(Reply::Bulk(cmd)) = args.first() else {
                            return;
                        };
                        let cmd = String::from_utf8_lossy(cmd).to_uppercase();
                        log.lock().unwrap().push((n, cmd.clone()));
                        if s.write_all(&answer(&cmd).to_bytes()).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
            });
        }
    });
    (addr, log)
}
