//! Runs one job as a child process: payload on stdin, job fields in env vars, progress and result
//! from stdout, files to keep in an output folder; a cancel kills the child's whole process
//! group.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::line::{self, Line};
use super::upload::{self, Failure, Uploader};
use crate::proto::{self, connect_request::Msg as Out, connect_response::Msg as In};
use crate::scheduler::Progress;

/// Progress reports per job are coalesced to at most one per this interval.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Stderr lines kept for the error message of a failed attempt.
const STDERR_TAIL: usize = 5;
/// How long a cancelled child gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// How an attempt ended, as the worker reports it.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// With the names of the artifacts it uploaded.
    Succeeded {
        result: String,
        artifacts: Vec<String>,
    },
    Failed {
        error: String,
        retryable: bool,
    },
}

/// What a running job tells the worker loop.
#[derive(Debug)]
pub enum Event {
    Progress {
        job_id: String,
        token: u64,
        progress: Progress,
    },
    Finished {
        job_id: String,
        token: u64,
        outcome: Outcome,
    },
    /// The command could not be started: nothing ran, so the job is no attempt of it.
    CannotStart {
        job_id: String,
        token: u64,
        error: String,
    },
    /// Send `message` (an upload request) on the stream; the server's answer about artifact
    /// `name` goes to `reply` (dropped if the stream ends first).
    Ask {
        job_id: String,
        name: String,
        message: Out,
        reply: oneshot::Sender<In>,
    },
}

/// What every job of a worker runs with.
pub struct Setup {
    pub command: Vec<String>,
    /// The program that runs each command in a process group it takes down with it.
    pub guard: Option<PathBuf>,
    /// Where each attempt gets its output folder.
    pub output_root: PathBuf,
    pub http: reqwest::Client,
}

/// Runs the command for the assignment until it exits and its files are uploaded, or until
/// `cancel` fires (then nothing is reported).
pub async fn run(
    setup: std::sync::Arc<Setup>,
    a: proto::Assignment,
    events: mpsc::Sender<Event>,
    mut cancel: oneshot::Receiver<()>,
) {
    let job = a.job.unwrap_or_default();
    let (job_id, token) = (job.id.clone(), a.token);
    let program = setup.command[0].clone();
    let folder = setup.output_root.join(format!(
        "{}-attempt-{}",
        job_id.replace(['/', ':'], "_"),
        a.attempt
    ));
    let (inputs, output) = (folder.join("inputs"), folder.join("output"));
    let failed = |error: String| Err(Unstarted::Failed(error));
    let spawned = async {
        if let Err(e) =
            std::fs::create_dir_all(&inputs).and_then(|_| std::fs::create_dir_all(&output))
        {
            return failed(format!("the attempt's folders: {e}"));
        }
        if let Err(e) = upload::download_inputs(&setup.http, &a.inputs, &inputs).await {
            return failed(e);
        }
        spawn(&setup, &job, a.attempt, &a.trace_context, &inputs, &output)
            .map_err(|e| Unstarted::NoCommand(format!("could not start {program:?}: {e}")))
    };
    let spawned = tokio::select! {
        spawned = spawned => spawned,
        _ = &mut cancel => {
            let _ = std::fs::remove_dir_all(&folder);
            return;
        }
    };
    let outcome = match spawned {
        Ok(child) => {
            let group = child.id().map(|pid| Pid::from_raw(pid as i32));
            let report = Reporter {
                events: events.clone(),
                job_id: job_id.clone(),
                token,
                percent: AtomicU32::new(0),
            };
            let finish = async {
                let (outcome, extra) = supervise(child, job.payload, &program, &report).await;
                match outcome {
                    Outcome::Succeeded { result, .. } => {
                        upload(&setup, &output, extra, &report, result).await
                    }
                    failed => failed,
                }
            };
            tokio::select! {
                outcome = finish => outcome,
                _ = cancel => {
                    terminate(group);
                    let _ = std::fs::remove_dir_all(&folder);
                    return;
                }
            }
        }
        Err(Unstarted::Failed(error)) => Outcome::Failed {
            error,
            retryable: true,
        },
        // No attempt without a command: the job goes back.
        Err(Unstarted::NoCommand(error)) => {
            let _ = std::fs::remove_dir_all(&folder);
            let cannot = Event::CannotStart {
                job_id,
                token,
                error,
            };
            let _ = events.send(cannot).await;
            return;
        }
    };
    let _ = std::fs::remove_dir_all(&folder);
    let _ = events
        .send(Event::Finished {
            job_id,
            token,
            outcome,
        })
        .await;
}

