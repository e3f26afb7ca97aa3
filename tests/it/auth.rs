//! Authentication, tenant isolation and limits (BAD_INPUTS rows 16, 17, 18, 24, 26, 27): real
//! keys in the database, real JWTs signed in the test, a real TLS handshake with a CA made here.

use std::time::Duration;

use conveyor::auth::keys::{self, NewCredential};
use conveyor::auth::{Queues, Role, Scopes};
use conveyor::client::{self, Target};
use conveyor::config::Config;
use conveyor::proto::{self, connect_request::Msg as WorkerMsg};
use sea_orm::DatabaseConnection;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::bad_inputs::dbsize;
use crate::harness::{self, Redis, Server, eventually, submit};

/// A server with authentication on, and the database its credentials live in.
pub struct Secured {
    pub redis: Redis,
    pub server: Server,
    pub db: DatabaseConnection,
    redis_url: String,
}

async fn database(config: &Config) -> DatabaseConnection {
    let db = conveyor::history::connect(config.database_url.as_deref().unwrap())
        .await
        .unwrap();
    conveyor::history::migrate(&db).await.unwrap();
    db
}

async fn credential(db: &DatabaseConnection, tenant: &str, role: Role) -> String {
    let new = NewCredential {
        tenant: tenant.into(),
        role,
        name: "test".into(),
        expires_in: None,
        cert_identity: None,
    };
    keys::create(db, new).await.unwrap().1.unwrap()
}

pub async fn key(db: &DatabaseConnection, tenant: &str, scopes: &str) -> String {
    credential(db, tenant, Role::Client(Scopes::parse(scopes).unwrap())).await
}

pub async fn worker_token(db: &DatabaseConnection, queues: &str) -> String {
    credential(db, "ops", Role::Worker(Queues::parse(queues).unwrap())).await
}

pub const ALL: &str = "submit,read,watch,cancel";

/// Starts a secured server; `configure` adjusts its config. One key exists before it starts
/// (a server refuses to start secured without any credential).
pub async fn secured(configure: impl FnOnce(&mut Config)) -> Secured {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.insecure = false;
    configure(&mut config);
    let db = database(&config).await;
    key(&db, "bootstrap", "read").await;
    let server = Server::start(config).await;
    Secured {
        redis_url: redis.url(),
        redis,
        server,
        db,
    }
}

impl Secured {
    pub async fn jobs(&self, token: Option<&str>) -> client::Jobs {
        let target = Target {
            token: token.map(str::to_string),
            ..Target::new(self.server.addr.clone())
        };
        client::jobs(self.server.channel().await, target.bearer().unwrap())
    }

    /// Opens a worker stream with `token`; the status it was refused with, if it was.
    async fn connect_worker(
        &self,
        token: Option<&str>,
        queues: &[&str],
    ) -> Result<(), tonic::Status> {
        let hello = WorkerMsg::Hello(harness::hello(queues, 1, ""));
        let (_tx, mut inbound) =
            harness::Worker::open_on(self.server.channel().await, token, hello).await?;
        match inbound.next().await {
            Some(Ok(_)) => Ok(()),
            Some(Err(status)) => Err(status),
            None => Err(tonic::Status::unknown("stream ended")),
        }
    }
}

async fn submit_as(jobs: &mut client::Jobs, queue: &str) -> Result<proto::Job, tonic::Status> {
    let response = jobs.submit_job(submit(queue, "{}")).await?;
    Ok(response.into_inner().job.unwrap())
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(status) => status.code(),
    }
}

