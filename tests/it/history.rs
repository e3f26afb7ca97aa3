//! The SQL history, against both backends: migrations, history queries, survival of a Redis that
//! restarts empty, and retention. Each test runs once on SQLite and once on PostgreSQL (a fresh
//! database per test on the server at CONVEYOR_TEST_POSTGRES, default the machine's own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor::history::{self, Scope, Store};
use conveyor::proto::{self, JobState, Tier, connect_response::Msg, job_event::Kind};
use conveyor_migrations::{Migrator, MigratorTrait};
use sea_orm::ConnectionTrait;
use tokio_stream::StreamExt;

use crate::harness::{self, Redis, Server, Worker, eventually, get, submit, watch_all};

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database of `backend`.
async fn fresh(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => harness::sqlite_url(),
        Backend::Postgres => {
            let admin = std::env::var("CONVEYOR_TEST_POSTGRES")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let pid = std::process::id();
            let name = format!("conveyor_test_{pid}_{}", uuid::Uuid::now_v7().simple());
            let db = history::connect(&admin)
                .await
                .expect("PostgreSQL must run (CONVEYOR_TEST_POSTGRES)");
            drop_leftovers(&db).await;
            db.execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let base = admin.rsplit_once('/').unwrap().0;
            format!("{base}/{name}")
        }
    }
}

/// Drops the databases of earlier test runs whose process is gone.
async fn drop_leftovers(db: &sea_orm::DatabaseConnection) {
    let sql = "SELECT datname FROM pg_database WHERE datname LIKE 'conveyor_test_%'";
    let stmt = sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql);
    let Ok(rows) = db.query_all_raw(stmt).await else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get_by_index::<String>(0) else {
            continue;
        };
        let pid = name.split('_').nth(2).unwrap_or_default();
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let _ = db.execute_unprepared(&drop).await;
        }
    }
}

/// Redis plus a server on a fresh database of `backend`, with a short Redis retention.
pub async fn start(backend: Backend) -> (Redis, Server, String) {
    harness::logs();
    let redis = Redis::start().await;
    let url = fresh(backend).await;
    let mut config = harness::config(&redis);
    config.database_url = Some(url.clone());
    config.retention = Duration::from_millis(400);
    let server = Server::start(config).await;
    (redis, server, url)
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Backend::Postgres).await
            })*
        }
    };
}

on_both!(
    migrations_go_up_and_down,
    history_answers_filtered_pages_and_outlives_redis,
    every_job_succeeds_once_when_redis_restarts_empty,
    retention_deletes_only_old_finished_jobs,
    idempotency_keys_and_waiting_jobs_survive_a_redis_loss,
    a_dead_letter_redis_let_go_comes_back_from_the_history,
    flows_and_limit_keys_survive_a_redis_loss,
);

use crate::flows::flows_and_limit_keys_survive_a_redis_loss;
use crate::retry::a_dead_letter_redis_let_go_comes_back_from_the_history;

async fn tables(db: &sea_orm::DatabaseConnection) -> Vec<&'static str> {
    let mut present = Vec::new();
    for table in ["jobs", "job_attempts", "job_labels"] {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        if db.execute_unprepared(&sql).await.is_ok() {
            present.push(table);
        }
    }
    present
}

async fn migrations_go_up_and_down(backend: Backend) {
    let url = fresh(backend).await;
    let db = history::connect(&url).await.unwrap();
    assert!(tables(&db).await.is_empty());
    history::migrate(&db).await.unwrap();
    assert_eq!(tables(&db).await, ["jobs", "job_attempts", "job_labels"]);
    // Idempotent: a second server start finds nothing to do.
    history::migrate(&db).await.unwrap();
    Migrator::down(&db, None).await.unwrap();
    assert!(tables(&db).await.is_empty());
    Migrator::up(&db, None).await.unwrap();
    assert_eq!(tables(&db).await.len(), 3);
}

fn labelled(queue: &str, tier: Tier, user: &str) -> proto::SubmitJobRequest {
    let mut r = submit(queue, user);
    r.tier = tier as i32;
    r.labels.insert("user".into(), user.into());
    r
}

async fn list(
    jobs: &mut proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    request: proto::ListJobsRequest,
) -> proto::ListJobsResponse {
    jobs.list_jobs(request).await.expect("list").into_inner()
}

fn ids(jobs: &[proto::Job]) -> Vec<String> {
    jobs.iter().map(|j| j.id.clone()).collect()
}

