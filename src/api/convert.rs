//! Conversions between the scheduler's types and the generated protobuf types.

use crate::dispatcher::ToWorker;
use crate::proto;
use crate::scheduler::{self, Artifact, Event, EventKind, Job, JobState, Progress, Tier};

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn duration_ms(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub fn duration(d: std::time::Duration) -> prost_types::Duration {
    duration_ms(d.as_millis() as u64)
}

pub fn state(s: JobState) -> proto::JobState {
    match s {
        JobState::Scheduled => proto::JobState::Scheduled,
        JobState::Queued => proto::JobState::Queued,
        JobState::Running => proto::JobState::Running,
        JobState::Succeeded => proto::JobState::Succeeded,
        JobState::Failed => proto::JobState::Failed,
        JobState::Cancelled => proto::JobState::Cancelled,
        JobState::Waiting => proto::JobState::Waiting,
    }
}

fn tier(t: Tier) -> proto::Tier {
    match t {
        Tier::Free => proto::Tier::Free,
        Tier::Pro => proto::Tier::Pro,
        Tier::Premium => proto::Tier::Premium,
        Tier::Enterprise => proto::Tier::Enterprise,
    }
}

pub fn progress(p: Progress) -> proto::Progress {
    proto::Progress {
        percent: p.percent,
        stage: p.stage,
        message: p.message,
    }
}

pub fn job(j: Job) -> proto::Job {
    proto::Job {
        id: j.id,
        queue: j.queue,
        tier: tier(j.tier) as i32,
        priority: j.priority as i32,
        state: state(j.state) as i32,
        payload: j.payload,
        content_type: j.content_type,
        labels: j.labels.into_iter().collect(),
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        progress: Some(progress(j.progress)),
        result: j.result,
        artifacts: j.artifacts.into_iter().map(artifact).collect(),
        error: j.error,
        worker_id: j.worker,
        created_at: Some(timestamp(j.created_ms)),
        run_at: Some(timestamp(j.run_at_ms)),
        started_at: j.started_ms.map(timestamp),
        finished_at: j.finished_ms.map(timestamp),
        timeout: Some(duration_ms(j.timeout_ms)),
        idempotency_key: j.idempotency_key,
        callback_url: j.callback_url,
        blocked_reason: j
            .waiting
            .as_ref()
            .map(|w| w.reason.clone())
            .unwrap_or_default(),
        eligible_at: j
            .waiting
            .as_ref()
            .and_then(|w| w.eligible_at_ms)
            .map(timestamp),
        jobs_ahead: j.waiting.as_ref().and_then(|w| w.ahead),
        limit_key: j.limit_key,
        keep: j.keep,
        inputs: j.inputs,
        follow_ups: follow_ups(&j.flow.on_success),
        parent_id: j.flow.parent_id,
        depends_on: j.flow.depends_on,
        if_dependency_fails: match j.flow.cancel_if_dependency_fails {
            true => proto::DependencyFailure::Cancel,
            false => proto::DependencyFailure::Fail,
        } as i32,
    }
}

/// How many follow-ups a job's kept `on_success` (validate.rs encodes it) holds.
fn follow_ups(on_success: &[u8]) -> u32 {
    use prost::Message;
    match on_success.is_empty() {
        true => 0,
        false => proto::SubmitJobsRequest::decode(on_success)
            .map(|r| r.jobs.len() as u32)
            .unwrap_or(0),
    }
}

pub fn artifact(a: Artifact) -> proto::Artifact {
    proto::Artifact {
        name: a.name,
        size: a.size,
        content_type: a.content_type,
        checksum: a.checksum,
    }
}

pub fn snapshot(j: Job) -> proto::JobEvent {
    proto::JobEvent {
        job_id: j.id.clone(),
        seq: j.seq,
        kind: proto::job_event::Kind::Snapshot as i32,
        state: state(j.state) as i32,
        attempt: j.attempt,
        time: Some(timestamp(crate::scheduler::now_ms())),
        job: Some(job(j)),
        ..Default::default()
    }
}

pub fn event(e: &Event) -> proto::JobEvent {
    let mut out = proto::JobEvent {
        job_id: e.job_id.clone(),
        seq: e.seq,
        attempt: e.attempt,
        result: e.result.clone(),
        error: e.error.clone(),
        time: Some(timestamp(e.time_ms)),
        artifacts: e.artifacts.iter().cloned().map(artifact).collect(),
        ..Default::default()
    };
    match &e.kind {
        EventKind::State(s) => {
            out.kind = proto::job_event::Kind::State as i32;
            out.state = state(*s) as i32;
        }
        EventKind::Progress(p) => {
            out.kind = proto::job_event::Kind::Progress as i32;
            out.state = proto::JobState::Running as i32;
            out.progress = Some(progress(p.clone()));
        }
    }
    out
}

/// The message for the worker; an assignment carries `inputs`, its inputs' download URLs.
pub fn to_worker(m: ToWorker, inputs: Vec<proto::InputUrl>) -> proto::ConnectResponse {
    use proto::connect_response::Msg;
    let msg = match m {
        ToWorker::Assign {
            job: j,
            deadline_ms,
        } => Msg::Assignment(proto::Assignment {
            token: j.token,
            attempt: j.attempt,
            deadline: Some(timestamp(deadline_ms)),
            trace_context: j.trace_context.clone(),
            job: Some(job(*j)),
            inputs,
        }),
        ToWorker::Cancel { job_id, reason } => {
            Msg::Cancel(proto::CancelAssignment { job_id, reason })
        }
        ToWorker::Drain => Msg::Drain(proto::Drain {}),
    };
    proto::ConnectResponse { msg: Some(msg) }
}

fn counts(tier: i32, c: &scheduler::StateCounts) -> proto::StateCounts {
    use scheduler::JobState as S;
    proto::StateCounts {
        tier,
        scheduled: c.get(S::Scheduled),
        queued: c.get(S::Queued),
        running: c.get(S::Running),
        succeeded: c.get(S::Succeeded),
        failed: c.get(S::Failed),
        cancelled: c.get(S::Cancelled),
        waiting: c.get(S::Waiting),
    }
}

pub fn queue_stats(s: scheduler::QueueStats) -> proto::GetQueueStatsResponse {
    let now = scheduler::now_ms();
    proto::GetQueueStatsResponse {
        queue: s.queue,
        paused: s.paused,
        total: Some(counts(0, &s.total)),
        tiers: s.tiers.iter().map(|(t, c)| counts(*t as i32, c)).collect(),
        oldest_waiting: s
            .oldest_queued_ms
            .map(|at| duration(std::time::Duration::from_millis((now - at).max(0) as u64))),
        finished_last_minute: s.finished_last_minute,
    }
}

pub fn queue_summary(s: scheduler::QueueSummary) -> proto::QueueSummary {
    use scheduler::JobState as S;
    proto::QueueSummary {
        queue: s.queue,
        paused: s.paused,
        waiting: s.counts.get(S::Scheduled) + s.counts.get(S::Queued),
        running: s.counts.get(S::Running),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_keep_milliseconds() {
        let t = super::timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
    }
}
