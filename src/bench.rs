//! `conveyor bench`: starts its own redis-server, the server as a child process (`conveyor
//! serve`, so its CPU and memory are its own) and no-op worker processes, runs the scenarios
//! and prints one JSON line each, then a table. Scenarios: submit one at a time, 50 in flight
//! and in SubmitJobs batches of 1,000; end to end (plain, and mixed tiers and priorities) with
//! Redis commands, server CPU and memory per job; drain of a preloaded queue; submit-to-worker
//! latency; progress-event latency over WatchJob; WatchJob fan-out (1,000 and 10,000 streams);
//! Redis bytes per waiting job; Redis commands per minute while idle. By default the server
//! runs as people deploy it (API keys, PostgreSQL history, default limits); `--redis-only` runs
//! it without either. `--smoke` is a seconds-long version (CI);
//! `--vs-bullmq` alternates this suite with BullMQ's own harness and prints both side by side.

mod auth;
mod bullmq;
mod compare;
mod history;
mod idle;
mod keys;
mod latency;
mod memory;
mod proc;
mod redis;
mod serve;
mod stats;
mod submit;
mod throughput;
mod watch;
pub mod worker;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::cli::{self, Error};
use crate::dev;

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Jobs per throughput scenario (submit, end to end, drain).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub jobs: u64,
    /// Worker slots (one worker process).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// Submit rate of the submit-to-worker latency scenario, jobs/s.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    pub rate: u64,
    /// Length of the latency scenarios (submit-to-worker, and progress at 100 jobs/s).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Length of the idle measurement.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_seconds: u64,
    /// WatchJob streams open at once in the fan-out scenario, one run per number.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub fanout: Vec<u64>,
    /// WatchJob streams per HTTP/2 connection in the fan-out scenario.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub streams_per_connection: u64,
    /// Gap between a job's progress reports (10 per job) in the progress scenarios.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub progress_gap_ms: u64,
    /// Gap between a job's progress reports in the fan-out scenario: 100 ms is a render that
    /// reports ten times a second, so 100 running jobs with 100 watchers each make 100,000
    /// deliveries a second.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub fanout_gap_ms: u64,
    /// In the fan-out scenario, every job reports progress at the same moments (the worst case:
    /// each report reaches all its watchers in one burst), instead of at its own random phase.
    #[arg(long)]
    pub aligned_progress: bool,
    /// The server's runtime threads (its CONVEYOR_THREADS); unset, its default of one per core.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub server_threads: Option<u16>,
    /// A seconds-long run that proves every scenario works (CI); its figures mean little.
    #[arg(long, conflicts_with = "vs_bullmq")]
    pub smoke: bool,
    /// Also run BullMQ's harness (../shared/peers/bullmq) on a redis-server of the same build,
    /// alternating with this suite, and print both side by side. Needs node and npm.
    #[arg(long)]
    pub vs_bullmq: bool,
    /// Where BullMQ's harness (bench.mjs, package.json, package-lock.json) is.
    #[arg(long, default_value = "../shared/peers/bullmq")]
    pub bullmq_dir: PathBuf,
    /// With --vs-bullmq: how many times to run each suite (medians are compared).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub reps: u32,
    /// The server's database: `none` (Redis alone), `sqlite` (a fresh file in the run's
    /// folder), or a `postgres://` URL of a server on which a fresh database is made per run.
    /// Unset: a fresh database on `--postgres`, or none with `--redis-only`.
    #[arg(long)]
    pub database: Option<String>,
    /// The old, secondary figures: no API keys and no database (Redis alone). Without it the
    /// suite runs as people deploy it: API keys on, PostgreSQL history, default limits.
    #[arg(long, conflicts_with_all = ["history", "auth"])]
    pub redis_only: bool,
    /// Waiting jobs submitted (no worker) to measure Redis bytes per waiting job.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1000..=10_000_000))]
    pub memory_jobs: u64,
    /// Instead of the suite: the submit scenarios and end to end with no database, SQLite and
    /// PostgreSQL (`--postgres`), to show what the durable write costs.
    #[arg(long, conflicts_with = "vs_bullmq")]
    pub history: bool,
    /// Instead of the suite: the submit scenarios on SQLite without authentication and with an
    /// API key, to show what checking credentials costs.
    #[arg(long, conflicts_with_all = ["vs_bullmq", "history"])]
    pub auth: bool,
    /// Instead of the suite: end-to-end throughput of jobs without a limit key in a queue that
    /// holds 1,000 blocked limit keys (rate and concurrency) with jobs waiting behind them,
    /// beside the same in a queue with none.
    #[arg(long, conflicts_with_all = ["vs_bullmq", "history", "auth"])]
    pub blocked_keys: bool,
    /// The PostgreSQL server the suite (and `--history`) makes its databases on.
    #[arg(
        long,
        env = "CONVEYOR_TEST_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres: String,
    /// Runs only the named scenarios of the suite (as named in its output, comma-separated),
    /// to measure one change quickly; the full suite is what figures are quoted from.
    #[arg(long, value_delimiter = ',', conflicts_with = "vs_bullmq")]
    pub only: Vec<String>,
}

