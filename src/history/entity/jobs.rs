//! One row per job: every field of the job model, as of its last written transition.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub queue: String,
    pub tenant: String,
    pub tier: i32,
    pub priority: i32,
    pub state: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    /// JSON object of the labels (also in `job_labels`, which filters use).
    pub labels: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub backoff_initial_ms: i64,
    pub backoff_max_ms: i64,
    pub timeout_ms: i64,
    pub idempotency_key: String,
    pub created_ms: i64,
    pub run_at_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub progress_percent: f64,
    pub progress_stage: String,
    pub progress_message: String,
    pub result: String,
    pub error: String,
    pub worker: String,
    pub updated_ms: i64,
    /// Where the job's end is POSTed; empty: nowhere.
    pub callback_url: String,
    /// What the queue's per-key limits count it under; empty: none.
    pub limit_key: String,
    /// The follow-ups to submit on success (an encoded `SubmitJobsRequest`); none when null.
    pub on_success: Option<Vec<u8>>,
    /// The job whose success submitted this one; empty: none.
    pub parent_id: String,
    /// JSON array of the ids of the jobs it waits for; empty: none.
    pub depends_on: String,
    /// `cancel` when it ends CANCELLED if a dependency fails; empty: FAILED.
    pub dependency_failure: String,
    /// JSON array of the accepted attempt's artifacts; none when null.
    pub artifacts: Option<String>,
    /// Kept past its queue's retention.
    pub keep: bool,
    /// JSON array of its input references; empty: none.
    pub inputs: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
