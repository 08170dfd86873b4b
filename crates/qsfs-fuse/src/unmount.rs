//! Unmounting a qsfs mount from outside its process (`qsfs umount`), and waiting until that
//! process has flushed everything and exited.
//!
//! `fusermount3 -u` returns as soon as the kernel has detached the mount, while the serving
//! process is still writing its caches to the store; a script that unmounts and then copies or
//! backs up the root, or powers off, must wait for that flush. The kernel names the connection
//! behind every `/dev/fuse` descriptor in its fdinfo (`fuse_connection:`, Linux 6.x), which
//! finds the serving processes without any pid file.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use std::time::Duration;
//! let done = qsfs_fuse::unmount::unmount(
//!     std::path::Path::new("/mnt/qsfs"),
//!     false,
//!     Duration::from_secs(600),
//! )?;
//! println!("{done:?}");
//! # Ok(())
//! # }
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Device number of the mount (`major:minor`).
    pub dev: (u32, u32),
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Filesystem type (`fuse`, `fuse.qsfs`, `ext4`, ...).
    pub fstype: String,
    /// Mount source (qsfs mounts say `qsfs`).
    pub source: String,
}

impl MountEntry {
    /// True for a mount made by qsfs.
    pub fn is_qsfs(&self) -> bool {
        self.fstype == "fuse.qsfs" || (self.fstype.starts_with("fuse") && self.source == "qsfs")
    }

    /// The FUSE connection number the kernel gives this mount (its anonymous device number).
    pub fn fuse_connection(&self) -> u64 {
        (u64::from(self.dev.0) << 20) | u64::from(self.dev.1)
    }
}

/// Parses `/proc/self/mountinfo` text; lines it cannot read are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let (maj, min) = fields.get(2)?.split_once(':')?;
    let sep = fields.iter().position(|f| *f == "-")?;
    Some(MountEntry {
        dev: (maj.parse().ok()?, min.parse().ok()?),
        mountpoint: PathBuf::from(unescape(fields.get(4)?)),
        fstype: unescape(fields.get(sep + 1)?),
        source: unescape(fields.get(sep + 2)?),
    })
}

/// The kernel writes space, tab, newline and backslash in mountinfo as `\ooo` octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |a, c| a.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The topmost mount on `mountpoint` (an absolute path without symlinks), if any.
pub fn find_mount(mountpoint: &Path) -> io::Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == mountpoint))
}

/// Processes holding a `/dev/fuse` descriptor of FUSE connection `conn`: the mount's servers.
/// Empty on kernels whose fdinfo does not name the connection.
pub fn serving_processes(conn: u64) -> Vec<u32> {
    let want = format!("fuse_connection:\t{conn}");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let serves = fds.flatten().any(|fd| {
            let is_fuse = std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/fuse"));
            is_fuse
                && std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name()))
                    .is_ok_and(|info| info.lines().any(|l| l == want))
        });
        if serves {
            pids.push(pid);
        }
    }
    pids
}

/// True while any thread of process `pid` runs. The main thread alone is not enough: once it
/// has exited it shows as a zombie while the other threads are still ending (one may be in the
/// middle of a disk read), and only then is the process gone. A zombie waiting for its parent
/// has finished.
fn running(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .any(|t| std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| task_alive(&s)))
}

/// Whether a `/proc/.../stat` line describes a task that has not exited.
fn task_alive(stat: &str) -> bool {
    // The state follows the parenthesised command name, which may itself hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// What [`unmount`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmounted {
    /// Unmounted, and every process that served it has exited: everything is flushed.
    Flushed {
        /// The processes waited for.
        pids: Vec<u32>,
    },
    /// Unmounted; no serving process could be found to wait for (an older kernel).
    NoServerFound,
    /// Detached lazily (`lazy`): the flush happens once the last open file is closed.
    Detached,
}

/// Unmounts the qsfs mount at `mountpoint` and waits up to `timeout` for its serving processes
/// to finish their final flush and exit. `lazy` detaches a busy mount instead of failing with
/// EBUSY (and then does not wait). Errors: not mounted, not a qsfs mount, busy, or still
/// flushing when the time is up (`TimedOut`; it is unmounted by then).
pub fn unmount(mountpoint: &Path, lazy: bool, timeout: Duration) -> io::Result<Unmounted> {
    let path = resolve(mountpoint)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", mountpoint.display())))?;
    let entry = find_mount(&path)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not mounted", path.display()),
        )
    })?;
    if !entry.is_qsfs() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a qsfs mount (it is {} from {}); use umount",
                path.display(),
                entry.fstype,
                entry.source
            ),
        ));
    }
    let pids = serving_processes(entry.fuse_connection());
    fusermount_u(&path, lazy)?;
    if lazy {
        return Ok(Unmounted::Detached);
    }
    if pids.is_empty() {
        return Ok(Unmounted::NoServerFound);
    }
    let deadline = Instant::now() + timeout;
    while let Some(pid) = pids.iter().find(|p| running(**p)) {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} is unmounted, but process {pid} is still flushing it after {} s",
                    path.display(),
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Unmounted::Flushed { pids })
}

