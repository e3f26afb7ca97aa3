//! The scheduler's side of the SQL history: jobs to rows and back, the transitions it records,
//! and the reads that fall back to (or are served by) the database.

use std::collections::BTreeMap;

use crate::history::{self, Change, Cursor, Filter, entity::jobs};

use super::job::json_list;
use super::{Artifact, Error, Flow, Handle, Job, JobState, Page, Progress, Tier, now_ms};

impl From<history::Error> for Error {
    fn from(e: history::Error) -> Self {
        Error::History(e.to_string())
    }
}

/// What a history page is filtered by; the tenant is the caller's.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Required when there is no database (Redis lists one queue).
    pub queue: Option<String>,
    pub state: Option<JobState>,
    pub tier: Option<Tier>,
    pub created_from_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
    pub labels: BTreeMap<String, String>,
}

/// The row `insert` writes for a job that is being submitted.
pub(super) fn row(job: &Job) -> jobs::Model {
    jobs::Model {
        id: job.id.clone(),
        queue: job.queue.clone(),
        tenant: job.tenant.clone(),
        tier: job.tier as i32,
        priority: job.priority as i32,
        state: job.state.as_str().to_string(),
        payload: job.payload.clone(),
        content_type: job.content_type.clone(),
        labels: serde_json::to_string(&job.labels).unwrap_or_else(|_| "{}".into()),
        attempt: job.attempt as i32,
        max_attempts: job.max_attempts as i32,
        backoff_initial_ms: job.backoff_initial_ms as i64,
        backoff_max_ms: job.backoff_max_ms as i64,
        timeout_ms: job.timeout_ms as i64,
        idempotency_key: job.idempotency_key.clone(),
        created_ms: job.created_ms,
        run_at_ms: job.run_at_ms,
        started_ms: job.started_ms,
        finished_ms: job.finished_ms,
        progress_percent: job.progress.percent as f64,
        progress_stage: job.progress.stage.clone(),
        progress_message: job.progress.message.clone(),
        result: job.result.clone(),
        error: job.error.clone(),
        worker: job.worker.clone(),
        updated_ms: job.created_ms,
        callback_url: job.callback_url.clone(),
        limit_key: job.limit_key.clone(),
        keep: job.keep,
        inputs: json_list(&job.inputs),
        on_success: (!job.flow.on_success.is_empty()).then(|| job.flow.on_success.clone()),
        parent_id: job.flow.parent_id.clone(),
        depends_on: json_list(&job.flow.depends_on),
        dependency_failure: match job.flow.cancel_if_dependency_fails {
            true => "cancel".into(),
            false => String::new(),
        },
        artifacts: (!job.artifacts.is_empty()).then(|| Artifact::encode(&job.artifacts)),
    }
}

/// A job as the database has it. Its lease token and event sequence live only in Redis.
pub(super) fn job(row: jobs::Model) -> Result<Job, Error> {
    let corrupt = |what: &str| Error::History(format!("job {} has {what}", row.id));
    Ok(Job {
        tier: Tier::from_i32(row.tier).ok_or_else(|| corrupt("an unknown tier"))?,
        state: JobState::parse(&row.state).ok_or_else(|| corrupt("an unknown state"))?,
        labels: serde_json::from_str(&row.labels).unwrap_or_default(),
        priority: row.priority as u8,
        attempt: row.attempt as u32,
        max_attempts: row.max_attempts as u32,
        backoff_initial_ms: row.backoff_initial_ms as u64,
        backoff_max_ms: row.backoff_max_ms as u64,
        timeout_ms: row.timeout_ms as u64,
        progress: Progress {
            percent: row.progress_percent as f32,
            stage: row.progress_stage,
            message: row.progress_message,
        },
        token: 0,
        seq: 0,
        waiting: None,
        id: row.id,
        queue: row.queue,
        tenant: row.tenant,
        payload: row.payload,
        content_type: row.content_type,
        idempotency_key: row.idempotency_key,
        callback_url: row.callback_url,
        limit_key: row.limit_key,
        keep: row.keep,
        inputs: serde_json::from_str(&row.inputs).unwrap_or_default(),
        // Not kept in the history: a restored job starts a new trace.
        trace_context: String::new(),
        flow: Flow {
            on_success: row.on_success.unwrap_or_default(),
            parent_id: row.parent_id,
            depends_on: serde_json::from_str(&row.depends_on).unwrap_or_default(),
            cancel_if_dependency_fails: row.dependency_failure == "cancel",
        },
        created_ms: row.created_ms,
        run_at_ms: row.run_at_ms,
        started_ms: row.started_ms,
        finished_ms: row.finished_ms,
        result: row.result,
        artifacts: Artifact::decode(row.artifacts.as_deref().unwrap_or_default()),
        error: row.error,
        worker: row.worker,
    })
}

