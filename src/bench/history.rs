//! `bench --history`: the submit scenarios and end to end with no database, with SQLite and with
//! PostgreSQL, each on a fresh Redis, server and database, so the cost of the durable write at
//! submit (and of the write-behind) shows beside the Redis-only figures.

use std::path::Path;

use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use super::{Bench, print_table, suite, usage};
use crate::cli::{self, Error};

/// The database a bench run's server uses; a PostgreSQL one is made for the run and dropped.
pub enum Database {
    None,
    Sqlite(String),
    Postgres {
        admin: String,
        name: String,
        url: String,
    },
}

/// `none`, `sqlite` (a file under `dir`), or a `postgres://` server URL.
pub async fn database(spec: &str, dir: &Path) -> Result<Database, Error> {
    match spec {
        "none" => Ok(Database::None),
        "sqlite" => {
            std::fs::create_dir_all(dir).map_err(usage)?;
            let file = dir.join("conveyor.db");
            Ok(Database::Sqlite(format!(
                "sqlite://{}?mode=rwc",
                file.display()
            )))
        }
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let name = format!("conveyor_bench_{}", uuid::Uuid::now_v7().simple());
            let base = url.rsplit_once('/').map(|(base, _)| base).unwrap_or(url);
            let admin = crate::history::connect(url).await?;
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .map_err(usage)?;
            Ok(Database::Postgres {
                admin: url.to_string(),
                url: format!("{base}/{name}"),
                name,
            })
        }
        other => Err(usage(format!(
            "--database {other:?}: use none, sqlite or a postgres:// URL"
        ))),
    }
}

impl Database {
    pub fn url(&self) -> &str {
        match self {
            Database::None => "none",
            Database::Sqlite(url) => url,
            Database::Postgres { url, .. } => url,
        }
    }

    /// CPU ms used so far by the PostgreSQL backends now connected to the run's database, when
    /// that server runs on this machine (as the bench's default does); `None` otherwise, and
    /// for SQLite, whose work is the server's own. The server's pool keeps its connections, so
    /// two readings around a scenario tell what the database did for it (without PostgreSQL's
    /// background writers, which serve every database).
    pub async fn cpu_ms(&self) -> Option<f64> {
        let Database::Postgres { admin, name, .. } = self else {
            return None;
        };
        let db = crate::history::connect(admin).await.ok()?;
        let rows = db
            .query_all_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT pid FROM pg_stat_activity WHERE datname = $1",
                [name.as_str().into()],
            ))
            .await
            .ok()?;
        let pids: Vec<i32> = rows
            .iter()
            .filter_map(|r| r.try_get_by_index(0).ok())
            .collect();
        let used: Vec<f64> = pids
            .iter()
            .filter_map(|pid| super::proc::cpu_ms(*pid as u32).ok())
            .collect();
        (!used.is_empty()).then(|| used.iter().sum())
    }

    /// Drops a database made for the run.
    pub async fn drop(self) {
        if let Database::Postgres { admin, name, .. } = self
            && let Ok(db) = crate::history::connect(&admin).await
        {
            let _ = db
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

/// What each database's run measures.
/// The submit scenarios, and end to end when `end_to_end` (its workers need no credentials).
pub async fn scenarios(b: &mut Bench, end_to_end: bool) {
    let r = super::submit::one_at_a_time(b).await;
    b.emit("submit_one_at_a_time", r);
    let r = super::submit::in_flight(b).await;
    b.emit("submit_50_in_flight", r);
    let r = super::submit::batches_of_1000(b).await;
    b.emit("submit_batch_1000", r);
    if end_to_end {
        let r = super::throughput::end_to_end(b, false).await;
        b.emit("end_to_end", r);
    }
}

pub async fn run(args: &super::BenchArgs) -> cli::Outcome {
    let mut all = Vec::new();
    for database in ["none", "sqlite", args.postgres.as_str()] {
        let label = database.split("://").next().unwrap_or(database);
        let mut run = args.clone();
        run.database = Some(database.to_string());
        let lines = suite(&run, false).await?;
        // Each line was printed as it came; the table below names the database.
        for mut line in lines {
            line["database"] = json!(label);
            all.push(line);
        }
    }
    let named: Vec<Value> = all
        .into_iter()
        .map(|mut l| {
            let name = format!(
                "{} [{}]",
                l["scenario"].as_str().unwrap_or("?"),
                l["database"].as_str().unwrap_or("?")
            );
            l["scenario"] = json!(name);
            l.as_object_mut().map(|o| o.remove("database"));
            l
        })
        .collect();
    print_table(&named);
    Ok(super::outcome(&named))
}
