//! Job events: one Redis subscription per replica, fanned out in-process to watchers, and
//! wake-ups and cancellations handed to the dispatcher.

mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use tokio::sync::mpsc;

use crate::scheduler::{Event, EventKind, JobState, keys};
pub use watch::{Item, watch};

/// What the dispatcher needs to hear from Redis.
#[derive(Debug)]
pub enum Signal {
    /// `queue` has ready work, or delayed work due at `due_ms`.
    Wake { queue: String, due_ms: Option<i64> },
    /// A job was cancelled; whoever runs it must stop.
    Cancelled { job_id: String },
    /// The subscription was re-established; signals may have been missed meanwhile.
    Resubscribed,
}

/// Events buffered per watcher; a watcher further behind is cut loose and catches up with a
/// fresh snapshot from Redis, so one slow client never holds memory or the others back.
const WATCHER_BUFFER: usize = 64;

/// Watchers by job id: (watcher id, its buffer).
type Watchers = HashMap<String, Vec<(u64, mpsc::Sender<Arc<Event>>)>>;

#[derive(Clone, Default)]
pub struct Handle {
    watchers: Arc<Mutex<Watchers>>,
    next_id: Arc<AtomicU64>,
}

/// Live events of one job, in publication order; ends when the hub cuts it loose.
pub struct Subscription {
    pub rx: mpsc::Receiver<Arc<Event>>,
    hub: Handle,
    job_id: String,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.job_id, self.id);
    }
}

impl Handle {
    pub fn subscribe(&self, job_id: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers
            .entry(job_id.to_string())
            .or_default()
            .push((id, tx));
        Subscription {
            rx,
            hub: self.clone(),
            job_id: job_id.to_string(),
            id,
        }
    }

    fn remove(&self, job_id: &str, id: u64) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = watchers.get_mut(job_id) {
            list.retain(|(w, _)| *w != id);
            if list.is_empty() {
                watchers.remove(job_id);
            }
        }
    }

    /// Hands each event to the watchers of its job; one shared copy per event.
    fn publish(&self, events: Vec<Event>) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        for event in events {
            if let Some(list) = watchers.get_mut(&event.job_id) {
                let event = Arc::new(event);
                // A full or closed channel drops the watcher; it resyncs from Redis.
                list.retain(|(_, tx)| tx.try_send(event.clone()).is_ok());
                if list.is_empty() {
                    watchers.remove(&event.job_id);
                }
            }
        }
    }

    /// Cuts every watcher loose, so each re-reads what it may have missed.
    fn reset(&self) {
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn watcher_count(&self) -> usize {
        let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.values().map(Vec::len).sum()
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
        assert_eq!(hub.watcher_count(), 1, "only the reader is left");
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
        assert_eq!(hub.watcher_count(), 0);
    }
}