async fn history_answers_filtered_pages_and_outlives_redis(backend: Backend) {
    let (redis, server, url) = start(backend).await;
    let mut jobs = server.jobs().await;
    let mut submitted = Vec::new();
    for i in 0..12 {
        let user = if i % 3 == 0 { "u1" } else { "u2" };
        let job = harness::submit_job(&mut jobs, labelled("render", Tier::Free, user)).await;
        submitted.push(job);
    }
    for _ in 0..8 {
        let job = harness::submit_job(&mut jobs, labelled("upload", Tier::Premium, "u3")).await;
        submitted.push(job);
    }

    // Five renders succeed, one fails for good; the rest wait.
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let mut done = Vec::new();
    for n in 0..6 {
        let a = worker.assignment().await;
        let id = a.job.unwrap().id;
        let answer = if n < 5 {
            worker.complete(&id, a.token, "rendered").await
        } else {
            worker.fail(&id, a.token, "codec missing", false).await
        };
        assert_eq!(answer.code, 0);
        done.push(id);
    }
    let failed = done.pop().unwrap();

    // The history catches up with the writer.
    let by_state = |state: JobState| proto::ListJobsRequest {
        state: state as i32,
        ..Default::default()
    };
    // Both outcomes: the failure may reach the writer in a later flush than the successes.
    eventually("the outcomes in the history", || {
        let mut jobs = jobs.clone();
        let (ok, bad) = (by_state(JobState::Succeeded), by_state(JobState::Failed));
        async move {
            let succeeded = list(&mut jobs, ok).await.jobs.len();
            let failed = list(&mut jobs, bad).await.jobs.len();
            (succeeded == 5 && failed == 1).then_some(())
        }
    })
    .await;
    let ok = list(&mut jobs, by_state(JobState::Succeeded)).await.jobs;
    assert!(ok.iter().all(|j| j.result == "rendered" && j.attempt == 1));
    let mut ok_ids = ids(&ok);
    ok_ids.sort();
    done.sort();
    assert_eq!(ok_ids, done);
    let bad = list(&mut jobs, by_state(JobState::Failed)).await.jobs;
    assert_eq!(
        (ids(&bad), bad[0].error.as_str()),
        (vec![failed.clone()], "codec missing")
    );

    // Filters: queue, tier, label, created range.
    let count = |req: proto::ListJobsRequest| {
        let mut jobs = jobs.clone();
        async move { list(&mut jobs, req).await.jobs.len() }
    };
    let queue = |q: &str| proto::ListJobsRequest {
        queue: q.into(),
        ..Default::default()
    };
    assert_eq!(count(queue("render")).await, 12);
    assert_eq!(count(queue("upload")).await, 8);
    let premium = proto::ListJobsRequest {
        tier: Tier::Premium as i32,
        ..Default::default()
    };
    assert_eq!(count(premium).await, 8);
    let mut u1 = queue("render");
    u1.labels.insert("user".into(), "u1".into());
    assert_eq!(count(u1).await, 4);
    let mut nobody = queue("render");
    nobody.labels.insert("user".into(), "u3".into());
    assert_eq!(count(nobody).await, 0);
    let pivot = submitted[10].created_at.unwrap();
    let from = proto::ListJobsRequest {
        created_from: Some(pivot),
        ..Default::default()
    };
    let expected = submitted
        .iter()
        .filter(|j| {
            let t = j.created_at.unwrap();
            (t.seconds, t.nanos) >= (pivot.seconds, pivot.nanos)
        })
        .count();
    assert_eq!(count(from).await, expected);

    // Pages of 7 walk every job once, newest first, even with a newer job arriving mid-way.
    let mut expected: Vec<&proto::Job> = submitted.iter().collect();
    expected.sort_by_key(|j| {
        let t = j.created_at.unwrap();
        std::cmp::Reverse((t.seconds, t.nanos, j.id.clone()))
    });
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(
            &mut jobs,
            proto::ListJobsRequest {
                page_size: 7,
                page_token: token,
                ..Default::default()
            },
        )
        .await;
        if seen.is_empty() {
            harness::submit_job(&mut jobs, submit("render", "late")).await;
        }
        seen.extend(ids(&page.jobs));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = expected.iter().map(|j| j.id.clone()).collect();
    assert_eq!(seen, expected);
    let bad_token = proto::ListJobsRequest {
        page_token: "not-a-token".into(),
        ..Default::default()
    };
    let err = jobs.list_jobs(bad_token).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let bad_filters = [
        proto::ListJobsRequest {
            tier: 99,
            ..Default::default()
        },
        proto::ListJobsRequest {
            created_from: Some(prost_types::Timestamp {
                seconds: -5,
                nanos: 0,
            }),
            ..Default::default()
        },
        proto::ListJobsRequest {
            queue: "no spaces".into(),
            ..Default::default()
        },
    ];
    for request in bad_filters {
        let err = jobs.list_jobs(request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }

    // Once Redis lets a finished job go, GetJob and WatchJob answer from the database.
    let first = done[0].clone();
    let key = format!("cv:{{render}}:job:{first}");
    eventually("the job to leave Redis", || async {
        (redis.command(&["EXISTS", &key]).await? == ":0\r\n").then_some(())
    })
    .await;
    let job = get(&mut jobs, &first).await;
    assert_eq!(
        (job.state, job.result.as_str(), job.attempt),
        (JobState::Succeeded as i32, "rendered", 1)
    );
    let events = watch_all(&mut jobs, &first, None).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, Kind::Snapshot as i32);
    let cancel = proto::CancelJobRequest { job_id: first };
    let err = jobs.cancel_job(cancel).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // One attempt row per attempt, with its worker and outcome.
    let store = Store::open(&url, history::Options::default())
        .await
        .unwrap();
    let attempts = store.attempts(&failed).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_deref(), Some("FAILED"));
    assert_eq!(attempts[0].error, "codec missing");
    assert!(!attempts[0].worker.is_empty() && attempts[0].finished_ms.is_some());
}

