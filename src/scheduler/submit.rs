//! The transition that creates jobs: a batch of one queue in one script call.

use std::time::Duration;

use fred::prelude::{KeysInterface, Value};

use super::job::json_list;
use super::scripts::call;
use super::{
    Error, Handle, Job, JobState, NewJob, Progress, QueueDefaults, accept, durable, keys, now_ms, s,
};

impl Handle {
    /// Creates a job, or returns the tenant's existing one with the same idempotency key
    /// (`false` in the tuple).
    pub async fn submit(&self, tenant: &str, job: NewJob) -> Result<(Job, bool), Error> {
        let mut created = self.submit_many(tenant, vec![job]).await?;
        created
            .pop()
            .ok_or_else(|| Error::Corrupt("submit returned no job".into()))
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
        // Kept only to undo the rows if Redis fails.
        let ids: Vec<String> = match self.history {
            Some(_) => sent.iter().map(|j| j.id.clone()).collect(),
            None => Vec::new(),
        };
        // The database first: once Redis has a job a worker may run it, and an accepted job must
        // be durable. What Redis then does not take is deleted again.
        if let Some(store) = &self.history {
            store
                .insert(sent.iter().map(durable::row).collect())
                .await?;
        }
        let answered = self.submit_redis(&queue, args, sent).await;
        if let Some(store) = &self.history {
            let unaccepted = match &answered {
                Ok(answers) => answers
                    .iter()
                    .filter(|(_, created, _)| !created)
                    .map(|(_, _, sent)| sent.clone())
                    .collect(),
                Err(_) => ids,
            };
            // Best effort: a row left behind is an unfinished job Redis never had, which a later
            // reconciliation would restore (and run) as a job of its own.
            if let Err(e) = store.forget(unaccepted).await {
                tracing::warn!(error = %e, "could not delete rows of jobs Redis did not take");
            }
        }
        let answered: Vec<(Job, bool)> = answered?
            .into_iter()
            .map(|(job, created, _)| (job, created))
            .collect();
        let created = answered.iter().filter(|(_, created)| *created);
        for (tier, n) in super::Tier::count(created.map(|(job, _)| job.tier)) {
            super::metered::submitted(&queue, tier, n as u64);
        }
        for (job, created) in &answered {
            if *created && job.state == JobState::Waiting {
                self.register(job).await?;
            }
        }
        Ok(answered)
    }

    /// Runs `submit.lua`; per job: the job, whether it was created, and the id that was sent.
    async fn submit_redis(
        &self,
        queue: &str,
        mut args: Vec<Value>,
        sent: Vec<Job>,
    ) -> Result<Vec<(Job, bool, String)>, Error> {
        let mut reply = call(
            &self.redis,
            &self.scripts.submit,
            keys::all(queue),
            args.clone(),
        )
        .await?;
        if is_no_queue(&reply) {
            // New to this Redis: a new queue if the reconciler's marker is there, else Redis
            // lost its data and the restore is not done.
            if self.redis.exists::<i64, _>(keys::MARKER).await? == 0 {
                return Err(Error::Restoring);
            }
            args[3] = s("1");
            reply = call(&self.redis, &self.scripts.submit, keys::all(queue), args).await?;
        }
        let Some(Value::Array(answers)) = accept(reply)?.into_iter().next() else {
            return Err(Error::Corrupt("submit reply has no jobs".into()));
        };
        if answers.len() != sent.len() {
            return Err(Error::Corrupt(
                "submit answered another number of jobs".into(),
            ));
        }
        sent.into_iter()
            .zip(answers)
            .map(|(job, answer)| {
                let id = job.id.clone();
                match answer {
                    Value::Integer(1) => Ok((job, true, id)),
                    first => Ok((Job::from_fields(first)?, false, id)),
                }
            })
            .collect()
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