/// Every JobService call and the worker stream, answered with `expected` for this token.
async fn every_rpc_answers(s: &Secured, token: Option<&str>, expected: Code) {
    let mut jobs = s.jobs(token).await;
    let id = "0190b5a0-0000-7000-8000-000000000000".to_string();
    assert_eq!(
        code(jobs.submit_job(submit("render", "{}")).await),
        expected
    );
    let batch = proto::SubmitJobsRequest {
        jobs: vec![submit("render", "{}")],
    };
    assert_eq!(code(jobs.submit_jobs(batch).await), expected);
    let get = proto::GetJobRequest { job_id: id.clone() };
    assert_eq!(code(jobs.get_job(get).await), expected);
    let list = proto::ListJobsRequest::default();
    assert_eq!(code(jobs.list_jobs(list).await), expected);
    let cancel = proto::CancelJobRequest { job_id: id.clone() };
    assert_eq!(code(jobs.cancel_job(cancel).await), expected);
    let watch = proto::WatchJobRequest {
        job_id: id,
        after_seq: None,
    };
    assert_eq!(code(jobs.watch_job(watch).await), expected);
    let follow = proto::WatchJobsRequest {
        queues: vec!["render".into()],
        ..Default::default()
    };
    assert_eq!(code(jobs.watch_jobs(follow).await), expected);
    let artifact = proto::GetArtifactUrlRequest {
        job_id: "render:0190b5a0-0000-7000-8000-000000000000".into(),
        name: "video.mp4".into(),
        expiry: None,
    };
    assert_eq!(code(jobs.get_artifact_url(artifact).await), expected);
    assert_eq!(code(s.connect_worker(token, &["render"]).await), expected);
}

