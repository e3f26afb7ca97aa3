//! `conveyor submit`: sends a job and prints its id; `--watch` then follows it to the end.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{ClientArgs, Error, Outcome, watch};
use crate::config::parse_duration;
use crate::proto;

#[derive(Clone, Debug, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The queue, e.g. `render`.
    #[arg(long, short)]
    pub queue: String,
    /// The payload (usually JSON). Use `--file`, or `-` to read stdin, for larger ones.
    pub payload: Option<String>,
    /// Read the payload from this file (`-` for stdin).
    #[arg(long, conflicts_with = "payload")]
    pub file: Option<PathBuf>,
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// free, pro, premium or enterprise.
    #[arg(long, default_value = "free", value_parser = parse_tier)]
    pub tier: i32,
    /// 1 (most urgent) .. 9; the server's default is 5.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Run no sooner than this from now, e.g. 30s, 5m.
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Attempts before the job fails for good.
    #[arg(long)]
    pub attempts: Option<u32>,
    /// How long one attempt may run, e.g. 10m.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// First retry delay (doubles per attempt).
    #[arg(long, value_parser = parse_duration)]
    pub backoff: Option<Duration>,
    /// A label `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// A second submit with the same key returns the first job. Without one, the command makes
    /// up its own, so that its own tries after UNAVAILABLE make one job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Whom the job is for (an end user or account): within a tier, keys take turns.
    #[arg(long)]
    pub fairness_key: Option<String>,
    /// POST the job here when it ends (webhooks; see the README).
    #[arg(long)]
    pub callback_url: Option<String>,
    /// What the queue's per-key limits count it under, e.g. `tiktok:account-42` (see the
    /// server's `--key-limit`).
    #[arg(long)]
    pub limit_key: Option<String>,
    /// When the job succeeds, submit a job to this queue with its result as the payload (a
    /// flow: `--queue edit --then upload`); repeatable.
    #[arg(long = "then", value_name = "QUEUE")]
    pub then: Vec<String>,
    /// Wait for this job to succeed first (repeatable): the job is WAITING until then.
    #[arg(long = "depends-on", value_name = "JOB_ID")]
    pub depends_on: Vec<String>,
    /// If a job it depends on fails, end CANCELLED (the default is FAILED).
    #[arg(long)]
    pub cancel_if_dependency_fails: bool,
    /// Keep the job's history and artifacts past its queue's retention.
    #[arg(long)]
    pub keep: bool,
    /// Upload this file first and give it to the job as an input (repeatable); the worker
    /// finds it in `$CONVEYOR_INPUT_DIR` under its file name.
    #[arg(long = "input", value_name = "FILE")]
    pub inputs: Vec<std::path::PathBuf>,
    /// Follow the job to its end with a progress bar; exit with its outcome.
    #[arg(long)]
    pub watch: bool,
}

pub(super) fn parse_tier(s: &str) -> Result<i32, String> {
    let name = format!("TIER_{}", s.to_ascii_uppercase());
    proto::Tier::from_str_name(&name)
        .filter(|t| *t != proto::Tier::Unspecified)
        .map(|t| t as i32)
        .ok_or_else(|| format!("{s:?}: use free, pro, premium or enterprise"))
}

pub(super) fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: use key=value"))
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn payload(args: &SubmitArgs) -> Result<Vec<u8>, Error> {
    let read_stdin = || {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map(|_| buf)
    };
    let io = |e: std::io::Error| Error::Usage(format!("reading the payload: {e}"));
    match (&args.payload, &args.file) {
        (Some(p), _) if p == "-" => read_stdin().map_err(io),
        (Some(p), _) => Ok(p.clone().into_bytes()),
        (None, Some(f)) if f.as_os_str() == "-" => read_stdin().map_err(io),
        (None, Some(f)) => {
            std::fs::read(f).map_err(|e| Error::Usage(format!("{}: {e}", f.display())))
        }
        (None, None) => Ok(b"{}".to_vec()),
    }
}

