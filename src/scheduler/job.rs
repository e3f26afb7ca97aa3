//! The job model as the scheduler sees it, and its decoding from Redis replies.

use std::collections::BTreeMap;

use fred::prelude::Value;

use super::Error;

/// The customer class that sets a job's share of the workers; the numbers match the proto.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    Free = 1,
    Pro = 2,
    Premium = 3,
    Enterprise = 4,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Pro, Tier::Premium, Tier::Enterprise];

    /// How many of `tiers` are of each tier (the tiers that occur, FREE first).
    pub fn count(tiers: impl Iterator<Item = Tier>) -> Vec<(Tier, usize)> {
        let mut counts = [0; 4];
        for tier in tiers {
            counts[tier as usize - 1] += 1;
        }
        let counted = Tier::ALL.into_iter().zip(counts);
        counted.filter(|(_, n)| *n > 0).collect()
    }

    pub fn from_i32(n: i32) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| *t as i32 == n)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting for the jobs it depends on.
    Waiting,
    Scheduled,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "WAITING",
            JobState::Scheduled => "SCHEDULED",
            JobState::Queued => "QUEUED",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "WAITING" => JobState::Waiting,
            "SCHEDULED" => JobState::Scheduled,
            "QUEUED" => JobState::Queued,
            "RUNNING" => JobState::Running,
            "SUCCEEDED" => JobState::Succeeded,
            "FAILED" => JobState::Failed,
            "CANCELLED" => JobState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A file the accepted attempt left in the artifact store, as the store described it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Artifact {
    pub name: String,
    pub size: u64,
    pub content_type: String,
    /// The store's ETag.
    pub checksum: String,
}

impl Artifact {
    /// The JSON list a job's hash, row and events carry; empty for none.
    pub fn encode(list: &[Artifact]) -> String {
        match list.is_empty() {
            true => String::new(),
            false => serde_json::to_string(list).unwrap_or_default(),
        }
    }

    pub fn decode(text: &str) -> Vec<Artifact> {
        serde_json::from_str(text).unwrap_or_default()
    }
}

/// A list as a job's hash and row keep it: a JSON array, or empty for none.
pub(super) fn json_list(items: &[String]) -> String {
    match items.is_empty() {
        true => String::new(),
        false => serde_json::to_string(items).unwrap_or_default(),
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub percent: f32,
    pub stage: String,
    pub message: String,
}

/// What a caller asks for; defaults are already applied and values validated by the api layer.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub queue: String,
    pub tier: Tier,
    pub priority: u8,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub labels: BTreeMap<String, String>,
    /// `None` uses the queue default.
    pub max_attempts: Option<u32>,
    pub backoff_initial_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Unix ms; `None` or a past time means now.
    pub run_at_ms: Option<i64>,
    pub idempotency_key: String,
    /// Whom the job is for; within a tier and priority, keys take turns. Empty: the tenant.
    pub fairness_key: String,
    /// Where the job's end is POSTed; empty: the queue's webhook, if any.
    pub callback_url: String,
    /// What the queue's per-key limits count it under (per tenant); empty: none.
    pub limit_key: String,
    /// Kept past its queue's retention.
    pub keep: bool,
    /// Files uploaded for it (`artifacts::check_input` references).
    pub inputs: Vec<String>,
    pub flow: Flow,
    /// The submit's W3C traceparent (empty: none), handed to the worker.
    pub trace_context: String,
}

