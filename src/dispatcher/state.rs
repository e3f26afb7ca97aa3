//! The dispatcher's state and what each command and signal does to its sessions.

mod leasing;

use std::collections::{HashMap, HashSet};

use tokio::sync::mpsc;

use super::{Command, Error, HeldMap, Hello, Options, ToWorker, Welcome};
use crate::events::Signal;
use crate::scheduler;

struct Session {
    worker: String,
    queues: Vec<String>,
    /// Slots not running or reserved for a lease call in flight.
    free: u32,
    held: HeldMap,
    out: mpsc::Sender<ToWorker>,
    /// False while the stream is gone and the grace period runs.
    connected: bool,
    /// The worker takes no new jobs (it is shutting down, or cannot run them).
    stopping: bool,
}

#[derive(Default)]
struct Queue {
    /// Ready jobs may exist: a wake arrived or the last lease call filled its batch.
    maybe_ready: bool,
    /// Counts the signals that set `maybe_ready` (see `poke`), so a lease call that returns
    /// "nothing more" cannot erase one that arrived while it ran.
    news: u64,
    /// A lease call for this queue is running. One at a time: slots freed meanwhile are leased
    /// together by the next call (two at a time made batches smaller and cost more CPU per job).
    leasing: bool,
    /// A sweep of this queue is running (never beside a lease call: they overlap in what they do).
    sweeping: bool,
    /// When the earliest delayed job is due.
    next_due_ms: Option<i64>,
    /// When the queue next needs a sweep: a lease deadline or an expiry the last sweep saw, or
    /// the safety interval for a queue served here.
    next_check_ms: Option<i64>,
    /// Sessions whose lease call went without an answer: what it may have leased to them is put
    /// back before the next lease call (`unlease`).
    unlease: Vec<String>,
}

impl Queue {
    /// Ready work may have arrived.
    fn poke(&mut self) {
        self.maybe_ready = true;
        self.news += 1;
    }
}

pub(super) struct State {
    pub(super) scheduler: scheduler::Handle,
    pub(super) options: Options,
    tx: mpsc::Sender<Command>,
    sessions: HashMap<String, Session>,
    queues: HashMap<String, Queue>,
    draining: bool,
}

impl State {
    pub(super) fn new(
        scheduler: scheduler::Handle,
        options: Options,
        tx: mpsc::Sender<Command>,
    ) -> Self {
        Self {
            scheduler,
            options,
            tx,
            sessions: HashMap::new(),
            queues: HashMap::new(),
            draining: false,
        }
    }

