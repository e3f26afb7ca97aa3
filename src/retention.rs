//! Retention: one policy per queue says how long a finished job is kept, and that one figure
//! drives all three places it lives. Redis lets it go at the policy or `CONVEYOR_RETENTION`,
//! whichever is sooner (set by the scripts as the job ends, `scheduler::Options::retention_of`).
//! The sweep here, on one replica at a time, deletes its history rows and its artifacts once
//! the policy has passed, unless the job was submitted with `keep`. The same sweep deletes
//! files no accepted attempt named (a zombie's, a failed attempt's) once no URL to write them
//! can still work, and clients' inputs after the input retention.
//!
//! Deletion is batched (1,000 rows per transaction, 1,000 objects per listing and per delete)
//! and resumable: the listing's place is kept in Redis, so a sweep cut short by a restart goes
//! on where it stopped.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::artifacts::{self, Located, Storage};
use crate::history::{self, Kept, Scope};
use crate::scheduler::{self, Artifact};

/// Rows per delete: short transactions that never hold locks for long.
pub const BATCH: u64 = 1000;
/// Objects per listing page.
pub const PAGE: i32 = 1000;
/// The sweep's name for its claim and its place (`scheduler::Handle::claim_chore`).
pub const CHORE: &str = "retention";

/// How long things are kept.
#[derive(Clone, Debug)]
pub struct Policy {
    /// A finished job, its history and its artifacts, unless its queue says otherwise.
    pub default: Duration,
    pub queues: HashMap<String, Duration>,
    /// Inputs clients uploaded before submitting.
    pub inputs: Duration,
    /// Files of a finished job that no accepted attempt named are deleted this long after it
    /// ended: the life of an upload URL, after which no one can still be writing them.
    pub unnamed: Duration,
}

impl Policy {
    pub fn of(&self, queue: &str) -> Duration {
        self.queues.get(queue).copied().unwrap_or(self.default)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    History(#[from] history::Error),
    #[error(transparent)]
    Store(#[from] artifacts::Error),
    #[error(transparent)]
    Redis(#[from] scheduler::Error),
}

/// What one sweep deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub rows: u64,
    pub objects: u64,
}

/// Deletes what outlived its retention.
#[derive(Clone)]
pub struct Sweeper {
    pub policy: Policy,
    pub scheduler: scheduler::Handle,
    pub history: Option<history::Store>,
    pub storage: Option<Storage>,
    /// Objects per listing page and per delete (`PAGE`).
    pub page: i32,
}

impl Sweeper {
    /// Sweeps every `every`, when no other replica claimed the turn. The first turn comes
    /// after a random part of `every` (at most 5 minutes), so replicas that restart often
    /// still sweep and replicas that start together do not all ask at once.
    pub async fn run(self, every: Duration) {
        let first = every.min(Duration::from_secs(300));
        tokio::time::sleep(first.mul_f64(rand::random::<f64>())).await;
        loop {
            match self.scheduler.claim_chore(CHORE, every).await {
                Ok(true) => match self.sweep(scheduler::now_ms()).await {
                    Ok(s) if s == Swept::default() => {}
                    Ok(s) => tracing::info!(rows = s.rows, objects = s.objects, "retention sweep"),
                    Err(e) => tracing::warn!(error = %e, "retention sweep failed; next try later"),
                },
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "retention sweep not claimed"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// One sweep as of `now` (unix ms): history rows first, then objects.
    pub async fn sweep(&self, now: i64) -> Result<Swept, Error> {
        let mut swept = Swept::default();
        if let Some(history) = &self.history {
            let mut own = Vec::new();
            for (queue, keep) in &self.policy.queues {
                let scope = Scope::Queue(queue.clone());
                swept.rows += history.cleanup(before(now, *keep), BATCH, &scope).await?;
                own.push(queue.clone());
            }
            let rest = Scope::Except(own);
            swept.rows += history
                .cleanup(before(now, self.policy.default), BATCH, &rest)
                .await?;
        }
        if let Some(storage) = &self.storage {
            swept.objects = self.sweep_objects(storage, now).await?;
        }
        Ok(swept)
    }

    /// Walks the bucket's objects a page at a time from where the last sweep stopped.
    async fn sweep_objects(&self, storage: &Storage, now: i64) -> Result<u64, Error> {
        let mut at = self.scheduler.chore_cursor(CHORE).await?;
        let mut deleted = 0;
        loop {
            let (page, more) = storage
                .list(artifacts::ROOT, at.as_deref(), self.page)
                .await?;
            let Some((last, _)) = page.last() else { break };
            let last = last.clone();
            let expired = self.expired(&page, now).await?;
            storage.delete(&expired).await?;
            deleted += expired.len() as u64;
            if !more {
                break;
            }
            self.scheduler.set_chore_cursor(CHORE, Some(&last)).await?;
            at = Some(last);
        }
        self.scheduler.set_chore_cursor(CHORE, None).await?;
        Ok(deleted)
    }

    /// The keys of `page` whose time is up.
    async fn expired(&self, page: &[(String, i64)], now: i64) -> Result<Vec<String>, Error> {
        let ids: HashSet<&str> = page
            .iter()
            .filter_map(|(key, _)| match artifacts::locate(key)? {
                Located::Artifact { job_id, .. } => Some(job_id),
                Located::Input => None,
            })
            .collect();
        // Each job with the names of its accepted artifacts, decoded once per page.
        let jobs: HashMap<String, (Kept, Vec<String>)> = match &self.history {
            Some(history) if !ids.is_empty() => history
                .kept_state(ids.into_iter().map(str::to_string).collect())
                .await?
                .into_iter()
                .map(|k| {
                    let names = Artifact::decode(k.artifacts.as_deref().unwrap_or_default())
                        .into_iter()
                        .map(|a| a.name)
                        .collect();
                    (k.id.clone(), (k, names))
                })
                .collect(),
            _ => HashMap::new(),
        };
        Ok(page
            .iter()
            .filter(|(key, modified)| self.is_expired(key, *modified, &jobs, now))
            .map(|(key, _)| key.clone())
            .collect())
    }

    fn is_expired(
        &self,
        key: &str,
        modified: i64,
        jobs: &HashMap<String, (Kept, Vec<String>)>,
        now: i64,
    ) -> bool {
        let (job_id, attempt, name) = match artifacts::locate(key) {
            None => return false,
            Some(Located::Input) => return modified < before(now, self.policy.inputs),
            Some(Located::Artifact {
                job_id,
                attempt,
                name,
            }) => (job_id, attempt, name),
        };
        let keep = scheduler::keys::queue_of(job_id)
            .map(|queue| self.policy.of(queue))
            .unwrap_or(self.policy.default);
        let Some((job, names)) = jobs.get(job_id) else {
            // No row: its history went at the end of its retention (or there is no database),
            // and its files were written before it ended.
            return modified < before(now, keep);
        };
        let Some(finished) = job.finished_ms else {
            return false;
        };
        if job.keep {
            return false;
        }
        let named = job.succeeded && job.attempt == attempt && names.iter().any(|n| n == name);
        match named {
            true => finished < before(now, keep),
            false => finished < before(now, self.policy.unnamed),
        }
    }
}

fn before(now: i64, keep: Duration) -> i64 {
    now.saturating_sub(keep.as_millis() as i64)
}

/// The unix ms before which a finished job is older than `keep`.
pub fn cutoff(keep: Duration) -> i64 {
    before(scheduler::now_ms(), keep)
}
