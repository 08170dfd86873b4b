//! Run the 0-db-compatible RESP server in-process on a free port over an embedded engine, then
//! talk to it twice: with qsfs's own 0-db client (which implements the same `Store` trait as
//! the engine) and with a raw Redis-protocol exchange over TCP, as `redis-cli` would.
//!
//! Run: `cargo run --example serve_and_query`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use qsfs::core::Store;
use qsfs::store::remote::{ZdbClient, ZdbConfig};
use qsfs::store::server::{serve, ServerConfig};
use qsfs::store::{Engine, EngineConfig};

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), EngineConfig::default())?;
    // The server runs on tokio; the client below is blocking, so it runs on this thread.
    let rt = tokio::runtime::Runtime::new()?;
    let config = ServerConfig {
        tcp: Some(([127, 0, 0, 1], 0).into()), // port 0: the OS picks a free port
        ..ServerConfig::default()
    };
    let server = rt.block_on(serve(Arc::new(engine.clone()), config))?;
    let addr = server
        .local_addr
        .ok_or_else(|| anyhow::anyhow!("no TCP address"))?;

    // 1. The typed client: the same Store calls as on the embedded engine.
    let client = ZdbClient::connect(ZdbConfig::new(addr.to_string()))?;
    client.namespace_create("music")?;
    client.set("music", Some(b"track-1"), b"so what")?;
    let got = client.get("music", b"track-1")?.map(|e| e.value);
    assert_eq!(got.as_deref(), Some(&b"so what"[..]));
    // What went over the wire landed in the engine.
    assert_eq!(engine.get("music", b"track-1")?.map(|e| e.value), got);

    // 2. Raw RESP, byte for byte: SET then GET in the `default` namespace.
    let mut tcp = TcpStream::connect(addr)?;
    tcp.write_all(b"*3\r\n$3\r\nSET\r\n$5\r\nhello\r\n$5\r\nworld\r\n")?;
    // SET replies with the key as a bulk string.
    assert_eq!(read_reply(&mut tcp)?, b"$5\r\nhello\r\n");
    tcp.write_all(b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n")?;
    assert_eq!(read_reply(&mut tcp)?, b"$5\r\nworld\r\n");
    tcp.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    assert_eq!(read_reply(&mut tcp)?, b"+PONG\r\n");
    drop(tcp);
    assert_eq!(
        client.get("default", b"hello")?.map(|e| e.value),
        Some(b"world".to_vec())
    );

    drop(client);
    rt.block_on(server.shutdown())?;
    println!("serve_and_query: ok (server on {addr} answered the client and raw RESP)");
    Ok(())
}

/// Reads one complete reply (a simple line, or a bulk string with its payload).
fn read_reply(tcp: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n") {
        tcp.read_exact(&mut byte)?;
        buf.push(byte[0]);
    }
    if buf[0] == b'$' {
        let len: i64 = std::str::from_utf8(&buf[1..buf.len() - 2])?.parse()?;
        if len >= 0 {
            let mut payload = vec![0u8; len as usize + 2];
            tcp.read_exact(&mut payload)?;
            buf.extend_from_slice(&payload);
        }
    }
    Ok(buf)
}
