//! Small arithmetic the scenarios share: rates, percentiles, medians and rounding.

use serde_json::{Value, json};

/// Jobs per second, rounded to a whole job.
pub fn rate(n: u64, elapsed: std::time::Duration) -> f64 {
    (n as f64 / elapsed.as_secs_f64()).round()
}

/// Rounds to `places` decimals, so JSON lines stay readable.
pub fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

/// Nearest-rank percentile of sorted values; `None` when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(round(sorted[i], 3))
}

/// p50/p95/p99/max of latencies in ms; a figure that was not measured is left out, not zero.
pub fn latencies(mut ms: Vec<f64>) -> serde_json::Map<String, Value> {
    ms.sort_by(|a, b| a.total_cmp(b));
    let mut out = serde_json::Map::new();
    for (key, p) in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)] {
        if let Some(v) = percentile(&ms, p) {
            out.insert(key.into(), json!(v));
        }
    }
    out
}

/// The median of the values that are there (an even count averages the middle two).
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[m]),
        _ => Some((v[m - 1] + v[m]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), Some(51.0));
        assert_eq!(percentile(&sorted, 1.0), Some(100.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, f64::NAN, 2.0, 3.0]), Some(2.5));
        assert_eq!(median([]), None);
        assert!(latencies(vec![]).is_empty());
        assert_eq!(latencies(vec![2.0, 1.0])["max"], json!(2.0));
    }
}
