//! What an idle deployment costs Redis: 4 worker processes connected to one queue of one
//! server, no jobs, for `--idle-seconds`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::stats::round;
use super::workers::{Spec, start_many};
use super::{Bench, redis, usage};
use crate::cli::Error;

const WORKERS: usize = 4;
/// Time for the workers' connects and the server's first sweeps to pass before counting.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn commands(b: &Bench) -> Result<Value, Error> {
    let spec = Spec::new("bench-idle", b.args.concurrency, u64::MAX);
    let _workers = start_many(&b.server.addr, WORKERS, spec).await?;
    tokio::time::sleep(SETTLE).await;
    redis::reset(b.redis_port).await.map_err(usage)?;
    let (server_before, _) = b.cpu_ms().await?;
    tokio::time::sleep(Duration::from_secs(b.args.idle_seconds)).await;
    let (server_after, _) = b.cpu_ms().await?;
    let stats = redis::commandstats(b.redis_port).await.map_err(usage)?;
    let per_minute = 60.0 / b.args.idle_seconds.max(1) as f64;
    let total: u64 = stats.values().sum();
    let by_command: BTreeMap<&String, f64> = stats
        .iter()
        .map(|(k, v)| (k, round(*v as f64 * per_minute, 1)))
        .collect();
    Ok(json!({
        "workers": WORKERS, "queues": 1, "servers": 1, "seconds": b.args.idle_seconds,
        "commands_per_min": round(total as f64 * per_minute, 1), "by_command": by_command,
        "server_cpu_ms_per_min": round((server_after - server_before) * per_minute, 1),
    }))
}
