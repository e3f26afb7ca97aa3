//! `conveyor bench`: starts its own redis-server, a server and no-op worker processes, runs the
//! scenarios and prints one JSON line each, then a table. `--smoke` is a seconds-long version.

mod redis;
pub mod worker;

use std::collections::HashMap;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::cli::{self, ClientArgs, Error};
use crate::config::Config;
use crate::proto::{self, job_service_client::JobServiceClient};
use crate::{dev, server};

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Jobs per throughput scenario.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u64,
    /// Worker slots (one worker process).
    #[arg(long, default_value_t = 50)]
    pub concurrency: u32,
    /// Submit rate of the latency scenario, jobs/s.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Length of the latency scenario.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Length of the idle measurement.
    #[arg(long, default_value_t = 60)]
    pub idle_seconds: u64,
    /// A seconds-long run that proves every scenario works (CI); its figures mean little.
    #[arg(long)]
    pub smoke: bool,
}

fn usage(e: impl std::fmt::Display) -> Error {
    Error::Usage(e.to_string())
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A no-op worker process and what it reports.
struct Worker {
    _child: Child,
    /// (job id, unix ns received) per assignment.
    received: mpsc::UnboundedReceiver<(String, u128)>,
    done: mpsc::UnboundedReceiver<()>,
}

async fn start_worker(
    addr: &str,
    queue: &str,
    concurrency: u32,
    jobs: u64,
) -> Result<Worker, Error> {
    let exe = std::env::current_exe().map_err(usage)?;
    let mut child = Command::new(exe)
        .args(["bench-worker", "--addr", addr, "--queue", queue])
        .args([
            "--concurrency",
            &concurrency.to_string(),
            "--jobs",
            &jobs.to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(usage)?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let (ready_tx, ready) = oneshot::channel();
    let (recv_tx, received) = mpsc::unbounded_channel();
    let (done_tx, done) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            let mut parts = line.split(' ');
            match parts.next() {
                Some("READY") => drop(ready_tx.take().map(|t| t.send(()))),
                Some("DONE") => drop(done_tx.send(())),
                Some("RECV") => {
                    let id = parts.next().unwrap_or_default().to_string();
                    let ns = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    let _ = recv_tx.send((id, ns));
                }
                _ => {}
            }
        }
    });
    ready
        .await
        .map_err(|_| usage("the bench worker did not start"))?;
    Ok(Worker {
        _child: child,
        received,
        done,
    })
}

fn job(queue: &str, i: u64, mixed: bool) -> proto::SubmitJobRequest {
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

/// Submits `n` jobs with `in_flight` outstanding calls; returns the submit returns per job id.
async fn submit_many(
    jobs: &JobServiceClient<Channel>,
    queue: &str,
    n: u64,
    in_flight: usize,
    mixed: bool,
) -> Result<(), Error> {
    let calls = futures_util::stream::iter(0..n).map(|i| {
        let mut jobs = jobs.clone();
        let request = job(queue, i, mixed);
        async move { jobs.submit_job(request).await }
    });
    let mut results = calls.buffer_unordered(in_flight);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    (n as f64 / elapsed.as_secs_f64()).round()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[i] * 1000.0).round() / 1000.0
}

