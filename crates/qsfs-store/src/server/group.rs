//! Group commit of plain SETs across the connections of one event loop.
//!
//! With many unpipelined clients, each read holds a single SET, and each SET alone would cost
//! its own `pwrite` (and under `--sync` its own wait for an fsync). Instead, the first
//! connection of an event-loop pass that has SETs to run opens a batch and yields once; every
//! other connection that becomes ready in the same pass adds its SETs to that batch and waits.
//! Then the opener runs them all with one [`ServerStore::set_many`] per namespace (one write of
//! all their records, one sync under `--sync`) and hands each connection its outcomes.
//!
//! Nothing is acknowledged earlier than before: every connection replies only once the store
//! call that covers its SETs has returned, which is after the write (and sync, as the
//! durability asks). Each connection's own requests still run in its order, since a
//! connection adds only the SETs at the end of what it read and waits for them before it reads
//! on. SETs of different connections in one batch are concurrent (none was answered before the
//! other was sent), so any order among them is a correct one.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use qsfs_core::{Result, SetOutcome};
use tokio::sync::oneshot;

use super::ServerStore;

/// The outcomes of one connection's SETs, in order (`Err` when the store call as a whole
/// failed, as [`ServerStore::set_many`] does).
pub(crate) type Outcomes = Result<Vec<Result<SetOutcome>>>;

/// SETs one connection added to a batch.
struct Job {
    ns: String,
    items: Vec<(Bytes, Bytes)>,
    done: oneshot::Sender<Outcomes>,
}

/// A batch being collected; `None` once its opener has taken the jobs.
#[derive(Default)]
struct Batch {
    jobs: Mutex<Option<Vec<Job>>>,
}

thread_local! {
    /// The batch this thread's connections are adding to, if one is open.
    static OPEN: RefCell<Option<Arc<Batch>>> = const { RefCell::new(None) };
    /// The emptied job list of the last batch, reused: growing a fresh one to a few dozen jobs
    /// every batch costs allocations of over a KiB, each of which makes glibc consolidate.
    static SPARE_JOBS: RefCell<Vec<Job>> = const { RefCell::new(Vec::new()) };
}

/// The opener's hold on its batch. Dropped without having run (its connection's task was
/// dropped while yielding), it closes the batch, so the waiting connections learn that nobody
/// runs their SETs and run them themselves.
struct Lead(Arc<Batch>);

impl Lead {
    fn take(&self) -> Vec<Job> {
        let jobs = self.0.jobs.lock().take().unwrap_or_default();
        OPEN.with(|o| {
            let mut o = o.borrow_mut();
            if o.as_ref().is_some_and(|b| Arc::ptr_eq(b, &self.0)) {
                *o = None;
            }
        });
        jobs
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        drop(self.take());
    }
}

/// Sets `items` (plain SETs of `ns`, keys possibly empty for a new sequential id) together with
/// the SETs other connections of this thread run in the same event-loop pass; returns once they
/// are written (and synced as the durability asks), with this connection's outcomes in order.
pub(crate) async fn set_together(
    store: &Arc<dyn ServerStore>,
    ns: &str,
    items: Vec<(Bytes, Bytes)>,
) -> Outcomes {
    let open = OPEN.with(|o| o.borrow().clone());
    if let Some(batch) = open {
        let waiting = {
            let mut jobs = batch.jobs.lock();
            jobs.as_mut().map(|jobs| {
                let (done, rx) = oneshot::channel();
                jobs.push(Job {
                    ns: ns.to_string(),
                    items: items.clone(),
                    done,
                });
                rx
            })
        };
        if let Some(rx) = waiting {
            // A closed channel means the opener went away before it ran anything.
            if let Ok(outcomes) = rx.await {
                return outcomes;
            }
            return set_alone(store, ns, &items);
        }
    }
    if !others_may_join() {
        return set_alone(store, ns, &items);
    }
    let lead = Lead(Arc::new(Batch {
        jobs: Mutex::new(Some(
            SPARE_JOBS.with(|s| std::mem::take(&mut *s.borrow_mut())),
        )),
    }));
    OPEN.with(|o| *o.borrow_mut() = Some(lead.0.clone()));
    // Lets every other connection that is ready in this pass run up to its own SETs.
    to_the_back_of_the_queue().await;
    let jobs = lead.take();
    drop(lead);
    run(store, ns, &items, jobs)
}

