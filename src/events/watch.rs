//! One WatchJob stream: the snapshot (or the events after `after_seq`), then live events in
//! order, ending after the terminal one. Gaps are filled from the job's log in Redis.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Handle, Subscription};
use crate::scheduler::{self, Event, Job};

/// What a watcher receives.
#[derive(Debug)]
pub enum Item {
    Snapshot(Box<Job>),
    Event(Event),
}

type Sender = mpsc::Sender<Result<Item, scheduler::Error>>;

/// Starts watching; fails at once if the job is unknown to this tenant.
pub async fn watch(
    hub: Handle,
    scheduler: scheduler::Handle,
    tenant: String,
    job_id: String,
    after_seq: Option<u64>,
) -> Result<ReceiverStream<Result<Item, scheduler::Error>>, scheduler::Error> {
    // Subscribe before reading, so nothing published in between is missed.
    let subscription = hub.subscribe(&job_id);
    let job = scheduler.get(&tenant, &job_id).await?;
    let (tx, rx) = mpsc::channel(16);
    let watcher = Watcher {
        hub,
        scheduler,
        tenant,
        queue: job.queue.clone(),
        job_id,
        tx,
        last: 0,
    };
    tokio::spawn(async move {
        let tx = watcher.tx.clone();
        match watcher.run(subscription, job, after_seq).await {
            Ok(()) | Err(Stop::ClientGone) => {}
            Err(Stop::Failed(e)) => {
                let _ = tx.send(Err(e)).await;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
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
    queue: String,
    job_id: String,
    tx: Sender,
    /// The last sequence number sent.
    last: u64,
}

impl Watcher {
    async fn run(
        mut self,
        mut subscription: Subscription,
        job: Job,
        after: Option<u64>,
    ) -> Result<(), Stop> {
        let done = match after {
            Some(after) if after <= job.seq => {
                self.last = after;
                self.catch_up().await?
            }
            _ => self.send(Item::Snapshot(Box::new(job))).await?,
        };
        if done {
            return Ok(());
        }
        loop {
            // Live, in order. A gap, or being cut loose for lagging, sends us back to the log.
            while let Some(event) = subscription.rx.recv().await {
                if event.seq <= self.last {
                    continue;
                }
                if event.seq > self.last + 1 {
                    break;
                }
                if self.send(Item::Event(event)).await? {
                    return Ok(());
                }
            }
            subscription = self.hub.subscribe(&self.job_id);
            if self.catch_up().await? {
                return Ok(());
            }
        }
    }

    async fn send(&mut self, item: Item) -> Result<Done, Stop> {
        let (seq, terminal) = match &item {
            Item::Snapshot(job) => (job.seq, job.state.is_terminal()),
            Item::Event(e) => (e.seq, e.is_terminal()),
        };
        self.tx.send(Ok(item)).await.map_err(|_| Stop::ClientGone)?;
        self.last = seq;
        Ok(terminal)
    }

    /// Sends what the job's log holds after `last`, or a fresh snapshot where it was trimmed.
    async fn catch_up(&mut self) -> Result<Done, Stop> {
        let events = self
            .scheduler
            .events(&self.queue, &self.job_id, self.last)
            .await?;
        if events.first().is_some_and(|e| e.seq != self.last + 1) {
            let job = self.scheduler.get(&self.tenant, &self.job_id).await?;
            return self.send(Item::Snapshot(Box::new(job))).await;
        }
        for event in events {
            if self.send(Item::Event(event)).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
