//! The reconciler: notices that Redis lost its data and rebuilds the queues from the database.
//!
//! A marker key (`cv:marker`) is written once Redis holds everything the database says it
//! should. A Redis that restarted empty, failed over to a replica that never had the marker, or
//! was flushed, has no marker. Each replica checks when its Redis connection comes back and every
//! `CHECK`; the first to take the lock rebuilds, the others wait for the marker.
//!
//! On a Redis Cluster the marker lives on one shard, and another can lose its data alone. So
//! there each queue with unfinished jobs in the database is checked for its `ok` key too, every
//! `CHECK` and at once when a submit meets such a queue, and a queue without it is restored on
//! its own (under a lock in its slot) while the others keep flowing.
//!
//! The repair covers the other way history can fall behind: a replica that dies without a
//! goodbye loses the writes it had not flushed. Every `repair_every`, one replica compares the
//! unfinished rows that stopped changing with Redis, writes what Redis knows, and restores what
//! Redis no longer has (a job that finished and expired unseen runs again: at least once).

use std::collections::BTreeMap;
use std::time::Duration;

use fred::interfaces::{ClientLike, EventInterface, KeysInterface};
use fred::prelude::{Expiration, SetOptions, Value};

use super::keys::{self, MARKER};
use super::scripts::call;
use super::{Error, Handle, JobState, durable, now_ms, s};
use crate::history::{self, Change, entity::jobs};

const LOCK: &str = "cv:reconciling";
const REPAIR_LOCK: &str = "cv:repairing";
/// How often a replica looks for the marker when nothing else prompts it.
const CHECK: Duration = Duration::from_secs(30);
/// How long the lock holds when its owner dies mid-way.
const LOCK_TTL: Duration = Duration::from_secs(300);
/// Jobs read from the database per page, and per restore call.
const PAGE: u64 = 500;
const PER_CALL: usize = 100;

#[derive(Clone)]
pub struct Reconciler {
    scheduler: Handle,
    store: history::Store,
    replica: String,
    /// How long to wait after taking the lock, so every replica's pending history writes land
    /// first (a job that just finished must not be restored as unfinished).
    settle: Duration,
    /// How often the repair runs, and how long a row must have stayed unchanged to be looked at.
    repair_every: Duration,
}

/// What one reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Unfinished jobs put back (including `running`).
    pub unfinished: u64,
    /// RUNNING jobs whose lease went with the data, back RUNNING for their worker to take over.
    pub running: u64,
    /// Finished jobs put back for the rest of their retention (their idempotency keys).
    pub finished: u64,
}

impl Reconciler {
    /// `None` when the scheduler has no database.
    pub fn new(scheduler: &Handle, settle: Duration, repair_every: Duration) -> Option<Reconciler> {
        Some(Reconciler {
            store: scheduler.history.clone()?,
            scheduler: scheduler.clone(),
            replica: uuid::Uuid::now_v7().to_string(),
            settle,
            // A zero interval would make the timer spin.
            repair_every: repair_every.max(Duration::from_millis(100)),
        })
    }

    /// Checks whenever the Redis connection comes back and every `CHECK`; repairs every
    /// `repair_every`.
    pub async fn run(self) {
        let mut reconnects = self.scheduler.redis.reconnect_rx();
        let mut repairs = tokio::time::interval(self.repair_every);
        repairs.tick().await;
        loop {
            tokio::select! {
                _ = reconnects.recv() => {}
                _ = tokio::time::sleep(CHECK) => {}
                _ = self.scheduler.lost_queue.notified() => {}
                _ = repairs.tick() => {
                    match self.repair().await {
                        Ok(r) if r != Repaired::default() => tracing::warn!(
                            updated = r.updated,
                            restored = r.restored,
                            "history repair: rows had fallen behind Redis (a replica died with unwritten changes?)"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "history repair failed"),
                    }
                    continue;
                }
            }
            self.check_logged().await;
        }
    }

