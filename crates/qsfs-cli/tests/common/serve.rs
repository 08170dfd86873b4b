//! A real `qsfs serve` process on a loopback port and a minimal RESP client for it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qsfs");

/// A running `qsfs serve`, killed when dropped so a failing test leaves no process behind.
pub struct Serve(pub Child);

impl std::ops::Deref for Serve {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Serve {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `qsfs serve --port PORT --data DATA EXTRA…` and waits until it accepts connections.
pub fn start(data: &Path, port: u16, extra: &[&str]) -> Serve {
    let child = Command::new(BIN)
        .args(["serve", "--port", &port.to_string(), "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qsfs serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "qsfs serve did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Serve(child)
}

/// One RESP request of bulk strings.
pub fn req(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).into_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one simple reply (status, error, integer or bulk) as text; `None` for nil.
pub fn reply(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end().to_string();
    if let Some(n) = line.strip_prefix('$') {
        let n: i64 = n.parse().expect("a bulk length");
        if n < 0 {
            return Ok(None);
        }
        let mut b = vec![0u8; n as usize + 2];
        r.read_exact(&mut b)?;
        b.truncate(n as usize);
        return Ok(Some(String::from_utf8_lossy(&b).into_owned()));
    }
    Ok(Some(line))
}

/// A connection to the server on `port` (10 s read timeout, no Nagle delay) and its reader.
pub fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to qsfs serve");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    s.set_nodelay(true).expect("set TCP_NODELAY");
    let r = BufReader::new(s.try_clone().expect("clone the socket"));
    (s, r)
}

/// Reads every `(key, value)` of `acked` back through `s`/`r` (pipelined, 500 at a time) and
/// fails on the first one that is missing or different: an acknowledged SET must survive.
pub fn assert_all_acknowledged(
    s: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    acked: &[(String, String)],
) {
    for chunk in acked.chunks(500) {
        let mut wire = Vec::new();
        for (k, _) in chunk {
            wire.extend(req(&[b"GET", k.as_bytes()]));
        }
        s.write_all(&wire).expect("send GETs");
        for (k, v) in chunk {
            let got = reply(r).expect("a GET reply");
            assert_eq!(
                got.as_deref(),
                Some(v.as_str()),
                "acknowledged SET of {k} lost"
            );
        }
    }
}
