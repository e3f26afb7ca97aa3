//! Job events as the scripts publish them: a JSON array per script call on `cv:events`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Artifact, Error, Job, JobState, Progress};

#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// The job changed state; `state` is set.
    State(JobState),
    Progress(Progress),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub job_id: String,
    pub seq: u64,
    pub kind: EventKind,
    pub attempt: u32,
    pub result: String,
    pub error: String,
    pub time_ms: i64,
    /// On SUCCEEDED: the job's files.
    pub artifacts: Vec<Artifact>,
    /// Where the job belongs, on events of jobs a WatchJobs stream follows.
    pub scope: Option<Box<Scope>>,
    /// The new job (its payload aside), on the event of seq 0 a followed queue's submit sends.
    pub job: Option<Box<Job>>,
}

/// What a WatchJobs stream filters a job's events by.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scope {
    pub queue: String,
    pub tenant: String,
    pub labels: BTreeMap<String, String>,
}

impl Event {
    pub fn is_terminal(&self) -> bool {
        matches!(self.kind, EventKind::State(s) if s.is_terminal())
    }

    /// Decodes one published message: an array of events (an empty Lua table encodes as `{}`).
    pub fn parse_many(json: &[u8]) -> Result<Vec<Event>, Error> {
        if json == b"{}" {
            return Ok(Vec::new());
        }
        let raw: Vec<Raw> = serde_json::from_slice(json)
            .map_err(|e| Error::Corrupt(format!("undecodable job events: {e}")))?;
        raw.into_iter().map(Raw::into_event).collect()
    }

    pub fn parse(json: &[u8]) -> Result<Event, Error> {
        let raw: Raw = serde_json::from_slice(json)
            .map_err(|e| Error::Corrupt(format!("undecodable job event: {e}")))?;
        raw.into_event()
    }
}

/// An event as the scripts encode it.
#[derive(Deserialize)]
struct Raw {
    id: String,
    seq: u64,
    kind: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    attempt: u32,
    #[serde(default)]
    pct: f32,
    #[serde(default)]
    stage: String,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    result: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    t: f64,
    /// The JSON list, as complete.lua got it.
    #[serde(default)]
    arts: String,
    #[serde(default)]
    scope: Option<RawScope>,
    /// The new job's hash fields, flat (submit.lua).
    #[serde(default)]
    job: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawScope {
    q: String,
    tenant: String,
    /// The labels as the job hash keeps them (a JSON object; an empty Lua table is `{}` too).
    labels: String,
}

impl Raw {
    fn into_event(self) -> Result<Event, Error> {
        let kind = match self.kind.as_str() {
            "progress" => EventKind::Progress(Progress {
                percent: self.pct,
                stage: self.stage,
                message: self.msg,
            }),
            _ => EventKind::State(
                JobState::parse(&self.state)
                    .ok_or_else(|| Error::Corrupt(format!("event with state {:?}", self.state)))?,
            ),
        };
        Ok(Event {
            job_id: self.id,
            seq: self.seq,
            kind,
            attempt: self.attempt,
            result: self.result,
            error: self.error,
            time_ms: self.t as i64,
            artifacts: Artifact::decode(&self.arts),
            scope: self.scope.map(|raw| {
                Box::new(Scope {
                    queue: raw.q,
                    tenant: raw.tenant,
                    labels: serde_json::from_str(&raw.labels).unwrap_or_default(),
                })
            }),
            job: match self.job {
                Some(fields) => Some(Box::new(Job::from_fields(fred::prelude::Value::Array(
                    fields.into_iter().map(text).collect(),
                ))?)),
                None => None,
            },
        })
    }
}

/// A field name or value as the job decoder takes it (Lua numbers arrive as JSON numbers).
fn text(v: serde_json::Value) -> fred::prelude::Value {
    let text = match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    fred::prelude::Value::String(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state_and_progress_events() {
        let e = Event::parse(
            br#"{"id":"j","seq":3,"kind":"state","state":"FAILED","error":"boom","t":1.7e12}"#,
        )
        .unwrap();
        assert_eq!(e.kind, EventKind::State(JobState::Failed));
        assert!(e.is_terminal());
        assert_eq!(e.time_ms, 1_700_000_000_000);
        let p = Event::parse(
            br#"{"id":"j","seq":4,"kind":"progress","pct":50,"stage":"encode","msg":""}"#,
        )
        .unwrap();
        assert!(
            matches!(p.kind, EventKind::Progress(ref pr) if pr.percent == 50.0 && pr.stage == "encode")
        );
        assert!(Event::parse(b"{}").is_err());
        let many = Event::parse_many(
            br#"[{"id":"a","seq":1,"kind":"state","state":"RUNNING"},{"id":"b","seq":2,"kind":"progress"}]"#,
        )
        .unwrap();
        assert_eq!(many.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(Event::parse_many(b"{}").unwrap().is_empty());
    }
}
