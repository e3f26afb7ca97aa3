//! The scheduler: every job state change, each one atomic Lua script against Redis.
//!
//! It holds no state of its own between calls (Redis does), so the `Handle` is the component:
//! cheap to clone, shared by the api and the dispatcher. It knows nothing of gRPC. With a
//! database (`with_history`) it writes each new job there first and hands every transition to
//! the history writer; reads of jobs Redis no longer has go there.

mod chores;
mod coalesce;
mod durable;
mod error;
mod event;
mod flows;
mod follow;
mod job;
pub mod keys;
mod leases;
mod metered;
mod queues;
mod reconcile;
mod retry;
mod scripts;
mod submit;
mod waiting;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::{Client, HashesInterface, Value};
use rand::Rng;

pub use durable::ListFilter;
pub use error::Error;
pub use event::{Event, EventKind, Scope};
pub use follow::{Cursor as FollowCursor, WATCHED_TTL};
pub use job::{Artifact, Flow, Job, JobState, NewJob, Progress, Tier};
pub use leases::{Holder, Report, Verdict};
pub use queues::{QueueStats, QueueSummary, StateCounts};
pub use reconcile::{Reconciler, Repaired};
pub use retry::MAX_BULK as MAX_RETRY_BULK;
use scripts::{Scripts, call};
pub use waiting::Waiting;

use crate::history;

/// Defaults that apply to a job unless its submit says otherwise, and scheduling knobs.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long a lease lasts without renewal. Default 30 s; renewed every third of it.
    pub lease_ttl: Duration,
    /// Weights of FREE, PRO, PREMIUM, ENTERPRISE in the fair share. Default 1, 2, 4, 8.
    pub tier_weights: [u32; 4],
    /// Default attempts per job. Default 3.
    pub max_attempts: u32,
    /// Default first retry delay, doubled per attempt. Default 1 s.
    pub backoff_initial: Duration,
    /// Default ceiling of the retry delay. Default 5 min.
    pub backoff_max: Duration,
    /// Default limit of one attempt's run time. Default 1 h.
    pub timeout: Duration,
    /// How long a finished job stays in Redis (the database keeps it longer). Default 1 h.
    pub retention: Duration,
    /// Per-queue overrides of the job defaults above. Default none.
    pub queues: HashMap<String, QueueDefaults>,
}

/// A queue's own job defaults; unset fields fall back to the server-wide ones.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueDefaults {
    pub max_attempts: Option<u32>,
    pub backoff_initial: Option<Duration>,
    pub backoff_max: Option<Duration>,
    pub timeout: Option<Duration>,
    /// Where the ends of this queue's jobs are POSTed unless a job names its own URL.
    pub webhook: Option<String>,
    /// Most jobs of this queue running at once, across every worker and replica.
    pub concurrency: Option<u32>,
    /// At most one lease per this long, up to the second number at once (GCRA), across every
    /// worker and replica.
    pub rate: Option<(Duration, u32)>,
    /// Limits per limit key, most specific pattern first (`KeyLimit::matching`).
    pub key_limits: Vec<KeyLimit>,
    /// Aging: a tier whose next job has waited this long goes first, whatever its weight.
    pub max_wait: Option<Duration>,
    /// How long its finished jobs, their history and their artifacts are kept (the
    /// server-wide history retention when `None`); see `crate::retention`.
    pub retention: Option<Duration>,
}

/// A limit on the jobs of one queue that share a limit key: at most `concurrency` running at
/// once, and at most one lease per `rate.0`, `rate.1` at once (GCRA). Checked in lease.lua.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyLimit {
    /// A key exactly, or every key starting with what precedes a final `*`.
    pub pattern: String,
    pub concurrency: Option<u32>,
    pub rate: Option<(Duration, u32)>,
}

impl KeyLimit {
    fn prefix(&self) -> Option<&str> {
        self.pattern.strip_suffix('*')
    }

    /// Orders patterns: an exact key first, then longer prefixes before shorter ones.
    pub fn specificity(&self) -> usize {
        match self.prefix() {
            None => usize::MAX,
            Some(prefix) => prefix.len(),
        }
    }

    /// The first of `limits` (most specific first) whose pattern matches `key`.
    pub fn matching<'a>(key: &str, limits: &'a [KeyLimit]) -> Option<&'a KeyLimit> {
        limits.iter().find(|l| match l.prefix() {
            Some(prefix) => key.starts_with(prefix),
            None => key == l.pattern,
        })
    }
}

