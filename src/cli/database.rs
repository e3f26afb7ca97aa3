//! `conveyor migrate` and `conveyor cleanup`: database chores that need no running server.

use std::process::ExitCode;
use std::time::Duration;

use super::Outcome;
use crate::history::{self, Scope};
use crate::retention;

pub async fn migrate(url: &str) -> Outcome {
    let db = history::connect(url).await?;
    history::migrate(&db).await?;
    println!("schema up to date");
    Ok(ExitCode::SUCCESS)
}

pub async fn cleanup(url: &str, older_than: Duration) -> Outcome {
    let store = history::Store::open(url, history::Options::default()).await?;
    let deleted = store
        .cleanup(retention::cutoff(older_than), retention::BATCH, &Scope::All)
        .await?;
    println!("deleted {deleted} finished jobs");
    Ok(ExitCode::SUCCESS)
}
