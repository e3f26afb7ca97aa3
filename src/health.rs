//! Whether this replica should get traffic: Redis and the database answer, and it is not
//! draining. A check every `CONVEYOR_HEALTH_CHECK` (a PING and a `SELECT 1`) keeps `/readyz` and
//! the gRPC health service (`""`, JobService, WorkerService) up to date; a drain turns both down
//! at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::history;
use crate::scheduler;

/// The names the gRPC health service answers for: the whole server and each service.
const SERVICES: [&str; 3] = ["", "conveyor.v1.JobService", "conveyor.v1.WorkerService"];

#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    redis: AtomicBool,
    database: AtomicBool,
    draining: AtomicBool,
    reporter: HealthReporter,
}

impl Health {
    /// Ready to start with: the server connected to both before it serves.
    pub async fn new(reporter: HealthReporter) -> Health {
        let health = Health {
            inner: Arc::new(Inner {
                redis: AtomicBool::new(true),
                database: AtomicBool::new(true),
                draining: AtomicBool::new(false),
                reporter,
            }),
        };
        health.publish().await;
        health
    }

    /// `Ok` when the replica should get traffic, else why not.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.inner.draining.load(Ordering::Relaxed) {
            Err("draining")
        } else if !self.inner.redis.load(Ordering::Relaxed) {
            Err("Redis does not answer")
        } else if !self.inner.database.load(Ordering::Relaxed) {
            Err("the database does not answer")
        } else {
            Ok(())
        }
    }

    /// From now on the replica is not ready (a drain, or the shutdown).
    pub async fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
        self.publish().await;
    }

    async fn set(&self, redis: bool, database: bool) {
        let was = self.ready().is_ok();
        self.inner.redis.store(redis, Ordering::Relaxed);
        self.inner.database.store(database, Ordering::Relaxed);
        match (was, self.ready()) {
            (true, Err(why)) => tracing::warn!("not ready: {why}"),
            (false, Ok(())) => tracing::info!("ready again"),
            _ => {}
        }
        self.publish().await;
    }

    async fn publish(&self) {
        let status = match self.ready() {
            Ok(()) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        for service in SERVICES {
            self.inner
                .reporter
                .set_service_status(service, status)
                .await;
        }
    }
}

/// Checks Redis and the database every `every`, until the process ends.
pub async fn watch(
    health: Health,
    scheduler: scheduler::Handle,
    history: Option<history::Store>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let redis = scheduler.ping().await.is_ok();
        let database = match &history {
            Some(store) => store.ping().await.is_ok(),
            None => true,
        };
        health.set(redis, database).await;
    }
}
