//! The transition that creates jobs: a batch of one queue in one script call, after their rows.
//!
//! A job is accepted once its row is written: the database is the system of record. When the
//! script call then ends without an answer (a timeout, a broken connection: the script may have
//! run or not), the rows stay and the same call is made again, marked as a repeat, until Redis
//! answers (`submit_again`): a job Redis has already is left as it is, one whose idempotency key now
//! names another job (the client retried meanwhile) is dropped with its row, and one Redis lacks
//! is created. So a job is never in Redis without its row, and a retried submit with the same key
//! ends on one job. Rows of a call refused because Redis lost its data and is not restored yet
//! go only once the restore is done, and only if it did not bring their jobs back: it may have
//! read them already (deleting them at once left a job in Redis without its row, which a retry
//! with the key was answered with). A row the restore finds repeating a job its key names is
//! not brought back (`restore.lua`), so one key stays one job.

use std::time::Duration;

use fred::prelude::{ClientLike, KeysInterface, Value};

use super::job::json_list;
use super::scripts::call;
use super::{
    Error, Handle, Job, JobState, NewJob, Progress, QueueDefaults, accept, coalesce, durable, keys,
    now_ms, s,
};
use crate::history;

impl Handle {
    /// Creates a job, or returns the tenant's existing one with the same idempotency key
    /// (`false` in the tuple). Concurrent submits to one queue share a call (`coalesce.rs`).
    pub async fn submit(&self, tenant: &str, job: NewJob) -> Result<(Job, bool), Error> {
        match coalesce::groupable(&job) {
            true => self.submit_grouped(tenant, job).await,
            false => coalesce::one(self.submit_many(tenant, vec![job]).await),
        }
    }