/// A worker that reconnects whenever its stream breaks and completes each job it is given with
/// its id as the result, sending a completion again when the server answers UNAVAILABLE (as
/// the proto asks); counts the completions the server accepted, per job.
fn resilient_worker(
    server_addr: String,
    accepted: Arc<Mutex<HashMap<String, u32>>>,
    name: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let channel = match tonic::transport::Endpoint::from_shared(server_addr.clone())
                .unwrap()
                .connect()
                .await
            {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (tx, rx) = tokio::sync::mpsc::channel(256);
            let hello = harness::hello(&["loss"], 8, name);
            let first = proto::ConnectRequest {
                msg: Some(proto::connect_request::Msg::Hello(hello)),
            };
            tx.send(first).await.unwrap();
            let mut client = proto::worker_service_client::WorkerServiceClient::new(channel);
            let Ok(response) = client
                .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = response.into_inner();
            let mut sent = HashMap::new();
            while let Some(Ok(message)) = stream.next().await {
                match message.msg {
                    Some(Msg::Assignment(a)) => {
                        let id = a.job.unwrap().id;
                        let complete = proto::Complete {
                            job_id: id.clone(),
                            token: a.token,
                            result: id.clone(),
                            ..Default::default()
                        };
                        let msg = proto::connect_request::Msg::Complete(complete);
                        sent.insert(id, msg.clone());
                        let _ = tx.send(proto::ConnectRequest { msg: Some(msg) }).await;
                    }
                    Some(Msg::ReportResult(r)) if r.code == 0 => {
                        *accepted.lock().unwrap().entry(r.job_id).or_default() += 1;
                    }
                    Some(Msg::ReportResult(r)) if r.code == tonic::Code::Unavailable as i32 => {
                        let (tx, msg) = (tx.clone(), sent.get(&r.job_id).cloned());
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let _ = tx.send(proto::ConnectRequest { msg }).await;
                        });
                    }
                    Some(Msg::Heartbeat(_)) => {
                        let msg = proto::connect_request::Msg::Heartbeat(proto::Heartbeat {});
                        let _ = tx.send(proto::ConnectRequest { msg: Some(msg) }).await;
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn every_job_succeeds_once_when_redis_restarts_empty(backend: Backend) {
    let (mut redis, server, _url) = start(backend).await;
    let mut jobs = server.jobs().await;
    const JOBS: usize = 300;
    let mut ids = Vec::new();
    for chunk in 0..JOBS / 50 {
        let batch = (0..50)
            .map(|i| submit("loss", &format!("{}", chunk * 50 + i)))
            .collect();
        let reply = jobs
            .submit_jobs(proto::SubmitJobsRequest { jobs: batch })
            .await
            .unwrap();
        ids.extend(
            reply
                .into_inner()
                .results
                .into_iter()
                .map(|r| r.job.unwrap().id),
        );
    }
    let accepted = Arc::new(Mutex::new(HashMap::new()));
    let workers = [
        resilient_worker(server.addr.clone(), accepted.clone(), "w1"),
        resilient_worker(server.addr.clone(), accepted.clone(), "w2"),
    ];

    // Mid-way, Redis dies and comes back with nothing.
    eventually("a third of the jobs done", || {
        let n = accepted.lock().unwrap().len();
        async move { (n >= JOBS / 3).then_some(()) }
    })
    .await;
    redis.kill().await;
    let done_before = accepted.lock().unwrap().len();
    assert!(done_before < JOBS, "the loss must come mid-way");
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart().await;

    // Every job ends SUCCEEDED, with its one result, and no completion was accepted twice.
    for id in &ids {
        let job = eventually(&format!("{id} to succeed"), || {
            let mut jobs = jobs.clone();
            let id = id.clone();
            async move {
                let req = proto::GetJobRequest { job_id: id };
                let job = jobs.get_job(req).await.ok()?.into_inner().job?;
                (job.state == JobState::Succeeded as i32).then_some(job)
            }
        })
        .await;
        assert_eq!(&job.result, id);
    }
    workers.iter().for_each(|w| w.abort());
    let accepted = accepted.lock().unwrap();
    assert_eq!(accepted.len(), JOBS);
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "completed twice: {twice:?}");
}

async fn retention_deletes_only_old_finished_jobs(backend: Backend) {
    let (_redis, server, url) = start(backend).await;
    let mut jobs = server.jobs().await;
    let old = harness::submit_job(&mut jobs, submit("keep", "old")).await;
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: old.id.clone(),
    })
    .await
    .unwrap();
    let waiting = harness::submit_job(&mut jobs, submit("keep", "waiting")).await;
    let store = Store::open(&url, history::Options::default())
        .await
        .unwrap();
    eventually("the cancel in the history", || {
        let store = store.clone();
        let id = old.id.clone();
        async move { store.get(&id).await.unwrap()?.finished_ms.map(|_| ()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let recent = harness::submit_job(&mut jobs, submit("keep", "recent")).await;
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: recent.id.clone(),
    })
    .await
    .unwrap();
    eventually("the second cancel in the history", || {
        let store = store.clone();
        let id = recent.id.clone();
        async move { store.get(&id).await.unwrap()?.finished_ms.map(|_| ()) }
    })
    .await;

    // Older than 200 ms: only the first cancelled job; an unfinished job is never deleted.
    let cutoff = conveyor::retention::cutoff(Duration::from_millis(200));
    let deleted = store.cleanup(cutoff, 1, &Scope::All).await.unwrap();
    assert_eq!(deleted, 1);
    assert!(store.get(&old.id).await.unwrap().is_none());
    assert!(store.get(&recent.id).await.unwrap().is_some());
    assert!(store.get(&waiting.id).await.unwrap().is_some());
    assert_eq!(store.cleanup(cutoff, 1, &Scope::All).await.unwrap(), 0);
}

async fn idempotency_keys_and_waiting_jobs_survive_a_redis_loss(backend: Backend) {
    let (mut redis, server, _url) = start(backend).await;
    let mut jobs = server.jobs().await;
    let keyed = |payload: &str| {
        let mut r = submit("keys", payload);
        r.idempotency_key = "order-42".into();
        r
    };
    let first = harness::submit_job(&mut jobs, keyed("render a.mp4")).await;
    let mut later = submit("keys", "later");
    later.delay = Some(prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    });
    let scheduled = harness::submit_job(&mut jobs, later).await;

    redis.kill().await;
    redis.restart().await;
    // Submits wait (UNAVAILABLE) until the restore is done; then the same key still answers
    // with the first job...
    let again = eventually("the key to be restored", || {
        let mut jobs = jobs.clone();
        async move {
            let reply = jobs
                .submit_job(keyed("render a.mp4"))
                .await
                .ok()?
                .into_inner();
            assert!(!reply.created, "a duplicate was created during the restore");
            reply.job
        }
    })
    .await;
    assert_eq!(again.id, first.id);
    assert_eq!(again.state, JobState::Queued as i32);
    // ...and refuses another payload, as before the loss.
    let err = jobs.submit_job(keyed("render b.mp4")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    // A delayed job waits for its time again.
    let job = get(&mut jobs, &scheduled.id).await;
    assert_eq!(job.state, JobState::Scheduled as i32);
    assert_eq!(job.run_at, scheduled.run_at);
    let key = format!("cv:{{keys}}:job:{}", scheduled.id);
    assert_eq!(redis.command(&["EXISTS", &key]).await.unwrap(), ":1\r\n");
}
