//! One WatchJob stream: the snapshot, then live events in order, ending after the terminal one.
//! A gap (missed events) is filled with a fresh snapshot; the job's events are published only
//! while it is watched, so the stream registers itself with the job and unregisters when it is
//! dropped early.
//!
//! The stream reads the hub's channel itself, with no task of its own: an event reaches the
//! client through one channel and one task wake-up, which is what 10,000 watchers need.

use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::watch as signal;

use super::{Handle, Subscription};
use crate::scheduler::{self, Event, Job};

/// What a watcher receives.
#[derive(Debug)]
pub enum Item {
    Snapshot(Box<Job>),
    Event(Arc<Event>),
    /// The server is shutting down: resume elsewhere with `after_seq`.
    Stopping,
}

/// Starts watching; fails at once if the job is unknown to this tenant. `after` is the last
/// sequence number the client saw, if it resumes; `stopping` turns true at shutdown.
pub async fn watch(
    hub: Handle,
    scheduler: scheduler::Handle,
    tenant: String,
    job_id: String,
    after: Option<u64>,
    stopping: signal::Receiver<bool>,
) -> Result<impl Stream<Item = Result<Item, scheduler::Error>>, scheduler::Error> {
    // Subscribe before registering, so nothing published from then on is missed.
    let subscription = hub.subscribe(&job_id);
    let job = scheduler.watch(&tenant, &job_id).await?;
    let watcher = Watcher {
        hub,
        scheduler,
        tenant,
        queue: job.queue.clone(),
        job_id,
        subscription,
        stopping,
        start: Some((job, after)),
        last: 0,
        done: false,
        finished: false,
    };
    Ok(futures_util::stream::unfold(watcher, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    }))
}

struct Watcher {
    hub: Handle,
    scheduler: scheduler::Handle,
    tenant: String,
    queue: String,
    job_id: String,
    subscription: Subscription,
    stopping: signal::Receiver<bool>,
    /// The job as the watch found it, and the client's `after_seq`, until the first item.
    start: Option<(Job, Option<u64>)>,
    /// The last sequence number sent.
    last: u64,
    /// The stream is over: the terminal event, a shutdown notice or an error went out.
    done: bool,
    /// The client has the job's terminal state, so the watch needs no unregistering.
    finished: bool,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<Item, scheduler::Error>> {
        if self.done {
            return None;
        }
        if let Some((job, after)) = self.start.take() {
            match after {
                // The client has seen everything up to now; live events follow.
                Some(after) if after == job.seq => {
                    self.last = after;
                    if job.state.is_terminal() {
                        (self.done, self.finished) = (true, true);
                        return None;
                    }
                }
                _ => return Some(Ok(self.snapshot(job))),
            }
        }
        loop {
            let event = tokio::select! {
                event = self.subscription.rx.recv() => event,
                _ = self.stopping.wait_for(|s| *s) => {
                    self.done = true;
                    return Some(Ok(Item::Stopping));
                }
            };
            match event {
                Some(event) if event.seq <= self.last => continue,
                Some(event) if event.seq == self.last + 1 => {
                    self.last = event.seq;
                    (self.done, self.finished) = (event.is_terminal(), event.is_terminal());
                    return Some(Ok(Item::Event(event)));
                }
                // A gap, or the hub cut this watcher loose for lagging: a fresh snapshot.
                _ => {
                    self.subscription = self.hub.subscribe(&self.job_id);
                    match self.scheduler.get(&self.tenant, &self.job_id).await {
                        Ok(job) if job.seq > self.last => return Some(Ok(self.snapshot(job))),
                        Ok(_) => continue,
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                }
            }
        }
    }

    fn snapshot(&mut self, job: Job) -> Item {
        self.last = job.seq;
        let terminal = job.state.is_terminal();
        (self.done, self.finished) = (terminal, terminal);
        Item::Snapshot(Box::new(job))
    }
}

impl Drop for Watcher {
    /// A watch closed before the job finished no longer wants its events.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (scheduler, queue, id) = (
            self.scheduler.clone(),
            self.queue.clone(),
            self.job_id.clone(),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = scheduler.unwatch(&queue, &id).await {
                    // The job's events go on being published until it finishes; nothing breaks.
                    tracing::debug!(error = %e, job = id, "could not unregister a watch");
                }
            });
        }
    }
}
