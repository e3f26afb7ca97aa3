//! `conveyor keys create|list|revoke`: credentials live in the database (DATABASE_URL), so no
//! server needs to run; a revocation is announced on Redis (REDIS_URL) so every server forgets
//! the key at once.

use std::process::ExitCode;
use std::time::Duration;

use super::{Error, Outcome};
use crate::auth::keys::{self, NewCredential};
use crate::auth::{Queues, Role, Scopes};
use crate::history;

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Where servers listen for revocations.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create an API key for a tenant (or, with --worker, a worker token); the token is printed
    /// once, only its hash is kept.
    Create(CreateArgs),
    /// List credentials (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a credential by id; servers refuse it at once.
    Revoke { id: String },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The tenant whose jobs the key submits and sees.
    #[arg(long)]
    pub tenant: String,
    /// What a client key may do: submit, read, watch, cancel, admin (comma-separated).
    #[arg(
        long,
        default_value = "submit,read,watch,cancel",
        conflicts_with = "worker"
    )]
    pub scopes: String,
    /// A worker token: may only connect as a worker, for --queues.
    #[arg(long, requires = "queues")]
    pub worker: bool,
    /// The queues a worker token may serve (comma-separated, or *).
    #[arg(long)]
    pub queues: Option<String>,
    /// A note saying who holds it.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Expire after, e.g. 90d.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub expires: Option<Duration>,
    /// Admit client certificates with this name (mTLS; the subject's CN, or else its first DNS
    /// or URI name) instead of making a key.
    #[arg(long)]
    pub cert: Option<String>,
}

pub async fn run(args: KeysArgs) -> Outcome {
    let db = history::connect(&args.database_url).await?;
    history::migrate(&db).await?;
    let db_err = |e: sea_orm::DbErr| Error::History(e.into());
    match args.command {
        KeysCommand::Create(c) => {
            let role = if c.worker {
                Role::Worker(
                    Queues::parse(c.queues.as_deref().unwrap_or_default()).map_err(Error::Usage)?,
                )
            } else {
                Role::Client(Scopes::parse(&c.scopes).map_err(Error::Usage)?)
            };
            if c.tenant.is_empty() || c.tenant.len() > 128 {
                return Err(Error::Usage("--tenant: 1..=128 bytes".into()));
            }
            let new = NewCredential {
                tenant: c.tenant,
                role,
                name: c.name,
                expires_in: c.expires,
                cert_identity: c.cert,
            };
            let (row, token) = keys::create(&db, new).await.map_err(|e| match e {
                // A refusal worded for the user, not a database error.
                sea_orm::DbErr::Custom(message) => Error::Usage(message),
                e => db_err(e),
            })?;
            eprintln!(
                "created {} credential {} for tenant {}",
                row.kind, row.id, row.tenant
            );
            match token {
                Some(token) => {
                    eprintln!("the token below is shown once; store it as a secret:");
                    println!("{token}");
                }
                None => println!("{}", row.id),
            }
        }
        KeysCommand::List { tenant } => {
            let rows = keys::list(&db, tenant.as_deref()).await.map_err(db_err)?;
            println!(
                "{:<16}  {:<6}  {:<16}  {:<28}  {:<24}  {:<20}  STATUS",
                "ID", "KIND", "TENANT", "SCOPES/QUEUES", "NAME", "CREATED"
            );
            let now = crate::scheduler::now_ms();
            for r in rows {
                let what = if r.kind == "worker" {
                    &r.queues
                } else {
                    &r.scopes
                };
                let what = match &r.cert_identity {
                    Some(cert) => format!("{what} (cert {cert})"),
                    None => what.clone(),
                };
                let status = match (r.revoked_ms, r.expires_ms) {
                    (Some(at), _) => format!("revoked {}", time(at)),
                    (None, Some(at)) if at <= now => format!("expired {}", time(at)),
                    (None, Some(at)) => format!("active until {}", time(at)),
                    (None, None) => "active".into(),
                };
                println!(
                    "{:<16}  {:<6}  {:<16}  {:<28}  {:<24}  {:<20}  {status}",
                    r.id,
                    r.kind,
                    r.tenant,
                    what,
                    r.name,
                    time(r.created_ms)
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !keys::revoke(&db, &id).await.map_err(db_err)? {
                return Err(Error::Usage(format!("no active credential {id}")));
            }
            match keys::announce_revoked(&args.redis_url, &id).await {
                Ok(()) => println!("revoked {id}"),
                Err(e) => eprintln!(
                    "revoked {id}; could not tell the servers through {} ({e}): they refuse it \
                     within 30 s",
                    args.redis_url
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn time(ms: i64) -> String {
    let t = prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: 0,
    };
    t.to_string()
}
