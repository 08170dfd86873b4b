//! The `qsfs` command: parses a config and wires the qsfs crates together. No logic a library
//! user would need lives here; each subcommand is a module that builds the library objects and
//! runs them.

use clap::{Parser, Subcommand};

mod backup;
mod mount;
mod root;
mod serve;

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
    Serve(serve::Args),
    /// Mount the qsfs filesystem.
    Mount(mount::Args),
    /// Encrypted, erasure-coded backup: store, retrieve, check, rebuild, ...
    Backup(backup::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Backup(args) => backup::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qsfs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QSFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
