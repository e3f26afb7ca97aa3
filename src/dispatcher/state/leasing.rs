//! Turning free slots into lease calls, and the timers: renewals, sweeps, due delayed jobs.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{Command, State, ToWorker};
use crate::scheduler::{self, Leased, now_ms};

/// How soon a lease or sweep that failed (Redis unavailable) is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Unix ms `d` from now.
pub(super) fn ms_from_now(d: Duration) -> i64 {
    now_ms() + d.as_millis() as i64
}

impl State {
    /// Starts a lease call for `queue` if a connected session has free slots for it.
    pub(in crate::dispatcher) fn dispatch(&mut self, queue: &str) {
        let q = self.queues.entry(queue.to_string()).or_default();
        if q.leasing || q.sweeping {
            return;
        }
        // Even while draining: those jobs should not wait out a lease.
        if let Some(session) = q.unlease.first().cloned() {
            return self.unlease(queue, session);
        }
        if self.draining || !q.maybe_ready {
            return;
        }
        let best = self
            .sessions
            .iter_mut()
            .filter(|(_, s)| {
                s.connected && !s.stopping && s.free > 0 && s.queues.iter().any(|x| x == queue)
            })
            .max_by_key(|(_, s)| s.free);
        let Some((session, s)) = best else { return };
        let n = s.free.min(self.options.max_batch);
        s.free -= n;
        q.leasing = true;
        let news = q.news;
        let (scheduler, queue, session, worker) = (
            self.scheduler.clone(),
            queue.to_string(),
            session.clone(),
            s.worker.clone(),
        );
        let began = std::time::Instant::now();
        self.later(async move {
            let result = scheduler.lease(&queue, n, &session, &worker).await;
            Command::Leased {
                queue,
                session,
                reserved: n,
                news,
                began,
                result,
            }
        });
    }