    /// Compares unfinished rows unchanged for `repair_every` with Redis (one replica per
    /// interval); see the module comment.
    pub async fn repair(&self) -> Result<Repaired, Error> {
        let redis = &self.scheduler.redis;
        let mut repaired = Repaired::default();
        if redis.exists::<i64, _>(MARKER).await? == 0 {
            return Ok(repaired); // Redis is not whole; the reconciliation comes first.
        }
        let locked: Option<String> = redis
            .set(
                REPAIR_LOCK,
                self.replica.as_str(),
                Some(Expiration::PX(self.repair_every.as_millis().max(1) as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        if locked.is_none() {
            return Ok(repaired);
        }
        let before = now_ms() - self.repair_every.as_millis() as i64;
        let mut after: Option<String> = None;
        loop {
            let rows = self.store.stale(before, after.as_deref(), PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id.clone());
            for (queue, batch) in per_call(rows) {
                self.repair_batch(&queue, batch, &mut repaired).await?;
            }
        }
        Ok(repaired)
    }

    /// Brings one batch of stale rows of `queue` up to Redis, or restores what Redis lacks.
    async fn repair_batch(
        &self,
        queue: &str,
        rows: Vec<jobs::Model>,
        repaired: &mut Repaired,
    ) -> Result<(), Error> {
        let mut args = vec![s(keys::prefix(queue))];
        args.extend(rows.iter().map(|row| s(row.id.as_str())));
        let redis = &self.scheduler.redis;
        let peeked: Vec<Vec<String>> =
            call(redis, &self.scheduler.scripts.peek, keys::all(queue), args).await?;
        let mut gone = Vec::new();
        let mut changes = Vec::new();
        for (row, fields) in rows.into_iter().zip(peeked) {
            if fields.is_empty() {
                gone.push(row);
            } else {
                let caught_up = catch_up(&row, &fields);
                repaired.updated += !caught_up.is_empty() as u64;
                changes.extend(caught_up);
            }
        }
        self.scheduler.record(changes);
        for answer in self.restore(gone).await? {
            repaired.restored += matches!(answer, 1 | 2) as u64;
        }
        Ok(())
    }

    /// `check`, with what it did or why it could not in the log.
    pub async fn check_logged(&self) {
        match self.check().await {
            // A new Redis beside a database with nothing in play lost nothing: not a warning.
            Ok(Some(r)) if r == Restored::default() => tracing::info!(
                "Redis had no marker and the database holds no unfinished job: nothing to restore"
            ),
            Ok(Some(r)) => tracing::warn!(
                unfinished = r.unfinished,
                running = r.running,
                finished = r.finished,
                "Redis had no marker (new, or it lost its data); restored the queues from the database"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reconciler could not check Redis"),
        }
    }

    /// Rebuilds Redis if its marker is missing, or waits for the replica that is at it. Returns
    /// what was restored, or `None` when nothing was to do here.
    pub async fn check(&self) -> Result<Option<Restored>, Error> {
        let redis = &self.scheduler.redis;
        if redis.exists::<i64, _>(MARKER).await? > 0 {
            return match redis.is_clustered() {
                true => self.check_queues().await,
                false => Ok(None),
            };
        }
        // This replica's own pending writes first.
        self.store.flush().await;
        if !self.lock(LOCK).await? {
            // Another replica is restoring: wait for its marker, so this one (at start) serves
            // only a restored Redis.
            let deadline = tokio::time::Instant::now() + LOCK_TTL;
            while tokio::time::Instant::now() < deadline
                && redis.exists::<i64, _>(MARKER).await? == 0
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return Ok(None);
        }
        tokio::time::sleep(self.settle).await;
        let restored = self.rebuild().await;
        if restored.is_ok() {
            let epoch = uuid::Uuid::now_v7().to_string();
            redis
                .set::<(), _, _>(MARKER, epoch, None, None, false)
                .await?;
        }
        self.unlock(LOCK).await?;
        restored.map(Some)
    }

    /// Takes the restore lock `key` (it lapses after `LOCK_TTL` if this replica dies); false when
    /// another replica holds it.
    async fn lock(&self, key: &str) -> Result<bool, Error> {
        let locked: Option<String> = self
            .scheduler
            .redis
            .set(
                key,
                self.replica.as_str(),
                Some(Expiration::PX(LOCK_TTL.as_millis() as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        Ok(locked.is_some())
    }

    /// Lets go of the lock `key` if this replica still holds it.
    async fn unlock(&self, key: &str) -> Result<(), Error> {
        let redis = &self.scheduler.redis;
        let owner: Option<String> = redis.get(key).await?;
        if owner.as_deref() == Some(self.replica.as_str()) {
            redis.del::<i64, _>(key).await?;
        }
        Ok(())
    }

    /// Restores every queue of a cluster whose shard lost its data (its `ok` key is gone), each
    /// under its own lock, and says so in the log.
    async fn check_queues(&self) -> Result<Option<Restored>, Error> {
        let redis = &self.scheduler.redis;
        for queue in self.store.queues_in_play().await? {
            if redis.exists::<i64, _>(keys::ok(&queue)).await? > 0 {
                continue;
            }
            let lock = keys::restoring(&queue);
            if !self.lock(&lock).await? {
                continue; // another replica is at it
            }
            self.store.flush().await;
            tokio::time::sleep(self.settle).await;
            let restored = self.rebuild_in(Some(&queue)).await;
            self.unlock(&lock).await?;
            let restored = restored?;
            tracing::warn!(
                queue,
                unfinished = restored.unfinished,
                running = restored.running,
                finished = restored.finished,
                "a Redis Cluster shard lost this queue's data; restored it from the database"
            );
        }
        Ok(None)
    }

    async fn rebuild(&self) -> Result<Restored, Error> {
        self.rebuild_in(None).await
    }

    /// Puts back what the database says Redis should hold: of every queue, or of one.
    async fn rebuild_in(&self, queue: Option<&str>) -> Result<Restored, Error> {
        let mut restored = Restored::default();
        let mut after: Option<String> = None;
        loop {
            let rows = self.store.unfinished(queue, after.as_deref(), PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id.clone());
            for answer in self.restore(rows).await? {
                restored.unfinished += matches!(answer, 1 | 2) as u64;
                restored.running += (answer == 2) as u64;
            }
        }
        let since = now_ms() - self.scheduler.options.retention.as_millis() as i64;
        let mut after: Option<String> = None;
        loop {
            let rows = self
                .store
                .finished_with_keys(queue, since, after.as_deref(), PAGE)
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id.clone());
            for answer in self.restore(rows).await? {
                restored.finished += matches!(answer, 1 | 2) as u64;
            }
        }
        Ok(restored)
    }

    /// Runs `restore.lua` per queue; the answers follow the rows' order within each queue.
    async fn restore(&self, rows: Vec<jobs::Model>) -> Result<Vec<i64>, Error> {
        self.scheduler.restore_rows(rows).await
    }
}

impl Handle {
    /// Puts rows back in Redis (`restore.lua`, per queue): 0 left alone (Redis has the job), 1
    /// restored as it was, 2 restored RUNNING for its worker to take over (or the lease's
    /// reclaim to requeue), 3 a repeat of the job its idempotency key names (its row goes). The
    /// answers follow the rows' order within each queue.
    pub(super) async fn restore_rows(&self, rows: Vec<jobs::Model>) -> Result<Vec<i64>, Error> {
        let mut answers = Vec::new();
        for (queue, chunk) in per_call(rows) {
            let mut args = vec![
                s(keys::prefix(&queue)),
                Value::Integer(now_ms()),
                Value::Integer(self.options.retention_of(&queue).as_millis() as i64),
                Value::Integer(self.options.lease_ttl.as_millis() as i64),
            ];
            for row in &chunk {
                args.extend(restore_args(row));
            }
            let replies: Vec<i64> =
                call(&self.redis, &self.scripts.restore, keys::all(&queue), args).await?;
            // Repeats of a job their key names (a retry made while Redis was away): one key,
            // one job, so their rows go.
            let repeats: Vec<String> = chunk
                .iter()
                .zip(&replies)
                .filter(|(_, answer)| **answer == 3)
                .map(|(row, _)| row.id.clone())
                .collect();
            if let Some(store) = &self.history
                && !repeats.is_empty()
            {
                store.forget(repeats).await?;
            }
            // Restored WAITING jobs tell their dependencies again that they wait.
            for (row, answer) in chunk.iter().zip(&replies) {
                if *answer == 1 && row.state == JobState::Waiting.as_str() {
                    self.register(&durable::job(row.clone())?).await?;
                }
            }
            answers.extend(replies);
        }
        Ok(answers)
    }
}

/// `rows` grouped by queue, in batches of at most `PER_CALL` (one script call each, in the
/// queue's slot); within a queue the rows keep their order.
fn per_call(rows: Vec<jobs::Model>) -> Vec<(String, Vec<jobs::Model>)> {
    let mut by_queue: BTreeMap<String, Vec<jobs::Model>> = BTreeMap::new();
    for row in rows {
        by_queue.entry(row.queue.clone()).or_default().push(row);
    }
    by_queue
        .into_iter()
        .flat_map(|(queue, rows)| {
            rows.chunks(PER_CALL)
                .map(|chunk| (queue.clone(), chunk.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What one repair did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Rows brought up to what Redis has.
    pub updated: u64,
    /// Rows Redis no longer had, restored to run (again).
    pub restored: u64,
}

/// The changes that bring `row` up to the job as `peek.lua` read it from Redis: state, attempt,
/// worker, started, finished, run_at, result, error, artifacts.
fn catch_up(row: &jobs::Model, f: &[String]) -> Vec<Change> {
    let num = |text: &str| {
        text.parse::<f64>()
            .ok()
            .map(|v| v as i64)
            .filter(|v| *v > 0)
    };
    let (
        Some(state),
        [
            _,
            attempt,
            worker,
            started,
            finished,
            run_at,
            result,
            error,
            arts,
        ],
    ) = (JobState::parse(&f[0]), f)
    else {
        return Vec::new();
    };
    let attempt = num(attempt).unwrap_or(0) as u32;
    let mut changes = Vec::new();
    if attempt > row.attempt as u32
        && let Some(at) = num(started)
    {
        changes.push(Change::Started {
            id: row.id.clone(),
            attempt,
            worker: worker.clone(),
            at,
        });
    }
    if (state.as_str() == row.state && changes.is_empty()) || state == JobState::Running {
        return changes;
    }
    let error = (!error.is_empty()).then(|| error.clone());
    changes.push(Change::Ended {
        id: row.id.clone(),
        state: state.as_str(),
        at: num(finished).unwrap_or_else(now_ms),
        run_at: num(run_at).filter(|_| state == JobState::Scheduled),
        result: (state == JobState::Succeeded).then(|| result.clone()),
        error,
        artifacts: (!arts.is_empty()).then(|| arts.clone()),
    });
    changes
}

/// The 32 arguments of one job for `restore.lua`.
fn restore_args(row: &jobs::Model) -> [Value; 32] {
    let opt = |v: Option<i64>| s(v.map(|v| v.to_string()).unwrap_or_default());
    [
        s(row.id.as_str()),
        s(row.tenant.as_str()),
        Value::Integer(row.tier as i64),
        Value::Integer(row.priority as i64),
        s(row.state.as_str()),
        Value::Bytes(row.payload.clone().into()),
        s(row.content_type.as_str()),
        s(row.labels.as_str()),
        Value::Integer(row.attempt as i64),
        Value::Integer(row.max_attempts as i64),
        Value::Integer(row.backoff_initial_ms),
        Value::Integer(row.backoff_max_ms),
        Value::Integer(row.timeout_ms),
        s(row.idempotency_key.as_str()),
        Value::Integer(row.created_ms),
        Value::Integer(row.run_at_ms),
        opt(row.started_ms),
        opt(row.finished_ms),
        s(row.progress_percent.to_string()),
        s(row.progress_stage.as_str()),
        s(row.progress_message.as_str()),
        s(row.result.as_str()),
        s(row.error.as_str()),
        s(row.callback_url.as_str()),
        s(row.limit_key.as_str()),
        Value::Bytes(row.on_success.clone().unwrap_or_default().into()),
        s(row.parent_id.as_str()),
        s(row.depends_on.as_str()),
        s(row.dependency_failure.as_str()),
        s(row.artifacts.clone().unwrap_or_default()),
        s(if row.keep { "1" } else { "" }),
        s(row.inputs.as_str()),
    ]
}
