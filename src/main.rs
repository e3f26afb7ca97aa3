//! The `conveyor` command: parses the CLI and calls into the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use conveyor::cli::{self, CancelArgs, GetArgs, ListArgs, SubmitArgs, WatchArgs, WorkerArgs};
use conveyor::config::Config;
use conveyor::{demo, dev, server};

#[derive(Parser)]
#[command(
    name = "conveyor",
    version,
    about = "Job orchestration over gRPC: submit, run on remote workers, watch live."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server against REDIS_URL (default redis://127.0.0.1:6379) and DATABASE_URL.
    Serve(Config),
    /// Run a server for a laptop: without REDIS_URL it starts a private redis-server, without
    /// DATABASE_URL it keeps its history in SQLite, without CONVEYOR_S3_BUCKET it keeps
    /// artifacts in a private S3-compatible store, all under the data folder.
    Dev {
        #[command(flatten)]
        config: Config,
        /// Where the private redis-server, the SQLite history and the store keep their data.
        #[arg(long, env = "CONVEYOR_DATA_DIR", default_value = ".conveyor")]
        data_dir: PathBuf,
    },
    /// Apply the database schema's pending migrations (the server also does at start).
    Migrate {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Delete finished jobs older than a period from the database (the server does daily).
    Cleanup {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// e.g. 30d, 12h.
        #[arg(long, value_parser = conveyor::config::parse_duration)]
        older_than: std::time::Duration,
    },
    /// Create, list and revoke API keys and worker tokens (in the database; no server needed).
    Keys(cli::keys::KeysArgs),
    /// Show the whole loop in one command: private Redis, server, worker, one job watched to its result.
    Demo {
        /// Where the demo's redis-server keeps its data.
        #[arg(long, env = "CONVEYOR_DATA_DIR", default_value = ".conveyor")]
        data_dir: PathBuf,
    },
    /// Measure throughput, latency and Redis cost with a private redis-server and workers.
    Bench(conveyor::bench::BenchArgs),
    /// A no-op worker process used by `bench`.
    #[command(hide = true)]
    BenchWorker(conveyor::bench::worker::WorkerArgs),
    /// Runs one job's command for `conveyor worker`, taking its process group down with it.
    #[command(hide = true)]
    JobGuard {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Run CMD once per job of the given queues.
    Worker(WorkerArgs),
    /// Submit a job and print its id.
    Submit(SubmitArgs),
    /// Show one job.
    Get(GetArgs),
    /// List the jobs of a queue, newest first.
    List(ListArgs),
    /// Follow a job to its end; the exit code says how it ended (0 succeeded, 1 failed, 3 cancelled).
    Watch(WatchArgs),
    /// Cancel a job; a running job's worker is told to stop.
    Cancel(CancelArgs),
    /// Put FAILED jobs back in their queue with a fresh budget of attempts: one by id, or every
    /// one of a queue (matching --tier and --label).
    Retry(cli::RetryArgs),
    /// List your queues, with what waits and runs in each.
    Queues(cli::ClientArgs),
    /// Show a queue's figures: your jobs by state and tier, the oldest wait, the last minute.
    Stats(cli::queues::QueueArgs),
    /// Stop leasing from a queue (running jobs finish); needs the admin scope.
    Pause(cli::queues::QueueArgs),
    /// Start leasing from a paused queue again; needs the admin scope.
    Resume(cli::queues::QueueArgs),
    /// Take the server on this host out of service before it stops (a pod's pre-stop hook):
    /// its readiness goes down and its workers move to other replicas; then wait.
    Drain(cli::drain::DrainArgs),
}

async fn bind(config: &Config) -> Result<TcpListener, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        format!(
            "cannot listen on {}: {e} (set CONVEYOR_LISTEN or --listen)",
            config.listen
        )
    })?;
    Ok(listener)
}

