//! The Lua transition scripts, loaded once and called by SHA (reloaded on NOSCRIPT).

use std::time::Duration;

use fred::prelude::{Client, ClientLike, FromValue, Value};
use fred::types::scripts::Script;

/// `common.lua` holds helpers every transition needs (emit an event, requeue with backoff, write
/// what a batch shares); Redis scripts cannot import, so it is prepended to each one.
const COMMON: &str = include_str!("scripts/common.lua");

/// A script and its name (what the Redis call metrics are labelled with).
pub struct Named {
    name: &'static str,
    script: Script,
}

pub struct Scripts {
    pub submit: Named,
    pub lease: Named,
    pub renew: Named,
    pub progress: Named,
    pub complete: Named,
    pub fail: Named,
    pub decline: Named,
    pub unlease: Named,
    pub cancel: Named,
    pub release: Named,
    pub reattach: Named,
    pub list: Named,
    pub watch: Named,
    pub unwatch: Named,
    pub follow: Named,
    pub restore: Named,
    pub peek: Named,
    pub pause: Named,
    pub retry: Named,
    pub register: Named,
    pub resolve: Named,
    pub after: Named,
}

fn script(name: &'static str, body: &str) -> Named {
    Named {
        name,
        script: Script::from_lua(format!("{COMMON}\n{body}")),
    }
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            submit: script("submit", include_str!("scripts/submit.lua")),
            lease: script("lease", include_str!("scripts/lease.lua")),
            renew: script("renew", include_str!("scripts/renew.lua")),
            progress: script("progress", include_str!("scripts/progress.lua")),
            complete: script("complete", include_str!("scripts/complete.lua")),
            fail: script("fail", include_str!("scripts/fail.lua")),
            decline: script("decline", include_str!("scripts/decline.lua")),
            unlease: script("unlease", include_str!("scripts/unlease.lua")),
            cancel: script("cancel", include_str!("scripts/cancel.lua")),
            release: script("release", include_str!("scripts/release.lua")),
            reattach: script("reattach", include_str!("scripts/reattach.lua")),
            list: script("list", include_str!("scripts/list.lua")),
            watch: script("watch", include_str!("scripts/watch.lua")),
            unwatch: script("unwatch", include_str!("scripts/unwatch.lua")),
            follow: script("follow", include_str!("scripts/follow.lua")),
            restore: script("restore", include_str!("scripts/restore.lua")),
            peek: script("peek", include_str!("scripts/peek.lua")),
            pause: script("pause", include_str!("scripts/pause.lua")),
            retry: script("retry", include_str!("scripts/retry.lua")),
            register: script("register", include_str!("scripts/register.lua")),
            resolve: script("resolve", include_str!("scripts/resolve.lua")),
            after: script("after", include_str!("scripts/after.lua")),
        }
    }
}

/// Runs `script` with one routing key and string arguments, timed into the Redis call metrics.
///
/// While the queue's Cluster slot is moving to another master the script refuses to start
/// (`MOVING`, see common.lua) having written nothing, so it is run again, with a short backoff,
/// for as long as a slot takes to move; past that the caller gets the error.
pub async fn call<R: FromValue>(
    client: &Client,
    script: &Named,
    key: String,
    args: Vec<Value>,
) -> Result<R, fred::error::Error> {
    // Only a Cluster moves slots; elsewhere the arguments need no copy for a second try.
    if !client.is_clustered() {
        return call_once(client, script, key, args).await;
    }
    let mut pause = Duration::from_millis(10);
    let mut waited = Duration::ZERO;
    loop {
        match call_once(client, script, key.clone(), args.clone()).await {
            Err(e) if crate::redis::slot_moving(&e) && waited < MOVE_PATIENCE => {
                tracing::debug!(script = script.name, %key, "slot moving; running the script again shortly");
                tokio::time::sleep(pause).await;
                waited += pause;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            result => return result,
        }
    }
}

/// How long a call waits for its slot to finish moving (a slot of a busy queue moves in a few
/// seconds; `redis-cli --cluster reshard` moves keys in batches of 10).
const MOVE_PATIENCE: Duration = Duration::from_secs(10);

async fn call_once<R: FromValue>(
    client: &Client,
    script: &Named,
    key: String,
    args: Vec<Value>,
) -> Result<R, fred::error::Error> {
    use tracing::Instrument;
    let metrics = crate::metrics::get();
    let call = script.script.evalsha_with_reload(client, key, args);
    let span = crate::telemetry::script_span(script.name);
    crate::metrics::timed(&metrics.redis_calls, script.name, call)
        .instrument(span)
        .await
}
