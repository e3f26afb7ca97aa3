//! Conveyor's SQL schema as sea-orm migrations, for PostgreSQL and SQLite alike. The server runs
//! the pending ones at start; `conveyor migrate` runs them by hand.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_history;
mod m20261125_000002_credentials;
mod m20261125_000003_callback_url;
mod m20261126_000004_limit_key;
mod m20261126_000005_flows;
mod m20261127_000006_artifacts;
mod m20261206_000007_finished_follows_state;

/// The condition of a job row that has not finished (its state is not terminal), as the
/// partial index `jobs_unfinished` and the queries it serves write it.
pub const UNFINISHED: &str = "state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED')";

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_history::Migration),
            Box::new(m20261125_000002_credentials::Migration),
            Box::new(m20261125_000003_callback_url::Migration),
            Box::new(m20261126_000004_limit_key::Migration),
            Box::new(m20261126_000005_flows::Migration),
            Box::new(m20261127_000006_artifacts::Migration),
            Box::new(m20261206_000007_finished_follows_state::Migration),
        ]
    }
}
