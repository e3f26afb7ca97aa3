//! Faults a job must survive without being lost or run twice at once, one test per defect the
//! fault runs found (workers frozen, killed or back on another replica; Redis or the database
//! answering too late; a replica gone). The whole scenarios with a history checker are in
//! `fault_suite.rs`.

use std::process::Stdio;
use std::time::Duration;

use conveyor::proto::{self, JobState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;

use crate::harness::{
    self, Redis, Server, Worker, eventually, get, submit, submit_job, wait_state,
};

const BIN: &str = env!("CARGO_BIN_EXE_conveyor");

fn once(queue: &str, payload: &str) -> proto::SubmitJobRequest {
    let mut r = submit(queue, payload);
    r.max_attempts = Some(1);
    r
}

/// A worker frozen (SIGSTOP) long enough for the server to cut its stream, while one of its two
/// jobs finishes: back within the grace period, the result it could not report yet is accepted
/// under its lease, and its other job goes on. Before, its Hello held only the running job, the
/// server gave the finished one back, and with one attempt it ended FAILED although it ran once
/// and succeeded.
#[tokio::test]
async fn a_worker_back_within_the_grace_keeps_the_results_it_could_not_report() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.grace = Duration::from_secs(15);
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    let dir = tempfile::tempdir().unwrap();
    let (started, done) = (dir.path().join("started"), dir.path().join("done"));
    // Each command reads its payload (the worker has handed it over) before the freeze.
    let script = format!(
        r#"p=$(cat); echo >> {}; if [ "$p" = '"short"' ]; then sleep 1; touch {}; echo 'RESULT {{}}'; else exec sleep 600; fi"#,
        started.display(),
        done.display()
    );
    let mut worker = Command::new(BIN)
        .args(["worker", "--addr", &server.addr, "--queue", "render"])
        .args(["--concurrency", "2", "--worker-id", "frozen"])
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let long = submit_job(&mut jobs, once("render", r#""long""#)).await;
    let short = submit_job(&mut jobs, once("render", r#""short""#)).await;
    eventually("both commands to have their payloads", || async {
        let lines = std::fs::read_to_string(&started).ok()?.lines().count();
        (lines == 2).then_some(())
    })
    .await;
    let pid = Pid::from_raw(worker.id().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    eventually("the short job's command to finish", || async {
        done.exists().then_some(())
    })
    .await;
    // Silent for three heartbeats (0.5 s each in tests): the server cuts the stream.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kill(pid, Signal::SIGCONT).unwrap();
    let finished = wait_state(&mut jobs, &short.id, JobState::Succeeded).await;
    assert_eq!(finished.attempt, 1);
    let running = get(&mut jobs, &long.id).await;
    assert_eq!(
        (running.state, running.attempt),
        (JobState::Running as i32, 1)
    );
    worker.start_kill().unwrap();
}

/// Redis stalls past the server's timeout while it has a submit's script queued: the client is
/// told UNAVAILABLE, but Redis creates the job when it wakes. The job's row stays (before, it was
/// deleted, so the job lived in Redis alone and was lost with it), a retry with the same key
/// ends on that one job, and after Redis restarts empty the job comes back from its row.
#[tokio::test]
async fn a_submit_redis_answers_too_late_is_one_durable_job() {
    harness::logs();
    let mut redis = Redis::start().await;
    let config = harness::config(&redis); // Redis calls time out after 1 s
    let url = config.database_url.clone().unwrap();
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    // The queue exists and the script is loaded: what is left is the stall.
    submit_job(&mut jobs, submit("render", "{}")).await;
    let mut keyed = submit("render", r#"{"video":"a.mp4"}"#);
    keyed.idempotency_key = "render-a".into();
    let stall = redis.stall(Duration::from_millis(2500)).await;
    let refused = jobs.submit_job(keyed.clone()).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::Unavailable,
        "the stall covers the submit"
    );
    stall.await.unwrap();
    // The client retries with its key, and gets the job the stalled call made.
    let again = jobs.submit_job(keyed).await.unwrap().into_inner();
    let job = again.job.unwrap();
    assert!(!again.created, "the stalled call made it");
    let store = conveyor::history::Store::open(&url, Default::default())
        .await
        .unwrap();
    eventually("one row for the key, the job's", || async {
        let row = store.get(&job.id).await.ok()??;
        (row.idempotency_key == "render-a").then_some(())
    })
    .await;
    // Redis loses everything: the job comes back from its row.
    redis.kill().await;
    redis.restart().await;
    let back = eventually("the job back from the database", || {
        let mut jobs = jobs.clone();
        let id = job.id.clone();
        async move { jobs.get_job(proto::GetJobRequest { job_id: id }).await.ok() }
    })
    .await
    .into_inner()
    .job
    .unwrap();
    assert_eq!(back.state, JobState::Queued as i32);
}

/// The client gives up while its submit waits on the database: the submit still finishes as a
/// unit, promptly (its job in Redis as in SQL), and a retry with the same key finds that job.
/// Before, the cancelled call left a row that no Redis job matched, for the repair to run
/// minutes later beside the retry's own job.
#[tokio::test]
async fn a_submit_the_client_gave_up_on_finishes_as_a_unit() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    harness::logs();
    let redis = Redis::start().await;
    let config = harness::config(&redis);
    let url = config.database_url.clone().unwrap();
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    submit_job(&mut jobs, submit("render", "{}")).await;
    // Another writer holds SQLite's write lock: the submit's insert waits for it.
    let db = conveyor::history::connect(&url).await.unwrap();
    let txn = db.begin().await.unwrap();
    txn.execute_unprepared("DELETE FROM conveyor_migration_lock")
        .await
        .unwrap();
    let mut keyed = submit("render", r#"{"video":"b.mp4"}"#);
    keyed.idempotency_key = "render-b".into();
    // The client stops waiting and cancels the call (no deadline told to the server).
    let call = jobs.submit_job(keyed.clone());
    let gave_up = tokio::time::timeout(Duration::from_millis(500), call).await;
    assert!(gave_up.is_err(), "the submit waits for the database");
    txn.commit().await.unwrap();
    let key = "cv:{render}:idem:default:render-b";
    let id = eventually("the submit to reach Redis", || async {
        let reply = redis.command(&["GET", key]).await?;
        let id = reply.lines().nth(1)?.to_string();
        (!id.is_empty()).then_some(id)
    })
    .await;
    let again = jobs.submit_job(keyed).await.unwrap().into_inner();
    assert_eq!((again.job.unwrap().id, again.created), (id, false));
}

/// `conveyor submit` keys its submit itself and tries again while the server says UNAVAILABLE:
/// through a Redis stall longer than the server's timeout, it makes exactly one job.
#[tokio::test]
async fn the_cli_submits_once_however_often_it_tries() {
    harness::logs();
    let redis = Redis::start().await;
    let server = Server::start(harness::config(&redis)).await;
    let mut jobs = server.jobs().await;
    submit_job(&mut jobs, submit("clip", "{}")).await;
    let stall = redis.stall(Duration::from_millis(2500)).await;
    let out = Command::new(BIN)
        .args(["submit", "--addr", &server.addr, "--queue", "clip", "{}"])
        .output()
        .await
        .unwrap();
    stall.await.unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("trying again"),
        "the stall covered a try: {said}"
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(get(&mut jobs, &id).await.state, JobState::Queued as i32);
    let list = proto::ListJobsRequest {
        queue: "clip".into(),
        ..Default::default()
    };
    // The history comes to list what Redis holds, the first job and this one, and no third:
    // the rows of the tries Redis answered too late go once they are resolved.
    let listed = eventually("the history to list the two jobs", || {
        let mut jobs = jobs.clone();
        let list = list.clone();
        async move {
            let page = jobs.list_jobs(list).await.ok()?.into_inner().jobs;
            (page.len() == 2).then_some(page)
        }
    })
    .await;
    assert!(listed.iter().any(|j| j.id == id));
}

/// The database hangs (frozen: it takes connections and answers nothing). A submit hears
/// UNAVAILABLE within the database timeout (2 s), or before its own shorter deadline; readiness
/// turns NOT_SERVING within seconds; once the database is back, the submit that waited lands as
/// one job. Before, a submit waited as long as the database hung and the readiness check with it.
#[tokio::test]
async fn a_hung_database_costs_a_submit_seconds() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    harness::logs();
    let postgres = crate::postgres::Postgres::start();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.database_url = Some(postgres.url("sslmode=disable"));
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    submit_job(&mut jobs, submit("render", "{}")).await;
    postgres.freeze();
    let mut keyed = submit("render", r#"{"video":"c.mp4"}"#);
    keyed.idempotency_key = "while-frozen".into();
    let mut request = tonic::Request::new(keyed.clone());
    request.set_timeout(Duration::from_secs(8));
    let began = tokio::time::Instant::now();
    let refused = jobs.submit_job(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "{:?}",
        began.elapsed()
    );
    // A deadline shorter than the database timeout: UNAVAILABLE still, before the deadline.
    let mut short = tonic::Request::new(submit("render", "{}"));
    short.set_timeout(Duration::from_secs(1));
    let refused = jobs.submit_job(short).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let health = HealthClient::new(server.channel().await);
    eventually("readiness to drop", || {
        let mut health = health.clone();
        async move {
            let status = health.check(HealthCheckRequest::default()).await.ok()?;
            (status.into_inner().status == 2).then_some(())
        }
    })
    .await;
    postgres.thaw();
    eventually("readiness to come back", || {
        let mut health = health.clone();
        async move {
            let status = health.check(HealthCheckRequest::default()).await.ok()?;
            (status.into_inner().status == 1).then_some(())
        }
    })
    .await;
    // The keyed submit that waited is one job, in the database and in Redis.
    let store =
        conveyor::history::Store::open(&postgres.url("sslmode=disable"), Default::default())
            .await
            .unwrap();
    let again = jobs
        .submit_job(keyed)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    eventually("one row for the key", || async {
        use conveyor::history::entity::jobs::{Column, Entity};
        use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
        let rows = Entity::find()
            .filter(Column::IdempotencyKey.eq("while-frozen"))
            .count(store.db())
            .await
            .ok()?;
        (rows == 1).then_some(())
    })
    .await;
    assert_eq!(
        get(&mut jobs, &again.id).await.state,
        JobState::Queued as i32
    );
}

/// A lease call that Redis answers only after the server's timeout still leases the job when
/// Redis wakes. The dispatcher puts such jobs back before its next lease call, their attempt not
/// counted, so the job runs now, as its one attempt. Before, it sat RUNNING with no worker until
/// its lease expired, and with one attempt ended FAILED without ever running.
#[tokio::test]
async fn a_lease_redis_answers_too_late_costs_no_attempt() {
    harness::logs();
    let redis = Redis::start().await;
    let server = Server::start(harness::config(&redis)).await; // Redis calls time out after 1 s
    let mut jobs = server.jobs().await;
    // A job run before, so the lease script is loaded: the stalled call is one Redis runs.
    let warm = submit_job(&mut jobs, submit("render", "{}")).await;
    let mut first = harness::Worker::connect(&server, &["render"], 1).await;
    let a = first.assignment().await;
    assert_eq!(first.complete(&warm.id, a.token, "warm").await.code, 0);
    drop(first);
    let job = submit_job(&mut jobs, once("render", "{}")).await;
    let stall = redis.stall(Duration::from_millis(2500)).await;
    // The worker's arrival makes a lease call, which waits behind the stall.
    let mut worker = harness::Worker::connect(&server, &["render"], 1).await;
    worker.keep_alive();
    let a = tokio::time::timeout(harness::DEADLINE, worker.next_assignment())
        .await
        .expect("the job is assigned, not left leased to nobody");
    stall.await.unwrap();
    assert_eq!(
        (a.job.as_ref().unwrap().id.as_str(), a.attempt),
        (job.id.as_str(), 1)
    );
    assert_eq!(worker.complete(&job.id, a.token, "ran").await.code, 0);
    let done = wait_state(&mut jobs, &job.id, JobState::Succeeded).await;
    assert_eq!(done.attempt, 1);
}

/// A worker killed outright (SIGKILL: nothing of it runs after) takes its commands along, and
/// whatever they started: nothing of the attempt runs on beside its re-run elsewhere.
#[tokio::test]
async fn a_killed_worker_takes_its_commands_and_their_children_along() {
    harness::logs();
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    // The command's own child: what a shell script's `ffmpeg` would be.
    let script = format!("sleep 600 & echo $! > {}; wait", pidfile.display());
    let mut worker = crate::process::worker_with(&server.addr, &[], &script);
    submit_job(&mut jobs, submit("render", "{}")).await;
    let pid: u32 = eventually("the command's child to start", || {
        let pidfile = pidfile.clone();
        async move { std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok() }
    })
    .await;
    assert!(crate::children::alive(pid));
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    eventually("the command's child to go with the worker", || async move {
        (!crate::children::alive(pid)).then_some(())
    })
    .await;
}

/// A replica dies (SIGKILL) under a worker and a `conveyor watch` that were given every
/// replica's address: the worker re-attaches its running job on the other replica in seconds,
/// the same attempt finishes there, and the watch resumes there to the end. Before, each knew
/// one address: the worker waited for that replica to come back while its job ran again
/// elsewhere 30 s later, and the watch gave up after 5 s.
#[tokio::test]
async fn a_worker_and_a_watcher_go_on_through_another_replica() {
    harness::logs();
    let redis = Redis::start().await;
    let url = harness::sqlite_url();
    let ports = [harness::free_port(), harness::free_port()];
    let addrs = ports.map(|port| format!("http://127.0.0.1:{port}"));
    let replica = |port: u16| crate::process::replica(&redis, &url, port);
    // Only the first is up when the worker and the watcher start: both are on it.
    let mut first = replica(ports[0]);
    let mut jobs = crate::process::answering(&addrs[0]).await;
    let both = addrs.join(",");
    let held = crate::process::Held::new();
    let _worker = Command::new(BIN)
        .args([
            "worker",
            "--addr",
            &both,
            "--queue",
            "render",
            "--worker-id",
            "w",
        ])
        .args(["--", "sh", "-c", &held.script()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let job = submit_job(&mut jobs, once("render", "{}")).await;
    wait_state(&mut jobs, &job.id, JobState::Running).await;
    let watch = Command::new(BIN)
        .args(["watch", "--addr", &both, &job.id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let before = held.session(&redis, &job.id).await;
    let _second = replica(ports[1]);
    let mut jobs = crate::process::answering(&addrs[1]).await;
    first.start_kill().unwrap(); // SIGKILL: no drain, no goodbye
    first.wait().await.unwrap();
    held.carries_on(&redis, &mut jobs, &job.id, &before).await;
    let watched = tokio::time::timeout(harness::DEADLINE, watch.wait_with_output())
        .await
        .expect("the watch ends with the job")
        .unwrap();
    assert!(watched.status.success(), "{:?}", watched.status);
    let result = String::from_utf8_lossy(&watched.stdout);
    assert!(result.contains(r#"{"attempt":1}"#), "{result}");
}

/// A worker whose stream to one replica broke comes back on another, holding one of its two
/// jobs (the other's assignment never reached it). The first replica, still waiting out the
/// grace for the old stream, lets go of the job at once when it hears the worker is back
/// elsewhere, and the job runs again within a second or two. Before, it waited out the whole
/// grace (in the fault suite, every job stalled behind it for 7 s).
#[tokio::test]
async fn a_worker_back_on_another_replica_frees_what_it_no_longer_holds() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.grace = Duration::from_secs(60);
    let first = Server::start(config.clone()).await;
    let second = Server::start(config).await;
    let mut jobs = first.jobs().await;
    let mut worker = Worker::connect_with(&first, harness::hello(&["render"], 2, "w")).await;
    let kept = submit_job(&mut jobs, submit("render", "1")).await;
    let dropped = submit_job(&mut jobs, submit("render", "2")).await;
    let mut tokens = std::collections::HashMap::new();
    while tokens.len() < 2 {
        let a = worker.assignment().await;
        tokens.insert(a.job.unwrap().id, a.token);
    }
    drop(worker);
    let began = std::time::Instant::now();

    let mut hello = harness::hello(&["render"], 2, "w");
    hello.held.push(proto::HeldLease {
        job_id: kept.id.clone(),
        token: tokens[&kept.id],
    });
    let mut back = Worker::connect_with(&second, hello).await;
    let _beating = back.keep_alive();
    assert_eq!(back.welcome.reattached, vec![kept.id.clone()]);
    let again = back.assignment().await;
    assert_eq!(again.job.unwrap().id, dropped.id);
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the job came back after {:?}",
        began.elapsed()
    );
}

/// A replica dies right after it leased a job to a worker that never got it: nobody renews that
/// lease any more. The surviving replica reclaims it when it lapses (it learns the earliest lease
/// deadline from its own lease calls) and the job runs there. Before, it waited for the safety
/// sweep (`CONVEYOR_SWEEP`, a minute by default) after the lease had lapsed.
#[tokio::test]
async fn a_lease_of_a_dead_replica_comes_back_when_it_lapses() {
    harness::logs();
    let redis = Redis::start().await;
    let url = harness::sqlite_url();
    let port = harness::free_port();
    let ttl = [("CONVEYOR_LEASE_TTL", "2s"), ("CONVEYOR_BACKOFF", "50ms")];
    let mut dead = crate::process::replica_with(&redis.url(), &url, port, &ttl, Stdio::null());
    let addr = format!("http://127.0.0.1:{port}");
    let mut jobs = crate::process::answering(&addr).await;
    let channel = tonic::transport::Endpoint::from_shared(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let hello = proto::connect_request::Msg::Hello(harness::hello(&["render"], 1, "lost"));
    let (tx, rx) = Worker::open_on(channel, None, hello).await.unwrap();
    let mut first = Worker::welcomed(tx, rx).await;
    let job = submit_job(&mut jobs, submit("render", "{}")).await;
    let lost = first.assignment().await;
    assert_eq!(lost.job.unwrap().id, job.id);
    dead.start_kill().unwrap();
    dead.wait().await.unwrap();

    let mut config = harness::config(&redis);
    config.database_url = Some(url);
    config.lease_ttl = Duration::from_secs(2);
    config.sweep = Duration::from_secs(60);
    let survivor = Server::start(config).await;
    let mut worker = Worker::connect_with(&survivor, harness::hello(&["render"], 1, "w")).await;
    let _beating = worker.keep_alive();
    let began = std::time::Instant::now();
    let again = worker.assignment().await;
    assert_eq!(again.job.unwrap().id, job.id);
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the job came back after {:?}",
        began.elapsed()
    );
}
