//! Batches: SubmitJobs is all or none, a burst of worker reports is answered report by report,
//! and job events reach Redis pub/sub only while someone watches the job.

use conveyor::proto::{self, JobState, connect_request::Msg, job_event::Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use crate::harness::{self, Redis, Worker, get, submit, submit_job, watch_all};

fn batch(jobs: Vec<proto::SubmitJobRequest>) -> proto::SubmitJobsRequest {
    proto::SubmitJobsRequest { jobs }
}

fn keyed(payload: &str, key: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        idempotency_key: key.into(),
        ..submit("render", payload)
    }
}

async fn dbsize(redis: &Redis) -> String {
    redis.command(&["DBSIZE"]).await.unwrap()
}

#[tokio::test]
async fn submit_jobs_answers_in_order_and_repeats_a_key_as_its_first_job() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let first = submit_job(&mut jobs, keyed("a", "k-1")).await;
    let reply = jobs
        .submit_jobs(batch(vec![
            submit("render", "b"),
            keyed("a", "k-1"),
            keyed("c", "k-2"),
            keyed("c", "k-2"),
        ]))
        .await
        .unwrap()
        .into_inner()
        .results;
    let seen: Vec<(bool, Vec<u8>)> = reply
        .iter()
        .map(|r| (r.created, r.job.as_ref().unwrap().payload.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (true, b"b".to_vec()),
            (false, b"a".to_vec()),
            (true, b"c".to_vec()),
            (false, b"c".to_vec())
        ]
    );
    let id = |i: usize| reply[i].job.as_ref().unwrap().id.clone();
    assert_eq!(id(1), first.id, "an earlier job's key");
    assert_eq!(id(3), id(2), "a key used twice in one batch");
    for i in [0, 2] {
        assert_eq!(get(&mut jobs, &id(i)).await.state, JobState::Queued as i32);
    }
}

#[tokio::test]
async fn a_bad_batch_is_refused_whole_and_changes_nothing() {
    let (redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    submit_job(&mut jobs, keyed("a", "k-1")).await;
    let before = dbsize(&redis).await;
    let bad_priority = proto::SubmitJobRequest {
        priority: Some(10),
        ..submit("render", "x")
    };
    let refusals = [
        (vec![], Code::InvalidArgument, "jobs: 0 jobs"),
        (
            vec![submit("render", "x"); 1001],
            Code::InvalidArgument,
            "jobs: 1001",
        ),
        (
            vec![submit("render", "x"), submit("upload", "x")],
            Code::InvalidArgument,
            "jobs[1].queue",
        ),
        (
            vec![submit("render", "x"), submit("render", "y"), bad_priority],
            Code::InvalidArgument,
            "jobs[2].priority",
        ),
        (
            vec![submit("render", "x"), keyed("other payload", "k-1")],
            Code::AlreadyExists,
            "k-1",
        ),
    ];
    for (requests, code, text) in refusals {
        let status = jobs.submit_jobs(batch(requests)).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(text), "{text}: {status:?}");
        assert_eq!(dbsize(&redis).await, before, "{text}: nothing written");
    }
}

