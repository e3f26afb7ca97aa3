//! One `Config` for the server, from flags and environment variables (clap), with defaults.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::Rate;
use crate::auth::jwt;
use crate::scheduler::{KeyLimit, QueueDefaults};
use crate::{api, artifacts, dispatcher, history, scheduler, webhooks};

/// Parses `500ms`, `30s`, `5m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m or 500ms"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use ms, s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_weights(text: &str) -> Result<[u32; 4], String> {
    let parts: Vec<u32> = text
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .ok()
                .filter(|w| (1..=1000).contains(w))
        })
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{text:?}: expected four weights 1..=1000 like 1,2,4,8"))?;
    parts
        .try_into()
        .map_err(|_| format!("{text:?}: expected four weights (FREE,PRO,PREMIUM,ENTERPRISE)"))
}

/// Parses four `RATE/BURST` (or `unlimited`) for FREE,PRO,PREMIUM,ENTERPRISE; one applies to all.
fn parse_rates(text: &str) -> Result<[Option<Rate>; 4], String> {
    let rates: Vec<Option<Rate>> = text.split(',').map(Rate::parse).collect::<Result<_, _>>()?;
    match rates.as_slice() {
        [one] => Ok([*one; 4]),
        _ => rates.try_into().map_err(|_| {
            format!("{text:?}: expected one RATE/BURST, or four (FREE,PRO,PREMIUM,ENTERPRISE)")
        }),
    }
}

/// Parses `render:attempts=5,timeout=2h,backoff=10s,backoff_max=10m`.
fn parse_queue_defaults(text: &str) -> Result<(String, QueueDefaults), String> {
    let (queue, settings) = text.split_once(':').ok_or_else(|| {
        format!("{text:?}: expected QUEUE:key=value,... like render:attempts=5,timeout=2h")
    })?;
    let mut d = QueueDefaults::default();
    for setting in settings.split(',').filter(|s| !s.is_empty()) {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("{setting:?}: expected key=value"))?;
        match key.trim() {
            "attempts" => {
                let n = value.parse().ok().filter(|n| (1..=100).contains(n));
                d.max_attempts =
                    Some(n.ok_or_else(|| format!("attempts={value}: expected 1..=100"))?);
            }
            "backoff" => d.backoff_initial = Some(parse_duration(value)?),
            "backoff_max" => d.backoff_max = Some(parse_duration(value)?),
            "timeout" => d.timeout = Some(parse_duration(value)?),
            "concurrency" | "rate" | "burst" => {
                limit_setting(key.trim(), value, &mut d.concurrency, &mut d.rate)?
            }
            "max_wait" => d.max_wait = Some(parse_duration(value)?),
            "retention" => {
                let keep = parse_duration(value)?;
                if keep.is_zero() {
                    return Err("retention=0: expected a duration like 7d".into());
                }
                d.retention = Some(keep);
            }
            // Checked against the webhook allowlist at start (`Config::webhooks`).
            "webhook" => d.webhook = Some(value.to_string()),
            other => {
                return Err(format!(
                    "{other:?}: use attempts, backoff, backoff_max, timeout, concurrency, rate, burst, max_wait, retention or webhook"
                ));
            }
        }
    }
    Ok((queue.trim().to_string(), d))
}

/// One of the settings a queue and a key limit share: `concurrency=N` (most running at once),
/// `rate=N/PERIOD` (N leases per PERIOD, N at once unless `burst=B` says otherwise).
fn limit_setting(
    key: &str,
    value: &str,
    concurrency: &mut Option<u32>,
    rate: &mut Option<(Duration, u32)>,
) -> Result<(), String> {
    match key {
        "concurrency" => {
            let n = value.parse().ok().filter(|n| *n >= 1);
            *concurrency =
                Some(n.ok_or_else(|| format!("concurrency={value}: expected 1 or more"))?);
        }
        "rate" => {
            let bad = || format!("rate={value}: expected N/PERIOD like 1/5m or 10/1s");
            let (n, period) = value.split_once('/').ok_or_else(bad)?;
            let n: u32 = n.parse().ok().filter(|n| *n >= 1).ok_or_else(bad)?;
            let period = parse_duration(period)?;
            if period.is_zero() {
                return Err(bad());
            }
            let burst = rate.map(|(_, b)| b).unwrap_or(n);
            *rate = Some((period / n, burst));
        }
        _ => {
            let b: u32 = value
                .parse()
                .ok()
                .filter(|b| *b >= 1)
                .ok_or_else(|| format!("burst={value}: expected 1 or more"))?;
            let per = rate.map(|(p, _)| p).ok_or("burst needs a rate before it")?;
            *rate = Some((per, b));
        }
    }
    Ok(())
}