/// Page tokens of history: `<created_ms>_<id>` of the last job of the page.
fn cursor_token(job: &Job) -> String {
    format!("{}_{}", job.created_ms, job.id)
}

fn parse_cursor(token: &str) -> Option<Cursor> {
    let (ms, id) = token.split_once('_')?;
    Some(Cursor {
        created_ms: ms.parse().ok()?,
        id: id.to_string(),
    })
}

impl Handle {
    /// Hands transitions Redis accepted to the history writer, if there is a database.
    pub(super) fn record(&self, changes: Vec<Change>) {
        if let Some(webhooks) = &self.webhooks {
            for change in &changes {
                if let Change::Ended { id, state, .. } = change
                    && matches!(*state, "SUCCEEDED" | "FAILED" | "CANCELLED")
                {
                    webhooks.notify(id);
                }
            }
        }
        if let Some(store) = &self.history {
            store.record(changes);
        }
    }

    pub fn history(&self) -> Option<&history::Store> {
        self.history.as_ref()
    }

    /// A job Redis no longer has, from the database; another tenant's is NOT_FOUND.
    pub(super) async fn get_from_history(&self, tenant: &str, id: &str) -> Result<Job, Error> {
        let Some(store) = &self.history else {
            return Err(Error::NotFound);
        };
        match store.get(id).await? {
            Some(row) if row.tenant == tenant => job(row),
            _ => Err(Error::NotFound),
        }
    }

    /// Whether `token` could have come from `list`.
    pub fn valid_page_token(&self, token: &str) -> bool {
        match self.history {
            Some(_) => parse_cursor(token).is_some(),
            None => token.parse::<u64>().is_ok(),
        }
    }

    /// One page of the tenant's jobs, newest first: from the database when there is one (all
    /// history, every filter), else from Redis (one queue, state filter only).
    pub async fn list(
        &self,
        tenant: &str,
        filter: &ListFilter,
        page_size: u32,
        token: Option<&str>,
    ) -> Result<Page, Error> {
        let Some(store) = &self.history else {
            let queue = filter.queue.as_deref().unwrap_or_default();
            return self
                .list_redis(tenant, queue, filter.state, page_size, token)
                .await;
        };
        let query = Filter {
            tenant: tenant.to_string(),
            queue: filter.queue.clone(),
            state: filter.state.map(JobState::as_str),
            tier: filter.tier.map(|t| t as i32),
            created_from: filter.created_from_ms,
            created_before: filter.created_before_ms,
            labels: filter.labels.clone().into_iter().collect(),
        };
        let cursor = token.and_then(parse_cursor);
        // One more than asked says whether another page follows.
        let mut rows = store
            .list(&query, page_size as u64 + 1, cursor.as_ref())
            .await?;
        let more = rows.len() > page_size as usize;
        rows.truncate(page_size as usize);
        let jobs: Vec<Job> = rows.into_iter().map(job).collect::<Result<_, _>>()?;
        let next_cursor = more.then(|| jobs.last().map(cursor_token)).flatten();
        Ok(Page { jobs, next_cursor })
    }
}

/// The history change of a job that left RUNNING or waiting: see `Change::Ended`.
pub(super) fn ended(
    id: &str,
    state: JobState,
    run_at: Option<i64>,
    result: Option<String>,
    error: Option<String>,
) -> Change {
    Change::Ended {
        id: id.to_string(),
        state: state.as_str(),
        at: now_ms(),
        run_at,
        result,
        error,
        artifacts: None,
    }
}

/// The history change of a job whose attempt succeeded, leaving `artifacts`.
pub(super) fn succeeded(id: &str, result: &str, artifacts: &[Artifact]) -> Change {
    Change::Ended {
        id: id.to_string(),
        state: JobState::Succeeded.as_str(),
        at: now_ms(),
        run_at: None,
        result: Some(result.to_string()),
        error: None,
        artifacts: (!artifacts.is_empty()).then(|| Artifact::encode(artifacts)),
    }
}

/// The history changes of a script's ENDED list (see common.lua): id, state, error, run_at,
/// tier.
pub(super) fn ended_list(flat: Vec<String>) -> Vec<Change> {
    flat.chunks_exact(5)
        .filter_map(|e| {
            let state = JobState::parse(&e[1])?;
            Some(ended(
                &e[0],
                state,
                e[3].parse().ok(),
                None,
                Some(e[2].clone()),
            ))
        })
        .collect()
}
