//! On demand, not in CI: what one job costs Redis, from submit to completion, by
//! `INFO commandstats`. Run: `cargo test --test it -- --ignored --nocapture redis_commands_per_job`

use std::collections::BTreeMap;

use crate::harness::{self, Worker, submit, submit_job};

fn commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
#[ignore = "prints figures; run on demand"]
async fn redis_commands_per_job() {
    const JOBS: u64 = 200;
    let redis = harness::Redis::start().await;
    // Production timers (5 s sweep), as a deployment would pay them.
    let server = harness::Server::start(conveyor::config::Config::with_redis(redis.url())).await;
    let mut jobs = server.jobs().await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    redis.command(&["CONFIG", "RESETSTAT"]).await.unwrap();
    for i in 0..JOBS {
        let job = submit_job(&mut jobs, submit("render", &i.to_string())).await;
        let a = worker.assignment().await;
        assert_eq!(a.job.as_ref().unwrap().id, job.id);
        worker.progress(&a, 50.0, "half").await;
        assert_eq!(worker.complete(&job.id, a.token, "{}").await.code, 0);
    }
    let stats = commandstats(&redis.command(&["INFO", "commandstats"]).await.unwrap());
    let total: u64 = stats.values().sum();
    println!(
        "Redis commands per job (submit, lease, 1 progress, complete; {JOBS} jobs, one worker):"
    );
    for (name, calls) in &stats {
        println!("  {name:<14} {:>6.2}", *calls as f64 / JOBS as f64);
    }
    println!("  {:<14} {:>6.2}", "total", total as f64 / JOBS as f64);
}

#[tokio::test]
#[ignore = "prints figures; run on demand"]
async fn redis_commands_while_idle() {
    const SECONDS: u64 = 10;
    let redis = harness::Redis::start().await;
    // Production timers (5 s sweep, 5 s heartbeats), not the tests' fast ones.
    let server = harness::Server::start(conveyor::config::Config::with_redis(redis.url())).await;
    let worker = Worker::connect(&server, &["render"], 4).await;
    worker.keep_alive();
    redis.command(&["CONFIG", "RESETSTAT"]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(SECONDS)).await;
    let stats = commandstats(&redis.command(&["INFO", "commandstats"]).await.unwrap());
    println!("Redis commands in {SECONDS} s idle, one worker with 4 free slots on one queue:");
    for (name, calls) in &stats {
        println!("  {name:<14} {calls:>6}");
    }
}
