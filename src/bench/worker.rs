//! `conveyor bench-worker`: a worker process that completes every job at once (or after
//! `--progress` reports), so a benchmark measures Conveyor and Redis, not the work. Prints
//! `RECV <job id> <unix ns>` per assignment (with `--stamp`) and `DONE` after each `jobs`
//! completions were acknowledged (`READY` once connected).

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::cli::{self, ClientArgs};
use crate::proto::{self, connect_request::Msg as Out, connect_response::Msg as In};

#[derive(Clone, Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub queue: String,
    #[arg(long, default_value_t = 50)]
    pub concurrency: u32,
    /// Print `DONE` after this many acknowledged completions.
    #[arg(long)]
    pub jobs: u64,
    /// ProgressReports per job before completing it; each carries its send time (unix ns) as
    /// its message.
    #[arg(long, default_value_t = 0)]
    pub progress: u32,
    /// Gap before each progress report, so the first comes after a watcher had time to open.
    #[arg(long, default_value_t = 5)]
    pub progress_gap_ms: u64,
    /// Every job reports at the same moments after its start. Without it, each job's reports
    /// are shifted by a random part of the gap, as independent jobs' are.
    #[arg(long)]
    pub aligned: bool,
    /// Print `RECV <job id> <unix ns>` for each assignment (the latency scenario needs it; the
    /// throughput ones leave it off, so measuring costs them nothing).
    #[arg(long)]
    pub stamp: bool,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn send(msg: Out) -> proto::ConnectRequest {
    proto::ConnectRequest { msg: Some(msg) }
}

pub async fn run(args: WorkerArgs) -> cli::Outcome {
    let mut dialer = args.client.dialer()?;
    let channel = dialer.channel().await?;
    let mut client = crate::client::workers(channel, dialer.bearer.clone());
    let (tx, rx) = mpsc::channel(4096);
    let hello = proto::Hello {
        queues: vec![args.queue.clone()],
        concurrency: args.concurrency,
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let _ = tx.send(send(Out::Hello(hello))).await;
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(out, "READY");
    let _ = out.flush();
    let mut acknowledged = 0;
    while let Some(message) = inbound.next().await {
        match message?.msg {
            Some(In::Assignment(a)) => {
                let job_id = a.job.map(|j| j.id).unwrap_or_default();
                if args.stamp {
                    let _ = writeln!(out, "RECV {job_id} {}", now_ns());
                }
                if args.progress == 0 {
                    let _ = tx.send(complete(job_id, a.token)).await;
                } else {
                    tokio::spawn(report_then_complete(tx.clone(), job_id, a.token, &args));
                }
            }
            Some(In::ReportResult(r)) if r.code == 0 => {
                acknowledged += 1;
                if acknowledged == args.jobs {
                    let _ = writeln!(out, "DONE");
                    let _ = out.flush();
                    acknowledged = 0;
                }
            }
            Some(In::Drain(_)) => break,
            Some(In::Heartbeat(_)) => {
                let _ = tx.send(send(Out::Heartbeat(proto::Heartbeat {}))).await;
                let _ = out.flush();
            }
            _ => {}
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn complete(job_id: String, token: u64) -> proto::ConnectRequest {
    send(Out::Complete(proto::Complete {
        job_id,
        token,
        result: String::new(),
        artifacts: Vec::new(),
        trace_context: String::new(),
    }))
}

/// Sends `progress` reports `gap` apart (after a random phase unless aligned), each stamped
/// just before it is sent, then completes.
fn report_then_complete(
    tx: mpsc::Sender<proto::ConnectRequest>,
    job_id: String,
    token: u64,
    args: &WorkerArgs,
) -> impl Future<Output = ()> + Send + 'static {
    let (n, gap) = (args.progress, Duration::from_millis(args.progress_gap_ms));
    let phase = match args.aligned {
        true => Duration::ZERO,
        false => gap.mul_f64(rand::random::<f64>()),
    };
    async move {
        tokio::time::sleep(phase).await;
        for k in 1..=n {
            tokio::time::sleep(gap).await;
            let report = proto::ProgressReport {
                job_id: job_id.clone(),
                token,
                progress: Some(proto::Progress {
                    percent: (k * 100 / n) as f32,
                    stage: "bench".into(),
                    message: now_ns().to_string(),
                }),
            };
            if tx.send(send(Out::Progress(report))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(complete(job_id, token)).await;
    }
}
