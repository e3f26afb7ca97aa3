//! The transitions of a leased job: lease, renew, the worker's reports, release, re-attach.
//! Each takes many jobs of one queue in one script call.

use std::collections::HashMap;

use fred::prelude::Value;

use super::metered;
use super::scripts::call;
use super::{
    Artifact, Error, Handle, Job, JobState, Leased, Progress, durable, jitter, keys, ms, now_ms, s,
};
use crate::history::Change;

/// A worker's report about a job it runs.
#[derive(Clone, Debug)]
pub enum Report {
    Progress {
        job_id: String,
        token: u64,
        progress: Progress,
    },
    Complete {
        job_id: String,
        token: u64,
        result: String,
        /// The attempt's files, as the store described them.
        artifacts: Vec<Artifact>,
    },
    Fail {
        job_id: String,
        token: u64,
        error: String,
        retryable: bool,
    },
    /// Handed back unstarted: back in line, the attempt not counted.
    Decline {
        job_id: String,
        token: u64,
        reason: String,
    },
}

impl Report {
    pub fn job_id(&self) -> &str {
        match self {
            Report::Progress { job_id, .. }
            | Report::Complete { job_id, .. }
            | Report::Fail { job_id, .. }
            | Report::Decline { job_id, .. } => job_id,
        }
    }

    pub fn token(&self) -> u64 {
        match self {
            Report::Progress { token, .. }
            | Report::Complete { token, .. }
            | Report::Fail { token, .. }
            | Report::Decline { token, .. } => *token,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Report::Progress { .. } => 0,
            Report::Complete { .. } => 1,
            Report::Fail { .. } => 2,
            Report::Decline { .. } => 3,
        }
    }
}

/// The history change of an accepted report; `reply` is its script answer.
/// The history change of an applied report (and its count, when the script says this call
/// ended the attempt: it then answers the job's tier).
fn change(queue: &str, report: &Report, reply: &[String]) -> Change {
    match report {
        Report::Complete { .. } | Report::Fail { .. } => {
            let (state, tier) = match report {
                Report::Complete { .. } => ("SUCCEEDED", reply.get(2)),
                _ => (reply.get(1).map_or("", String::as_str), reply.get(3)),
            };
            if let Some(tier) = tier {
                metered::ended(queue, tier, state);
            }
        }
        Report::Progress { .. } | Report::Decline { .. } => {}
    }
    match report {
        Report::Progress {
            job_id, progress, ..
        } => Change::Progress {
            id: job_id.clone(),
            percent: progress.percent as f64,
            stage: progress.stage.clone(),
            message: progress.message.clone(),
            at: now_ms(),
        },
        Report::Complete {
            job_id,
            result,
            artifacts,
            ..
        } => durable::succeeded(job_id, result, artifacts),
        Report::Fail { job_id, error, .. } => {
            let state = reply.get(1).and_then(|s| JobState::parse(s));
            let run_at = reply.get(2).and_then(|t| t.parse().ok());
            durable::ended(
                job_id,
                state.unwrap_or(JobState::Failed),
                run_at,
                None,
                Some(error.clone()),
            )
        }
        Report::Decline { job_id, .. } => Change::Declined {
            id: job_id.clone(),
            // The script answers the attempt number the job is back at.
            attempt: reply
                .get(2)
                .and_then(|a| a.parse::<u32>().ok())
                .unwrap_or(0)
                + 1,
            at: now_ms(),
        },
    }
}

/// Who holds a job now, as its hash says (`Handle::holder`).
#[derive(Clone, Debug, PartialEq)]
pub struct Holder {
    pub state: JobState,
    pub token: u64,
    pub worker: String,
    pub attempt: u32,
    pub tenant: String,
}

/// What became of one report: applied, or refused (FAILED_PRECONDITION) with the reason.
pub type Verdict = Result<(), Error>;

/// A rate as lease.lua takes it: one lease per `period` ms, `burst` at once; a period of 0 is
/// no rate.
fn rate_ms(rate: Option<(std::time::Duration, u32)>) -> (i64, i64) {
    rate.map(|(period, burst)| (period.as_millis().max(1) as i64, burst as i64))
        .unwrap_or((0, 1))
}

