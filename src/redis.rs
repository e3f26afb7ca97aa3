//! The Redis clients: connects them, and starts a client's connection task again when it ends on
//! an error.
//!
//! fred drives each client through one connection task; when that task ends, every later call
//! just waits out its timeout while Redis itself is fine (unpatched fred ended it when a Cluster
//! redirect ran out of attempts during a slot move; see vendor/README.md). Nothing else would
//! notice, so the task is watched here: one that ends on an error is logged, counted
//! (`conveyor_redis_restarts_total`) and started again, and the clients' reconnect hooks (the
//! subscriber's subscriptions) run as after any reconnection.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{Builder, Client, ClientLike, Config, ReconnectPolicy};
use fred::types::ConnectHandle;

/// A regular client (scripts and commands) and a subscriber client (pub/sub), both connected.
pub async fn connect(
    url: &str,
    timeout: Duration,
) -> Result<(Client, SubscriberClient), fred::error::Error> {
    let mut builder = Builder::from_config(Config::from_url(url)?);
    builder.set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    // The subscriber hands every event of the replica to one task; a bigger buffer means a burst
    // does not overflow it (which would make every watcher re-read from Redis).
    builder.with_performance_config(|p| {
        p.broadcast_channel_capacity = 16 * 1024;
        // While Redis is unreachable, calls fail (UNAVAILABLE) instead of queueing forever.
        p.default_command_timeout = timeout;
    });
    builder.with_connection_config(|c| {
        c.connection_timeout = timeout;
        // Calls from many tasks share one connection; Nagle's algorithm would hold each write
        // back until the previous one is acknowledged.
        c.tcp.nodelay = Some(true);
        // A Cluster slot move answers ASK, and sometimes MOVED, to calls on keys of the slot;
        // the defaults (3 attempts, 5 redirections) run out during a busy reshard.
        c.max_command_attempts = 6;
        c.max_redirections = 10;
    });
    let client = builder.build()?;
    let subscriber = builder.build_subscriber_client()?;
    let task = client.init().await?;
    supervise(client.clone(), task, "client");
    let task = subscriber.init().await?;
    supervise(subscriber.clone(), task, "subscriber");
    Ok((client, subscriber))
}

/// Starts `client`'s connection task again whenever it ends on an error; a task that ends
/// cleanly (`quit`) is let go.
fn supervise<C: ClientLike + Send + 'static>(
    client: C,
    mut task: ConnectHandle,
    which: &'static str,
) {
    tokio::spawn(async move {
        loop {
            let error = match task.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!(%error, which, "the Redis connection task ended; starting it again");
            crate::metrics::get().redis_restarts.inc();
            tokio::time::sleep(Duration::from_millis(100)).await;
            task = client.connect();
        }
    });
}

/// Whether a failed call is known to have written nothing: a script that refused to start
/// while its Cluster slot moved (`MOVING`, see scheduler/scripts/common.lua), or a call that
/// found no connection to the Cluster node serving its slot and was never sent (see
/// vendor/README.md). Any other failure (a timeout, a broken connection) may have been applied.
pub fn not_applied(e: &fred::error::Error) -> bool {
    slot_moving(e)
        || (*e.kind() == fred::error::ErrorKind::Routing
            && e.details().starts_with("No connection to the cluster node"))
}

/// Whether a script refused to start because its Cluster slot is moving (common.lua).
pub fn slot_moving(e: &fred::error::Error) -> bool {
    e.details().starts_with("MOVING")
}
