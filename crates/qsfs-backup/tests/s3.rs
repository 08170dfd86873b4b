//! The S3 backend against a real S3 server: `s3s-fs` (crates.io, an S3 server over a
//! directory), started as a separate process per test. Built only with the cargo feature `s3`
//! (`required-features` in Cargo.toml).
//!
//! The server binary is `$S3S_FS` or `s3s-fs` on `PATH`; install it with
//! `cargo install s3s-fs --version 0.14.1 --features binary` (it cannot be a dev-dependency:
//! its crates pin versions that conflict with this workspace's).
//!
//! The full conformance suite's last check stores a 255-byte key, which S3 allows (keys up to
//! 1024 bytes) but s3s-fs cannot hold: it keeps a sidecar file per object named after the
//! base64 of the key, longer than a file name may be. `contract` below runs every other check
//! of the suite's contract, with keys as long as s3s-fs can name.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use qsfs_backup::config::{BackendSpec, Config, S3Spec};
use qsfs_backup::crypto::KeySource;
use qsfs_core::{Backend, Error, HealthStatus};

const ACCESS_KEY: &str = "qsfs-test-access";
const SECRET_KEY: &str = "qsfs-test-secret-key";

/// An `s3s-fs` process on a free local port, killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
    root: tempfile::TempDir,
}

fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("s3s-fs"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "the S3 tests need the s3s-fs server: `cargo install s3s-fs --version 0.14.1 \
                 --features binary`, or set S3S_FS to its path"
            )
        })
}

impl S3Server {
    fn start(buckets: &[&str]) -> S3Server {
        let root = tempfile::tempdir().expect("tempdir");
        for b in buckets {
            // s3s-fs keeps a bucket as a directory of its root.
            std::fs::create_dir(root.path().join(b)).expect("bucket directory");
        }
        let port = free_port();
        let child = Command::new(server_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
        }
    }

    fn spec(&self, bucket_and_prefix: &str) -> S3Spec {
        let BackendSpec::S3(mut spec) = BackendSpec::parse(
            &format!("s3://{bucket_and_prefix}"),
            Path::new("/"),
            qsfs_backup::config::ZdbRole::Data,
        )
        .expect("parse") else {
            panic!("not an s3 spec");
        };
        spec.endpoint = Some(self.endpoint.clone());
        spec.region = Some("us-east-1".into());
        spec.access_key_id = Some(ACCESS_KEY.into());
        spec.secret_access_key = Some(SECRET_KEY.into());
        spec.allow_http = Some(true);
        spec
    }

    fn backend(&self, bucket_and_prefix: &str) -> Arc<dyn Backend> {
        self.spec(bucket_and_prefix)
            .open(Duration::from_secs(5), Duration::from_secs(2))
            .expect("open")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn blob(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// The Backend conformance suite, with the longest key s3s-fs can keep its sidecar file for
/// (real S3 allows 1,024-byte keys; the suite's 255 is the contract's own limit).
async fn contract(b: &dyn Backend) {
    qsfs_core::testing::backend::run_with_longest_key(b, S3S_FS_LONGEST_KEY).await;
}

/// The longest single path component s3s-fs 0.14 stores an object under: 154 bytes fail (its
/// sidecar file, named longer than the object, reaches the 255-byte file name limit first).
const S3S_FS_LONGEST_KEY: usize = 153;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_contract_holds_against_a_real_s3_server() {
    let server = S3Server::start(&["qsfs-a"]);
    contract(server.backend("qsfs-a").as_ref()).await;
    // Under a prefix, and two prefixes of one bucket do not see each other.
    let p = server.backend("qsfs-a/repo/one");
    contract(p.as_ref()).await;
    p.put("k", Bytes::from_static(b"1")).await.expect("put");
    let q = server.backend("qsfs-a/repo/two");
    assert!(q.list("").await.expect("list").is_empty());
    assert!(server.root.path().join("qsfs-a/repo/one/k").is_file());
    assert_eq!(p.name(), "s3://qsfs-a/repo/one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_over_s3_buckets_stores_and_survives_a_lost_bucket() {
    let server = S3Server::start(&["qsfs-m", "qsfs-d1", "qsfs-d2", "qsfs-d3"]);
    // The S3 settings come from the config's [s3] table, as an operator writes them.
    let text = format!(
        r#"
data_shards = 2
parity_shards = 1
stripe_size = 262144
op_timeout_ms = 5000
kdf = {{ memory_kib = 64, iterations = 1, parallelism = 1 }}
[s3]
endpoint = "{}"
region = "us-east-1"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
allow_http = true
[meta]
backends = ["s3://qsfs-m/meta"]
[[groups]]
backends = ["s3://qsfs-d1", "s3://qsfs-d2/x", "s3://qsfs-d3"]
"#,
        server.endpoint
    );
    let config = Config::parse(&text, Path::new("s3.toml"), Path::new("/")).expect("config");
    let pipeline = config
        .open(Some(KeySource::passphrase("s3 test")), None)
        .await
        .expect("open pipeline");
    let data = blob(9, 1_000_000);
    pipeline.put("obj/one", data.clone()).await.expect("store");
    assert_eq!(pipeline.get("obj/one").await.expect("retrieve"), data);
    assert_eq!(
        pipeline
            .get_range("obj/one", 300_000..700_001)
            .await
            .expect("range"),
        data.slice(300_000..700_001)
    );
    // Shards really went to the buckets, encrypted.
    let d1 = server.backend("qsfs-d1");
    let shards = d1.list("").await.expect("list d1");
    assert!(!shards.is_empty(), "no shard in qsfs-d1");
    // One bucket loses everything: m = 1 still reads back.
    for k in shards {
        d1.delete(&k).await.expect("wipe d1");
    }
    assert_eq!(pipeline.get("obj/one").await.expect("degraded"), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_or_a_wrong_secret_is_a_clear_error_in_bounded_time() {
    let server = S3Server::start(&["qsfs-e"]);
    let mut wrong = server.spec("qsfs-e");
    wrong.secret_access_key = Some("not-the-secret".into());
    let wrong = wrong
        .open(Duration::from_secs(5), Duration::from_secs(2))
        .expect("open");
    let e = wrong
        .put("k", Bytes::from_static(b"v"))
        .await
        .expect_err("bad signature");
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    assert!(!e.to_string().contains("not-the-secret"), "{e}");
    assert_eq!(wrong.health().await.status, HealthStatus::Down);

    // Nothing listens on this port: refused connections are Unavailable (retryable), after
    // object_store's own retries, within the configured time.
    let mut dead = server.spec("qsfs-e");
    dead.endpoint = Some(format!("http://127.0.0.1:{}", free_port()));
    let dead = dead
        .open(Duration::from_secs(2), Duration::from_secs(1))
        .expect("open");
    // A generous guard against a hang, not a performance check.
    let guard = Duration::from_secs(60);
    let e = tokio::time::timeout(guard, dead.get("k"))
        .await
        .expect("a get from a dead endpoint must end")
        .expect_err("nobody listens");
    assert!(e.is_retryable(), "{e:?}");
    let h = tokio::time::timeout(guard, dead.health())
        .await
        .expect("a health probe must end");
    assert_eq!(h.status, HealthStatus::Down, "{h:?}");
}
