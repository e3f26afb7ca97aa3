//! Checks on request fields, each failure a message a person can act on.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Limits;
use super::status::{Error, invalid};
use crate::proto;
use crate::scheduler::{Flow, JobState, ListFilter, NewJob, Tier, keys, now_ms};

pub const MAX_QUEUE_LEN: usize = 128;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 63;
pub const MAX_LABEL_VALUE: usize = 256;
pub const MAX_ATTEMPTS: u32 = 100;
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MAX_IDEMPOTENCY_KEY: usize = 256;
/// Most bytes of a fairness key or a limit key.
pub const MAX_FAIRNESS_KEY: usize = 128;
const MAX_DELAY_MS: i64 = 365 * 24 * 3600 * 1000;
/// Most follow-ups of one job, and most levels of follow-ups of follow-ups.
pub const MAX_FOLLOW_UPS: usize = 16;
pub const MAX_FLOW_DEPTH: usize = 5;
pub const MAX_DEPENDENCIES: usize = 64;
const MAX_CONTENT_TYPE: usize = 128;

pub fn queue(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid("queue: must not be empty"));
    }
    if name.len() > MAX_QUEUE_LEN {
        return Err(invalid(format!(
            "queue: {} bytes is over the limit of {MAX_QUEUE_LEN}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        return Err(invalid(format!(
            "queue: {c:?} is not allowed; use letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

pub fn job_id(id: &str) -> Result<(), Error> {
    match keys::queue_of(id) {
        Some(q) if queue(q).is_ok() => Ok(()),
        _ => Err(invalid(format!(
            "job_id: {:?} is not a job id (QUEUE:UUID, as SubmitJob returned it)",
            truncate(id)
        ))),
    }
}

pub fn tier(value: i32) -> Result<Tier, Error> {
    Tier::from_i32(value).ok_or_else(|| {
        invalid(format!(
            "tier: {value} is not a tier; use FREE, PRO, PREMIUM or ENTERPRISE"
        ))
    })
}

/// `None` for UNSPECIFIED (any state), an error for values outside the enum.
pub fn state_filter(value: i32) -> Result<Option<JobState>, Error> {
    use proto::JobState as P;
    Ok(Some(match P::try_from(value) {
        Ok(P::Unspecified) => return Ok(None),
        Ok(P::Scheduled) => JobState::Scheduled,
        Ok(P::Queued) => JobState::Queued,
        Ok(P::Running) => JobState::Running,
        Ok(P::Succeeded) => JobState::Succeeded,
        Ok(P::Failed) => JobState::Failed,
        Ok(P::Cancelled) => JobState::Cancelled,
        Ok(P::Waiting) => JobState::Waiting,
        Err(_) => return Err(invalid(format!("state: {value} is not a job state"))),
    }))
}

fn duration(name: &str, d: &prost_types::Duration) -> Result<Duration, Error> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid(format!("{name}: must not be negative")));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A presigned download's lifetime: 1 s to 7 days (SigV4's longest).
pub fn url_expiry(d: Option<&prost_types::Duration>) -> Result<Option<Duration>, Error> {
    let week = Duration::from_secs(7 * 24 * 3600);
    Ok(bounded("expiry", d, Duration::from_secs(1), week)?.map(Duration::from_millis))
}

fn bounded(
    name: &str,
    d: Option<&prost_types::Duration>,
    min: Duration,
    max: Duration,
) -> Result<Option<u64>, Error> {
    let Some(d) = d else { return Ok(None) };
    let d = duration(name, d)?;
    if d < min || d > max {
        return Err(invalid(format!(
            "{name}: {d:?} is outside {min:?}..={max:?}"
        )));
    }
    Ok(Some(d.as_millis() as u64))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

pub fn submit(r: proto::SubmitJobRequest, limits: &Limits) -> Result<NewJob, Error> {
    submit_at(r, limits, 0)
}

/// A submit `depth` levels of follow-ups down.
fn submit_at(
    mut r: proto::SubmitJobRequest,
    limits: &Limits,
    depth: usize,
) -> Result<NewJob, Error> {
    let on_success = follow_ups(std::mem::take(&mut r.on_success), limits, depth)?;
    let depends_on = dependencies(std::mem::take(&mut r.depends_on))?;
    let cancel_if_dependency_fails = match proto::DependencyFailure::try_from(r.if_dependency_fails)
    {
        Ok(proto::DependencyFailure::Cancel) => true,
        Ok(_) => false,
        Err(_) => {
            return Err(invalid(format!(
                "if_dependency_fails: {} is not FAIL or CANCEL",
                r.if_dependency_fails
            )));
        }
    };
    queue(&r.queue)?;
    let tier = tier(r.tier)?;
    if r.payload.len() > limits.max_payload {
        return Err(invalid(format!(
            "payload: {} bytes is over the limit of {} bytes; store large inputs elsewhere and pass a reference",
            r.payload.len(),
            limits.max_payload
        )));
    }
    let priority = r.priority.unwrap_or(5);
    if !(1..=9).contains(&priority) {
        return Err(invalid(format!(
            "priority: {priority} is outside 1 (most urgent) ..= 9"
        )));
    }
    if r.labels.len() > limits.max_labels {
        return Err(invalid(format!(
            "labels: {} labels is over the limit of {}",
            r.labels.len(),
            limits.max_labels
        )));
    }
    for (k, v) in &r.labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY {
            return Err(invalid(format!(
                "labels: key {:?} must be 1..={MAX_LABEL_KEY} bytes",
                truncate(k)
            )));
        }
        if v.len() > MAX_LABEL_VALUE {
            return Err(invalid(format!(
                "labels: value of {k:?} is over {MAX_LABEL_VALUE} bytes"
            )));
        }
    }
    if let Some(n) = r.max_attempts
        && !(1..=MAX_ATTEMPTS).contains(&n)
    {
        return Err(invalid(format!(
            "max_attempts: {n} is outside 1..={MAX_ATTEMPTS}"
        )));
    }
    let second = Duration::from_secs(1);
    let timeout_ms = bounded("timeout", r.timeout.as_ref(), second, MAX_TIMEOUT)?;
    let day = Duration::from_secs(24 * 3600);
    let backoff_initial_ms = bounded(
        "backoff_initial",
        r.backoff_initial.as_ref(),
        Duration::from_millis(1),
        day,
    )?;
    let backoff_max_ms = bounded(
        "backoff_max",
        r.backoff_max.as_ref(),
        Duration::from_millis(1),
        day,
    )?;
    let run_at_ms = run_at(r.run_at.as_ref(), r.delay.as_ref())?;
    if r.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(invalid(format!(
            "idempotency_key: over {MAX_IDEMPOTENCY_KEY} bytes"
        )));
    }
    if r.content_type.len() > MAX_CONTENT_TYPE {
        return Err(invalid(format!(
            "content_type: over {MAX_CONTENT_TYPE} bytes"
        )));
    }
    json_payload(&r.payload, &r.content_type)?;
    if r.fairness_key.len() > MAX_FAIRNESS_KEY || r.fairness_key.chars().any(char::is_control) {
        return Err(invalid(format!(
            "fairness_key: at most {MAX_FAIRNESS_KEY} bytes, no control characters"
        )));
    }
    if r.limit_key.len() > MAX_FAIRNESS_KEY || r.limit_key.chars().any(char::is_control) {
        return Err(invalid(format!(
            "limit_key: at most {MAX_FAIRNESS_KEY} bytes, no control characters"
        )));
    }
    let inputs = inputs(r.inputs)?;
    if !r.callback_url.is_empty() {
        let Some(allow) = &limits.webhooks else {
            return Err(Error::FailedPrecondition(
                "callback_url: webhooks are off on this server (CONVEYOR_WEBHOOK_SECRET)".into(),
            ));
        };
        crate::webhooks::check_url(&r.callback_url, allow)
            .map_err(|e| invalid(format!("callback_url: {e}")))?;
    }
    Ok(NewJob {
        queue: r.queue,
        tier,
        priority: priority as u8,
        payload: r.payload,
        content_type: r.content_type,
        labels: r.labels.into_iter().collect::<BTreeMap<_, _>>(),
        max_attempts: r.max_attempts,
        backoff_initial_ms,
        backoff_max_ms,
        timeout_ms,
        run_at_ms,
        idempotency_key: r.idempotency_key,
        fairness_key: r.fairness_key,
        callback_url: r.callback_url,
        limit_key: r.limit_key,
        keep: r.keep,
        inputs,
        flow: Flow {
            on_success,
            parent_id: String::new(),
            depends_on,
            cancel_if_dependency_fails,
        },
        trace_context: String::new(),
    })
}

/// Checks a job's follow-ups as submits of their own (a missing tier is the parent's) and
/// encodes them for the scheduler to keep.
/// Whether a content type declares JSON: `application/json`, or a `+json` type such as
/// `application/problem+json`, with or without parameters.
fn is_json(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/json") || media.to_ascii_lowercase().ends_with("+json")
}

/// A payload declared JSON must parse as JSON, so a worker never receives a half-written one.
/// An empty payload is "no payload", whatever the type.
fn json_payload(payload: &[u8], content_type: &str) -> Result<(), Error> {
    if payload.is_empty() || !is_json(content_type) {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(payload)
        .map(|_| ())
        .map_err(|e| {
            invalid(format!(
                "payload: not valid JSON, as its content_type {content_type:?} says it is: {e}"
            ))
        })
}

fn follow_ups(
    jobs: Vec<proto::SubmitJobRequest>,
    limits: &Limits,
    depth: usize,
) -> Result<Vec<u8>, Error> {
    use prost::Message;
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    if depth + 1 > MAX_FLOW_DEPTH {
        return Err(invalid(format!(
            "on_success: follow-ups nest {MAX_FLOW_DEPTH} levels at most"
        )));
    }
    if jobs.len() > MAX_FOLLOW_UPS {
        return Err(invalid(format!(
            "on_success: {} follow-ups is over the limit of {MAX_FOLLOW_UPS}",
            jobs.len()
        )));
    }
    for (i, job) in jobs.iter().enumerate() {
        if !job.idempotency_key.is_empty() {
            return Err(invalid(format!(
                "on_success[{i}].idempotency_key: a follow-up's key comes from its parent; leave it empty"
            )));
        }
        if !job.inputs.is_empty() {
            return Err(invalid(format!(
                "on_success[{i}].inputs: a follow-up takes its parent's result; give inputs to the first job"
            )));
        }
        let mut check = job.clone();
        if check.tier == proto::Tier::Unspecified as i32 {
            check.tier = proto::Tier::Free as i32;
        }
        submit_at(check, limits, depth + 1).map_err(|e| invalid(format!("on_success[{i}].{e}")))?;
    }
    Ok(proto::SubmitJobsRequest { jobs }.encode_to_vec())
}

/// At most `MAX_INPUTS` references, each once, each a CreateInputUpload reference (whether it
/// was uploaded is asked of the store by the handler).
fn inputs(inputs: Vec<String>) -> Result<Vec<String>, Error> {
    use crate::artifacts::{MAX_INPUTS, check_input};
    if inputs.len() > MAX_INPUTS {
        return Err(invalid(format!("inputs: at most {MAX_INPUTS}")));
    }
    for (i, input) in inputs.iter().enumerate() {
        check_input(input).map_err(|e| invalid(format!("inputs[{i}]: {e}")))?;
        // A worker finds each input under its name, so names differ.
        let name = crate::artifacts::input_name;
        if inputs[..i].iter().any(|other| name(other) == name(input)) {
            return Err(invalid(format!(
                "inputs[{i}]: another input has the name of {input:?}"
            )));
        }
    }
    Ok(inputs)
}

fn dependencies(ids: Vec<String>) -> Result<Vec<String>, Error> {
    if ids.len() > MAX_DEPENDENCIES {
        return Err(invalid(format!(
            "depends_on: {} jobs is over the limit of {MAX_DEPENDENCIES}",
            ids.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for id in &ids {
        if keys::queue_of(id).is_none() {
            return Err(invalid(format!(
                "depends_on: {:?} is not a job id",
                truncate(id)
            )));
        }
        if !seen.insert(id.as_str()) {
            return Err(invalid(format!("depends_on: {id} is named twice")));
        }
    }
    Ok(ids)
}

/// What a RetryJob names: one job, or the FAILED jobs of a queue matching a filter.
pub enum RetryTarget {
    One(String),
    Failed(ListFilter),
}

pub fn retry(r: proto::RetryJobRequest) -> Result<RetryTarget, Error> {
    match (r.job_id.is_empty(), r.queue.is_empty()) {
        (false, true) => {
            let filtered = r.tier != 0
                || !r.labels.is_empty()
                || r.created_from.is_some()
                || r.created_before.is_some();
            if filtered {
                return Err(invalid("filters go with a queue, not with a job_id"));
            }
            job_id(&r.job_id)?;
            Ok(RetryTarget::One(r.job_id))
        }
        (true, false) => {
            // The same filters as ListJobs, on FAILED jobs.
            let as_list = proto::ListJobsRequest {
                queue: r.queue,
                tier: r.tier,
                labels: r.labels,
                created_from: r.created_from,
                created_before: r.created_before,
                ..Default::default()
            };
            let (filter, _, _) = list(as_list, true, |_| false)?;
            Ok(RetryTarget::Failed(filter))
        }
        _ => Err(invalid("name either a job_id or a queue")),
    }
}

/// Most queues one WatchJobs stream follows.
pub const MAX_FOLLOWED_QUEUES: usize = 32;

/// A WatchJobs request of `tenant`'s checked: what it follows (each queue once), and its
/// resume point (ms).
pub fn follow(
    tenant: String,
    r: proto::WatchJobsRequest,
) -> Result<(crate::events::Filter, Option<i64>), Error> {
    if r.queues.is_empty() || r.queues.len() > MAX_FOLLOWED_QUEUES {
        return Err(invalid(format!(
            "queues: name 1 to {MAX_FOLLOWED_QUEUES} queues, not {}",
            r.queues.len()
        )));
    }
    let mut queues = r.queues;
    for q in &queues {
        queue(q)?;
    }
    queues.sort();
    queues.dedup();
    if r.labels.len() > MAX_LABELS {
        return Err(invalid(format!(
            "labels: {} labels is over the limit of {MAX_LABELS}",
            r.labels.len()
        )));
    }
    let resume = match r.resume_token.as_str() {
        "" => None,
        t => Some(resume_point(t).ok_or_else(|| {
            invalid("resume_token: not a token from a previous WatchJobs stream")
        })?),
    };
    let filter = crate::events::Filter {
        tenant,
        queues,
        labels: r.labels.into_iter().collect(),
    };
    Ok((filter, resume))
}

/// A WatchJobs resume token: `r1.<unix ms>`, the version first so it can change.
pub fn resume_token(ms: i64) -> String {
    format!("r1.{ms}")
}

fn resume_point(token: &str) -> Option<i64> {
    let ms: i64 = token.strip_prefix("r1.")?.parse().ok()?;
    (0..=253_402_300_799_999).contains(&ms).then_some(ms)
}

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

/// A ListJobs request checked: its filter, page size and page token. `is_token` says whether a
/// page token could have come from the server's `list`.
pub fn list(
    r: proto::ListJobsRequest,
    history: bool,
    is_token: impl Fn(&str) -> bool,
) -> Result<(ListFilter, u32, Option<String>), Error> {
    if !r.queue.is_empty() || !history {
        queue(&r.queue)?;
    }
    if !history
        && (r.tier != 0
            || r.created_from.is_some()
            || r.created_before.is_some()
            || !r.labels.is_empty())
    {
        return Err(Error::FailedPrecondition(
            "tier, created and label filters need the job history (DATABASE_URL)".into(),
        ));
    }
    let page_size = match r.page_size {
        0 => DEFAULT_PAGE,
        n if n > MAX_PAGE => return Err(invalid(format!("page_size: {n} is over {MAX_PAGE}"))),
        n => n,
    };
    let token = match r.page_token.as_str() {
        "" => None,
        t if is_token(t) => Some(r.page_token.clone()),
        _ => return Err(invalid("page_token: not a token from a previous ListJobs")),
    };
    let time = |name: &str, t: Option<prost_types::Timestamp>| match t {
        None => Ok(None),
        Some(t) if (0..=253_402_300_799).contains(&t.seconds) && t.nanos >= 0 => {
            Ok(Some(t.seconds * 1000 + t.nanos as i64 / 1_000_000))
        }
        Some(_) => Err(invalid(format!("{name}: not a time between 1970 and 9999"))),
    };
    if r.labels.len() > MAX_LABELS {
        return Err(invalid(format!(
            "labels: {} labels is over the limit of {MAX_LABELS}",
            r.labels.len()
        )));
    }
    let filter = ListFilter {
        queue: (!r.queue.is_empty()).then_some(r.queue),
        state: state_filter(r.state)?,
        tier: match r.tier {
            0 => None,
            n => Some(tier(n)?),
        },
        created_from_ms: time("created_from", r.created_from)?,
        created_before_ms: time("created_before", r.created_before)?,
        labels: r.labels.into_iter().collect(),
    };
    Ok((filter, page_size, token))
}

/// When the job may first run (unix ms); `None` for now.
fn run_at(
    at: Option<&prost_types::Timestamp>,
    delay: Option<&prost_types::Duration>,
) -> Result<Option<i64>, Error> {
    let now = now_ms();
    match (at, delay) {
        (Some(_), Some(_)) => Err(invalid("run_at and delay: give at most one")),
        (None, Some(d)) => {
            let d = duration("delay", d)?;
            if d.as_millis() as i64 > MAX_DELAY_MS {
                return Err(invalid("delay: more than 365 days"));
            }
            Ok(Some(now + d.as_millis() as i64))
        }
        (Some(t), None) => {
            let ms = t
                .seconds
                .saturating_mul(1000)
                .saturating_add(t.nanos as i64 / 1_000_000);
            // A little in the past is clock skew (run now); far past or future is a mistake.
            if ms < now - 3_600_000 || ms > now + MAX_DELAY_MS || t.nanos < 0 {
                return Err(invalid(
                    "run_at: must be within the past hour and the next 365 days",
                ));
            }
            Ok(Some(ms))
        }
        (None, None) => Ok(None),
    }
}

pub fn progress_percent(p: f32) -> Result<(), Error> {
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        return Err(invalid(format!("progress.percent: {p} is outside 0..=100")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(queue("render.v2_hd-1").is_ok());
        for bad in ["", "has space", "tab\t", "ünï", &"q".repeat(129)] {
            assert!(queue(bad).is_err(), "{bad:?}");
        }
        assert!(queue(&"q".repeat(128)).is_ok());
    }

    #[test]
    fn percent_bounds() {
        assert!(progress_percent(0.0).is_ok() && progress_percent(100.0).is_ok());
        assert!(progress_percent(f32::NAN).is_err() && progress_percent(-1.0).is_err());
        assert!(progress_percent(150.0).is_err());
    }

    #[test]
    fn run_at_bounds() {
        let t = |s| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        };
        assert!(run_at(Some(&t(0)), None).is_err());
        assert!(run_at(Some(&t(253_402_300_799)), None).is_err());
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(run_at(None, Some(&neg)).is_err());
    }

    #[test]
    fn json_payloads_must_parse() {
        for ok in [
            "application/json",
            "application/problem+json; charset=utf-8",
        ] {
            assert!(json_payload(br#"{"video":"a.mp4"}"#, ok).is_ok());
            assert!(json_payload(b"", ok).is_ok(), "no payload");
            assert!(json_payload(br#"{"video":"#, ok).is_err(), "{ok}");
        }
        assert!(json_payload(br#"{"video":"#, "application/octet-stream").is_ok());
        assert!(json_payload(b"\xff", "").is_ok());
    }
}