async fn serve(config: Config, listener: TcpListener) -> Result<(), Box<dyn std::error::Error>> {
    server::run(config, listener, cli::interrupted()).await?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // No runtime: the guard only waits for its command and for signals.
    if let Command::JobGuard { command } = &cli.command {
        return conveyor::worker::guard::run(command);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(config) | Command::Dev { config, .. } = &cli.command
        && let Some(threads) = config.threads
    {
        runtime.worker_threads(threads.into());
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Serve(_) | Command::Dev { .. }) {
        return client(cli.command).await;
    }
    let outcome: Result<ExitCode, Box<dyn std::error::Error>> = match cli.command {
        Command::Serve(mut config) => {
            let _traces = conveyor::telemetry::init("info");
            // Probes and Prometheus expect the HTTP port of a server that is deployed.
            config
                .http_listen
                .get_or_insert_with(|| "0.0.0.0:9090".into());
            if config.database_url.is_none() {
                eprintln!(
                    "error: set DATABASE_URL (postgres://user@host/db): the database is Conveyor's \
                     system of record. DATABASE_URL=none runs on Redis alone, and then nothing \
                     survives a Redis loss."
                );
                return ExitCode::FAILURE;
            }
            async {
                let listener = bind(&config).await?;
                serve(config, listener).await
            }
            .await
            .map(|_| ExitCode::SUCCESS)
        }
        Command::Dev {
            mut config,
            data_dir,
        } => {
            let _traces = conveyor::telemetry::init("info");
            config.insecure = true;
            async {
                let listener = bind(&config).await?;
                let address = listener.local_addr()?;
                eprintln!(
                    "\n  conveyor dev on {address}; the dashboard: http://{address}/dashboard/\n  \
                     AUTHENTICATION IS OFF. Every caller is the tenant `default` and may do \
                     everything.\n  Use `conveyor serve` with API keys (`conveyor keys create`) \
                     or OIDC tokens anywhere others can reach.\n"
                );
                let _redis = match config.redis_url {
                    Some(_) => None,
                    None => {
                        let redis = dev::start_redis(&data_dir.join("redis"), true).await?;
                        tracing::info!(url = redis.url, dir = %data_dir.display(), "started a private redis-server");
                        config.redis_url = Some(redis.url.clone());
                        Some(redis)
                    }
                };
                if config.database_url.is_none() {
                    std::fs::create_dir_all(&data_dir)?;
                    let db = data_dir.join("conveyor.db");
                    tracing::info!(path = %db.display(), "job history in SQLite");
                    config.database_url = Some(format!("sqlite://{}?mode=rwc", db.display()));
                }
                let _store = match config.s3_bucket {
                    Some(_) => None,
                    None => {
                        let dir = data_dir.join("store");
                        let store = dev::start_store(&dir).await?;
                        tracing::info!(endpoint = store.endpoint, dir = %dir.display(), "started a private S3-compatible store for artifacts");
                        config.s3_bucket = Some(dev::STORE_BUCKET.into());
                        config.s3_endpoint = Some(store.endpoint.clone());
                        config.s3_path_style = true;
                        config.s3_access_key = Some(dev::STORE_ACCESS_KEY.into());
                        config.s3_secret_key = Some(dev::STORE_SECRET_KEY.into());
                        Some(store)
                    }
                };
                serve(config, listener).await?;
                Ok(ExitCode::SUCCESS)
            }
            .await
        }
        _ => unreachable!("client commands return above"),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// Client commands log only warnings, so their output stays readable; a worker says more.
async fn client(command: Command) -> ExitCode {
    let _traces = conveyor::telemetry::init(if matches!(command, Command::Worker(_)) {
        "info"
    } else {
        "warn"
    });
    cli::report(match command {
        Command::Demo { data_dir } => demo::run(&data_dir).await,
        Command::Migrate { database_url } => cli::database::migrate(&database_url).await,
        Command::Cleanup {
            database_url,
            older_than,
        } => cli::database::cleanup(&database_url, older_than).await,
        Command::Keys(args) => cli::keys::run(args).await,
        Command::Bench(args) => conveyor::bench::run(args).await,
        Command::BenchWorker(args) => conveyor::bench::worker::run(args).await,
        Command::Worker(args) => cli::worker::run(args).await,
        Command::Submit(args) => cli::submit::run(args).await,
        Command::Get(args) => cli::show::get(args).await,
        Command::List(args) => cli::show::list(args).await,
        Command::Watch(args) => cli::watch::run(args).await,
        Command::Cancel(args) => cli::show::cancel(args).await,
        Command::Retry(args) => cli::show::retry(args).await,
        Command::Queues(args) => cli::queues::list(args).await,
        Command::Stats(args) => cli::queues::stats(args).await,
        Command::Pause(args) => cli::queues::pause(args, true).await,
        Command::Resume(args) => cli::queues::pause(args, false).await,
        Command::Drain(args) => cli::drain::run(args).await,
        Command::Serve(_) | Command::Dev { .. } | Command::JobGuard { .. } => {
            unreachable!("handled in main")
        }
    })
}