/// Why an attempt's command did not start.
enum Unstarted {
    /// Its setup failed (folders, fetching inputs): an attempt that may work next time.
    Failed(String),
    /// The command itself could not start: no attempt happened.
    NoCommand(String),
}

/// Where `program` is (as a path, or found on PATH), if it can be run.
pub fn resolve(program: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return match std::fs::metadata(&path) {
            Err(e) => Err(format!("{program:?}: {e}")),
            Ok(_) if !runnable(&path) => Err(format!("{program:?} is not an executable file")),
            Ok(_) => Ok(path),
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| runnable(path))
        .ok_or_else(|| format!("{program:?} is not on PATH"))
}

/// Uploads what the command left in its output folder and named on `ARTIFACT` lines.
async fn upload(
    setup: &Setup,
    output: &Path,
    mut files: Vec<upload::File>,
    report: &Reporter,
    result: String,
) -> Outcome {
    match upload::collect(output) {
        Ok(found) => files.extend(found),
        Err(e) => {
            return Outcome::Failed {
                error: format!("reading the output folder: {e}"),
                retryable: true,
            };
        }
    }
    if files.is_empty() {
        return Outcome::Succeeded {
            result,
            artifacts: Vec::new(),
        };
    }
    let uploader = Uploader {
        events: report.events.clone(),
        job_id: report.job_id.clone(),
        token: report.token,
        http: setup.http.clone(),
        percent: f32::from_bits(report.percent.load(Ordering::Relaxed)),
    };
    match uploader.upload_all(&files).await {
        Ok(artifacts) => Outcome::Succeeded { result, artifacts },
        // The lease is gone or the server keeps no artifacts: another try would not help.
        Err(Failure::Lost(error)) => Outcome::Failed {
            error,
            retryable: false,
        },
        Err(Failure::Failed(error)) => Outcome::Failed {
            error: format!("uploading artifacts: {error}"),
            retryable: true,
        },
    }
}

/// Sends a job's progress, coalesced to at most one report per `PROGRESS_EVERY`.
struct Reporter {
    events: mpsc::Sender<Event>,
    job_id: String,
    token: u64,
    /// The last percent sent (f32 bits), which upload progress keeps.
    percent: AtomicU32,
}

impl Reporter {
    fn tag(&self) -> &str {
        self.job_id
            .get(self.job_id.len().saturating_sub(8)..)
            .unwrap_or(&self.job_id)
    }

    async fn progress(&self, progress: Progress) {
        self.percent
            .store(progress.percent.to_bits(), Ordering::Relaxed);
        let (job_id, token) = (self.job_id.clone(), self.token);
        let _ = self
            .events
            .send(Event::Progress {
                job_id,
                token,
                progress,
            })
            .await;
    }
}