/// Parses `QUEUE PATTERN SETTINGS`, e.g. `upload tiktok:* rate=1/5m` or
/// `render account:* concurrency=3`: a limit per limit key of the queue's jobs, for the keys
/// the pattern matches (exactly, or by the prefix before a final `*`).
fn parse_key_limit(text: &str) -> Result<(String, KeyLimit), String> {
    let bad =
        || format!("{text:?}: expected QUEUE PATTERN SETTINGS like \"upload tiktok:* rate=1/5m\"");
    let mut words = text.split_whitespace();
    let (Some(queue), Some(pattern), Some(settings), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(bad());
    };
    if pattern[..pattern.len() - 1].contains('*') {
        return Err(format!("{pattern:?}: only a final * is a wildcard"));
    }
    let mut limit = KeyLimit {
        pattern: pattern.to_string(),
        ..Default::default()
    };
    for setting in settings.split(',').filter(|s| !s.is_empty()) {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("{setting:?}: expected key=value"))?;
        match key {
            "concurrency" | "rate" | "burst" => {
                limit_setting(key, value, &mut limit.concurrency, &mut limit.rate)?
            }
            other => return Err(format!("{other:?}: use concurrency, rate or burst")),
        }
    }
    if limit.concurrency.is_none() && limit.rate.is_none() {
        return Err(bad());
    }
    Ok((queue.to_string(), limit))
}

