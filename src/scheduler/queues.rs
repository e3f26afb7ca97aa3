//! Queue control and figures: pausing and resuming (a flag `lease.lua` reads; `pause.lua`), and a
//! tenant's view of its queues from the history.

use std::collections::BTreeMap;

use fred::prelude::{ClientLike, HashesInterface, KeysInterface, SortedSetsInterface, Value};

use super::scripts::call;
use super::{Error, Handle, JobState, Tier, keys, now_ms};

/// How many jobs are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts([u64; 7]);

const STATES: [JobState; 7] = [
    JobState::Waiting,
    JobState::Scheduled,
    JobState::Queued,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

impl StateCounts {
    pub fn get(&self, state: JobState) -> u64 {
        self.0[STATES
            .iter()
            .position(|s| *s == state)
            .expect("every state")]
    }

    fn add(&mut self, state: JobState, n: u64) {
        self.0[STATES
            .iter()
            .position(|s| *s == state)
            .expect("every state")] += n;
    }

    fn add_all(&mut self, other: &StateCounts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }
}

/// One tenant's figures for one queue.
#[derive(Clone, Debug, Default)]
pub struct QueueStats {
    pub queue: String,
    pub paused: bool,
    pub total: StateCounts,
    /// Tiers that have jobs, FREE first.
    pub tiers: Vec<(Tier, StateCounts)>,
    /// Submit time (unix ms) of the oldest QUEUED job.
    pub oldest_queued_ms: Option<i64>,
    pub finished_last_minute: u64,
}

#[derive(Clone, Debug, Default)]
pub struct QueueSummary {
    pub queue: String,
    pub paused: bool,
    pub counts: StateCounts,
}

impl Handle {
    /// Pauses (`true`) or resumes a queue; false when it already was so.
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<bool, Error> {
        let args = vec![
            Value::from(keys::prefix(queue)),
            Value::from(if paused { "1" } else { "0" }),
        ];
        let changed: i64 =
            call(&self.redis, &self.scripts.pause, keys::paused(queue), args).await?;
        Ok(changed == 1)
    }

    /// Whether Redis answers (the readiness check).
    pub async fn ping(&self) -> Result<(), Error> {
        let _: String = self.redis.ping(None).await?;
        Ok(())
    }

    /// Per tier that has QUEUED jobs in line: how many, and since when (unix ms) the job at the
    /// head of the line could run. For the metrics: one ZCARD per tier, and a ZRANGE and an
    /// HMGET per tier with jobs.
    pub async fn depth(&self, queue: &str) -> Result<Vec<(Tier, u64, Option<i64>)>, Error> {
        let mut out = Vec::new();
        for tier in Tier::ALL {
            let key = keys::ready(queue, tier as i32);
            let n: u64 = self.redis.zcard(&key).await?;
            if n == 0 {
                continue;
            }
            let head: Vec<String> = self
                .redis
                .zrange(&key, 0, 0, None, false, None, false)
                .await?;
            let mut since = None;
            if let Some(id) = head.first() {
                let times: Vec<Option<i64>> = self
                    .redis
                    .hmget(keys::job(queue, id), vec!["created", "run_at"])
                    .await?;
                since = times.into_iter().flatten().max();
            }
            out.push((tier, n, since));
        }
        Ok(out)
    }

    pub async fn is_paused(&self, queue: &str) -> Result<bool, Error> {
        let n: i64 = self.redis.exists(keys::paused(queue)).await?;
        Ok(n == 1)
    }

    /// The tenant's jobs in `queue` by state and tier, from the history.
    pub async fn queue_stats(&self, tenant: &str, queue: &str) -> Result<QueueStats, Error> {
        let store = self.history_or_refuse()?;
        let mut tiers: BTreeMap<i32, StateCounts> = BTreeMap::new();
        for (_, tier, state, n) in store.counts(tenant, Some(queue)).await.map_err(history)? {
            if let Some(state) = JobState::parse(&state) {
                tiers.entry(tier).or_default().add(state, n as u64);
            }
        }
        let mut stats = QueueStats {
            queue: queue.to_string(),
            paused: self.is_paused(queue).await?,
            ..Default::default()
        };
        for (tier, counts) in tiers {
            stats.total.add_all(&counts);
            if let Some(tier) = Tier::from_i32(tier) {
                stats.tiers.push((tier, counts));
            }
        }
        if stats.total.get(JobState::Queued) > 0 {
            stats.oldest_queued_ms = store.oldest_queued(tenant, queue).await.map_err(history)?;
        }
        let since = now_ms() - 60_000;
        stats.finished_last_minute = store
            .finished_since(tenant, queue, since)
            .await
            .map_err(history)?;
        Ok(stats)
    }

    /// The queues the tenant has jobs in (per the history), with their counts.
    pub async fn queues(&self, tenant: &str) -> Result<Vec<QueueSummary>, Error> {
        let store = self.history_or_refuse()?;
        let mut queues: BTreeMap<String, StateCounts> = BTreeMap::new();
        for (queue, _, state, n) in store.counts(tenant, None).await.map_err(history)? {
            if let Some(state) = JobState::parse(&state) {
                queues.entry(queue).or_default().add(state, n as u64);
            }
        }
        let mut out = Vec::with_capacity(queues.len());
        for (queue, counts) in queues {
            let paused = self.is_paused(&queue).await?;
            out.push(QueueSummary {
                queue,
                paused,
                counts,
            });
        }
        Ok(out)
    }

    fn history_or_refuse(&self) -> Result<&crate::history::Store, Error> {
        self.history().ok_or_else(|| {
            Error::FailedPrecondition(
                "queue figures come from the job history; this server runs without a database \
                 (DATABASE_URL=none)"
                    .into(),
            )
        })
    }
}

fn history(e: crate::history::Error) -> Error {
    Error::History(e.to_string())
}
