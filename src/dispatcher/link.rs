//! A worker stream's end of the dispatcher: what to send the worker, and its reports, checked
//! and applied in the order the worker sent them.

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::{Command, Handle, ToWorker};
use crate::scheduler::{self, Progress};

/// A worker's report about a job it runs.
#[derive(Debug)]
pub enum Report {
    Progress {
        job_id: String,
        token: u64,
        progress: Progress,
    },
    Complete {
        job_id: String,
        token: u64,
        result: String,
    },
    Fail {
        job_id: String,
        token: u64,
        error: String,
        retryable: bool,
    },
}

pub struct Link {
    handle: Handle,
    pub session: String,
    pub worker_id: String,
    rx: mpsc::Receiver<ToWorker>,
    /// Queue and fencing token of each job assigned over this stream, so reports need no
    /// lookup and a stale token is refused without touching anything.
    assigned: HashMap<String, (String, u64)>,
}

impl Link {
    pub(super) fn new(
        handle: Handle,
        session: String,
        worker_id: String,
        rx: mpsc::Receiver<ToWorker>,
    ) -> Self {
        Self {
            handle,
            session,
            worker_id,
            rx,
            assigned: HashMap::new(),
        }
    }

    /// The next message for the worker; `None` once the dispatcher is gone.
    pub async fn recv(&mut self) -> Option<ToWorker> {
        let message = self.rx.recv().await?;
        match &message {
            ToWorker::Assign { job, .. } => {
                self.assigned
                    .insert(job.id.clone(), (job.queue.clone(), job.token));
            }
            ToWorker::Cancel { job_id, .. } => {
                self.assigned.remove(job_id);
            }
            _ => {}
        }
        Some(message)
    }

    /// Applies a report. A Complete or Fail that took effect, or one for a job that is no longer
    /// this worker's (cancelled, reclaimed), frees the worker's slot; a refused one with a stale
    /// token changes nothing.
    pub async fn report(&mut self, report: Report) -> Result<(), scheduler::Error> {
        let (job_id, token) = match &report {
            Report::Progress { job_id, token, .. }
            | Report::Complete { job_id, token, .. }
            | Report::Fail { job_id, token, .. } => (job_id.clone(), *token),
        };
        let (queue, assigned) = match self.assigned.get(&job_id) {
            Some((_, held)) if *held != token => {
                return Err(scheduler::Error::FailedPrecondition(format!(
                    "stale fencing token {token}; this worker's lease has token {held}"
                )));
            }
            Some((queue, _)) => (queue.clone(), true),
            // Not assigned over this stream: a re-attached lease or a resent completion.
            None => (self.locate(&job_id).await?, false),
        };
        let s = &self.handle.scheduler;
        let worker = self.worker_id.as_str();
        let result = match &report {
            Report::Progress { progress, .. } => {
                return s.progress(&queue, &job_id, worker, token, progress).await;
            }
            Report::Complete { result, .. } => {
                s.complete(&queue, &job_id, worker, token, result).await
            }
            Report::Fail {
                error, retryable, ..
            } => s
                .fail(&queue, &job_id, worker, token, error, *retryable)
                .await
                .map(|_| ()),
        };
        // With the token checked above, a refusal of an assigned job means it is gone (for
        // example cancelled while the report was on its way): its slot is free either way.
        let settled = match &result {
            Ok(()) => true,
            Err(scheduler::Error::FailedPrecondition(_)) => assigned,
            Err(_) => false,
        };
        if settled {
            self.assigned.remove(&job_id);
            let finished = Command::Finished {
                session: self.session.clone(),
                job_id,
            };
            let _ = self.handle.tx.send(finished).await;
        }
        result
    }

    async fn locate(&self, job_id: &str) -> Result<String, scheduler::Error> {
        self.handle
            .scheduler
            .locate(job_id)
            .await
            .map_err(|e| match e {
                scheduler::Error::NotFound => scheduler::Error::FailedPrecondition(
                    "job was never assigned to this worker".into(),
                ),
                e => e,
            })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.handle.send_later(Command::Disconnected {
            session: self.session.clone(),
        });
    }
}
