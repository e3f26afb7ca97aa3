//! Per-tenant quotas, kept by each replica: the submit rate (a token bucket per tenant and tier)
//! and the number of open watch streams. With N replicas behind a load balancer a tenant gets up
//! to N times the rate; the bucket is a guard against floods, not billing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::scheduler::Tier;

/// A sustained rate and the burst a bucket holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `RATE/BURST` (jobs per second / jobs at once), or `unlimited`.
    pub fn parse(text: &str) -> Result<Option<Rate>, String> {
        let text = text.trim();
        if text == "unlimited" {
            return Ok(None);
        }
        let bad = || {
            format!(
                "{text:?}: expected RATE/BURST like 100/1000 (jobs/s, jobs at once) or unlimited"
            )
        };
        let (rate, burst) = text.split_once('/').ok_or_else(bad)?;
        let per_second: f64 = rate.trim().parse().map_err(|_| bad())?;
        let burst: f64 = burst.trim().parse().map_err(|_| bad())?;
        if !(per_second > 0.0 && burst >= 1.0 && per_second.is_finite() && burst.is_finite()) {
            return Err(bad());
        }
        Ok(Some(Rate { per_second, burst }))
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Quotas {
    /// Per tier, FREE first; `None` is unlimited.
    rates: [Option<Rate>; 4],
    buckets: Mutex<HashMap<(String, Tier), Bucket>>,
    max_watches: usize,
    watches: Arc<Mutex<HashMap<String, usize>>>,
}

impl Quotas {
    pub fn new(rates: [Option<Rate>; 4], max_watches: usize) -> Quotas {
        Quotas {
            rates,
            buckets: Mutex::default(),
            max_watches,
            watches: Arc::default(),
        }
    }

    /// Takes `n` submits per tier from the tenant's buckets, all or none; on refusal, how long
    /// until the call would pass. A call bigger than the burst passes once the bucket is full
    /// and leaves it in debt, so big batches are slowed to the rate, never refused forever.
    pub fn submit(&self, tenant: &str, counts: &[(Tier, usize)]) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("not poisoned");
        let mut wait = Duration::ZERO;
        for &(tier, n) in counts {
            let Some(rate) = self.rates[tier as usize - 1] else {
                continue;
            };
            let bucket = buckets.entry((tenant.to_string(), tier)).or_insert(Bucket {
                tokens: rate.burst,
                at: now,
            });
            let elapsed = now.duration_since(bucket.at).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
            bucket.at = now;
            let needed = (n as f64).min(rate.burst);
            if bucket.tokens < needed {
                let secs = (needed - bucket.tokens) / rate.per_second;
                wait = wait.max(Duration::from_secs_f64(secs));
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for &(tier, n) in counts {
            if let Some(bucket) = buckets.get_mut(&(tenant.to_string(), tier)) {
                bucket.tokens -= n as f64;
            }
        }
        Ok(())
    }

    /// One more watch stream for the tenant, or `None` at the cap. The permit lasts as long as
    /// the stream.
    pub fn watch(&self, tenant: &str) -> Option<WatchPermit> {
        let mut watches = self.watches.lock().expect("not poisoned");
        let open = watches.entry(tenant.to_string()).or_default();
        if *open >= self.max_watches {
            return None;
        }
        *open += 1;
        Some(WatchPermit {
            tenant: tenant.to_string(),
            watches: self.watches.clone(),
        })
    }

    pub fn max_watches(&self) -> usize {
        self.max_watches
    }
}

pub struct WatchPermit {
    tenant: String,
    watches: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut watches = self.watches.lock().expect("not poisoned");
        if let Some(open) = watches.get_mut(&self.tenant) {
            *open -= 1;
            if *open == 0 {
                watches.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refuse_past_the_burst_and_say_how_long_to_wait() {
        let rate = Rate::parse("10/5").unwrap();
        let q = Quotas::new([rate, None, None, None], 2);
        for _ in 0..5 {
            q.submit("a", &[(Tier::Free, 1)]).unwrap();
        }
        let wait = q.submit("a", &[(Tier::Free, 1)]).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another tenant, and an unlimited tier, are untouched.
        q.submit("b", &[(Tier::Free, 5)]).unwrap();
        q.submit("a", &[(Tier::Pro, 10_000)]).unwrap();
        // A batch over the burst waits for a full bucket, then passes into debt.
        let q = Quotas::new([rate, None, None, None], 2);
        q.submit("a", &[(Tier::Free, 50)]).unwrap();
        assert!(q.submit("a", &[(Tier::Free, 1)]).unwrap_err() > Duration::from_secs(4));
        assert!(Rate::parse("0/1").is_err() && Rate::parse("x").is_err());
        assert_eq!(Rate::parse("unlimited"), Ok(None));
    }

    #[test]
    fn watch_permits_are_counted_until_dropped() {
        let q = Quotas::new([None; 4], 2);
        let (a, _b) = (q.watch("t").unwrap(), q.watch("t").unwrap());
        assert!(q.watch("t").is_none() && q.watch("u").is_some());
        drop(a);
        assert!(q.watch("t").is_some());
    }
}
