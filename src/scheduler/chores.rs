//! Chores one replica at a time does for all (retention's sweep): a claim that lapses by
//! itself, and where the last run stopped, so the next one (on any replica) goes on from there.

use std::time::Duration;

use fred::prelude::{KeysInterface, Value};
use fred::types::{Expiration, SetOptions};

use super::{Error, Handle};

fn claim_key(chore: &str) -> String {
    format!("cv:chore:{chore}")
}

fn cursor_key(chore: &str) -> String {
    format!("cv:chore:{chore}:cursor")
}

impl Handle {
    /// True when this replica may run `chore` now: no other claimed it within `ttl`.
    pub async fn claim_chore(&self, chore: &str, ttl: Duration) -> Result<bool, Error> {
        let set: Option<String> = self
            .redis
            .set(
                claim_key(chore),
                uuid::Uuid::now_v7().to_string(),
                Some(Expiration::PX(ttl.as_millis().max(1) as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        Ok(set.is_some())
    }

    /// Where the last run of `chore` stopped, if it did not finish.
    pub async fn chore_cursor(&self, chore: &str) -> Result<Option<String>, Error> {
        Ok(self.redis.get(cursor_key(chore)).await?)
    }

    /// Records where `chore` got to; `None` when it finished.
    pub async fn set_chore_cursor(&self, chore: &str, at: Option<&str>) -> Result<(), Error> {
        let key = cursor_key(chore);
        let _: Value = match at {
            Some(at) => self.redis.set(key, at, None, None, false).await?,
            None => self.redis.del(key).await?,
        };
        Ok(())
    }
}