    pub(in crate::dispatcher) fn leased(
        &mut self,
        queue: String,
        session: String,
        reserved: u32,
        news: u64,
        began: std::time::Instant,
        result: Result<Leased, scheduler::Error>,
    ) {
        let q = self.queues.entry(queue.clone()).or_default();
        q.leasing = false;
        let leased = match result {
            Ok(leased) => leased,
            Err(e) => {
                // Redis did not answer: give the slots back and try again shortly. The call may
                // have leased jobs when Redis woke, which nobody will run: those go back first.
                tracing::warn!(error = %e, queue, "lease failed");
                q.next_check_ms = Some(ms_from_now(RETRY));
                if !q.unlease.contains(&session) {
                    q.unlease.push(session.clone());
                }
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.free += reserved;
                }
                return;
            }
        };
        q.maybe_ready = leased.more || q.news != news;
        q.next_due_ms = leased.next_due_ms;
        // The earliest lease deadline is when one may lapse: a replica that died leaves leases
        // nobody renews, whose jobs go back once they lapse. The safety sweep covers the rest.
        let safety = ms_from_now(self.options.sweep);
        let check = leased.next_check_ms.map_or(safety, |at| at.min(safety));
        q.next_check_ms = Some(q.next_check_ms.map_or(check, |c| c.min(check)));
        let unused = reserved - leased.jobs.len() as u32;
        match self.sessions.get_mut(&session) {
            Some(s) => {
                s.free += unused;
                let deadline_ms = ms_from_now(self.scheduler.options().lease_ttl);
                for job in leased.jobs {
                    count_start(&queue, &job, began);
                    s.held.insert(job.id.clone(), queue.clone());
                    if s.out
                        .try_send(ToWorker::Assign {
                            job: Box::new(job),
                            deadline_ms,
                        })
                        .is_err()
                    {
                        // Stream gone: the disconnect path (grace, then release) covers the job.
                        tracing::debug!(session, "assignment to a closed stream");
                    }
                }
            }
            None => {
                // The session ended while the call ran: hand its new jobs straight back.
                let ids: Vec<String> = leased.jobs.into_iter().map(|j| j.id).collect();
                let (scheduler, q2, s2) = (self.scheduler.clone(), queue.clone(), session.clone());
                tokio::spawn(async move {
                    scheduler
                        .release(&q2, &s2, "worker disconnected", &ids)
                        .await
                });
            }
        }
        self.dispatch(&queue);
    }

    /// Puts back what a lease call for `session` that went without an answer may have leased:
    /// no other lease call for the queue runs meanwhile, so what the session does not hold is
    /// exactly that.
    fn unlease(&mut self, queue: &str, session: String) {
        let q = self.queues.entry(queue.to_string()).or_default();
        q.leasing = true;
        let held: Vec<String> = self.sessions.get(&session).map_or_else(Vec::new, |s| {
            s.held
                .iter()
                .filter(|(_, q)| *q == queue)
                .map(|(id, _)| id.clone())
                .collect()
        });
        let (scheduler, queue) = (self.scheduler.clone(), queue.to_string());
        self.later(async move {
            let result = scheduler.unlease(&queue, &session, &held).await;
            Command::Unleased {
                queue,
                session,
                result,
            }
        });
    }

    pub(in crate::dispatcher) fn unleased(
        &mut self,
        queue: String,
        session: String,
        result: Result<usize, scheduler::Error>,
    ) {
        let q = self.queues.entry(queue.clone()).or_default();
        q.leasing = false;
        match result {
            Ok(back) => {
                q.unlease.retain(|s| *s != session);
                if back > 0 {
                    tracing::info!(
                        queue,
                        back,
                        "jobs a lease call without an answer had leased went back"
                    );
                    q.poke();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, queue, "putting back what a failed lease call leased failed; trying again");
                q.next_check_ms = Some(ms_from_now(RETRY));
                return;
            }
        }
        self.dispatch(&queue);
    }

    /// A lease call with no slots: reclaims, promotes and collects expired ids.
    pub(in crate::dispatcher) fn sweep(&mut self, queue: &str) {
        let q = self.queues.entry(queue.to_string()).or_default();
        if q.leasing || q.sweeping {
            // The lease call in flight reclaims and promotes too.
            return;
        }
        q.sweeping = true;
        q.next_check_ms = None;
        let (scheduler, queue) = (self.scheduler.clone(), queue.to_string());
        self.later(async move {
            let result = scheduler.lease(&queue, 0, "", "").await;
            Command::Swept { queue, result }
        });
    }

    /// A sweep returned: it says when the queue next needs a look.
    pub(in crate::dispatcher) fn swept(
        &mut self,
        queue: String,
        result: Result<Leased, scheduler::Error>,
    ) {
        let served = self.sessions.values().any(|s| s.queues.contains(&queue));
        let safety = ms_from_now(self.options.sweep);
        let q = self.queues.entry(queue.clone()).or_default();
        q.sweeping = false;
        match result {
            Ok(leased) => {
                q.next_due_ms = leased.next_due_ms;
                q.maybe_ready |= leased.more;
                q.next_check_ms = match leased.next_check_ms {
                    Some(at) if served => Some(at.min(safety)),
                    Some(at) => Some(at),
                    None => served.then_some(safety),
                };
                if q.next_check_ms.is_none() && q.next_due_ms.is_none() && !q.maybe_ready {
                    // Nothing to watch for and no worker here: forget it, so the cost follows
                    // the queues in use; a wake-up or a worker brings it back.
                    self.queues.remove(&queue);
                    return;
                }
            }
            // Redis is unavailable: try again shortly.
            Err(_) => q.next_check_ms = Some(ms_from_now(RETRY)),
        }
        self.dispatch(&queue);
    }

    /// Renews every lease this replica holds: one call per queue.
    pub(in crate::dispatcher) fn renew(&mut self) {
        let mut per_queue: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (session, s) in &self.sessions {
            for (id, queue) in &s.held {
                per_queue
                    .entry(queue.clone())
                    .or_default()
                    .push((id.clone(), session.clone()));
            }
        }
        for (queue, held) in per_queue {
            let scheduler = self.scheduler.clone();
            self.later(async move {
                match scheduler.renew(&queue, &held).await {
                    Ok(ids) => Command::Lost { ids },
                    Err(e) => {
                        tracing::warn!(error = %e, queue, "lease renewal failed");
                        Command::Lost { ids: Vec::new() }
                    }
                }
            });
        }
    }

    /// The next time a queue needs a sweep or has delayed work coming due.
    pub(in crate::dispatcher) fn next_due(&self) -> Option<Instant> {
        let earliest = self
            .queues
            .values()
            .flat_map(|q| [q.next_due_ms, q.next_check_ms])
            .flatten()
            .min()?;
        let wait = (earliest - now_ms()).max(0) as u64;
        Some(Instant::now() + Duration::from_millis(wait))
    }

    /// Delayed work came due, or a queue needs a sweep: lease where a worker here has room
    /// (a lease call reclaims and promotes too), sweep where none has.
    pub(in crate::dispatcher) fn due(&mut self) {
        let now = now_ms();
        let passed = |t: Option<i64>| t.is_some_and(|t| t <= now);
        let names: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| passed(q.next_due_ms) || passed(q.next_check_ms))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let q = self.queues.entry(name.clone()).or_default();
            if passed(q.next_due_ms) {
                q.next_due_ms = None;
                q.poke();
            }
            if passed(q.next_check_ms) {
                q.next_check_ms = None;
            }
            self.dispatch(&name);
            self.sweep(&name);
        }
    }
}

/// Counts a job's start: its wait since it could run, and the lease call's time to its worker.
fn count_start(queue: &str, job: &scheduler::Job, began: std::time::Instant) {
    let metrics = crate::metrics::get();
    let labels = crate::metrics::queue_tier(queue, job.tier);
    metrics.started.get_or_create(&labels).inc();
    let eligible = job.created_ms.max(job.run_at_ms);
    let waited = (scheduler::now_ms() - eligible).max(0) as f64 / 1000.0;
    metrics
        .submit_to_start
        .get_or_create(&labels)
        .observe(waited);
    let queue = crate::metrics::Queue {
        queue: queue.to_string(),
    };
    let took = began.elapsed().as_secs_f64();
    metrics.lease_to_start.get_or_create(&queue).observe(took);
    // The wait in line, in the job's trace.
    let start = crate::telemetry::at_ms(eligible);
    let span = crate::telemetry::job_span("job.queued", &job.trace_context, &job.id, Some(start));
    crate::telemetry::end(span);
}
