//! Dead letters: a job out of attempts ends FAILED and stays listed; RetryJob puts it back with
//! a fresh budget of attempts, one by id or all of a queue by filter, from Redis or from the
//! history once Redis let it go.

use conveyor::proto::{self, JobState};
use tonic::Code;

use crate::harness::{self, Worker, eventually, get, submit, submit_job, wait_state};
use crate::history::Backend;

fn once(queue: &str, label: &str) -> proto::SubmitJobRequest {
    let mut r = submit(queue, label);
    r.max_attempts = Some(1);
    r.labels.insert("batch".into(), label.into());
    r
}

/// Leases and fails `n` jobs for good (retryable, but out of attempts).
async fn fail_all(worker: &mut Worker, n: usize) {
    for _ in 0..n {
        let a = worker.assignment().await;
        let id = a.job.unwrap().id;
        let answer = worker.fail(&id, a.token, "render crashed", true).await;
        assert_eq!(answer.code, Code::Ok as i32);
    }
}

fn retry_one(id: &str) -> proto::RetryJobRequest {
    proto::RetryJobRequest {
        job_id: id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_dead_letter_stays_listed_and_runs_again_with_a_fresh_budget() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let job = submit_job(&mut jobs, once("render", "a")).await;
    fail_all(&mut worker, 1).await;
    let failed = wait_state(&mut jobs, &job.id, JobState::Failed).await;
    assert_eq!((failed.attempt, failed.max_attempts), (1, 1));
    let list = proto::ListJobsRequest {
        queue: "render".into(),
        state: JobState::Failed as i32,
        ..Default::default()
    };
    let listed = eventually("the dead letter in the list", || {
        let mut jobs = jobs.clone();
        let list = list.clone();
        async move {
            let page = jobs.list_jobs(list).await.ok()?.into_inner();
            (!page.jobs.is_empty()).then_some(page.jobs)
        }
    })
    .await;
    assert_eq!(listed[0].id, job.id);

    let back = jobs
        .retry_job(retry_one(&job.id))
        .await
        .unwrap()
        .into_inner();
    assert!(!back.more);
    let again = &back.jobs[0];
    assert_eq!(again.state, JobState::Queued as i32);
    assert_eq!((again.attempt, again.max_attempts), (1, 2));
    let a = worker.assignment().await;
    assert_eq!(
        (a.job.as_ref().unwrap().id.as_str(), a.attempt),
        (job.id.as_str(), 2)
    );
    worker.complete(&job.id, a.token, "rendered").await;
    let done = wait_state(&mut jobs, &job.id, JobState::Succeeded).await;
    assert_eq!((done.attempt, done.result.as_str()), (2, "rendered"));
    // The history agrees once its writer caught up: no longer in the FAILED list.
    eventually("the history to show it succeeded", || {
        let mut jobs = jobs.clone();
        let list = list.clone();
        async move {
            jobs.list_jobs(list)
                .await
                .ok()?
                .into_inner()
                .jobs
                .is_empty()
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_bulk_retry_puts_back_only_the_failed_jobs_that_match() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let mut ids = Vec::new();
    for label in ["a", "a", "a", "b"] {
        ids.push(submit_job(&mut jobs, once("render", label)).await.id);
    }
    fail_all(&mut worker, 4).await;
    let ok = submit_job(&mut jobs, once("render", "a")).await;
    let a = worker.assignment().await;
    worker.complete(&ok.id, a.token, "fine").await;
    for id in &ids {
        wait_state(&mut jobs, id, JobState::Failed).await;
    }
    let request = proto::RetryJobRequest {
        queue: "render".into(),
        labels: [("batch".to_string(), "a".to_string())].into(),
        ..Default::default()
    };
    // The history lags the live state by a flush: wait until it lists all three.
    let back = eventually("three dead letters to retry", || {
        let mut jobs = jobs.clone();
        let request = request.clone();
        async move {
            let list = proto::ListJobsRequest {
                queue: "render".into(),
                state: JobState::Failed as i32,
                ..Default::default()
            };
            let failed = jobs.list_jobs(list).await.ok()?.into_inner().jobs.len();
            if failed < 4 {
                return None;
            }
            Some(jobs.retry_job(request).await.unwrap().into_inner())
        }
    })
    .await;
    let mut back_ids: Vec<String> = back.jobs.iter().map(|j| j.id.clone()).collect();
    back_ids.sort();
    let mut expected = ids[..3].to_vec();
    expected.sort();
    assert_eq!(back_ids, expected);
    assert!(!back.more);
    assert_eq!(get(&mut jobs, &ids[3]).await.state, JobState::Failed as i32);
    assert_eq!(
        get(&mut jobs, &ok.id).await.state,
        JobState::Succeeded as i32
    );
    // Nothing is left to retry in that batch.
    let again = jobs.retry_job(request).await.unwrap().into_inner();
    assert!(again.jobs.is_empty());
}

/// Runs on SQLite and on PostgreSQL (listed in `history.rs`).
pub async fn a_dead_letter_redis_let_go_comes_back_from_the_history(backend: Backend) {
    let (redis, server, _) = crate::history::start(backend).await;
    let mut jobs = server.jobs().await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    worker.keep_alive();
    let job = submit_job(&mut jobs, once("render", "a")).await;
    fail_all(&mut worker, 1).await;
    let key = format!("cv:{{render}}:job:{}", job.id);
    eventually("the job to leave Redis", || async {
        (redis.command(&["EXISTS", &key]).await? == ":0\r\n").then_some(())
    })
    .await;
    assert_eq!(get(&mut jobs, &job.id).await.state, JobState::Failed as i32);
    let back = jobs
        .retry_job(retry_one(&job.id))
        .await
        .unwrap()
        .into_inner();
    // Back from its row, then read from Redis: the worker may have it already.
    let state = back.jobs[0].state;
    assert!(
        state == JobState::Queued as i32 || state == JobState::Running as i32,
        "{state}"
    );
    let a = worker.assignment().await;
    assert_eq!(a.job.as_ref().unwrap().id, job.id);
    worker.complete(&job.id, a.token, "second time lucky").await;
    wait_state(&mut jobs, &job.id, JobState::Succeeded).await;
    // Retrying it now is refused, and says why.
    let status = jobs.retry_job(retry_one(&job.id)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

/// A dead letter that is retried and fails for good again is FAILED in the history too, with
/// every attempt; before, its row stayed SCHEDULED from the retried run's first failure.
#[tokio::test]
async fn a_retried_dead_letter_that_fails_again_is_failed_in_the_history() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    worker.keep_alive();
    let mut request = once("render", "a");
    request.max_attempts = Some(2);
    request.backoff_initial = Some(prost_types::Duration {
        seconds: 0,
        nanos: 200_000_000,
    });
    let job = submit_job(&mut jobs, request).await;
    fail_all(&mut worker, 2).await;
    wait_state(&mut jobs, &job.id, JobState::Failed).await;
    jobs.retry_job(retry_one(&job.id)).await.unwrap();
    fail_all(&mut worker, 2).await;
    let failed = wait_state(&mut jobs, &job.id, JobState::Failed).await;
    assert_eq!((failed.attempt, failed.max_attempts), (4, 4));
    let list = |state: JobState| proto::ListJobsRequest {
        queue: "render".into(),
        state: state as i32,
        ..Default::default()
    };
    let row = eventually("the history to say FAILED 4/4", || {
        let mut jobs = jobs.clone();
        async move {
            let page = jobs.list_jobs(list(JobState::Failed)).await.ok()?;
            let row = page.into_inner().jobs.into_iter().next()?;
            (row.attempt == 4).then_some(row)
        }
    })
    .await;
    assert_eq!((row.id.as_str(), row.max_attempts), (job.id.as_str(), 4));
    for waiting in [JobState::Scheduled, JobState::Queued] {
        let page = jobs.list_jobs(list(waiting)).await.unwrap().into_inner();
        assert!(page.jobs.is_empty(), "{waiting:?}: {:?}", page.jobs);
    }
}

/// The repair mends a row whose state disagrees with Redis even when the row claims to be
/// finished under a waiting state (what the bug above left behind): it is looked at like any
/// unfinished row and brought up to Redis.
#[tokio::test]
async fn the_repair_mends_a_row_left_finished_under_a_waiting_state() {
    use sea_orm::ConnectionTrait;
    harness::logs();
    let redis = harness::Redis::start().await;
    let mut config = harness::config(&redis);
    let url = config.database_url.clone().unwrap();
    config.history_repair = std::time::Duration::from_millis(300);
    let server = harness::Server::start(config).await;
    let mut jobs = server.jobs().await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    worker.keep_alive();
    let job = submit_job(&mut jobs, once("render", "a")).await;
    fail_all(&mut worker, 1).await;
    wait_state(&mut jobs, &job.id, JobState::Failed).await;
    let store = conveyor::history::Store::open(&url, Default::default())
        .await
        .unwrap();
    eventually("the row to be FAILED", || async {
        let row = store.get(&job.id).await.unwrap()?;
        (row.state == "FAILED").then_some(())
    })
    .await;
    let broken = format!(
        "UPDATE jobs SET state = 'SCHEDULED', updated_ms = 1 WHERE id = '{}'",
        job.id
    );
    store.db().execute_unprepared(&broken).await.unwrap();
    let row = eventually("the repair to bring the row back to Redis", || async {
        let row = store.get(&job.id).await.unwrap()?;
        (row.state == "FAILED").then_some(row)
    })
    .await;
    assert_eq!(row.attempt, 1);
    assert!(row.finished_ms.is_some());
}