    /// Creates jobs of one queue in one script call, all or none; see `submit`.
    pub async fn submit_many(
        &self,
        tenant: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<(Job, bool)>, Error> {
        let Some(queue) = jobs.first().map(|j| j.queue.clone()) else {
            return Ok(Vec::new());
        };
        let defaults = self.options.defaults(&queue);
        let now = now_ms();
        let mut args = Vec::with_capacity(4 + 19 * jobs.len());
        // Without a database there is nothing to restore: a missing queue is simply new.
        let create = if self.history.is_some() { "0" } else { "1" };
        let limits = self.key_limit_args(&queue);
        args.extend([
            s(keys::prefix(&queue)),
            s(tenant),
            Value::Integer(now),
            s(create),
            s("0"), // not a repeat
            Value::Integer(limits.len() as i64 / 4),
        ]);
        args.extend(limits);
        // The jobs as `submit.lua` creates them, so its answer need not repeat them.
        let mut sent = Vec::with_capacity(jobs.len());
        for job in jobs {
            debug_assert_eq!(job.queue, queue, "one queue per batch");
            let (created, job_args) = prepare(tenant, job, &defaults, now);
            args.extend(job_args);
            sent.push(created);
        }
        // The database first: once Redis has a job a worker may run it, and an accepted job must
        // be durable. What Redis then does not take is deleted again.
        if let Some(store) = &self.history {
            match store.insert(sent.iter().map(durable::row).collect()).await {
                Ok(()) => {}
                Err(history::Inserting::Failed(e)) => return Err(e.into()),
                // The database is slow or away: the caller hears so in time, and the jobs are
                // submitted once (if) their rows land.
                Err(history::Inserting::Slow(committed)) => {
                    let timeout = store.timeout();
                    tokio::spawn(self.clone().once_committed(committed, queue, args, sent));
                    return Err(Error::History(format!(
                        "the database did not answer within {timeout:?}"
                    )));
                }
            }
        }
        match self.submit_redis(&queue, &mut args, &sent).await {
            Ok(answers) => self.accepted(&queue, sent, answers).await,
            Err(e) if unanswered(&e) && self.history.is_some() => {
                tokio::spawn(self.clone().submit_again(queue, args, sent));
                Err(e)
            }
            Err(e) => {
                self.forget(sent.iter().map(|j| j.id.clone()).collect())
                    .await;
                Err(e)
            }
        }
    }

    /// Submits jobs whose rows landed after their caller stopped waiting; nothing if they did not.
    async fn once_committed(
        self,
        committed: history::commit::Committed,
        queue: String,
        args: Vec<Value>,
        sent: Vec<Job>,
    ) {
        match committed.await {
            Ok(()) => self.submit_again(queue, args, sent).await,
            Err(e) => {
                tracing::warn!(error = %e, queue, "a slow insert failed; its jobs were not accepted")
            }
        }
    }

    /// Deletes the rows of jobs Redis did not take. Best effort: a row left behind is an
    /// unfinished job Redis never had, which a later repair would restore (and run).
    ///
    /// While Redis is being restored, the restore may have read these rows and put their jobs
    /// back: so then the rows go only once the restore is done (the marker is back, waited for in
    /// the background), and only those of jobs Redis does not have then. Before, a repeat that
    /// found its key taken deleted a row the restore then brought back, and a job lived in Redis
    /// without its row.
    async fn forget(&self, ids: Vec<String>) {
        if self.history.is_none() {
            return;
        }
        match self.not_in_redis(&ids).await {
            Ok(Some(gone)) => self.delete_rows(gone).await,
            // Redis is being restored, or out of reach for now (a Cluster master failing over):
            // ask again in the background.
            Ok(None) | Err(_) => {
                tokio::spawn(self.clone().forget_when_whole(ids));
            }
        }
    }

    async fn forget_when_whole(self, ids: Vec<String>) {
        let mut wait = Duration::from_millis(100);
        let until = tokio::time::Instant::now() + RESOLVE_FOR;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
            match self.not_in_redis(&ids).await {
                Ok(Some(gone)) => return self.delete_rows(gone).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cannot check rows of jobs Redis did not take yet")
                }
            }
        }
        // The rows stay; the repair compares them with Redis.
    }

    async fn delete_rows(&self, ids: Vec<String>) {
        if let Some(store) = &self.history
            && let Err(e) = store.forget(ids).await
        {
            tracing::warn!(error = %e, "could not delete rows of jobs Redis did not take");
        }
    }

    /// Of `ids`, those Redis does not have (one pipelined EXISTS each); `None` while Redis is
    /// not whole (no marker).
    async fn not_in_redis(&self, ids: &[String]) -> Result<Option<Vec<String>>, Error> {
        if self.redis.exists::<i64, _>(keys::MARKER).await? == 0 {
            return Ok(None);
        }
        let pipeline = self.redis.pipeline();
        for id in ids {
            let queue = keys::queue_of(id).unwrap_or_default();
            let _: () = pipeline.exists(keys::job(queue, id)).await?;
        }
        let found: Vec<i64> = match ids.len() {
            0 => Vec::new(),
            _ => pipeline.all().await?,
        };
        let gone = ids.iter().zip(found).filter(|(_, n)| *n == 0);
        Ok(Some(gone.map(|(id, _)| id.clone()).collect()))
    }

    /// What Redis answered for the `sent` jobs (`None`: created as sent; else the job it repeats):
    /// the rows of jobs it did not take go, and created jobs are counted and, when they wait for
    /// others, registered with them. Per job: the job, and whether it was created.
    async fn accepted(
        &self,
        queue: &str,
        sent: Vec<Job>,
        answers: Vec<Option<Job>>,
    ) -> Result<Vec<(Job, bool)>, Error> {
        // A job answered under its own id is one a repeated call found in place: its row stays,
        // and it is registered with its dependencies as a created one is (registering twice
        // is harmless; the call that created it may not have got that far).
        let mut forget = Vec::new();
        let mut register = Vec::new();
        let answered: Vec<(Job, bool)> = sent
            .into_iter()
            .zip(answers)
            .map(|(job, answer)| {
                let (job, created, ours) = match answer {
                    None => (job, true, true),
                    Some(first) if first.id == job.id => (first, false, true),
                    Some(first) => {
                        forget.push(job.id);
                        (first, false, false)
                    }
                };
                if ours && job.state == JobState::Waiting {
                    register.push(job.clone());
                }
                (job, created)
            })
            .collect();
        if !forget.is_empty() {
            self.forget(forget).await;
        }
        let created = answered.iter().filter(|(_, created)| *created);
        for (tier, n) in super::Tier::count(created.map(|(job, _)| job.tier)) {
            super::metered::submitted(queue, tier, n as u64);
        }
        for job in &register {
            self.register(job).await?;
        }
        Ok(answered)
    }

    /// Makes a submit call that went without an answer again, as a repeat, until Redis answers
    /// (see the module comment). Gives up after `RESOLVE_FOR`: the rows stay, and the repair
    /// restores what Redis lacks.
    async fn submit_again(self, queue: String, mut args: Vec<Value>, sent: Vec<Job>) {
        args[4] = s("1"); // a repeat
        let until = tokio::time::Instant::now() + RESOLVE_FOR;
        let mut wait = Duration::from_millis(100);
        loop {
            tokio::time::sleep(wait).await;
            match self.submit_redis(&queue, &mut args, &sent).await {
                Ok(answers) => {
                    if let Err(e) = self.accepted(&queue, sent, answers).await {
                        tracing::warn!(error = %e, queue, "registering resolved jobs failed");
                    }
                    return;
                }
                Err(e) if unanswered(&e) && tokio::time::Instant::now() < until => {
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                // Redis lost its data: the restore brings the rows back.
                Err(Error::Restoring) => return,
                Err(e) if unanswered(&e) => {
                    tracing::warn!(error = %e, queue, "submit still unresolved; the repair takes it over");
                    return;
                }
                // Refused outright (its idempotency key is another payload's now): not accepted.
                Err(e) => {
                    tracing::warn!(error = %e, queue, "a submit Redis did not answer was refused when made again");
                    self.forget(sent.iter().map(|j| j.id.clone()).collect())
                        .await;
                    return;
                }
            }
        }
    }

    /// Runs `submit.lua` for the `sent` jobs; per job, `None` when it was created as sent, or the
    /// job it repeats. `args` stays the caller's, to make the call again.
    async fn submit_redis(
        &self,
        queue: &str,
        args: &mut [Value],
        sent: &[Job],
    ) -> Result<Vec<Option<Job>>, Error> {
        let count = sent.len();
        let script = &self.scripts.submit;
        let mut reply = call(&self.redis, script, keys::all(queue), args.to_vec()).await?;
        if is_no_queue(&reply) {
            // New to this Redis: a new queue if the reconciler's marker is there, else Redis
            // lost its data and the restore is not done.
            if self.redis.exists::<i64, _>(keys::MARKER).await? == 0 {
                return Err(Error::Restoring);
            }
            // On a Redis Cluster the marker lives on one shard: a queue with jobs in the
            // database whose shard lost its data is restored first, not made anew.
            if self.redis.is_clustered()
                && let Some(store) = &self.history
            {
                let ours: Vec<String> = sent.iter().map(|j| j.id.clone()).collect();
                if store.in_play(queue, &ours).await? {
                    self.lost_queue.notify_one();
                    return Err(Error::Restoring);
                }
            }
            args[3] = s("1");
            reply = call(&self.redis, script, keys::all(queue), args.to_vec()).await?;
        }
        let Some(Value::Array(answers)) = accept(reply)?.into_iter().next() else {
            return Err(Error::Corrupt("submit reply has no jobs".into()));
        };
        if answers.len() != count {
            return Err(Error::Corrupt(
                "submit answered another number of jobs".into(),
            ));
        }
        answers
            .into_iter()
            .map(|answer| match answer {
                Value::Integer(1) => Ok(None),
                first => Job::from_fields(first).map(Some),
            })
            .collect()
    }
}

