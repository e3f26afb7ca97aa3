//! Retention: finished jobs older than the configured period leave the database, once a day.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Store;

const DAY: Duration = Duration::from_secs(24 * 3600);
/// Rows per delete: short transactions that never hold locks for long.
pub const BATCH: u64 = 1000;

/// Deletes what is older than `keep`, now and then once a day. Replicas may overlap; a delete
/// of what another already deleted does nothing.
pub async fn run(store: Store, keep: Duration) {
    loop {
        let cutoff = cutoff(keep);
        match store.cleanup(cutoff, BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "history cleanup"),
            Err(e) => tracing::warn!(error = %e, "history cleanup failed; next try in a day"),
        }
        tokio::time::sleep(DAY).await;
    }
}

/// The unix ms before which a finished job is older than `keep`.
pub fn cutoff(keep: Duration) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(keep).as_millis() as i64
}
