//! The write-behind: the transitions a replica makes go into one channel; one task gathers them
//! for `flush_every`, keeps only the latest of each job, and writes them in one transaction of a
//! few batched statements. The hot path never waits for it.
//!
//! A row only moves forward: a finished job's row changes again only for a later attempt (a
//! dead letter retried; the first outcome of each attempt wins), and a write older than the
//! row's last one (another replica's, late) is ignored. A row is finished exactly when its
//! state is terminal: `finished_ms` follows the state written.

use std::collections::HashMap;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, TransactionTrait, Value};
use tokio::sync::{mpsc, oneshot};

use super::sql::Sql;

/// One transition, as the scheduler saw Redis accept it. Times are unix ms.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Attempt `attempt` started on `worker`.
    Started {
        id: String,
        attempt: u32,
        worker: String,
        at: i64,
    },
    /// The running attempt's latest progress.
    Progress {
        id: String,
        percent: f64,
        stage: String,
        message: String,
        at: i64,
    },
    /// The running attempt, if any, ended and the job is now `state`: waiting again (QUEUED, or
    /// SCHEDULED until `run_at`) or finished (SUCCEEDED, FAILED, CANCELLED).
    Ended {
        id: String,
        state: &'static str,
        at: i64,
        run_at: Option<i64>,
        result: Option<String>,
        error: Option<String>,
        /// SUCCEEDED with files: their JSON list.
        artifacts: Option<String>,
    },
    /// Attempt `attempt` was handed back unstarted: it is no attempt, and the job is QUEUED.
    Declined { id: String, attempt: u32, at: i64 },
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "SUCCEEDED" | "FAILED" | "CANCELLED")
}

