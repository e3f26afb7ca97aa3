//! `conveyor get`, `list`, `cancel` and `retry`: read and change jobs, printed for people.

use std::process::ExitCode;

use super::{ClientArgs, Error, Outcome};
use crate::proto::{self, JobState, Tier};

#[derive(Clone, Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub job_id: String,
    /// Download the job's artifacts into this folder (created if needed).
    #[arg(long, value_name = "DIR")]
    pub download: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this queue (every queue when absent; a server without a database needs one).
    #[arg(long, short, default_value = "")]
    pub queue: String,
    /// Only jobs in this state: scheduled, queued, running, succeeded, failed, cancelled.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<i32>,
    /// Only jobs of this tier: free, pro, premium, enterprise.
    #[arg(long, value_parser = super::submit::parse_tier)]
    pub tier: Option<i32>,
    /// Only jobs with this label (repeatable; all must match).
    #[arg(long = "label", value_parser = super::submit::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Jobs per page.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// The token a previous page printed.
    #[arg(long)]
    pub page_token: Option<String>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub job_id: String,
}

#[derive(Clone, Debug, clap::Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The FAILED job to put back; or leave it out and give --queue.
    #[arg(required_unless_present = "queue", conflicts_with = "queue")]
    pub job_id: Option<String>,
    /// Put back every FAILED job of yours in this queue (that matches --tier and --label).
    #[arg(long, short)]
    pub queue: Option<String>,
    #[arg(long, value_parser = super::submit::parse_tier, requires = "queue")]
    pub tier: Option<i32>,
    #[arg(long = "label", value_parser = super::submit::parse_label, requires = "queue")]
    pub labels: Vec<(String, String)>,
}

fn parse_state(s: &str) -> Result<i32, String> {
    JobState::from_str_name(&format!("JOB_STATE_{}", s.to_ascii_uppercase()))
        .filter(|s| *s != JobState::Unspecified)
        .map(|s| s as i32)
        .ok_or_else(|| {
            format!(
                "{s:?}: use waiting, scheduled, queued, running, succeeded, failed or cancelled"
            )
        })
}

