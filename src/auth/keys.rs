//! API keys and worker tokens: their format, the hash kept of them, the rows binding them to a
//! tenant and a role, and a cache in front of those rows that a revocation empties at once on
//! every replica (announced on a Redis channel).
//!
//! A key reads `cvk_<id>_<secret>` (a worker token `cvw_...`): the id finds the row, the secret
//! (256 random bits) is checked against the SHA-256 kept in it. A fast hash is right for secrets
//! of that strength; a slow one would only slow every request down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use rand::RngCore;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, Set,
};
use sha2::{Digest, Sha256};

use super::credential::{Column as C, Entity as Credentials, Model};
use super::{Error, Principal, Queues, Role, Scopes};
use crate::scheduler::now_ms;

pub const CLIENT_PREFIX: &str = "cvk_";
pub const WORKER_PREFIX: &str = "cvw_";
/// Where `conveyor keys revoke` announces a revoked credential's id.
pub const REVOKED_CHANNEL: &str = "cv:auth:revoked";
/// How long a replica trusts a credential row it read: how late a revocation takes effect if its
/// announcement was missed (Redis unreachable at that moment; a reconnect also empties the cache).
const CACHE_FOR: Duration = Duration::from_secs(30);

/// Whether a bearer token is one of ours (as opposed to a JWT).
pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(CLIENT_PREFIX) || token.starts_with(WORKER_PREFIX)
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A key's parts: its kind (`client` or `worker`), its id (16 hex digits, the row's) and its
/// secret; `None` when it is not in the format `create` makes.
fn parts(token: &str) -> Option<(&'static str, &str, &str)> {
    let (kind, rest) = match token.split_at_checked(CLIENT_PREFIX.len())? {
        (CLIENT_PREFIX, rest) => ("client", rest),
        (WORKER_PREFIX, rest) => ("worker", rest),
        _ => return None,
    };
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && is_hex(id) && !secret.is_empty()).then_some((kind, id, secret))
}

/// Adds `key` (a `cvk_` key an operator made, e.g. in a Kubernetes Secret) as an admin key of
/// `tenant`, unless a credential with its id exists: a bootstrap key revoked later stays
/// revoked. True when it was added.
pub async fn bootstrap(db: &DatabaseConnection, key: &str, tenant: &str) -> Result<bool, String> {
    const STRONG: usize = 32; // hex digits: 128 bits
    let (kind, id, secret) = parts(key)
        .filter(|(kind, _, secret)| *kind == "client" && secret.len() >= STRONG && is_hex(secret))
        .ok_or_else(|| {
            format!(
                "CONVEYOR_BOOTSTRAP_KEY: not a client key: expected cvk_<16 hex digits>_<at \
                 least {STRONG} hex digits>, as `echo \"cvk_$(openssl rand -hex 8)_$(openssl \
                 rand -hex 32)\"` makes"
            )
        })?;
    let failed = |e: DbErr| format!("CONVEYOR_BOOTSTRAP_KEY: {e}");
    let known = || async {
        Credentials::find_by_id(id)
            .one(db)
            .await
            .map(|r| r.is_some())
    };
    if known().await.map_err(failed)? {
        return Ok(false);
    }
    let row = Model {
        id: id.to_string(),
        kind: kind.into(),
        tenant: tenant.to_string(),
        scopes: Scopes::default().with(super::Scope::Admin).to_string(),
        queues: String::new(),
        secret_hash: Some(hash(secret)),
        cert_identity: None,
        name: "bootstrap".into(),
        created_ms: now_ms(),
        expires_ms: None,
        revoked_ms: None,
    };
    match row.into_active_model().insert(db).await {
        Ok(_) => Ok(true),
        // Another replica starting at the same time added it first.
        Err(_) if known().await.is_ok_and(|known| known) => Ok(false),
        Err(e) => Err(failed(e)),
    }
}

/// What a new credential admits.
#[derive(Clone, Debug)]
pub struct NewCredential {
    pub tenant: String,
    /// `Role::Client` or `Role::Worker`.
    pub role: Role,
    pub name: String,
    pub expires_in: Option<Duration>,
    /// Admit a client certificate with this name (mTLS) instead of making a key.
    pub cert_identity: Option<String>,
}

/// Lower-case hex; every call checks a key's hash, so no allocation per byte.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

