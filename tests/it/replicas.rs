//! Several server replicas on one Redis behave as one service.

use conveyor::proto::{JobState, job_event::Kind};

use crate::harness::{self, Redis, Server, Worker, submit, submit_job, watch_all};

#[tokio::test]
async fn a_watcher_on_one_replica_sees_a_worker_on_another() {
    harness::logs();
    let redis = Redis::start().await;
    let a = Server::start(harness::config(&redis)).await;
    let b = Server::start(harness::config(&redis)).await;
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
    let a = Server::start(harness::config(&redis)).await;
    let b = Server::start(harness::config(&redis)).await;
    let mut worker = Worker::connect(&b, &["upload"], 1).await;
    let mut jobs = a.jobs().await;
    let job = submit_job(&mut jobs, submit("upload", "x")).await;
    assert_eq!(worker.assignment().await.job.unwrap().id, job.id);
}

#[tokio::test]
async fn a_drained_worker_takes_its_running_job_to_another_replica() {
    harness::logs();
    let redis = Redis::start().await;
    let a = Server::start(harness::config(&redis)).await;
    let b = Server::start(harness::config(&redis)).await;
    let mut jobs = b.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "x")).await;
    let mut worker = Worker::connect_with(&a, harness::hello(&["render"], 1, "node-1")).await;
    let lease = worker.assignment().await;
    let stopping = tokio::spawn(a.stop());
    assert!(matches!(
        worker.recv().await,
        conveyor::proto::server_message::Msg::Drain(_)
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
