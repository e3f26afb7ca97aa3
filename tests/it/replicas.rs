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