/// How long a submit call without an answer is made again before the repair takes it over.
const RESOLVE_FOR: Duration = Duration::from_secs(600);

/// Whether a submit call may or may not have run: Redis gave no answer (a timeout, a broken
/// connection), as opposed to a refusal.
fn unanswered(e: &Error) -> bool {
    match e {
        Error::Redis(e) => !crate::redis::not_applied(e),
        Error::Corrupt(_) => true,
        _ => false,
    }
}

fn is_no_queue(reply: &Value) -> bool {
    matches!(reply, Value::Array(items) if items.first().and_then(Value::as_str).as_deref() == Some("NO_QUEUE"))
}

/// The job `submit.lua` will create from `job` (defaults applied), and its 19 script arguments.
fn prepare(tenant: &str, job: NewJob, d: &QueueDefaults, now: i64) -> (Job, [Value; 22]) {
    let millis = |ms: Option<u64>, default: Option<Duration>| {
        ms.unwrap_or(default.unwrap_or_default().as_millis() as u64)
    };
    let run_at = job.run_at_ms.unwrap_or(0);
    let fairness_key = match job.fairness_key.is_empty() {
        true => tenant.to_string(),
        false => job.fairness_key,
    };
    let (state, run_at_ms) = match run_at > now {
        true => (JobState::Scheduled, run_at),
        false => (JobState::Queued, now),
    };
    // Waiting for its dependencies first; then as above.
    let state = match job.flow.depends_on.is_empty() {
        true => state,
        false => JobState::Waiting,
    };
    let created = Job {
        id: keys::new_job_id(&job.queue),
        tenant: tenant.to_string(),
        tier: job.tier,
        priority: job.priority,
        state,
        payload: job.payload,
        content_type: job.content_type,
        labels: job.labels,
        attempt: 0,
        max_attempts: job.max_attempts.or(d.max_attempts).unwrap_or(1),
        backoff_initial_ms: millis(job.backoff_initial_ms, d.backoff_initial),
        backoff_max_ms: millis(job.backoff_max_ms, d.backoff_max),
        timeout_ms: millis(job.timeout_ms, d.timeout),
        idempotency_key: job.idempotency_key,
        callback_url: match job.callback_url.is_empty() {
            true => d.webhook.clone().unwrap_or_default(),
            false => job.callback_url,
        },
        limit_key: job.limit_key,
        keep: job.keep,
        inputs: job.inputs,
        flow: job.flow,
        trace_context: job.trace_context,
        created_ms: now,
        run_at_ms,
        started_ms: None,
        finished_ms: None,
        progress: Progress::default(),
        artifacts: Vec::new(),
        result: String::new(),
        error: String::new(),
        worker: String::new(),
        token: 0,
        seq: 0,
        waiting: None,
        queue: job.queue,
    };
    let labels = serde_json::to_string(&created.labels).unwrap_or_else(|_| "{}".into());
    let args = [
        s(created.id.as_str()),
        Value::Integer(created.tier as i64),
        Value::Integer(created.priority as i64),
        Value::Bytes(created.payload.clone().into()),
        s(created.content_type.as_str()),
        s(labels),
        Value::Integer(created.max_attempts as i64),
        Value::Integer(created.backoff_initial_ms as i64),
        Value::Integer(created.backoff_max_ms as i64),
        Value::Integer(created.timeout_ms as i64),
        s(created.idempotency_key.as_str()),
        Value::Integer(run_at),
        s(fairness_key),
        s(created.callback_url.as_str()),
        s(created.limit_key.as_str()),
        Value::Bytes(created.flow.on_success.clone().into()),
        s(created.flow.parent_id.as_str()),
        s(json_list(&created.flow.depends_on)),
        s(match created.flow.cancel_if_dependency_fails {
            true => "cancel",
            false => "",
        }),
        s(if created.keep { "1" } else { "" }),
        s(json_list(&created.inputs)),
        s(created.trace_context.as_str()),
    ];
    (created, args)
}