impl Options {
    /// The job defaults that apply in `queue`.
    pub fn defaults(&self, queue: &str) -> QueueDefaults {
        let q = self.queues.get(queue).cloned().unwrap_or_default();
        QueueDefaults {
            max_attempts: q.max_attempts.or(Some(self.max_attempts)),
            backoff_initial: q.backoff_initial.or(Some(self.backoff_initial)),
            backoff_max: q.backoff_max.or(Some(self.backoff_max)),
            timeout: q.timeout.or(Some(self.timeout)),
            webhook: q.webhook,
            concurrency: q.concurrency,
            rate: q.rate,
            key_limits: q.key_limits,
            max_wait: q.max_wait,
            retention: q.retention,
        }
    }

    /// How long a finished job of `queue` stays in Redis: `retention`, or the queue's own
    /// retention when that is shorter (its history and artifacts go then too).
    pub fn retention_of(&self, queue: &str) -> Duration {
        let own = self.queues.get(queue).and_then(|q| q.retention);
        own.map_or(self.retention, |own| own.min(self.retention))
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            tier_weights: [1, 2, 4, 8],
            max_attempts: 3,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            timeout: Duration::from_secs(3600),
            retention: Duration::from_secs(3600),
            queues: HashMap::new(),
        }
    }
}

/// The jobs one lease call handed out, and what the caller should do next.
#[derive(Debug, Default)]
pub struct Leased {
    pub jobs: Vec<Job>,
    /// More ready jobs remain in the queue.
    pub more: bool,
    /// When the earliest delayed job is due (unix ms).
    pub next_due_ms: Option<i64>,
    /// A sweep only: when the queue next needs one (the earliest lease deadline or expiry).
    pub next_check_ms: Option<i64>,
}

/// A page of `list`.
#[derive(Debug, Default)]
pub struct Page {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
}

#[derive(Clone)]
pub struct Handle {
    redis: Client,
    scripts: Arc<Scripts>,
    options: Arc<Options>,
    history: Option<history::Store>,
    /// Told of every job that ends, for its webhook.
    webhooks: Option<crate::webhooks::Handle>,
    /// Rung when a submit finds a queue a Redis Cluster shard lost: the reconciler looks at once.
    lost_queue: Arc<tokio::sync::Notify>,
    /// Concurrent single submits made into groups.
    coalescer: Arc<coalesce::Coalescer>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> Value {
    Value::Integer(d.as_millis() as i64)
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into().into())
}

fn jitter() -> Value {
    Value::Double(rand::rng().random::<f64>())
}

/// Turns a `{'CODE', message}` script rejection into an error, or hands back the rest.
fn accept(reply: Value) -> Result<Vec<Value>, Error> {
    let Value::Array(mut items) = reply else {
        return Err(Error::Corrupt("script reply is not an array".into()));
    };
    if items.is_empty() {
        return Err(Error::Corrupt("empty script reply".into()));
    }
    let code = items.remove(0).as_string().unwrap_or_default();
    let message = items.first().and_then(Value::as_string).unwrap_or_default();
    match code.as_str() {
        "OK" | "CREATED" | "EXISTS" => {
            if code == "EXISTS" {
                items.insert(0, Value::Boolean(false));
            } else if code == "CREATED" {
                items.insert(0, Value::Boolean(true));
            }
            Ok(items)
        }
        "NOT_FOUND" => Err(Error::NotFound),
        "FAILED_PRECONDITION" => Err(Error::FailedPrecondition(message)),
        "ALREADY_EXISTS" => Err(Error::AlreadyExists(message)),
        other => Err(Error::Corrupt(format!("unexpected script reply {other}"))),
    }
}

impl Handle {
    pub fn new(redis: Client, options: Options) -> Self {
        Self {
            redis,
            scripts: Arc::new(Scripts::new()),
            options: Arc::new(options),
            history: None,
            webhooks: None,
            lost_queue: Arc::default(),
            coalescer: Arc::default(),
        }
    }

    /// The same scheduler with `store` as its system of record.
    pub fn with_history(mut self, store: history::Store) -> Self {
        self.history = Some(store);
        self
    }

