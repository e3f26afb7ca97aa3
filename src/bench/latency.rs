//! Latency from SubmitJob returning to the worker process receiving the job, with jobs sent
//! open loop (on a clock, not when the previous one returned) at `--rate`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::stats::latencies;
use super::submit::job;
use super::workers::Spec;
use super::{Bench, now_ns};
use crate::cli::Error;

/// How long, after the last submit, the jobs may take to reach the worker.
const DRAIN: Duration = Duration::from_secs(30);

pub async fn submit_to_worker(b: &Bench) -> Result<Value, Error> {
    let queue = "bench-latency";
    let total = b.args.rate * b.args.seconds;
    let mut worker = b
        .worker(Spec {
            stamp: true,
            ..Spec::new(queue, b.args.concurrency, total)
        })
        .await?;
    let (sent_tx, mut sent) = mpsc::unbounded_channel::<(String, u128)>();
    let mut ticker =
        tokio::time::interval(Duration::from_nanos(1_000_000_000 / b.args.rate.max(1)));
    for i in 0..total {
        ticker.tick().await;
        let (mut jobs, sent_tx) = (b.jobs.clone(), sent_tx.clone());
        let request = job(queue, i, false);
        tokio::spawn(async move {
            if let Ok(r) = jobs.submit_job(request).await {
                let _ = sent_tx.send((r.into_inner().job.unwrap_or_default().id, now_ns()));
            }
        });
    }
    drop(sent_tx);
    // Whatever arrived by then is reported, with its count.
    let _ = tokio::time::timeout(DRAIN, worker.done.recv()).await;
    let mut returned = HashMap::new();
    while let Ok(Some((id, ns))) = tokio::time::timeout(DRAIN, sent.recv()).await {
        returned.insert(id, ns);
    }
    let mut ms: Vec<f64> = Vec::new();
    while let Ok((id, ns)) = worker.received.try_recv() {
        if let Some(sent_ns) = returned.get(&id) {
            // The worker can get a job before its submitter reads the reply: that counts as 0.
            ms.push(ns.saturating_sub(*sent_ns) as f64 / 1e6);
        }
    }
    let mut line = json!({
        "rate_per_s": b.args.rate, "expected": total, "submitted": returned.len(), "jobs": ms.len(),
    });
    line.as_object_mut().expect("object").extend(latencies(ms));
    Ok(line)
}
