//! The job history: one row per job (every field of the job model), one per attempt, one per
//! label. Times are unix milliseconds (BIGINT), as everywhere else in Conveyor, so both backends
//! store and compare them the same way.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Queue,
    Tenant,
    Tier,
    Priority,
    State,
    Payload,
    ContentType,
    Labels,
    Attempt,
    MaxAttempts,
    BackoffInitialMs,
    BackoffMaxMs,
    TimeoutMs,
    IdempotencyKey,
    CreatedMs,
    RunAtMs,
    StartedMs,
    FinishedMs,
    ProgressPercent,
    ProgressStage,
    ProgressMessage,
    Result,
    Error,
    Worker,
    UpdatedMs,
}

#[derive(DeriveIden)]
enum JobAttempts {
    Table,
    JobId,
    Attempt,
    Worker,
    StartedMs,
    FinishedMs,
    Outcome,
    Error,
}

#[derive(DeriveIden)]
enum JobLabels {
    Table,
    JobId,
    Key,
    Value,
}

fn text(name: impl IntoIden) -> ColumnDef {
    ColumnDef::new(name)
        .text()
        .not_null()
        .default("")
        .to_owned()
}

fn int(name: impl IntoIden) -> ColumnDef {
    ColumnDef::new(name).integer().not_null().to_owned()
}

fn ms(name: impl IntoIden) -> ColumnDef {
    ColumnDef::new(name).big_integer().not_null().to_owned()
}

fn ms_null(name: impl IntoIden) -> ColumnDef {
    ColumnDef::new(name).big_integer().null().to_owned()
}

fn index<C: IntoIden>(
    name: &str,
    table: impl IntoIden,
    columns: impl IntoIterator<Item = C>,
) -> IndexCreateStatement {
    let mut index = Index::create().name(name).table(table).to_owned();
    for column in columns {
        index.col(column);
    }
    index
}

fn job_fk(table: impl IntoIden, column: impl IntoIden) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(table, column)
        .to(Jobs::Table, Jobs::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(ColumnDef::new(Jobs::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Jobs::Queue).string().not_null())
                    .col(ColumnDef::new(Jobs::Tenant).string().not_null())
                    .col(int(Jobs::Tier))
                    .col(int(Jobs::Priority))
                    .col(ColumnDef::new(Jobs::State).string().not_null())
                    .col(ColumnDef::new(Jobs::Payload).blob().not_null())
                    .col(text(Jobs::ContentType))
                    // The labels again as JSON, so a row reads back whole without a join.
                    .col(text(Jobs::Labels))
                    .col(int(Jobs::Attempt))
                    .col(int(Jobs::MaxAttempts))
                    .col(ms(Jobs::BackoffInitialMs))
                    .col(ms(Jobs::BackoffMaxMs))
                    .col(ms(Jobs::TimeoutMs))
                    .col(text(Jobs::IdempotencyKey))
                    .col(ms(Jobs::CreatedMs))
                    .col(ms(Jobs::RunAtMs))
                    .col(ms_null(Jobs::StartedMs))
                    .col(ms_null(Jobs::FinishedMs))
                    .col(
                        ColumnDef::new(Jobs::ProgressPercent)
                            .double()
                            .not_null()
                            .default(0.0),
                    )
                    .col(text(Jobs::ProgressStage))
                    .col(text(Jobs::ProgressMessage))
                    .col(text(Jobs::Result))
                    .col(text(Jobs::Error))
                    .col(text(Jobs::Worker))
                    // When the row last took a transition: later writes win, earlier ones from
                    // another replica's writer are ignored.
                    .col(ms(Jobs::UpdatedMs))
                    .to_owned(),
            )
            .await?;
        // History pages: a tenant's jobs newest first, optionally of one queue.
        use Jobs::{CreatedMs, FinishedMs, Id, Queue, Tenant};
        let job_indexes = [
            index("jobs_tenant_created", Jobs::Table, [Tenant, CreatedMs, Id]),
            index(
                "jobs_tenant_queue_created",
                Jobs::Table,
                [Tenant, Queue, CreatedMs, Id],
            ),
            // Unfinished jobs (NULL) for the reconciler; old finished ones for the cleanup.
            index("jobs_finished", Jobs::Table, [FinishedMs]),
        ];
        for statement in job_indexes {
            manager.create_index(statement).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(JobAttempts::Table)
                    .col(ColumnDef::new(JobAttempts::JobId).string().not_null())
                    .col(int(JobAttempts::Attempt))
                    .col(text(JobAttempts::Worker))
                    .col(ms(JobAttempts::StartedMs))
                    .col(ms_null(JobAttempts::FinishedMs))
                    // SUCCEEDED, FAILED or CANCELLED once the attempt ended; NULL while it runs.
                    .col(ColumnDef::new(JobAttempts::Outcome).string().null())
                    .col(text(JobAttempts::Error))
                    .primary_key(
                        Index::create()
                            .col(JobAttempts::JobId)
                            .col(JobAttempts::Attempt),
                    )
                    .foreign_key(&mut job_fk(JobAttempts::Table, JobAttempts::JobId))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(JobLabels::Table)
                    .col(ColumnDef::new(JobLabels::JobId).string().not_null())
                    .col(ColumnDef::new(JobLabels::Key).string().not_null())
                    .col(ColumnDef::new(JobLabels::Value).string().not_null())
                    .primary_key(Index::create().col(JobLabels::JobId).col(JobLabels::Key))
                    .foreign_key(&mut job_fk(JobLabels::Table, JobLabels::JobId))
                    .to_owned(),
            )
            .await?;
        let labels = [JobLabels::Key, JobLabels::Value, JobLabels::JobId];
        manager
            .create_index(index("job_labels_key_value", JobLabels::Table, labels))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            JobLabels::Table.into_iden(),
            JobAttempts::Table.into_iden(),
            Jobs::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
