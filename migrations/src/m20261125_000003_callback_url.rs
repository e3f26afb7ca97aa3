//! Jobs keep the URL their end is POSTed to (a webhook), so a job restored from the history
//! still calls it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    CallbackUrl,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = ColumnDef::new(Jobs::CallbackUrl)
            .text()
            .not_null()
            .default("")
            .to_owned();
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
            .drop_column(Jobs::CallbackUrl)
            .to_owned();
        manager.alter_table(drop).await
    }
}
