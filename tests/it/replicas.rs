//! Several server replicas on one Redis behave as one service.

use conveyor::proto::{JobState, job_event::Kind};

use crate::harness::{self, Redis, Server, Worker, submit, submit_job, watch_all};

#[tokio::test]
async fn a_watcher_on_one_replica_sees_a_worker_on_another() {
    harness::logs();
    let redis = Redis::start().await;
    // Replicas share Redis and the database.
    let config = harness::config(&redis);
    let a = Server::start(config.clone()).await;
    let b = Server::start(config).await;
    let mut jobs_a = a.jobs().await;
    let job = submit_job(&mut jobs_a, submit("render", "x")).await;
    let watcher = {
        let (mut jobs, id) = (jobs_a.clone(), job.id.clone());
        tokio::spawn(async move { watch_all(&mut jobs, &id, None).await })
    };
    let mut worker = Worker::connect(&b, &["render"], 1).await;
    let lease = worker.assignment().await;
    worker.progress(&lease, 30.0, "encode").await;
    worker.progress(&lease, 60.0, "encode").await;
    assert_eq!(worker.complete(&job.id, lease.token, "done").await.code, 0);
    let events = watcher.await.unwrap();
    let percents: Vec<f32> = events
        .iter()
        .filter(|e| e.kind == Kind::Progress as i32)
        .map(|e| e.progress.as_ref().unwrap().percent)
        .collect();
    assert_eq!(percents, vec![30.0, 60.0]);
    assert_eq!(events.last().unwrap().state, JobState::Succeeded as i32);
}

#[tokio::test]
async fn a_job_submitted_on_one_replica_wakes_a_worker_on_another() {
    harness::logs();
    let redis = Redis::start().await;
    // Replicas share Redis and the database.
    let config = harness::config(&redis);
    let a = Server::start(config.clone()).await;
    let b = Server::start(config).await;
    let mut worker = Worker::connect(&b, &["upload"], 1).await;
    let mut jobs = a.jobs().await;
    let job = submit_job(&mut jobs, submit("upload", "x")).await;
    assert_eq!(worker.assignment().await.job.unwrap().id, job.id);
}

#[tokio::test]
async fn a_drained_worker_takes_its_running_job_to_another_replica() {
    harness::logs();
    let redis = Redis::start().await;
    // Replicas share Redis and the database.
    let config = harness::config(&redis);
    let a = Server::start(config.clone()).await;
    let b = Server::start(config).await;
    let mut jobs = b.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "x")).await;
    let mut worker = Worker::connect_with(&a, harness::hello(&["render"], 1, "node-1")).await;
    let lease = worker.assignment().await;
    let stopping = tokio::spawn(a.stop());
    assert!(matches!(
        worker.recv().await,
        conveyor::proto::connect_response::Msg::Drain(_)
    ));
    drop(worker);
    stopping.await.unwrap();
    let mut hello = harness::hello(&["render"], 1, "node-1");
    hello.held = vec![conveyor::proto::HeldLease {
        job_id: job.id.clone(),
        token: lease.token,
    }];
    let mut moved = Worker::connect_with(&b, hello).await;
    assert_eq!(moved.welcome.reattached, vec![job.id.clone()]);
    assert_eq!(moved.complete(&job.id, lease.token, "done").await.code, 0);
    let done = harness::get(&mut jobs, &job.id).await;
    assert_eq!((done.state, done.attempt), (JobState::Succeeded as i32, 1));
}

#[tokio::test]
async fn the_service_rides_out_a_redis_restart() {
    harness::logs();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start_persistent(dir.path()).await;
    let server = Server::start(harness::config(&redis)).await;
    let mut jobs = server.jobs().await;
    let before = submit_job(&mut jobs, submit("render", "before")).await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    worker.keep_alive();
    let lease = worker.assignment().await;
    assert_eq!(lease.job.as_ref().unwrap().id, before.id);

    redis.kill().await;
    let down = jobs
        .submit_job(submit("render", "while down"))
        .await
        .unwrap_err();
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
    redis.restart().await;

    // The running job's report goes through now that Redis is back, and new work flows again.
    let done = worker.complete(&before.id, lease.token, "ok").await;
    assert_eq!(done.code, 0, "{}", done.message);
    harness::eventually("submits to work again", || {
        let mut jobs = jobs.clone();
        async move { jobs.submit_job(submit("render", "after")).await.ok() }
    })
    .await;
    // The submit told UNAVAILABLE while Redis was away kept its row, and the server made it
    // once Redis was back (a retry with an idempotency key would have found it): both run.
    let mut ran = Vec::new();
    for _ in 0..2 {
        let a = worker.next_assignment().await;
        let job = a.job.unwrap();
        ran.push(String::from_utf8(job.payload).unwrap());
        assert_eq!(worker.complete(&job.id, a.token, "ok").await.code, 0);
    }
    ran.sort();
    assert_eq!(ran, ["after", "while down"]);
}
