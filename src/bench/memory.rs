//! Redis bytes per waiting job: `INFO memory`'s used_memory before and after SubmitJobs of
//! `--memory-jobs` small jobs (payload `{"i":N}`, as BullMQ's harness shapes its data) into a
//! queue no worker serves. BullMQ's side of the figure is `memory.mjs`.

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::stats::round;
use super::submit::{CHUNK, job, submit_batch};
use super::{Bench, redis, usage};
use crate::cli::Error;
use crate::proto;
use crate::scheduler::keys;

const QUEUE: &str = "bench-memory";

/// used_memory, in bytes.
async fn used_memory(port: u16) -> Result<u64, Error> {
    let info = redis::command(port, &["INFO", "memory"])
        .await
        .map_err(usage)?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| usage("INFO memory without used_memory"))
}

pub async fn waiting_jobs(b: &Bench) -> Result<Value, Error> {
    let n = b.args.memory_jobs;
    let request = |i: u64| proto::SubmitJobRequest {
        payload: format!("{{\"i\":{i}}}").into_bytes(),
        ..job(QUEUE, i, false)
    };
    // One job first, so the queue's own keys are not counted per job.
    b.jobs.clone().submit_job(request(u64::MAX)).await?;
    let before = used_memory(b.redis_port).await?;
    let calls = futures_util::stream::iter((0..n).step_by(CHUNK as usize)).map(|first| {
        let batch = (first..n.min(first + CHUNK)).map(request).collect();
        submit_batch(b.jobs.clone(), batch)
    });
    let mut calls = calls.buffer_unordered(4);
    while let Some(r) = calls.next().await {
        r?;
    }
    let after = used_memory(b.redis_port).await?;
    // Every job must be there, waiting, or the figure would divide by jobs that are not.
    let reply = redis::command(b.redis_port, &["ZCARD", &keys::all(QUEUE)])
        .await
        .map_err(usage)?;
    let held: u64 = reply.trim_start_matches(':').parse().unwrap_or(0);
    if held != n + 1 {
        return Err(usage(format!(
            "{} jobs in Redis after {n} were submitted; no figure",
            held.saturating_sub(1)
        )));
    }
    Ok(json!({
        "jobs": n, "used_memory_before": before, "used_memory_after": after,
        "bytes_per_job": round((after.saturating_sub(before)) as f64 / n as f64, 0),
    }))
}
