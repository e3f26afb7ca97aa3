//! Per-key limits: a rate ("1 upload per account every 5 minutes", shortened) and a
//! concurrency ("3 renders at a time per account") on a job's limit key, across workers and
//! replicas, and slots that come back on every way a run ends.

use std::collections::HashMap;
use std::time::Duration;

use conveyor::proto::{self, JobState, connect_response::Msg as ServerMsg};
use conveyor::scheduler::KeyLimit;
use tokio::sync::mpsc;

use crate::harness::{
    self, Redis, Server, Worker, eventually, get, submit, submit_job, wait_state,
};
use crate::process::worker_with;

fn keyed(queue: &str, payload: &str, key: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        limit_key: key.into(),
        ..submit(queue, payload)
    }
}

fn limit(pattern: &str, concurrency: Option<u32>, rate: Option<(Duration, u32)>) -> KeyLimit {
    KeyLimit {
        pattern: pattern.into(),
        concurrency,
        rate,
    }
}

/// A Redis integer reply as a number.
async fn int(redis: &Redis, args: &[&str]) -> i64 {
    let reply = redis.command(args).await.unwrap();
    reply.trim_start_matches(':').trim().parse().unwrap()
}

/// Runs `worker` until the test ends: completes every job it is given at once and tells `seen`
/// (job id, limit key, start time as the server recorded it).
fn completing(mut worker: Worker, seen: mpsc::UnboundedSender<(String, String, i64)>) {
    worker.keep_alive();
    tokio::spawn(async move {
        loop {
            if let ServerMsg::Assignment(a) = worker.recv().await {
                let job = a.job.unwrap();
                let started = job.started_at.unwrap();
                let ms = started.seconds * 1000 + started.nanos as i64 / 1_000_000;
                let _ = seen.send((job.id.clone(), job.limit_key.clone(), ms));
                let done = proto::Complete {
                    job_id: job.id,
                    token: a.token,
                    result: "ok".into(),
                    ..Default::default()
                };
                worker
                    .send(proto::connect_request::Msg::Complete(done))
                    .await;
            }
        }
    });
}

#[tokio::test]
async fn one_lease_per_key_per_period_holds_under_many_workers_on_two_replicas() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    // "One upload per TikTok account every 5 minutes", with 400 ms for the 5 minutes.
    let period = Duration::from_millis(400);
    config.key_limits = vec![("upload".into(), limit("tiktok:*", None, Some((period, 1))))];
    // A long sweep: only the keys' own timers can explain a lease on time.
    config.sweep = Duration::from_secs(30);
    let a = Server::start(config.clone()).await;
    let b = Server::start(config).await;
    let mut jobs = a.jobs().await;
    for i in 0..4 {
        for account in ["tiktok:42", "tiktok:7"] {
            submit_job(&mut jobs, keyed("upload", &i.to_string(), account)).await;
        }
    }
    for i in 0..6 {
        submit_job(&mut jobs, submit("upload", &format!("free {i}"))).await;
    }
    let (seen, mut starts) = mpsc::unbounded_channel();
    for i in 0..8 {
        let server = if i % 2 == 0 { &a } else { &b };
        let hello = harness::hello(&["upload"], 1, &format!("w{i}"));
        completing(Worker::connect_with(server, hello).await, seen.clone());
    }
    let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for _ in 0..14 {
        let (_, key, at) = tokio::time::timeout(harness::DEADLINE, starts.recv())
            .await
            .expect("every job to start")
            .unwrap();
        by_key.entry(key).or_default().push(at);
    }
    let first = by_key.values().flatten().min().copied().unwrap();
    // Jobs without a key do not wait for the blocked keys' turns.
    let free = &by_key[""];
    assert!(
        free.iter().all(|t| t - first < 300),
        "unlimited jobs waited: {free:?} from {first}"
    );
    for account in ["tiktok:42", "tiktok:7"] {
        let mut times = by_key[account].clone();
        times.sort();
        assert_eq!(times.len(), 4);
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= 400, "{account}: leases {gap} ms apart: {times:?}");
            assert!(
                gap < 700,
                "{account}: woke {gap} ms later, not when it opened"
            );
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), starts.recv())
            .await
            .is_err(),
        "no job runs twice"
    );
}