/// A job's place in a flow: what it waits for, what its success submits, what submitted it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Flow {
    /// Jobs to submit when it succeeds, encoded by the api layer (`SubmitJobsRequest`); empty:
    /// none. The scheduler keeps it and hands it back (`crate::flows`).
    pub on_success: Vec<u8>,
    /// The job whose success submitted it; empty: none.
    pub parent_id: String,
    /// Ids of the jobs it waits for; WAITING until they all succeed.
    pub depends_on: Vec<String>,
    /// Ends CANCELLED rather than FAILED when one of them does not succeed.
    pub cancel_if_dependency_fails: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: String,
    pub queue: String,
    pub tenant: String,
    pub tier: Tier,
    pub priority: u8,
    pub state: JobState,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub labels: BTreeMap<String, String>,
    pub attempt: u32,
    pub max_attempts: u32,
    /// The first retry delay, doubled per attempt up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub timeout_ms: u64,
    pub idempotency_key: String,
    /// Where the job's end is POSTed (empty: nowhere).
    pub callback_url: String,
    /// What the queue's per-key limits count it under (per tenant); empty: none.
    pub limit_key: String,
    /// Kept past its queue's retention.
    pub keep: bool,
    pub inputs: Vec<String>,
    pub flow: Flow,
    /// The submit's W3C traceparent (empty: none). Kept in Redis only: a job restored from the
    /// history starts without one.
    pub trace_context: String,
    pub created_ms: i64,
    pub run_at_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub progress: Progress,
    pub result: String,
    /// Set once SUCCEEDED: the accepted attempt's files.
    pub artifacts: Vec<Artifact>,
    pub error: String,
    pub worker: String,
    /// The fencing token of the current (or last) lease; 0 before the first.
    pub token: u64,
    /// The sequence number of the job's last event.
    pub seq: u64,
    /// Why it waits, when it does and was asked (GetJob, a WatchJob snapshot); never stored.
    pub waiting: Option<super::Waiting>,
}

impl Job {
    /// Decodes a `HGETALL` reply (a flat field/value array, or a map). A field that appears
    /// twice takes its later value (the lease script appends what it changed).
    pub fn from_fields(value: Value) -> Result<Job, Error> {
        let pairs: Vec<(Value, Value)> = match value {
            // Replies from scripts are flat arrays; HGETALL from fred arrives as a map.
            Value::Array(items) => {
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
            Value::Map(map) => map
                .inner()
                .into_iter()
                .map(|(k, v)| (Value::String(k.as_str().unwrap_or_default().into()), v))
                .collect(),
            _ => return Err(Error::Corrupt("job reply is not an array".into())),
        };
        let mut raw = Raw::default();
        for (k, v) in pairs {
            if let Some(name) = k.as_bytes() {
                raw.set(name, v);
            }
        }
        raw.into_job()
    }
}

/// A job's hash fields as they arrive, before the checks of `into_job`; `text[i]` holds field
/// `TEXT_FIELDS[i]`.
struct Raw {
    text: [String; TEXT_FIELDS.len()],
    payload: Vec<u8>,
    on_success: Vec<u8>,
}

// By hand: `Default` is derived for arrays of at most 32.
impl Default for Raw {
    fn default() -> Self {
        Raw {
            text: std::array::from_fn(|_| String::new()),
            payload: Vec::new(),
            on_success: Vec::new(),
        }
    }
}

/// The hash fields a `Job` is made of (`payload` aside); others are the scripts' own.
const TEXT_FIELDS: [&str; 35] = [
    "id",
    "queue",
    "tenant",
    "tier",
    "priority",
    "state",
    "ctype",
    "labels",
    "attempt",
    "max_attempts",
    "backoff_initial",
    "backoff_max",
    "timeout",
    "idem",
    "created",
    "run_at",
    "started",
    "finished",
    "pct",
    "stage",
    "msg",
    "result",
    "error",
    "worker",
    "token",
    "seq",
    "cb",
    "lk",
    "par",
    "deps",
    "dfail",
    "arts",
    "keep",
    "inputs",
    "tp",
];

fn field_index(name: &[u8]) -> Option<usize> {
    TEXT_FIELDS.iter().position(|f| f.as_bytes() == name)
}

impl Raw {
    fn set(&mut self, name: &[u8], v: Value) {
        let bytes = |v: Value| match v {
            Value::Bytes(b) => b.to_vec(),
            Value::String(s) => s.as_bytes().to_vec(),
            _ => Vec::new(),
        };
        if name == b"payload" {
            self.payload = bytes(v);
        } else if name == b"then" {
            self.on_success = bytes(v);
        } else if let Some(i) = field_index(name) {
            self.text[i] = v.as_string().unwrap_or_default();
        }
    }