enum Command {
    Record(Vec<Change>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Command>,
}

impl Handle {
    pub fn record(&self, changes: Vec<Change>) {
        if !changes.is_empty() {
            let _ = self.tx.send(Command::Record(changes));
        }
    }

    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

pub fn spawn(db: DatabaseConnection, every: Duration) -> Handle {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(db, every, rx));
    Handle { tx }
}

/// How long to wait before trying a failed write again.
const RETRY: Duration = Duration::from_secs(1);

async fn run(db: DatabaseConnection, every: Duration, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut pending = Pending::default();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        // Gather: from the first change on, for `every`; a flush request ends the gathering.
        let mut deadline = None;
        let mut open = true;
        while waiting.is_empty() {
            let next = match deadline {
                None if pending.is_empty() => rx.recv().await,
                None => {
                    deadline = Some(tokio::time::Instant::now() + every);
                    continue;
                }
                Some(at) => match tokio::time::timeout_at(at, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                Some(Command::Record(changes)) => {
                    changes.into_iter().for_each(|c| pending.apply(c));
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + every);
                }
                Some(Command::Flush(done)) => waiting.push(done),
                None => {
                    open = false;
                    break;
                }
            }
        }
        // Whatever else already arrived goes into this write too.
        while let Ok(command) = rx.try_recv() {
            match command {
                Command::Record(changes) => changes.into_iter().for_each(|c| pending.apply(c)),
                Command::Flush(done) => waiting.push(done),
            }
        }
        if !pending.is_empty() {
            let written = write(&db, &pending);
            match crate::metrics::timed(&crate::metrics::get().db_calls, "write_behind", written)
                .await
            {
                Ok(()) => pending = Pending::default(),
                Err(e) => {
                    // Kept, and merged with what comes next: nothing is lost while the database
                    // is away, and memory stays bounded by the number of jobs that changed.
                    tracing::warn!(error = %e, jobs = pending.jobs.len(), "history write failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        waiting.drain(..).for_each(|done| {
            let _ = done.send(());
        });
        if !open {
            return;
        }
    }
}

/// What a flush writes: the latest known fields of each changed job.
#[derive(Default)]
struct Pending {
    jobs: HashMap<String, Job>,
}

/// A job's fields to write; `None` leaves the column as it is.
#[derive(Default)]
struct Job {
    state: Option<&'static str>,
    attempt: Option<u32>,
    worker: Option<String>,
    started: Option<i64>,
    finished: Option<i64>,
    run_at: Option<i64>,
    result: Option<String>,
    error: Option<String>,
    artifacts: Option<String>,
    progress: Option<(f64, String, String)>,
    updated: i64,
    /// Attempts that started since the last write, in order.
    attempts: Vec<Attempt>,
    /// The end of an attempt that started before the last write.
    close: Option<End>,
    /// Attempts written before that were declined: their rows go.
    declined: Vec<u32>,
}

struct Attempt {
    number: u32,
    worker: String,
    started: i64,
    end: Option<End>,
}

#[derive(Clone)]
struct End {
    at: i64,
    outcome: &'static str,
    error: String,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Started {
                id,
                attempt,
                worker,
                at,
            } => {
                let job = self.jobs.entry(id).or_default();
                job.state = Some("RUNNING");
                // The job was reopened since an end in this same batch (a retried dead letter).
                job.finished = None;
                job.attempt = Some(attempt);
                job.worker = Some(worker.clone());
                job.started = Some(at);
                job.progress = Some((0.0, String::new(), String::new()));
                job.updated = job.updated.max(at);
                job.attempts.push(Attempt {
                    number: attempt,
                    worker,
                    started: at,
                    end: None,
                });
            }
            Change::Progress {
                id,
                percent,
                stage,
                message,
                at,
            } => {
                let job = self.jobs.entry(id).or_default();
                job.progress = Some((percent, stage, message));
                job.updated = job.updated.max(at);
            }
            Change::Ended {
                id,
                state,
                at,
                run_at,
                result,
                error,
                artifacts,
            } => {
                let job = self.jobs.entry(id).or_default();
                job.artifacts = artifacts.or(job.artifacts.take());
                job.state = Some(state);
                job.finished = is_terminal(state).then_some(at);
                job.run_at = run_at.or(job.run_at);
                job.result = result.or(job.result.take());
                job.error = error.clone().or(job.error.take());
                job.updated = job.updated.max(at);
                let end = End {
                    at,
                    outcome: match state {
                        "SUCCEEDED" => "SUCCEEDED",
                        "CANCELLED" => "CANCELLED",
                        _ => "FAILED",
                    },
                    error: error.unwrap_or_default(),
                };
                match job.attempts.last_mut() {
                    Some(open) if open.end.is_none() => open.end = Some(end),
                    _ => job.close = Some(end),
                }
            }
            Change::Declined { id, attempt, at } => {
                let job = self.jobs.entry(id).or_default();
                job.state = Some("QUEUED");
                job.finished = None;
                job.attempt = Some(attempt.saturating_sub(1));
                job.updated = job.updated.max(at);
                match job.attempts.iter().position(|a| a.number == attempt) {
                    Some(i) => {
                        job.attempts.remove(i);
                    }
                    None => job.declined.push(attempt),
                }
            }
        }
    }
}

/// Rows per batched statement: well under both backends' limits on bound values.
const ROWS: usize = 1000;

async fn write(db: &DatabaseConnection, pending: &Pending) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let txn = db.begin().await?;
    if backend == DbBackend::Postgres {
        // Every row a flush touches is found by its key. Without this, PostgreSQL joins a
        // flush of a thousand rows against `jobs` by scanning the whole table (it prices a
        // thousand index probes above one scan of a table of a hundred thousand rows), so
        // each flush cost more as the history grew. (Arrays through `unnest` instead of the
        // VALUES lists, tried for one statement text per kind, cost PostgreSQL more CPU.)
        txn.execute_unprepared(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
             SET LOCAL enable_mergejoin = off",
        )
        .await?;
    }
    let jobs: Vec<(&String, &Job)> = pending.jobs.iter().collect();
    for chunk in jobs.chunks(ROWS) {
        // Attempts that ended now but started in an earlier write, then the new attempts, then
        // the jobs themselves.
        let closes: Vec<_> = chunk
            .iter()
            .filter_map(|(id, job)| job.close.as_ref().map(|end| (*id, end)))
            .collect();
        if !closes.is_empty() {
            txn.execute_raw(close_attempts(backend, &closes)).await?;
        }
        let declined: Vec<_> = chunk
            .iter()
            .flat_map(|(id, job)| job.declined.iter().map(move |n| (*id, *n)))
            .collect();
        if !declined.is_empty() {
            txn.execute_raw(delete_attempts(backend, &declined)).await?;
        }
        let started: Vec<_> = chunk
            .iter()
            .flat_map(|(id, job)| job.attempts.iter().map(move |a| (*id, a)))
            .collect();
        if !started.is_empty() {
            txn.execute_raw(insert_attempts(backend, &started)).await?;
        }
        txn.execute_raw(update_jobs(backend, chunk)).await?;
    }
    txn.commit().await
}

