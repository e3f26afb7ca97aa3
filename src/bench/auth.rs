//! `conveyor bench --auth`: the submit scenarios on SQLite without authentication and with an
//! API key, to show what checking credentials on every call costs.

use serde_json::json;

use super::{Error, print_table, suite, usage};
use crate::auth::keys::{self, NewCredential};
use crate::auth::{Queues, Role, Scopes};
use crate::cli;

/// The bench's credentials, made in the server's database before it starts.
pub struct Keys {
    /// The client's API key (`cvk_...`).
    pub client: String,
    /// The bench workers' token (`cvw_...`), for any queue.
    pub worker: String,
}

pub async fn keys(database_url: &str) -> Result<Keys, Error> {
    let db = crate::history::connect(database_url).await?;
    crate::history::migrate(&db).await?;
    let make = async |role: Role| {
        let new = NewCredential {
            tenant: "bench".into(),
            role,
            name: "bench".into(),
            expires_in: None,
            cert_identity: None,
        };
        let (_, token) = keys::create(&db, new).await.map_err(usage)?;
        token.ok_or_else(|| usage("a key without a token"))
    };
    let scopes = Scopes::parse("submit,read,watch,cancel").map_err(usage)?;
    Ok(Keys {
        client: make(Role::Client(scopes)).await?,
        worker: make(Role::Worker(Queues::Any)).await?,
    })
}

pub async fn run(args: &super::BenchArgs) -> cli::Outcome {
    let mut args = args.clone();
    args.database = Some("sqlite".into());
    let mut all = Vec::new();
    for (with_key, label) in [(false, "no auth"), (true, "API key")] {
        for mut line in suite(&args, with_key).await? {
            let name = format!("{} [{label}]", line["scenario"].as_str().unwrap_or("?"));
            line["scenario"] = json!(name);
            all.push(line);
        }
    }
    print_table(&all);
    Ok(super::outcome(&all))
}
