//! A worker stream's end of the dispatcher: what to send the worker, and its reports, checked
//! against what the stream was assigned and applied in batches, in the order the worker sent
//! them.

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::{Command, Handle, ToWorker};
use crate::scheduler::{self, Report, Verdict};

pub struct Link {
    handle: Handle,
    pub session: String,
    pub worker_id: String,
    rx: mpsc::Receiver<ToWorker>,
    /// Queue and fencing token of each job assigned over this stream, so reports need no
    /// lookup and a stale token is refused without touching anything.
    assigned: HashMap<String, (String, u64)>,
}

/// Reports ready to apply: each with its queue when this stream assigned the job, or a
/// verdict already reached without Redis.
pub struct Batch {
    scheduler: scheduler::Handle,
    worker: String,
    reports: Vec<(Report, Checked)>,
}

enum Checked {
    Assigned(String),
    /// Not assigned over this stream: a re-attached lease or a resent completion.
    Unknown,
    Refused(scheduler::Error),
}

/// What became of a batch: per report, its verdict and whether the job left this worker (its
/// slot is free).
pub struct Applied(pub Vec<(Report, Verdict, bool)>);

impl Link {
    /// `held`: (job id, queue, token) of leases re-attached to this stream.
    pub(super) fn new(
        handle: Handle,
        session: String,
        worker_id: String,
        rx: mpsc::Receiver<ToWorker>,
        held: &[(String, String, u64)],
    ) -> Self {
        let assigned = held
            .iter()
            .map(|(id, queue, token)| (id.clone(), (queue.clone(), *token)))
            .collect();
        Self {
            handle,
            session,
            worker_id,
            rx,
            assigned,
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

    /// The worker takes no new jobs: its slots are no longer offered.
    pub async fn stopping(&self) {
        let stopping = Command::Stopping {
            session: self.session.clone(),
        };
        let _ = self.handle.tx.send(stopping).await;
    }

    /// Checks reports against this stream's assignments; `Batch::apply` does the rest.
    pub fn batch(&self, reports: Vec<Report>) -> Batch {
        let reports = reports
            .into_iter()
            .map(|report| {
                let checked = match self.assigned.get(report.job_id()) {
                    Some((_, held)) if *held != report.token() => {
                        Checked::Refused(scheduler::Error::FailedPrecondition(format!(
                            "stale fencing token {}; this worker's lease has token {held}",
                            report.token()
                        )))
                    }
                    Some((queue, _)) => Checked::Assigned(queue.clone()),
                    None => Checked::Unknown,
                };
                (report, checked)
            })
            .collect();
        Batch {
            scheduler: self.handle.scheduler.clone(),
            worker: self.worker_id.clone(),
            reports,
        }
    }

    /// Forgets the jobs that left this worker and tells the dispatcher their slots are free.
    pub async fn settle(&mut self, applied: &Applied) {
        let mut freed = Vec::new();
        for (report, _, settled) in &applied.0 {
            if *settled && self.assigned.remove(report.job_id()).is_some() {
                freed.push(report.job_id().to_string());
            }
        }
        if !freed.is_empty() {
            let finished = Command::Finished {
                session: self.session.clone(),
                job_ids: freed,
            };
            let _ = self.handle.tx.send(finished).await;
        }
    }
}

impl Batch {
    /// Applies the reports: one script call per queue and kind of report, not one per report.
    pub async fn apply(self) -> Applied {
        let Batch {
            scheduler,
            worker,
            reports,
        } = self;
        let mut verdicts: Vec<Option<Verdict>> = vec![None; reports.len()];
        let mut per_queue: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, (report, checked)) in reports.iter().enumerate() {
            match checked {
                Checked::Assigned(queue) => per_queue.entry(queue.clone()).or_default().push(i),
                Checked::Refused(e) => verdicts[i] = Some(Err(e.clone())),
                Checked::Unknown => match locate(&scheduler, report.job_id()) {
                    Ok(queue) => per_queue.entry(queue).or_default().push(i),
                    Err(e) => verdicts[i] = Some(Err(e)),
                },
            }
        }
        for (queue, indexes) in per_queue {
            let run: Vec<&Report> = indexes.iter().map(|&i| &reports[i].0).collect();
            match scheduler.apply(&queue, &worker, &run).await {
                Ok(results) => {
                    for (i, verdict) in indexes.into_iter().zip(results) {
                        verdicts[i] = Some(verdict);
                    }
                }
                Err(e) => indexes
                    .into_iter()
                    .for_each(|i| verdicts[i] = Some(Err(e.clone()))),
            }
        }
        let applied = reports
            .into_iter()
            .zip(verdicts)
            .map(|((report, checked), verdict)| {
                let verdict = verdict.unwrap_or_else(|| {
                    Err(scheduler::Error::Corrupt("a report got no answer".into()))
                });
                (report, verdict, checked)
            })
            .map(|(report, verdict, checked)| {
                // With the token checked, a refusal of an assigned job means it is gone (for
                // example cancelled while the report was on its way): its slot is free either
                // way. Progress never frees a slot.
                let settled = !matches!(report, Report::Progress { .. })
                    && match &verdict {
                        Ok(()) => true,
                        Err(scheduler::Error::FailedPrecondition(_)) => {
                            matches!(checked, Checked::Assigned(_))
                        }
                        Err(_) => false,
                    };
                (report, verdict, settled)
            })
            .collect();
        Applied(applied)
    }
}

fn locate(scheduler: &scheduler::Handle, job_id: &str) -> Result<String, scheduler::Error> {
    scheduler.locate(job_id).map_err(|e| match e {
        scheduler::Error::NotFound => {
            scheduler::Error::FailedPrecondition("job was never assigned to this worker".into())
        }
        e => e,
    })
}

impl Drop for Link {
    fn drop(&mut self) {
        self.handle.send_later(Command::Disconnected {
            session: self.session.clone(),
        });
    }
}
