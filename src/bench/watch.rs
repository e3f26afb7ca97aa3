//! WatchJob scenarios: progress-event latency with every job watched by the bench, and fan-out
//! (many streams open on one server: each event's latency at every watcher, and the server's
//! memory per open stream).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tonic::{Status, Streaming};

use super::stats::{latencies, round};
use super::submit::{batches, job};
use super::workers::Spec;
use super::{Bench, now_ns, serve};
use crate::cli::Error;
use crate::proto::{self, job_event::Kind};

/// Jobs submitted per second in the progress scenario (as BullMQ's harness does).
pub const PROGRESS_RATE: u64 = 100;
/// Progress reports per job.
pub const PROGRESS_EVENTS: u32 = 10;
/// How long watches may run on after the last submit (or after the worker started).
const DRAIN: Duration = Duration::from_secs(30);
/// How long opening all the fan-out streams may take.
const OPEN_DEADLINE: Duration = Duration::from_secs(60);
/// WatchJob calls being opened at once, so 10,000 do not all land in the same instant.
const OPENING_AT_ONCE: usize = 256;
/// Jobs the fan-out watchers share.
const FANOUT_JOBS: u64 = 100;
/// Pause before reading memory, so the server is idle and its allocator settled.
const SETTLE: Duration = Duration::from_secs(1);

/// Reads a watch to its end; sends each progress event's delay (now minus the send time the
/// worker put in its message), in ms.
async fn follow(
    mut stream: Streaming<proto::WatchJobResponse>,
    delays: &mpsc::UnboundedSender<f64>,
) -> Result<(), Status> {
    while let Some(response) = stream.message().await? {
        let Some(event) = response.event else {
            continue;
        };
        if event.kind() != Kind::Progress {
            continue;
        }
        if let Some(sent) = event.progress.and_then(|p| p.message.parse::<u128>().ok()) {
            let _ = delays.send(now_ns().saturating_sub(sent) as f64 / 1e6);
        }
    }
    Ok(())
}

/// How the watches ended by a deadline.
#[derive(Default)]
struct Ended {
    /// Streams that ended with their job.
    finished: u64,
    failed: u64,
    first_error: Option<String>,
    /// Still open at the deadline (then dropped).
    cut: u64,
}

async fn join_until(set: &mut JoinSet<Result<(), Status>>, deadline: Instant) -> Ended {
    let mut ended = Ended::default();
    loop {
        let next = tokio::time::timeout_at(deadline.into(), set.join_next()).await;
        let error = match next {
            Ok(None) => return ended,
            Err(_) => {
                ended.cut = set.len() as u64;
                set.abort_all();
                return ended;
            }
            Ok(Some(Ok(Ok(())))) => {
                ended.finished += 1;
                continue;
            }
            Ok(Some(Ok(Err(status)))) => format!("{:?}: {}", status.code(), status.message()),
            Ok(Some(Err(join))) => join.to_string(),
        };
        ended.failed += 1;
        ended.first_error.get_or_insert(error);
    }
}

fn collect(mut delays: mpsc::UnboundedReceiver<f64>) -> Vec<f64> {
    let mut ms = Vec::new();
    while let Ok(d) = delays.try_recv() {
        ms.push(d);
    }
    ms
}

fn figures(mut line: Value, ended: Ended, ms: Vec<f64>) -> Value {
    let map = line.as_object_mut().expect("object");
    map.insert("received".into(), json!(ms.len()));
    map.insert("watches_finished".into(), json!(ended.finished));
    map.insert("watches_failed".into(), json!(ended.failed));
    map.insert("watches_cut_at_deadline".into(), json!(ended.cut));
    if let Some(e) = ended.first_error {
        map.insert("first_error".into(), json!(e));
    }
    map.extend(latencies(ms));
    line
}

/// Jobs at 100/s for `--seconds`; each watched from right after its SubmitJob returned.
pub async fn progress(b: &Bench) -> Result<Value, Error> {
    let queue = "bench-progress";
    let total = PROGRESS_RATE * b.args.seconds;
    let spec = Spec {
        progress: PROGRESS_EVENTS,
        progress_gap_ms: b.args.progress_gap_ms,
        ..Spec::new(queue, b.args.concurrency, total)
    };
    let _worker = b.worker(spec).await?;
    let (tx, delays) = mpsc::unbounded_channel();
    let mut watches = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(1000 / PROGRESS_RATE));
    for i in 0..total {
        ticker.tick().await;
        let (mut jobs, tx) = (b.jobs.clone(), tx.clone());
        watches.spawn(async move {
            let submitted = jobs.submit_job(job(queue, i, false)).await?.into_inner();
            let job_id = submitted.job.unwrap_or_default().id;
            let request = proto::WatchJobRequest {
                job_id,
                after_seq: None,
            };
            follow(jobs.watch_job(request).await?.into_inner(), &tx).await
        });
    }
    drop(tx);
    let ended = join_until(&mut watches, Instant::now() + DRAIN).await;
    let line = json!({
        "rate_per_s": PROGRESS_RATE, "jobs": total, "events_per_job": PROGRESS_EVENTS,
        "gap_ms": b.args.progress_gap_ms, "expected": total * u64::from(PROGRESS_EVENTS),
    });
    Ok(figures(line, ended, collect(delays)))
}