fn close_attempts(backend: DbBackend, ends: &[(&String, &End)]) -> sea_orm::Statement {
    let mut sql = Sql::new(backend);
    sql.push_str("WITH v(id, finished_ms, outcome, error) AS (VALUES ");
    for (id, end) in ends {
        sql.row([
            Value::from(id.as_str()),
            end.at.into(),
            end.outcome.into(),
            end.error.as_str().into(),
        ]);
    }
    sql.push_str(
        ") UPDATE job_attempts SET finished_ms = v.finished_ms, outcome = v.outcome, \
         error = v.error FROM v WHERE job_attempts.job_id = v.id \
         AND job_attempts.finished_ms IS NULL",
    );
    sql.build()
}

/// Removes the rows of attempts that were declined (never ran), unless they ended meanwhile.
fn delete_attempts(backend: DbBackend, attempts: &[(&String, u32)]) -> sea_orm::Statement {
    let mut sql = Sql::new(backend);
    sql.push_str("WITH v(job_id, attempt) AS (VALUES ");
    for (id, number) in attempts {
        sql.row([Value::from(id.as_str()), (*number as i32).into()]);
    }
    sql.push_str(
        ") DELETE FROM job_attempts WHERE finished_ms IS NULL AND EXISTS (SELECT 1 FROM v \
         WHERE v.job_id = job_attempts.job_id AND v.attempt = job_attempts.attempt)",
    );
    sql.build()
}

fn insert_attempts(backend: DbBackend, attempts: &[(&String, &Attempt)]) -> sea_orm::Statement {
    let mut sql = Sql::new(backend);
    sql.push_str(
        "WITH v(job_id, attempt, worker, started_ms, finished_ms, outcome, error) AS (VALUES ",
    );
    for (id, a) in attempts {
        let end = a.end.as_ref();
        sql.row([
            Value::from(id.as_str()),
            (a.number as i32).into(),
            a.worker.as_str().into(),
            a.started.into(),
            end.map(|e| e.at).into(),
            end.map(|e| e.outcome.to_string()).into(),
            end.map(|e| e.error.as_str()).unwrap_or("").into(),
        ]);
    }
    // A job the database never had (submitted before history was enabled) gets no attempt rows
    // rather than failing the whole write on its foreign key.
    sql.push_str(
        ") INSERT INTO job_attempts (job_id, attempt, worker, started_ms, finished_ms, outcome, error) \
         SELECT job_id, attempt, worker, started_ms, finished_ms, outcome, error FROM v \
         WHERE EXISTS (SELECT 1 FROM jobs WHERE jobs.id = v.job_id) \
         ON CONFLICT (job_id, attempt) DO NOTHING",
    );
    sql.build()
}