    fn later(&self, work: impl Future<Output = Command> + Send + 'static) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(work.await).await;
        });
    }

    pub(super) fn handle(&mut self, command: Command) {
        match command {
            Command::Connect {
                session,
                hello,
                out,
                reply,
            } => self.connect(session, hello, out, reply),
            Command::Attached {
                session,
                kept,
                lost,
                reply,
            } => {
                let Some(s) = self.sessions.get_mut(&session) else {
                    let _ = reply.send(Err(Error::ShuttingDown));
                    return;
                };
                // The session started with a slot reserved for each lease the worker said it
                // held; the ones that did not come back are free again (the worker stops them).
                s.free += lost.len() as u32;
                let mut welcome = Welcome {
                    reattached: Vec::new(),
                    lost,
                    held: Vec::new(),
                };
                for (queue, id, token) in kept {
                    s.held.insert(id.clone(), queue.clone());
                    welcome.reattached.push(id.clone());
                    welcome.held.push((id, queue, token));
                }
                let queues = s.queues.clone();
                let worker = s.worker.clone();
                let _ = reply.send(Ok(welcome));
                queues.iter().for_each(|q| self.dispatch(q));
                // A replica where its old stream waits out the grace lets go of the jobs that
                // did not come back with it, instead of holding them until the grace ends.
                let scheduler = self.scheduler.clone();
                tokio::spawn(async move {
                    if let Err(e) = scheduler.announce_back(&worker, &session).await {
                        tracing::debug!(error = %e, "could not announce a reconnected worker");
                    }
                });
            }
            Command::Disconnected { session } => self.disconnected(session),
            Command::GraceOver { session } => self.grace_over(session),
            Command::Stopping { session } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.stopping = true;
                }
            }
            Command::Finished { session, job_ids } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    let before = s.held.len();
                    for id in &job_ids {
                        s.held.remove(id);
                    }
                    s.free += (before - s.held.len()) as u32;
                    let queues = s.queues.clone();
                    queues.iter().for_each(|q| self.dispatch(q));
                }
            }
            Command::Leased {
                queue,
                session,
                reserved,
                news,
                began,
                result,
            } => self.leased(queue, session, reserved, news, began, result),
            Command::Swept { queue, result } => self.swept(queue, result),
            Command::Unleased {
                queue,
                session,
                result,
            } => self.unleased(queue, session, result),
            Command::Lost { ids } => {
                let lost: HashSet<String> = ids.into_iter().collect();
                self.stop_jobs(
                    &lost,
                    "the lease was lost (cancelled, timed out or reclaimed)",
                );
            }
            Command::Signal(signal) => self.signal(signal),
            Command::Census { reply } => {
                let connected = self.sessions.values().filter(|s| s.connected);
                let (workers, free_slots) = connected.fold((0, 0), |(n, free), s| {
                    let offered = if s.stopping { 0 } else { s.free };
                    (n + 1, free + offered as u64)
                });
                let mut queues: Vec<String> = self.queues.keys().cloned().collect();
                queues.sort();
                let _ = reply.send(super::Census {
                    workers,
                    free_slots,
                    queues,
                });
            }
            Command::Drain { done } => {
                self.draining = true;
                for s in self.sessions.values() {
                    let _ = s.out.try_send(ToWorker::Drain);
                }
                let _ = done.send(());
            }
        }
    }

    fn connect(
        &mut self,
        session: String,
        hello: Hello,
        out: mpsc::Sender<ToWorker>,
        reply: tokio::sync::oneshot::Sender<Result<Welcome, Error>>,
    ) {
        if self.draining {
            let _ = reply.send(Err(Error::ShuttingDown));
            return;
        }
        self.replace_sessions_of(&hello);
        for q in &hello.queues {
            self.queues.entry(q.clone()).or_default().poke();
        }
        let Hello {
            worker_id,
            queues,
            concurrency,
            held,
            stopping,
        } = hello;
        // The leases it holds take their slots from the start, so no lease call made before
        // they are re-attached can hand it more jobs than it runs at once.
        let free = concurrency.saturating_sub(held.len() as u32);
        self.sessions.insert(
            session.clone(),
            Session {
                worker: worker_id.clone(),
                queues,
                free,
                held: HashMap::new(),
                out,
                connected: true,
                stopping,
            },
        );
        let scheduler = self.scheduler.clone();
        self.later(async move {
            match reattach(&scheduler, &session, &worker_id, held).await {
                Ok((kept, lost)) => Command::Attached {
                    session,
                    kept,
                    lost,
                    reply,
                },
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                    Command::Disconnected { session }
                }
            }
        });
    }

    /// A Hello with a known worker id means that worker's earlier stream is dead, even if this
    /// replica has not noticed yet. Its session goes; the leases the worker still holds move to
    /// the new session (`reattach`), and the others go back to their queues now.
    fn replace_sessions_of(&mut self, hello: &Hello) {
        let still_held: HashSet<&str> = hello.held.iter().map(|(id, _)| id.as_str()).collect();
        let old: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.worker == hello.worker_id)
            .map(|(id, _)| id.clone())
            .collect();
        for session in old {
            let s = self.sessions.remove(&session).expect("listed above");
            let orphans = s
                .held
                .into_iter()
                .filter(|(id, _)| !still_held.contains(id.as_str()));
            for (queue, ids) in by_queue(orphans) {
                let (scheduler, session) = (self.scheduler.clone(), session.clone());
                tokio::spawn(async move {
                    let _ = scheduler
                        .release(
                            &queue,
                            &session,
                            "the worker reconnected without this job",
                            &ids,
                        )
                        .await;
                });
            }
        }
    }

    fn disconnected(&mut self, session: String) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.held.is_empty() {
            self.sessions.remove(&session);
            return;
        }
        s.connected = false;
        let grace = self.options.grace;
        self.later(async move {
            tokio::time::sleep(grace).await;
            Command::GraceOver { session }
        });
    }

    /// The worker did not come back: its jobs go back to their queues now.
    fn grace_over(&mut self, session: String) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        if s.connected {
            return;
        }
        let reason = format!("worker {} disconnected and did not come back", s.worker);
        self.let_go(session, reason);
    }

    /// A worker this replica holds a disconnected session of is connected again (here or on
    /// another replica) as `session`: the leases it still held moved there already, so what
    /// stayed with the old session goes back to its queues now.
    fn worker_back(&mut self, worker: &str, session: &str) {
        let old: Vec<String> = self
            .sessions
            .iter()
            .filter(|(id, s)| s.worker == worker && !s.connected && *id != session)
            .map(|(id, _)| id.clone())
            .collect();
        for old in old {
            let reason = format!("worker {worker} reconnected without this job");
            self.let_go(old, reason);
        }
    }

    /// Ends a disconnected session: the leases still under it go back to their queues.
    fn let_go(&mut self, session: String, reason: String) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        for (queue, ids) in by_queue(s.held.iter().map(|(id, q)| (id.clone(), q.clone()))) {
            let scheduler = self.scheduler.clone();
            let (session, reason) = (session.clone(), reason.clone());
            tokio::spawn(async move {
                if let Err(e) = scheduler.release(&queue, &session, &reason, &ids).await {
                    // The leases still expire on their own and get reclaimed by a sweep.
                    tracing::warn!(error = %e, queue, "could not release a vanished worker's jobs");
                }
            });
        }
    }

    fn signal(&mut self, signal: Signal) {
        match signal {
            Signal::Wake { queue, due_ms } => {
                let safety = leasing::ms_from_now(self.options.sweep);
                let q = self.queues.entry(queue.clone()).or_default();
                // A queue new to this replica gets one sweep, which learns its timers (lease
                // deadlines, expiries) or lets it be forgotten.
                q.next_check_ms.get_or_insert(safety);
                match due_ms {
                    Some(due) => q.next_due_ms = Some(q.next_due_ms.map_or(due, |d| d.min(due))),
                    None => q.poke(),
                }
                self.dispatch(&queue);
            }
            Signal::Cancelled { job_id } => {
                self.stop_jobs(&HashSet::from([job_id]), "the job was cancelled");
            }
            Signal::WorkerBack { worker, session } => self.worker_back(&worker, &session),
            Signal::Resubscribed => {
                let names: Vec<String> = self.queues.keys().cloned().collect();
                for name in names {
                    self.queues.entry(name.clone()).or_default().poke();
                    self.dispatch(&name);
                }
            }
        }
    }

    /// Tells the workers running these jobs to stop, and frees their slots.
    fn stop_jobs(&mut self, ids: &HashSet<String>, reason: &str) {
        let mut touched = Vec::new();
        for s in self.sessions.values_mut() {
            let before = s.held.len();
            s.held.retain(|id, _| {
                let stop = ids.contains(id);
                if stop {
                    let _ = s.out.try_send(ToWorker::Cancel {
                        job_id: id.clone(),
                        reason: reason.to_string(),
                    });
                }
                !stop
            });
            let stopped = (before - s.held.len()) as u32;
            if stopped > 0 {
                s.free += stopped;
                touched.extend(s.queues.iter().cloned());
            }
        }
        touched.iter().for_each(|q| self.dispatch(q));
    }
}

fn by_queue(items: impl IntoIterator<Item = (String, String)>) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (id, queue) in items {
        map.entry(queue).or_default().push(id);
    }
    map
}

/// Looks up the queues of held jobs and moves their valid leases to the new session.
async fn reattach(
    scheduler: &scheduler::Handle,
    session: &str,
    worker: &str,
    held: Vec<(String, u64)>,
) -> Result<(Vec<(String, String, u64)>, Vec<String>), scheduler::Error> {
    let mut per_queue: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    let mut lost = Vec::new();
    for (id, token) in held {
        match scheduler.locate(&id) {
            Ok(queue) => per_queue.entry(queue).or_default().push((id, token)),
            Err(scheduler::Error::NotFound) => lost.push(id),
            Err(e) => return Err(e),
        }
    }
    let mut kept = Vec::new();
    for (queue, held) in per_queue {
        let (ok, gone) = scheduler.reattach(&queue, session, worker, &held).await?;
        let token = |id: &String| held.iter().find(|(h, _)| h == id).map_or(0, |(_, t)| *t);
        kept.extend(
            ok.into_iter()
                .map(|id| (queue.clone(), id.clone(), token(&id))),
        );
        lost.extend(gone);
    }
    Ok((kept, lost))
}
