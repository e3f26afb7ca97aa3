//! Starts `conveyor bench-worker` processes and turns their stdout lines into channels.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use super::usage;
use crate::cli::Error;

/// What a bench worker is asked to do.
#[derive(Clone, Debug)]
pub struct Spec<'a> {
    pub queue: &'a str,
    pub concurrency: u32,
    /// It prints DONE after each this many acknowledged completions.
    pub jobs: u64,
    /// Progress reports per job before it completes (0: complete at once).
    pub progress: u32,
    pub progress_gap_ms: u64,
    /// All jobs report at the same moments after their start (see `bench-worker --aligned`).
    pub aligned: bool,
    /// It reports when it received each job (`received`).
    pub stamp: bool,
}

impl<'a> Spec<'a> {
    pub fn new(queue: &'a str, concurrency: u32, jobs: u64) -> Self {
        Self {
            queue,
            concurrency,
            jobs,
            progress: 0,
            progress_gap_ms: 5,
            aligned: false,
            stamp: false,
        }
    }
}

/// A no-op worker process and what it reports; killed when dropped.
pub struct Worker {
    _child: Child,
    /// (job id, unix ns received) per assignment.
    pub received: mpsc::UnboundedReceiver<(String, u128)>,
    pub done: mpsc::UnboundedReceiver<()>,
}

impl Worker {
    /// Waits for the next DONE line.
    pub async fn done(&mut self) -> Result<(), Error> {
        self.done
            .recv()
            .await
            .ok_or_else(|| usage("the bench worker died"))
    }
}

/// Starts a worker (with `key` as its credentials, if any) and waits until it is connected (its
/// READY line).
pub async fn start(addr: &str, key: Option<&str>, spec: Spec<'_>) -> Result<Worker, Error> {
    let exe = std::env::current_exe().map_err(usage)?;
    let mut command = Command::new(exe);
    crate::child::die_with_parent(&mut command, nix::sys::signal::Signal::SIGKILL);
    let mut child = command
        .args(["bench-worker", "--addr", addr, "--queue", spec.queue])
        .args(["--concurrency", &spec.concurrency.to_string()])
        .args(["--jobs", &spec.jobs.to_string()])
        .args(["--progress", &spec.progress.to_string()])
        .args(["--progress-gap-ms", &spec.progress_gap_ms.to_string()])
        .args(spec.aligned.then_some("--aligned"))
        .args(spec.stamp.then_some("--stamp"))
        .env_remove("CONVEYOR_KEY")
        .envs(key.map(|key| ("CONVEYOR_KEY", key)))
        .stdin(Stdio::null())
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

/// `n` idle workers on one queue.
pub async fn start_many(
    addr: &str,
    key: Option<&str>,
    n: usize,
    spec: Spec<'_>,
) -> Result<Vec<Worker>, Error> {
    let mut workers = Vec::with_capacity(n);
    for _ in 0..n {
        workers.push(start(addr, key, spec.clone()).await?);
    }
    Ok(workers)
}
