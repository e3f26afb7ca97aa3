//! The dispatcher: worker sessions, their credits and leases. It turns free worker slots into
//! batched lease calls, renews every lease this replica holds in one call per queue, tells
//! workers to stop cancelled jobs, and requeues the jobs of workers that vanish.
//!
//! One service loop owns all state; the api talks to it through a cheap `Handle`, and slow work
//! (Redis calls) runs in spawned tasks that report back as commands, so the loop never waits.

mod link;
mod state;

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::events::Signal;
use crate::scheduler::{self, Job, Leased};
pub use link::{Applied, Batch, Link};
use state::State;

#[derive(Clone, Debug)]
pub struct Options {
    /// How long a disconnected worker's leases wait for it to come back. Default 15 s.
    pub grace: Duration,
    /// How often workers and server exchange heartbeats. Default 5 s.
    pub heartbeat: Duration,
    /// The longest a queue served here goes without a sweep (reclaim expired leases, promote
    /// due jobs). Sweeps otherwise run exactly when a known lease deadline or due time passes;
    /// this one catches leases of other replicas it has not seen yet. Default 60 s.
    pub sweep: Duration,
    /// The most jobs one lease call hands out. Default 64.
    pub max_batch: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(15),
            heartbeat: Duration::from_secs(5),
            sweep: Duration::from_secs(60),
            max_batch: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("this server is shutting down; connect to another replica")]
    ShuttingDown,
    #[error(transparent)]
    Scheduler(#[from] scheduler::Error),
}

/// What the dispatcher sends down a worker's stream.
#[derive(Debug)]
pub enum ToWorker {
    Assign { job: Box<Job>, deadline_ms: i64 },
    Cancel { job_id: String, reason: String },
    Drain,
}

/// A worker's first message, already validated.
#[derive(Debug, Clone)]
pub struct Hello {
    pub worker_id: String,
    pub queues: Vec<String>,
    pub concurrency: u32,
    /// (job id, token) of jobs the worker still runs after a reconnect.
    pub held: Vec<(String, u64)>,
    /// The worker takes no new jobs: it only reports those it holds.
    pub stopping: bool,
}

/// What a worker is told after its Hello.
#[derive(Debug, Default)]
pub struct Welcome {
    pub reattached: Vec<String>,
    pub lost: Vec<String>,
    /// The re-attached leases as (job id, queue, token): the new stream's own, so their reports
    /// free their slots like those of jobs assigned on it.
    pub held: Vec<(String, String, u64)>,
}

enum Command {
    Connect {
        session: String,
        hello: Hello,
        out: mpsc::Sender<ToWorker>,
        reply: oneshot::Sender<Result<Welcome, Error>>,
    },
    Attached {
        session: String,
        /// (queue, job id, token) of the leases that moved to the session.
        kept: Vec<(String, String, u64)>,
        lost: Vec<String>,
        reply: oneshot::Sender<Result<Welcome, Error>>,
    },
    Disconnected {
        session: String,
    },
    GraceOver {
        session: String,
    },
    /// The worker takes no new jobs on this session.
    Stopping {
        session: String,
    },
    /// Completes or Fails were handled: the slots are free again.
    Finished {
        session: String,
        job_ids: Vec<String>,
    },
    Leased {
        queue: String,
        session: String,
        reserved: u32,
        /// The queue's `news` when the call started.
        news: u64,
        /// When the call started (for the lease-to-start metric).
        began: std::time::Instant,
        result: Result<Leased, scheduler::Error>,
    },
    Swept {
        queue: String,
        result: Result<Leased, scheduler::Error>,
    },
    /// What a lease call that went without an answer left behind was put back (`unlease`).
    Unleased {
        queue: String,
        session: String,
        result: Result<usize, scheduler::Error>,
    },
    Lost {
        ids: Vec<String>,
    },
    Signal(Signal),
    Drain {
        done: oneshot::Sender<()>,
    },
    Census {
        reply: oneshot::Sender<Census>,
    },
}

/// What the dispatcher has now (for the metrics).
#[derive(Clone, Debug, Default)]
pub struct Census {
    /// Connected worker streams.
    pub workers: u64,
    /// Their free slots.
    pub free_slots: u64,
    /// The queues this replica serves or swept lately.
    pub queues: Vec<String>,
}

#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    scheduler: scheduler::Handle,
    options: Options,
}

impl Handle {
    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn lease_ttl(&self) -> Duration {
        self.scheduler.options().lease_ttl
    }

    /// Registers a worker stream; re-attaches the leases it says it still holds.
    pub async fn connect(&self, hello: Hello) -> Result<(Link, Welcome), Error> {
        let session = uuid::Uuid::now_v7().to_string();
        // Assignments are bounded by credits; the rest of the traffic is small and rare.
        let (out, rx) = mpsc::channel(hello.concurrency as usize + 256);
        let (reply, welcome) = oneshot::channel();
        let worker_id = hello.worker_id.clone();
        self.send(Command::Connect {
            session: session.clone(),
            hello,
            out,
            reply,
        })
        .await?;
        let welcome = welcome.await.map_err(|_| Error::ShuttingDown)??;
        let link = Link::new(self.clone(), session, worker_id, rx, &welcome.held);
        Ok((link, welcome))
    }

    /// Tells every connected worker to move to another replica; returns once they were told.
    pub async fn drain(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Drain { done }).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Workers, free slots and queues as the dispatcher sees them now.
    pub async fn census(&self) -> Census {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Command::Census { reply }).await.is_err() {
            return Census::default();
        }
        answer.await.unwrap_or_default()
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        self.tx.send(command).await.map_err(|_| Error::ShuttingDown)
    }

    fn send_later(&self, command: Command) {
        let tx = self.tx.clone();
        tokio::spawn(async move { tx.send(command).await });
    }
}

/// Starts the service loop; it ends when `signals` closes (the server's event task ended).
pub fn spawn(
    scheduler: scheduler::Handle,
    options: Options,
    signals: mpsc::Receiver<Signal>,
) -> Handle {
    let (tx, rx) = mpsc::channel(4096);
    let handle = Handle {
        tx: tx.clone(),
        scheduler: scheduler.clone(),
        options: options.clone(),
    };
    let state = State::new(scheduler, options, tx);
    tokio::spawn(run(state, rx, signals));
    handle
}

async fn run(
    mut state: State,
    mut commands: mpsc::Receiver<Command>,
    mut signals: mpsc::Receiver<Signal>,
) {
    let renew_every = state.scheduler.options().lease_ttl / 3;
    let mut renew = tokio::time::interval_at(Instant::now() + renew_every, renew_every);
    loop {
        let due = state.next_due();
        tokio::select! {
            Some(command) = commands.recv() => state.handle(command),
            // The event task ends with the server; so does this loop.
            signal = signals.recv() => match signal {
                Some(signal) => state.handle(Command::Signal(signal)),
                None => return,
            },
            _ = renew.tick() => state.renew(),
            _ = sleep_until(due) => state.due(),
            else => return,
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The jobs a session runs: job id -> queue.
type HeldMap = HashMap<String, String>;
