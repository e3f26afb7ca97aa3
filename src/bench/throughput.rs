//! End-to-end throughput (producing while a worker process completes) and the drain of a
//! preloaded queue, with what each job costs: Redis commands, server and Redis CPU, memory.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::stats::{rate, round};
use super::submit::{CHUNK, batches};
use super::workers::Spec;
use super::{Bench, proc, redis, usage, within};
use crate::cli::Error;

/// SubmitJobs calls outstanding while producing end to end: one, as BullMQ's harness awaits
/// each addBulk before the next.
const BATCHES_IN_FLIGHT: usize = 1;
/// Jobs of the untimed pass that tells client-issued commands from those run inside scripts.
const AUDIT_JOBS: u64 = 2000;

/// How long `jobs` jobs may take end to end before the scenario fails: far slower than any
/// run so far, but not forever.
pub fn limit(jobs: u64) -> Duration {
    Duration::from_secs(60 + jobs / 100)
}

/// CPU ms per 10,000 jobs from two (server, redis) readings.
fn per_10k(before: (f64, f64), after: (f64, f64), jobs: u64) -> (f64, f64) {
    let scale = 10_000.0 / jobs as f64;
    (
        round((after.0 - before.0) * scale, 1),
        round((after.1 - before.1) * scale, 1),
    )
}

/// PostgreSQL's CPU ms per 10,000 jobs from two readings (`null` when it is not measured).
fn database_per_10k(before: Option<f64>, after: Option<f64>, jobs: u64) -> Option<f64> {
    Some(round((after? - before?) * 10_000.0 / jobs as f64, 1))
}

pub async fn end_to_end(b: &Bench, mixed: bool) -> Result<Value, Error> {
    let queue = if mixed {
        "bench-e2e-mixed"
    } else {
        "bench-e2e"
    };
    let (n, port) = (b.args.jobs, b.redis_port);
    let mut worker = b.worker(Spec::new(queue, b.args.concurrency, n)).await?;
    // Without the reset (an old kernel), the peak is the server's since it started.
    let peak_scope = match proc::reset_peak(b.server.pid) {
        Ok(()) => "scenario",
        Err(_) => "server_start",
    };
    redis::reset(port).await.map_err(usage)?;
    let cpu_before = b.cpu_ms().await?;
    let db_before = b.database.cpu_ms().await;
    let start = Instant::now();
    within(limit(n), "end to end", async {
        batches(&b.jobs, queue, n, BATCHES_IN_FLIGHT, mixed).await?;
        worker.done().await
    })
    .await?;
    let elapsed = start.elapsed();
    let (server_cpu, redis_cpu) = per_10k(cpu_before, b.cpu_ms().await?, n);
    let database_cpu = database_per_10k(db_before, b.database.cpu_ms().await, n);
    let stats = redis::commandstats(port).await.map_err(usage)?;
    let memory = b.server.memory()?;
    drop(worker);
    let per_job = |calls: u64| round(calls as f64 / n as f64, 2);
    let scripts: u64 = stats
        .iter()
        .filter(|(k, _)| k.starts_with("eval") || k.starts_with("fcall"))
        .map(|(_, v)| v)
        .sum();
    let by_command: BTreeMap<&String, f64> = stats
        .iter()
        .map(|(k, v)| (k, round(*v as f64 / n as f64, 3)))
        .collect();
    let audited = n.min(AUDIT_JOBS);
    let client = client_commands(b, &format!("{queue}-audit"), audited, mixed).await?;
    Ok(json!({
        "jobs": n, "concurrency": b.args.concurrency, "batch": CHUNK,
        "batches_in_flight": BATCHES_IN_FLIGHT, "jobs_per_s": rate(n, elapsed),
        "redis_commands_per_job": per_job(stats.values().sum()),
        "redis_script_calls_per_job": per_job(scripts),
        "redis_by_command_per_job": by_command,
        "redis_client_commands_per_job": round(client as f64 / audited as f64, 2),
        "redis_client_commands_counted_over_jobs": audited,
        "server_cpu_ms_per_10k_jobs": server_cpu,
        "redis_cpu_ms_per_10k_jobs": redis_cpu,
        "database_cpu_ms_per_10k_jobs": database_cpu,
        "server_peak_rss_mb": round(memory.peak_kb as f64 / 1024.0, 1),
        "server_peak_rss_since": peak_scope,
    }))
}

/// Commands the server sent to Redis (its round trips; a script call counts once) over an
/// untimed end-to-end pass watched with MONITOR, which would slow the timed one down.
async fn client_commands(b: &Bench, queue: &str, n: u64, mixed: bool) -> Result<u64, Error> {
    let mut worker = b.worker(Spec::new(queue, b.args.concurrency, n)).await?;
    let monitor = redis::monitor(b.redis_port).await.map_err(usage)?;
    within(limit(n), "end to end under MONITOR", async {
        batches(&b.jobs, queue, n, BATCHES_IN_FLIGHT, mixed).await?;
        worker.done().await
    })
    .await?;
    Ok(monitor.finish().await.map_err(usage)?.client)
}

/// A preloaded queue, then a worker process; timed from starting the worker.
pub async fn drain(b: &Bench) -> Result<Value, Error> {
    let (queue, n) = ("bench-drain", b.args.jobs);
    batches(&b.jobs, queue, n, BATCHES_IN_FLIGHT, false).await?;
    let cpu_before = b.cpu_ms().await?;
    let db_before = b.database.cpu_ms().await;
    let start = Instant::now();
    let mut worker = b.worker(Spec::new(queue, b.args.concurrency, n)).await?;
    within(limit(n), "drain", worker.done()).await?;
    let elapsed = start.elapsed();
    let (server_cpu, redis_cpu) = per_10k(cpu_before, b.cpu_ms().await?, n);
    let database_cpu = database_per_10k(db_before, b.database.cpu_ms().await, n);
    Ok(json!({
        "jobs": n, "concurrency": b.args.concurrency, "jobs_per_s": rate(n, elapsed),
        "server_cpu_ms_per_10k_jobs": server_cpu, "redis_cpu_ms_per_10k_jobs": redis_cpu,
        "database_cpu_ms_per_10k_jobs": database_cpu,
    }))
}
