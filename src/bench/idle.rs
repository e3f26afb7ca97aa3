//! What an idle deployment costs Redis: 4 worker processes connected to one queue of one
//! server and 10 watches open on jobs that wait in a queue nobody serves, for `--idle-seconds`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_stream::StreamExt;

use super::stats::round;
use super::submit::job;
use super::workers::{Spec, start_many};
use super::{Bench, redis, usage};
use crate::cli::Error;
use crate::proto;

const WORKERS: usize = 4;
const WATCHES: u64 = 10;
/// Time for the workers' connects and the watches to pass before counting. A full run waits
/// one sweep interval more, so the queues the earlier scenarios used have had their last sweep
/// (one each, a minute after their last activity) and the count is the steady state.
const SETTLE: Duration = Duration::from_secs(2);
const SWEEP: Duration = Duration::from_secs(60);

pub async fn commands(b: &Bench) -> Result<Value, Error> {
    let spec = Spec::new("bench-idle", b.args.concurrency, u64::MAX);
    let _workers = start_many(&b.server.addr, b.worker_key.as_deref(), WORKERS, spec).await?;
    let mut watches = Vec::new();
    for i in 0..WATCHES {
        let mut jobs = b.jobs.clone();
        let submitted = jobs.submit_job(job("bench-idle-watched", i, false)).await?;
        let job_id = submitted.into_inner().job.unwrap_or_default().id;
        let request = proto::WatchJobRequest {
            job_id,
            after_seq: None,
        };
        let mut stream = jobs.watch_job(request).await?.into_inner();
        stream.next().await.transpose()?; // the snapshot
        watches.push(stream);
    }
    let settle = if b.args.smoke { SETTLE } else { SETTLE + SWEEP };
    tokio::time::sleep(settle).await;
    redis::reset(b.redis_port).await.map_err(usage)?;
    let (server_before, _) = b.cpu_ms().await?;
    tokio::time::sleep(Duration::from_secs(b.args.idle_seconds)).await;
    let (server_after, _) = b.cpu_ms().await?;
    let stats = redis::commandstats(b.redis_port).await.map_err(usage)?;
    drop(watches);
    let per_minute = 60.0 / b.args.idle_seconds.max(1) as f64;
    let total: u64 = stats.values().sum();
    let by_command: BTreeMap<&String, f64> = stats
        .iter()
        .map(|(k, v)| (k, round(*v as f64 * per_minute, 1)))
        .collect();
    Ok(json!({
        "workers": WORKERS, "queues": 1, "servers": 1, "watches": WATCHES,
        "seconds": b.args.idle_seconds, "settled_seconds": settle.as_secs(),
        "commands_per_min": round(total as f64 * per_minute, 1), "by_command": by_command,
        "server_cpu_ms_per_min": round((server_after - server_before) * per_minute, 1),
    }))
}
