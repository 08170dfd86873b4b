//! Mounting an [`Fs`] on a directory and unmounting it cleanly.

use fuser::{MountOption, Session, SessionUnmounter};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::fs::Fs;
use crate::fuse::{FsHandle, QsfsFuse};

/// Options of a mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other users than the mounting one use the mount (`-o allow_other`). Permissions are
    /// still enforced by the kernel (`default_permissions` is always on).
    pub allow_other: bool,
    /// Mount read-only.
    pub read_only: bool,
    /// Threads serving reads that must fetch blocks from the Store, so a slow fetch holds up
    /// no other request (0: such reads run on the request thread and hold up the mount).
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            read_only: false,
            threads: crate::fetch::DEFAULT_READ_THREADS,
        }
    }
}

impl MountOptions {
    fn fuser_options(&self) -> Vec<MountOption> {
        let mut o = vec![
            MountOption::FSName("qsfs".into()),
            MountOption::Subtype("qsfs".into()),
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
        ];
        if self.allow_other {
            o.push(MountOption::AllowOther);
        }
        o.push(if self.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        });
        o
    }
}

/// A live mount. Dropping it unmounts, flushes everything to the Store and waits for the
/// request loop to finish, so a failing test never leaves a stale mount behind.
pub struct Mount {
    mountpoint: PathBuf,
    handle: FsHandle,
    unmounter: Option<SessionUnmounter>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// Set when the request loop has ended (the unmount took), before the final flush.
    ended: Arc<AtomicBool>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

/// Mounts `fs` on `mountpoint` and serves it from a background thread.
pub fn mount(fs: Fs, mountpoint: &Path, options: &MountOptions) -> io::Result<Mount> {
    let mut fuse = QsfsFuse::with_threads(fs, options.threads);
    let handle = fuse.handle();
    // Resolved before mounting: afterwards the path leads into the mount, which nobody serves
    // until the request loop starts.
    if let Ok(p) = std::fs::canonicalize(mountpoint) {
        fuse.after_init(Box::new(move || tune_bdi(&p, READ_AHEAD_KIB)));
    }
    let spin = fuse.spin();
    let kernel = fuse.kernel();
    let mut session = Session::new(fuse, mountpoint, &options.fuser_options())?;
    kernel.attach(session.notifier());
    match session.as_fd().try_clone_to_owned() {
        Ok(fd) => spin.attach(fd, spin_window()),
        Err(e) => tracing::debug!(error = %e, "no polling between requests"),
    }
    let unmounter = session.unmount_callable();
    let ended = Arc::new(AtomicBool::new(false));
    let ended_in_loop = ended.clone();
    let thread = std::thread::Builder::new()
        .name("qsfs-fuse".into())
        .spawn(move || {
            let r = loop_end(session.run());
            ended_in_loop.store(true, Ordering::SeqCst);
            // Dropping the session calls destroy: the final flush happens here.
            drop(session);
            r
        })?;
    Ok(Mount {
        mountpoint: mountpoint.to_path_buf(),
        handle,
        unmounter: Some(unmounter),
        thread: Some(thread),
        ended,
    })
}

/// What the request loop's end means for the mount. fuser ends the loop cleanly only on ENODEV,
/// but an unmount that shuts the connection down while the loop is taking a request off the
/// queue makes the kernel fail that read with ECONNABORTED instead (`fuse_dev_do_read`), as
/// does an abort through `/sys/fs/fuse/connections`. Either way the connection is gone and the
/// final flush still runs, so it is an end, not a failure of the mount.
fn loop_end(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            tracing::debug!("the kernel shut the FUSE connection down under a read");
            Ok(())
        }
        r => r,
    }
}

