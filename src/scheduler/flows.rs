//! The Redis side of flows: a WAITING job registered with its dependencies (`register.lua`),
//! told of each one's end (`resolve.lua`), and the `after` set of ended jobs whose follow-ups
//! and waiters crate::flows works through (`after.lua`).

use fred::prelude::{KeysInterface, SetsInterface, SortedSetsInterface, Value};

use super::scripts::call;
use super::{Error, Handle, Job, JobState, durable, keys, now_ms, s};

/// How long a replica holds the after-work of a job it claimed before another may take it.
const HOLD_MS: i64 = 30_000;

impl Handle {
    /// Registers a WAITING `job` with each of its dependencies, so their ends reach it; one that
    /// already ended is resolved at once. Registering after the job exists, then reading each
    /// dependency's state in the same script, leaves no end unheard.
    pub(super) async fn register(&self, job: &Job) -> Result<(), Error> {
        for dep in &job.flow.depends_on {
            let queue = self.locate(dep)?;
            let args = vec![s(keys::prefix(&queue)), s(dep.as_str()), s(job.id.as_str())];
            let state: String = call(
                &self.redis,
                &self.scripts.register,
                keys::job(&queue, dep),
                args,
            )
            .await?;
            let ended = match JobState::parse(&state) {
                Some(state) if state.is_terminal() => Some(state),
                Some(_) => None,
                // Not in Redis: ended and expired, or not restored yet (see register.lua).
                None => self.ended_state(dep).await?,
            };
            if let Some(state) = ended {
                self.resolve(&job.id, dep, state).await?;
            }
        }
        Ok(())
    }

    /// How a job that Redis does not have ended: its state in the history, FAILED when
    /// nothing knows it any more, `None` when the history says it has not ended (a restore
    /// will bring it back).
    async fn ended_state(&self, id: &str) -> Result<Option<JobState>, Error> {
        let Some(store) = &self.history else {
            return Ok(Some(JobState::Failed));
        };
        Ok(match store.get(id).await? {
            Some(row) => JobState::parse(&row.state).filter(|s| s.is_terminal()),
            None => Some(JobState::Failed),
        })
    }

    /// Tells WAITING job `waiter` that its dependency `dep` ended in `state`.
    pub async fn resolve(&self, waiter: &str, dep: &str, state: JobState) -> Result<(), Error> {
        let queue = self.locate(waiter)?;
        let args = vec![
            s(keys::prefix(&queue)),
            s(waiter),
            s(dep),
            s(state.as_str()),
            Value::Integer(now_ms()),
            self.retention(&queue),
        ];
        let ended: Vec<String> = call(
            &self.redis,
            &self.scripts.resolve,
            keys::job(&queue, waiter),
            args,
        )
        .await?;
        super::metered::ended_list(&queue, &ended);
        self.record(durable::ended_list(ended));
        Ok(())
    }

    /// Claims up to 100 ended jobs of `queue` with work after them (`after.lua`).
    pub async fn claim_after(&self, queue: &str) -> Result<Vec<String>, Error> {
        let args = vec![Value::Integer(now_ms()), Value::Integer(HOLD_MS)];
        Ok(call(&self.redis, &self.scripts.after, keys::after(queue), args).await?)
    }

    /// The WAITING jobs registered with job `id`.
    pub async fn waiters(&self, id: &str) -> Result<Vec<String>, Error> {
        let queue = self.locate(id)?;
        Ok(self.redis.smembers(keys::waiters(&queue, id)).await?)
    }

    /// The work after job `id` is done. Its waiters stay listed as long as the job does: a
    /// second report of its end (a retried dependency ends again) finds them already told.
    pub async fn after_done(&self, id: &str) -> Result<(), Error> {
        let queue = self.locate(id)?;
        let retention = self.options.retention_of(&queue).as_millis() as i64;
        // One round trip for both.
        let pipeline = self.redis.pipeline();
        let _: () = pipeline.zrem(keys::after(&queue), id).await?;
        let _: () = pipeline
            .pexpire(keys::waiters(&queue, id), retention, None)
            .await?;
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }
}
