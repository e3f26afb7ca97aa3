//! The worker protocol: credits, retries with backoff, cancel, grace and re-attach, stale tokens.

use std::time::Duration;

use conveyor::proto::{self, JobState, connect_response::Msg};
use tokio::time::Instant;

use crate::harness::{self, Server, Worker, get, hello, submit, submit_job, wait_state};

#[tokio::test]
async fn a_worker_never_gets_more_jobs_than_its_free_slots() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    for i in 0..5 {
        submit_job(&mut jobs, submit("render", &i.to_string())).await;
    }
    let mut worker = Worker::connect(&server, &["render"], 2).await;
    let a = worker.assignment().await;
    let b = worker.assignment().await;
    // A third assignment would arrive right away if credits were ignored; prove it does not by
    // completing one and seeing exactly one more.
    let done = worker.complete(&a.job.unwrap().id, a.token, "ok").await;
    assert_eq!(done.code, 0);
    let c = worker.assignment().await;
    // The history lags the live state by the writer's interval: wait for it to show the third.
    let c_id = c.job.clone().unwrap().id;
    let ids = harness::eventually("the third lease in the history", || {
        let mut jobs = jobs.clone();
        let c_id = c_id.clone();
        async move {
            let page = jobs.list_jobs(proto::ListJobsRequest {
                queue: "render".into(),
                state: JobState::Running as i32,
                ..Default::default()
            });
            let running = page.await.unwrap().into_inner().jobs;
            let ids: Vec<String> = running.into_iter().map(|j| j.id).collect();
            ids.contains(&c_id).then_some(ids)
        }
    })
    .await;
    assert_eq!(ids.len(), 2, "exactly the two held jobs run");
    assert!(ids.contains(&b.job.unwrap().id) && ids.contains(&c.job.unwrap().id));
}

#[tokio::test]
async fn failed_attempts_retry_with_growing_backoff_then_fail_with_the_last_error() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let req = proto::SubmitJobRequest {
        max_attempts: Some(3),
        backoff_initial: Some(prost_types::Duration {
            seconds: 0,
            nanos: 200_000_000,
        }),
        backoff_max: Some(prost_types::Duration {
            seconds: 10,
            nanos: 0,
        }),
        ..submit("upload", "x")
    };
    let job = submit_job(&mut jobs, req).await;
    let mut worker = Worker::connect(&server, &["upload"], 1).await;
    let mut last_token = 0;
    let mut failed_at = Instant::now();
    for attempt in 1..=3u32 {
        let a = worker.assignment().await;
        if attempt > 1 {
            // Equal jitter: at least half of 200 ms, then of 400 ms.
            let floor = Duration::from_millis(100 << (attempt - 2));
            assert!(
                failed_at.elapsed() >= floor,
                "attempt {attempt} came after {:?}",
                failed_at.elapsed()
            );
        }
        assert_eq!(a.attempt, attempt);
        assert!(a.token > last_token, "fencing tokens grow");
        last_token = a.token;
        let r = worker
            .fail(&job.id, a.token, &format!("network down #{attempt}"), true)
            .await;
        assert_eq!(r.code, 0, "{}", r.message);
        failed_at = Instant::now();
        if attempt < 3 {
            assert_eq!(
                get(&mut jobs, &job.id).await.state,
                JobState::Scheduled as i32
            );
        }
    }
    let failed = wait_state(&mut jobs, &job.id, JobState::Failed).await;
    assert_eq!(
        (failed.attempt, failed.error.as_str()),
        (3, "network down #3")
    );
}

#[tokio::test]
async fn a_non_retryable_failure_ends_the_job_at_once() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("upload", "x")).await;
    let mut worker = Worker::connect(&server, &["upload"], 1).await;
    let a = worker.assignment().await;
    assert_eq!(
        worker
            .fail(&job.id, a.token, "bad credentials", false)
            .await
            .code,
        0
    );
    let failed = get(&mut jobs, &job.id).await;
    assert_eq!((failed.state, failed.attempt), (JobState::Failed as i32, 1));
}

#[tokio::test]
async fn cancelling_a_running_job_tells_its_worker_and_frees_the_slot() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let first = submit_job(&mut jobs, submit("render", "1")).await;
    let second = submit_job(&mut jobs, submit("render", "2")).await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let a = worker.assignment().await;
    assert_eq!(a.job.as_ref().unwrap().id, first.id);
    let cancelled = jobs
        .cancel_job(proto::CancelJobRequest {
            job_id: first.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        cancelled.into_inner().job.unwrap().state,
        JobState::Cancelled as i32
    );
    match worker.recv().await {
        Msg::Cancel(c) => assert_eq!(c.job_id, first.id),
        other => panic!("expected Cancel, got {other:?}"),
    }
    assert_eq!(
        worker.assignment().await.job.unwrap().id,
        second.id,
        "the freed slot takes the next job"
    );
    // The cancelled attempt can no longer report.
    assert_eq!(
        worker.complete(&first.id, a.token, "late").await.code,
        tonic::Code::FailedPrecondition as i32
    );
}

#[tokio::test]
async fn a_worker_back_within_the_grace_period_keeps_its_jobs() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "long")).await;
    let mut worker = Worker::connect_with(&server, hello(&["render"], 1, "node-1")).await;
    let a = worker.assignment().await;
    drop(worker); // the network blips
    let mut h = hello(&["render"], 1, "node-1");
    h.held = vec![proto::HeldLease {
        job_id: job.id.clone(),
        token: a.token,
    }];
    let mut back = Worker::connect_with(&server, h).await;
    back.keep_alive();
    assert_eq!(back.welcome.reattached, vec![job.id.clone()]);
    assert!(back.welcome.lost.is_empty());
    // Well past the grace period, it is still the same attempt, and it completes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let running = get(&mut jobs, &job.id).await;
    assert_eq!(
        (running.state, running.attempt),
        (JobState::Running as i32, 1)
    );
    assert_eq!(back.complete(&job.id, a.token, "done").await.code, 0);
    assert_eq!(
        get(&mut jobs, &job.id).await.state,
        JobState::Succeeded as i32
    );
}

