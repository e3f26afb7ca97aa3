//! Credentials: API keys and worker tokens (only a hash of the secret is kept) and client
//! certificate identities, each bound to a tenant and a role. Revoking keeps the row, so `list`
//! still shows who had access and until when.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Credentials {
    Table,
    Id,
    Kind,
    Tenant,
    Scopes,
    Queues,
    SecretHash,
    CertIdentity,
    Name,
    CreatedMs,
    ExpiresMs,
    RevokedMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use Credentials as C;
        let text = |name: C| {
            ColumnDef::new(name)
                .text()
                .not_null()
                .default("")
                .to_owned()
        };
        let ms_null = |name: C| ColumnDef::new(name).big_integer().null().to_owned();
        manager
            .create_table(
                Table::create()
                    .table(C::Table)
                    .col(ColumnDef::new(C::Id).string().not_null().primary_key())
                    // `client` (scopes) or `worker` (queues).
                    .col(ColumnDef::new(C::Kind).string().not_null())
                    .col(ColumnDef::new(C::Tenant).string().not_null())
                    .col(text(C::Scopes))
                    .col(text(C::Queues))
                    // SHA-256 of the key's secret, hex; NULL for a certificate identity.
                    .col(ColumnDef::new(C::SecretHash).string().null())
                    // A client certificate's subject name (mTLS); NULL for a key.
                    .col(ColumnDef::new(C::CertIdentity).string().null().unique_key())
                    .col(text(C::Name))
                    .col(ColumnDef::new(C::CreatedMs).big_integer().not_null())
                    .col(ms_null(C::ExpiresMs))
                    .col(ms_null(C::RevokedMs))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Credentials::Table).to_owned())
            .await
    }
}
