//! Every Redis key name Conveyor uses, built in one place.
//!
//! A queue's keys share the `{queue}` hash tag so its scripts touch one Cluster slot. Two kinds
//! of keys are global: `cv:id:<job>` (which queue a job id belongs to, so clients address jobs
//! by id alone) and the pub/sub channels.

/// Pub/sub channel carrying the events of watched jobs (a JSON array per script call), one
/// subscription per replica.
pub const EVENTS_CHANNEL: &str = "cv:events";
/// Pub/sub channel saying "queue has work" (`queue`) or "work due at" (`queue|due_ms`).
pub const WAKE_CHANNEL: &str = "cv:wake";

/// The prefix of every key of one queue; scripts derive job, ready and log keys from it.
pub fn prefix(queue: &str) -> String {
    format!("cv:{{{queue}}}:")
}

pub fn job(queue: &str, id: &str) -> String {
    format!("cv:{{{queue}}}:job:{id}")
}

pub fn leased(queue: &str) -> String {
    format!("cv:{{{queue}}}:leased")
}

pub fn all(queue: &str) -> String {
    format!("cv:{{{queue}}}:all")
}

pub fn job_queue(id: &str) -> String {
    format!("cv:id:{id}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_of_a_queue_share_its_hash_tag() {
        assert_eq!(super::job("render", "j1"), "cv:{render}:job:j1");
        assert!(super::leased("render").starts_with(&super::prefix("render")));
        assert!(super::all("render").starts_with(&super::prefix("render")));
    }
}