/// The absolute mount point without symlinks, resolved without touching the mount itself:
/// a stat of a mount whose server hangs or died would hang or fail.
fn resolve(mountpoint: &Path) -> io::Result<PathBuf> {
    let abs = if mountpoint.is_absolute() {
        mountpoint.to_path_buf()
    } else {
        std::env::current_dir()?.join(mountpoint)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.canonicalize()?.join(name)),
        _ => abs.canonicalize(),
    }
}

/// `fusermount3 -u` works for root and for the user who mounted alike.
fn fusermount_u(path: &Path, lazy: bool) -> io::Result<()> {
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg(path).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run fusermount3 (package fuse3): {e}"),
        )
    })?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let busy = why.contains("busy");
    Err(io::Error::new(
        if busy {
            io::ErrorKind::ResourceBusy
        } else {
            io::ErrorKind::Other
        },
        format!(
            "cannot unmount {}: {}{}",
            path.display(),
            if why.is_empty() {
                "fusermount3 failed"
            } else {
                &why
            },
            if busy {
                " (a process has a file or its working directory there; --lazy detaches it now \
                 and flushes when the last one is closed)"
            } else {
                ""
            }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
42 27 0:39 / /var/tmp/um/mnt rw,nosuid,nodev,noatime - fuse qsfs rw,user_id=0,group_id=0
43 27 0:40 / /mnt/with\\040space rw shared:7 master:2 - fuse.sshfs host:/x rw
44 27 0:41 / /mnt/typed rw - fuse.qsfs qsfs rw
";

    #[test]
    fn mountinfo_lines_are_read_with_optional_fields_and_escapes() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].mountpoint, Path::new("/var/tmp/um/mnt"));
        assert_eq!(m[1].dev, (0, 39));
        assert!(m[1].is_qsfs());
        assert_eq!(m[1].fuse_connection(), 39);
        assert_eq!(m[2].mountpoint, Path::new("/mnt/with space"));
        assert_eq!(
            (m[2].fstype.as_str(), m[2].source.as_str()),
            ("fuse.sshfs", "host:/x")
        );
        assert!(!m[2].is_qsfs());
        assert!(m[3].is_qsfs());
        assert!(!m[0].is_qsfs());
    }

    #[test]
    fn large_minor_numbers_make_the_kernels_connection_number() {
        let e = MountEntry {
            dev: (1, 5),
            mountpoint: PathBuf::from("/m"),
            fstype: "fuse".into(),
            source: "qsfs".into(),
        };
        assert_eq!(e.fuse_connection(), (1 << 20) | 5);
    }

    #[test]
    fn unmounting_a_directory_that_is_not_mounted_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let e = unmount(tmp.path(), false, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("not mounted"), "{e}");
    }

    #[test]
    fn a_task_is_alive_until_it_is_a_zombie() {
        assert!(task_alive("42 (qsfs) S 1 42 42 0 -1"));
        assert!(task_alive("42 (a (b) c) D 1 42"));
        assert!(!task_alive("42 (qsfs) Z 1 42 42 0 -1"));
        assert!(!task_alive("42 (x) X 1"));
        assert!(!task_alive("garbage"));
    }

    #[test]
    fn a_process_that_has_exited_is_not_running() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!running(pid));
        assert!(running(std::process::id()));
    }

    proptest! {
        #[test]
        fn escaped_mount_points_read_back(name in "[ a-z\\\\\t\n]{1,12}") {
            let escaped: String = name
                .chars()
                .map(|c| match c {
                    ' ' | '\t' | '\n' | '\\' => format!("\\{:03o}", c as u32),
                    c => c.to_string(),
                })
                .collect();
            let line = format!("1 2 0:3 / /m/{escaped} rw - fuse qsfs rw");
            let m = parse_line(&line).unwrap();
            prop_assert_eq!(m.mountpoint, PathBuf::from(format!("/m/{name}")));
        }
    }
}
