//! The transitions of a leased job: lease, renew, the worker's reports, release, re-attach.

use fred::prelude::Value;

use super::scripts::call;
use super::{Error, Handle, Job, JobState, Leased, Progress, accept, jitter, keys, ms, now_ms, s};

impl Handle {
    /// Leases up to `n` jobs of `queue` for a worker session (0 only reclaims and promotes).
    pub async fn lease(
        &self,
        queue: &str,
        n: u32,
        session: &str,
        worker: &str,
    ) -> Result<Leased, Error> {
        let w = self.options.tier_weights;
        let args = vec![
            s(keys::prefix(queue)),
            Value::Integer(now_ms()),
            Value::Integer(n as i64),
            ms(self.options.lease_ttl),
            s(session),
            s(worker),
            self.retention(),
            self.keep(),
            jitter(),
            Value::Integer(w[0] as i64),
            Value::Integer(w[1] as i64),
            Value::Integer(w[2] as i64),
            Value::Integer(w[3] as i64),
        ];
        let reply: Vec<Value> =
            call(&self.redis, &self.scripts.lease, keys::leased(queue), args).await?;
        let mut items = reply.into_iter();
        let next_due_ms = items.next().and_then(|v| v.as_i64()).filter(|d| *d >= 0);
        let more = items.next().and_then(|v| v.as_i64()) == Some(1);
        let jobs = items.map(Job::from_fields).collect::<Result<_, _>>()?;
        Ok(Leased {
            jobs,
            more,
            next_due_ms,
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
            s(""),
            self.retention(),
            self.keep(),
            jitter(),
        ];
        for (id, session) in held {
            args.push(s(id.as_str()));
            args.push(s(session.as_str()));
        }
        Ok(call(&self.redis, &self.scripts.renew, keys::leased(queue), args).await?)
    }

    /// Records progress of the attempt `worker` runs under `token`.
    pub async fn progress(
        &self,
        queue: &str,
        id: &str,
        worker: &str,
        token: u64,
        p: &Progress,
    ) -> Result<(), Error> {
        let args = vec![
            s(keys::prefix(queue)),
            s(id),
            Value::Integer(token as i64),
            Value::Double(p.percent as f64),
            s(p.stage.as_str()),
            s(p.message.as_str()),
            Value::Integer(now_ms()),
            self.keep(),
            s(worker),
        ];
        accept(
            call(
                &self.redis,
                &self.scripts.progress,
                keys::job(queue, id),
                args,
            )
            .await?,
        )?;
        Ok(())
    }

    /// Ends the attempt `worker` runs under `token` with success.
    pub async fn complete(
        &self,
        queue: &str,
        id: &str,
        worker: &str,
        token: u64,
        result: &str,
    ) -> Result<(), Error> {
        let args = vec![
            s(keys::prefix(queue)),
            s(id),
            Value::Integer(token as i64),
            s(result),
            Value::Integer(now_ms()),
            self.retention(),
            self.keep(),
            s(worker),
        ];
        accept(
            call(
                &self.redis,
                &self.scripts.complete,
                keys::job(queue, id),
                args,
            )
            .await?,
        )?;
        Ok(())
    }

    /// Ends the attempt as failed; returns the job's new state (SCHEDULED for a retry, or FAILED).
    pub async fn fail(
        &self,
        queue: &str,
        id: &str,
        worker: &str,
        token: u64,
        error: &str,
        retryable: bool,
    ) -> Result<JobState, Error> {
        let args = vec![
            s(keys::prefix(queue)),
            s(id),
            Value::Integer(token as i64),
            s(error),
            s(if retryable { "1" } else { "0" }),
            Value::Integer(now_ms()),
            jitter(),
            self.retention(),
            self.keep(),
            s(worker),
        ];
        let reply =
            accept(call(&self.redis, &self.scripts.fail, keys::job(queue, id), args).await?)?;
        let state = reply.first().and_then(Value::as_string).unwrap_or_default();
        JobState::parse(&state).ok_or_else(|| Error::Corrupt(format!("fail returned {state:?}")))
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
            self.retention(),
            self.keep(),
        ];
        args.extend(ids.iter().map(|id| s(id.as_str())));
        let _: i64 = call(
            &self.redis,
            &self.scripts.release,
            keys::leased(queue),
            args,
        )
        .await?;
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
