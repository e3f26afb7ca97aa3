//! Concurrent single submits of one tenant and queue become one group: one SQL insert and one
//! `submit.lua` call for all of them, instead of one each.
//!
//! No timer and no task of its own. Each tenant and queue has a lane of `PLACES` calls at once: a
//! submit that finds a place free and no group waiting goes at once, in its own task. Otherwise
//! it opens a group, whose leader task waits for a place, or joins the group that waits; so under
//! load each call carries what came while the earlier ones ran. Lanes are apart, so one slow
//! queue (its Cluster shard failing over) does not hold up another's submits.
//! Each submit hears its own outcome: a group refused because one job's idempotency key names
//! another payload is made again, its jobs without a key as one group and each keyed one alone,
//! so only that job is refused.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::{Error, Handle, Job, NewJob};

/// Calls of one lane at once; more wait, gathering jobs. Two: one group gathers while one is
/// submitted, and a lone submit behind a slow one does not wait for it.
const PLACES: usize = 2;
/// A group closes at this many jobs or payload bytes (the next one opens).
const MAX_JOBS: usize = 500;
const MAX_BYTES: usize = 4 << 20;

type Answer = oneshot::Sender<Result<(Job, bool), Error>>;
/// A tenant and a queue.
type Key = (String, String);

struct Group {
    jobs: Vec<NewJob>,
    answers: Vec<Answer>,
    bytes: usize,
}

impl Group {
    fn new(job: NewJob, answer: Answer) -> Self {
        let bytes = job.payload.len();
        Self {
            jobs: vec![job],
            answers: vec![answer],
            bytes,
        }
    }

    fn has_room(&self, bytes: usize) -> bool {
        self.jobs.len() < MAX_JOBS && self.bytes + bytes <= MAX_BYTES
    }
}

/// One tenant's queue: its places, and the groups waiting for one, oldest first (each has a
/// leader task).
struct Lane {
    places: Arc<Semaphore>,
    groups: VecDeque<Group>,
}

impl Default for Lane {
    fn default() -> Self {
        Self {
            places: Arc::new(Semaphore::new(PLACES)),
            groups: VecDeque::new(),
        }
    }
}

#[derive(Default)]
pub struct Coalescer {
    lanes: Mutex<HashMap<Key, Lane>>,
}

impl Coalescer {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Lane>> {
        // The lock guards plain bookkeeping; a panic elsewhere leaves it consistent.
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops a lane nothing uses any more (no group waits, no call holds a place).
    fn tidy(&self, key: &Key) {
        let mut lanes = self.lock();
        if let Some(lane) = lanes.get(key)
            && lane.groups.is_empty()
            && lane.places.available_permits() == PLACES
        {
            lanes.remove(key);
        }
    }
}

/// Whether a job may share a call with others: one with dependencies is registered with them
/// after its call, which a group would fail for all when it fails for one.
pub fn groupable(job: &NewJob) -> bool {
    job.flow.depends_on.is_empty()
}

/// How a submit goes: in a group that waits, at once (holding a place), or leading a new group.
enum Way {
    Joined,
    Now(OwnedSemaphorePermit),
    Leads(Arc<Semaphore>),
}

/// The one job of a one-job `submit_many`.
pub fn one(created: Result<Vec<(Job, bool)>, Error>) -> Result<(Job, bool), Error> {
    created?
        .pop()
        .ok_or_else(|| Error::Corrupt("submit returned no job".into()))
}

impl Handle {
    /// Submits `job` at once when a place is free and nothing waits, else in the group its
    /// tenant and queue have waiting (see the module comment).
    pub(super) async fn submit_grouped(
        &self,
        tenant: &str,
        job: NewJob,
    ) -> Result<(Job, bool), Error> {
        let key = (tenant.to_string(), job.queue.clone());
        let bytes = job.payload.len();
        let (answer, answered) = oneshot::channel();
        let unanswered = || Err(Error::Corrupt("a submit group ended unanswered".into()));
        let mut job = Some(job);
        let way = {
            let mut lanes = self.coalescer.lock();
            let lane = lanes.entry(key.clone()).or_default();
            match lane.groups.back_mut() {
                Some(group) if group.has_room(bytes) => {
                    group.jobs.extend(job.take());
                    group.answers.push(answer);
                    group.bytes += bytes;
                    Way::Joined
                }
                _ => {
                    let free = match lane.groups.is_empty() {
                        true => lane.places.clone().try_acquire_owned().ok(),
                        false => None,
                    };
                    match free {
                        Some(place) => Way::Now(place),
                        None => {
                            let job = job.take().expect("not given away yet");
                            lane.groups.push_back(Group::new(job, answer));
                            Way::Leads(lane.places.clone())
                        }
                    }
                }
            }
        };
        match way {
            Way::Joined => answered.await.unwrap_or_else(|_| unanswered()),
            Way::Now(place) => {
                let outcome = one(self.submit_many(tenant, job.into_iter().collect()).await);
                drop(place);
                self.coalescer.tidy(&key);
                outcome
            }
            Way::Leads(places) => {
                // Its own task: the group goes on for those who joined it even if this
                // caller's future is dropped.
                tokio::spawn(self.clone().lead(key, places));
                answered.await.unwrap_or_else(|_| unanswered())
            }
        }
    }

    /// Waits for a place in the lane, takes its oldest group and submits it.
    async fn lead(self, key: Key, places: Arc<Semaphore>) {
        let Ok(place) = places.acquire_owned().await else {
            return;
        };
        let group = self
            .coalescer
            .lock()
            .get_mut(&key)
            .and_then(|lane| lane.groups.pop_front());
        if let Some(group) = group {
            self.submit_group(&key.0, group).await;
        }
        drop(place);
        self.coalescer.tidy(&key);
    }

    /// Submits a group; each of its submits hears its own outcome.
    async fn submit_group(&self, tenant: &str, group: Group) {
        let Group { jobs, answers, .. } = group;
        // Only a job with an idempotency key can refuse a group of others; keep a copy to go
        // again.
        let spare = (jobs.len() > 1 && jobs.iter().any(|j| !j.idempotency_key.is_empty()))
            .then(|| jobs.clone());
        match (self.submit_many(tenant, jobs).await, spare) {
            (Err(Error::AlreadyExists(_)), Some(jobs)) => {
                // Again: the jobs without a key as one group (nothing can refuse it now), each
                // keyed one alone.
                let (keyed, plain): (Vec<_>, Vec<_>) = jobs
                    .into_iter()
                    .zip(answers)
                    .partition(|(job, _)| !job.idempotency_key.is_empty());
                let plain = async {
                    let (jobs, answers): (Vec<_>, Vec<_>) = plain.into_iter().unzip();
                    if !jobs.is_empty() {
                        answer_each(answers, self.submit_many(tenant, jobs).await);
                    }
                };
                let keyed = keyed.into_iter().map(|(job, answer)| async move {
                    let _ = answer.send(one(self.submit_many(tenant, vec![job]).await));
                });
                futures_util::future::join(plain, futures_util::future::join_all(keyed)).await;
            }
            (outcome, _) => answer_each(answers, outcome),
        }
    }
}

/// Tells each submit of a group its job, or the group's error.
fn answer_each(answers: Vec<Answer>, outcome: Result<Vec<(Job, bool)>, Error>) {
    match outcome {
        Ok(created) => {
            for (answer, created) in answers.into_iter().zip(created) {
                let _ = answer.send(Ok(created));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}
