//! The worker runtime behind `conveyor worker -- CMD`: dials the server, runs one command per
//! assigned job, reports progress and results, and survives reconnects without losing work.

mod command;
pub mod guard;
mod line;
mod session;
mod upload;

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::proto::{self, connect_request::Msg as Out, connect_response::Msg as In};
use command::{Event, Outcome, Setup};

#[derive(Clone, Debug)]
pub struct Options {
    /// The server to dial (`http://127.0.0.1:50051`) and the worker token to show it.
    pub server: crate::client::Target,
    pub queues: Vec<String>,
    /// Jobs run at once.
    pub concurrency: u32,
    /// The program and its arguments, run once per job.
    pub command: Vec<String>,
    /// Stable across reconnects so the server can re-attach running jobs; made up when `None`.
    pub worker_id: Option<String>,
    pub labels: HashMap<String, String>,
    /// Where each attempt gets its output folder (`CONVEYOR_OUTPUT_DIR`); a folder under the
    /// system's temporary one when `None`.
    pub output_root: Option<std::path::PathBuf>,
    /// How long running jobs may take to finish after a shutdown request.
    pub shutdown_timeout: Duration,
    /// The `conveyor` binary, whose `job-guard` runs each command so that its whole process
    /// group goes with the worker (see `guard.rs`); `None` runs commands directly.
    pub guard: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Address(String),
    #[error("give a command to run per job after `--`")]
    NoCommand,
    #[error("the server refused this worker: {0}")]
    Refused(tonic::Status),
    #[error("{0}")]
    Setup(String),
    #[error("the command could not start: {0}")]
    Command(String),
}

/// Reconnect delays: from this, doubling, up to `MAX_BACKOFF`, with jitter.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A job this process is running.
struct Running {
    token: u64,
    cancel: oneshot::Sender<()>,
    /// The attempt's span in the job's trace (when traces are exported here), and the
    /// traceparent the command and the server's records continue.
    span: Option<opentelemetry::global::BoxedSpan>,
    trace_context: String,
}

/// The worker's state across connections.
struct Worker {
    options: Options,
    worker_id: String,
    running: HashMap<String, Running>,
    setup: std::sync::Arc<Setup>,
    /// Upload questions sent on the current stream, by (job id, artifact name), waiting for
    /// the server's answer.
    asks: HashMap<(String, String), tokio::sync::oneshot::Sender<In>>,
    /// Completions and failures not yet answered by the server, resent after a reconnect.
    outbox: HashMap<String, Out>,
    /// Outbox entries the server could not store yet (UNAVAILABLE); resent on the next tick.
    retry: Vec<String>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    /// Why the worker takes no new jobs (a shutdown, or a command that cannot start), once it
    /// does not: running jobs finish and are reported, assignments still on their way are
    /// declined, and the server is told (Stopping, and `Hello.stopping` on a reconnect).
    stopping: Option<String>,
    /// A shutdown was asked for: when running jobs are stopped, whatever connection is open then.
    deadline: Option<Instant>,
    /// The command could not start: the worker ends with this error once its jobs are reported.
    broken: Option<String>,
}

/// Why one connection ended.
enum End {
    /// Reconnect now (the server is draining).
    Drained,
    /// Reconnect after a backoff (stream broke, server unreachable).
    Broken(String),
    /// All done after a shutdown.
    Stopped,
}

pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if options.command.is_empty() {
        return Err(Error::NoCommand);
    }
    // Said at start, not by failing every job of the queue one by one.
    command::resolve(&options.command[0]).map_err(Error::Command)?;
    let mut dialer = crate::client::Dialer::new(&options.server, |endpoint| {
        endpoint
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
    })
    .map_err(Error::Address)?;
    let (events_tx, events) = mpsc::channel(1024);
    let worker_id = options
        .worker_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let http = crate::client::http()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Setup(format!("HTTP client: {e}")))?;
    let setup = std::sync::Arc::new(Setup {
        command: options.command.clone(),
        guard: options.guard.clone(),
        output_root: options.output_root.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("conveyor-worker-{}", std::process::id()))
        }),
        http,
    });
    let mut worker = Worker {
        options,
        worker_id,
        running: HashMap::new(),
        setup,
        asks: HashMap::new(),
        outbox: HashMap::new(),
        retry: Vec::new(),
        events_tx,
        events,
        stopping: None,
        deadline: None,
        broken: None,
    };
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let ended = worker.serve(&mut dialer, &mut stop).await;
    // The attempts' folders are gone; the root goes too when this process made it up.
    if worker.options.output_root.is_none() {
        let _ = std::fs::remove_dir(&worker.setup.output_root);
    }
    match worker.broken.take() {
        Some(why) if ended.is_ok() => Err(Error::Command(why)),
        _ => ended,
    }
}

