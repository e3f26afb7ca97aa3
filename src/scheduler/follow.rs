//! The Redis side of WatchJobs: reading a queue's jobs for a stream's snapshot (`follow.lua`,
//! which also marks the queue and its unfinished jobs as followed), and keeping the queue's
//! `watched` mark alive while streams follow it.

use std::time::Duration;

use fred::prelude::{Expiration, KeysInterface, Value};

use super::scripts::call;
use super::{Error, Handle, Job, keys, ms, s};

/// How long a queue stays marked after the last refresh: a replica that dies leaves the mark
/// for at most this long (its cost: events published that nobody reads).
pub const WATCHED_TTL: Duration = Duration::from_secs(60);

/// Jobs read per `follow.lua` call.
const PAGE: i64 = 500;

/// Where the next page of a follow starts.
#[derive(Clone, Debug)]
pub struct Cursor(String);

impl Cursor {
    pub fn start() -> Cursor {
        Cursor("-inf".into())
    }
}

impl Handle {
    /// One page of `queue` for a WatchJobs snapshot: the tenant's unfinished jobs, and those
    /// that finished at or after `since_ms`, without payloads; the cursor of the next page, if
    /// any. From this call on, the queue's jobs announce themselves (see follow.lua).
    pub async fn follow(
        &self,
        tenant: &str,
        queue: &str,
        since_ms: Option<i64>,
        cursor: &Cursor,
    ) -> Result<(Vec<Job>, Option<Cursor>), Error> {
        let args = vec![
            s(keys::prefix(queue)),
            s(tenant),
            s(since_ms.map(|t| t.to_string()).unwrap_or_default()),
            s(cursor.0.as_str()),
            Value::Integer(PAGE),
            ms(WATCHED_TTL),
        ];
        let reply: Vec<Value> =
            call(&self.redis, &self.scripts.follow, keys::all(queue), args).await?;
        let mut reply = reply.into_iter();
        let next = reply.next().and_then(|v| v.as_string()).unwrap_or_default();
        let jobs = match reply.next() {
            Some(Value::Array(jobs)) => jobs
                .into_iter()
                .map(Job::from_fields)
                .collect::<Result<Vec<_>, _>>()?,
            _ => Vec::new(),
        };
        let next = (!next.is_empty()).then(|| Cursor(format!("({next}")));
        Ok((jobs, next))
    }

    /// Renews the `watched` mark of queues that streams here still follow.
    pub async fn keep_watched(&self, queues: &[String]) -> Result<(), Error> {
        for queue in queues {
            let expiry = Expiration::PX(WATCHED_TTL.as_millis() as i64);
            let _: Value = self
                .redis
                .set(keys::watched(queue), "1", Some(expiry), None, false)
                .await?;
        }
        Ok(())
    }
}