/// Puts this task at the back of its event loop's queue of ready tasks, so every task that is
/// ready now runs first. Unlike `tokio::task::yield_now`, which waits for the I/O driver to be
/// polled (an extra `epoll_wait` per batch), this is a wake-up of itself: the current-thread
/// scheduler queues it behind the others.
fn to_the_back_of_the_queue() -> impl std::future::Future<Output = ()> {
    let mut queued = false;
    std::future::poll_fn(move |cx| {
        if queued {
            return std::task::Poll::Ready(());
        }
        queued = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
}

/// False when this connection's task is alone on its event loop, so nobody could join a batch
/// and yielding would only cost a pass.
fn others_may_join() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| h.metrics().num_alive_tasks() > 1)
}

fn set_alone(store: &Arc<dyn ServerStore>, ns: &str, items: &[(Bytes, Bytes)]) -> Outcomes {
    let refs: Vec<(&[u8], &[u8])> = items.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    store.set_many(ns, &refs)
}

/// Runs the opener's SETs and the batch's jobs, one store call per namespace (in the order the
/// namespaces first appear), sends each job its outcomes and returns the opener's.
fn run(
    store: &Arc<dyn ServerStore>,
    ns: &str,
    items: &[(Bytes, Bytes)],
    mut jobs: Vec<Job>,
) -> Outcomes {
    let own = if jobs.is_empty() {
        set_alone(store, ns, items)
    } else if jobs.iter().all(|j| j.ns == ns) {
        run_one_namespace(store, ns, items, &mut jobs)
    } else {
        run_many_namespaces(store, ns, items, &mut jobs)
    };
    jobs.clear();
    SPARE_JOBS.with(|s| *s.borrow_mut() = jobs);
    own
}

/// [`run`] when every job is of the opener's namespace (the usual case): one store call.
fn run_one_namespace(
    store: &Arc<dyn ServerStore>,
    ns: &str,
    items: &[(Bytes, Bytes)],
    jobs: &mut Vec<Job>,
) -> Outcomes {
    let total = items.len() + jobs.iter().map(|j| j.items.len()).sum::<usize>();
    let mut refs: Vec<(&[u8], &[u8])> = Vec::with_capacity(total);
    refs.extend(items.iter().map(|(k, v)| (&k[..], &v[..])));
    for job in jobs.iter() {
        refs.extend(job.items.iter().map(|(k, v)| (&k[..], &v[..])));
    }
    match store.set_many(ns, &refs) {
        Ok(results) => {
            let mut results = results.into_iter();
            let own = results.by_ref().take(items.len()).collect();
            for job in jobs.drain(..) {
                let outcome = results.by_ref().take(job.items.len()).collect();
                // A waiter that has gone away (its connection closed) needs no answer.
                let _ = job.done.send(Ok(outcome));
            }
            Ok(own)
        }
        // The call failed as a whole (no such namespace): each part gets its own error,
        // exactly as if it had run alone.
        Err(_) => {
            for job in jobs.drain(..) {
                let outcome = set_alone(store, &job.ns, &job.items);
                let _ = job.done.send(outcome);
            }
            set_alone(store, ns, items)
        }
    }
}

/// [`run`] when the jobs are of several namespaces: one store call per namespace.
fn run_many_namespaces(
    store: &Arc<dyn ServerStore>,
    ns: &str,
    items: &[(Bytes, Bytes)],
    jobs: &mut Vec<Job>,
) -> Outcomes {
    // Part 0 is the opener's own.
    let parts: Vec<(&str, &[(Bytes, Bytes)])> = std::iter::once((ns, items))
        .chain(jobs.iter().map(|j| (j.ns.as_str(), &j.items[..])))
        .collect();
    let mut outcomes: Vec<Option<Outcomes>> = parts.iter().map(|_| None).collect();
    let mut done = vec![false; parts.len()];
    for first in 0..parts.len() {
        if done[first] {
            continue;
        }
        let this = parts[first].0;
        let members: Vec<usize> = (first..parts.len())
            .filter(|&i| !done[i] && parts[i].0 == this)
            .collect();
        let refs: Vec<(&[u8], &[u8])> = members
            .iter()
            .flat_map(|&i| parts[i].1.iter().map(|(k, v)| (&k[..], &v[..])))
            .collect();
        match store.set_many(this, &refs) {
            Ok(results) => {
                let mut results = results.into_iter();
                for &i in &members {
                    outcomes[i] = Some(Ok(results.by_ref().take(parts[i].1.len()).collect()));
                }
            }
            Err(_) => {
                for &i in &members {
                    outcomes[i] = Some(set_alone(store, this, parts[i].1));
                }
            }
        }
        for &i in &members {
            done[i] = true;
        }
    }
    drop(parts);
    let mut outcomes = outcomes.into_iter();
    let own = outcomes.next().flatten();
    for (job, outcome) in jobs.drain(..).zip(outcomes) {
        if let Some(outcome) = outcome {
            let _ = job.done.send(outcome);
        }
    }
    own.unwrap_or_else(|| set_alone(store, ns, items))
}
