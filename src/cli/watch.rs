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
    let mut jobs = args.client.jobs().await?;
    follow(&mut jobs, &args.job_id, args.after_seq).await
}

/// How many times a broken stream is resumed (with `after_seq`) before giving up.
const RESUMES: u32 = 10;
/// How often a waiting job is looked at again: why it waits changes without events (a worker
/// connects, the queue is resumed, jobs ahead of it start).
const WAITING_POLL: Duration = Duration::from_secs(1);

/// Watches until the terminal event, resuming after a broken stream; the exit code is the
/// job's final state.
pub async fn follow(
    jobs: &mut crate::client::Jobs,
    job_id: &str,
    mut after_seq: Option<u64>,
) -> Outcome {
    let mut view = View::new();
    let mut resumes = 0;
    loop {
        let request = proto::WatchJobRequest {
            job_id: job_id.to_string(),
            after_seq,
        };
        let mut stream = match jobs.watch_job(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && resumes < RESUMES => {
                resumes += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(s) => return Err(s.into()),
        };
        let mut poll = tokio::time::interval(WAITING_POLL);
        poll.tick().await;
        loop {
            let item = tokio::select! {
                item = stream.next() => match item {
                    Some(item) => item,
                    None => break,
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
                    if event.seq > 0 {
                        after_seq = Some(event.seq);
                    }
                    if let Some(code) = view.show(&event) {
                        return Ok(ExitCode::from(code));
                    }
                }
                Err(s)
                    if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown =>
                {
                    break;
                }
                Err(s) => return Err(s.into()),
            }
        }
        resumes += 1;
        if resumes > RESUMES {
            return Err(tonic::Status::unavailable("the watch stream kept breaking").into());
        }
        view.note("connection lost; resuming");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