/// How far opening the fan-out streams got.
#[derive(Default)]
struct Opening {
    opened: AtomicU64,
    refused: AtomicU64,
}

impl Opening {
    fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One task per watcher, spread over `channels` `per_connection` each and over the jobs in
/// turn: open the watch (`OPENING_AT_ONCE` at a time), count it, then follow it.
fn spawn_watchers(
    channels: &[crate::client::Jobs],
    per_connection: u64,
    ids: &[String],
    watchers: u64,
    delays: &mpsc::UnboundedSender<f64>,
) -> (JoinSet<Result<(), Status>>, Arc<Opening>) {
    let opening = Arc::new(Opening::default());
    let gate = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut watches = JoinSet::new();
    for w in 0..watchers {
        let mut client = channels[(w / per_connection) as usize].clone();
        let request = proto::WatchJobRequest {
            job_id: ids[w as usize % ids.len()].clone(),
            after_seq: None,
        };
        let (opening, gate, tx) = (opening.clone(), gate.clone(), delays.clone());
        watches.spawn(async move {
            let permit = gate.acquire_owned().await;
            let open = async {
                let mut stream = client.watch_job(request).await?.into_inner();
                // The snapshot: the stream is open on the server.
                stream.message().await?;
                Ok::<_, Status>(stream)
            };
            let stream = open.await.inspect_err(|_| {
                opening.refused.fetch_add(1, Ordering::Relaxed);
            })?;
            opening.opened.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            follow(stream, &tx).await
        });
    }
    (watches, opening)
}

/// `watchers` WatchJob streams over `watchers / --streams-per-connection` connections, on
/// `FANOUT_JOBS` queued jobs; then a worker runs them with progress reports.
pub async fn fanout(b: &Bench, watchers: u64) -> Result<Value, Error> {
    let queue = format!("bench-fanout-{watchers}");
    let jobs = FANOUT_JOBS.min(watchers);
    let ids = batches(&b.jobs, &queue, jobs, 1, false).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_before = b.server.memory()?.rss_kb;
    let per_connection = b.args.streams_per_connection;
    let mut channels = Vec::new();
    for _ in 0..watchers.div_ceil(per_connection) {
        channels.push(b.jobs_on(serve::connect(&b.server.addr).await?));
    }
    let (tx, delays) = mpsc::unbounded_channel();
    let start = Instant::now();
    let (mut watches, opening) = spawn_watchers(&channels, per_connection, &ids, watchers, &tx);
    drop(tx);
    while opening.opened() + opening.refused() < watchers && start.elapsed() < OPEN_DEADLINE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (open_s, open) = (start.elapsed().as_secs_f64(), opening.opened());
    // A figure for streams that never opened would be a figure for work that did not happen.
    if open < watchers {
        return Err(Error::Usage(format!(
            "fan-out: only {open} of {watchers} WatchJob streams opened ({} refused, e.g. by \
             CONVEYOR_MAX_WATCHES or CONVEYOR_MAX_STREAMS); no figure",
            opening.refused()
        )));
    }
    tokio::time::sleep(SETTLE).await;
    let rss_open = b.server.memory()?.rss_kb;
    let spec = Spec {
        progress: PROGRESS_EVENTS,
        progress_gap_ms: b.args.fanout_gap_ms,
        aligned: b.args.aligned_progress,
        ..Spec::new(&queue, b.args.concurrency, jobs)
    };
    let _worker = b.worker(spec).await?;
    let ended = join_until(&mut watches, Instant::now() + DRAIN).await;
    let mb = |kb: u64| round(kb as f64 / 1024.0, 1);
    let mut line = json!({
        "watchers": watchers, "opened": open, "open_refused": opening.refused(),
        "open_seconds": round(open_s, 2), "jobs": jobs,
        "watchers_per_job": round(watchers as f64 / jobs as f64, 1),
        "connections": channels.len(), "streams_per_connection": per_connection,
        "events_per_job": PROGRESS_EVENTS, "expected": watchers * u64::from(PROGRESS_EVENTS),
        "gap_ms": b.args.fanout_gap_ms,
        "phases": if b.args.aligned_progress { "aligned" } else { "random" },
        "server_rss_before_mb": mb(rss_before), "server_rss_open_mb": mb(rss_open),
    });
    if open > 0 {
        let per_stream = (rss_open as f64 - rss_before as f64) / open as f64;
        line["server_kb_per_stream"] = json!(round(per_stream, 2));
    }
    Ok(figures(line, ended, collect(delays)))
}
