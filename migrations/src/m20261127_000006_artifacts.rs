//! Jobs keep the list of files their accepted attempt left in the artifact store (JSON), so
//! GetJob answers with it after Redis let the job go.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Artifacts,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = ColumnDef::new(Jobs::Artifacts).text().null().to_owned();
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .add_column(column)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let drop = Table::alter()
            .table(Jobs::Table)
            .drop_column(Jobs::Artifacts)
            .to_owned();
        manager.alter_table(drop).await
    }
}