fn state(value: i32) -> String {
    JobState::try_from(value)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_").to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn tier(value: i32) -> String {
    Tier::try_from(value)
        .map(|t| t.as_str_name().trim_start_matches("TIER_").to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| t.to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_job(job: &proto::Job) {
    let progress = job.progress.clone().unwrap_or_default();
    println!("id:        {}", job.id);
    println!("queue:     {}", job.queue);
    println!("state:     {}", state(job.state));
    if !job.blocked_reason.is_empty() {
        let mut why = job.blocked_reason.clone();
        if job.eligible_at.is_some() {
            why.push_str(&format!(" until {}", time(&job.eligible_at)));
        }
        if let Some(n) = job.jobs_ahead {
            why.push_str(&format!(", {n} ahead"));
        }
        println!("waiting:   {why}");
    }
    println!("tier:      {}", tier(job.tier));
    if !job.limit_key.is_empty() {
        println!("limit key: {}", job.limit_key);
    }
    if !job.parent_id.is_empty() {
        println!("parent:    {}", job.parent_id);
    }
    if !job.depends_on.is_empty() {
        println!("after:     {}", job.depends_on.join(", "));
    }
    if job.follow_ups > 0 {
        println!("then:      {} follow-up job(s) on success", job.follow_ups);
    }
    if job.keep {
        println!("kept:      past its queue's retention");
    }
    println!("priority:  {}", job.priority);
    println!("attempt:   {}/{}", job.attempt, job.max_attempts);
    println!(
        "progress:  {:.1}% {} {}",
        progress.percent, progress.stage, progress.message
    );
    println!("created:   {}", time(&job.created_at));
    println!("started:   {}", time(&job.started_at));
    println!("finished:  {}", time(&job.finished_at));
    if !job.worker_id.is_empty() {
        println!("worker:    {}", job.worker_id);
    }
    if !job.result.is_empty() {
        println!("result:    {}", job.result);
    }
    if !job.error.is_empty() {
        println!("error:     {}", job.error);
    }
    for a in &job.artifacts {
        println!(
            "artifact:  {}  {} bytes  {}  {}",
            a.name, a.size, a.content_type, a.checksum
        );
    }
}

pub async fn get(args: GetArgs) -> Outcome {
    let mut jobs = args.client.jobs().await?;
    let job = jobs
        .get_job(proto::GetJobRequest {
            job_id: args.job_id,
        })
        .await?
        .into_inner()
        .job
        .ok_or_else(|| Error::Usage("empty answer".into()))?;
    print_job(&job);
    if let Some(dir) = args.download {
        download(&mut jobs, &job, &dir).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Fetches each artifact of `job` through a presigned URL into `dir`, keeping its name's
/// folders.
async fn download(
    jobs: &mut crate::client::Jobs,
    job: &proto::Job,
    dir: &std::path::Path,
) -> Result<(), Error> {
    if job.artifacts.is_empty() {
        eprintln!("{} has no artifacts", job.id);
        return Ok(());
    }
    let failed = |what: String| Error::Usage(what);
    let http = crate::client::http()
        .build()
        .map_err(|e| failed(format!("HTTP client: {e}")))?;
    for artifact in &job.artifacts {
        // The name comes from the server; it still may not reach outside `dir`.
        crate::artifacts::check_name(&artifact.name).map_err(|e| failed(e.to_string()))?;
        let url = jobs
            .get_artifact_url(proto::GetArtifactUrlRequest {
                job_id: job.id.clone(),
                name: artifact.name.clone(),
                expiry: None,
            })
            .await?
            .into_inner()
            .url;
        let path = dir.join(&artifact.name);
        let written = crate::client::fetch_to(&http, &url, &path, &artifact.name)
            .await
            .map_err(failed)?;
        if written != artifact.size {
            return Err(failed(format!(
                "{}: got {written} bytes, the job says {}",
                artifact.name, artifact.size
            )));
        }
        eprintln!("downloaded {} ({written} bytes)", path.display());
    }
    Ok(())
}

pub async fn list(args: ListArgs) -> Outcome {
    let mut jobs = args.client.jobs().await?;
    let request = proto::ListJobsRequest {
        queue: args.queue,
        state: args.state.unwrap_or_default(),
        page_size: args.limit,
        page_token: args.page_token.unwrap_or_default(),
        tier: args.tier.unwrap_or_default(),
        labels: args.labels.into_iter().collect(),
        ..Default::default()
    };
    let page = jobs.list_jobs(request).await?.into_inner();
    for job in &page.jobs {
        let pct = job.progress.as_ref().map(|p| p.percent).unwrap_or(0.0);
        println!(
            "{}  {:<9}  {:<10}  p{}  {:>5.1}%  {}",
            job.id,
            state(job.state),
            tier(job.tier),
            job.priority,
            pct,
            time(&job.created_at)
        );
    }
    if !page.next_page_token.is_empty() {
        println!("next page: --page-token {}", page.next_page_token);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(args: CancelArgs) -> Outcome {
    let mut jobs = args.client.jobs().await?;
    let job = jobs
        .cancel_job(proto::CancelJobRequest {
            job_id: args.job_id,
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    println!("{} {}", job.id, state(job.state));
    Ok(ExitCode::SUCCESS)
}

/// Puts FAILED jobs back; a bulk retry calls again while the server says more match.
pub async fn retry(args: RetryArgs) -> Outcome {
    let mut jobs = args.client.jobs().await?;
    let request = proto::RetryJobRequest {
        job_id: args.job_id.unwrap_or_default(),
        queue: args.queue.unwrap_or_default(),
        tier: args.tier.unwrap_or_default(),
        labels: args.labels.into_iter().collect(),
        ..Default::default()
    };
    let mut total = 0;
    loop {
        let answer = jobs.retry_job(request.clone()).await?.into_inner();
        for job in &answer.jobs {
            println!(
                "{} {} (attempt {}/{})",
                job.id,
                state(job.state),
                job.attempt,
                job.max_attempts
            );
        }
        total += answer.jobs.len();
        if !answer.more || answer.jobs.is_empty() {
            break;
        }
    }
    if request.job_id.is_empty() {
        eprintln!("{total} jobs put back");
    }
    Ok(ExitCode::SUCCESS)
}
