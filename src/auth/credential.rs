//! The `credentials` table (see `migrations/`): API keys, worker tokens and certificate
//! identities.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credentials")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// `client` or `worker`.
    pub kind: String,
    pub tenant: String,
    /// A client's scopes, comma-separated.
    pub scopes: String,
    /// A worker's queues, comma-separated, or `*`.
    pub queues: String,
    /// SHA-256 of the key's secret, hex; `None` for a certificate identity.
    pub secret_hash: Option<String>,
    /// The client certificate name this row admits (mTLS); `None` for a key.
    pub cert_identity: Option<String>,
    pub name: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
