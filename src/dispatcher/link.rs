//! A worker stream's end of the dispatcher: what to send the worker, and its reports, checked
//! and applied in the order the worker sent them.

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::{Command, Handle, ToWorker};
use crate::scheduler::{self, Progress};

/// A worker's report about a job it runs.
#[derive(Debug)]
pub enum Report {
    Progress { job_id: String, token: u64, progress: Progress },
    Complete { job_id: String, token: u64, result: String },
    Fail { job_id: String, token: u64, error: String, retryable: bool },
}

pub struct Link {
    handle: Handle,
    pub session: String,
    pub worker_id: String,
    rx: mpsc::Receiver<ToWorker>,
    /// Queue of each job assigned over this stream, so reports need no lookup.
    queues: HashMap<String, String>,
}

impl Link {
    pub(super) fn new(handle: Handle, session: String, worker_id: String, rx: mpsc::Receiver<ToWorker>) -> Self {
        Self { handle, session, worker_id, rx, queues: HashMap::new() }
    }

    /// The next message for the worker; `None` once the dispatcher is gone.
    pub async fn recv(&mut self) -> Option<ToWorker> {
        let message = self.rx.recv().await?;
        match &message {
            ToWorker::Assign { job, .. } => {
                self.queues.insert(job.id.clone(), job.queue.clone());
            }
            ToWorker::Cancel { job_id, .. } => {
                self.queues.remove(job_id);
            }
            _ => {}
        }
        Some(message)
    }

    /// Applies a report. Complete and Fail free the worker's slot whatever the outcome, except
    /// when Redis could not be reached (the worker should send it again).
    pub async fn report(&mut self, report: Report) -> Result<(), scheduler::Error> {
        let job_id = match &report {
            Report::Progress { job_id, .. } | Report::Complete { job_id, .. } | Report::Fail { job_id, .. } => {
                job_id.clone()
            }
        };
        let queue = match self.queues.get(&job_id) {
            Some(q) => q.clone(),
            // Not assigned over this stream: a re-attached lease or a resent completion.
            None => self.handle.scheduler.locate(&job_id).await.map_err(|e| match e {
                scheduler::Error::NotFound => {
                    scheduler::Error::FailedPrecondition("job was never assigned to this worker".into())
                }
                e => e,
            })?,
        };
        let s = &self.handle.scheduler;
        let worker = self.worker_id.as_str();
        let result = match &report {
            Report::Progress { token, progress, .. } => {
                return s.progress(&queue, &job_id, worker, *token, progress).await;
            }
            Report::Complete { token, result, .. } => s.complete(&queue, &job_id, worker, *token, result).await,
            Report::Fail { token, error, retryable, .. } => {
                s.fail(&queue, &job_id, worker, *token, error, *retryable).await.map(|_| ())
            }
        };
        if !matches!(result, Err(scheduler::Error::Redis(_))) {
            self.queues.remove(&job_id);
            let finished = Command::Finished { session: self.session.clone(), job_id };
            let _ = self.handle.tx.send(finished).await;
        }
        result
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.handle.send_later(Command::Disconnected { session: self.session.clone() });
    }
}
