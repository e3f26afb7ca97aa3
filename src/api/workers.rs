//! WorkerService: one bidirectional stream per worker, between the worker and the dispatcher.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::status::Error;
use super::{Uploads, caller, convert, validate};
use crate::auth::Principal;
use crate::dispatcher::{self, Applied, Link};
use crate::proto::{self, connect_request::Msg, worker_service_server::WorkerService};
use crate::scheduler::{Progress, Report};

/// A worker stream is dead after this many heartbeat intervals of silence.
const MISSED_HEARTBEATS: u32 = 3;
/// Reports waiting for the batch in flight; past this the stream is not read (HTTP/2 flow
/// control then slows the worker down) until the batch is applied.
const MAX_PENDING: usize = 4096;
/// Upload requests of one stream being answered at once.
const UPLOADS_IN_FLIGHT: usize = 16;

pub struct Workers {
    dispatcher: dispatcher::Handle,
    /// Most slots one worker stream may announce.
    max_slots: u32,
    uploads: Uploads,
}

impl Workers {
    pub fn new(dispatcher: dispatcher::Handle, max_slots: u32, uploads: Uploads) -> Self {
        Self {
            dispatcher,
            max_slots,
            uploads,
        }
    }
}

type Outbound = mpsc::Sender<Result<proto::ConnectResponse, Status>>;