#[tokio::test]
async fn a_burst_of_reports_is_answered_report_by_report() {
    const N: usize = 100;
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let requests = (0..N).map(|i| submit("render", &i.to_string())).collect();
    jobs.submit_jobs(batch(requests)).await.unwrap();
    let mut worker = Worker::connect(&server, &["render"], N as u32).await;
    let mut assignments = Vec::new();
    while assignments.len() < N {
        assignments.push(worker.assignment().await);
    }
    // All at once, without waiting for answers: progress, then the completion, of every job,
    // and one completion with a stale token.
    for a in &assignments {
        worker.progress(a, 50.0, "half").await;
        let job_id = a.job.as_ref().unwrap().id.clone();
        let result = format!("done {job_id}");
        let token = a.token;
        worker
            .send(Msg::Complete(proto::Complete {
                job_id,
                token,
                result,
                ..Default::default()
            }))
            .await;
    }
    let stale = &assignments[0];
    worker
        .send(Msg::Complete(proto::Complete {
            job_id: stale.job.as_ref().unwrap().id.clone(),
            token: stale.token + 1,
            result: String::new(),
            ..Default::default()
        }))
        .await;
    let mut ok = 0;
    let mut refused = Vec::new();
    for _ in 0..=N {
        let r = worker.report_result().await;
        match r.code {
            0 => ok += 1,
            _ => refused.push((r.code, r.token)),
        }
    }
    assert_eq!(ok, N, "every completion answered OK");
    assert_eq!(
        refused,
        [(Code::FailedPrecondition as i32, stale.token + 1)],
        "the stale one refused"
    );
    for a in &assignments {
        let job = get(&mut jobs, &a.job.as_ref().unwrap().id).await;
        assert_eq!(job.state, JobState::Succeeded as i32);
        assert_eq!(job.result, format!("done {}", job.id));
    }
}

/// Everything published on `cv:events` from now on, as raw RESP text.
async fn listen(redis: &Redis) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", redis.port)).await.unwrap();
    stream
        .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$9\r\ncv:events\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("subscribe"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                return;
            }
        }
    });
    rx
}

#[tokio::test]
async fn job_events_are_published_only_while_the_job_is_watched() {
    let (redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut published = listen(&redis).await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;

    let unwatched = submit_job(&mut jobs, submit("render", "a")).await;
    let a = worker.assignment().await;
    worker.progress(&a, 50.0, "half").await;
    assert_eq!(worker.complete(&unwatched.id, a.token, "{}").await.code, 0);

    let watched = submit_job(&mut jobs, submit("render", "b")).await;
    let watcher = {
        let (mut jobs, id) = (jobs.clone(), watched.id.clone());
        tokio::spawn(async move { watch_all(&mut jobs, &id, None).await })
    };
    let b = worker.assignment().await;
    // The watch may open after the lease; its snapshot then says RUNNING.
    harness::eventually("the watch to register", || {
        let redis = &redis;
        let key = format!("cv:{{render}}:job:{}", watched.id);
        async move {
            let w = redis.command(&["HGET", &key, "w"]).await?;
            (w == "$1\r\n1\r\n").then_some(())
        }
    })
    .await;
    worker.progress(&b, 50.0, "half").await;
    assert_eq!(worker.complete(&watched.id, b.token, "{}").await.code, 0);
    let events = watcher.await.unwrap();
    assert_eq!(events.last().unwrap().state, JobState::Succeeded as i32);
    assert!(events.iter().any(|e| e.kind == Kind::Progress as i32));

    let mut text = String::new();
    while !text.contains("SUCCEEDED") {
        text += &tokio::time::timeout(harness::DEADLINE, published.recv())
            .await
            .expect("events in time")
            .unwrap();
    }
    assert!(text.contains(&watched.id), "{text}");
    assert!(!text.contains(&unwatched.id), "nobody watched it: {text}");
}

#[tokio::test]
async fn a_closed_watch_stops_the_jobs_events() {
    let (redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "a")).await;
    let key = format!("cv:{{render}}:job:{}", job.id);
    let watch_count = || async { redis.command(&["HGET", &key, "w"]).await };
    let request = proto::WatchJobRequest {
        job_id: job.id.clone(),
        after_seq: None,
    };
    let mut stream = jobs.watch_job(request).await.unwrap().into_inner();
    let snapshot = stream.message().await.unwrap().unwrap().event.unwrap();
    assert_eq!(snapshot.kind, Kind::Snapshot as i32);
    assert_eq!(watch_count().await.unwrap(), "$1\r\n1\r\n");
    drop(stream);
    harness::eventually("the watch to unregister", || async {
        (watch_count().await? == "$1\r\n0\r\n").then_some(())
    })
    .await;
}