/// Uploads `file` through a presigned URL; returns the reference a job names it by.
async fn upload_input(
    jobs: &mut crate::client::Jobs,
    file: &std::path::Path,
) -> Result<String, Error> {
    let failed = |what: String| Error::Usage(what);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| failed(format!("{}: not a file", file.display())))?;
    let content_type = crate::artifacts::content_type_of(&name);
    let upload = jobs
        .create_input_upload(proto::CreateInputUploadRequest {
            name,
            content_type: content_type.into(),
        })
        .await?
        .into_inner();
    let body = tokio::fs::read(file)
        .await
        .map_err(|e| failed(format!("{}: {e}", file.display())))?;
    crate::client::http()
        .build()
        .map_err(|e| failed(format!("HTTP client: {e}")))?
        .put(&upload.url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| failed(format!("uploading {}: {e}", file.display())))?;
    Ok(upload.input)
}

/// How often a submit answered UNAVAILABLE is tried again, the first after 200 ms, doubling.
const TRIES: u32 = 6;

/// Submits, trying again while the server says UNAVAILABLE (Redis or the database away for a
/// moment, or the replica gone: the next try goes to another). Safe because the request carries
/// an idempotency key.
async fn submit_retrying(
    dialer: &mut crate::client::Dialer,
    mut jobs: crate::client::Jobs,
    request: proto::SubmitJobRequest,
) -> Result<proto::SubmitJobResponse, crate::cli::Error> {
    let mut wait = std::time::Duration::from_millis(200);
    for _ in 1..TRIES {
        match jobs.submit_job(request.clone()).await {
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tracing::warn!("submit: {}; trying again in {wait:?}", s.message());
                tokio::time::sleep(wait).await;
                wait *= 2;
                dialer.failed();
                if let Ok(other) = dialer.jobs().await {
                    jobs = other;
                }
            }
            answer => return Ok(answer.map(tonic::Response::into_inner)?),
        }
    }
    Ok(jobs.submit_job(request).await?.into_inner())
}

pub async fn run(args: SubmitArgs) -> Outcome {
    let mut dialer = args.client.dialer()?;
    let mut jobs = dialer.jobs().await?;
    let mut inputs = Vec::with_capacity(args.inputs.len());
    for file in &args.inputs {
        inputs.push(upload_input(&mut jobs, file).await?);
    }
    let request = proto::SubmitJobRequest {
        queue: args.queue.clone(),
        payload: payload(&args)?,
        content_type: args.content_type.clone(),
        tier: args.tier,
        priority: args.priority,
        labels: args.labels.iter().cloned().collect::<HashMap<_, _>>(),
        delay: args.delay.map(duration),
        max_attempts: args.attempts,
        timeout: args.timeout.map(duration),
        backoff_initial: args.backoff.map(duration),
        // A key of its own when none is given, so that trying again is safe: a submit Redis
        // answered too late is the same job, not a second one.
        idempotency_key: args
            .idempotency_key
            .clone()
            .unwrap_or_else(|| format!("cli:{}", uuid::Uuid::now_v7())),
        fairness_key: args.fairness_key.clone().unwrap_or_default(),
        callback_url: args.callback_url.clone().unwrap_or_default(),
        limit_key: args.limit_key.clone().unwrap_or_default(),
        on_success: args
            .then
            .iter()
            .map(|queue| proto::SubmitJobRequest {
                queue: queue.clone(),
                ..Default::default()
            })
            .collect(),
        depends_on: args.depends_on.clone(),
        if_dependency_fails: match args.cancel_if_dependency_fails {
            true => proto::DependencyFailure::Cancel as i32,
            false => proto::DependencyFailure::Fail as i32,
        },
        keep: args.keep,
        inputs,
        ..Default::default()
    };
    let response = submit_retrying(&mut dialer, jobs, request).await?;
    let job = response.job.unwrap_or_default();
    // Not created under a key of its own: an earlier try of this same command went through.
    if response.created || args.idempotency_key.is_none() {
        println!("{}", job.id);
    } else {
        println!("{} (existing job with this idempotency key)", job.id);
    }
    if !args.watch {
        return Ok(ExitCode::SUCCESS);
    }
    watch::follow(&mut dialer, &job.id, None).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn tiers_and_labels() {
        assert_eq!(
            super::parse_tier("Premium"),
            Ok(crate::proto::Tier::Premium as i32)
        );
        assert!(super::parse_tier("gold").is_err() && super::parse_tier("unspecified").is_err());
        assert_eq!(super::parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(super::parse_label("ab").is_err());
    }
}