impl BenchArgs {
    /// The smoke run's sizes, when asked for.
    fn sized(mut self) -> Self {
        if self.smoke {
            (self.jobs, self.rate, self.seconds, self.idle_seconds) = (500, 200, 2, 3);
            self.memory_jobs = 2000;
            self.fanout = vec![100, 1000];
        }
        self
    }

    /// The database the suite's server uses: `--database`, else none with `--redis-only`,
    /// else a fresh one on `--postgres`.
    pub(super) fn database(&self) -> &str {
        match (&self.database, self.redis_only) {
            (Some(spec), _) => spec,
            (None, true) => "none",
            (None, false) => &self.postgres,
        }
    }

    /// Whether the server checks credentials (the bench makes a client and a worker key).
    pub(super) fn with_keys(&self) -> bool {
        !self.redis_only
    }
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

/// What the scenarios share: the flags, the server under test, its Redis and a client.
pub struct Bench {
    args: BenchArgs,
    server: serve::Server,
    redis_port: u16,
    jobs: crate::client::Jobs,
    /// The server's database, whose CPU the throughput scenarios report when it is local.
    database: history::Database,
    /// What `jobs` sends as credentials, for the scenarios' own connections.
    bearer: crate::client::Bearer,
    /// The token the bench workers connect with, when the server checks credentials.
    worker_key: Option<String>,
    /// One JSON object per scenario, in the order they ran.
    results: Vec<Value>,
}

impl Bench {
    /// Prints a scenario's figures, or the error that stopped it, as one JSON line.
    fn emit(&mut self, scenario: &str, outcome: Result<Value, Error>) {
        let mut line = json!({ "scenario": scenario });
        match outcome {
            Ok(Value::Object(figures)) => line.as_object_mut().expect("object").extend(figures),
            Ok(other) => line["value"] = other,
            Err(e) => line["error"] = json!(e.to_string()),
        }
        // The machine's load as the scenario ended: two cores shared with Redis, the workers
        // and the clients, so a busy neighbour shows here.
        if let Some(load) = load_average() {
            line["load_1m"] = json!(load);
        }
        println!("{line}");
        self.results.push(line);
    }

    /// Whether `--only` leaves the scenario in.
    fn wants(&self, scenario: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|s| s == scenario)
    }

    async fn worker(&self, spec: workers::Spec<'_>) -> Result<workers::Worker, Error> {
        workers::start(&self.server.addr, self.worker_key.as_deref(), spec).await
    }

    /// A JobService client on a connection of its own, with the bench's credentials.
    fn jobs_on(&self, channel: tonic::transport::Channel) -> crate::client::Jobs {
        crate::client::jobs(channel, self.bearer.clone())
    }

    /// CPU ms used so far by the server process and by redis-server.
    async fn cpu_ms(&self) -> Result<(f64, f64), Error> {
        let redis = redis::cpu_ms(self.redis_port).await.map_err(usage)?;
        Ok((self.server.cpu_ms()?, redis))
    }
}

pub async fn run(args: BenchArgs) -> cli::Outcome {
    let args = args.sized();
    if args.vs_bullmq {
        return compare::run(&args).await;
    }
    if args.history {
        return history::run(&args).await;
    }
    if args.auth {
        return auth::run(&args).await;
    }
    if args.blocked_keys {
        return keys::run(&args).await;
    }
    let results = suite(&args, args.with_keys()).await?;
    print_table(&results);
    Ok(outcome(&results))
}