/// Row 16: no credentials, a made-up key, a key with a wrong secret, an expired key.
#[tokio::test]
async fn row_16_missing_unknown_or_expired_credentials() {
    let s = secured(|_| {}).await;
    let keys_before = dbsize(&s.redis).await;
    every_rpc_answers(&s, None, Code::Unauthenticated).await;
    every_rpc_answers(&s, Some("cvk_0123456789abcdef_nope"), Code::Unauthenticated).await;
    every_rpc_answers(&s, Some("not-a-key-at-all"), Code::Unauthenticated).await;
    let real = key(&s.db, "acme", ALL).await;
    let wrong_secret = format!("{}x", &real[..real.len() - 1]);
    every_rpc_answers(&s, Some(&wrong_secret), Code::Unauthenticated).await;

    let expiring = NewCredential {
        tenant: "acme".into(),
        role: Role::Client(Scopes::parse(ALL).unwrap()),
        name: "short-lived".into(),
        expires_in: Some(Duration::from_millis(1)),
        cert_identity: None,
    };
    let (_, expired) = keys::create(&s.db, expiring).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let status = s
        .jobs(expired.as_deref())
        .await
        .submit_job(submit("render", "{}"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{status:?}");
    assert_eq!(
        dbsize(&s.redis).await,
        keys_before,
        "a refused call changed Redis"
    );

    // The health service stays open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no credentials");
    // And the server goes on serving a good key.
    submit_as(&mut s.jobs(Some(&real)).await, "render")
        .await
        .unwrap();
}

/// Row 16: a revoked key stops working at once, on a server that had just accepted it.
#[tokio::test]
async fn row_16_a_revoked_key_stops_working_at_once() {
    let s = secured(|_| {}).await;
    let token = key(&s.db, "acme", ALL).await;
    let mut jobs = s.jobs(Some(&token)).await;
    submit_as(&mut jobs, "render").await.unwrap();
    // What `conveyor keys revoke` does.
    let id = token.split('_').nth(1).unwrap();
    assert!(keys::revoke(&s.db, id).await.unwrap());
    keys::announce_revoked(&s.redis_url, id).await.unwrap();
    let status = submit_as(&mut jobs, "render").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    assert!(!keys::revoke(&s.db, id).await.unwrap(), "revoking twice");
}

/// A certificate name whose credential was revoked can be admitted again by a new credential;
/// one still admitted is refused with a message saying what to do, not a database error.
/// Before, the name stayed taken by the revoked row: "UNIQUE constraint failed".
#[tokio::test]
async fn a_revoked_certificate_name_can_be_admitted_again() {
    let s = secured(|_| {}).await;
    let cert = |tenant: &str| NewCredential {
        tenant: tenant.into(),
        role: Role::Client(Scopes::parse("submit,read").unwrap()),
        name: String::new(),
        expires_in: None,
        cert_identity: Some("node-1".into()),
    };
    let (first, _) = keys::create(&s.db, cert("acme")).await.unwrap();
    let taken = keys::create(&s.db, cert("other"))
        .await
        .unwrap_err()
        .to_string();
    assert!(taken.contains("revoke it first"), "{taken}");
    assert!(!taken.to_lowercase().contains("unique"), "{taken}");
    assert!(keys::revoke(&s.db, &first.id).await.unwrap());
    let (second, _) = keys::create(&s.db, cert("other")).await.unwrap();
    let keys = conveyor::auth::keys::Keys::new(s.db.clone());
    let principal = keys.by_certificate("node-1").await.unwrap();
    assert_eq!(principal.tenant, "other");
    let listed = keys::list(&s.db, Some("acme")).await.unwrap();
    assert_eq!(
        listed[0].name, "cert node-1",
        "the revoked row keeps the name on record"
    );
    assert_ne!(first.id, second.id);
}

/// Row 17 (and 24's "a queue it may not serve"): workers and clients cannot stand in for each
/// other, and scopes and queues are enforced.
#[tokio::test]
async fn row_17_workers_and_clients_keep_to_their_own_calls() {
    let s = secured(|_| {}).await;
    let client_key = key(&s.db, "acme", ALL).await;
    let worker = worker_token(&s.db, "render").await;

    let keys_before = dbsize(&s.redis).await;
    let refused = s.connect_worker(Some(&client_key), &["render"]).await;
    assert_eq!(code(refused), Code::PermissionDenied);
    every_rpc_answers_but_connect(&s, &worker, Code::PermissionDenied).await;
    assert_eq!(
        dbsize(&s.redis).await,
        keys_before,
        "a refused call changed Redis"
    );
    s.connect_worker(Some(&worker), &["render"])
        .await
        .expect("its own queue");
    let refused = s.connect_worker(Some(&worker), &["render", "upload"]).await;
    let status = refused.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("upload"), "{status:?}");
    let any = worker_token(&s.db, "*").await;
    s.connect_worker(Some(&any), &["upload"])
        .await
        .expect("any queue");

    // A read-only key reads but cannot submit or cancel.
    let reader = key(&s.db, "acme", "read").await;
    let mut jobs = s.jobs(Some(&reader)).await;
    assert_eq!(
        code(submit_as(&mut jobs, "render").await),
        Code::PermissionDenied
    );
    jobs.list_jobs(proto::ListJobsRequest::default())
        .await
        .expect("read");
    let cancel = proto::CancelJobRequest {
        job_id: "0190b5a0-0000-7000-8000-000000000000".into(),
    };
    assert_eq!(code(jobs.cancel_job(cancel).await), Code::PermissionDenied);
    // `admin` implies every client scope.
    let admin = key(&s.db, "acme", "admin").await;
    submit_as(&mut s.jobs(Some(&admin)).await, "render")
        .await
        .unwrap();
}

async fn every_rpc_answers_but_connect(s: &Secured, token: &str, expected: Code) {
    let mut jobs = s.jobs(Some(token)).await;
    assert_eq!(code(submit_as(&mut jobs, "render").await), expected);
    let get = proto::GetJobRequest {
        job_id: "0190b5a0-0000-7000-8000-000000000000".into(),
    };
    assert_eq!(code(jobs.get_job(get).await), expected);
    let watch = proto::WatchJobRequest {
        job_id: "0190b5a0-0000-7000-8000-000000000000".into(),
        after_seq: None,
    };
    assert_eq!(code(jobs.watch_job(watch).await), expected);
    let list = proto::ListJobsRequest::default();
    assert_eq!(code(jobs.list_jobs(list).await), expected);
}

/// Row 18: another tenant's job does not exist for you, in Redis or in the history.
#[tokio::test]
async fn row_18_another_tenants_job_is_not_found_by_any_call() {
    let s = secured(|c| c.retention = Duration::from_millis(300)).await;
    let mut a = s.jobs(Some(&key(&s.db, "tenant-a", ALL).await)).await;
    let mut b = s.jobs(Some(&key(&s.db, "tenant-b", ALL).await)).await;
    let mut request = submit("render", "{}");
    request.idempotency_key = "order-1".into();
    let job = a
        .submit_job(request.clone())
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    let b_cannot_see = |b: client::Jobs, id: String| async move {
        let mut b = b;
        let get = proto::GetJobRequest { job_id: id.clone() };
        assert_eq!(code(b.get_job(get).await), Code::NotFound);
        let cancel = proto::CancelJobRequest { job_id: id.clone() };
        assert_eq!(code(b.cancel_job(cancel).await), Code::NotFound);
        let watch = proto::WatchJobRequest {
            job_id: id.clone(),
            after_seq: None,
        };
        assert_eq!(code(b.watch_job(watch).await), Code::NotFound);
        let list = proto::ListJobsRequest {
            queue: "render".into(),
            ..Default::default()
        };
        let listed = b.list_jobs(list).await.unwrap().into_inner().jobs;
        assert!(listed.iter().all(|j| j.id != id), "B lists A's job");
    };
    b_cannot_see(b.clone(), job.id.clone()).await;
    // The same idempotency key is B's own: a new job, not A's.
    let b_job = b.submit_job(request).await.unwrap().into_inner();
    assert!(b_job.created && b_job.job.unwrap().id != job.id);

    // Finished and gone from Redis: the history answers, and still only to A.
    let cancel = proto::CancelJobRequest {
        job_id: job.id.clone(),
    };
    a.cancel_job(cancel).await.unwrap();
    let key = format!("cv:{{render}}:job:{}", job.id);
    eventually("the job to leave Redis", || async {
        (s.redis.command(&["EXISTS", &key]).await? == ":0\r\n").then_some(())
    })
    .await;
    let get = proto::GetJobRequest {
        job_id: job.id.clone(),
    };
    let mine = a.get_job(get).await.unwrap().into_inner().job.unwrap();
    assert_eq!(mine.state, proto::JobState::Cancelled as i32);
    b_cannot_see(b.clone(), job.id.clone()).await;
}

/// Row 26: a burst over the tenant's rate is refused with a retry delay, and passes after it.
#[tokio::test]
async fn row_26_a_submit_burst_over_the_rate_waits_for_the_retry_delay() {
    let rate = conveyor::api::Rate::parse("5/3").unwrap();
    let s = secured(|c| c.submit_rate = [rate, None, None, None]).await;
    let mut a = s.jobs(Some(&key(&s.db, "tenant-a", ALL).await)).await;
    let mut b = s.jobs(Some(&key(&s.db, "tenant-b", ALL).await)).await;
    for _ in 0..3 {
        submit_as(&mut a, "render").await.unwrap();
    }
    let keys_before = dbsize(&s.redis).await;
    let status = submit_as(&mut a, "render").await.unwrap_err();
    assert_eq!(
        dbsize(&s.redis).await,
        keys_before,
        "a refused submit changed Redis"
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo detail");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_millis(200),
        "{delay:?}"
    );
    // Other tenants, and other tiers, have their own buckets.
    submit_as(&mut b, "render").await.unwrap();
    let mut pro = submit("render", "{}");
    pro.tier = proto::Tier::Pro as i32;
    a.submit_job(pro).await.unwrap();
    // A batch counts each job.
    let batch = proto::SubmitJobsRequest {
        jobs: vec![submit("render", "{}"); 2],
    };
    tokio::time::sleep(delay).await;
    assert_eq!(code(a.submit_jobs(batch).await), Code::ResourceExhausted);
    tokio::time::sleep(Duration::from_millis(250)).await;
    submit_as(&mut a, "render")
        .await
        .expect("recovered after the delay");
}

/// Unless someone configures a rate, one tenant is never throttled: 3,000 jobs submitted at once
/// by an unauthenticated server's one tenant are all taken. Before, the default (100/s after a
/// burst of 1,000) refused the second thousand.
#[tokio::test]
async fn no_rate_applies_unless_one_is_configured() {
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.submit_rate = Config::with_redis(redis.url()).submit_rate;
    assert_eq!(config.submit_rate, [None; 4], "the default is no limit");
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    for _ in 0..3 {
        let batch = proto::SubmitJobsRequest {
            jobs: vec![submit("render", "{}"); 1000],
        };
        jobs.submit_jobs(batch).await.expect("not throttled");
    }
}

/// Row 27: watch streams over the tenant's cap are refused; closing one makes room.
#[tokio::test]
async fn row_27_watch_streams_over_the_cap_until_one_closes() {
    let s = secured(|c| c.max_watches = 2).await;
    let mut a = s.jobs(Some(&key(&s.db, "tenant-a", ALL).await)).await;
    let mut b = s.jobs(Some(&key(&s.db, "tenant-b", ALL).await)).await;
    let job = submit_as(&mut a, "render").await.unwrap();
    let b_job = submit_as(&mut b, "render").await.unwrap();
    let watch = |id: &str| proto::WatchJobRequest {
        job_id: id.into(),
        after_seq: None,
    };
    let first = a.watch_job(watch(&job.id)).await.unwrap();
    let _second = a.watch_job(watch(&job.id)).await.unwrap();
    let status = a.watch_job(watch(&job.id)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    b.watch_job(watch(&b_job.id))
        .await
        .expect("another tenant's cap");
    drop(first);
    eventually("a closed watch to free its place", || {
        let mut a = a.clone();
        let id = job.id.clone();
        async move { a.watch_job(watch(&id)).await.ok() }
    })
    .await;
}

/// `serve` refuses to start secured when no credential could ever pass.
#[tokio::test]
async fn a_secured_server_does_not_start_without_credentials() {
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.insecure = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = conveyor::server::run(config.clone(), listener, async {})
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("conveyor keys create"),
        "{error}"
    );
    config.database_url = Some("none".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = conveyor::server::run(config, listener, async {})
        .await
        .unwrap_err();
    assert!(error.to_string().contains("--insecure"), "{error}");
}

/// gRPC metadata (HTTP/2 headers) over the cap never reaches a handler; the server goes on.
#[tokio::test]
async fn metadata_over_the_cap_is_refused() {
    let s = secured(|c| c.max_metadata = 8 * 1024).await;
    let token = key(&s.db, "acme", ALL).await;
    let mut jobs = s.jobs(Some(&token)).await;
    let mut request = tonic::Request::new(submit("render", "{}"));
    let big: tonic::metadata::MetadataValue<_> = "x".repeat(16 * 1024).parse().unwrap();
    request.metadata_mut().insert("x-padding", big);
    // Once it serves: until then the reconciler's lock comes and goes.
    let queues = proto::ListQueuesRequest {};
    jobs.list_queues(queues).await.expect("serving");
    let keys_before = dbsize(&s.redis).await;
    let status = jobs.submit_job(request).await.unwrap_err();
    // hyper answers HTTP 431 before gRPC is involved; gRPC clients map that to UNKNOWN.
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("431"), "{status:?}");
    assert_eq!(dbsize(&s.redis).await, keys_before);
    submit_as(&mut s.jobs(Some(&token)).await, "render")
        .await
        .expect("still serving");
}

/// The in-flight cap per worker: a Hello announcing more slots than allowed is refused.
#[tokio::test]
async fn a_worker_may_not_announce_more_slots_than_the_cap() {
    let s = secured(|c| c.max_worker_slots = 4).await;
    let token = worker_token(&s.db, "render").await;
    let announce = |slots: u32| {
        let token = token.clone();
        let s = &s;
        async move {
            let hello = WorkerMsg::Hello(harness::hello(&["render"], slots, ""));
            let channel = s.server.channel().await;
            harness::Worker::open_on(channel, Some(&token), hello)
                .await
                .map(|_| ())
        }
    };
    announce(4).await.expect("at the cap");
    for slots in [0, 5, 1_000_000] {
        let status = announce(slots).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{slots}: {status:?}");
        assert!(status.message().contains("1..=4"), "{status:?}");
    }
}

/// Without a fairness key, the tenant is the key: one tenant's backlog does not starve another.
#[tokio::test]
async fn tenants_take_turns_within_a_tier_by_default() {
    let s = secured(|_| {}).await;
    let mut a = s.jobs(Some(&key(&s.db, "tenant-a", ALL).await)).await;
    let mut b = s.jobs(Some(&key(&s.db, "tenant-b", ALL).await)).await;
    let backlog = proto::SubmitJobsRequest {
        jobs: vec![submit("render", "a"); 200],
    };
    a.submit_jobs(backlog).await.unwrap();
    let theirs = submit_as(&mut b, "render").await.unwrap();
    let token = worker_token(&s.db, "render").await;
    let mut worker = harness::Worker::connect_with_token(&s.server, &token, &["render"], 1).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let a = worker.assignment().await;
        let id = a.job.unwrap().id;
        worker.complete(&id, a.token, "ok").await;
        order.push(id);
    }
    assert!(
        order.contains(&theirs.id),
        "tenant B waited behind A's backlog"
    );
}
