//! Dead letters back to work: RetryJob on one FAILED job (`retry.lua`, or from the history when
//! Redis already let the job go), or on every FAILED job of a queue that matches a filter.

use fred::prelude::{KeysInterface, Value};

use super::scripts::call;
use super::{Error, Handle, Job, JobState, ListFilter, accept, keys, now_ms, s};

/// Most jobs one bulk RetryJob puts back.
pub const MAX_BULK: u32 = 1000;

impl Handle {
    /// Puts a FAILED job back in its queue with a fresh budget of attempts. Another tenant's
    /// job is NOT_FOUND; a job in any other state is FAILED_PRECONDITION and stays as it is.
    pub async fn retry(&self, tenant: &str, id: &str) -> Result<Job, Error> {
        let queue = self.locate(id)?;
        let now = now_ms();
        let args = vec![
            s(keys::prefix(&queue)),
            s(id),
            s(tenant),
            Value::Integer(now),
        ];
        let reply = call(
            &self.redis,
            &self.scripts.retry,
            keys::job(&queue, id),
            args,
        )
        .await?;
        let job = match accept(reply) {
            Ok(items) => Job::from_fields(items.into_iter().next().unwrap_or(Value::Null))?,
            Err(Error::NotFound) => self.retry_from_history(tenant, id).await?,
            Err(e) => return Err(e),
        };
        if let Some(store) = self.history() {
            store.reopen(id, job.max_attempts, now).await?;
        }
        Ok(job)
    }

    /// A FAILED job Redis no longer has goes back from its row, as the reconciler would put it.
    async fn retry_from_history(&self, tenant: &str, id: &str) -> Result<Job, Error> {
        let store = self.history().ok_or(Error::NotFound)?;
        let mut row = match store.get(id).await? {
            Some(row) if row.tenant == tenant => row,
            _ => return Err(Error::NotFound),
        };
        if row.state != JobState::Failed.as_str() {
            return Err(Error::FailedPrecondition(format!(
                "job is {}; only a FAILED job can be retried",
                row.state
            )));
        }
        // While Redis is being rebuilt, the restore puts the queue back; not this.
        if self.redis.exists::<i64, _>(keys::MARKER).await? == 0 {
            return Err(Error::Restoring);
        }
        row.state = JobState::Queued.as_str().to_string();
        row.max_attempts += row.max_attempts.max(1);
        row.finished_ms = None;
        row.result = String::new();
        self.restore_rows(vec![row]).await?;
        self.get(tenant, id).await
    }

    /// Puts back up to `limit` of the tenant's FAILED jobs matching `filter` (its state is
    /// ignored); true when more match. Jobs that stopped being FAILED meanwhile are skipped.
    pub async fn retry_failed(
        &self,
        tenant: &str,
        filter: &ListFilter,
        limit: u32,
    ) -> Result<(Vec<Job>, bool), Error> {
        if self.history().is_none() {
            return Err(Error::FailedPrecondition(
                "retrying by filter reads the job history; this server runs without a database \
                 (DATABASE_URL=none): retry jobs by id"
                    .into(),
            ));
        }
        let filter = ListFilter {
            state: Some(JobState::Failed),
            ..filter.clone()
        };
        let page = self.list(tenant, &filter, limit, None).await?;
        let mut retried = Vec::with_capacity(page.jobs.len());
        for job in page.jobs {
            match self.retry(tenant, &job.id).await {
                Ok(job) => retried.push(job),
                Err(Error::FailedPrecondition(_) | Error::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((retried, page.next_cursor.is_some()))
    }
}