#[tokio::test]
async fn a_blocked_job_says_which_key_holds_it_and_leaves_nothing_behind_when_cancelled() {
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.key_limits = vec![(
        "upload".into(),
        limit("tiktok:*", None, Some((Duration::from_secs(3600), 1))),
    )];
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    let first = submit_job(&mut jobs, keyed("upload", "1", "tiktok:42")).await;
    let second = submit_job(&mut jobs, keyed("upload", "2", "tiktok:42")).await;
    let mut worker = Worker::connect(&server, &["upload"], 2).await;
    let a = worker.assignment().await;
    assert_eq!(a.job.as_ref().unwrap().id, first.id);
    let started = a.job.unwrap().started_at.unwrap().seconds;
    let waiting = eventually("the second job to be held by its key", || {
        let (mut jobs, id) = (jobs.clone(), second.id.clone());
        async move {
            let job = get(&mut jobs, &id).await;
            (job.blocked_reason == "rate limit on key tiktok:42").then_some(job)
        }
    })
    .await;
    assert_eq!(waiting.state, JobState::Queued as i32);
    assert_eq!(waiting.limit_key, "tiktok:42");
    assert_eq!(waiting.jobs_ahead, Some(0));
    let eligible = waiting.eligible_at.unwrap().seconds;
    assert!(
        (eligible - (started + 3600)).abs() <= 1,
        "eligible at {eligible}, an hour after {started}"
    );
    // Another key is not held by this one.
    let other = submit_job(&mut jobs, keyed("upload", "3", "tiktok:7")).await;
    assert_eq!(worker.assignment().await.job.unwrap().id, other.id);

    jobs.cancel_job(proto::CancelJobRequest {
        job_id: second.id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        int(&redis, &["EXISTS", "cv:{upload}:kp:default/tiktok:42"]).await,
        0,
        "a cancelled parked job leaves its key's line"
    );
}

#[tokio::test]
async fn a_key_slot_comes_back_when_a_run_times_out_fails_or_is_cancelled() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.key_limits = vec![("render".into(), limit("acct:*", Some(1), None))];
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    // The first run times out after a second, with no attempt left.
    let slow = proto::SubmitJobRequest {
        timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        max_attempts: Some(1),
        ..keyed("render", "slow", "acct:1")
    };
    let slow = submit_job(&mut jobs, slow).await;
    let next = submit_job(&mut jobs, keyed("render", "next", "acct:1")).await;
    let last = submit_job(&mut jobs, keyed("render", "last", "acct:1")).await;
    let mut worker = Worker::connect(&server, &["render"], 4).await;
    worker.keep_alive();
    assert_eq!(worker.assignment().await.job.unwrap().id, slow.id);
    let held = eventually("the next job to wait for the key's slot", || {
        let (mut jobs, id) = (jobs.clone(), next.id.clone());
        async move {
            let job = get(&mut jobs, &id).await;
            (job.blocked_reason == "concurrency 1/1 on key acct:1").then_some(job)
        }
    })
    .await;
    assert_eq!(held.jobs_ahead, Some(0));

    // Timed out: the slot passes to the next job, which is then cancelled while it runs.
    let a = worker.next_assignment().await;
    assert_eq!(a.job.unwrap().id, next.id);
    let failed = wait_state(&mut jobs, &slow.id, JobState::Failed).await;
    assert!(failed.error.contains("timed out"), "{}", failed.error);
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: next.id.clone(),
    })
    .await
    .unwrap();
    let a = worker.next_assignment().await;
    assert_eq!(a.job.unwrap().id, last.id);
    assert_eq!(
        int(&redis, &["SCARD", "cv:{render}:kn:default/acct:1"]).await,
        1
    );
    let r = worker.fail(&last.id, a.token, "broken", false).await;
    assert_eq!(r.code, 0);
    assert_eq!(
        int(&redis, &["SCARD", "cv:{render}:kn:default/acct:1"]).await,
        0,
        "no slot outlives its run"
    );
}

#[tokio::test]
async fn a_key_concurrency_limit_is_never_exceeded_nor_leaked_when_workers_are_killed() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.key_limits = vec![("render".into(), limit("acct:*", Some(2), None))];
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let job = submit_job(&mut jobs, keyed("render", &i.to_string(), "acct:1")).await;
        ids.push(job.id);
    }
    // Watches the key's jobs the whole time, reading their states in one atomic script (a
    // snapshot, not reads spread over time): at most 2 RUNNING at once.
    let most = {
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("cv:{{render}}:job:{id}"))
            .collect();
        let url = redis.url();
        tokio::spawn(async move {
            let count = "local running, done = 0, 0 \
                for _, k in ipairs(KEYS) do \
                  local s = redis.call('HGET', k, 'state') \
                  if s == 'RUNNING' then running = running + 1 end \
                  if s == 'SUCCEEDED' then done = done + 1 end \
                end return running * 100 + done";
            let client =
                fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&url).unwrap())
                    .build()
                    .unwrap();
            fred::prelude::ClientLike::init(&client).await.unwrap();
            let mut most = 0;
            loop {
                let both: i64 = fred::prelude::LuaInterface::eval(
                    &client,
                    count,
                    keys.clone(),
                    Vec::<String>::new(),
                )
                .await
                .unwrap();
                most = most.max(both / 100);
                if both % 100 == keys.len() as i64 {
                    return most;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Two workers with room for everything; each run takes a while.
    let script = "sleep 1; echo 'RESULT {}'";
    let mut doomed = [
        worker_with(&server.addr, &["--concurrency", "4"], script),
        worker_with(&server.addr, &["--concurrency", "4"], script),
    ];
    eventually("two runs of the key", || async {
        let running = redis
            .command(&["SCARD", "cv:{render}:kn:default/acct:1"])
            .await?;
        (running.trim_start_matches(':').trim() == "2").then_some(())
    })
    .await;
    // SIGKILL both: no goodbye. After the grace period their runs go back, and the slots with
    // them.
    for worker in &mut doomed {
        worker.start_kill().unwrap();
        worker.wait().await.unwrap();
    }
    let _survivor = worker_with(&server.addr, &["--concurrency", "4"], script);
    for id in &ids {
        wait_state(&mut jobs, id, JobState::Succeeded).await;
    }
    assert!(most.await.unwrap() <= 2, "more than 2 ran at once");
    let retried = {
        let mut n = 0;
        for id in &ids {
            n += (get(&mut jobs, id).await.attempt > 1) as usize;
        }
        n
    };
    assert!(retried >= 1, "a killed run was retried");
    assert_eq!(
        int(
            &redis,
            &[
                "EXISTS",
                "cv:{render}:kn:default/acct:1",
                "cv:{render}:kp:default/acct:1"
            ]
        )
        .await,
        0,
        "no slot and no parked job is left behind"
    );
}