/// The session thread's polling window between requests ([`crate::fuse::Spin`]):
/// `QSFS_FUSE_SPIN_US` microseconds if set (0 turns it off, e.g. on a machine where every CPU
/// is busy anyway), else [`crate::fuse::DEFAULT_SPIN`].
fn spin_window() -> std::time::Duration {
    std::env::var("QSFS_FUSE_SPIN_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(crate::fuse::DEFAULT_SPIN, std::time::Duration::from_micros)
}

/// Kernel read-ahead window of a mount, in KiB: eight 128 KiB blocks per request.
const READ_AHEAD_KIB: u32 = 1024;

/// Share of the kernel's dirty-page limit the mount may hold (the kernel's FUSE default is 1).
const DIRTY_RATIO_PERCENT: u32 = 10;

/// The kernel starts a FUSE mount with the default read-ahead window (128 KiB) and lets the
/// filesystem only lower it in its init reply (so this runs once that reply is processed); a sequential reader is much faster with fewer, larger
/// reads, so the window is widened through the mount's backing device in sysfs. Best effort:
/// without root or sysfs the default stays.
fn tune_bdi(mountpoint: &Path, kib: u32) {
    // The newest mount on that path is ours.
    let dev = match crate::unmount::find_mount(mountpoint) {
        Ok(Some(m)) => format!("{}:{}", m.dev.0, m.dev.1),
        _ => return,
    };
    // The kernel caps a FUSE mount's dirty pages at 1 % of the dirty limit (a guard against
    // untrusted servers); random writers are throttled to page-by-page write-back long before
    // the cache helps them. qsfs is the mount's own trusted server.
    for (knob, value) in [("read_ahead_kb", kib), ("max_ratio", DIRTY_RATIO_PERCENT)] {
        let path = format!("/sys/class/bdi/{dev}/{knob}");
        if let Err(e) = std::fs::write(&path, value.to_string()) {
            tracing::debug!(error = %e, path, "left at the kernel's default");
        }
    }
}

impl Mount {
    /// The mounted directory.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The filesystem behind the mount.
    pub fn handle(&self) -> &FsHandle {
        &self.handle
    }

    /// Something that unmounts from another thread (a signal handler), with the same
    /// fallback as [`Mount::unmount`] when the unmount does not take. `None` once taken.
    pub fn stopper(&mut self) -> Option<Stopper> {
        Some(Stopper {
            unmounter: self.unmounter.take()?,
            mountpoint: self.mountpoint.clone(),
            ended: self.ended.clone(),
        })
    }

    /// Unmounts, waits for the final flush and returns the request loop's result.
    pub fn unmount(mut self) -> io::Result<()> {
        self.finish(true)
    }

    /// Unmounts as if the process had been killed: nothing more is flushed.
    pub fn crash(mut self) -> io::Result<()> {
        self.handle.simulate_crash();
        self.finish(true)
    }

    /// Waits until the filesystem is unmounted from elsewhere (`fusermount3 -u`, a signal
    /// handler holding a [`Stopper`]).
    pub fn wait(mut self) -> io::Result<()> {
        self.finish(false)
    }

    fn finish(&mut self, unmount: bool) -> io::Result<()> {
        if unmount {
            if let Some(mut u) = self.unmounter.take() {
                u.unmount()?;
                detach_if_stuck(&self.mountpoint, &self.ended);
            }
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| io::Error::other("the FUSE thread panicked"))?,
            None => Ok(()),
        }
    }
}

/// Unmounts a [`Mount`] from another thread; see [`Mount::stopper`].
pub struct Stopper {
    unmounter: SessionUnmounter,
    mountpoint: PathBuf,
    ended: Arc<AtomicBool>,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl Stopper {
    /// Unmounts; returns once the request loop has ended or the mount has been detached. The
    /// final flush then runs in the mount's own thread ([`Mount::wait`] returns after it).
    pub fn stop(mut self) {
        if let Err(e) = self.unmounter.unmount() {
            tracing::warn!(error = %e, mountpoint = %self.mountpoint.display(), "unmount");
        }
        detach_if_stuck(&self.mountpoint, &self.ended);
    }
}

/// fuser ignores a failed unmount (EBUSY while some process, e.g. a child forked by another
/// thread, briefly holds a file of the mount), and the request loop then never ends. If it has
/// not ended after a while, the mount is detached lazily: the kernel ends the session once that
/// last reference goes.
fn detach_if_stuck(mountpoint: &Path, ended: &AtomicBool) {
    let start = std::time::Instant::now();
    while !ended.load(Ordering::SeqCst) {
        if start.elapsed() > std::time::Duration::from_secs(5) {
            tracing::warn!(mountpoint = %mountpoint.display(), "unmount did not take; detaching");
            let r = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status();
            if let Err(e) = r {
                tracing::warn!(error = %e, "fusermount3 -u -z");
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.thread.is_some() {
            if let Err(e) = self.finish(true) {
                tracing::error!(error = %e, "unmount failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_shut_down_under_a_read_ends_the_loop_cleanly() {
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert!(loop_end(Err(aborted)).is_ok());
    }

    #[test]
    fn other_request_loop_errors_still_fail_the_mount() {
        for errno in [libc::EIO, libc::EPERM, libc::ENOMEM] {
            let r = loop_end(Err(io::Error::from_raw_os_error(errno)));
            assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(errno)));
        }
        assert!(loop_end(Ok(())).is_ok());
    }
}
