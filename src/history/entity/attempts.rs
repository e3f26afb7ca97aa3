//! One row per attempt of a job: who ran it, when, and how it ended.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "job_attempts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub job_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub attempt: i32,
    pub worker: String,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// SUCCEEDED, FAILED or CANCELLED; `None` while the attempt runs.
    pub outcome: Option<String>,
    pub error: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
