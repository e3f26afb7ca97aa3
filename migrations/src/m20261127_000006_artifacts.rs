//! Jobs keep the list of files their accepted attempt left in the artifact store (JSON), so
//! GetJob answers with it after Redis let the job go; whether they are kept past their
//! queue's retention; and the input files they were submitted with.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Artifacts,
    Keep,
    Inputs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters a table one column at a time.
        let columns = [
            ColumnDef::new(Jobs::Artifacts).text().null().to_owned(),
            ColumnDef::new(Jobs::Keep)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
            ColumnDef::new(Jobs::Inputs)
                .text()
                .not_null()
                .default("")
                .to_owned(),
        ];
        for mut column in columns {
            let alter = Table::alter()
                .table(Jobs::Table)
                .add_column(&mut column)
                .to_owned();
            manager.alter_table(alter).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Jobs::Artifacts, Jobs::Keep, Jobs::Inputs] {
            let drop = Table::alter()
                .table(Jobs::Table)
                .drop_column(column)
                .to_owned();
            manager.alter_table(drop).await?;
        }
        Ok(())
    }
}