/// Fails the command when a scenario failed, after everything was printed.
fn outcome(results: &[Value]) -> ExitCode {
    if results.iter().any(|r| r.get("error").is_some()) {
        eprintln!("error: a scenario failed; see its \"error\"");
        ExitCode::from(cli::exit::ERROR)
    } else {
        ExitCode::SUCCESS
    }
}

/// One run of every scenario on a fresh redis-server and a fresh server; returns the lines.
/// `with_keys`: the server checks credentials; the bench's client sends an API key and its
/// workers a worker token.
async fn suite(args: &BenchArgs, with_keys: bool) -> Result<Vec<Value>, Error> {
    static SUITES: AtomicU32 = AtomicU32::new(0);
    let n = SUITES.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("conveyor-bench-{}-{n}", std::process::id()));
    let redis = dev::start_redis(&dir.join("redis"), false)
        .await
        .map_err(usage)?;
    let database = history::database(args.database(), &dir).await?;
    let keys = match with_keys {
        true => Some(auth::keys(database.url()).await?),
        false => None,
    };
    let server = serve::Options {
        threads: args.server_threads,
        database: database.url(),
        insecure: keys.is_none(),
        key_limits: args.blocked_keys.then_some(keys::LIMITS),
    };
    let server = serve::start(&redis.url, &dir, server).await?;
    let (client_key, worker_key) = keys.map(|k| (k.client, k.worker)).unzip();
    let target = crate::client::Target {
        token: client_key,
        ..crate::client::Target::new(server.addr.clone())
    };
    let bearer = target.bearer().map_err(usage)?;
    let jobs = crate::client::jobs(serve::connect(&server.addr).await?, bearer.clone());
    let mut b = Bench {
        args: args.clone(),
        server,
        redis_port: redis.port,
        jobs,
        bearer,
        worker_key,
        database,
        results: Vec::new(),
    };
    run_scenarios(&mut b).await;
    let results = std::mem::take(&mut b.results);
    let database = b.database;
    drop(b.server);
    drop(redis);
    database.drop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(results)
}

async fn run_scenarios(b: &mut Bench) {
    if b.args.history || b.args.auth {
        return history::scenarios(b, b.args.history).await;
    }
    if b.args.blocked_keys {
        return keys::scenarios(b).await;
    }
    macro_rules! scenario {
        ($name:literal, $run:expr) => {
            if b.wants($name) {
                let r = $run.await;
                b.emit($name, r);
            }
        };
    }
    scenario!("submit_one_at_a_time", submit::one_at_a_time(b));
    scenario!("submit_50_in_flight", submit::in_flight(b));
    scenario!("submit_batch_1000", submit::batches_of_1000(b));
    scenario!("end_to_end", throughput::end_to_end(b, false));
    scenario!(
        "end_to_end_mixed_tiers_priorities",
        throughput::end_to_end(b, true)
    );
    scenario!("drain", throughput::drain(b));
    scenario!("submit_to_worker_latency_ms", latency::submit_to_worker(b));
    scenario!("progress_latency_ms", watch::progress(b));
    for n in b.args.fanout.clone() {
        scenario!("watch_fanout", watch::fanout(b, n));
    }
    scenario!("redis_bytes_per_waiting_job", memory::waiting_jobs(b));
    // Last, so the workers and watches of the other scenarios are gone.
    scenario!("idle_redis_commands_per_minute", idle::commands(b));
}

/// Waits for `what` up to `limit`; a scenario that does not finish in time fails.
async fn within<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| usage(format!("{what}: not done within {limit:?}")))?
}

/// The 1-minute load average (`/proc/loadavg`).
pub(super) fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn print_table(results: &[Value]) {
    eprintln!("\n{:<36} figures", "scenario");
    for r in results {
        let name = r["scenario"].as_str().unwrap_or("?");
        // Breakdowns (objects) stay in the JSON line; the table keeps to single figures.
        let rest: Vec<String> = r
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| *k != "scenario" && !v.is_object())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        eprintln!("{name:<36} {}", rest.join("  "));
    }
}
