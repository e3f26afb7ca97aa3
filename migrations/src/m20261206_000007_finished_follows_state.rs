//! A row is finished exactly when its state is terminal. Before, a dead letter retried and
//! failed again within one write of the history could keep its first `finished_ms` under a
//! waiting state, and every later write and the repair (which looked for rows without
//! `finished_ms`) passed it by. This clears `finished_ms` of such rows, and indexes the
//! unfinished rows by state, which is how the repair and the reconciler now find them.

use sea_orm_migration::prelude::*;

use crate::UNFINISHED;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&format!(
            "UPDATE jobs SET finished_ms = NULL WHERE finished_ms IS NOT NULL AND {UNFINISHED}"
        ))
        .await?;
        // Partial: it holds only the rows still in play, so it stays small however long the
        // history is kept (PostgreSQL and SQLite both have them).
        db.execute_unprepared(&format!(
            "CREATE INDEX jobs_unfinished ON jobs (id) WHERE {UNFINISHED}"
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let drop = Index::drop()
            .name("jobs_unfinished")
            .table(Alias::new("jobs"))
            .to_owned();
        manager.drop_index(drop).await
    }
}