    fn into_job(mut self) -> Result<Job, Error> {
        let mut take = |name: &str| {
            let i = field_index(name.as_bytes()).expect("a field of TEXT_FIELDS");
            std::mem::take(&mut self.text[i])
        };
        let id = take("id");
        if id.is_empty() {
            return Err(Error::Corrupt("job hash has no id".into()));
        }
        let int = |text: String| text.parse::<f64>().map(|f| f as i64).unwrap_or(0);
        let tier = Tier::from_i32(int(take("tier")) as i32)
            .ok_or_else(|| Error::Corrupt(format!("job {id} has an unknown tier")))?;
        let state = JobState::parse(&take("state"))
            .ok_or_else(|| Error::Corrupt(format!("job {id} has an unknown state")))?;
        let labels = serde_json::from_str(&take("labels")).unwrap_or_default();
        let opt = |text: String| Some(int(text)).filter(|v| *v > 0);
        Ok(Job {
            queue: take("queue"),
            tenant: take("tenant"),
            tier,
            priority: int(take("priority")) as u8,
            state,
            payload: self.payload,
            content_type: take("ctype"),
            labels,
            attempt: int(take("attempt")) as u32,
            max_attempts: int(take("max_attempts")) as u32,
            backoff_initial_ms: int(take("backoff_initial")) as u64,
            backoff_max_ms: int(take("backoff_max")) as u64,
            timeout_ms: int(take("timeout")) as u64,
            idempotency_key: take("idem"),
            callback_url: take("cb"),
            limit_key: take("lk"),
            keep: take("keep") == "1",
            inputs: serde_json::from_str(&take("inputs")).unwrap_or_default(),
            flow: Flow {
                on_success: self.on_success,
                parent_id: take("par"),
                depends_on: serde_json::from_str(&take("deps")).unwrap_or_default(),
                cancel_if_dependency_fails: take("dfail") == "cancel",
            },
            trace_context: take("tp"),
            created_ms: int(take("created")),
            run_at_ms: int(take("run_at")),
            started_ms: opt(take("started")),
            finished_ms: opt(take("finished")),
            progress: Progress {
                percent: take("pct").parse().unwrap_or(0.0),
                stage: take("stage"),
                message: take("msg"),
            },
            result: take("result"),
            artifacts: Artifact::decode(&take("arts")),
            error: take("error"),
            worker: take("worker"),
            token: int(take("token")) as u64,
            seq: int(take("seq")) as u64,
            waiting: None,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Value {
        Value::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| [Value::from(*k), Value::from(*v)])
                .collect(),
        )
    }

    #[test]
    fn decodes_a_job_hash() {
        let job = Job::from_fields(fields(&[
            ("id", "j1"),
            ("queue", "render"),
            ("tier", "3"),
            ("priority", "2"),
            ("state", "RUNNING"),
            ("labels", r#"{"a":"b"}"#),
            ("pct", "42.5"),
            ("token", "7"),
            ("started", "0"),
        ]))
        .unwrap();
        assert_eq!(job.tier, Tier::Premium);
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.labels["a"], "b");
        assert_eq!(job.progress.percent, 42.5);
        assert_eq!(job.token, 7);
        assert_eq!(job.started_ms, None);
    }

    #[test]
    fn rejects_a_hash_without_id_or_with_unknown_state() {
        assert!(Job::from_fields(fields(&[("state", "RUNNING")])).is_err());
        assert!(Job::from_fields(fields(&[("id", "j"), ("tier", "1"), ("state", "X")])).is_err());
    }
}
