//! Runs one job as a child process: payload on stdin, job fields in env vars, progress and result
//! from stdout; a cancel kills the child's whole process group.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::line::{self, Line};
use crate::proto;
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
    Succeeded { result: String },
    Failed { error: String, retryable: bool },
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
}

/// Runs `command` for the assignment until it exits or `cancel` fires (then nothing is reported).
pub async fn run(
    command: Vec<String>,
    a: proto::Assignment,
    events: mpsc::Sender<Event>,
    cancel: oneshot::Receiver<()>,
) {
    let job = a.job.unwrap_or_default();
    let (job_id, token) = (job.id.clone(), a.token);
    let outcome = match spawn(&command, &job, a.attempt) {
        Ok(child) => {
            let group = child.id().map(|pid| Pid::from_raw(pid as i32));
            let report = Reporter {
                events: events.clone(),
                job_id: job_id.clone(),
                token,
            };
            tokio::select! {
                outcome = supervise(child, job.payload, &command[0], report) => outcome,
                _ = cancel => {
                    terminate(group);
                    return;
                }
            }
        }
        Err(e) => Outcome::Failed {
            error: format!("could not start {:?}: {e}", command[0]),
            retryable: false,
        },
    };
    let _ = events
        .send(Event::Finished {
            job_id,
            token,
            outcome,
        })
        .await;
}

/// Sends a job's progress, coalesced to at most one report per `PROGRESS_EVERY`.
struct Reporter {
    events: mpsc::Sender<Event>,
    job_id: String,
    token: u64,
}

impl Reporter {
    fn tag(&self) -> &str {
        self.job_id
            .get(self.job_id.len().saturating_sub(8)..)
            .unwrap_or(&self.job_id)
    }

    async fn progress(&self, progress: Progress) {
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

/// Feeds the payload, reads the child's output and waits for it to exit.
async fn supervise(mut child: Child, payload: Vec<u8>, program: &str, report: Reporter) -> Outcome {
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
    let (mut result, mut fatal) = (String::new(), None);
    let mut pending: Option<Progress> = None;
    let mut last_sent = Instant::now() - PROGRESS_EVERY;
    loop {
        tokio::select! {
            line = stdout.next_line() => match line {
                Ok(Some(text)) => match line::parse(&text) {
                    Line::Progress(p) => pending = Some(p),
                    Line::Result(json) => result = json,
                    Line::Fatal(message) => fatal = Some(message),
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
    let status = child.wait().await;
    let tail = stderr.await.unwrap_or_default();
    match (status, fatal) {
        (Ok(s), None) if s.success() => Outcome::Succeeded { result },
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
    }
}

fn spawn(command: &[String], job: &proto::Job, attempt: u32) -> std::io::Result<Child> {
    let tier = proto::Tier::try_from(job.tier)
        .map(|t| t.as_str_name().trim_start_matches("TIER_").to_string());
    Command::new(&command[0])
        .args(&command[1..])
        .env("CONVEYOR_JOB_ID", &job.id)
        .env("CONVEYOR_QUEUE", &job.queue)
        .env("CONVEYOR_ATTEMPT", attempt.to_string())
        .env("CONVEYOR_TIER", tier.unwrap_or_default())
        .env("CONVEYOR_PRIORITY", job.priority.to_string())
        .env("CONVEYOR_CONTENT_TYPE", &job.content_type)
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
