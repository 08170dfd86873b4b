//! The Prometheus endpoint of `qsfs up` and `qsfs serve --backup-config`: a prometheus-client
//! registry whose one collector reads the filesystem counters ([`qsfs_fuse::FsStats`]) and the
//! storage chain's state at scrape time, served over HTTP by tiny_http on its own thread.
//! Loopback by default: the endpoint has no authentication.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use qsfs_fuse::FsStats;

/// The default address of the endpoint.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9109";

/// What the storage chain reports at one scrape.
#[derive(Debug, Clone, Default)]
pub struct ChainView {
    /// Bytes of the local engine on disk.
    pub local_bytes: u64,
    /// The configured cap on them.
    pub local_cap: Option<u64>,
    /// True when the cap cannot be met (nothing more can be evicted).
    pub cap_unmet: bool,
    /// Sealed segments not yet confirmed stored in the backup.
    pub backlog_segments: u64,
    /// Their bytes.
    pub backlog_bytes: u64,
    /// Backed-up objects waiting to be deleted.
    pub pending_deletes: u64,
    /// Bytes uploaded to the backup.
    pub bytes_offloaded: u64,
    /// Segments uploaded to the backup.
    pub segments_offloaded: u64,
    /// Bytes fetched back from the backup.
    pub bytes_fetched: u64,
    /// Fetch cache hits.
    pub fetch_cache_hits: u64,
    /// Fetch cache misses.
    pub fetch_cache_misses: u64,
    /// Segments evicted from local disk.
    pub evictions: u64,
    /// Failed upload attempts.
    pub upload_failures: u64,
    /// Objects deleted from the backup.
    pub cold_deleted: u64,
    /// Writers waiting at the write gate now.
    pub writers_held: u64,
    /// Writes held at the write gate since start.
    pub write_holds: u64,
    /// Milliseconds they waited in all.
    pub write_hold_ms: u64,
    /// Rounds of the tier's worker (about one a second when idle).
    pub tier_rounds: u64,
    /// Recovery cuts uploaded since start.
    pub cuts_uploaded: u64,
    /// Bytes of the last recovery cut uploaded (about the size of every index together).
    pub cut_bytes: u64,
    /// Every configured backend: name and whether it answers.
    pub backends: Vec<(String, bool)>,
}

/// Reads the chain's current state; called on every scrape.
pub type ChainSource = Box<dyn Fn() -> ChainView + Send + Sync>;

/// What the endpoint reports.
pub struct Sources {
    /// The filesystem's counters, when a filesystem is mounted in this process.
    pub fs: Option<Arc<FsStats>>,
    /// The storage chain, when one runs in this process.
    pub chain: Option<ChainSource>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("fs", &self.fs.is_some())
            .field("chain", &self.chain.is_some())
            .finish()
    }
}

