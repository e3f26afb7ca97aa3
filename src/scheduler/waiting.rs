//! Why a job that is not running waits: its queue is paused, it is scheduled (or backing off
//! before a retry) until a time, or it waits for a worker with so many jobs ahead of it in its
//! tier. Read when a job is shown (GetJob, a WatchJob snapshot), never stored.

use fred::prelude::{KeysInterface, SortedSetsInterface, Value};

use super::{Error, Handle, Job, JobState, keys};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    /// For a person: `queue paused`, `scheduled`, `retry backoff`, `waiting for a worker`.
    pub reason: String,
    /// When it may run, where that is known (unix ms).
    pub eligible_at_ms: Option<i64>,
    /// QUEUED jobs ahead of it in its tier's line (tiers share the workers by weight).
    pub ahead: Option<u64>,
}

impl Handle {
    /// Fills in `job.waiting` for a QUEUED or SCHEDULED job; one round trip for a QUEUED one.
    pub(super) async fn explain(&self, mut job: Job) -> Result<Job, Error> {
        job.waiting = match job.state {
            JobState::Scheduled => Some(Waiting {
                reason: if job.attempt > 0 {
                    "retry backoff"
                } else {
                    "scheduled"
                }
                .into(),
                eligible_at_ms: Some(job.run_at_ms),
                ahead: None,
            }),
            JobState::Queued => {
                let ready = keys::ready(&job.queue, job.tier as i32);
                let pipeline = self.redis.pipeline();
                let _: () = pipeline.exists(keys::paused(&job.queue)).await?;
                let _: () = pipeline.zrank(ready, job.id.as_str(), false).await?;
                let (paused, rank): (i64, Value) = pipeline.all().await?;
                let reason = match paused {
                    1 => "queue paused",
                    _ => "waiting for a worker",
                };
                Some(Waiting {
                    reason: reason.into(),
                    eligible_at_ms: None,
                    ahead: rank.as_u64(),
                })
            }
            _ => None,
        };
        Ok(job)
    }
}
