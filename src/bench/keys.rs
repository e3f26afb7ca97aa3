//! `conveyor bench --blocked-keys`: end-to-end throughput of jobs without a limit key in a
//! queue that also holds 1,000 blocked limit keys (500 at their rate, 500 at their concurrency,
//! each with jobs waiting), between two runs in queues with no limited jobs at all (the same
//! key limits, one server).

use std::time::Instant;

use serde_json::{Value, json};

use super::stats::{rate, round};
use super::submit::{CHUNK, batches};
use super::workers::{Spec, Worker};
use super::{Bench, print_table, redis, suite, usage, within};
use crate::cli::{self, Error};
use crate::proto;

/// The server's key limits (CONVEYOR_KEY_LIMITS), the same for the three queues.
pub const LIMITS: &str = "bench-keys acct-r:* rate=1/1h;bench-keys acct-c:* concurrency=1;\
    bench-plain acct-r:* rate=1/1h;bench-plain acct-c:* concurrency=1;\
    bench-plain-again acct-r:* rate=1/1h;bench-plain-again acct-c:* concurrency=1";
/// Blocked keys of each kind.
const KEYS: u64 = 500;
/// Jobs waiting behind each blocked key.
const WAITING_PER_KEY: u64 = 10;

pub async fn run(args: &super::BenchArgs) -> cli::Outcome {
    let mut args = args.clone();
    args.database = Some("none".into());
    let lines = suite(&args, false).await?;
    print_table(&lines);
    Ok(super::outcome(&lines))
}

pub async fn scenarios(b: &mut Bench) {
    let r = unlimited(b, "bench-plain").await;
    b.emit("unlimited_jobs_no_blocked_keys", r);
    let r = async {
        // The holder's runs keep the concurrency keys full until the measurement is over.
        let (setup, _holder) = block(b, "bench-keys").await?;
        let mut figures = unlimited(b, "bench-keys").await?;
        figures["blocked_keys"] = json!(2 * KEYS);
        figures["jobs_waiting_behind_them"] = json!(2 * KEYS * WAITING_PER_KEY);
        figures["setup_s"] = json!(round(setup, 1));
        figures["still_waiting_after"] = json!(waiting(b, "bench-keys").await?);
        Ok(figures)
    }
    .await;
    b.emit("unlimited_jobs_1000_blocked_keys", r);
    // Once more without: the first run also warms the server and Redis up, so the order alone
    // moves the figures; the difference that matters is against both.
    let r = unlimited(b, "bench-plain-again").await;
    b.emit("unlimited_jobs_no_blocked_keys_again", r);
}

/// `n` jobs without a key through one worker process, produced in batches while it runs.
async fn unlimited(b: &Bench, queue: &str) -> Result<Value, Error> {
    let n = b.args.jobs;
    let mut worker = b.worker(Spec::new(queue, b.args.concurrency, n)).await?;
    redis::reset(b.redis_port).await.map_err(usage)?;
    let start = Instant::now();
    within(super::throughput::limit(n), "unlimited jobs", async {
        batches(&b.jobs, queue, n, 1, false).await?;
        worker.done().await
    })
    .await?;
    let elapsed = start.elapsed();
    let stats = redis::commandstats(b.redis_port).await.map_err(usage)?;
    Ok(json!({
        "jobs": n, "concurrency": b.args.concurrency, "jobs_per_s": rate(n, elapsed),
        "redis_commands_per_job": round(stats.values().sum::<u64>() as f64 / n as f64, 2),
    }))
}

/// Blocks 1,000 keys of `queue`: 500 whose one run a worker holds (concurrency 1), 500 that
/// spent their rate (one lease an hour); then queues jobs behind each. Returns its seconds,
/// and the worker holding the runs.
async fn block(b: &Bench, queue: &str) -> Result<(f64, Worker), Error> {
    let start = Instant::now();
    // A worker that holds every job it gets for an hour: one run of each concurrency key.
    let holding = Spec {
        progress: 1,
        progress_gap_ms: 3_600_000,
        stamp: true,
        ..Spec::new(queue, KEYS as u32, u64::MAX / 2)
    };
    let mut holder = b.worker(holding).await?;
    submit_keyed(b, queue, "acct-c", 1).await?;
    for _ in 0..KEYS {
        within(super::throughput::limit(KEYS), "the held runs", async {
            holder
                .received
                .recv()
                .await
                .ok_or_else(|| usage("the holder died"))
        })
        .await?;
    }
    // One run of each rate key, done at once: each key's rate is spent for the hour.
    let mut primer = b.worker(Spec::new(queue, 50, KEYS)).await?;
    submit_keyed(b, queue, "acct-r", 1).await?;
    within(
        super::throughput::limit(KEYS),
        "the rate keys' first runs",
        primer.done(),
    )
    .await?;
    drop(primer);
    for prefix in ["acct-c", "acct-r"] {
        submit_keyed(b, queue, prefix, WAITING_PER_KEY).await?;
    }
    Ok((start.elapsed().as_secs_f64(), holder))
}

/// `per_key` jobs for each of the keys `<prefix>:0..KEYS`.
async fn submit_keyed(b: &Bench, queue: &str, prefix: &str, per_key: u64) -> Result<(), Error> {
    let all: Vec<proto::SubmitJobRequest> = (0..per_key)
        .flat_map(|round| {
            (0..KEYS).map(move |key| proto::SubmitJobRequest {
                queue: queue.to_string(),
                payload: format!("{{\"round\":{round}}}").into_bytes(),
                tier: proto::Tier::Free as i32,
                limit_key: format!("{prefix}:{key}"),
                ..Default::default()
            })
        })
        .collect();
    for chunk in all.chunks(CHUNK as usize) {
        let mut jobs = b.jobs.clone();
        jobs.submit_jobs(proto::SubmitJobsRequest {
            jobs: chunk.to_vec(),
        })
        .await?;
    }
    Ok(())
}

/// Jobs of `queue` still waiting behind their keys (none may have slipped through).
async fn waiting(b: &Bench, queue: &str) -> Result<u64, Error> {
    let script = format!(
        "local n = 0 for _, k in ipairs(redis.call('KEYS', 'cv:{{{queue}}}:kp:*')) do \
         n = n + redis.call('ZCARD', k) end \
         for t = 1, 4 do n = n + redis.call('ZCARD', 'cv:{{{queue}}}:ready:' .. t) end return n"
    );
    let reply = redis::command(b.redis_port, &["EVAL", &script, "0"])
        .await
        .map_err(usage)?;
    reply
        .trim_start_matches(':')
        .trim()
        .parse()
        .map_err(|_| usage(format!("counting waiting jobs: {reply:?}")))
}