#[derive(Debug)]
struct ChainCollector(Sources);

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for ChainCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        if let Some(fs) = &self.0.fs {
            let s = fs.snapshot();
            {
                let mut m = e.encode_descriptor(
                    "qsfs_fuse_ops",
                    "FUSE operations by family",
                    None,
                    ConstCounter::new(0u64).metric_type(),
                )?;
                for (op, n) in s.ops {
                    let labels = [("op", op.name())];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
            counter(
                &mut e,
                "qsfs_fuse_errors",
                "FUSE operations that failed (ENOENT and ENODATA answers excluded)",
                s.errors,
            )?;
            counter(
                &mut e,
                "qsfs_fuse_read_bytes",
                "bytes returned by FUSE reads",
                s.bytes_read,
            )?;
            counter(
                &mut e,
                "qsfs_fuse_written_bytes",
                "bytes accepted by FUSE writes",
                s.bytes_written,
            )?;
            counter(
                &mut e,
                "qsfs_block_cache_hits",
                "block reads answered from the filesystem's block cache",
                s.cache_hits,
            )?;
            counter(
                &mut e,
                "qsfs_block_cache_misses",
                "block reads that went to the store",
                s.cache_misses,
            )?;
        }
        if let Some(chain) = &self.0.chain {
            let c = chain();
            gauge(
                &mut e,
                "qsfs_local_bytes",
                "bytes of the local engine on disk",
                clamp(c.local_bytes),
            )?;
            // -1: no cap configured.
            gauge(
                &mut e,
                "qsfs_local_cap_bytes",
                "configured cap on local engine bytes (-1: none)",
                c.local_cap.map(clamp).unwrap_or(-1),
            )?;
            gauge(
                &mut e,
                "qsfs_local_cap_unmet",
                "1 when the local cap cannot be met",
                i64::from(c.cap_unmet),
            )?;
            gauge(
                &mut e,
                "qsfs_upload_backlog_segments",
                "sealed segments not yet confirmed in the backup",
                clamp(c.backlog_segments),
            )?;
            gauge(
                &mut e,
                "qsfs_upload_backlog_bytes",
                "bytes of the sealed segments not yet confirmed in the backup",
                clamp(c.backlog_bytes),
            )?;
            gauge(
                &mut e,
                "qsfs_pending_deletes",
                "backed-up objects waiting to be deleted",
                clamp(c.pending_deletes),
            )?;
            counter(
                &mut e,
                "qsfs_offloaded_bytes",
                "bytes uploaded to the backup",
                c.bytes_offloaded,
            )?;
            counter(
                &mut e,
                "qsfs_offloaded_segments",
                "segments uploaded to the backup",
                c.segments_offloaded,
            )?;
            counter(
                &mut e,
                "qsfs_fetched_bytes",
                "bytes fetched back from the backup",
                c.bytes_fetched,
            )?;
            counter(
                &mut e,
                "qsfs_fetch_cache_hits",
                "cold reads answered from the fetch cache",
                c.fetch_cache_hits,
            )?;
            counter(
                &mut e,
                "qsfs_fetch_cache_misses",
                "cold reads that went to the backup",
                c.fetch_cache_misses,
            )?;
            counter(
                &mut e,
                "qsfs_evictions",
                "segments evicted from local disk",
                c.evictions,
            )?;
            counter(
                &mut e,
                "qsfs_upload_failures",
                "failed upload attempts",
                c.upload_failures,
            )?;
            counter(
                &mut e,
                "qsfs_backup_deleted_objects",
                "objects deleted from the backup",
                c.cold_deleted,
            )?;
            gauge(
                &mut e,
                "qsfs_writers_held",
                "writers waiting for uploads (local disk over its cap after a seal)",
                clamp(c.writers_held),
            )?;
            counter(
                &mut e,
                "qsfs_write_holds",
                "writes held until uploads brought the local disk under its cap",
                c.write_holds,
            )?;
            counter(
                &mut e,
                "qsfs_write_hold_milliseconds",
                "time those writes waited, summed over the writers",
                c.write_hold_ms,
            )?;
            counter(
                &mut e,
                "qsfs_tier_rounds",
                "rounds of the offload worker, each looking for work once (idle: about one a second)",
                c.tier_rounds,
            )?;
            counter(
                &mut e,
                "qsfs_recovery_cuts",
                "recovery cuts (every namespace's index at one instant) uploaded",
                c.cuts_uploaded,
            )?;
            gauge(
                &mut e,
                "qsfs_recovery_cut_bytes",
                "bytes of the last recovery cut uploaded",
                clamp(c.cut_bytes),
            )?;
            let mut m = e.encode_descriptor(
                "qsfs_backend_up",
                "1 when the backend answers",
                None,
                ConstGauge::new(0i64).metric_type(),
            )?;
            for (name, up) in &c.backends {
                let labels = [("backend", name.as_str())];
                ConstGauge::new(i64::from(*up)).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// A running endpoint; stopped when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The text exposition of `registry`.
fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

/// Starts serving `sources` on `addr` (`/metrics`; any path answers the same).
pub fn start(addr: SocketAddr, sources: Sources) -> anyhow::Result<MetricsServer> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics endpoint listens beyond loopback, without authentication");
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ChainCollector(sources)));
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("metrics endpoint on {addr}"))?;
    let addr = server.server_addr().to_ip().unwrap_or(addr);
    let server = Arc::new(server);
    let s = server.clone();
    let thread = std::thread::Builder::new()
        .name("qsfs-metrics".into())
        .spawn(move || {
            let header = tiny_http::Header::from_bytes(
                &b"Content-Type"[..],
                &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
            )
            .ok();
            for req in s.incoming_requests() {
                let mut resp = tiny_http::Response::from_string(render(&registry));
                if let Some(h) = header.clone() {
                    resp = resp.with_header(h);
                }
                if let Err(e) = req.respond(resp) {
                    tracing::debug!(error = %e, "metrics response");
                }
            }
        })
        .context("starting the metrics thread")?;
    Ok(MetricsServer {
        server,
        thread: Some(thread),
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn scrape(addr: SocketAddr) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
            "{out}"
        );
        out
    }

    #[test]
    fn scrape_reports_fs_counters_and_every_backend() {
        let fs = Arc::new(FsStats::default());
        fs.op(qsfs_fuse::Op::Write);
        fs.op(qsfs_fuse::Op::Write);
        fs.written_bytes(4096);
        let backends: Vec<(String, bool)> = (0..4)
            .map(|i| (format!("local:/b/node{i}"), i != 2))
            .collect();
        let view = ChainView {
            local_bytes: 1234,
            local_cap: Some(1 << 20),
            backlog_segments: 3,
            writers_held: 2,
            write_holds: 7,
            write_hold_ms: 1500,
            tier_rounds: 42,
            cuts_uploaded: 5,
            cut_bytes: 65536,
            backends,
            ..ChainView::default()
        };
        let server = start(
            "127.0.0.1:0".parse().unwrap(),
            Sources {
                fs: Some(fs.clone()),
                chain: Some(Box::new(move || view.clone())),
            },
        )
        .unwrap();
        let body = scrape(server.addr());
        assert!(
            body.contains("qsfs_fuse_ops_total{op=\"write\"} 2"),
            "{body}"
        );
        assert!(
            body.contains("qsfs_fuse_written_bytes_total 4096"),
            "{body}"
        );
        assert!(body.contains("qsfs_local_bytes 1234"), "{body}");
        assert!(body.contains("qsfs_upload_backlog_segments 3"), "{body}");
        assert!(body.contains("qsfs_writers_held 2"), "{body}");
        assert!(body.contains("qsfs_write_holds_total 7"), "{body}");
        assert!(
            body.contains("qsfs_write_hold_milliseconds_total 1500"),
            "{body}"
        );
        assert!(body.contains("qsfs_tier_rounds_total 42"), "{body}");
        assert!(body.contains("qsfs_recovery_cuts_total 5"), "{body}");
        assert!(body.contains("qsfs_recovery_cut_bytes 65536"), "{body}");
        assert!(
            body.contains("qsfs_backend_up{backend=\"local:/b/node2\"} 0"),
            "{body}"
        );
        assert_eq!(body.matches("qsfs_backend_up{").count(), 4, "{body}");
        // Counters are read at scrape time.
        fs.op(qsfs_fuse::Op::Write);
        assert!(scrape(server.addr()).contains("qsfs_fuse_ops_total{op=\"write\"} 3"));
    }
}
