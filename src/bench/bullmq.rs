//! BullMQ's own benchmark harness, the baseline: read-only in `--bullmq-dir`, so it is copied
//! to `target/bullmq-peer/`, installed there once with `npm ci`, and run as `node bench.mjs`
//! against a redis-server of the same build Conveyor uses. Its last stdout line,
//! `BENCH_SUMMARY {json}`, holds its figures; it is run as it is, never tuned. Beside it runs
//! `memory.mjs` (ours), for the one figure the harness lacks: Redis bytes per waiting job.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::watch::{PROGRESS_EVENTS, PROGRESS_RATE};
use super::{BenchArgs, usage};
use crate::cli::Error;
use crate::dev;

/// What the harness needs; the rest of its folder (results, scripts) is not run.
const SCRIPT: &str = "bench.mjs";
/// Our own measure of BullMQ's Redis bytes per waiting job (the harness has none), run with
/// the harness's installed packages.
const MEMORY_SCRIPT: &str = "memory.mjs";
const MANIFEST: [&str; 2] = ["package.json", "package-lock.json"];
/// The source's manifest as last installed: npm may rewrite the copied lock file, so the copy
/// cannot tell whether the source changed.
const STAMP: &str = "installed-from.txt";
const WORK_DIR: &str = "target/bullmq-peer";
/// As the harness's own run.sh bounds it (RUN_TIMEOUT_S).
const RUN_LIMIT: Duration = Duration::from_secs(1800);
const SUMMARY: &str = "BENCH_SUMMARY ";
const MEMORY_SUMMARY: &str = "MEMORY_SUMMARY ";

/// The harness, copied and installed.
pub struct Peer {
    dir: PathBuf,
}

fn read(source: &Path, file: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(source.join(file)).map_err(|e| {
        usage(format!(
            "BullMQ's harness: {}: {e} (run from the project root, or give --bullmq-dir)",
            source.join(file).display()
        ))
    })
}

/// Copies the harness into the work dir and installs its packages there when they are missing
/// or its manifest changed.
pub async fn prepare(source: &Path) -> Result<Peer, Error> {
    let dir = PathBuf::from(WORK_DIR);
    std::fs::create_dir_all(&dir).map_err(usage)?;
    std::fs::write(dir.join(SCRIPT), read(source, SCRIPT)?).map_err(usage)?;
    std::fs::write(dir.join(MEMORY_SCRIPT), include_str!("memory.mjs")).map_err(usage)?;
    let mut stamp = Vec::new();
    for file in MANIFEST {
        stamp.extend(read(source, file)?);
    }
    if std::fs::read(dir.join(STAMP)).ok().as_ref() != Some(&stamp) {
        let _ = std::fs::remove_file(dir.join(STAMP));
        let _ = std::fs::remove_dir_all(dir.join("node_modules"));
        for file in MANIFEST {
            std::fs::write(dir.join(file), read(source, file)?).map_err(usage)?;
        }
    }
    if !dir.join("node_modules").is_dir() {
        eprintln!("installing BullMQ's harness in {WORK_DIR} (npm ci)");
        if !npm(&dir, "ci").await? {
            // Its lock file lacks other platforms' optional packages, which `npm ci` refuses;
            // the harness's RESULTS.md installs with `npm install` (same pinned versions).
            eprintln!(
                "npm ci refused the harness's lock file; npm install, as its RESULTS.md does"
            );
            let _ = std::fs::remove_dir_all(dir.join("node_modules"));
            if !npm(&dir, "install").await? {
                let _ = std::fs::remove_dir_all(dir.join("node_modules"));
                return Err(usage(format!("npm install in {WORK_DIR} failed")));
            }
        }
        std::fs::write(dir.join(STAMP), stamp).map_err(usage)?;
    }
    Ok(Peer { dir })
}

/// `npm <command> --no-audit --no-fund` in `dir`; whether it succeeded.
async fn npm(dir: &Path, command: &str) -> Result<bool, Error> {
    let status = Command::new("npm")
        .args([command, "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdin(Stdio::null())
        // Our stdout is for JSON lines only.
        .stdout(std::io::stderr())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| usage(format!("npm: {e} (--vs-bullmq needs node and npm)")))?;
    Ok(status.success())
}

impl Peer {
    /// One run of the harness (BENCH_REPS=1) on a fresh redis-server; its summary, with our
    /// measure of its bytes per waiting job as `memory`.
    pub async fn run(&self, args: &BenchArgs, scratch: &Path) -> Result<Value, Error> {
        let mut summary = self
            .node(SCRIPT, SUMMARY, environment(args), &scratch.join("harness"))
            .await?;
        let jobs = vec![("JOBS", args.memory_jobs.to_string())];
        summary["memory"] = self
            .node(MEMORY_SCRIPT, MEMORY_SUMMARY, jobs, &scratch.join("memory"))
            .await?;
        let _ = std::fs::remove_dir_all(scratch);
        Ok(summary)
    }

    /// Runs `node script` on a fresh redis-server (REDIS_PORT) with `env`; the JSON of its stdout
    /// line that starts with `prefix`. Its other lines go to our stderr.
    async fn node(
        &self,
        script: &str,
        prefix: &str,
        mut env: Vec<(&'static str, String)>,
        scratch: &Path,
    ) -> Result<Value, Error> {
        let redis = dev::start_redis(scratch, false).await.map_err(usage)?;
        env.push(("REDIS_PORT", redis.port.to_string()));
        let mut command = Command::new("node");
        crate::child::die_with_parent(&mut command, nix::sys::signal::Signal::SIGKILL);
        let mut child = command
            .arg(script)
            .current_dir(&self.dir)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| usage(format!("node: {e} (--vs-bullmq needs node)")))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let read = async {
            let mut summary = None;
            while let Some(line) = lines.next_line().await.map_err(usage)? {
                match line.strip_prefix(prefix) {
                    Some(json) => summary = Some(serde_json::from_str(json).map_err(usage)?),
                    None => eprintln!("{line}"),
                }
            }
            let status = child.wait().await.map_err(usage)?;
            match summary {
                Some(summary) if status.success() => Ok(summary),
                _ => Err(usage(format!(
                    "BullMQ's {script} ended ({status}) without a summary"
                ))),
            }
        };
        let summary = tokio::time::timeout(RUN_LIMIT, read)
            .await
            .map_err(|_| usage(format!("BullMQ's {script} ran over {RUN_LIMIT:?}")))?;
        drop(redis);
        summary
    }
}

/// The harness's knobs, set to this run's sizes.
fn environment(args: &BenchArgs) -> Vec<(&'static str, String)> {
    vec![
        ("BENCH_REPS", "1".into()),
        ("BENCH_N", args.jobs.to_string()),
        ("BENCH_CONCURRENCY", args.concurrency.to_string()),
        ("BENCH_LAT_RATE", args.rate.to_string()),
        ("BENCH_LAT_SECONDS", args.seconds.to_string()),
        ("BENCH_PROG_RATE", PROGRESS_RATE.to_string()),
        ("BENCH_PROG_SECONDS", args.seconds.to_string()),
        ("BENCH_PROG_UPDATES", PROGRESS_EVENTS.to_string()),
        ("BENCH_IDLE_SECONDS", args.idle_seconds.to_string()),
    ]
}
