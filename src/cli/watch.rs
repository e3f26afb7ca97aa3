//! `conveyor watch`: follows a job to its end, with a live progress bar on a terminal, and while
//! it waits, why (no worker, a paused queue, a rate limit...) as that changes.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use tokio_stream::StreamExt;

use super::{ClientArgs, Outcome, exit};
use crate::proto::{self, JobState, job_event::Kind};

#[derive(Clone, Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub job_id: String,
    /// Resume after this event sequence number instead of starting from a snapshot.
    #[arg(long)]
    pub after_seq: Option<u64>,
}

pub async fn run(args: WatchArgs) -> Outcome {
    let mut dialer = args.client.dialer()?;
    follow(&mut dialer, &args.job_id, args.after_seq).await
}

/// How long the watch keeps trying to get a stream back (any replica the dialer knows, with
/// `after_seq`) before it gives up: a replica that died is seconds, a rolling restart minutes.
const RESUME_FOR: Duration = Duration::from_secs(120);
/// How often a waiting job is looked at again: why it waits changes without events (a worker
/// connects, the queue is resumed, jobs ahead of it start).
const WAITING_POLL: Duration = Duration::from_secs(1);

/// Watches until the terminal event, resuming after a broken stream on whichever replica
/// answers; the exit code is the job's final state.
pub async fn follow(
    dialer: &mut crate::client::Dialer,
    job_id: &str,
    mut after_seq: Option<u64>,
) -> Outcome {
    let mut view = View::new();
    // Since when the watch has had no stream: past RESUME_FOR, it gives up.
    let mut lost: Option<tokio::time::Instant> = None;
    let mut wait = Duration::from_millis(200);
    loop {
        let broken = match watch_once(dialer, job_id, &mut after_seq, &mut view).await {
            Ok(Some(code)) => return Ok(ExitCode::from(code)),
            Ok(None) => "the stream ended".to_string(),
            Err(Resume::Gone(s)) => return Err(s.into()),
            Err(Resume::Lost(why, streamed)) => {
                if streamed {
                    lost = None;
                    wait = Duration::from_millis(200);
                }
                why
            }
        };
        let since = *lost.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() > RESUME_FOR {
            return Err(tonic::Status::unavailable(format!(
                "no server gave the watch back for {RESUME_FOR:?}: {broken}"
            ))
            .into());
        }
        dialer.failed();
        view.note(&format!("connection lost ({broken}); resuming"));
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Why a watch stream ended before the job did.
enum Resume {
    /// Try again elsewhere: why, and whether the stream delivered anything first.
    Lost(String, bool),
    /// The server refused the watch (the job does not exist, no right to watch it).
    Gone(tonic::Status),
}

/// Whether the server is worth asking again (it went away, as opposed to refusing).
fn passing(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// One stream, from a channel of `dialer`'s: the exit code once the job ended, `None` when the
/// stream just ended.
async fn watch_once(
    dialer: &mut crate::client::Dialer,
    job_id: &str,
    after_seq: &mut Option<u64>,
    view: &mut View,
) -> Result<Option<u8>, Resume> {
    let mut jobs = dialer
        .jobs()
        .await
        .map_err(|(addr, e)| Resume::Lost(format!("{addr}: {e}"), false))?;
    let request = proto::WatchJobRequest {
        job_id: job_id.to_string(),
        after_seq: *after_seq,
    };
    let mut stream = match jobs.watch_job(request).await {
        Ok(r) => r.into_inner(),
        Err(s) if passing(&s) => return Err(Resume::Lost(s.message().to_string(), false)),
        Err(s) => return Err(Resume::Gone(s)),
    };
    let mut streamed = false;
    let mut poll = tokio::time::interval(WAITING_POLL);
    poll.tick().await;
    loop {
        let item = tokio::select! {
            item = stream.next() => match item {
                Some(item) => item,
                // A watch resumed after the job's last event ends at once: show how it ended.
                None => return Ok(ended(&mut jobs, job_id, view).await),
            },
            _ = poll.tick(), if view.waiting() => {
                let request = proto::GetJobRequest { job_id: job_id.to_string() };
                if let Ok(Some(job)) = jobs.get_job(request).await.map(|r| r.into_inner().job) {
                    view.why(&job);
                }
                continue;
            }
        };
        match item {
            Ok(proto::WatchJobResponse { event: None }) => {}
            Ok(proto::WatchJobResponse { event: Some(event) }) => {
                streamed = true;
                if event.seq > 0 {
                    *after_seq = Some(event.seq);
                }
                if let Some(code) = view.show(&event) {
                    return Ok(Some(code));
                }
            }
            Err(s) if passing(&s) => return Err(Resume::Lost(s.message().to_string(), streamed)),
            Err(s) => return Err(Resume::Gone(s)),
        }
    }
}

/// The exit code of a job that has ended, shown as its snapshot; `None` while it has not.
async fn ended(jobs: &mut crate::client::Jobs, job_id: &str, view: &mut View) -> Option<u8> {
    let request = proto::GetJobRequest {
        job_id: job_id.to_string(),
    };
    let job = jobs.get_job(request).await.ok()?.into_inner().job?;
    let terminal = [JobState::Succeeded, JobState::Failed, JobState::Cancelled];
    if !terminal.iter().any(|s| *s as i32 == job.state) {
        return None;
    }
    let snapshot = proto::JobEvent {
        job_id: job.id.clone(),
        seq: 0,
        kind: Kind::Snapshot as i32,
        job: Some(job),
        ..Default::default()
    };
    view.show(&snapshot)
}

fn state_name(state: i32) -> &'static str {
    JobState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_"))
        .unwrap_or("?")
}

/// Draws events: a redrawn bar on a terminal, one line per event otherwise.
struct View {
    tty: bool,
    /// A bar is on screen and must be cleared before printing a line.
    bar: bool,
    /// The job's state as last seen.
    state: i32,
    /// Why it waits, as last shown: reason, jobs ahead, when it may run (unix s).
    shown: Option<(String, Option<u64>, Option<i64>)>,
}

impl View {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            bar: false,
            state: JobState::Unspecified as i32,
            shown: None,
        }
    }

    /// The job waits to run (and may say why).
    fn waiting(&self) -> bool {
        [JobState::Queued, JobState::Scheduled, JobState::Waiting]
            .iter()
            .any(|s| *s as i32 == self.state)
    }

    /// Shows why `job` waits, when that changed since it was last shown.
    fn why(&mut self, job: &proto::Job) {
        self.state = job.state;
        if !self.waiting() || job.blocked_reason.is_empty() {
            return;
        }
        let at = job.eligible_at.as_ref().map(|t| t.seconds);
        let now = (job.blocked_reason.clone(), job.jobs_ahead, at);
        if self.shown.as_ref() == Some(&now) {
            return;
        }
        let mut text = format!("waiting: {}", job.blocked_reason);
        match job.jobs_ahead {
            Some(1) => text.push_str(" (1 job ahead)"),
            Some(n) if n > 0 => text.push_str(&format!(" ({n} jobs ahead)")),
            _ => {}
        }
        if let Some(at) = at {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            text.push_str(&format!("; may run in {} s", (at - unix).max(0)));
        }
        self.shown = Some(now);
        self.line(&text);
    }

    fn line(&mut self, text: &str) {
        let mut err = std::io::stderr();
        if self.bar {
            let _ = write!(err, "\r\x1b[2K");
            self.bar = false;
        }
        let _ = writeln!(err, "{text}");
    }

    fn note(&mut self, text: &str) {
        self.line(text);
    }

    fn progress(&mut self, p: &proto::Progress) {
        const WIDTH: usize = 30;
        let filled = ((p.percent.clamp(0.0, 100.0) / 100.0) * WIDTH as f32).round() as usize;
        let text = format!(
            "[{}{}] {:>5.1}%  {}  {}",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            p.percent,
            p.stage,
            p.message
        );
        if self.tty {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K{}", text.trim_end());
            let _ = err.flush();
            self.bar = true;
        } else {
            self.line(text.trim_end());
        }
    }

    /// Shows one event; returns the exit code once the job has ended.
    fn show(&mut self, e: &proto::JobEvent) -> Option<u8> {
        match Kind::try_from(e.kind) {
            Ok(Kind::Keepalive) => return None,
            Ok(Kind::Progress) => {
                self.progress(e.progress.as_ref()?);
                return None;
            }
            Ok(Kind::Snapshot) => {
                let job = e.job.as_ref()?;
                self.line(&format!(
                    "job {} in {}: {} (attempt {})",
                    job.id,
                    job.queue,
                    state_name(job.state),
                    job.attempt
                ));
                self.shown = None;
                self.why(job);
                if job.state == JobState::Running as i32
                    && let Some(p) = &job.progress
                {
                    self.progress(p);
                }
                self.artifacts(&job.id, &job.artifacts);
                return self.end(job.state, &job.result, &job.error);
            }
            _ => {}
        }
        self.state = e.state;
        self.shown = None;
        let mut text = format!("{} (attempt {})", state_name(e.state), e.attempt);
        if !e.error.is_empty() && e.state != JobState::Failed as i32 {
            text.push_str(&format!(": after error: {}", e.error));
        }
        self.line(&text);
        self.artifacts(&e.job_id, &e.artifacts);
        self.end(e.state, &e.result, &e.error)
    }

    /// The files a succeeded job left, and how to fetch them.
    fn artifacts(&mut self, id: &str, artifacts: &[proto::Artifact]) {
        for a in artifacts {
            self.line(&format!(
                "artifact {} ({} bytes, {})",
                a.name, a.size, a.content_type
            ));
        }
        if !artifacts.is_empty() {
            self.line(&format!("fetch them: conveyor get {id} --download DIR"));
        }
    }

    fn end(&mut self, state: i32, result: &str, error: &str) -> Option<u8> {
        match JobState::try_from(state).ok()? {
            JobState::Succeeded => {
                println!("{result}");
                Some(exit::OK)
            }
            JobState::Failed => {
                self.line(&format!("failed: {error}"));
                Some(exit::FAILED)
            }
            JobState::Cancelled => Some(exit::CANCELLED),
            _ => None,
        }
    }
}