pub async fn run(mut args: BenchArgs) -> cli::Outcome {
    if args.smoke {
        (args.jobs, args.rate, args.seconds, args.idle_seconds) = (500, 200, 2, 3);
    }
    let dir = std::env::temp_dir().join(format!("conveyor-bench-{}", std::process::id()));
    let redis = dev::start_redis(&dir, false).await.map_err(usage)?;
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(usage)?;
    let addr = format!("http://{}", listener.local_addr().map_err(usage)?);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        Config::with_redis(&redis.url),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let jobs = ClientArgs { addr: addr.clone() }.jobs().await?;
    let port = redis.port;
    let mut results = Vec::new();
    let mut emit = |v: Value| {
        println!("{v}");
        results.push(v);
    };

    // Submit throughput: one call at a time, then 50 in flight.
    let n = (args.jobs / 4).max(1);
    let start = Instant::now();
    submit_many(&jobs, "bench-submit-1", n, 1, false).await?;
    emit(
        json!({"scenario": "submit_one_at_a_time", "jobs": n, "jobs_per_s": rate(n, start.elapsed())}),
    );
    let start = Instant::now();
    submit_many(&jobs, "bench-submit-50", args.jobs, 50, false).await?;
    emit(
        json!({"scenario": "submit_50_in_flight", "jobs": args.jobs, "jobs_per_s": rate(args.jobs, start.elapsed())}),
    );

    // End to end: submit while a worker in another process completes, plain and mixed.
    for mixed in [false, true] {
        let queue = if mixed {
            "bench-e2e-mixed"
        } else {
            "bench-e2e"
        };
        let mut worker = start_worker(&addr, queue, args.concurrency, args.jobs).await?;
        redis::reset(port).await.map_err(usage)?;
        let start = Instant::now();
        submit_many(&jobs, queue, args.jobs, 50, mixed).await?;
        worker
            .done
            .recv()
            .await
            .ok_or_else(|| usage("the bench worker died"))?;
        let elapsed = start.elapsed();
        let stats = redis::commandstats(port).await.map_err(usage)?;
        let per_job = |calls: u64| ((calls as f64 / args.jobs as f64) * 100.0).round() / 100.0;
        let total: u64 = stats.values().sum();
        let round_trips: u64 = stats
            .iter()
            .filter(|(k, _)| k.starts_with("eval"))
            .map(|(_, v)| v)
            .sum();
        emit(json!({
            "scenario": if mixed { "end_to_end_mixed_tiers_priorities" } else { "end_to_end" },
            "jobs": args.jobs, "concurrency": args.concurrency, "jobs_per_s": rate(args.jobs, elapsed),
            "redis_commands_per_job": per_job(total), "redis_script_calls_per_job": per_job(round_trips),
        }));
    }

    // Drain: a preloaded queue, then a worker.
    submit_many(&jobs, "bench-drain", args.jobs, 50, false).await?;
    let start = Instant::now();
    let mut worker = start_worker(&addr, "bench-drain", args.concurrency, args.jobs).await?;
    worker
        .done
        .recv()
        .await
        .ok_or_else(|| usage("the bench worker died"))?;
    emit(
        json!({"scenario": "drain", "jobs": args.jobs, "jobs_per_s": rate(args.jobs, start.elapsed())}),
    );

    // Latency from SubmitJob returning to the worker receiving the job, open loop at `rate`.
    let total = args.rate * args.seconds;
    let mut worker = start_worker(&addr, "bench-latency", args.concurrency, total).await?;
    let (sent_tx, mut sent) = mpsc::unbounded_channel::<(String, u128)>();
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate.max(1)));
    for i in 0..total {
        ticker.tick().await;
        let (mut jobs, sent_tx) = (jobs.clone(), sent_tx.clone());
        let request = job("bench-latency", i, false);
        tokio::spawn(async move {
            if let Ok(r) = jobs.submit_job(request).await {
                let _ = sent_tx.send((r.into_inner().job.unwrap_or_default().id, now_ns()));
            }
        });
    }
    drop(sent_tx);
    worker
        .done
        .recv()
        .await
        .ok_or_else(|| usage("the bench worker died"))?;
    let mut returned = HashMap::new();
    while let Some((id, ns)) = sent.recv().await {
        returned.insert(id, ns);
    }
    let mut latencies: Vec<f64> = Vec::new();
    while let Ok((id, ns)) = worker.received.try_recv() {
        if let Some(sent_ns) = returned.get(&id) {
            // The worker can get a job before its submitter reads the reply: that counts as 0.
            latencies.push(ns.saturating_sub(*sent_ns) as f64 / 1e6);
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    emit(json!({
        "scenario": "submit_to_worker_latency_ms", "rate_per_s": args.rate, "jobs": latencies.len(),
        "p50": percentile(&latencies, 0.50), "p95": percentile(&latencies, 0.95), "p99": percentile(&latencies, 0.99),
    }));

    // Idle: workers connected, nothing to do.
    redis::reset(port).await.map_err(usage)?;
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_stats = redis::commandstats(port).await.map_err(usage)?;
    let idle: u64 = idle_stats.values().sum();
    let per_minute = (idle as f64 * 60.0 / args.idle_seconds as f64).round();
    emit(
        json!({"scenario": "idle_redis_commands_per_minute", "workers": 4, "servers": 1, "commands_per_min": per_minute}),
    );

    let _ = stop.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    print_table(&results);
    Ok(ExitCode::SUCCESS)
}

fn print_table(results: &[Value]) {
    eprintln!("\n{:<36} figures", "scenario");
    for r in results {
        let name = r["scenario"].as_str().unwrap_or("?");
        let rest: Vec<String> = r
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "scenario")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        eprintln!("{name:<36} {}", rest.join("  "));
    }
}