fn hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Equal without telling through timing how much of it matched.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Creates a credential; returns its row and, for a key, the token. The token is shown once:
/// only its hash is kept.
pub async fn create(
    db: &DatabaseConnection,
    new: NewCredential,
) -> Result<(Model, Option<String>), DbErr> {
    let mut random = [0u8; 40];
    rand::rng().fill_bytes(&mut random);
    let (id, secret) = (hex(&random[..8]), hex(&random[8..]));
    let (kind, prefix, scopes, queues) = match &new.role {
        Role::Worker(queues) => ("worker", WORKER_PREFIX, String::new(), queues.to_string()),
        Role::Client(scopes) => ("client", CLIENT_PREFIX, scopes.to_string(), String::new()),
        Role::Anyone => return Err(DbErr::Custom("a credential needs a role".into())),
    };
    if let Some(identity) = &new.cert_identity {
        admit_identity(db, identity).await?;
    }
    let token = new
        .cert_identity
        .is_none()
        .then(|| format!("{prefix}{id}_{secret}"));
    let now = now_ms();
    let row = Model {
        id,
        kind: kind.into(),
        tenant: new.tenant,
        scopes,
        queues,
        secret_hash: token.as_ref().map(|_| hash(&secret)),
        cert_identity: new.cert_identity,
        name: new.name,
        created_ms: now,
        expires_ms: new
            .expires_in
            .map(|d| now + d.as_millis().min(i64::MAX as u128 / 2) as i64),
        revoked_ms: None,
    };
    let row = row.into_active_model().insert(db).await?;
    Ok((row, token))
}

/// Every credential, or one tenant's, oldest first.
pub async fn list(db: &DatabaseConnection, tenant: Option<&str>) -> Result<Vec<Model>, DbErr> {
    let mut query = Credentials::find().order_by_asc(C::CreatedMs);
    if let Some(tenant) = tenant {
        query = query.filter(C::Tenant.eq(tenant));
    }
    query.all(db).await
}

/// Makes room for a new credential admitting certificates named `identity`: a revoked one lets
/// go of the name (kept on record in its `name` when it had none), an active one refuses with a
/// message saying what to do. (Two at once may still meet the unique index.)
async fn admit_identity(db: &DatabaseConnection, identity: &str) -> Result<(), DbErr> {
    let active = Credentials::find()
        .filter(C::CertIdentity.eq(identity))
        .filter(C::RevokedMs.is_null())
        .one(db)
        .await?;
    if let Some(row) = active {
        return Err(DbErr::Custom(format!(
            "credential {} already admits certificates named {identity:?}: revoke it first \
             (conveyor keys revoke {})",
            row.id, row.id
        )));
    }
    let revoked = Credentials::find()
        .filter(C::CertIdentity.eq(identity))
        .filter(C::RevokedMs.is_not_null())
        .all(db)
        .await?;
    for row in revoked {
        let mut row = row.into_active_model();
        if row.name.as_ref().is_empty() {
            row.name = Set(format!("cert {identity}"));
        }
        row.cert_identity = Set(None);
        row.update(db).await?;
    }
    Ok(())
}

