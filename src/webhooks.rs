//! Webhooks: when a job ends, its callback URL (the job's own, or its queue's) gets the job as
//! JSON in a POST signed with HMAC-SHA256, retried with backoff, never on the scheduler's path.
//!
//! The scheduler hands over the ids of jobs that ended (`notify`); one task reads each job and
//! spawns its delivery. Deliveries live in this replica's memory: at least once while it runs
//! (a receiver dedupes by `Conveyor-Delivery`), lost if it dies mid-retry.
//!
//! SSRF: only http(s) URLs; a URL naming a loopback, private, link-local (cloud metadata),
//! shared, multicast or unspecified address, or `localhost`, is refused at submit, and every
//! address a host name resolves to is checked again before each delivery and pinned for it, so
//! DNS cannot point a public name at an internal address. An allowlist lets named hosts and
//! networks through.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::Rng;
use reqwest::Url;
use serde_json::json;
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc};

use crate::scheduler::{self, Job};

/// POSTs in flight at once per replica.
const IN_FLIGHT: usize = 64;
/// One POST may take this long.
const TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Hosts and networks a callback URL may name although they are internal.
#[derive(Clone, Debug, Default)]
pub struct Allow {
    hosts: Vec<String>,
    nets: Vec<(IpAddr, u8)>,
}

impl Allow {
    /// A comma-separated list of host names, addresses and networks (`10.0.0.0/8`).
    pub fn parse(text: &str) -> Result<Allow, String> {
        let mut allow = Allow::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (addr, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (item, None),
            };
            match addr.parse::<IpAddr>() {
                Ok(ip) => {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let bits = match bits {
                        Some(b) => b.parse().ok().filter(|b| *b <= max),
                        None => Some(max),
                    };
                    let bits = bits.ok_or_else(|| format!("{item:?}: not a network"))?;
                    allow.nets.push((ip, bits));
                }
                Err(_) if bits.is_none() => allow.hosts.push(item.to_ascii_lowercase()),
                Err(_) => return Err(format!("{item:?}: not a network like 10.0.0.0/8")),
            }
        }
        Ok(allow)
    }

    fn host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == host)
    }

    fn ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|(net, bits)| within(ip, *net, *bits))
    }
}

fn within(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, len) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let shift = len - bits as u32;
    bits == 0 || (ip >> shift) == (net >> shift)
}

/// Addresses no webhook may reach unless allowed: this machine, private and shared networks,
/// link-local (169.254.169.254 is the cloud metadata service), multicast, unspecified.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80 // link-local
            }
        },
    }
}

/// Whether `url` may be a callback URL; the reason when not. Host names are checked again,
/// resolved, at delivery.
pub fn check_url(url: &str, allow: &Allow) -> Result<Url, String> {
    if url.len() > 2048 {
        return Err("over 2048 bytes".into());
    }
    let parsed = Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{}: only http and https", parsed.scheme()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL; the signature authenticates Conveyor".into());
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) => return check_ip(IpAddr::V4(ip), allow).map(|_| parsed),
        Some(url::Host::Ipv6(ip)) => return check_ip(IpAddr::V6(ip), allow).map(|_| parsed),
        None => return Err("no host".into()),
    };
    if allow.host(&host) {
        return Ok(parsed);
    }
    if host == "localhost" || host.ends_with(".localhost") || host.ends_with(".internal") {
        return Err(format!(
            "{host} is internal; the server's webhook allowlist can permit it"
        ));
    }
    Ok(parsed)
}

fn check_ip(ip: IpAddr, allow: &Allow) -> Result<(), String> {
    match internal(ip) && !allow.ip(ip) {
        true => Err(format!(
            "{ip} is internal; the server's webhook allowlist can permit it"
        )),
        false => Ok(()),
    }
}

/// The `Conveyor-Signature` value for `body` sent at `timestamp` (unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={timestamp},v1={hex}")
}

#[derive(Clone, Debug)]
pub struct Options {
    pub secret: String,
    pub allow: Arc<Allow>,
    /// Tries per delivery, the first included.
    pub attempts: u32,
}

/// Where the scheduler reports jobs that ended.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::UnboundedSender<String>,
}

impl Handle {
    pub fn notify(&self, job_id: &str) {
        let _ = self.tx.send(job_id.to_string());
    }
}

/// Starts the task that turns ended jobs into deliveries.
pub fn spawn(scheduler: scheduler::Handle, options: Options) -> Handle {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        while let Some(id) = rx.recv().await {
            let job = match scheduler.lookup(&id).await {
                Ok(Some(job)) if !job.callback_url.is_empty() => job,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(job = id, error = %e, "webhook: cannot read the job");
                    continue;
                }
            };
            let (options, slots) = (options.clone(), slots.clone());
            tokio::spawn(async move { deliver(&job, &options, &slots).await });
        }
    });
    Handle { tx }
}