#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "CONVEYOR_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Redis holding queues, leases and events. `serve` defaults to redis://127.0.0.1:6379;
    /// `dev` starts a private redis-server when it is not set.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// How long a Redis call may take before the request fails with UNAVAILABLE.
    #[arg(long, env = "CONVEYOR_REDIS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// The SQL system of record: `postgres://user@host/db` or `sqlite://path?mode=rwc`. Every
    /// job is written there before its submit is answered, so it survives a Redis loss; `none`
    /// runs on Redis alone (no history, nothing survives a Redis loss). `serve` requires it;
    /// `dev` defaults to SQLite under its data folder.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Connections to the database.
    #[arg(long, env = "CONVEYOR_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// How long a call waits for the database (a connection, a submit's insert, the readiness
    /// ping) before it answers UNAVAILABLE; a submit's insert goes on meanwhile and its job is
    /// submitted once it lands. Default 2s.
    #[arg(long, env = "CONVEYOR_DB_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub db_timeout: Duration,
    /// How long transitions gather before the history writer writes them in one transaction.
    #[arg(long, env = "CONVEYOR_HISTORY_FLUSH", default_value = "100ms", value_parser = parse_duration)]
    pub history_flush: Duration,
    /// How often one replica compares unfinished rows that stopped changing with Redis, and
    /// writes what a replica that died without flushing left out.
    #[arg(long, env = "CONVEYOR_HISTORY_REPAIR", default_value = "5m", value_parser = parse_duration)]
    pub history_repair: Duration,
    /// How long finished jobs are kept, their history and their artifacts, unless their queue
    /// says otherwise (`retention=` in --queue-default) or the job was submitted with `keep`.
    #[arg(long, env = "CONVEYOR_HISTORY_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub history_retention: Duration,
    /// How long inputs that clients upload before submitting are kept.
    #[arg(long, env = "CONVEYOR_INPUT_RETENTION", default_value = "1d", value_parser = parse_duration)]
    pub input_retention: Duration,
    /// How often one replica deletes what outlived its retention (history rows, artifacts,
    /// inputs, files no accepted attempt named); 0 turns the sweep off.
    #[arg(long, env = "CONVEYOR_RETENTION_SWEEP", default_value = "1h", value_parser = parse_duration)]
    pub retention_sweep: Duration,
    /// Largest accepted job payload in bytes.
    #[arg(long, env = "CONVEYOR_MAX_PAYLOAD", default_value_t = 1 << 20)]
    pub max_payload: usize,
    /// Fair-share weights of FREE,PRO,PREMIUM,ENTERPRISE.
    #[arg(long, env = "CONVEYOR_TIER_WEIGHTS", default_value = "1,2,4,8", value_parser = parse_weights)]
    pub tier_weights: [u32; 4],
    /// Attempts per job unless the submit says otherwise.
    #[arg(long, env = "CONVEYOR_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// First retry delay (doubles per attempt, with jitter) unless the submit says otherwise.
    #[arg(long, env = "CONVEYOR_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub backoff: Duration,
    /// Ceiling of the retry delay.
    #[arg(long, env = "CONVEYOR_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// How long one attempt may run unless the submit says otherwise.
    #[arg(long, env = "CONVEYOR_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub timeout: Duration,
    /// One queue's own settings, e.g. `render:attempts=5,timeout=2h,concurrency=3` (attempts,
    /// backoff, backoff_max, timeout, concurrency: most running at once across all workers,
    /// rate=N/PERIOD and burst=B: leases per period, max_wait: a tier whose next job waited
    /// this long goes first, retention: how long its finished jobs, their history and their
    /// artifacts are kept, webhook: a URL; repeatable; in the environment, separate queues
    /// with `;`).
    #[arg(long = "queue-default", env = "CONVEYOR_QUEUE_DEFAULTS", value_delimiter = ';',
          value_parser = parse_queue_defaults)]
    pub queue_defaults: Vec<(String, QueueDefaults)>,
    /// A limit per limit key (a job's `limit_key`, per tenant) in one queue:
    /// `QUEUE PATTERN SETTINGS`, e.g. `upload tiktok:* rate=1/5m` or `render account:*
    /// concurrency=3,rate=10/1s,burst=20`. PATTERN matches a key exactly, or by its prefix
    /// before a final `*`; the most specific pattern applies. Repeatable; in the environment,
    /// separate limits with `;`.
    #[arg(long = "key-limit", env = "CONVEYOR_KEY_LIMITS", value_delimiter = ';',
          value_parser = parse_key_limit)]
    pub key_limits: Vec<(String, KeyLimit)>,
    /// Lease length; renewed every third of it while the worker is connected.
    #[arg(long, env = "CONVEYOR_LEASE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How long a disconnected worker's jobs wait for it to reconnect before being requeued.
    #[arg(long, env = "CONVEYOR_GRACE", default_value = "15s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Heartbeat interval on worker streams; three missed ones close the stream.
    #[arg(long, env = "CONVEYOR_HEARTBEAT", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// The longest a queue with workers here goes without a sweep (reclaim expired leases,
    /// promote due jobs); known deadlines and due times are swept exactly when they pass.
    #[arg(long, env = "CONVEYOR_SWEEP", default_value = "60s", value_parser = parse_duration)]
    pub sweep: Duration,
    /// How long finished jobs stay in Redis (and their idempotency keys hold); with a database,
    /// GetJob and ListJobs read them from there afterwards.
    #[arg(long, env = "CONVEYOR_RETENTION", default_value = "1h", value_parser = parse_duration)]
    pub retention: Duration,
    /// The S3 bucket of job artifacts; without it artifacts are off.
    #[arg(long, env = "CONVEYOR_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    #[arg(long, env = "CONVEYOR_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// An S3-compatible endpoint (MinIO, R2, Ceph), e.g. `http://minio:9000`; AWS when unset.
    #[arg(long, env = "CONVEYOR_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Address objects as `endpoint/bucket/key` (most S3-compatible stores want this).
    #[arg(long, env = "CONVEYOR_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// The store's access key; unset, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are used.
    #[arg(long, env = "CONVEYOR_S3_ACCESS_KEY")]
    pub s3_access_key: Option<String>,
    #[arg(long, env = "CONVEYOR_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
    /// How long a presigned upload URL lasts.
    #[arg(long, env = "CONVEYOR_ARTIFACT_UPLOAD_EXPIRY", default_value = "15m", value_parser = parse_duration)]
    pub artifact_upload_expiry: Duration,
    /// How long a presigned download URL lasts unless the caller asks for less.
    #[arg(long, env = "CONVEYOR_ARTIFACT_DOWNLOAD_EXPIRY", default_value = "1h", value_parser = parse_duration)]
    pub artifact_download_expiry: Duration,
    /// Serve without authentication: every caller is the tenant `default` and may do
    /// everything. `dev` always runs so; `serve` refuses to start without credentials unless
    /// this is given.
    #[arg(long, env = "CONVEYOR_INSECURE")]
    pub insecure: bool,
    /// The issuer (`iss`) of accepted OIDC bearer tokens. With an audience and a JWKS, JWTs are
    /// accepted beside API keys.
    #[arg(long, env = "CONVEYOR_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The audience (`aud`) accepted tokens must name.
    #[arg(long, env = "CONVEYOR_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The issuer's signing keys: a JWKS file, or an https URL serving one.
    #[arg(long, env = "CONVEYOR_JWT_JWKS")]
    pub jwt_jwks: Option<String>,
    /// Accepted signing algorithms (HS* is refused: a shared secret is not a public key).
    #[arg(long, env = "CONVEYOR_JWT_ALGORITHMS", default_value = "RS256,ES256")]
    pub jwt_algorithms: String,
    /// The claim naming the caller's tenant.
    #[arg(long, env = "CONVEYOR_JWT_TENANT_CLAIM", default_value = "tenant")]
    pub jwt_tenant_claim: String,
    /// The first admin key, for a fresh install (a Kubernetes Secret): a key in the format
    /// `conveyor keys create` prints, `cvk_<16 hex>_<64 hex>` (e.g. `echo "cvk_$(openssl rand
    /// -hex 8)_$(openssl rand -hex 32)"`). At start, a server with a database adds it as an
    /// admin key of `--bootstrap-tenant` unless a credential with its id exists already (so a
    /// revoked bootstrap key stays revoked). None by default.
    #[arg(long, env = "CONVEYOR_BOOTSTRAP_KEY", hide_env_values = true)]
    pub bootstrap_key: Option<String>,
    /// The tenant of the bootstrap key. Default `default`.
    #[arg(long, env = "CONVEYOR_BOOTSTRAP_TENANT", default_value = "default")]
    pub bootstrap_tenant: String,
    /// TLS for the gRPC port: the certificate chain (PEM). Needs `--tls-key`.
    #[arg(long, env = "CONVEYOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key (PEM).
    #[arg(long, env = "CONVEYOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// mTLS: the CA (PEM) whose client certificates are accepted. A certificate's name maps to
    /// a tenant or a worker with `conveyor keys create --cert NAME`; callers without a
    /// certificate may still use keys.
    #[arg(long, env = "CONVEYOR_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are read again: a changed certificate, key or client CA is in
    /// force for new connections at once, with no restart (0: never). Default 10s.
    #[arg(long, env = "CONVEYOR_TLS_RELOAD", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload: Duration,
    /// How long a new connection has to speak: send its first bytes, or finish its TLS
    /// handshake. Default 10s.
    #[arg(long, env = "CONVEYOR_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Most connections open on the gRPC port at once; at the cap the oldest that has not
    /// spoken yet is closed for a new one. Keep it under the process's file limit (`ulimit -n`).
    #[arg(long, env = "CONVEYOR_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Most concurrent streams (calls) on one HTTP/2 connection, advertised in its SETTINGS.
    #[arg(long, env = "CONVEYOR_MAX_STREAMS", default_value_t = 1000)]
    pub max_streams: u32,
    /// Submits per second per tenant, per tier FREE,PRO,PREMIUM,ENTERPRISE, as RATE/BURST or
    /// `unlimited` (one value for every tier, or four); over it, RESOURCE_EXHAUSTED with a retry
    /// delay. None by default: a single-tenant or unauthenticated deployment is not throttled
    /// unless someone asks, e.g. `100/1000,200/2000,500/5000,1000/10000` for shared tenants.
    #[arg(long, env = "CONVEYOR_SUBMIT_RATE", value_parser = parse_rates,
          default_value = "unlimited")]
    pub submit_rate: [Option<Rate>; 4],
    /// Open WatchJob streams per tenant (per replica).
    #[arg(long, env = "CONVEYOR_MAX_WATCHES", default_value_t = 1000)]
    pub max_watches: usize,
    /// A watch quiet for this long gets a keep-alive event, so proxies with idle timeouts do
    /// not cut it.
    #[arg(long, env = "CONVEYOR_WATCH_KEEPALIVE", default_value = "15s", value_parser = parse_duration)]
    pub watch_keepalive: Duration,
    /// Browser origins allowed to call over gRPC-Web (CORS), comma-separated, e.g.
    /// `https://app.example.com`; none by default. `*` allows any origin (not for production).
    #[arg(
        long = "cors-origin",
        env = "CONVEYOR_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Most labels on one job.
    #[arg(long, env = "CONVEYOR_MAX_LABELS", default_value_t = 64)]
    pub max_labels: usize,
    /// Most jobs in flight on one worker stream (its announced concurrency).
    #[arg(long, env = "CONVEYOR_MAX_WORKER_SLOTS", default_value_t = 1000)]
    pub max_worker_slots: u32,
    /// Largest gRPC metadata (all headers) of one request, in bytes.
    #[arg(long, env = "CONVEYOR_MAX_METADATA", default_value_t = 16 * 1024)]
    pub max_metadata: u32,
    /// The secret webhook signatures are made with (HMAC-SHA256); webhooks are off without it.
    #[arg(long, env = "CONVEYOR_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Internal hosts and networks callback URLs may name anyway, e.g. `hooks.internal,10.0.0.0/8`.
    #[arg(long, env = "CONVEYOR_WEBHOOK_ALLOW", default_value = "")]
    pub webhook_allow: String,
    /// Tries per webhook delivery (backoff from 1 s, doubling, up to 5 min).
    #[arg(long, env = "CONVEYOR_WEBHOOK_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=30))]
    pub webhook_attempts: u32,
    /// Threads of the server's runtime; one per core when unset. Where Redis shares the cores
    /// (a small machine), 1 does the same work with less CPU: fewer wake-ups across threads.
    #[arg(long, env = "CONVEYOR_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// The HTTP port: Prometheus `/metrics`, probes `/healthz` and `/readyz`, and `POST /drain`
    /// (loopback callers only). `serve` defaults to 0.0.0.0:9090, `dev` has none; `off` turns
    /// it off.
    #[arg(long = "http-listen", env = "CONVEYOR_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// How long a shutdown waits for open streams (watches, workers told to drain) before it
    /// closes them; the history is flushed after.
    #[arg(long, env = "CONVEYOR_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// How often readiness checks that Redis and the database answer (a PING and a query).
    #[arg(long, env = "CONVEYOR_HEALTH_CHECK", default_value = "5s", value_parser = parse_duration)]
    pub health_check: Duration,
}

