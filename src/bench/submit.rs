//! Submit throughput: SubmitJob one call at a time, 50 calls in flight, and SubmitJobs in
//! batches of 1,000; plus the submit helpers the other scenarios use.

use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::stats::{latencies, rate};
use super::{Bench, usage};
use crate::cli::Error;
use crate::proto;

/// Jobs per SubmitJobs call, the most the server takes (and BullMQ's harness's addBulk chunk).
pub const CHUNK: u64 = 1000;

pub fn job(queue: &str, i: u64, mixed: bool) -> proto::SubmitJobRequest {
    let (tier, priority) = if mixed {
        ((i % 4) as i32 + 1, Some((i * 7 % 9) as i32 + 1))
    } else {
        (1, None)
    };
    proto::SubmitJobRequest {
        queue: queue.into(),
        payload: b"{}".to_vec(),
        tier,
        priority,
        ..Default::default()
    }
}

/// Submits `n` jobs with single SubmitJob calls, `in_flight` outstanding; returns each call's
/// latency in ms.
pub async fn one_by_one(
    jobs: &crate::client::Jobs,
    queue: &str,
    n: u64,
    in_flight: usize,
    mixed: bool,
) -> Result<Vec<f64>, Error> {
    let calls = futures_util::stream::iter(0..n).map(|i| {
        let mut jobs = jobs.clone();
        let request = job(queue, i, mixed);
        async move {
            let sent = Instant::now();
            jobs.submit_job(request).await?;
            Ok::<_, Error>(sent.elapsed().as_secs_f64() * 1000.0)
        }
    });
    let mut results = calls.buffer_unordered(in_flight);
    let mut latencies = Vec::with_capacity(n as usize);
    while let Some(r) = results.next().await {
        latencies.push(r?);
    }
    Ok(latencies)
}

/// Submits `n` jobs with SubmitJobs calls of up to `CHUNK`, `in_flight` calls outstanding;
/// returns the new jobs' ids in submit order.
pub async fn batches(
    jobs: &crate::client::Jobs,
    queue: &str,
    n: u64,
    in_flight: usize,
    mixed: bool,
) -> Result<Vec<String>, Error> {
    let calls = futures_util::stream::iter((0..n).step_by(CHUNK as usize)).map(|first| {
        let batch = (first..n.min(first + CHUNK))
            .map(|i| job(queue, i, mixed))
            .collect::<Vec<_>>();
        submit_batch(jobs.clone(), batch)
    });
    let mut results = calls.buffered(in_flight);
    let mut ids = Vec::with_capacity(n as usize);
    while let Some(r) = results.next().await {
        ids.extend(r?);
    }
    Ok(ids)
}

/// One SubmitJobs call; the new jobs' ids, or an error unless every job has its result.
pub async fn submit_batch(
    mut jobs: crate::client::Jobs,
    batch: Vec<proto::SubmitJobRequest>,
) -> Result<Vec<String>, Error> {
    let sent = batch.len();
    let results = jobs
        .submit_jobs(proto::SubmitJobsRequest { jobs: batch })
        .await?
        .into_inner()
        .results;
    if results.len() != sent {
        let n = results.len();
        return Err(usage(format!("SubmitJobs: {sent} jobs sent, {n} results")));
    }
    Ok(results
        .into_iter()
        .map(|r| r.job.unwrap_or_default().id)
        .collect())
}

pub async fn one_at_a_time(b: &Bench) -> Result<Value, Error> {
    let n = (b.args.jobs / 4).max(1);
    let start = Instant::now();
    let ms = one_by_one(&b.jobs, "bench-submit-1", n, 1, false).await?;
    let mut figures = json!({"jobs": n, "jobs_per_s": rate(n, start.elapsed())});
    figures["latency_ms"] = Value::Object(latencies(ms));
    Ok(figures)
}

pub async fn in_flight(b: &Bench) -> Result<Value, Error> {
    let n = b.args.jobs;
    let start = Instant::now();
    let ms = one_by_one(&b.jobs, "bench-submit-50", n, 50, false).await?;
    let mut figures = json!({"jobs": n, "jobs_per_s": rate(n, start.elapsed())});
    figures["latency_ms"] = Value::Object(latencies(ms));
    Ok(figures)
}

/// One batch after the other, as BullMQ's harness awaits each addBulk.
pub async fn batches_of_1000(b: &Bench) -> Result<Value, Error> {
    let n = b.args.jobs;
    let start = Instant::now();
    batches(&b.jobs, "bench-submit-batch", n, 1, false).await?;
    Ok(json!({
        "jobs": n, "batch": CHUNK, "batches_in_flight": 1, "jobs_per_s": rate(n, start.elapsed()),
    }))
}
