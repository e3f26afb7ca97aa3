//! Who is calling and what they may do. A credential (API key, worker token, JWT, client
//! certificate) becomes a `Principal`; the `Layer` refuses a request before any handler runs
//! unless its principal may call that method. Handlers only read the principal's tenant (and a
//! worker's queues): the tenant never comes from a request field.

mod cert;
pub mod credential;
pub mod jwt;
pub mod keys;
mod layer;
mod scope;

use std::sync::Arc;

pub use layer::Layer;
pub use scope::{Need, Scope, Scopes, need};

/// The tenant of every caller while authentication is off.
pub const DEFAULT_TENANT: &str = "default";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub role: Role,
    /// Which credential it came from (a key id, `jwt:<sub>`, `cert:<name>`), for logs.
    pub credential: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Authentication is off (`conveyor dev`, `serve --insecure`): everything is allowed.
    Anyone,
    /// A backend or a browser: submits, reads, watches, cancels, as its scopes say.
    Client(Scopes),
    /// A worker node: may only connect as a worker, for these queues.
    Worker(Queues),
}

/// The queues a worker credential may serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Queues {
    Any,
    Only(Vec<String>),
}

impl Queues {
    /// `*` for any queue, else a comma-separated list.
    pub fn parse(text: &str) -> Result<Queues, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(Queues::Any);
        }
        let queues: Vec<String> = text
            .split(',')
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty())
            .collect();
        if queues.is_empty() {
            return Err("name the queues a worker may serve (comma-separated), or *".into());
        }
        Ok(Queues::Only(queues))
    }

    pub fn allows(&self, queue: &str) -> bool {
        match self {
            Queues::Any => true,
            Queues::Only(queues) => queues.iter().any(|q| q == queue),
        }
    }
}

impl std::fmt::Display for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Queues::Any => f.write_str("*"),
            Queues::Only(queues) => f.write_str(&queues.join(",")),
        }
    }
}

impl Principal {
    /// The caller while authentication is off.
    pub fn anyone() -> Principal {
        Principal {
            tenant: DEFAULT_TENANT.to_string(),
            role: Role::Anyone,
            credential: "none".to_string(),
        }
    }

    /// Whether this caller may do what `need` asks; the error says what is missing.
    pub fn check(&self, need: Need, method: &str) -> Result<(), Error> {
        match (need, &self.role) {
            (Need::Nothing | Need::Known, _) | (_, Role::Anyone) => Ok(()),
            (Need::Client(scope), Role::Client(scopes)) if scopes.allows(scope) => Ok(()),
            (Need::Client(scope), Role::Client(_)) => Err(Error::Denied(format!(
                "{method} needs the `{scope}` scope, which this credential does not have"
            ))),
            (Need::Client(_), Role::Worker(_)) => Err(Error::Denied(format!(
                "a worker token may only connect as a worker, not call {method}"
            ))),
            (Need::Worker, Role::Worker(_)) => Ok(()),
            (Need::Worker, Role::Client(_)) => Err(Error::Denied(
                "a client key cannot connect as a worker; create a worker token \
                 (`conveyor keys create --worker --queues ...`)"
                    .into(),
            )),
        }
    }

    /// Whether this caller may take jobs from `queue` as a worker.
    pub fn may_serve(&self, queue: &str) -> bool {
        match &self.role {
            Role::Anyone => true,
            Role::Worker(queues) => queues.allows(queue),
            Role::Client(_) => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no credentials: send `authorization: Bearer <key or token>` (keys come from `conveyor keys create`)"
    )]
    Missing,
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
    #[error("cannot check credentials now; retry shortly")]
    Unavailable(String),
}

/// How a server tells who is calling.
#[derive(Clone)]
pub enum Authenticator {
    /// Everyone is `Principal::anyone()`.
    Off,
    On {
        /// API keys, worker tokens and certificate identities (needs the database).
        keys: Option<keys::Keys>,
        /// OIDC bearer tokens.
        jwt: Option<Arc<jwt::Verifier>>,
    },
}

impl Authenticator {
    /// Who sent a request with this bearer token and this client certificate (DER).
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        certificate: Option<&[u8]>,
    ) -> Result<Principal, Error> {
        let Authenticator::On { keys, jwt } = self else {
            return Ok(Principal::anyone());
        };
        if let Some(token) = bearer {
            if keys::looks_like_key(token) {
                let keys = keys.as_ref().ok_or_else(|| {
                    Error::Unauthenticated(
                        "API keys need the database; this server has none".into(),
                    )
                })?;
                return keys.verify(token).await;
            }
            return match jwt {
                Some(jwt) => jwt.verify(token).await,
                None => Err(Error::Unauthenticated(
                    "not a Conveyor key (cvk_... or cvw_...), and no JWT issuer is configured"
                        .into(),
                )),
            };
        }
        if let (Some(der), Some(keys)) = (certificate, keys) {
            let identity = cert::identity(der).ok_or_else(|| {
                Error::Unauthenticated("the client certificate names no identity".into())
            })?;
            return keys.by_certificate(&identity).await;
        }
        Err(Error::Missing)
    }
}
