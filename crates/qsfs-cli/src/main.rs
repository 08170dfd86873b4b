//! The `qsfs` command: parses a config and wires the qsfs crates together. No logic a library
//! user would need lives here; each subcommand is a module that builds the library objects and
//! runs them.

use std::ffi::OsString;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc. The storage paths allocate and free block-sized buffers
/// (128 KiB blocks, 1 MiB stripes) on different threads; glibc handed that memory back to the
/// kernel and faulted it in again, zeroed, on the next allocation: about 85,000 page faults per
/// GiB written through a mount (`dd bs=1M conv=fsync`) and as many per GiB read back, counted
/// in `/proc/PID/stat`. mimalloc keeps it for reuse: about 600 and 1,000.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backup;
mod chain;
mod fsck;
mod fsmount;
mod key;
mod metrics;
mod mount;
mod recover;
mod root;
mod serve;
mod status;
mod umount;
mod up;

/// qsfs: a filesystem with practically unlimited space.
#[derive(Debug, Parser)]
#[command(name = "qsfs", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the 0-db-compatible RESP protocol over the embedded engine.
    Serve(Box<serve::Args>),
    /// Mount the qsfs filesystem.
    Mount(mount::Args),
    /// Unmount a qsfs filesystem and wait until its process has flushed everything.
    Umount(umount::Args),
    /// Encrypted, erasure-coded backup: store, retrieve, check, rebuild, ...
    Backup(backup::Args),
    /// Check the filesystem offline (unmounted) and, with --repair, fix it.
    Fsck(fsck::Args),
    /// Run the whole storage chain: mount, offload to the backups, bounded local disk.
    Up(up::Args),
    /// Rebuild a root's engine from the backups alone (then `qsfs up` serves it).
    Recover(recover::Args),
    /// Local usage against the cap, upload backlog and backend health of a root.
    Status(status::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(cli_args(std::env::args_os()));
    init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => umount::run(args),
        Command::Backup(args) => backup::run(args),
        Command::Fsck(args) => fsck::run(args),
        Command::Up(args) => up::run(args),
        Command::Recover(args) => recover::run(args),
        Command::Status(args) => status::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qsfs: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: most qsfs errors already end with
/// their cause's text (`Error::Io` prints its source), which `{:#}` would print again.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

/// The process arguments, with 0-db's single-dash long options (`qsfs serve -port 9900`) turned
/// into `--port` for the `serve` subcommand only: `backup` and `mount` take paths and values
/// that may look like such options (a file named `-data`) and are passed through untouched.
fn cli_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let args: Vec<OsString> = args.into_iter().collect();
    if args.get(1).map(|a| a == "serve").unwrap_or(false) {
        serve::normalize_args(args)
    } else {
        args
    }
}

fn init_logging() {
    // fuser reports "Unmount failed: Invalid argument" at error level after every unmount
    // done from outside (`fusermount3 -u`, `qsfs umount`): the kernel has already detached it.
    // Real unmount failures are reported by `qsfs_fuse::Mount` itself.
    let filter = tracing_subscriber::EnvFilter::try_from_env("QSFS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,fuser=warn,fuser::mnt::fuse_pure=off")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        cli_args(a.iter().map(OsString::from))
            .into_iter()
            .map(|s| s.into_string().unwrap_or_default())
            .collect()
    }

    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(21);
        let e = anyhow::Error::from(qsfs_core::Error::io("rename into out", io));
        assert_eq!(
            one_line(&e),
            "i/o error: rename into out: Is a directory (os error 21)"
        );
        // A cause the message does not already hold is still given.
        let e = anyhow::Error::from(std::io::Error::from_raw_os_error(2)).context("reading cfg");
        assert_eq!(
            one_line(&e),
            "reading cfg: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn single_dash_options_only_for_serve() {
        assert_eq!(
            args(&["qsfs", "serve", "-port", "9901", "-data", "/d"]),
            ["qsfs", "serve", "--port", "9901", "--data", "/d"]
        );
        let backup = ["qsfs", "backup", "-c", "c.toml", "store", "-data", "-port"];
        assert_eq!(args(&backup), backup);
        let mount = ["qsfs", "mount", "-index", "/mnt"];
        assert_eq!(args(&mount), mount);
        // Parsed for real: the rewritten serve arguments are accepted by clap.
        assert!(Cli::try_parse_from(cli_args(
            ["qsfs", "serve", "-port", "9901", "-mode", "user"].map(OsString::from)
        ))
        .is_ok());
    }
}
