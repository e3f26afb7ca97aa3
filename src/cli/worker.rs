//! `conveyor worker --queue Q --concurrency N -- CMD ARGS...`

use std::process::ExitCode;

use super::{ClientArgs, Outcome};
use crate::worker;

#[derive(Clone, Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Queues to take jobs from (repeat the flag, or comma-separate).
    #[arg(
        long = "queue",
        short,
        env = "CONVEYOR_QUEUES",
        value_delimiter = ',',
        required = true
    )]
    pub queues: Vec<String>,
    /// Jobs run at once.
    #[arg(long, short, env = "CONVEYOR_CONCURRENCY", default_value_t = 1)]
    pub concurrency: u32,
    /// Stable id across restarts (default: made up per process).
    #[arg(long, env = "CONVEYOR_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Where each attempt gets its output folder, `CONVEYOR_OUTPUT_DIR`: files the command
    /// leaves there are uploaded as the job's artifacts when it succeeds (default: under the
    /// system's temporary folder).
    #[arg(long, env = "CONVEYOR_OUTPUT_ROOT")]
    pub output_root: Option<std::path::PathBuf>,
    /// On SIGTERM, how long running jobs may take to finish; those still running then are
    /// stopped, and the server hands them to another worker.
    #[arg(long, env = "CONVEYOR_SHUTDOWN_TIMEOUT", default_value = "30s",
          value_parser = crate::config::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    /// The command run per job: payload on stdin; `PROGRESS <pct> [stage] [msg]`, `RESULT
    /// <json>` and `ARTIFACT <path> [name]` lines on stdout; a non-zero exit fails the attempt.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Resolves on the first Ctrl-C or SIGTERM; a second one exits at once.
async fn shutdown() {
    super::interrupted().await;
    tokio::spawn(async {
        super::interrupted().await;
        std::process::exit(130);
    });
}

pub async fn run(args: WorkerArgs) -> Outcome {
    let options = worker::Options {
        server: args.client.target(),
        queues: args.queues,
        concurrency: args.concurrency,
        command: args.command,
        worker_id: args.worker_id,
        labels: Default::default(),
        output_root: args.output_root,
        shutdown_timeout: args.shutdown_timeout,
        guard: std::env::current_exe().ok(),
    };
    worker::run(options, shutdown()).await?;
    Ok(ExitCode::SUCCESS)
}
