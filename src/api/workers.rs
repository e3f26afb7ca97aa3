//! WorkerService: one bidirectional stream per worker, between the worker and the dispatcher.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::status::Error;
use super::{convert, validate};
use crate::dispatcher::{self, Link, Report};
use crate::proto::{self, worker_message::Msg, worker_service_server::WorkerService};
use crate::scheduler::Progress;

/// Most slots one worker stream may announce.
const MAX_CONCURRENCY: u32 = 1000;
/// A worker stream is dead after this many heartbeat intervals of silence.
const MISSED_HEARTBEATS: u32 = 3;

pub struct Workers {
    dispatcher: dispatcher::Handle,
}

impl Workers {
    pub fn new(dispatcher: dispatcher::Handle) -> Self {
        Self { dispatcher }
    }
}

type Outbound = mpsc::Sender<Result<proto::ServerMessage, Status>>;

#[tonic::async_trait]
impl WorkerService for Workers {
    type ConnectStream = ReceiverStream<Result<proto::ServerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<proto::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
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
        let hello = check_hello(hello)?;
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
            .send(Ok(message(proto::server_message::Msg::Welcome(welcome))))
            .await;
        tokio::spawn(serve(link, inbound, tx, heartbeat));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn message(msg: proto::server_message::Msg) -> proto::ServerMessage {
    proto::ServerMessage { msg: Some(msg) }
}

#[allow(clippy::result_large_err)]
fn check_hello(h: proto::Hello) -> Result<dispatcher::Hello, Status> {
    if h.queues.is_empty() {
        return Err(Status::invalid_argument(
            "hello.queues: name at least one queue",
        ));
    }
    for q in &h.queues {
        validate::queue(q)?;
    }
    if !(1..=MAX_CONCURRENCY).contains(&h.concurrency) {
        return Err(Status::invalid_argument(format!(
            "hello.concurrency: must be 1..={MAX_CONCURRENCY}"
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
    })
}

/// Moves messages both ways until either side goes away or the worker falls silent.
async fn serve(
    mut link: Link,
    mut inbound: Streaming<proto::WorkerMessage>,
    tx: Outbound,
    heartbeat: Duration,
) {
    let mut ticker = tokio::time::interval(heartbeat);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            received = inbound.message() => {
                let Ok(Some(m)) = received else { break };
                last_heard = Instant::now();
                match m.msg {
                    Some(Msg::Hello(_)) => {
                        let _ = tx.send(Err(Status::failed_precondition("second Hello on one stream"))).await;
                        break;
                    }
                    Some(Msg::Heartbeat(_)) | None => {}
                    Some(Msg::Progress(p)) => {
                        let (id, token) = (p.job_id.clone(), p.token);
                        if let Err((code, text)) = report(&mut link, progress(p)).await {
                            let _ = tx.send(Ok(result(id, token, code, text))).await;
                        }
                    }
                    Some(Msg::Complete(c)) => {
                        let (id, token) = (c.job_id.clone(), c.token);
                        let r = Report::Complete { job_id: c.job_id, token: c.token, result: c.result };
                        let (code, text) = report(&mut link, Ok(r)).await.err().unwrap_or((Code::Ok, String::new()));
                        let _ = tx.send(Ok(result(id, token, code, text))).await;
                    }
                    Some(Msg::Fail(f)) => {
                        let (id, token) = (f.job_id.clone(), f.token);
                        let r = Report::Fail { job_id: f.job_id, token: f.token, error: f.error, retryable: f.retryable };
                        let (code, text) = report(&mut link, Ok(r)).await.err().unwrap_or((Code::Ok, String::new()));
                        let _ = tx.send(Ok(result(id, token, code, text))).await;
                    }
                }
            }
            out = link.recv() => {
                let Some(out) = out else { break };
                if tx.send(Ok(convert::to_worker(out))).await.is_err() { break }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > heartbeat * MISSED_HEARTBEATS {
                    tracing::info!(worker = link.worker_id, "worker fell silent; closing its stream");
                    break;
                }
                let beat = message(proto::server_message::Msg::Heartbeat(proto::Heartbeat {}));
                if tx.send(Ok(beat)).await.is_err() { break }
            }
            _ = tx.closed() => break,
        }
    }
}

fn progress(p: proto::ProgressReport) -> Result<Report, (Code, String)> {
    let progress = p.progress.unwrap_or_default();
    validate::progress_percent(progress.percent)
        .map_err(|e| (Code::InvalidArgument, e.to_string()))?;
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

/// Checks a report's ids and applies it; the error is what the worker is told.
async fn report(
    link: &mut Link,
    report: Result<Report, (Code, String)>,
) -> Result<(), (Code, String)> {
    let report = report?;
    let (id, token) = match &report {
        Report::Progress { job_id, token, .. }
        | Report::Complete { job_id, token, .. }
        | Report::Fail { job_id, token, .. } => (job_id, *token),
    };
    validate::job_id(id).map_err(|e| (Code::InvalidArgument, e.to_string()))?;
    if token == 0 {
        return Err((
            Code::InvalidArgument,
            "token: 0 is not a fencing token".into(),
        ));
    }
    link.report(report).await.map_err(|e| {
        let status = Status::from(e);
        (status.code(), status.message().to_string())
    })
}

fn result(job_id: String, token: u64, code: Code, text: String) -> proto::ServerMessage {
    let r = proto::ReportResult {
        job_id,
        token,
        code: code as i32,
        message: text,
    };
    message(proto::server_message::Msg::ReportResult(r))
}