impl Worker {
    /// Connects, and connects again, until a shutdown request is done.
    async fn serve(
        &mut self,
        dialer: &mut crate::client::Dialer,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = Instant::now();
            let ended = self.connection(dialer, stop).await?;
            // Whatever ended the stream, the next one starts at another replica, if there is one.
            if !matches!(ended, End::Stopped) {
                dialer.failed();
            }
            match ended {
                End::Stopped => return Ok(()),
                End::Drained => {
                    tracing::info!("server is draining; reconnecting");
                    backoff = MIN_BACKOFF;
                    continue;
                }
                End::Broken(why) => {
                    if started.elapsed() > MAX_BACKOFF * 2 {
                        backoff = MIN_BACKOFF;
                    }
                    let wait = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
                    tracing::info!(retry_in = ?wait, "connection to {}: {why}", self.options.server.addr);
                    if self.idle_for(wait, stop).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Hello, holding the leases of the jobs still running and of those whose end waits in the
    /// outbox: their leases are still this worker's until the server answers the report, so it
    /// must not give them away before the report arrives.
    fn hello(&self) -> Out {
        let running = self.running.iter().map(|(id, r)| (id, r.token));
        let unanswered = self.outbox.iter().map(|(id, m)| (id, token_of(m)));
        let held = running
            .chain(unanswered)
            .map(|(id, token)| proto::HeldLease {
                job_id: id.clone(),
                token,
            })
            .collect();
        Out::Hello(proto::Hello {
            queues: self.options.queues.clone(),
            concurrency: self.options.concurrency,
            labels: self.options.labels.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            worker_id: self.worker_id.clone(),
            held,
            stopping: self.stopping.is_some(),
        })
    }

    /// Takes no new jobs from now on, for `reason`; true the first time.
    fn stop_taking(&mut self, reason: &str) -> bool {
        if self.stopping.is_some() {
            return false;
        }
        tracing::info!(running = self.running.len(), "taking no new jobs: {reason}");
        self.stopping = Some(reason.to_string());
        true
    }

    /// A shutdown was asked for: running jobs get `shutdown_timeout` to finish, across
    /// reconnects.
    fn shutdown(&mut self) {
        self.stop_taking("shutting down");
        self.deadline
            .get_or_insert_with(|| Instant::now() + self.options.shutdown_timeout);
    }

    /// Whether everything is done after a stop: nothing runs and nothing waits to be reported.
    fn done(&self) -> bool {
        self.stopping.is_some() && self.running.is_empty() && self.outbox.is_empty()
    }

    /// The shutdown timeout passed: running jobs are stopped unreported (their leases go back
    /// to the queue once the server notices this worker is gone).
    fn out_of_time(&mut self) {
        let grace = self.options.shutdown_timeout;
        tracing::warn!("jobs still running after {grace:?}; stopping them");
        let ids: Vec<String> = self.running.keys().cloned().collect();
        ids.iter().for_each(|id| self.kill(id));
        self.outbox.clear();
    }

    fn kill(&mut self, job_id: &str) {
        if let Some(r) = self.running.remove(job_id) {
            let _ = r.cancel.send(());
        }
    }

    /// Waits out a reconnect delay while jobs keep running; true when the worker is done.
    async fn idle_for(
        &mut self,
        wait: Duration,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        let until = Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return false,
                Some(event) = self.events.recv() => {
                    // Progress and questions need the stream: progress is dropped, and the
                    // uploader asks again.
                    let _ = self.ended(event);
                }
                _ = stop.changed(), if self.deadline.is_none() => self.shutdown(),
                _ = sleep_until(self.deadline), if self.deadline.is_some() => {
                    self.out_of_time();
                    return true;
                }
            }
            if self.done() {
                return true;
            }
        }
    }

    /// Turns an attempt's end into the report the server must answer, kept in the outbox until
    /// it is (and sent again after a reconnect) and returned to send now; `None` for any other
    /// event.
    fn ended(&mut self, event: Event) -> Option<Out> {
        match event {
            Event::Finished {
                job_id,
                token,
                outcome,
            } => {
                let running = self.running.remove(&job_id);
                let message = report(job_id.clone(), token, outcome, running);
                self.outbox.insert(job_id, message.clone());
                Some(message)
            }
            Event::CannotStart {
                job_id,
                token,
                error,
            } => {
                // No attempt happened: the job goes back, and a worker that cannot start its
                // command takes no more.
                self.running.remove(&job_id);
                tracing::error!(
                    job = job_id,
                    "{error}; declining the job and taking no more"
                );
                self.broken.get_or_insert_with(|| error.clone());
                self.stop_taking(&error);
                let message = decline(job_id.clone(), token, &error);
                self.outbox.insert(job_id, message.clone());
                Some(message)
            }
            Event::Progress { .. } | Event::Ask { .. } => None,
        }
    }
}

/// The fencing token a report carries.
fn token_of(message: &Out) -> u64 {
    match message {
        Out::Complete(c) => c.token,
        Out::Fail(f) => f.token,
        Out::Decline(d) => d.token,
        _ => 0,
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Hands an assignment back unstarted: the job goes back in line, its attempt not counted.
fn decline(job_id: String, token: u64, reason: &str) -> Out {
    Out::Decline(proto::Decline {
        job_id,
        token,
        reason: reason.to_string(),
    })
}

/// The message that tells the server how an attempt ended; the attempt's span ends with it.
fn report(job_id: String, token: u64, outcome: Outcome, running: Option<Running>) -> Out {
    let (mut span, trace_context) = running
        .map(|r| (r.span, r.trace_context))
        .unwrap_or_default();
    if let (Some(span), Outcome::Failed { error, .. }) = (&mut span, &outcome) {
        use opentelemetry::trace::Span as _;
        span.set_status(opentelemetry::trace::Status::error(error.clone()));
    }
    let message = match outcome {
        Outcome::Succeeded { result, artifacts } => Out::Complete(proto::Complete {
            job_id,
            token,
            result,
            artifacts,
            trace_context,
        }),
        Outcome::Failed { error, retryable } => Out::Fail(proto::Fail {
            job_id,
            token,
            error,
            retryable,
            trace_context,
        }),
    };
    crate::telemetry::end(span);
    message
}
