//! Queue control and figures: PauseQueue / ResumeQueue, GetQueueStats, ListQueues, and their CLI.

use std::time::Duration;

use conveyor::auth::keys::{self, NewCredential};
use conveyor::auth::{Queues, Role, Scopes};
use conveyor::client::{self, Target};
use conveyor::proto::{self, connect_response::Msg as ServerMsg};
use tonic::Code;

use crate::harness::{self, Redis, Server, Worker, eventually, submit, submit_job};

/// Nothing but heartbeats reach the worker for `quiet`.
async fn assert_quiet(worker: &mut Worker, quiet: Duration) {
    if let Ok(m) = tokio::time::timeout(quiet, worker.recv()).await {
        panic!("expected nothing while paused, got {m:?}");
    }
}

#[tokio::test]
async fn a_paused_queue_leases_nothing_running_jobs_finish_and_resume_restarts_it() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut worker = Worker::connect(&server, &["render"], 2).await;
    worker.keep_alive();
    let first = submit_job(&mut jobs, submit("render", "first")).await;
    let running = worker.assignment().await;

    let pause = || proto::PauseQueueRequest {
        queue: "render".into(),
    };
    assert!(
        jobs.pause_queue(pause())
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    assert!(
        !jobs
            .pause_queue(pause())
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    let waiting = submit_job(&mut jobs, submit("render", "second")).await;
    let mut later = submit("render", "delayed");
    later.delay = Some(prost_types::Duration {
        seconds: 0,
        nanos: 200_000_000,
    });
    let delayed = submit_job(&mut jobs, later).await;
    assert_quiet(&mut worker, Duration::from_millis(700)).await;
    // The delayed job came due meanwhile: promoted, not leased.
    let job = harness::get(&mut jobs, &delayed.id).await;
    assert_eq!(job.state, proto::JobState::Queued as i32);
    // The running job finishes as usual.
    let done = worker.complete(&first.id, running.token, "ok").await;
    assert_eq!(done.code, Code::Ok as i32);
    assert_quiet(&mut worker, Duration::from_millis(300)).await;

    let resume = proto::ResumeQueueRequest {
        queue: "render".into(),
    };
    assert!(
        jobs.resume_queue(resume.clone())
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    assert!(
        !jobs
            .resume_queue(resume)
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    let mut got = Vec::new();
    while got.len() < 2 {
        if let ServerMsg::Assignment(a) = worker.recv().await {
            got.push(a.job.unwrap().id);
        }
    }
    got.sort();
    let mut expected = vec![waiting.id, delayed.id];
    expected.sort();
    assert_eq!(got, expected);
}

async fn client_key(db: &sea_orm::DatabaseConnection, tenant: &str, scopes: &str) -> String {
    let new = NewCredential {
        tenant: tenant.into(),
        role: Role::Client(Scopes::parse(scopes).unwrap()),
        name: String::new(),
        expires_in: None,
        cert_identity: None,
    };
    keys::create(db, new).await.unwrap().1.unwrap()
}

#[tokio::test]
async fn stats_and_queue_lists_show_only_the_callers_jobs() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.insecure = false;
    let db = conveyor::history::connect(config.database_url.as_deref().unwrap())
        .await
        .unwrap();
    conveyor::history::migrate(&db).await.unwrap();
    let a_key = client_key(&db, "tenant-a", "submit,read,watch,cancel").await;
    let b_key = client_key(&db, "tenant-b", "submit,read").await;
    let admin = client_key(&db, "ops", "admin").await;
    let new = NewCredential {
        tenant: "ops".into(),
        role: Role::Worker(Queues::parse("render").unwrap()),
        name: String::new(),
        expires_in: None,
        cert_identity: None,
    };
    let worker_token = keys::create(&db, new).await.unwrap().1.unwrap();
    let server = Server::start(config).await;
    let as_ = |key: &str| {
        let target = Target {
            token: Some(key.to_string()),
            ..Target::new(server.addr.clone())
        };
        let server = &server;
        async move { client::jobs(server.channel().await, target.bearer().unwrap()) }
    };
    let mut a = as_(&a_key).await;
    let mut b = as_(&b_key).await;

    // Tenant A: three FREE and two PRO jobs; one succeeds, one fails for good, one is cancelled.
    let mut ids = Vec::new();
    for tier in [1, 1, 1, 2, 2] {
        let mut r = submit("render", "{}");
        r.tier = tier;
        ids.push(a.submit_job(r).await.unwrap().into_inner().job.unwrap().id);
    }
    let mut worker = Worker::connect_with_token(&server, &worker_token, &["render"], 2).await;
    let one = worker.assignment().await;
    let two = worker.assignment().await;
    // Paused, the slots these two free are not filled again: the counts below stay put.
    let pause = proto::PauseQueueRequest {
        queue: "render".into(),
    };
    as_(&admin).await.pause_queue(pause.clone()).await.unwrap();
    let (one_token, two_token) = (one.token, two.token);
    let (one, two) = (one.job.unwrap().id, two.job.unwrap().id);
    worker.complete(&one, one_token, "ok").await;
    worker.fail(&two, two_token, "bad input", false).await;
    let queued = ids.iter().find(|id| **id != one && **id != two).unwrap();
    let cancel = proto::CancelJobRequest {
        job_id: queued.clone(),
    };
    a.cancel_job(cancel).await.unwrap();
    b.submit_job(submit("upload", "{}")).await.unwrap();

    let request = || proto::GetQueueStatsRequest {
        queue: "render".into(),
    };
    let stats = eventually("the history to catch up", || {
        let mut a = a.clone();
        async move {
            let s = a.get_queue_stats(request()).await.ok()?.into_inner();
            let t = s.total?;
            (t.succeeded == 1 && t.failed == 1 && t.cancelled == 1).then_some(s)
        }
    })
    .await;
    let total = stats.total.unwrap();
    assert_eq!((total.queued, total.running), (2, 0), "{total:?}");
    assert_eq!(stats.finished_last_minute, 3);
    assert!(stats.oldest_waiting.is_some());
    assert!(stats.paused);
    let per_tier: Vec<(i32, u64)> = stats
        .tiers
        .iter()
        .map(|t| {
            (
                t.tier,
                t.queued + t.running + t.succeeded + t.failed + t.cancelled,
            )
        })
        .collect();
    assert_eq!(per_tier, vec![(1, 3), (2, 2)]);

    // Tenant B sees none of A's jobs, and only its own queue.
    let theirs = b.get_queue_stats(request()).await.unwrap().into_inner();
    assert_eq!(theirs.total.unwrap(), proto::StateCounts::default());
    let listed = b
        .list_queues(proto::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.queues.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(names, vec!["upload"]);
    let listed = a
        .list_queues(proto::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.queues.len(), 1);
    assert_eq!((listed.queues[0].waiting, listed.queues[0].running), (2, 0));

    // Pausing and resuming a shared queue is for admins.
    let status = a.pause_queue(pause).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let resume = proto::ResumeQueueRequest {
        queue: "render".into(),
    };
    assert_eq!(
        a.resume_queue(resume.clone()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(
        as_(&admin)
            .await
            .resume_queue(resume)
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    assert!(
        !a.get_queue_stats(request())
            .await
            .unwrap()
            .into_inner()
            .paused
    );
    let bad = proto::GetQueueStatsRequest {
        queue: "bad queue".into(),
    };
    assert_eq!(
        a.get_queue_stats(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn without_a_database_stats_say_why_not() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.database_url = Some("none".into());
    let server = Server::start(config).await;
    let request = proto::GetQueueStatsRequest {
        queue: "render".into(),
    };
    let status = server
        .jobs()
        .await
        .get_queue_stats(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("database"));
}

#[tokio::test]
async fn the_cli_pauses_resumes_and_shows_figures() {
    let (_redis, server) = harness::start().await;
    submit_job(&mut server.jobs().await, submit("render", "{}")).await;
    // tokio's Command: the server runs on this test's thread, so a blocking wait would starve it.
    let run = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"));
        command.args(args).env("CONVEYOR_ADDR", &server.addr);
        async move { command.output().await.unwrap() }
    };
    let out = run(&["pause", "render"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "render: paused\n",
        "{out:?}"
    );
    let out = run(&["stats", "render"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(paused)") && text.contains("free"), "{text}");
    let out = eventually("the job in the list", || {
        let out = run(&["queues"]);
        async move {
            let text = String::from_utf8_lossy(&out.await.stdout).to_string();
            text.contains("render").then_some(text)
        }
    })
    .await;
    assert!(out.contains("paused"), "{out}");
    let out = run(&["resume", "render"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "render: resumed\n");
}

#[tokio::test]
async fn a_waiting_job_says_why_and_where_it_stands() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            submit_job(&mut jobs, submit("render", &i.to_string()))
                .await
                .id,
        );
    }
    let third = harness::get(&mut jobs, &ids[2]).await;
    assert_eq!(third.blocked_reason, "waiting for a worker");
    assert_eq!(third.jobs_ahead, Some(2));
    let mut later = submit("render", "later");
    later.delay = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    let scheduled = submit_job(&mut jobs, later).await;
    let shown = harness::get(&mut jobs, &scheduled.id).await;
    assert_eq!(shown.blocked_reason, "scheduled");
    assert_eq!(shown.eligible_at, scheduled.run_at);

    let pause = proto::PauseQueueRequest {
        queue: "render".into(),
    };
    jobs.pause_queue(pause).await.unwrap();
    let first = harness::get(&mut jobs, &ids[0]).await;
    assert_eq!(
        (first.blocked_reason.as_str(), first.jobs_ahead),
        ("queue paused", Some(0))
    );
    // The WatchJob snapshot says the same.
    let watch = proto::WatchJobRequest {
        job_id: ids[0].clone(),
        after_seq: None,
    };
    let mut stream = jobs.watch_job(watch).await.unwrap().into_inner();
    let snapshot = stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .event
        .unwrap()
        .job
        .unwrap();
    assert_eq!(snapshot.blocked_reason, "queue paused");
    // Running and finished jobs wait for nothing.
    let resume = proto::ResumeQueueRequest {
        queue: "render".into(),
    };
    jobs.resume_queue(resume).await.unwrap();
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let a = worker.assignment().await;
    let running = harness::get(&mut jobs, &a.job.unwrap().id).await;
    assert_eq!(
        (running.blocked_reason.as_str(), running.jobs_ahead),
        ("", None)
    );
}

#[tokio::test]
async fn a_queue_cap_holds_across_workers_and_every_end_frees_a_slot() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    let capped = conveyor::scheduler::QueueDefaults {
        concurrency: Some(2),
        ..Default::default()
    };
    config.queue_defaults = vec![("render".into(), capped)];
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    for i in 0..8 {
        submit_job(&mut jobs, submit("render", &i.to_string())).await;
    }
    // What runs, as Redis has it: the queue's leased set.
    let running = || async {
        let reply = redis
            .command(&["ZCARD", "cv:{render}:leased"])
            .await
            .unwrap();
        reply.trim_start_matches(':').trim().parse::<u32>().unwrap()
    };
    let mut workers = [
        Worker::connect_with(&server, harness::hello(&["render"], 3, "one")).await,
        Worker::connect_with(&server, harness::hello(&["render"], 3, "two")).await,
    ];
    let beats: Vec<_> = workers.iter().map(|w| w.keep_alive()).collect();
    let quiet = Duration::from_millis(400);
    // (worker, assignment) of every job handed out and not yet ended.
    let mut held = Vec::new();
    for (i, w) in workers.iter_mut().enumerate() {
        held.extend(w.assignments(quiet).await.into_iter().map(|a| (i, a)));
    }
    assert_eq!(held.len(), 2, "the cap is 2 across both workers");
    assert_eq!(running().await, 2);

    // A success, then a final failure: each frees its slot for exactly one more job.
    for ends in ["complete", "fail"] {
        let (i, a) = held.remove(0);
        let id = a.job.unwrap().id;
        match ends {
            "complete" => workers[i].complete(&id, a.token, "ok").await,
            _ => workers[i].fail(&id, a.token, "broken", false).await,
        };
        let mut more = Vec::new();
        for (i, w) in workers.iter_mut().enumerate() {
            more.extend(w.assignments(quiet).await.into_iter().map(|a| (i, a)));
        }
        assert_eq!(
            more.len(),
            1,
            "after a {ends}: one slot freed, one job leased"
        );
        held.extend(more);
        assert_eq!(running().await, 2);
    }

    // A worker that goes away for good: after the grace period its jobs go back, and the
    // other worker takes them, two at a time at most.
    let [one, mut two] = workers;
    let leaving = held.iter().filter(|(i, _)| *i == 0).count();
    beats[0].abort();
    drop(one);
    let mut taken = 0;
    let deadline = tokio::time::Instant::now() + harness::DEADLINE;
    while taken < leaving {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the jobs did not move"
        );
        taken += two.assignments(Duration::from_millis(200)).await.len();
        assert!(running().await <= 2);
    }
    assert!(running().await <= 2);
}

#[tokio::test]
async fn a_queue_rate_spaces_its_leases_and_wakes_exactly_when_the_next_fits() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    // One lease per 300 ms, none saved up; a long sweep, so only the rate's own timer can
    // explain a lease on time.
    let limited = conveyor::scheduler::QueueDefaults {
        rate: Some((Duration::from_millis(300), 1)),
        ..Default::default()
    };
    config.queue_defaults = vec![("upload".into(), limited)];
    config.sweep = Duration::from_secs(10);
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    for i in 0..4 {
        submit_job(&mut jobs, submit("upload", &i.to_string())).await;
    }
    let mut worker = Worker::connect(&server, &["upload"], 4).await;
    worker.keep_alive();
    let mut at = Vec::new();
    for _ in 0..4 {
        let a = worker.assignment().await;
        at.push(tokio::time::Instant::now());
        worker.complete(&a.job.unwrap().id, a.token, "ok").await;
    }
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(280), "leases {gap:?} apart");
        assert!(
            gap < Duration::from_millis(900),
            "woke {gap:?} later, not when the next fit"
        );
    }
}
