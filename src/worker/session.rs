//! One connection of the worker runtime: Hello and Welcome, then assignments, cancels and
//! reports until the stream ends.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::command::{self, Event};
use super::{End, Error, Running, Worker, decline, sleep_until, token_of};
use crate::proto::{self, connect_request::Msg as Out, connect_response::Msg as In};

impl Worker {
    /// One stream: Hello, Welcome, then assignments and reports until it ends.
    pub(super) async fn connection(
        &mut self,
        dialer: &mut crate::client::Dialer,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<End, Error> {
        let channel: Channel = match dialer.channel().await {
            Ok(c) => c,
            Err((addr, e)) => return Ok(End::Broken(format!("{addr}: {e}"))),
        };
        let (tx, rx) = mpsc::channel(256);
        let _ = tx
            .send(proto::ConnectRequest {
                msg: Some(self.hello()),
            })
            .await;
        let mut client = crate::client::workers(channel, dialer.bearer.clone());
        let mut inbound = match client.connect(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) if is_refusal(&s) => return Err(Error::Refused(s)),
            Err(s) => return Ok(End::Broken(s.to_string())),
        };
        let welcome = match inbound.next().await {
            Some(Ok(proto::ConnectResponse {
                msg: Some(In::Welcome(w)),
            })) => w,
            Some(Err(s)) if is_refusal(&s) => return Err(Error::Refused(s)),
            other => return Ok(End::Broken(format!("expected Welcome, got {other:?}"))),
        };
        for id in &welcome.lost {
            tracing::warn!(job = id, "lease lost while disconnected; stopping the job");
            self.kill(id);
        }
        let heartbeat = welcome
            .heartbeat_interval
            .map(|d| Duration::new(d.seconds as u64, d.nanos as u32));
        let heartbeat = heartbeat
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(5));
        tracing::info!(worker = self.worker_id, queues = ?self.options.queues, "connected");
        for message in self.outbox.values() {
            let _ = tx
                .send(proto::ConnectRequest {
                    msg: Some(message.clone()),
                })
                .await;
        }
        let mut ticker = tokio::time::interval(heartbeat);
        let mut last_heard = Instant::now();
        // Questions asked on an earlier stream are answered there or never: their askers try
        // again.
        self.asks.clear();
        // The Hello said so already.
        let mut told_stopping = self.stopping.is_some();
        loop {
            if self.done() {
                return Ok(End::Stopped);
            }
            tokio::select! {
                message = inbound.next() => {
                    let message = match message {
                        Some(Ok(m)) => m,
                        Some(Err(s)) => return Ok(End::Broken(s.to_string())),
                        None => return Ok(End::Broken("the server closed the stream".into())),
                    };
                    last_heard = Instant::now();
                    match message.msg {
                        Some(In::Assignment(a)) => self.start(a, &tx).await,
                        Some(In::Cancel(c)) => {
                            tracing::info!(job = c.job_id, reason = c.reason, "stopping job");
                            self.kill(&c.job_id);
                        }
                        Some(In::Drain(_)) => return Ok(End::Drained),
                        Some(In::ReportResult(r)) => self.answered(r),
                        Some(In::UploadUrl(u)) => self.reply((u.job_id.clone(), u.name.clone()), In::UploadUrl(u)),
                        Some(In::UploadResult(r)) => self.reply((r.job_id.clone(), r.name.clone()), In::UploadResult(r)),
                        _ => {}
                    }
                }
                Some(event) = self.events.recv() => {
                    let message = match event {
                        Event::Progress { job_id, token, progress } => Out::Progress(proto::ProgressReport {
                            job_id, token,
                            progress: Some(proto::Progress { percent: progress.percent, stage: progress.stage, message: progress.message }),
                        }),
                        Event::Ask { job_id, name, message, reply } => {
                            self.asks.insert((job_id, name), reply);
                            message
                        }
                        ended => match self.ended(ended) {
                            Some(report) => report,
                            None => continue,
                        },
                    };
                    // A worker that cannot start its command says it takes no more before it
                    // hands the job back, so the job is not offered to it again.
                    let told = self.tell_stopping(&mut told_stopping, &tx).await;
                    if !told || tx.send(proto::ConnectRequest { msg: Some(message) }).await.is_err() {
                        return Ok(End::Broken("the stream closed".into()));
                    }
                }
                _ = ticker.tick() => {
                    if last_heard.elapsed() > heartbeat * 3 {
                        return Ok(End::Broken("no heartbeat from the server".into()));
                    }
                    let _ = tx.send(proto::ConnectRequest { msg: Some(Out::Heartbeat(proto::Heartbeat {})) }).await;
                    for id in std::mem::take(&mut self.retry) {
                        if let Some(message) = self.outbox.get(&id) {
                            let _ = tx.send(proto::ConnectRequest { msg: Some(message.clone()) }).await;
                        }
                    }
                }
                _ = stop.changed(), if self.deadline.is_none() => self.shutdown(),
                _ = sleep_until(self.deadline), if self.deadline.is_some() => {
                    self.out_of_time();
                    return Ok(End::Stopped);
                }
            }
            if !self.tell_stopping(&mut told_stopping, &tx).await {
                return Ok(End::Broken("the stream closed".into()));
            }
        }
    }

    /// Tells the server, once per stream, that this worker takes no new jobs (it then offers
    /// none of its slots); false when the stream is gone.
    async fn tell_stopping(
        &self,
        told: &mut bool,
        tx: &mpsc::Sender<proto::ConnectRequest>,
    ) -> bool {
        let (Some(reason), false) = (&self.stopping, *told) else {
            return true;
        };
        *told = true;
        let stopping = Out::Stopping(proto::Stopping {
            reason: reason.clone(),
        });
        let message = proto::ConnectRequest {
            msg: Some(stopping),
        };
        tx.send(message).await.is_ok()
    }

    async fn start(&mut self, mut a: proto::Assignment, tx: &mpsc::Sender<proto::ConnectRequest>) {
        let job_id = a.job.as_ref().map(|j| j.id.clone()).unwrap_or_default();
        let full = self.running.len() >= self.options.concurrency as usize;
        let refuse = match &self.stopping {
            Some(why) => Some(why.clone()),
            None => full.then(|| "the worker has no free slot".to_string()),
        };
        if let Some(why) = refuse {
            // Handed back, not failed: the job loses no attempt for it.
            tracing::info!(job = job_id, "declining an assignment: {why}");
            let message = decline(job_id.clone(), a.token, &why);
            self.outbox.insert(job_id, message.clone());
            let _ = tx.send(proto::ConnectRequest { msg: Some(message) }).await;
            return;
        }
        tracing::info!(job = job_id, attempt = a.attempt, "starting job");
        let (cancel, cancelled) = oneshot::channel();
        // The attempt's span continues the submitter's trace; the command gets its context.
        let span = crate::telemetry::job_span("job.run", &a.trace_context, &job_id, None);
        if let Some(span) = &span {
            a.trace_context = crate::telemetry::traceparent_of_span(span);
        }
        self.running.insert(
            job_id,
            Running {
                token: a.token,
                cancel,
                span,
                trace_context: a.trace_context.clone(),
            },
        );
        tokio::spawn(command::run(
            self.setup.clone(),
            a,
            self.events_tx.clone(),
            cancelled,
        ));
    }

    /// Hands the server's answer about an upload to whoever asked.
    fn reply(&mut self, key: (String, String), answer: In) {
        if let Some(asker) = self.asks.remove(&key) {
            let _ = asker.send(answer);
        }
    }

    fn answered(&mut self, r: proto::ReportResult) {
        let is_final = self
            .outbox
            .get(&r.job_id)
            .is_some_and(|m| token_of(m) == r.token);
        if is_final && r.code == tonic::Code::Unavailable as i32 {
            // The server could not reach its store; the report is still good, so try again.
            self.retry.push(r.job_id);
            return;
        }
        if is_final {
            self.outbox.remove(&r.job_id);
        }
        match (r.code, is_final) {
            (0, _) => {}
            (_, true) => tracing::warn!(
                job = r.job_id,
                code = r.code,
                "report refused: {}",
                r.message
            ),
            (_, false) if r.code == tonic::Code::FailedPrecondition as i32 => {
                // A refused progress report: the lease is gone (cancelled, reclaimed); stop.
                tracing::warn!(
                    job = r.job_id,
                    "progress refused ({}); stopping the job",
                    r.message
                );
                if self
                    .running
                    .get(&r.job_id)
                    .is_some_and(|run| run.token == r.token)
                {
                    self.kill(&r.job_id);
                }
            }
            (_, false) => tracing::warn!(
                job = r.job_id,
                code = r.code,
                "report refused: {}",
                r.message
            ),
        }
    }
}

/// Statuses that will not change by retrying (a bad Hello), as opposed to a network problem.
fn is_refusal(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
    )
}
