//! What the scheduler counts into the process's metrics: jobs submitted, attempts that ended
//! (with the tier the scripts answer), and the lease's side is counted by the dispatcher.

use super::{JobState, Tier};
use crate::metrics::{self, Finished};

/// One attempt of a job of `queue` ended, and the job is now `state` (waiting again: retried).
pub(super) fn ended(queue: &str, tier: &str, state: &str) {
    let outcome = match JobState::parse(state) {
        Some(JobState::Succeeded) => "succeeded",
        Some(JobState::Failed) => "failed",
        Some(JobState::Cancelled) => "cancelled",
        Some(JobState::Queued | JobState::Scheduled) => "retried",
        _ => return,
    };
    let tier = tier
        .parse::<i32>()
        .ok()
        .and_then(Tier::from_i32)
        .map(metrics::tier_name)
        .unwrap_or_default();
    metrics::get()
        .finished
        .get_or_create(&Finished {
            queue: queue.to_string(),
            tier,
            outcome: outcome.to_string(),
        })
        .inc();
}

/// A script's ENDED list (see common.lua): id, state, error, run_at, tier per job. Entries
/// without an error are WAITING jobs let in line (resolve.lua), not attempts.
pub(super) fn ended_list(queue: &str, flat: &[String]) {
    for e in flat.chunks_exact(5) {
        if !e[2].is_empty() || JobState::parse(&e[1]).is_some_and(JobState::is_terminal) {
            ended(queue, &e[4], &e[1]);
        }
    }
}

pub(super) fn submitted(queue: &str, tier: Tier, n: u64) {
    metrics::get()
        .submitted
        .get_or_create(&metrics::queue_tier(queue, tier))
        .inc_by(n);
}
