//! `qsfs mount`: mounts the qsfs filesystem in the foreground until it is unmounted
//! (`fusermount3 -u`, `umount`) or the process gets SIGINT/SIGTERM/SIGHUP, then flushes
//! everything and exits 0. Only parses and wires: the filesystem is `qsfs_fuse`, the store the
//! embedded `qsfs_store::Engine` under the root directory.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use qsfs_core::Store;
use qsfs_fuse::{Capacity, Fs, FsConfig, MountOptions};
use qsfs_store::EngineConfig;

use crate::fsmount;

/// Arguments of `qsfs mount`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to mount on (created if missing).
    pub mountpoint: PathBuf,
    /// Root directory holding the engine data (ROOT/engine).
    #[arg(long, env = "QSFS_ROOT")]
    pub root: Option<PathBuf>,
    /// A remote store instead of the embedded engine: zdb://[PASSWORD@]host:port[/namespace]
    /// or zdb+unix://[PASSWORD@]/path/to/socket[#namespace]. A URL with a password is better
    /// given in QSFS_STORE than on the command line, where any user can read it (`ps`).
    #[arg(long, env = "QSFS_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// With --store: a fixed size for statfs to report (suffixes K, M, G, T), and no reserve.
    /// Without it, the server is asked (NSINFO of the filesystem's block namespace): df shows
    /// its disk, or the namespace's maxsize, and --reserve applies; a server that does not
    /// tell is reported as 1T.
    #[arg(long, value_parser = parse_size)]
    pub capacity: Option<u64>,
    /// Byte budget of the block cache (suffixes K, M, G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub cache_size: u64,
    /// Block size of a new filesystem (an existing one keeps its own; suffixes K, M).
    #[arg(long, default_value = "128K", value_parser = parse_size)]
    pub block_size: u64,
    /// Dirty data and metadata older than this many seconds are flushed and synced.
    #[arg(long, default_value_t = 3)]
    pub flush_after: u64,
    /// Mount options, comma separated: allow_other, ro, rw.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Seconds between background compactions of the filesystem's namespaces.
    #[arg(long, default_value_t = 60)]
    pub compact_every: u64,
    /// Threads serving requests that must wait for the store (blocks, inodes or listings not
    /// in memory that the store cannot answer at once: a slow remote store, a cold-tier
    /// fetch), so such a request holds up no other; one file or directory uses at most half of
    /// them. 0 serves them on the request thread, which holds up the whole mount while the
    /// store answers.
    #[arg(long, value_name = "N", default_value_t = qsfs_fuse::fetch::DEFAULT_READ_THREADS,
          value_parser = read_threads)]
    pub threads: usize,
    /// Take over a mount lock held by another host.
    #[arg(long)]
    pub force: bool,
    /// Disk space kept free for deletes and compaction, at most a quarter of the disk (suffixes
    /// K, M, G): writes fail with "No space left on device" rather than use it, and df leaves it
    /// out. While less than twice this is available, the engine gives back the space of deleted
    /// and overwritten data within seconds. With --store, the server's disk (or the block
    /// namespace's maxsize).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub reserve: u64,
    /// Size of the engine's segment files (suffixes K, M, G); a segment's space comes back
    /// whole, so a small disk wants small segments.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub segment_size: u64,
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        Some((i, 't' | 'T')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("not a size: {s:?} (use e.g. 512M)"))
}

/// Parses `--threads`: 0 to [`qsfs_fuse::fetch::MAX_READ_THREADS`].
pub fn read_threads(s: &str) -> Result<usize, String> {
    let max = qsfs_fuse::fetch::MAX_READ_THREADS;
    match s.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("not a thread count from 0 to {max}: {s:?}")),
    }
}

/// The mount options of `-o` and `--threads`.
pub fn mount_options(opts: &[String], threads: usize) -> anyhow::Result<MountOptions> {
    let mut m = MountOptions {
        threads,
        ..MountOptions::default()
    };
    for o in opts.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        match o {
            "allow_other" => m.allow_other = true,
            "ro" => m.read_only = true,
            "rw" => m.read_only = false,
            other => bail!("unknown mount option {other:?} (known: allow_other, ro, rw)"),
        }
    }
    Ok(m)
}

/// The Store the filesystem lives in, and where statfs and the reserve measure its space.
fn open_store(args: &Args) -> anyhow::Result<(Arc<dyn Store>, Capacity)> {
    if let Some(url) = &args.store {
        // A 0-db-compatible server (`qsfs serve` or the original 0-db) holds the filesystem and
        // knows its disk (NSINFO), so statfs and the reserve ask it, unless a size is given.
        let client = qsfs_store::remote::ZdbClient::from_url(url)
            .with_context(|| format!("connecting to {}", qsfs_store::remote::redact(url)))?;
        let capacity = args.capacity.map_or(Capacity::Store, Capacity::Fixed);
        return Ok((Arc::new(client), capacity));
    }
    if args.capacity.is_some() {
        bail!("--capacity is for a remote store (--store); a local mount reports its disk");
    }
    let root = crate::root::resolve(args.root.clone());
    let dir = root.join("engine");
    let config = EngineConfig {
        max_segment_size: args.segment_size,
        low_space: Some(fsmount::low_space(&dir, args.reserve)?),
        ..fsmount::fs_engine_config()
    };
    let engine = fsmount::open_engine(&dir, config)?;
    fsmount::spawn_compactor(&engine, Duration::from_secs(args.compact_every));
    Ok((engine, Capacity::Disk(dir)))
}

/// Runs `qsfs mount`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let signals = fsmount::block_stop_signals()?;

    let options = mount_options(&args.options, args.threads)?;
    if args.block_size == 0 || args.block_size > qsfs_core::MAX_VALUE_LEN as u64 {
        bail!(
            "--block-size must be between 1 and {} bytes",
            qsfs_core::MAX_VALUE_LEN
        );
    }
    std::fs::create_dir_all(&args.mountpoint)
        .with_context(|| format!("creating mountpoint {}", args.mountpoint.display()))?;
    let (store, capacity) = open_store(&args)?;
    let config = FsConfig {
        block_size: args.block_size as u32,
        cache_bytes: args.cache_size,
        flush_after: Duration::from_secs(args.flush_after.max(1)),
        capacity,
        force: args.force,
        reserve: args.reserve,
        ..FsConfig::default()
    };
    let fs = Fs::open(store, config).context("opening the filesystem")?;
    fsmount::serve(fs, &args.mountpoint, &options, signals)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn unknown_mount_options_are_errors() {
        assert!(mount_options(&["allow_other".into(), "ro".into()], 4).is_ok());
        assert!(mount_options(&["size=10G".into()], 4).is_err());
    }
}