impl Config {
    /// The defaults, pointing at `redis_url`, with authentication off; what tests, `demo` and
    /// `conveyor dev` start from.
    pub fn with_redis(redis_url: impl Into<String>) -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: Config,
        }
        let mut config = Defaults::parse_from(["conveyor"]).config;
        config.redis_url = Some(redis_url.into());
        config.insecure = true;
        config
    }

    pub fn redis_url(&self) -> &str {
        self.redis_url
            .as_deref()
            .unwrap_or("redis://127.0.0.1:6379")
    }

    /// The database URL, or `None` when history is off (`none` or unset).
    pub fn database(&self) -> Option<&str> {
        self.database_url.as_deref().filter(|url| *url != "none")
    }

    pub fn history(&self) -> history::Options {
        history::Options {
            pool: self.db_pool,
            flush_every: self.history_flush,
            timeout: self.db_timeout,
        }
    }

    pub fn scheduler(&self) -> scheduler::Options {
        scheduler::Options {
            lease_ttl: self.lease_ttl,
            tier_weights: self.tier_weights,
            max_attempts: self.max_attempts,
            backoff_initial: self.backoff,
            backoff_max: self.backoff_max,
            timeout: self.timeout,
            retention: self.retention,
            queues: self.queues(),
        }
    }

    /// Each queue's settings, its key limits among them (most specific pattern first).
    fn queues(&self) -> HashMap<String, QueueDefaults> {
        let mut queues: HashMap<String, QueueDefaults> =
            self.queue_defaults.iter().cloned().collect();
        for (queue, limit) in &self.key_limits {
            let keys = &mut queues.entry(queue.clone()).or_default().key_limits;
            keys.retain(|k| k.pattern != limit.pattern);
            keys.push(limit.clone());
            keys.sort_by_key(|k| std::cmp::Reverse(k.specificity()));
        }
        queues
    }

    pub fn dispatcher(&self) -> dispatcher::Options {
        dispatcher::Options {
            grace: self.grace,
            heartbeat: self.heartbeat,
            sweep: self.sweep,
            ..Default::default()
        }
    }

    pub fn limits(&self) -> api::Limits {
        api::Limits {
            max_payload: self.max_payload,
            max_labels: self.max_labels,
            max_worker_slots: self.max_worker_slots,
            webhooks: self.webhooks().ok().flatten().map(|w| w.allow),
        }
    }

    /// The webhook settings when a secret is set; queue webhooks are checked against the
    /// allowlist here, so a bad one stops the server at start.
    pub fn webhooks(&self) -> Result<Option<webhooks::Options>, String> {
        let allow = webhooks::Allow::parse(&self.webhook_allow)?;
        let Some(secret) = &self.webhook_secret else {
            if self.queue_defaults.iter().any(|(_, d)| d.webhook.is_some()) {
                return Err("a queue has a webhook but CONVEYOR_WEBHOOK_SECRET is not set".into());
            }
            return Ok(None);
        };
        if secret.len() < 16 {
            return Err("CONVEYOR_WEBHOOK_SECRET: use at least 16 bytes".into());
        }
        for (queue, d) in &self.queue_defaults {
            if let Some(url) = &d.webhook {
                webhooks::check_url(url, &allow).map_err(|e| format!("{queue}: webhook: {e}"))?;
            }
        }
        Ok(Some(webhooks::Options {
            secret: secret.clone(),
            allow: std::sync::Arc::new(allow),
            attempts: self.webhook_attempts,
        }))
    }

    /// How long finished jobs, their artifacts and inputs are kept (`crate::retention`).
    pub fn retention(&self) -> crate::retention::Policy {
        crate::retention::Policy {
            default: self.history_retention,
            queues: self
                .queue_defaults
                .iter()
                .filter_map(|(queue, d)| Some((queue.clone(), d.retention?)))
                .collect(),
            inputs: self.input_retention,
            unnamed: self.artifact_upload_expiry,
        }
    }

    /// The artifact store when a bucket is set; an error names what is wrong.
    pub async fn storage(&self) -> Result<Option<artifacts::Storage>, String> {
        let Some(bucket) = &self.s3_bucket else {
            return Ok(None);
        };
        let access_key = match (&self.s3_access_key, &self.s3_secret_key) {
            (Some(key), Some(secret)) => Some((key.clone(), secret.clone())),
            (None, None) => None,
            _ => {
                return Err("CONVEYOR_S3_ACCESS_KEY and CONVEYOR_S3_SECRET_KEY go together".into());
            }
        };
        let options = artifacts::Options {
            bucket: bucket.clone(),
            region: self.s3_region.clone(),
            endpoint: self.s3_endpoint.clone(),
            path_style: self.s3_path_style,
            access_key,
            upload_expiry: self.artifact_upload_expiry,
            download_expiry: self.artifact_download_expiry,
        };
        artifacts::Storage::new(options)
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    }

    pub fn quotas(&self) -> api::Quotas {
        api::Quotas::new(self.submit_rate, self.max_watches)
    }

    /// The JWT settings when an issuer is configured; an error names what is missing.
    pub fn jwt(&self) -> Result<Option<jwt::Options>, String> {
        let Some(issuer) = &self.jwt_issuer else {
            return Ok(None);
        };
        let (Some(audience), Some(jwks)) = (&self.jwt_audience, &self.jwt_jwks) else {
            return Err(
                "CONVEYOR_JWT_ISSUER needs CONVEYOR_JWT_AUDIENCE and CONVEYOR_JWT_JWKS".into(),
            );
        };
        Ok(Some(jwt::Options {
            issuer: issuer.clone(),
            audience: audience.clone(),
            jwks: jwks.clone(),
            algorithms: jwt::parse_algorithms(&self.jwt_algorithms)?,
            tenant_claim: self.jwt_tenant_claim.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_weights() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err() && parse_duration("-1s").is_err());
        assert_eq!(parse_weights("1,2,4,8"), Ok([1, 2, 4, 8]));
        assert!(parse_weights("1,2,4").is_err() && parse_weights("0,1,1,1").is_err());
        let (queue, d) = parse_queue_defaults("render:attempts=5,timeout=2h").unwrap();
        assert_eq!(
            (queue.as_str(), d.max_attempts, d.timeout),
            ("render", Some(5), Some(Duration::from_secs(7200)))
        );
        assert!(
            parse_queue_defaults("render").is_err()
                && parse_queue_defaults("r:attempts=0").is_err()
        );
        assert!(parse_queue_defaults("r:colour=blue").is_err());
        let (_, d) = parse_queue_defaults("upload:rate=1/5m").unwrap();
        assert_eq!(d.rate, Some((Duration::from_secs(300), 1)));
        let (_, d) = parse_queue_defaults("api:rate=10/1s,burst=20").unwrap();
        assert_eq!(d.rate, Some((Duration::from_millis(100), 20)));
        assert!(
            parse_queue_defaults("x:burst=2").is_err()
                && parse_queue_defaults("x:rate=0/1s").is_err()
        );
    }

    #[test]
    fn key_limits() {
        let (queue, limit) = parse_key_limit("upload tiktok:* rate=1/5m").unwrap();
        assert_eq!(queue, "upload");
        assert_eq!(limit.pattern, "tiktok:*");
        assert_eq!(limit.rate, Some((Duration::from_secs(300), 1)));
        let (_, limit) =
            parse_key_limit("render acct-1 concurrency=3,rate=10/1s,burst=20").unwrap();
        assert_eq!(limit.concurrency, Some(3));
        assert_eq!(limit.rate, Some((Duration::from_millis(100), 20)));
        for bad in [
            "upload tiktok:*",
            "upload a*b rate=1/1s",
            "u k colour=1",
            "u k rate=1/0s",
        ] {
            assert!(parse_key_limit(bad).is_err(), "{bad}");
        }
        assert!(KeyLimit::matching("tiktok:1", &[]).is_none());
        let mut config = Config::with_redis("redis://unused");
        config.key_limits = [
            "upload * concurrency=9",
            "upload tiktok:* rate=1/5m",
            "upload tiktok:vip rate=1/1s",
        ]
        .into_iter()
        .map(|text| parse_key_limit(text).unwrap())
        .collect();
        let keys = &config.queues()["upload"].key_limits;
        let find = |key: &str| KeyLimit::matching(key, keys).map(|k| k.pattern.as_str());
        assert_eq!(find("tiktok:vip"), Some("tiktok:vip"));
        assert_eq!(find("tiktok:42"), Some("tiktok:*"));
        assert_eq!(find("youtube:42"), Some("*"));
    }
}