#[tonic::async_trait]
impl WorkerService for Workers {
    type ConnectStream = ReceiverStream<Result<proto::ConnectResponse, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<proto::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let principal = caller(&request)?;
        let mut inbound = request.into_inner();
        let heartbeat = self.dispatcher.options().heartbeat;
        let first = tokio::time::timeout(heartbeat * MISSED_HEARTBEATS, inbound.message())
            .await
            .map_err(|_| {
                Status::failed_precondition("no Hello: a worker stream must start with Hello")
            })??;
        let hello = match first.and_then(|m| m.msg) {
            Some(Msg::Hello(hello)) => hello,
            Some(_) => {
                return Err(Status::failed_precondition(
                    "a worker stream must start with Hello",
                ));
            }
            None => {
                return Err(Status::cancelled(
                    "the worker closed the stream before Hello",
                ));
            }
        };
        let hello = check_hello(hello, &principal, self.max_slots)?;
        let (link, welcome) = self.dispatcher.connect(hello).await.map_err(Error::from)?;
        let (tx, rx) = mpsc::channel(64);
        let welcome = proto::Welcome {
            worker_id: link.worker_id.clone(),
            lease_ttl: Some(convert::duration(self.dispatcher.lease_ttl())),
            heartbeat_interval: Some(convert::duration(heartbeat)),
            reattached: welcome.reattached,
            lost: welcome.lost,
        };
        let _ = tx
            .send(Ok(message(proto::connect_response::Msg::Welcome(welcome))))
            .await;
        tokio::spawn(serve(link, inbound, tx, heartbeat, self.uploads.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn message(msg: proto::connect_response::Msg) -> proto::ConnectResponse {
    proto::ConnectResponse { msg: Some(msg) }
}

#[allow(clippy::result_large_err)]
pub(super) fn check_hello(
    h: proto::Hello,
    principal: &Principal,
    max_slots: u32,
) -> Result<dispatcher::Hello, Status> {
    if h.queues.is_empty() {
        return Err(Status::invalid_argument(
            "hello.queues: name at least one queue",
        ));
    }
    for q in &h.queues {
        validate::queue(q)?;
        if !principal.may_serve(q) {
            let message = format!("hello.queues: this worker token may not serve queue {q:?}");
            return Err(Error::PermissionDenied(message).into());
        }
    }
    if !(1..=max_slots).contains(&h.concurrency) {
        return Err(Status::invalid_argument(format!(
            "hello.concurrency: must be 1..={max_slots}"
        )));
    }
    for lease in &h.held {
        validate::job_id(&lease.job_id)?;
    }
    let worker_id = if h.worker_id.is_empty() {
        uuid::Uuid::now_v7().to_string()
    } else {
        h.worker_id
    };
    if worker_id.len() > 128 {
        return Err(Status::invalid_argument("hello.worker_id: over 128 bytes"));
    }
    Ok(dispatcher::Hello {
        worker_id,
        queues: h.queues,
        concurrency: h.concurrency,
        held: h.held.into_iter().map(|l| (l.job_id, l.token)).collect(),
        stopping: h.stopping,
    })
}

/// Moves messages both ways until either side goes away or the worker falls silent. Reports
/// are applied in batches, one batch at a time: those that arrive while one is applied form the
/// next (a group commit), so a busy worker costs a few Redis calls per batch, not per job.
async fn serve(
    mut link: Link,
    mut inbound: Streaming<proto::ConnectRequest>,
    tx: Outbound,
    heartbeat: Duration,
    uploads: Uploads,
) {
    let mut ticker = tokio::time::interval(heartbeat);
    let mut last_heard = Instant::now();
    let mut pending: Vec<Report> = Vec::new();
    let mut applying: Option<JoinHandle<Applied>> = None;
    let asking = std::sync::Arc::new(tokio::sync::Semaphore::new(UPLOADS_IN_FLIGHT));
    // Completes naming artifacts, back from the store check (`Uploads::complete`).
    let (checked_tx, mut checked) = mpsc::channel::<Result<Report, Refusal>>(UPLOADS_IN_FLIGHT);
    loop {
        if applying.is_none() && !pending.is_empty() {
            let batch = link.batch(std::mem::take(&mut pending));
            applying = Some(tokio::spawn(batch.apply()));
        }
        tokio::select! {
            received = inbound.message(), if pending.len() < MAX_PENDING => {
                let Ok(Some(m)) = received else { break };
                last_heard = Instant::now();
                traced_end(m.msg.as_ref());
                let report = match m.msg {
                    Some(Msg::Hello(_)) => {
                        let _ = tx.send(Err(Status::failed_precondition("second Hello on one stream"))).await;
                        break;
                    }
                    Some(Msg::Heartbeat(_)) | None => continue,
                    Some(Msg::Stopping(s)) => {
                        tracing::info!(worker = link.worker_id, reason = s.reason, "worker takes no new jobs");
                        link.stopping().await;
                        continue;
                    }
                    // Answered on the side, so presigning does not hold up the reports; a worker
                    // with UPLOADS_IN_FLIGHT requests unanswered is not read until one is.
                    Some(msg @ (Msg::Upload(_) | Msg::UploadDone(_))) => {
                        let Ok(permit) = asking.clone().acquire_owned().await else { break };
                        let (uploads, tx, worker) = (uploads.clone(), tx.clone(), link.worker_id.clone());
                        tokio::spawn(async move {
                            let answer = match msg {
                                Msg::Upload(r) => uploads.answer(&worker, r).await,
                                Msg::UploadDone(d) => uploads.finish(&worker, d).await,
                                _ => unreachable!("matched above"),
                            };
                            let _ = tx.send(Ok(message(answer))).await;
                            drop(permit);
                        });
                        continue;
                    }
                    // The store is asked about its files first, on the side like uploads.
                    Some(Msg::Complete(c)) if !c.artifacts.is_empty() => {
                        let Ok(permit) = asking.clone().acquire_owned().await else { break };
                        let (uploads, checked, worker) = (uploads.clone(), checked_tx.clone(), link.worker_id.clone());
                        tokio::spawn(async move {
                            let _ = checked.send(uploads.complete(&worker, c).await).await;
                            drop(permit);
                        });
                        continue;
                    }
                    Some(msg) => report(msg),
                };
                if refuse_or_take(report, &mut pending, &tx).await.is_err() { break }
            }
            Some(report) = checked.recv() => {
                if refuse_or_take(report, &mut pending, &tx).await.is_err() { break }
            }
            applied = async { applying.as_mut().expect("guarded").await }, if applying.is_some() => {
                applying = None;
                let Ok(applied) = applied else { break };
                link.settle(&applied).await;
                if answer(&tx, applied).await.is_err() { break }
            }
            out = link.recv() => {
                let Some(out) = out else { break };
                let inputs = match &out {
                    dispatcher::ToWorker::Assign { job, .. } => uploads.input_urls(job).await,
                    _ => Vec::new(),
                };
                if tx.send(Ok(convert::to_worker(out, inputs))).await.is_err() { break }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > heartbeat * MISSED_HEARTBEATS {
                    tracing::info!(worker = link.worker_id, "worker fell silent; closing its stream");
                    break;
                }
                let beat = message(proto::connect_response::Msg::Heartbeat(proto::Heartbeat {}));
                if tx.send(Ok(beat)).await.is_err() { break }
            }
            _ = tx.closed() => break,
        }
    }
    // Reports already taken in are applied even when the stream is gone: the work is done.
    if let Some(applying) = applying
        && let Ok(applied) = applying.await
    {
        link.settle(&applied).await;
    }
}

/// A report refused before it reached the scheduler: (job id, token, code, message).
pub(super) type Refusal = (String, u64, Code, String);

/// Queues a checked report for the next batch, or tells the worker why it was refused.
async fn refuse_or_take(
    report: Result<Report, Refusal>,
    pending: &mut Vec<Report>,
    tx: &Outbound,
) -> Result<(), ()> {
    match report {
        Ok(report) => {
            pending.push(report);
            Ok(())
        }
        Err((id, token, code, text)) => tx
            .send(Ok(result(id, token, code, text)))
            .await
            .map_err(|_| ()),
    }
}

/// Tells the worker what became of its Completes and Fails (always) and of refused progress.
async fn answer(tx: &Outbound, applied: Applied) -> Result<(), ()> {
    for (report, verdict, _) in applied.0 {
        let (code, text) = match verdict {
            Ok(()) if matches!(report, Report::Progress { .. }) => continue,
            Ok(()) => (Code::Ok, String::new()),
            Err(e) => {
                let status = Status::from(e);
                (status.code(), status.message().to_string())
            }
        };
        let (id, token) = (report.job_id().to_string(), report.token());
        tx.send(Ok(result(id, token, code, text)))
            .await
            .map_err(|_| ())?;
    }
    Ok(())
}

/// Marks an attempt's reported end in the job's trace (a child of the worker's span).
fn traced_end(msg: Option<&Msg>) {
    let (name, job_id, trace_context) = match msg {
        Some(Msg::Complete(c)) => ("job.complete", &c.job_id, &c.trace_context),
        Some(Msg::Fail(f)) => ("job.fail", &f.job_id, &f.trace_context),
        _ => return,
    };
    let span = crate::telemetry::job_span(name, trace_context, job_id, None);
    crate::telemetry::end(span);
}

/// A Progress, Complete or Fail as the scheduler takes it, or why it is refused.
pub(super) fn report(msg: Msg) -> Result<Report, Refusal> {
    let report = match msg {
        Msg::Progress(p) => progress(p)?,
        // One naming artifacts goes through `Uploads::complete` instead.
        Msg::Complete(c) => Report::Complete {
            job_id: c.job_id,
            token: c.token,
            result: c.result,
            artifacts: Vec::new(),
        },
        Msg::Fail(f) => Report::Fail {
            job_id: f.job_id,
            token: f.token,
            error: f.error,
            retryable: f.retryable,
        },
        Msg::Decline(d) => Report::Decline {
            job_id: d.job_id,
            token: d.token,
            reason: d.reason,
        },
        Msg::Hello(_)
        | Msg::Heartbeat(_)
        | Msg::Upload(_)
        | Msg::UploadDone(_)
        | Msg::Stopping(_) => {
            let refusal = "only Progress, Complete, Fail and Decline are reports".to_string();
            return Err((String::new(), 0, Code::FailedPrecondition, refusal));
        }
    };
    check(report)
}

#[allow(clippy::result_large_err)]
fn progress(p: proto::ProgressReport) -> Result<Report, Refusal> {
    let progress = p.progress.unwrap_or_default();
    validate::progress_percent(progress.percent).map_err(|e| {
        (
            p.job_id.clone(),
            p.token,
            Code::InvalidArgument,
            e.to_string(),
        )
    })?;
    Ok(Report::Progress {
        job_id: p.job_id,
        token: p.token,
        progress: Progress {
            percent: progress.percent,
            stage: progress.stage,
            message: progress.message,
        },
    })
}

/// Checks a report's ids before it goes anywhere.
fn check(report: Report) -> Result<Report, Refusal> {
    let refuse = |code, text: String| (report.job_id().to_string(), report.token(), code, text);
    if let Err(e) = validate::job_id(report.job_id()) {
        return Err(refuse(Code::InvalidArgument, e.to_string()));
    }
    if report.token() == 0 {
        return Err(refuse(
            Code::InvalidArgument,
            "token: 0 is not a fencing token".into(),
        ));
    }
    Ok(report)
}

fn result(job_id: String, token: u64, code: Code, text: String) -> proto::ConnectResponse {
    let r = proto::ReportResult {
        job_id,
        token,
        code: code as i32,
        message: text,
    };
    message(proto::connect_response::Msg::ReportResult(r))
}