fn update_jobs(backend: DbBackend, jobs: &[(&String, &Job)]) -> sea_orm::Statement {
    let mut sql = Sql::new(backend);
    sql.push_str(
        "WITH v(id, state, attempt, worker, started_ms, finished_ms, run_at_ms, result, error, \
         pct, stage, msg, updated_ms, artifacts) AS (VALUES ",
    );
    for (id, job) in jobs {
        let (pct, stage, msg) = match &job.progress {
            Some((p, s, m)) => (Some(*p), Some(s.clone()), Some(m.clone())),
            None => (None, None, None),
        };
        sql.row([
            Value::from(id.as_str()),
            job.state.map(str::to_string).into(),
            job.attempt.map(|a| a as i32).into(),
            job.worker.clone().into(),
            job.started.into(),
            job.finished.into(),
            job.run_at.into(),
            job.result.clone().into(),
            job.error.clone().into(),
            pct.into(),
            stage.into(),
            msg.into(),
            job.updated.into(),
            job.artifacts.clone().into(),
        ]);
    }
    // A finished row changes only for a later attempt: a retried dead letter.
    sql.push_str(&format!(
        ") UPDATE jobs SET \
         state = COALESCE(v.state, jobs.state), \
         attempt = COALESCE(v.attempt, jobs.attempt), \
         worker = COALESCE(v.worker, jobs.worker), \
         started_ms = COALESCE(v.started_ms, jobs.started_ms), \
         finished_ms = CASE WHEN v.state IS NULL THEN jobs.finished_ms ELSE v.finished_ms END, \
         run_at_ms = COALESCE(v.run_at_ms, jobs.run_at_ms), \
         result = COALESCE(v.result, jobs.result), \
         error = COALESCE(v.error, jobs.error), \
         artifacts = COALESCE(v.artifacts, jobs.artifacts), \
         progress_percent = COALESCE(v.pct, jobs.progress_percent), \
         progress_stage = COALESCE(v.stage, jobs.progress_stage), \
         progress_message = COALESCE(v.msg, jobs.progress_message), \
         updated_ms = v.updated_ms \
         FROM v WHERE jobs.id = v.id AND jobs.updated_ms <= v.updated_ms \
         AND (jobs.{} OR v.attempt > jobs.attempt)",
        super::UNFINISHED
    ));
    sql.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(id: &str, state: &'static str, at: i64) -> Change {
        Change::Ended {
            id: id.into(),
            state,
            at,
            run_at: None,
            result: None,
            error: Some(format!("e{at}")),
            artifacts: None,
        }
    }

    fn started(id: &str, attempt: u32, at: i64) -> Change {
        Change::Started {
            id: id.into(),
            attempt,
            worker: "w".into(),
            at,
        }
    }

    #[test]
    fn coalesces_a_job_and_keeps_each_attempt() {
        let mut p = Pending::default();
        p.apply(started("j", 1, 10));
        p.apply(ended("j", "SCHEDULED", 20));
        p.apply(started("j", 2, 30));
        p.apply(ended("j", "SUCCEEDED", 40));
        let job = &p.jobs["j"];
        assert_eq!(
            (job.state, job.attempt, job.finished, job.updated),
            (Some("SUCCEEDED"), Some(2), Some(40), 40)
        );
        let ends: Vec<_> = job
            .attempts
            .iter()
            .map(|a| (a.number, a.end.as_ref().map(|e| e.outcome)))
            .collect();
        assert_eq!(ends, [(1, Some("FAILED")), (2, Some("SUCCEEDED"))]);
        assert!(job.close.is_none());
    }

    #[test]
    fn a_reopened_job_is_not_finished_by_its_earlier_end() {
        let mut p = Pending::default();
        p.apply(started("j", 2, 10));
        p.apply(ended("j", "FAILED", 20));
        // Retried: the next attempt starts and fails with attempts left.
        p.apply(started("j", 3, 30));
        p.apply(ended("j", "SCHEDULED", 40));
        let job = &p.jobs["j"];
        assert_eq!(
            (job.state, job.attempt, job.finished),
            (Some("SCHEDULED"), Some(3), None)
        );
    }

    #[test]
    fn a_declined_attempt_is_no_attempt() {
        let mut p = Pending::default();
        p.apply(started("j", 3, 10));
        p.apply(Change::Declined {
            id: "j".into(),
            attempt: 3,
            at: 20,
        });
        let job = &p.jobs["j"];
        assert_eq!((job.state, job.attempt), (Some("QUEUED"), Some(2)));
        assert!(job.attempts.is_empty() && job.declined.is_empty());
        // One written before goes by a delete.
        p.apply(Change::Declined {
            id: "k".into(),
            attempt: 1,
            at: 20,
        });
        assert_eq!(p.jobs["k"].declined, [1]);
    }

    #[test]
    fn an_end_without_its_start_closes_the_open_attempt() {
        let mut p = Pending::default();
        p.apply(ended("j", "FAILED", 5));
        let job = &p.jobs["j"];
        assert!(job.attempts.is_empty());
        assert_eq!(job.close.as_ref().map(|e| e.outcome), Some("FAILED"));
    }
}
