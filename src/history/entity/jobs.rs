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
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
