//! The `--hook` program: run as `EXE <event> <instance id> [extra…]` (spec §10), with no shell.
//! Non-blocking events run in the background; `ready` and `close` are waited for. Every run is
//! remembered for the `HOOKS` command (finished ones for 300 s).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use super::resp::Reply;

/// How long finished hooks stay listed.
const KEEP_FINISHED: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Record {
    event: String,
    args: Vec<String>,
    pid: u32,
    started: SystemTime,
    finished: Option<SystemTime>,
    status: i32,
}

/// Runs the hook program, if one is configured.
#[derive(Debug, Clone)]
pub struct Hooks {
    exe: Option<PathBuf>,
    instance: String,
    records: Arc<Mutex<Vec<Record>>>,
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Hooks {
    /// A runner for `exe` (none = every event is a no-op).
    pub fn new(exe: Option<PathBuf>, instance: String) -> Self {
        Hooks {
            exe,
            instance,
            records: Arc::default(),
        }
    }

    /// True if a hook program is configured.
    pub fn enabled(&self) -> bool {
        self.exe.is_some()
    }

    fn spawn(&self, event: &str, extra: Vec<String>) -> Option<(std::process::Child, usize)> {
        let exe = self.exe.as_ref()?;
        let mut cmd = Command::new(exe);
        cmd.arg(event)
            .arg(&self.instance)
            .args(&extra)
            .stdin(Stdio::null());
        match cmd.spawn() {
            Ok(child) => {
                let mut recs = self.records.lock();
                let now = SystemTime::now();
                recs.retain(|r| {
                    r.finished
                        .is_none_or(|f| now.duration_since(f).unwrap_or_default() < KEEP_FINISHED)
                });
                recs.push(Record {
                    event: event.to_string(),
                    args: extra,
                    pid: child.id(),
                    started: now,
                    finished: None,
                    status: 0,
                });
                Some((child, recs.len() - 1))
            }
            Err(e) => {
                tracing::warn!(event, error = %e, "cannot run hook");
                None
            }
        }
    }

    fn finish(&self, pid: u32, status: i32) {
        let mut recs = self.records.lock();
        if let Some(r) = recs
            .iter_mut()
            .rev()
            .find(|r| r.pid == pid && r.finished.is_none())
        {
            r.finished = Some(SystemTime::now());
            r.status = status;
        }
    }

    /// Fires `event` in the background.
    pub fn fire(&self, event: &str, extra: Vec<String>) {
        let Some((mut child, _)) = self.spawn(event, extra) else {
            return;
        };
        let me = self.clone();
        std::thread::spawn(move || {
            let pid = child.id();
            let status = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
            me.finish(pid, status);
        });
    }

    /// Starts `event` and forgets it: no record, no waiting thread, no lock taken. For the
    /// `crash` event, fired from a panic hook just before the process aborts, where a lock the
    /// panicking thread held could never be taken again.
    pub fn fire_detached(&self, event: &str) {
        let Some(exe) = &self.exe else { return };
        if let Err(e) = Command::new(exe)
            .arg(event)
            .arg(&self.instance)
            .stdin(Stdio::null())
            .spawn()
        {
            eprintln!("cannot run the {event} hook: {e}");
        }
    }

    /// Runs `event` and waits for it. `None` when no hook is configured or it could not start.
    pub fn run(&self, event: &str, extra: Vec<String>) -> Option<i32> {
        let (mut child, _) = self.spawn(event, extra)?;
        let pid = child.id();
        let status = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
        self.finish(pid, status);
        Some(status)
    }

    /// The `HOOKS` reply.
    pub fn list_reply(&self) -> Reply {
        let recs = self.records.lock();
        Reply::Array(
            recs.iter()
                .map(|r| {
                    Reply::Array(vec![
                        Reply::bulk(r.event.clone()),
                        Reply::Array(r.args.iter().map(|a| Reply::bulk(a.clone())).collect()),
                        Reply::Int(i64::from(r.pid)),
                        Reply::Int(secs(r.started)),
                        Reply::Int(r.finished.map_or(0, secs)),
                        Reply::Int(i64::from(r.status)),
                    ])
                })
                .collect(),
        )
    }
}