    /// From now on, every job that ends is reported to `webhooks`.
    pub fn with_webhooks(mut self, webhooks: crate::webhooks::Handle) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// A job by id whatever its tenant, for the server's own use (webhooks, flows); `None` once
    /// it is gone from Redis and the history alike.
    pub async fn lookup(&self, id: &str) -> Result<Option<Job>, Error> {
        if let Some(job) = self.load(id).await? {
            return Ok(Some(job));
        }
        match &self.history {
            Some(store) => store.get(id).await?.map(durable::job).transpose(),
            None => Ok(None),
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    fn retention(&self, queue: &str) -> Value {
        ms(self.options.retention_of(queue))
    }

    /// Which queue a job id belongs to (the id names it).
    pub fn locate(&self, id: &str) -> Result<String, Error> {
        keys::queue_of(id)
            .map(str::to_string)
            .ok_or(Error::NotFound)
    }

    /// The job as it is now (from the database once Redis no longer has it); another tenant's
    /// job is NOT_FOUND.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Job, Error> {
        match self.get_redis(tenant, id).await {
            Err(Error::NotFound) => self.get_from_history(tenant, id).await,
            Ok(job) => self.explain(job).await,
            other => other,
        }
    }

    async fn get_redis(&self, tenant: &str, id: &str) -> Result<Job, Error> {
        match self.load(id).await? {
            Some(job) if job.tenant == tenant => Ok(job),
            _ => Err(Error::NotFound),
        }
    }

    /// The job's hash as Redis has it, whatever its tenant; `None` when Redis has no such job.
    async fn load(&self, id: &str) -> Result<Option<Job>, Error> {
        let queue = self.locate(id)?;
        let fields: Value = self.redis.hgetall(keys::job(&queue, id)).await?;
        let empty = match &fields {
            Value::Array(a) => a.is_empty(),
            Value::Map(m) => m.is_empty(),
            other => other.is_null(),
        };
        if empty {
            return Ok(None);
        }
        Job::from_fields(fields).map(Some)
    }

    /// Opens a watch: from now on the job's events are published. Returns the job as it is now
    /// (a finished one from the database once Redis no longer has it); another tenant's job is
    /// NOT_FOUND.
    pub async fn watch(&self, tenant: &str, id: &str) -> Result<Job, Error> {
        let queue = self.locate(id)?;
        let reply = call(
            &self.redis,
            &self.scripts.watch,
            keys::job(&queue, id),
            vec![s(tenant)],
        )
        .await?;
        match accept(reply) {
            Ok(reply) => {
                let job = Job::from_fields(reply.into_iter().next().unwrap_or(Value::Null))?;
                self.explain(job).await
            }
            // Gone from Redis: a finished job from the database is the whole story.
            Err(Error::NotFound) => match self.get_from_history(tenant, id).await? {
                job if job.state.is_terminal() => Ok(job),
                _ => Err(Error::History(
                    "job is being restored after a Redis loss; watch again shortly".into(),
                )),
            },
            Err(e) => Err(e),
        }
    }

    /// Closes a watch of an unfinished job; the last one stops the job's events.
    pub async fn unwatch(&self, queue: &str, id: &str) -> Result<(), Error> {
        let _: i64 = call(
            &self.redis,
            &self.scripts.unwatch,
            keys::job(queue, id),
            Vec::new(),
        )
        .await?;
        Ok(())
    }

    /// One page of the tenant's jobs in `queue`, newest first, from Redis (no database).
    async fn list_redis(
        &self,
        tenant: &str,
        queue: &str,
        state: Option<JobState>,
        page_size: u32,
        cursor: Option<&str>,
    ) -> Result<Page, Error> {
        let args = vec![
            s(keys::prefix(queue)),
            s(tenant),
            s(state.map(JobState::as_str).unwrap_or("")),
            s(cursor.unwrap_or("+inf")),
            Value::Integer(page_size as i64),
            Value::Integer(5000),
        ];
        let reply: Vec<Value> =
            call(&self.redis, &self.scripts.list, keys::all(queue), args).await?;
        let mut items = reply.into_iter();
        let next = items
            .next()
            .and_then(|v| v.as_string())
            .filter(|c| !c.is_empty());
        let jobs = items.map(Job::from_fields).collect::<Result<_, _>>()?;
        Ok(Page {
            jobs,
            next_cursor: next,
        })
    }

    pub async fn cancel(&self, tenant: &str, id: &str) -> Result<Job, Error> {
        let queue = self.locate(id)?;
        let args = vec![
            s(keys::prefix(&queue)),
            s(id),
            s(tenant),
            Value::Integer(now_ms()),
            self.retention(&queue),
        ];
        let reply = call(
            &self.redis,
            &self.scripts.cancel,
            keys::job(&queue, id),
            args,
        )
        .await?;
        let reply = match accept(reply) {
            Err(Error::NotFound) => {
                // Gone from Redis: a finished job says so, as it would have there.
                let job = self.get_from_history(tenant, id).await?;
                return Err(Error::FailedPrecondition(format!(
                    "job already finished as {}; nothing to cancel",
                    job.state.as_str()
                )));
            }
            other => other?,
        };
        let job = Job::from_fields(reply.into_iter().next().unwrap_or(Value::Null))?;
        metered::ended(&queue, &(job.tier as i32).to_string(), "CANCELLED");
        let change = durable::ended(id, JobState::Cancelled, None, None, None);
        self.record(vec![change]);
        Ok(job)
    }
}
