//! Job events: one Redis subscription per replica, fanned out in-process to watchers, and
//! wake-ups and cancellations handed to the dispatcher.

mod follow;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use tokio::sync::mpsc;

use crate::scheduler::{Event, EventKind, JobState, keys};
pub use follow::{Filter, Item as FollowItem, follow};
pub use watch::{Item, watch};

/// What the dispatcher needs to hear from Redis.
#[derive(Debug)]
pub enum Signal {
    /// `queue` has ready work, or delayed work due at `due_ms`.
    Wake { queue: String, due_ms: Option<i64> },
    /// A job was cancelled; whoever runs it must stop.
    Cancelled { job_id: String },
    /// A worker is connected again, as `session` (on this replica or another).
    WorkerBack { worker: String, session: String },
    /// The subscription was re-established; signals may have been missed meanwhile.
    Resubscribed,
}

/// Events buffered per watcher; a watcher further behind is cut loose and catches up with a
/// fresh snapshot from Redis, so one slow client never holds memory or the others back.
const WATCHER_BUFFER: usize = 64;

/// Events buffered per WatchJobs stream, which hears whole queues.
const FOLLOWER_BUFFER: usize = 1024;

/// What a subscription hears: one job, or one tenant's jobs in some queues.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Topic {
    Job(String),
    Queue { queue: String, tenant: String },
}

/// Subscribers by topic: (subscription id, its buffer).
type Subscribers = HashMap<Topic, Vec<(u64, mpsc::Sender<Arc<Event>>)>>;

#[derive(Clone, Default)]
pub struct Handle {
    subscribers: Arc<Mutex<Subscribers>>,
    next_id: Arc<AtomicU64>,
}

/// Live events of one job, or of a tenant's jobs in some queues, in publication order; ends
/// when the hub cuts it loose.
pub struct Subscription {
    pub rx: mpsc::Receiver<Arc<Event>>,
    hub: Handle,
    topics: Vec<Topic>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.topics, self.id);
    }
}

impl Handle {
    pub fn subscribe(&self, job_id: &str) -> Subscription {
        self.add(vec![Topic::Job(job_id.to_string())], WATCHER_BUFFER)
    }

    /// Every event of `tenant`'s jobs in `queues` that the scripts publish (those of followed
    /// jobs, see follow.lua, and of jobs watched one by one).
    pub fn subscribe_queues(&self, tenant: &str, queues: &[String]) -> Subscription {
        let topics = queues
            .iter()
            .map(|queue| Topic::Queue {
                queue: queue.clone(),
                tenant: tenant.to_string(),
            })
            .collect();
        self.add(topics, FOLLOWER_BUFFER)
    }