/// Marks a credential revoked; false when there is no such credential or it already was.
pub async fn revoke(db: &DatabaseConnection, id: &str) -> Result<bool, DbErr> {
    let result = Credentials::update_many()
        .col_expr(C::RevokedMs, Expr::value(now_ms()))
        .filter(C::Id.eq(id))
        .filter(C::RevokedMs.is_null())
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Whether any credential can still be used (the server refuses to start secured without one).
pub async fn any_usable(db: &DatabaseConnection) -> Result<bool, DbErr> {
    let now = now_ms();
    let usable = Credentials::find()
        .filter(C::RevokedMs.is_null())
        .filter(
            Condition::any()
                .add(C::ExpiresMs.is_null())
                .add(C::ExpiresMs.gt(now)),
        )
        .count(db)
        .await?;
    Ok(usable > 0)
}

/// Tells every replica to forget `id` now. Best effort: a replica that misses it stops trusting
/// its copy within `CACHE_FOR`.
pub async fn announce_revoked(redis_url: &str, id: &str) -> Result<(), fred::error::Error> {
    let client =
        fred::prelude::Builder::from_config(fred::prelude::Config::from_url(redis_url)?).build()?;
    client.init().await?;
    let published: Result<i64, _> = client.publish(REVOKED_CHANNEL, id).await;
    let _ = client.quit().await;
    published.map(|_| ())
}

/// The role a row grants, unless it is revoked or expired.
fn principal(row: &Model) -> Result<Principal, Error> {
    if row.revoked_ms.is_some() {
        return Err(Error::Unauthenticated(format!(
            "credential {} was revoked",
            row.id
        )));
    }
    if row.expires_ms.is_some_and(|at| at <= now_ms()) {
        return Err(Error::Unauthenticated(format!(
            "credential {} has expired",
            row.id
        )));
    }
    let role = match row.kind.as_str() {
        "worker" => Role::Worker(Queues::parse(&row.queues).map_err(Error::Unauthenticated)?),
        _ => Role::Client(Scopes::parse_known(&row.scopes)),
    };
    Ok(Principal {
        tenant: row.tenant.clone(),
        role,
        credential: row.id.clone(),
    })
}

struct Cached {
    row: Arc<Model>,
    at: Instant,
}

/// The credential rows a replica has read lately.
#[derive(Clone)]
pub struct Keys {
    db: DatabaseConnection,
    /// By key id, or `cert:<identity>`.
    cache: Arc<Mutex<HashMap<String, Cached>>>,
}

impl Keys {
    pub fn new(db: DatabaseConnection) -> Keys {
        Keys {
            db,
            cache: Arc::default(),
        }
    }

    /// The caller holding `token` (a `cvk_` key or a `cvw_` worker token).
    pub async fn verify(&self, token: &str) -> Result<Principal, Error> {
        let unknown = || Error::Unauthenticated("unknown API key".into());
        let (kind, id, secret) = parts(token).ok_or_else(unknown)?;
        let row = self
            .row(id.to_string(), C::Id.eq(id))
            .await?
            .ok_or_else(unknown)?;
        let stored = row.secret_hash.as_deref().unwrap_or_default();
        if row.kind != kind || !same(&hash(secret), stored) {
            return Err(unknown());
        }
        principal(&row)
    }

    /// The caller presenting a client certificate named `identity`.
    pub async fn by_certificate(&self, identity: &str) -> Result<Principal, Error> {
        let row = self
            .row(format!("cert:{identity}"), C::CertIdentity.eq(identity))
            .await?
            .ok_or_else(|| {
                Error::Unauthenticated(format!(
                    "no credential admits the client certificate {identity:?}"
                ))
            })?;
        principal(&row)
    }

    async fn row(
        &self,
        key: String,
        filter: sea_orm::sea_query::SimpleExpr,
    ) -> Result<Option<Arc<Model>>, Error> {
        if let Some(hit) = self.cache.lock().expect("not poisoned").get(&key)
            && hit.at.elapsed() < CACHE_FOR
        {
            return Ok(Some(hit.row.clone()));
        }
        let row = Credentials::find()
            .filter(filter)
            .one(&self.db)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "reading credentials failed");
                Error::Unavailable(e.to_string())
            })?;
        // Only rows that exist are kept, so the cache holds at most one entry per credential.
        let row = row.map(Arc::new);
        if let Some(row) = &row {
            let at = Instant::now();
            let mut cache = self.cache.lock().expect("not poisoned");
            cache.insert(
                key,
                Cached {
                    row: row.clone(),
                    at,
                },
            );
        }
        Ok(row)
    }

    /// Forgets what was read of credential `id`.
    pub fn forget(&self, id: &str) {
        let mut cache = self.cache.lock().expect("not poisoned");
        cache.retain(|_, cached| cached.row.id != id);
    }

    /// Listens for revocations until the subscriber quits; after a reconnect (announcements may
    /// have been missed) everything is read afresh.
    pub async fn follow(self, subscriber: SubscriberClient) {
        let mut messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        if let Err(e) = subscriber.subscribe(REVOKED_CHANNEL).await {
            tracing::warn!(error = %e, "cannot follow key revocations; they take up to {CACHE_FOR:?}");
        }
        loop {
            tokio::select! {
                message = messages.recv() => match message {
                    Ok(m) if m.channel == REVOKED_CHANNEL => {
                        if let Some(id) = m.value.as_str() {
                            self.forget(&id);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.clear(),
                    Err(_) => return,
                },
                reconnect = reconnects.recv() => {
                    if reconnect.is_err() { return; }
                    self.clear();
                }
            }
        }
    }

    fn clear(&self) {
        self.cache.lock().expect("not poisoned").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_recognised_and_compared_in_full() {
        assert!(looks_like_key("cvk_0123456789abcdef_00") && looks_like_key("cvw_x"));
        assert!(!looks_like_key("eyJhbGciOi.x.y"));
        assert!(same(&hash("s"), &hash("s")) && !same(&hash("s"), &hash("t")));
        assert!(!same("abc", "abcd"));
    }

    #[test]
    fn the_hash_kept_is_lower_case_hex_of_sha256() {
        // Stored hashes were written in this form; a different one would lock every key out.
        assert_eq!(
            hash("s"),
            "043a718774c572bd8a25adbeb1bfcd5c0256ae11cecf9f9c3f925d0e52beaf89"
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
