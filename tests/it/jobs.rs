//! The main loop: submit -> worker -> progress -> result, watched; idempotency; list; cancel.

use conveyor::proto::{self, JobState, job_event::Kind};

use crate::harness::{self, Worker, get, submit, submit_job, wait_state, watch_all};

#[tokio::test]
async fn submitted_job_runs_on_a_worker_and_its_watcher_sees_every_step() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("render", r#"{"video":"v1"}"#)).await;
    assert_eq!(job.state, JobState::Queued as i32);

    let watcher = {
        let (mut jobs, id) = (jobs.clone(), job.id.clone());
        tokio::spawn(async move { watch_all(&mut jobs, &id, None).await })
    };
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let a = worker.assignment().await;
    let assigned = a.job.clone().unwrap();
    assert_eq!(
        (assigned.id.as_str(), assigned.payload.as_slice()),
        (job.id.as_str(), &br#"{"video":"v1"}"#[..])
    );
    assert_eq!((a.attempt, a.token > 0), (1, true));
    worker.progress(&a, 50.0, "encode").await;
    let done = worker
        .complete(&job.id, a.token, r#"{"url":"s3://out.mp4"}"#)
        .await;
    assert_eq!(done.code, 0, "{}", done.message);

    let events = watcher.await.unwrap();
    assert_eq!(events[0].kind, Kind::Snapshot as i32);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gapless, ordered: {seqs:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last.kind, last.state),
        (Kind::State as i32, JobState::Succeeded as i32)
    );
    assert_eq!(last.result, r#"{"url":"s3://out.mp4"}"#);
    let progress = events
        .iter()
        .find(|e| e.kind == Kind::Progress as i32)
        .expect("a progress event");
    assert_eq!(progress.progress.as_ref().unwrap().percent, 50.0);

    let finished = get(&mut jobs, &job.id).await;
    assert_eq!(finished.state, JobState::Succeeded as i32);
    assert_eq!(finished.progress.unwrap().percent, 100.0);

    // A watcher that comes back having missed events gets the job as it is now, terminal.
    let resumed = watch_all(&mut jobs, &job.id, Some(last.seq - 1)).await;
    assert_eq!(
        resumed
            .iter()
            .map(|e| (e.seq, e.kind, e.job.as_ref().map(|j| j.state)))
            .collect::<Vec<_>>(),
        vec![(
            last.seq,
            Kind::Snapshot as i32,
            Some(JobState::Succeeded as i32)
        )]
    );
    // One that saw the terminal event gets nothing again.
    let replay = watch_all(&mut jobs, &job.id, Some(last.seq)).await;
    assert!(replay.is_empty(), "{replay:?}");
}

/// Concurrent single submits to one queue share calls (scheduler/coalesce.rs), yet each hears
/// its own outcome: a key that names another payload refuses only its own submit, and every
/// other job is created once, in Redis and in the history.
#[tokio::test]
async fn concurrent_single_submits_share_calls_and_each_hears_its_own_outcome() {
    const N: usize = 200;
    const CONFLICT: usize = 100;
    let (redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let taken = proto::SubmitJobRequest {
        idempotency_key: "taken".into(),
        ..submit("group", "first")
    };
    let first = submit_job(&mut jobs, taken.clone()).await;
    redis.command(&["CONFIG", "RESETSTAT"]).await.unwrap();
    let calls = (0..N).map(|i| {
        let mut jobs = jobs.clone();
        let request = match i {
            CONFLICT => proto::SubmitJobRequest {
                payload: b"another".to_vec(),
                ..taken.clone()
            },
            _ => submit("group", &i.to_string()),
        };
        async move { jobs.submit_job(request).await }
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let stats = redis.command(&["INFO", "commandstats"]).await.unwrap();
    let mut ids = std::collections::HashSet::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match i {
            CONFLICT => {
                let err = outcome.unwrap_err();
                assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
                assert!(err.message().contains(&first.id), "{}", err.message());
            }
            _ => {
                let reply = outcome.unwrap().into_inner();
                let job = reply.job.unwrap();
                assert!(reply.created, "job {i}");
                assert_eq!(job.payload, i.to_string().into_bytes());
                ids.insert(job.id);
            }
        }
    }
    assert_eq!(ids.len(), N - 1, "one job per created submit");
    // Grouped: far fewer script calls than submits (the refused group, made again one job at a
    // time, and the server's own chores included).
    let scripts: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap();
    assert!(
        scripts < N as u64 / 2,
        "{scripts} script calls for {N} submits"
    );
    // Each created job reads back, and the refused one left nothing behind.
    for id in ids.iter().take(20) {
        assert_eq!(get(&mut jobs, id).await.queue, "group");
    }
    let page = jobs
        .list_jobs(proto::ListJobsRequest {
            queue: "group".into(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.jobs.len(), N, "the first job and the N - 1 created");
}

#[tokio::test]
async fn idempotent_submit_returns_the_first_job() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let req = proto::SubmitJobRequest {
        idempotency_key: "order-42".into(),
        ..submit("upload", "a")
    };
    let first = jobs.submit_job(req.clone()).await.unwrap().into_inner();
    let again = jobs.submit_job(req.clone()).await.unwrap().into_inner();
    assert!(first.created && !again.created);
    assert_eq!(first.job.unwrap().id, again.job.as_ref().unwrap().id);
    let other = proto::SubmitJobRequest {
        payload: b"b".to_vec(),
        ..req
    };
    let err = jobs.submit_job(other).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(
        err.message().contains(&again.job.unwrap().id),
        "{}",
        err.message()
    );
    let page = jobs
        .list_jobs(proto::ListJobsRequest {
            queue: "upload".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(page.unwrap().into_inner().jobs.len(), 1);
}

#[tokio::test]
async fn list_pages_newest_first_and_filters_by_state() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            submit_job(&mut jobs, submit("edit", &i.to_string()))
                .await
                .id,
        );
    }
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: ids[0].clone(),
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let req = proto::ListJobsRequest {
            queue: "edit".into(),
            page_size: 2,
            page_token: token,
            ..Default::default()
        };
        let page = jobs.list_jobs(req).await.unwrap().into_inner();
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.reverse();
    assert_eq!(seen, ids);
    // The history lags the live state by the writer's interval.
    let cancelled = harness::eventually("the cancel in the history", || {
        let mut jobs = jobs.clone();
        async move {
            let req = proto::ListJobsRequest {
                queue: "edit".into(),
                state: JobState::Cancelled as i32,
                ..Default::default()
            };
            let page = jobs.list_jobs(req).await.unwrap().into_inner().jobs;
            (!page.is_empty()).then_some(page)
        }
    })
    .await;
    assert_eq!(cancelled.len(), 1);
}

#[tokio::test]
async fn delayed_job_waits_then_runs() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let req = proto::SubmitJobRequest {
        delay: Some(prost_types::Duration {
            seconds: 0,
            nanos: 300_000_000,
        }),
        ..submit("later", "x")
    };
    let job = submit_job(&mut jobs, req).await;
    assert_eq!(job.state, JobState::Scheduled as i32);
    let mut worker = Worker::connect(&server, &["later"], 1).await;
    let a = worker.assignment().await;
    assert_eq!(a.job.unwrap().id, job.id);
    wait_state(&mut jobs, &job.id, JobState::Running).await;
}

#[tokio::test]
async fn a_watcher_that_does_not_read_neither_stalls_others_nor_misses_the_end() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "x")).await;
    // Opened first and then left unread while the job produces hundreds of events.
    let mut slow = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: None,
        })
        .await
        .unwrap()
        .into_inner();
    let fast = {
        let (mut jobs, id) = (jobs.clone(), job.id.clone());
        tokio::spawn(async move { watch_all(&mut jobs, &id, None).await })
    };
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let a = worker.assignment().await;
    for i in 0..400 {
        worker.progress(&a, i as f32 / 4.0, "step").await;
    }
    assert_eq!(worker.complete(&job.id, a.token, "done").await.code, 0);
    let fast = fast.await.unwrap();
    assert_eq!(fast.last().unwrap().state, JobState::Succeeded as i32);

    let mut seen = Vec::new();
    while let Some(event) = tokio_stream::StreamExt::next(&mut slow).await {
        seen.push(event.unwrap().event.unwrap());
    }
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    // Had it fallen behind the retained log, it would get a fresh snapshot instead of a gap
    // (the hub's side of that is unit-tested in src/events.rs).
    for w in seen.windows(2) {
        assert!(
            w[1].seq == w[0].seq + 1 || w[1].kind == Kind::Snapshot as i32,
            "gap before seq {}",
            w[1].seq
        );
    }
    let last = seen.last().unwrap();
    assert!(
        last.state == JobState::Succeeded as i32,
        "ends with the terminal event: {last:?}"
    );
}

#[tokio::test]
async fn finished_jobs_leave_redis_after_the_retention_period_and_stay_in_the_history() {
    harness::logs();
    let redis = harness::Redis::start().await;
    let mut config = harness::config(&redis);
    config.retention = std::time::Duration::from_millis(300);
    let server = harness::Server::start(config).await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "x")).await;
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: job.id.clone(),
    })
    .await
    .unwrap();
    let key = format!("cv:{{render}}:job:{}", job.id);
    harness::eventually("the job to leave Redis", || async {
        let reply = redis.command(&["EXISTS", &key]).await?;
        (reply == ":0\r\n").then_some(())
    })
    .await;
    // The database still has it.
    let gone = harness::get(&mut jobs, &job.id).await;
    assert_eq!(gone.state, JobState::Cancelled as i32);
    // The periodic sweep drops the expired id from the queue's index.
    harness::eventually("the index to be swept", || async {
        let reply = redis.command(&["ZCARD", "cv:{render}:all"]).await?;
        (reply == ":0\r\n").then_some(())
    })
    .await;
}