/// The JSON a webhook receives: the job as GetJob would show it, payload aside.
fn body(job: &Job) -> Vec<u8> {
    let time = |ms: Option<i64>| ms.map(|ms| ms as f64 / 1000.0);
    let value = json!({
        "event": format!("job.{}", job.state.as_str().to_ascii_lowercase()),
        "job": {
            "id": job.id,
            "queue": job.queue,
            "state": job.state.as_str(),
            "tier": job.tier as i32,
            "priority": job.priority,
            "labels": job.labels,
            "attempt": job.attempt,
            "max_attempts": job.max_attempts,
            "result": job.result,
            "error": job.error,
            "worker_id": job.worker,
            "idempotency_key": job.idempotency_key,
            "created_at": time(Some(job.created_ms)),
            "started_at": time(job.started_ms),
            "finished_at": time(job.finished_ms),
        },
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Tries `job`'s delivery until it is taken, refused for good, or out of attempts. A slot is
/// held only while a POST is in flight, not while waiting to retry.
async fn deliver(job: &Job, options: &Options, slots: &Semaphore) {
    let body = body(job);
    let delivery = uuid::Uuid::now_v7().to_string();
    let mut wait = FIRST_RETRY;
    for attempt in 1..=options.attempts {
        let Ok(slot) = slots.acquire().await else {
            return;
        };
        let outcome = post(job, &body, &delivery, options).await;
        drop(slot);
        let counted = match &outcome {
            Ok(()) => "delivered",
            Err(Failure::Retry(_)) if attempt < options.attempts => "retry",
            Err(_) => "failed",
        };
        crate::metrics::get()
            .webhook_deliveries
            .get_or_create(&crate::metrics::Outcome {
                outcome: counted.to_string(),
            })
            .inc();
        match outcome {
            Ok(()) => {
                tracing::debug!(job = job.id, attempt, "webhook delivered");
                return;
            }
            Err(Failure::Final(why)) => {
                tracing::warn!(
                    job = job.id,
                    url = job.callback_url,
                    "webhook refused: {why}"
                );
                return;
            }
            Err(Failure::Retry(why)) if attempt < options.attempts => {
                let jittered = wait.mul_f64(rand::rng().random_range(0.5..1.0));
                tracing::info!(job = job.id, attempt, retry_in = ?jittered, "webhook failed: {why}");
                tokio::time::sleep(jittered).await;
                wait = (wait * 2).min(MAX_RETRY);
            }
            Err(Failure::Retry(why)) => {
                tracing::warn!(
                    job = job.id,
                    url = job.callback_url,
                    attempts = options.attempts,
                    "webhook given up: {why}"
                );
            }
        }
    }
}

enum Failure {
    Retry(String),
    Final(String),
}

async fn post(job: &Job, body: &[u8], delivery: &str, options: &Options) -> Result<(), Failure> {
    let url = check_url(&job.callback_url, &options.allow).map_err(Failure::Final)?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    // Resolve here, check every address, and pin the one used: the name cannot be pointed at
    // an internal address between the check and the connection.
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| Failure::Retry(format!("resolving {host}: {e}")))?
        .collect();
    if !options.allow.host(&host.to_ascii_lowercase()) {
        for addr in &addrs {
            check_ip(addr.ip(), &options.allow).map_err(Failure::Final)?;
        }
    }
    let addr = *addrs
        .first()
        .ok_or_else(|| Failure::Retry(format!("{host} has no address")))?;
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, addr)
        .build()
        .map_err(|e| Failure::Final(format!("HTTP client: {e}")))?;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "conveyor-webhook")
        .header("conveyor-delivery", delivery)
        .header(
            "conveyor-event",
            format!("job.{}", job.state.as_str().to_ascii_lowercase()),
        )
        .header(
            "conveyor-signature",
            signature(options.secret.as_bytes(), timestamp, body),
        )
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?;
    match response.status() {
        s if s.is_success() => Ok(()),
        s => Err(Failure::Retry(format!("answered {s}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let none = Allow::default();
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:8080/hook",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://172.16.0.1/",
            "http://100.64.0.1/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://localhost/",
            "http://api.localhost/",
            "file:///etc/passwd",
            "gopher://example.com/",
            "http://user:pw@example.com/",
            "not a url",
        ] {
            assert!(check_url(url, &none).is_err(), "{url} passed");
        }
        assert!(check_url("https://hooks.example.com/conveyor", &none).is_ok());
        assert!(check_url("http://93.184.216.34/hook", &none).is_ok());
        let allow = Allow::parse("127.0.0.1, 10.0.0.0/8, hooks.internal").unwrap();
        assert!(check_url("http://127.0.0.1:8080/hook", &allow).is_ok());
        assert!(check_url("http://10.9.8.7/", &allow).is_ok());
        assert!(check_url("http://hooks.internal/", &allow).is_ok());
        assert!(check_url("http://192.168.0.1/", &allow).is_err());
        assert!(Allow::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_and_body() {
        // RFC 4231 test case 2 ("Jefe", "what do ya want for nothing?"), with the timestamp and
        // dot making up the start of the message.
        let sig = signature(b"Jefe", 0, b"what do ya want for nothing?");
        assert!(sig.starts_with("t=0,v1="));
        assert_eq!(sig.len(), "t=0,v1=".len() + 64);
        assert_ne!(sig, signature(b"Jefe", 1, b"what do ya want for nothing?"));
    }
}
