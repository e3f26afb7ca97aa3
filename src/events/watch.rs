//! One WatchJob stream: the snapshot, then live events in order, ending after the terminal one.
//! A gap (missed events) is filled with a fresh snapshot; the job's events are published only
//! while it is watched, so the stream registers itself with the job and unregisters at the end.

use std::sync::Arc;

use tokio::sync::{mpsc, watch as signal};
use tokio_stream::wrappers::ReceiverStream;

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

type Sender = mpsc::Sender<Result<Item, scheduler::Error>>;

/// Starts watching; fails at once if the job is unknown to this tenant. `after` is the last
/// sequence number the client saw, if it resumes; `stopping` turns true at shutdown.
pub async fn watch(
    hub: Handle,
    scheduler: scheduler::Handle,
    tenant: String,
    job_id: String,
    after: Option<u64>,
    stopping: signal::Receiver<bool>,
) -> Result<ReceiverStream<Result<Item, scheduler::Error>>, scheduler::Error> {
    // Subscribe before registering, so nothing published from then on is missed.
    let subscription = hub.subscribe(&job_id);
    let job = scheduler.watch(&tenant, &job_id).await?;
    let (tx, rx) = mpsc::channel(8);
    let mut watcher = Watcher {
        hub,
        scheduler,
        tenant,
        job_id,
        tx,
        last: 0,
    };
    tokio::spawn(async move {
        let queue = job.queue.clone();
        // The client leaving is noticed at once, not at the job's next event.
        let client = watcher.tx.clone();
        let finished = tokio::select! {
            ended = watcher.run(subscription, job, after) => match ended {
                Ok(()) => true,
                Err(Stop::ClientGone) => false,
                Err(Stop::Failed(e)) => {
                    let _ = watcher.tx.send(Err(e)).await;
                    false
                }
            },
            _ = stopped(stopping) => {
                let _ = watcher.tx.send(Ok(Item::Stopping)).await;
                false
            }
            _ = client.closed() => false,
        };
        if !finished {
            let (scheduler, id) = (&watcher.scheduler, &watcher.job_id);
            if let Err(e) = scheduler.unwatch(&queue, id).await {
                // The job's events go on being published until it finishes; nothing breaks.
                tracing::debug!(error = %e, job = id, "could not unregister a watch");
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

async fn stopped(mut stopping: signal::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// Why a watcher stopped before the terminal event.
enum Stop {
    ClientGone,
    Failed(scheduler::Error),
}

impl From<scheduler::Error> for Stop {
    fn from(e: scheduler::Error) -> Self {
        Stop::Failed(e)
    }
}

/// Whether the stream is over (the terminal event went out).
type Done = bool;

struct Watcher {
    hub: Handle,
    scheduler: scheduler::Handle,
    tenant: String,
    job_id: String,
    tx: Sender,
    /// The last sequence number sent.
    last: u64,
}

impl Watcher {
    /// Runs until the terminal event went out (`Ok`) or the stream ended early.
    async fn run(
        &mut self,
        mut subscription: Subscription,
        job: Job,
        after: Option<u64>,
    ) -> Result<(), Stop> {
        let done = match after {
            // The client has seen everything up to now; live events follow.
            Some(after) if after == job.seq => {
                self.last = after;
                job.state.is_terminal()
            }
            _ => self.snapshot(job).await?,
        };
        if done {
            return Ok(());
        }
        loop {
            // Live, in order. A gap, or being cut loose for lagging, means a fresh snapshot.
            while let Some(event) = subscription.rx.recv().await {
                if event.seq <= self.last {
                    continue;
                }
                if event.seq > self.last + 1 {
                    break;
                }
                if self.send(event.seq, Item::Event(event)).await? {
                    return Ok(());
                }
            }
            subscription = self.hub.subscribe(&self.job_id);
            let job = self.scheduler.get(&self.tenant, &self.job_id).await?;
            if job.seq > self.last && self.snapshot(job).await? {
                return Ok(());
            }
        }
    }

    async fn snapshot(&mut self, job: Job) -> Result<Done, Stop> {
        self.send(job.seq, Item::Snapshot(Box::new(job))).await
    }

    async fn send(&mut self, seq: u64, item: Item) -> Result<Done, Stop> {
        let terminal = match &item {
            Item::Snapshot(job) => job.state.is_terminal(),
            Item::Event(e) => e.is_terminal(),
            Item::Stopping => true,
        };
        self.tx.send(Ok(item)).await.map_err(|_| Stop::ClientGone)?;
        self.last = seq;
        Ok(terminal)
    }
}
