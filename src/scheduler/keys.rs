//! Every Redis key name Conveyor uses, built in one place.
//!
//! A queue's keys share the `{queue}` hash tag so its scripts touch one Cluster slot; a job id
//! names its queue (`new_job_id`), so nothing maps ids to queues. Only the pub/sub channels are
//! global.

/// Pub/sub channel carrying the events of watched jobs (a JSON array per script call), one
/// subscription per replica.
pub const EVENTS_CHANNEL: &str = "cv:events";
/// Pub/sub channel saying "queue has work" (`queue`) or "work due at" (`queue|due_ms`).
pub const WAKE_CHANNEL: &str = "cv:wake";

/// Pub/sub channel saying "queue has ended jobs with work after them" (`queue`; crate::flows).
pub const AFTER_CHANNEL: &str = "cv:after";

/// Pub/sub channel saying "this worker is connected again, to this session" (`worker|session`):
/// a replica where the worker's old stream waits out its grace lets go of what that stream held.
pub const BACK_CHANNEL: &str = "cv:back";

/// Present once Redis holds everything the database says it should; written by the
/// reconciler. Its absence means Redis is new, or lost its data.
pub const MARKER: &str = "cv:marker";

/// The prefix of every key of one queue; scripts derive job, ready and log keys from it.
pub fn prefix(queue: &str) -> String {
    format!("cv:{{{queue}}}:")
}

/// Redis has the queue as the database does (see submit.lua); gone with the queue's shard's data.
pub fn ok(queue: &str) -> String {
    format!("cv:{{{queue}}}:ok")
}

/// The lock of the replica restoring one queue whose shard lost its data (`reconcile.rs`).
pub fn restoring(queue: &str) -> String {
    format!("cv:{{{queue}}}:reconciling")
}

pub fn job(queue: &str, id: &str) -> String {
    format!("cv:{{{queue}}}:job:{id}")
}

pub fn leased(queue: &str) -> String {
    format!("cv:{{{queue}}}:leased")
}

/// Present while a WatchJobs stream follows the queue (see follow.lua).
pub fn watched(queue: &str) -> String {
    format!("cv:{{{queue}}}:watched")
}

pub fn all(queue: &str) -> String {
    format!("cv:{{{queue}}}:all")
}

/// The QUEUED jobs of one tier (`ready:<tier>` in the scripts).
pub fn ready(queue: &str, tier: i32) -> String {
    format!("cv:{{{queue}}}:ready:{tier}")
}

/// Present while the queue is paused (`pause.lua`).
pub fn paused(queue: &str) -> String {
    format!("cv:{{{queue}}}:paused")
}

/// The QUEUED jobs of a tenant's limit key parked while the key is blocked (`kp:` in the
/// scripts; see common.lua).
pub fn parked(queue: &str, tenant: &str, key: &str) -> String {
    format!("cv:{{{queue}}}:kp:{tenant}/{key}")
}

/// The RUNNING jobs of a tenant's limit key, where a concurrency limit applies.
pub fn key_running(queue: &str, tenant: &str, key: &str) -> String {
    format!("cv:{{{queue}}}:kn:{tenant}/{key}")
}

/// When each rate-blocked limit key of the queue may lease again.
pub fn key_timers(queue: &str) -> String {
    format!("cv:{{{queue}}}:ktimer")
}

/// Ended jobs of the queue with work after them (follow-ups, waiters), by when it is due.
pub fn after(queue: &str) -> String {
    format!("cv:{{{queue}}}:after")
}

/// The WAITING jobs (of any queue) waiting for job `id` of `queue`.
pub fn waiters(queue: &str, id: &str) -> String {
    format!("cv:{{{queue}}}:waiters:{id}")
}

/// The dependencies a WAITING job still waits for.
pub fn pending(queue: &str, id: &str) -> String {
    format!("cv:{{{queue}}}:pending:{id}")
}

/// A new job id: `<queue>:<uuid v7>`. The id names its queue, so any replica finds a job's
/// keys from its id alone, with no global index (and every key of a job in its queue's slot).
pub fn new_job_id(queue: &str) -> String {
    format!("{queue}:{}", uuid::Uuid::now_v7())
}

/// The queue a job id names, or `None` if it is not a job id.
pub fn queue_of(id: &str) -> Option<&str> {
    let (queue, uuid) = id.rsplit_once(':')?;
    uuid::Uuid::parse_str(uuid).ok()?;
    (!queue.is_empty()).then_some(queue)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_of_a_queue_share_its_hash_tag() {
        assert_eq!(super::job("render", "j1"), "cv:{render}:job:j1");
        assert!(super::leased("render").starts_with(&super::prefix("render")));
        assert!(super::all("render").starts_with(&super::prefix("render")));
    }

    #[test]
    fn a_job_id_names_its_queue() {
        let id = super::new_job_id("video.render-1");
        assert_eq!(super::queue_of(&id), Some("video.render-1"));
        assert_eq!(super::queue_of("render:not-a-uuid"), None);
        let bare = uuid::Uuid::now_v7().to_string();
        assert_eq!(super::queue_of(&bare), None);
        assert_eq!(super::queue_of(&format!(":{bare}")), None);
    }
}
