//! One WatchJobs stream: a snapshot of every matching job (`follow.lua` reads each queue and
//! marks it followed), `Synced`, then the live events of every matching job, new ones included.
//! What the stream sent last per unfinished job (its `seq`) decides what is new: a repeat is
//! dropped, a gap or a job never seen is filled with a fresh snapshot. Cut loose by the hub
//! (too far behind, or Redis reconnected), it reads its queues again since its resume point.
//!
//! The resume point is a time (ms): every job that finished at or after it, and every unfinished
//! job, is in the snapshot of a stream resumed from it. `MARGIN` covers the clocks of the
//! replicas that stamped the events, which may disagree a little.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::watch as signal;

use super::{Handle, Subscription};
use crate::scheduler::{self, Event, FollowCursor, Job, now_ms};

/// How far before its resume point a resumed stream looks for finished jobs.
const MARGIN: Duration = Duration::from_secs(60);

/// What a WatchJobs stream watches: the caller's jobs in some queues with some labels.
#[derive(Clone, Debug)]
pub struct Filter {
    pub tenant: String,
    pub queues: Vec<String>,
    /// Only jobs carrying every one of these.
    pub labels: BTreeMap<String, String>,
}

impl Filter {
    fn admits(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// What a follower receives, with the resume point once synced.
#[derive(Debug)]
pub enum Item {
    /// The job as it is now (no payload).
    Snapshot(Box<Job>),
    Event(Arc<Event>),
    /// The snapshot is complete.
    Synced,
    /// The server is shutting down: resume elsewhere with the resume point.
    Stopping,
}

/// Starts a WatchJobs stream; `resume` is a resume point an earlier stream gave. Each item
/// comes with the resume point as of it (none before `Synced`).
pub fn follow(
    hub: Handle,
    scheduler: scheduler::Handle,
    filter: Filter,
    resume: Option<i64>,
    stopping: signal::Receiver<bool>,
) -> impl Stream<Item = Result<(Item, Option<i64>), scheduler::Error>> {
    let follower = Follower {
        subscription: hub.subscribe_queues(&filter.tenant, &filter.queues),
        hub,
        scheduler,
        filter,
        stopping,
        resume,
        sync: Some(Reading::new(resume)),
        synced: false,
        sent: HashMap::new(),
        done: false,
    };
    futures_util::stream::unfold(follower, |mut f| async move {
        let item = f.next().await?;
        let resume = f.synced.then_some(f.resume).flatten();
        Some((item.map(|i| (i, resume)), f))
    })
}

struct Follower {
    hub: Handle,
    scheduler: scheduler::Handle,
    filter: Filter,
    subscription: Subscription,
    stopping: signal::Receiver<bool>,
    /// Every event of a matching job up to about this time (ms) has been sent.
    resume: Option<i64>,
    /// A snapshot in progress.
    sync: Option<Reading>,
    /// The first snapshot is complete.
    synced: bool,
    /// The last seq sent per unfinished job.
    sent: HashMap<String, u64>,
    done: bool,
}

/// Reading the queues for a snapshot, one page at a time.
struct Reading {
    /// Finished jobs from this time on are included (a resume).
    since: Option<i64>,
    /// When reading began: the resume point once it is complete.
    began: i64,
    queue: usize,
    cursor: Option<FollowCursor>,
    page: std::vec::IntoIter<Job>,
}

impl Reading {
    fn new(resume: Option<i64>) -> Reading {
        Reading {
            since: resume.map(|t| t - MARGIN.as_millis() as i64),
            began: now_ms(),
            queue: 0,
            cursor: Some(FollowCursor::start()),
            page: Vec::new().into_iter(),
        }
    }
}

impl Follower {
    async fn next(&mut self) -> Option<Result<Item, scheduler::Error>> {
        if self.done {
            return None;
        }
        loop {
            while self.sync.is_some() {
                match self.next_of_snapshot().await {
                    Ok(Some(job)) => return Some(Ok(Item::Snapshot(job))),
                    Ok(None) => {}
                    Err(e) => return Some(Err(self.fail(e))),
                }
            }
            if !self.synced {
                self.synced = true;
                return Some(Ok(Item::Synced));
            }
            let event = tokio::select! {
                event = self.subscription.rx.recv() => event,
                _ = self.stopping.wait_for(|s| *s) => {
                    self.done = true;
                    return Some(Ok(Item::Stopping));
                }
            };
            let Some(event) = event else {
                // Cut loose: read the queues again since what was sent.
                tracing::debug!(queues = ?self.filter.queues, "a WatchJobs stream fell behind; reading its queues again");
                let hub = &self.hub;
                self.subscription = hub.subscribe_queues(&self.filter.tenant, &self.filter.queues);
                self.sync = Some(Reading::new(self.resume));
                continue;
            };
            match self.live(event).await {
                Ok(Some(item)) => return Some(Ok(item)),
                Ok(None) => {}
                Err(e) => return Some(Err(self.fail(e))),
            }
        }
    }

    fn fail(&mut self, e: scheduler::Error) -> scheduler::Error {
        self.done = true;
        e
    }

    /// The next job of the snapshot in progress that the client lacks; `None` when a page
    /// held nothing new, or the snapshot just ended (then `sync` is `None`).
    async fn next_of_snapshot(&mut self) -> Result<Option<Box<Job>>, scheduler::Error> {
        let Some(sync) = self.sync.as_mut() else {
            return Ok(None);
        };
        for job in sync.page.by_ref() {
            if self.filter.admits(&job.labels) && newer(&self.sent, &job.id, job.seq) {
                remember(&mut self.sent, &job);
                return Ok(Some(Box::new(job)));
            }
        }
        let Some(cursor) = sync.cursor.take() else {
            sync.queue += 1;
            if sync.queue == self.filter.queues.len() {
                let began = sync.began;
                self.resume = Some(self.resume.map_or(began, |r| r.max(began)));
                self.sync = None;
            } else {
                sync.cursor = Some(FollowCursor::start());
            }
            return Ok(None);
        };
        let queue = &self.filter.queues[sync.queue];
        let (jobs, next) = self
            .scheduler
            .follow(&self.filter.tenant, queue, sync.since, &cursor)
            .await?;
        sync.page = jobs.into_iter();
        sync.cursor = next;
        Ok(None)
    }

    /// What to send for a live event, if anything.
    async fn live(&mut self, event: Arc<Event>) -> Result<Option<Item>, scheduler::Error> {
        let Some(scope) = &event.scope else {
            return Ok(None);
        };
        if !self.filter.admits(&scope.labels) {
            return Ok(None);
        }
        self.resume = Some(self.resume.map_or(event.time_ms, |r| r.max(event.time_ms)));
        if let Some(job) = &event.job {
            // A new job: its snapshot, unless the page that read its queue had it already.
            if self.sent.contains_key(&job.id) {
                return Ok(None);
            }
            remember(&mut self.sent, job);
            return Ok(Some(Item::Snapshot(job.clone())));
        }
        match self.sent.get(&event.job_id) {
            Some(&seq) if event.seq <= seq => Ok(None),
            Some(&seq) if event.seq == seq + 1 => {
                if event.is_terminal() {
                    self.sent.remove(&event.job_id);
                } else {
                    self.sent.insert(event.job_id.clone(), event.seq);
                }
                Ok(Some(Item::Event(event)))
            }
            // A gap, or a job this stream has not sent (it finished before the snapshot read
            // it, or came back from a retry): the job as it is now.
            _ => {
                let mut job = match self.scheduler.get(&self.filter.tenant, &event.job_id).await {
                    Ok(job) => job,
                    Err(scheduler::Error::NotFound) => return Ok(None),
                    Err(e) => return Err(e),
                };
                if !newer(&self.sent, &job.id, job.seq) {
                    return Ok(None);
                }
                job.payload = Vec::new();
                remember(&mut self.sent, &job);
                Ok(Some(Item::Snapshot(Box::new(job))))
            }
        }
    }
}

/// Whether `seq` is past what was sent of job `id` (a job not held is always new).
fn newer(sent: &HashMap<String, u64>, id: &str, seq: u64) -> bool {
    sent.get(id).is_none_or(|&s| seq > s)
}

/// Holds the job's seq while it is unfinished; a finished job is not followed further.
fn remember(sent: &mut HashMap<String, u64>, job: &Job) {
    if job.state.is_terminal() {
        sent.remove(&job.id);
    } else {
        sent.insert(job.id.clone(), job.seq);
    }
}
