//! Prometheus metrics: the instruments every component counts into, one registry per process,
//! and the text `/metrics` serves. Names follow the OpenTelemetry-to-Prometheus conventions
//! (`conveyor_` prefix, base units, `_total` on counters, `_seconds` on durations).
//!
//! Counters and histograms are counted where things happen. Gauges of what is (queue depth,
//! workers, watchers) are read when Prometheus scrapes (`http::Port::gauges`), so an idle server
//! calls nothing for them between scrapes; so are the process's own (`process.rs`). The build's
//! version is `conveyor_build_info`. `exposition.rs` speaks both text formats.

pub mod exposition;
mod process;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueTier {
    pub queue: String,
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Finished {
    pub queue: String,
    pub tier: String,
    /// succeeded, failed, cancelled; or retried (an attempt failed and the job waits again).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Queue {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Call {
    /// The Lua script, or the database operation.
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

type Durations<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub submitted: Family<QueueTier, Counter>,
    pub started: Family<QueueTier, Counter>,
    pub finished: Family<Finished, Counter>,
    pub queue_depth: Family<QueueTier, Gauge>,
    pub oldest_wait: Family<QueueTier, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub submit_to_start: Durations<QueueTier>,
    pub lease_to_start: Durations<Queue>,
    pub workers: Gauge,
    pub free_slots: Gauge,
    pub watchers: Family<Kind, Gauge>,
    pub redis_calls: Durations<Call>,
    pub db_calls: Durations<Call>,
    pub webhook_deliveries: Family<Outcome, Counter>,
    pub redis_restarts: Counter,
    pub connections_open: Gauge,
    pub connections_shed: Counter,
}

/// 1 ms to about 9 h, doubling: job waits and runs span all of it.
fn wait_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

/// 100 µs to about 3 s, doubling: calls to Redis and the database.
fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Metrics {
    fn new() -> Metrics {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::Process));
        let registry = root.sub_registry_with_prefix("conveyor");
        registry.register(
            "build",
            "The running build: its version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let m = Metrics {
            submitted: Family::default(),
            started: Family::default(),
            finished: Family::default(),
            queue_depth: Family::default(),
            oldest_wait: Family::default(),
            submit_to_start: Family::new_with_constructor(wait_buckets),
            lease_to_start: Family::new_with_constructor(call_buckets),
            workers: Gauge::default(),
            free_slots: Gauge::default(),
            watchers: Family::default(),
            redis_calls: Family::new_with_constructor(call_buckets),
            db_calls: Family::new_with_constructor(call_buckets),
            webhook_deliveries: Family::default(),
            redis_restarts: Counter::default(),
            connections_open: Gauge::default(),
            connections_shed: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "jobs_submitted",
            "Jobs accepted, by queue and tier",
            m.submitted.clone(),
        );
        registry.register(
            "jobs_started",
            "Attempts leased to a worker, by queue and tier",
            m.started.clone(),
        );
        registry.register(
            "jobs_finished",
            "Attempts that ended, by queue, tier and outcome",
            m.finished.clone(),
        );
        registry.register(
            "queue_depth",
            "QUEUED jobs in line, by queue and tier (queues this replica serves)",
            m.queue_depth.clone(),
        );
        registry.register_with_unit(
            "queue_oldest_wait",
            "How long the job at the head of each tier's line has waited since it could run",
            Unit::Seconds,
            m.oldest_wait.clone(),
        );
        registry.register_with_unit(
            "submit_to_start",
            "From when a job could run (submitted, or due) to its lease, by queue and tier",
            Unit::Seconds,
            m.submit_to_start.clone(),
        );
        registry.register_with_unit(
            "lease_to_start",
            "From the start of a lease call to the assignment on the worker's stream",
            Unit::Seconds,
            m.lease_to_start.clone(),
        );
        registry.register(
            "workers_connected",
            "Worker streams connected to this replica",
            m.workers.clone(),
        );
        registry.register(
            "worker_free_slots",
            "Free slots of the workers connected to this replica",
            m.free_slots.clone(),
        );
        registry.register(
            "watchers",
            "Open watch streams on this replica: job (WatchJob) or queue (WatchJobs)",
            m.watchers.clone(),
        );
        registry.register_with_unit(
            "redis_call_duration",
            "Redis script calls, by script",
            Unit::Seconds,
            m.redis_calls.clone(),
        );
        registry.register_with_unit(
            "db_call_duration",
            "Database calls, by operation",
            Unit::Seconds,
            m.db_calls.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery tries, by outcome (delivered, retry, failed)",
            m.webhook_deliveries.clone(),
        );
        registry.register(
            "redis_restarts",
            "Redis connection tasks that ended on an error and were started again",
            m.redis_restarts.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open on the gRPC port (at most CONVEYOR_MAX_CONNECTIONS)",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_shed",
            "Connections closed or refused because the connection cap was reached",
            m.connections_shed.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }

    /// The registry in the OpenMetrics text format (`exposition::classic` turns it into the
    /// classic one).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's instruments.
pub fn get() -> &'static Metrics {
    &METRICS
}

pub fn queue_tier(queue: &str, tier: crate::scheduler::Tier) -> QueueTier {
    QueueTier {
        queue: queue.to_string(),
        tier: tier_name(tier),
    }
}

pub fn tier_name(tier: crate::scheduler::Tier) -> String {
    format!("{tier:?}").to_lowercase()
}

/// Times `call` into `histogram` under `op`.
pub async fn timed<T>(histogram: &Durations<Call>, op: &str, call: impl Future<Output = T>) -> T {
    let start = std::time::Instant::now();
    let out = call.await;
    observe(histogram, op, start.elapsed());
    out
}

pub fn observe(histogram: &Durations<Call>, op: &str, took: Duration) {
    histogram
        .get_or_create(&Call { op: op.to_string() })
        .observe(took.as_secs_f64());
}