/// A reconnected worker's slots are all there for it: one held across the reconnect is not
/// offered again while its job runs (no more jobs than slots), and comes back when that job
/// ends. Before, a job waiting in line went to the busy slot at once, and after the held job
/// ended its slot was never offered again.
#[tokio::test]
async fn a_reconnected_worker_keeps_exactly_its_slots() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let held = submit_job(&mut jobs, submit("render", "long")).await;
    let mut worker = Worker::connect_with(&server, hello(&["render"], 1, "node-1")).await;
    let a = worker.assignment().await;
    drop(worker);
    let next = submit_job(&mut jobs, submit("render", "next")).await;
    let mut h = hello(&["render"], 1, "node-1");
    h.held = vec![proto::HeldLease {
        job_id: held.id.clone(),
        token: a.token,
    }];
    let mut back = Worker::connect_with(&server, h).await;
    back.keep_alive();
    assert_eq!(back.welcome.reattached, vec![held.id.clone()]);
    assert!(
        back.assignments(Duration::from_millis(500))
            .await
            .is_empty(),
        "its one slot is busy"
    );
    assert_eq!(back.complete(&held.id, a.token, "done").await.code, 0);
    let b = back.assignment().await;
    assert_eq!(b.job.unwrap().id, next.id, "the slot came back");
}

#[tokio::test]
async fn a_worker_that_does_not_come_back_loses_its_jobs_to_another_and_its_token_goes_stale() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "x")).await;
    let mut gone = Worker::connect_with(&server, hello(&["render"], 1, "node-gone")).await;
    let old = gone.assignment().await;
    drop(gone);
    // Requeued after the grace period (0.5 s in tests), far sooner than the 30 s lease.
    let mut other = Worker::connect_with(&server, hello(&["render"], 1, "node-2")).await;
    let new = other.assignment().await;
    assert_eq!((new.attempt, new.token > old.token), (2, true));
    // The first worker comes back late and reports: rejected, nothing changes.
    let mut h = hello(&["render"], 1, "node-gone");
    h.held = vec![proto::HeldLease {
        job_id: job.id.clone(),
        token: old.token,
    }];
    let mut late = Worker::connect_with(&server, h).await;
    assert_eq!(late.welcome.lost, vec![job.id.clone()]);
    let r = late.complete(&job.id, old.token, "stale").await;
    assert_eq!(
        r.code,
        tonic::Code::FailedPrecondition as i32,
        "{}",
        r.message
    );
    assert_eq!(
        get(&mut jobs, &job.id).await.state,
        JobState::Running as i32
    );
    assert_eq!(other.complete(&job.id, new.token, "fresh").await.code, 0);
    assert_eq!(get(&mut jobs, &job.id).await.result, "fresh");
}

#[tokio::test]
async fn a_stopping_server_tells_its_workers_to_drain() {
    let (_redis, server) = harness::start().await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let stopping = tokio::spawn(server.stop());
    assert!(matches!(worker.recv().await, Msg::Drain(_)));
    drop(worker);
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_job_past_its_timeout_fails_its_attempt() {
    let (redis, _) = (harness::Redis::start().await, ());
    let mut config = harness::config(&redis);
    config.lease_ttl = Duration::from_millis(600);
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    let req = proto::SubmitJobRequest {
        max_attempts: Some(1),
        timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..submit("render", "x")
    };
    let job = submit_job(&mut jobs, req).await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let _a = worker.assignment().await;
    let failed = wait_state(&mut jobs, &job.id, JobState::Failed).await;
    assert!(failed.error.contains("timed out"), "{}", failed.error);
    match worker.recv().await {
        Msg::Cancel(c) => assert_eq!(c.job_id, job.id),
        other => panic!("expected Cancel, got {other:?}"),
    }
}

#[tokio::test]
async fn a_worker_that_falls_silent_is_noticed_and_its_job_moves_on() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "x")).await;
    // Connected, holding a job, stream open, but it never sends another message (a hung host).
    let mut silent = Worker::connect_with(&server, hello(&["render"], 1, "hung")).await;
    let first = silent.assignment().await;
    let mut other = Worker::connect_with(&server, hello(&["render"], 1, "healthy")).await;
    other.keep_alive();
    let again = other.assignment().await;
    assert_eq!(again.job.unwrap().id, job.id);
    assert_eq!((again.attempt, again.token > first.token), (2, true));
    assert_eq!(other.complete(&job.id, again.token, "ok").await.code, 0);
    drop(silent);
}

#[tokio::test]
async fn a_queue_can_have_its_own_job_defaults() {
    harness::logs();
    let redis = harness::Redis::start().await;
    let mut config = harness::config(&redis);
    let fragile = conveyor::scheduler::QueueDefaults {
        max_attempts: Some(1),
        ..Default::default()
    };
    config.queue_defaults = vec![("fragile".into(), fragile)];
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    let strict = submit_job(&mut jobs, submit("fragile", "x")).await;
    let lenient = submit_job(&mut jobs, submit("sturdy", "x")).await;
    assert_eq!((strict.max_attempts, lenient.max_attempts), (1, 3));
    let mut worker = Worker::connect(&server, &["fragile"], 1).await;
    let a = worker.assignment().await;
    assert_eq!(
        worker.fail(&strict.id, a.token, "flaky", true).await.code,
        0
    );
    assert_eq!(
        get(&mut jobs, &strict.id).await.state,
        JobState::Failed as i32
    );
}
