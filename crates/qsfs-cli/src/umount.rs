//! `qsfs umount MOUNTPOINT`: unmounts a qsfs filesystem and returns once the process that
//! served it has flushed everything and exited, like `umount` of a disk filesystem returns once
//! it is synced. Only parses and wires: the work is `qsfs_fuse::unmount::unmount`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use qsfs_fuse::unmount::{unmount, Unmounted};

/// Arguments of `qsfs umount`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The mount point of a running `qsfs mount` or `qsfs up`.
    pub mountpoint: PathBuf,
    /// Detach now even while files there are open (`umount -l`): the final flush then runs
    /// once the last one is closed, and this command does not wait for it.
    #[arg(short = 'l', long)]
    pub lazy: bool,
    /// Seconds to wait for the serving process to finish its final flush.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// Runs `qsfs umount`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let done = unmount(
        &args.mountpoint,
        args.lazy,
        Duration::from_secs(args.timeout),
    )?;
    let m = args.mountpoint.display();
    match done {
        Unmounted::Flushed { .. } => {}
        Unmounted::NoServerFound => eprintln!(
            "qsfs: unmounted {m}; this kernel does not say which process served it, so its \
             final flush may still be running"
        ),
        Unmounted::Detached => {
            eprintln!("qsfs: detached {m}; it flushes once the last open file there is closed")
        }
    }
    Ok(ExitCode::SUCCESS)
}
