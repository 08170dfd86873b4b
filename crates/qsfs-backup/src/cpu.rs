//! Where the pipeline's CPU-bound stripe work runs: rayon's global pool, or, for a thread that
//! declared itself background work ([`become_background`]), a pool of low-priority threads.
//!
//! A rayon thread keeps the nice value of the thread that started its pool. With one pool, the
//! storage tier's background uploads either started it, and then every later stripe (a
//! restore, a cold read, an upload the writers wait for) ran at low priority too, or a
//! foreground caller did, and background uploads took the CPU from the writers as equals.
//! Which came first depended on what the process did first. Two pools make the priority follow
//! the caller.

use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    static BACKGROUND: Cell<bool> = const { Cell::new(false) };
}

/// Lowers the calling thread to nice 10 and marks it as background work: the stripe work it
/// asks for from now on ([`spawn`]) runs on the low-priority pool. Nice 10 is a tenth of the CPU
/// share of a normal thread when both want the same core; not 19, or other normal processes
/// on a busy machine would starve the uploads, and the recovery point with them. If the
/// priority cannot be lowered the thread still counts as background work.
pub(crate) fn become_background() {
    lower_priority();
    BACKGROUND.with(|b| b.set(true));
}

/// Runs `f` on the pool that matches the calling thread's priority.
pub(crate) fn spawn(f: impl FnOnce() + Send + 'static) {
    // The thread's mark first: a program that never runs background work (`qsfs backup`)
    // never starts the background pool.
    let pool = BACKGROUND.with(Cell::get).then(background_pool).flatten();
    match pool {
        Some(pool) => pool.spawn(f),
        None => rayon::spawn(f),
    }
}

/// The low-priority pool, one thread per core, started on first use; `None` if its threads
/// cannot be started (the work then runs on the global pool).
fn background_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("qsfs-cpu-bg-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(|e| tracing::warn!(error = %e, "cannot start the background stripe pool"))
            .ok()
    })
    .as_ref()
}

/// Nice 10 for the calling thread only (Linux keeps a nice value per thread). A failure only
/// means the work competes with the writers as an equal.
fn lower_priority() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };
    // The crate maps 0..=99 onto nice 20..=-20: 24 is nice 10.
    let Ok(value) = ThreadPriorityValue::try_from(24u8) else {
        return;
    };
    let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
    let prio = ThreadPriority::Crossplatform(value);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), prio, policy) {
        tracing::debug!(error = ?e, "cannot lower the priority of a background thread");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Where a job ran: its thread's name and nice value.
    fn where_it_runs() -> (String, i32) {
        let (tx, rx) = std::sync::mpsc::channel();
        spawn(move || {
            let name = std::thread::current().name().unwrap_or("").to_string();
            tx.send((name, own_nice())).unwrap();
        });
        rx.recv().unwrap()
    }

    /// The calling thread's nice value (field 19 of its `stat`; the name before it, in
    /// parentheses, may hold spaces).
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn stripe_work_runs_at_the_priority_of_the_thread_that_asks() {
        let (name, nice) = where_it_runs();
        assert!(!name.starts_with("qsfs-cpu-bg"), "{name}");
        let base = nice;
        let (name, nice) = std::thread::spawn(|| {
            become_background();
            where_it_runs()
        })
        .join()
        .unwrap();
        assert!(name.starts_with("qsfs-cpu-bg"), "{name}");
        assert!(
            nice > base,
            "background work at nice {nice}, foreground at {base}"
        );
        // Asked again from the foreground after the background pool exists: still foreground.
        let (name, nice) = where_it_runs();
        assert!(!name.starts_with("qsfs-cpu-bg"), "{name}");
        assert_eq!(nice, base);
    }
}
