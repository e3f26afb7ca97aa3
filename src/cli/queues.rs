//! `conveyor queues`, `conveyor stats QUEUE`, `conveyor pause QUEUE`, `conveyor resume QUEUE`.

use std::process::ExitCode;

use super::{ClientArgs, Outcome};
use crate::proto;

#[derive(Clone, Debug, clap::Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub queue: String,
}

/// The caller's queues, with what waits and runs in each.
pub async fn list(client: ClientArgs) -> Outcome {
    let mut jobs = client.jobs().await?;
    let queues = jobs
        .list_queues(proto::ListQueuesRequest {})
        .await?
        .into_inner()
        .queues;
    println!("{:<32}  {:>9}  {:>9}  STATE", "QUEUE", "WAITING", "RUNNING");
    for q in queues {
        let state = if q.paused { "paused" } else { "" };
        println!(
            "{:<32}  {:>9}  {:>9}  {state}",
            q.queue, q.waiting, q.running
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn stats(args: QueueArgs) -> Outcome {
    let mut jobs = args.client.jobs().await?;
    let request = proto::GetQueueStatsRequest { queue: args.queue };
    let s = jobs.get_queue_stats(request).await?.into_inner();
    println!(
        "queue:     {}{}",
        s.queue,
        if s.paused { " (paused)" } else { "" }
    );
    let oldest = s
        .oldest_waiting
        .map(|d| format!("{}.{:03}s", d.seconds, d.nanos / 1_000_000))
        .unwrap_or_else(|| "-".into());
    println!("oldest waiting: {oldest}");
    println!("finished in the last minute: {}", s.finished_last_minute);
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "TIER", "SCHEDULED", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
    );
    let rows = s.tiers.iter().chain(s.total.as_ref());
    for c in rows {
        let tier = match proto::Tier::try_from(c.tier) {
            Ok(proto::Tier::Unspecified) | Err(_) => "all".to_string(),
            Ok(t) => t.as_str_name().trim_start_matches("TIER_").to_lowercase(),
        };
        println!(
            "{tier:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            c.scheduled, c.queued, c.running, c.succeeded, c.failed, c.cancelled
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Pauses (`true`) or resumes the queue.
pub async fn pause(args: QueueArgs, paused: bool) -> Outcome {
    let mut jobs = args.client.jobs().await?;
    let queue = args.queue;
    let changed = if paused {
        let request = proto::PauseQueueRequest {
            queue: queue.clone(),
        };
        jobs.pause_queue(request).await?.into_inner().changed
    } else {
        let request = proto::ResumeQueueRequest {
            queue: queue.clone(),
        };
        jobs.resume_queue(request).await?.into_inner().changed
    };
    let word = if paused { "paused" } else { "resumed" };
    match changed {
        true => println!("{queue}: {word}"),
        false => println!(
            "{queue}: already {}",
            if paused { "paused" } else { "running" }
        ),
    }
    Ok(ExitCode::SUCCESS)
}