/// Feeds the payload, reads the child's output and waits for it to exit; returns how it ended
/// and the files its `ARTIFACT` lines named.
async fn supervise(
    mut child: Child,
    payload: Vec<u8>,
    program: &str,
    report: &Reporter,
) -> (Outcome, Vec<upload::File>) {
    let mut stdin = child.stdin.take().expect("piped");
    tokio::spawn(async move {
        // A command that ignores its stdin closes the pipe early; that is fine.
        let _ = stdin.write_all(&payload).await;
    });
    let stderr = tokio::spawn(tail_stderr(
        child.stderr.take().expect("piped"),
        report.tag().to_string(),
    ));
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let (mut result, mut fatal, mut named) = (String::new(), None, Vec::new());
    let mut pending: Option<Progress> = None;
    let mut last_sent = Instant::now() - PROGRESS_EVERY;
    loop {
        tokio::select! {
            line = stdout.next_line() => match line {
                Ok(Some(text)) => match line::parse(&text) {
                    Line::Progress(p) => pending = Some(p),
                    Line::Result(json) => result = json,
                    Line::Fatal(message) => fatal = Some(message),
                    Line::Artifact { path, name } => named.push(upload::File { path: path.into(), name }),
                    Line::Other => eprintln!("[{}] {text}", report.tag()),
                },
                _ => break,
            },
            _ = tokio::time::sleep_until(last_sent + PROGRESS_EVERY), if pending.is_some() => {}
        }
        if pending.is_some() && Instant::now() >= last_sent + PROGRESS_EVERY {
            last_sent = Instant::now();
            report.progress(pending.take().expect("checked")).await;
        }
    }
    if let Some(progress) = pending {
        report.progress(progress).await;
    }
    let status = child.wait().await;
    let tail = stderr.await.unwrap_or_default();
    let outcome = match (status, fatal) {
        (Ok(s), None) if s.success() => Outcome::Succeeded {
            result,
            artifacts: Vec::new(),
        },
        (_, Some(error)) => Outcome::Failed {
            error,
            retryable: false,
        },
        (Ok(s), None) if tail.is_empty() => Outcome::Failed {
            error: format!("{program} exited with {s}"),
            retryable: true,
        },
        (Ok(s), None) => Outcome::Failed {
            error: format!("{program} exited with {s}: {tail}"),
            retryable: true,
        },
        (Err(e), None) => Outcome::Failed {
            error: format!("waiting for the command: {e}"),
            retryable: true,
        },
    };
    (outcome, named)
}

fn spawn(
    setup: &Setup,
    job: &proto::Job,
    attempt: u32,
    trace_context: &str,
    inputs: &Path,
    output: &Path,
) -> std::io::Result<Child> {
    let command = &setup.command;
    let tier = proto::Tier::try_from(job.tier)
        .map(|t| t.as_str_name().trim_start_matches("TIER_").to_string());
    // Checked here, where a failure can still hand the job back: the guard would only exit.
    resolve(&command[0]).map_err(std::io::Error::other)?;
    let mut child = match &setup.guard {
        Some(guard) => {
            let mut child = Command::new(guard);
            child.arg("job-guard").arg("--").args(command);
            child
        }
        None => {
            let mut child = Command::new(&command[0]);
            child.args(&command[1..]);
            child
        }
    };
    // A worker that is killed takes its commands along: their leases die with it, and the job
    // runs again elsewhere. The guard passes this on to the whole group.
    crate::child::die_with_parent(&mut child, nix::sys::signal::Signal::SIGTERM);
    child
        .env("CONVEYOR_JOB_ID", &job.id)
        .env("CONVEYOR_QUEUE", &job.queue)
        .env("CONVEYOR_ATTEMPT", attempt.to_string())
        .env("CONVEYOR_TIER", tier.unwrap_or_default())
        .env("CONVEYOR_PRIORITY", job.priority.to_string())
        .env("CONVEYOR_CONTENT_TYPE", &job.content_type)
        .env("CONVEYOR_INPUT_DIR", inputs)
        .env("CONVEYOR_OUTPUT_DIR", output)
        // The W3C variable OpenTelemetry SDKs read to continue a trace (empty: none).
        .env("TRACEPARENT", trace_context)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a cancel reaches whatever the command started too; the
        // group is signalled on cancel, so dropping the handle must not SIGKILL it first.
        .process_group(0)
        .spawn()
}

/// Forwards the child's stderr and returns its last lines, for the error message.
async fn tail_stderr(stderr: tokio::process::ChildStderr, tag: String) -> String {
    let mut lines = BufReader::new(stderr).lines();
    let mut tail = VecDeque::new();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[{tag}] {line}");
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    Vec::from(tail).join(" / ")
}

/// SIGTERM to the process group now, SIGKILL after a grace for whatever is still there.
fn terminate(group: Option<Pid>) {
    let Some(group) = group else { return };
    let _ = killpg(group, Signal::SIGTERM);
    tokio::spawn(async move {
        tokio::time::sleep(KILL_GRACE).await;
        let _ = killpg(group, Signal::SIGKILL);
    });
}