    fn add(&self, topics: Vec<Topic>, buffer: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(buffer);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut subscribers = self.lock();
        for topic in &topics {
            subscribers
                .entry(topic.clone())
                .or_default()
                .push((id, tx.clone()));
        }
        Subscription {
            rx,
            hub: self.clone(),
            topics,
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove(&self, topics: &[Topic], id: u64) {
        let mut subscribers = self.lock();
        for topic in topics {
            if let Some(list) = subscribers.get_mut(topic) {
                list.retain(|(s, _)| *s != id);
                if list.is_empty() {
                    subscribers.remove(topic);
                }
            }
        }
    }

    /// Hands each event to the subscribers of its job and of its queue; one shared copy per
    /// event.
    fn publish(&self, events: Vec<Event>) {
        let mut subscribers = self.lock();
        if subscribers.is_empty() {
            return;
        }
        for event in events {
            let event = Arc::new(event);
            deliver(&mut subscribers, Topic::Job(event.job_id.clone()), &event);
            if let Some(scope) = &event.scope {
                let topic = Topic::Queue {
                    queue: scope.queue.clone(),
                    tenant: scope.tenant.clone(),
                };
                deliver(&mut subscribers, topic, &event);
            }
        }
    }

    /// Cuts every subscriber loose, so each re-reads what it may have missed.
    fn reset(&self) {
        self.lock().clear();
    }

    /// Open streams here: WatchJob ones (per job) and WatchJobs ones.
    pub fn counts(&self) -> (usize, usize) {
        let subscribers = self.lock();
        let mut jobs = 0;
        let mut followers = std::collections::HashSet::new();
        for (topic, list) in subscribers.iter() {
            match topic {
                Topic::Job(_) => jobs += list.len(),
                Topic::Queue { .. } => followers.extend(list.iter().map(|(id, _)| *id)),
            }
        }
        (jobs, followers.len())
    }

    /// The queues WatchJobs streams here follow.
    pub fn followed_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = self
            .lock()
            .keys()
            .filter_map(|topic| match topic {
                Topic::Queue { queue, .. } => Some(queue.clone()),
                Topic::Job(_) => None,
            })
            .collect();
        queues.sort();
        queues.dedup();
        queues
    }
}

/// Hands `event` to the subscribers of `topic`. A full or closed channel drops the subscriber;
/// it resyncs from Redis.
fn deliver(subscribers: &mut Subscribers, topic: Topic, event: &Arc<Event>) {
    if let Some(list) = subscribers.get_mut(&topic) {
        list.retain(|(_, tx)| tx.try_send(event.clone()).is_ok());
        if list.is_empty() {
            subscribers.remove(&topic);
        }
    }
}

/// Keeps the `watched` mark of every queue a WatchJobs stream here follows alive (a third of
/// its life between refreshes), until the process ends.
pub async fn keep_followed(hub: Handle, scheduler: crate::scheduler::Handle) {
    let mut tick = tokio::time::interval(crate::scheduler::WATCHED_TTL / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let queues = hub.followed_queues();
        if queues.is_empty() {
            continue;
        }
        if let Err(e) = scheduler.keep_watched(&queues).await {
            // A mark that lapses costs followers their new jobs' events until Redis is back;
            // the reconnect after it makes every stream read its queues again.
            tracing::warn!(error = %e, "could not renew the watched mark of followed queues");
        }
    }
}

/// Subscribes to the event, wake and after channels and runs the fan-out (events to watchers,
/// wake-ups to the dispatcher, announced queues to flows) until the client quits.
pub async fn run(
    subscriber: SubscriberClient,
    hub: Handle,
    signals: mpsc::Sender<Signal>,
    flows: crate::flows::Handle,
) -> Result<(), fred::error::Error> {
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let _resubscribe = subscriber.manage_subscriptions();
    subscriber
        .subscribe(vec![
            keys::EVENTS_CHANNEL,
            keys::WAKE_CHANNEL,
            keys::AFTER_CHANNEL,
            keys::BACK_CHANNEL,
        ])
        .await?;
    loop {
        tokio::select! {
            message = messages.recv() => {
                let Ok(message) = message else {
                    // Lagged behind the client's broadcast buffer: some messages are gone.
                    hub.reset();
                    let _ = signals.send(Signal::Resubscribed).await;
                    if messages.is_closed() { return Ok(()); }
                    continue;
                };
                let channel: &str = &message.channel;
                let payload = message.value.as_bytes().unwrap_or_default();
                if channel == keys::WAKE_CHANNEL {
                    let text = String::from_utf8_lossy(payload);
                    let (queue, due) = match text.split_once('|') {
                        Some((q, d)) => (q.to_string(), d.parse().ok()),
                        None => (text.to_string(), None),
                    };
                    let _ = signals.send(Signal::Wake { queue, due_ms: due }).await;
                } else if channel == keys::AFTER_CHANNEL {
                    flows.poke(&String::from_utf8_lossy(payload));
                } else if channel == keys::BACK_CHANNEL {
                    let text = String::from_utf8_lossy(payload);
                    if let Some((worker, session)) = text.rsplit_once('|') {
                        let (worker, session) = (worker.to_string(), session.to_string());
                        let _ = signals.send(Signal::WorkerBack { worker, session }).await;
                    }
                } else if channel == keys::EVENTS_CHANNEL {
                    match Event::parse_many(payload) {
                        Ok(events) => {
                            for event in &events {
                                if event.kind == EventKind::State(JobState::Cancelled) {
                                    let job_id = event.job_id.clone();
                                    let _ = signals.send(Signal::Cancelled { job_id }).await;
                                }
                            }
                            hub.publish(events);
                        }
                        Err(e) => tracing::warn!(error = %e, "dropping undecodable events"),
                    }
                }
            }
            reconnect = reconnects.recv() => {
                if reconnect.is_err() && !subscriber.is_connected() { return Ok(()); }
                hub.reset();
                let _ = signals.send(Signal::Resubscribed).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Progress;

    fn event(seq: u64) -> Event {
        let kind = EventKind::Progress(Progress::default());
        Event {
            job_id: "j".into(),
            seq,
            kind,
            attempt: 1,
            result: String::new(),
            error: String::new(),
            time_ms: 0,
            artifacts: Vec::new(),
            scope: None,
            job: None,
        }
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_cut_loose_and_the_others_keep_going() {
        let hub = Handle::default();
        let mut slow = hub.subscribe("j");
        let mut fast = hub.subscribe("j");
        for seq in 1..=(WATCHER_BUFFER as u64 + 10) {
            hub.publish(vec![event(seq)]);
            assert_eq!(fast.rx.recv().await.map(|e| e.seq), Some(seq));
        }
        assert_eq!(hub.counts().0, 1, "only the reader is left");
        let mut got = 0;
        while let Some(e) = slow.rx.recv().await {
            got += 1;
            assert_eq!(e.seq, got);
        }
        assert_eq!(
            got, WATCHER_BUFFER as u64,
            "the slow one holds at most its buffer, then ends"
        );
        drop(fast);
        assert_eq!(hub.counts().0, 0);
    }
}
