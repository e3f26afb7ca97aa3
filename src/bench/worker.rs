//! `conveyor bench-worker`: a worker process that completes every job at once, so a benchmark
//! measures Conveyor and Redis, not the work. Prints `RECV <job id> <unix ns>` per assignment
//! and `DONE` after each `jobs` completions were acknowledged (`READY` once connected).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::cli::{self, ClientArgs};
use crate::proto::{self, server_message::Msg as In, worker_message::Msg as Out};

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
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub async fn run(args: WorkerArgs) -> cli::Outcome {
    let mut client =
        proto::worker_service_client::WorkerServiceClient::new(args.client.channel().await?);
    let (tx, rx) = mpsc::channel(4096);
    let hello = proto::Hello {
        queues: vec![args.queue],
        concurrency: args.concurrency,
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let send = |msg| proto::WorkerMessage { msg: Some(msg) };
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
                let _ = writeln!(out, "RECV {job_id} {}", now_ns());
                let complete = proto::Complete {
                    job_id,
                    token: a.token,
                    result: String::new(),
                };
                let _ = tx.send(send(Out::Complete(complete))).await;
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