fn opt_ms(v: Option<Value>) -> Option<i64> {
    v.and_then(|v| v.as_i64()).filter(|t| *t >= 0)
}

impl Handle {
    /// Who holds job `id` now (one HMGET); `None` when Redis does not have it.
    pub async fn holder(&self, id: &str) -> Result<Option<Holder>, Error> {
        use fred::prelude::HashesInterface;
        let queue = self.locate(id)?;
        let fields = ["state", "token", "worker", "attempt", "tenant"];
        let v: Vec<Option<String>> = self
            .redis
            .hmget(keys::job(&queue, id), fields.to_vec())
            .await?;
        let [Some(state), token, worker, attempt, tenant] = <[Option<String>; 5]>::try_from(v)
            .map_err(|_| Error::Corrupt("HMGET answered another number of fields".into()))?
        else {
            return Ok(None);
        };
        let number = |v: Option<String>| v.and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some(Holder {
            state: JobState::parse(&state)
                .ok_or_else(|| Error::Corrupt(format!("job {id} has an unknown state")))?,
            token: number(token),
            worker: worker.unwrap_or_default(),
            attempt: number(attempt) as u32,
            tenant: tenant.unwrap_or_default(),
        }))
    }

    /// The queue's key limits as lease.lua and submit.lua take them: pattern, concurrency (0:
    /// none), period and burst (see `rate_ms`) per limit, most specific first.
    pub(super) fn key_limit_args(&self, queue: &str) -> Vec<Value> {
        let limits = self
            .options
            .queues
            .get(queue)
            .map(|q| q.key_limits.as_slice());
        let mut args = Vec::new();
        for limit in limits.unwrap_or_default() {
            let (period, burst) = rate_ms(limit.rate);
            args.extend([
                s(limit.pattern.as_str()),
                Value::Integer(limit.concurrency.unwrap_or(0) as i64),
                Value::Integer(period),
                Value::Integer(burst),
            ]);
        }
        args
    }

    /// Leases up to `n` jobs of `queue` for a worker session (0 is the sweep: it only
    /// reclaims, promotes and collects expired ids).
    pub async fn lease(
        &self,
        queue: &str,
        n: u32,
        session: &str,
        worker: &str,
    ) -> Result<Leased, Error> {
        let w = self.options.tier_weights;
        // The queue's own cap and rate, read in place: this runs on every lease.
        let own = self.options.queues.get(queue);
        let cap = own.and_then(|q| q.concurrency).unwrap_or(0);
        let (period, burst) = rate_ms(own.and_then(|q| q.rate));
        let mut args = vec![
            s(keys::prefix(queue)),
            Value::Integer(now_ms()),
            Value::Integer(n as i64),
            ms(self.options.lease_ttl),
            s(session),
            s(worker),
            self.retention(queue),
            jitter(),
            Value::Integer(w[0] as i64),
            Value::Integer(w[1] as i64),
            Value::Integer(w[2] as i64),
            Value::Integer(w[3] as i64),
            Value::Integer(cap as i64),
            Value::Integer(period),
            Value::Integer(burst),
            Value::Integer(
                own.and_then(|q| q.max_wait)
                    .map_or(0, |w| w.as_millis() as i64),
            ),
        ];
        args.extend(self.key_limit_args(queue));
        let reply: Vec<Value> =
            call(&self.redis, &self.scripts.lease, keys::leased(queue), args).await?;
        let mut items = reply.into_iter();
        let next_due_ms = opt_ms(items.next());
        let more = items.next().and_then(|v| v.as_i64()) == Some(1);
        let next_check_ms = opt_ms(items.next());
        let ended: Vec<String> = items
            .next()
            .map(|v| v.convert())
            .transpose()?
            .unwrap_or_default();
        let jobs: Vec<Job> = items.map(Job::from_fields).collect::<Result<_, _>>()?;
        metered::ended_list(queue, &ended);
        let mut changes = durable::ended_list(ended);
        changes.extend(jobs.iter().map(|job| Change::Started {
            id: job.id.clone(),
            attempt: job.attempt,
            worker: worker.to_string(),
            at: job.started_ms.unwrap_or_else(now_ms),
        }));
        self.record(changes);
        Ok(Leased {
            jobs,
            more,
            next_due_ms,
            next_check_ms,
        })
    }

    /// Extends the leases of `queue` that this replica's sessions hold, given as
    /// (job id, session) pairs; returns the ids whose lease is no longer theirs.
    pub async fn renew(
        &self,
        queue: &str,
        held: &[(String, String)],
    ) -> Result<Vec<String>, Error> {
        let mut args = vec![
            s(keys::prefix(queue)),
            Value::Integer(now_ms()),
            ms(self.options.lease_ttl),
            self.retention(queue),
            jitter(),
        ];
        for (id, session) in held {
            args.push(s(id.as_str()));
            args.push(s(session.as_str()));
        }
        let (lost, ended): (Vec<String>, Vec<String>) =
            call(&self.redis, &self.scripts.renew, keys::leased(queue), args).await?;
        metered::ended_list(queue, &ended);
        self.record(durable::ended_list(ended));
        Ok(lost)
    }

    /// Applies a worker's reports about jobs of `queue`, in order, one script call per run of
    /// reports of one kind. Of several progress reports of a job in a run only the latest is
    /// written (they supersede each other). Returns one verdict per report; the error is for
    /// Redis being unavailable, in which case none may have been applied.
    pub async fn apply(
        &self,
        queue: &str,
        worker: &str,
        reports: &[&Report],
    ) -> Result<Vec<Verdict>, Error> {
        let mut verdicts = Vec::with_capacity(reports.len());
        for run in reports.chunk_by(|a, b| a.kind() == b.kind()) {
            verdicts.extend(self.apply_run(queue, worker, run).await?);
        }
        Ok(verdicts)
    }

    /// Applies reports of one kind in one call.
    async fn apply_run(
        &self,
        queue: &str,
        worker: &str,
        run: &[&Report],
    ) -> Result<Vec<Verdict>, Error> {
        let mut args = vec![s(keys::prefix(queue)), Value::Integer(now_ms())];
        let script = match run[0] {
            Report::Progress { .. } => &self.scripts.progress,
            Report::Complete { .. } => &self.scripts.complete,
            Report::Fail { .. } => &self.scripts.fail,
            Report::Decline { .. } => &self.scripts.decline,
        };
        if !matches!(run[0], Report::Progress { .. }) {
            args.push(self.retention(queue));
        }
        args.push(s(worker));
        // Index of the report each script item answers; superseded progress shares the answer
        // of the latest one of its job.
        let latest: HashMap<&str, usize> = run
            .iter()
            .enumerate()
            .map(|(i, r)| (r.job_id(), i))
            .collect();
        let mut answered_by = Vec::with_capacity(run.len());
        let mut items = 0;
        for (i, report) in run.iter().enumerate() {
            let last = latest[report.job_id()];
            if matches!(report, Report::Progress { .. }) && last != i {
                answered_by.push(Err(last));
                continue;
            }
            answered_by.push(Ok(items));
            items += 1;
            args.push(s(report.job_id()));
            args.push(Value::Integer(report.token() as i64));
            match report {
                Report::Progress { progress: p, .. } => args.extend([
                    Value::Double(p.percent as f64),
                    s(p.stage.as_str()),
                    s(p.message.as_str()),
                ]),
                Report::Complete {
                    result, artifacts, ..
                } => args.extend([s(result.as_str()), s(Artifact::encode(artifacts))]),
                Report::Fail {
                    error, retryable, ..
                } => args.extend([
                    s(error.as_str()),
                    s(if *retryable { "1" } else { "0" }),
                    jitter(),
                ]),
                Report::Decline { reason, .. } => args.push(s(reason.as_str())),
            }
        }
        let replies: Vec<Vec<String>> =
            call(&self.redis, script, keys::leased(queue), args).await?;
        if replies.len() != items {
            return Err(Error::Corrupt(format!(
                "{} answers to {items} reports",
                replies.len()
            )));
        }
        let verdict = |reply: &Vec<String>| match reply.first().map(String::as_str) {
            Some("OK") => Ok(()),
            Some("FAILED_PRECONDITION") => Err(Error::FailedPrecondition(
                reply.get(1).cloned().unwrap_or_default(),
            )),
            // A queue not restored yet; without a database nothing will restore it.
            Some("UNAVAILABLE") if self.history.is_some() => Err(Error::Restoring),
            Some("UNAVAILABLE") => Err(Error::FailedPrecondition(
                "job does not exist (Redis lost its data)".into(),
            )),
            other => Err(Error::Corrupt(format!("report answered {other:?}"))),
        };
        let resolve = |mut i: usize| loop {
            match answered_by[i] {
                Ok(item) => return verdict(&replies[item]),
                Err(later) => i = later,
            }
        };
        let changes = run
            .iter()
            .zip(&answered_by)
            .filter_map(|(report, answer)| {
                let reply = &replies[*answer.as_ref().ok()?];
                (reply.first()? == "OK").then(|| change(queue, report, reply))
            })
            .collect();
        self.record(changes);
        Ok((0..run.len()).map(resolve).collect())
    }

    /// Requeues at once the jobs a vanished worker session held in `queue`.
    pub async fn release(
        &self,
        queue: &str,
        session: &str,
        reason: &str,
        ids: &[String],
    ) -> Result<(), Error> {
        let mut args = vec![
            s(keys::prefix(queue)),
            Value::Integer(now_ms()),
            s(session),
            s(reason),
            self.retention(queue),
        ];
        args.extend(ids.iter().map(|id| s(id.as_str())));
        let ended: Vec<String> = call(
            &self.redis,
            &self.scripts.release,
            keys::leased(queue),
            args,
        )
        .await?;
        metered::ended_list(queue, &ended);
        self.record(durable::ended_list(ended));
        Ok(())
    }

    /// Puts back the jobs a lease call that went without an answer may have leased to
    /// `session`: its running jobs in `queue` other than `held` (`unlease.lua`). Their attempts
    /// do not count. Returns how many went back.
    pub async fn unlease(
        &self,
        queue: &str,
        session: &str,
        held: &[String],
    ) -> Result<usize, Error> {
        let mut args = vec![
            s(keys::prefix(queue)),
            Value::Integer(now_ms()),
            self.retention(queue),
            s(session),
        ];
        args.extend(held.iter().map(|id| s(id.as_str())));
        let back: Vec<(String, String)> = call(
            &self.redis,
            &self.scripts.unlease,
            keys::leased(queue),
            args,
        )
        .await?;
        let at = now_ms();
        let changes = back
            .iter()
            .map(|(id, attempt)| Change::Declined {
                id: id.clone(),
                attempt: attempt.parse::<u32>().unwrap_or(0) + 1,
                at,
            })
            .collect();
        self.record(changes);
        Ok(back.len())
    }

    /// Tells every replica that `worker` is connected again as `session`, once the leases it
    /// still holds moved there (see `keys::BACK_CHANNEL`).
    pub async fn announce_back(&self, worker: &str, session: &str) -> Result<(), Error> {
        use fred::interfaces::PubsubInterface;
        let message = format!("{worker}|{session}");
        let _: i64 = self.redis.publish(keys::BACK_CHANNEL, message).await?;
        Ok(())
    }

    /// Moves still-valid leases of `queue` to a reconnected worker's session.
    /// Returns (re-attached ids, lost ids).
    pub async fn reattach(
        &self,
        queue: &str,
        session: &str,
        worker: &str,
        held: &[(String, u64)],
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        let mut args = vec![
            s(keys::prefix(queue)),
            Value::Integer(now_ms()),
            ms(self.options.lease_ttl),
            s(session),
            s(worker),
        ];
        for (id, token) in held {
            args.push(s(id.as_str()));
            args.push(Value::Integer(*token as i64));
        }
        Ok(call(
            &self.redis,
            &self.scripts.reattach,
            keys::leased(queue),
            args,
        )
        .await?)
    }
}
