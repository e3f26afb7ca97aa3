//! WatchJobs: a page follows every job of a queue that carries its labels (the Socket.io room it
//! replaces) — the snapshot, `synced`, live events of old and new jobs across replicas, a resume
//! that misses nothing Redis still holds, tenants kept apart, and bad requests refused.

use std::collections::HashMap;

use conveyor::proto::{self, JobState, job_event::Kind};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::auth::{ALL, key, secured};
use crate::harness::{self, DEADLINE, Redis, Server, Worker, submit, submit_job};

type Jobs = proto::job_service_client::JobServiceClient<Channel>;
type Stream = tonic::Streaming<proto::WatchJobsResponse>;

fn labelled(queue: &str, user: &str) -> proto::SubmitJobRequest {
    let mut request = submit(queue, user);
    request.labels.insert("user".into(), user.into());
    request
}

async fn follow(jobs: &mut Jobs, queues: &[&str], user: &str, resume: &str) -> Stream {
    let request = proto::WatchJobsRequest {
        queues: queues.iter().map(|q| q.to_string()).collect(),
        labels: [("user".to_string(), user.to_string())].into(),
        resume_token: resume.into(),
    };
    jobs.watch_jobs(request).await.expect("follow").into_inner()
}

async fn next(stream: &mut Stream) -> proto::WatchJobsResponse {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("a response in time")
        .expect("the stream goes on")
        .expect("a response")
}

/// The snapshot up to `synced`: the jobs with their seq, and the resume token it ended with.
async fn snapshot(stream: &mut Stream) -> (Vec<(u64, proto::Job)>, String) {
    let mut jobs = Vec::new();
    loop {
        let r = next(stream).await;
        if r.synced {
            assert!(r.event.is_none() && !r.resume_token.is_empty());
            return (jobs, r.resume_token);
        }
        assert!(r.resume_token.is_empty(), "no resume point before synced");
        let event = r.event.unwrap();
        assert_eq!(event.kind, Kind::Snapshot as i32);
        jobs.push((event.seq, event.job.unwrap()));
    }
}

/// What a page holds of its jobs: per job, its latest seq, state and percent, applied the
/// way a page should (anything not newer than what it has is a repeat).
#[derive(Default)]
struct Page {
    jobs: HashMap<String, (u64, i32, f32)>,
    /// Events in arrival order: (job id, seq, kind).
    seen: Vec<(String, u64, i32)>,
    token: String,
}

impl Page {
    fn apply(&mut self, r: proto::WatchJobsResponse) {
        if !r.resume_token.is_empty() {
            self.token = r.resume_token;
        }
        let Some(e) = r.event else { return };
        if e.kind == Kind::Keepalive as i32 {
            return;
        }
        self.seen.push((e.job_id.clone(), e.seq, e.kind));
        let held = self.jobs.get(&e.job_id).copied();
        if held.is_some_and(|(seq, _, _)| e.seq <= seq && e.kind != Kind::Snapshot as i32) {
            panic!("a repeat that is not a snapshot: {:?}", (e.job_id, e.seq));
        }
        let (_, state, pct) = held.unwrap_or_default();
        let entry = match e.kind {
            k if k == Kind::Snapshot as i32 => {
                let job = e.job.unwrap();
                let pct = job.progress.map(|p| p.percent).unwrap_or(0.0);
                (e.seq, job.state, pct)
            }
            k if k == Kind::Progress as i32 => (e.seq, state, e.progress.unwrap().percent),
            _ => (e.seq, e.state, pct),
        };
        if held.is_none_or(|(seq, _, _)| entry.0 >= seq) {
            self.jobs.insert(e.job_id, entry);
        }
    }

    async fn until(&mut self, stream: &mut Stream, what: &str, done: impl Fn(&Page) -> bool) {
        while !done(self) {
            let r = tokio::time::timeout(DEADLINE, stream.next())
                .await
                .unwrap_or_else(|_| panic!("{what} in time; seen {:?}", self.seen))
                .expect("the stream goes on")
                .expect("a response");
            self.apply(r);
        }
    }

    fn state(&self, id: &str) -> Option<i32> {
        self.jobs.get(id).map(|j| j.1)
    }
}

#[tokio::test]
async fn a_page_follows_its_users_jobs_old_and_new_across_replicas() {
    harness::logs();
    let redis = Redis::start().await;
    let config = harness::config(&redis);
    let a = Server::start(config.clone()).await;
    let b = Server::start(config).await;
    let (mut on_a, mut on_b) = (a.jobs().await, b.jobs().await);
    let old = submit_job(&mut on_b, labelled("render", "42")).await;
    let other_user = submit_job(&mut on_b, labelled("render", "7")).await;
    let other_queue = submit_job(&mut on_b, labelled("upload", "42")).await;

    // The page is served by replica A; everything else happens on replica B.
    let mut stream = follow(&mut on_a, &["render"], "42", "").await;
    let (jobs, token) = snapshot(&mut stream).await;
    assert_eq!(
        jobs.iter().map(|(_, j)| j.id.as_str()).collect::<Vec<_>>(),
        [old.id.as_str()],
        "only the user's unfinished jobs of the queue"
    );
    assert!(jobs[0].1.payload.is_empty(), "snapshots leave payloads out");
    let mut page = Page {
        token,
        ..Page::default()
    };
    for (seq, job) in jobs {
        page.jobs.insert(job.id, (seq, job.state, 0.0));
    }

    let new = submit_job(&mut on_b, labelled("render", "42")).await;
    submit_job(&mut on_b, labelled("render", "7")).await;
    page.until(&mut stream, "the new job", |p| p.jobs.contains_key(&new.id))
        .await;
    assert_eq!(page.state(&new.id), Some(JobState::Queued as i32));

    let mut worker = Worker::connect(&b, &["render", "upload"], 10).await;
    let mut running = HashMap::new();
    while running.len() < 5 {
        let lease = worker.assignment().await;
        running.insert(lease.job.clone().unwrap().id, lease);
    }
    for (id, lease) in &running {
        worker.progress(lease, 50.0, "encode").await;
        assert_eq!(worker.complete(id, lease.token, "ok").await.code, 0);
    }
    let succeeded = JobState::Succeeded as i32;
    page.until(&mut stream, "both jobs to succeed", |p| {
        p.state(&old.id) == Some(succeeded) && p.state(&new.id) == Some(succeeded)
    })
    .await;
    for id in [&old.id, &new.id] {
        let kinds: Vec<i32> = page
            .seen
            .iter()
            .filter(|(j, _, _)| j == id)
            .map(|(_, _, k)| *k)
            .collect();
        assert!(kinds.contains(&(Kind::Progress as i32)), "{id}: {kinds:?}");
        assert_eq!(page.jobs[id].2, 50.0);
    }
    assert!(
        page.seen
            .iter()
            .all(|(id, _, _)| *id == old.id || *id == new.id),
        "nothing of another user or queue: {:?} ({}, {})",
        page.seen,
        other_user.id,
        other_queue.id
    );
}

#[tokio::test]
async fn a_page_that_comes_back_with_its_token_misses_nothing() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut worker = Worker::connect(&server, &["render"], 2).await;
    let finishing = submit_job(&mut jobs, labelled("render", "42")).await;
    let progressing = submit_job(&mut jobs, labelled("render", "42")).await;
    let mut leases = HashMap::new();
    while leases.len() < 2 {
        let lease = worker.assignment().await;
        leases.insert(lease.job.clone().unwrap().id, lease);
    }

    let mut stream = follow(&mut jobs, &["render"], "42", "").await;
    let (seen, token) = snapshot(&mut stream).await;
    assert_eq!(seen.len(), 2);
    drop(stream);

    // While the page is away: one job ends, one moves on, one is new.
    let done = worker
        .complete(&finishing.id, leases[&finishing.id].token, "ok")
        .await;
    assert_eq!(done.code, 0);
    worker.progress(&leases[&progressing.id], 70.0, "mux").await;
    let new = submit_job(&mut jobs, labelled("render", "42")).await;
    harness::wait_state(&mut jobs, &finishing.id, JobState::Succeeded).await;

    let mut stream = follow(&mut jobs, &["render"], "42", &token).await;
    let (again, token_2) = snapshot(&mut stream).await;
    let by_id: HashMap<&str, &proto::Job> = again.iter().map(|(_, j)| (j.id.as_str(), j)).collect();
    assert_eq!(by_id.len(), 3, "{again:?}");
    assert_eq!(
        by_id[finishing.id.as_str()].state,
        JobState::Succeeded as i32
    );
    assert_eq!(by_id[finishing.id.as_str()].result, "ok");
    let progress = by_id[progressing.id.as_str()].progress.clone().unwrap();
    assert_eq!((progress.percent, progress.stage.as_str()), (70.0, "mux"));
    // The slot the finished job freed may have taken it.
    let state = by_id[new.id.as_str()].state;
    assert!([JobState::Queued as i32, JobState::Running as i32].contains(&state));
    assert!(token_2 >= token, "{token_2} after {token}");

    // Without the token, a fresh page gets the unfinished jobs only.
    let mut fresh = follow(&mut jobs, &["render"], "42", "").await;
    let (unfinished, _) = snapshot(&mut fresh).await;
    let mut ids: Vec<&str> = unfinished.iter().map(|(_, j)| j.id.as_str()).collect();
    ids.sort();
    let mut expected = vec![progressing.id.as_str(), new.id.as_str()];
    expected.sort();
    assert_eq!(ids, expected, "{unfinished:?}");
}

#[tokio::test]
async fn another_tenants_jobs_never_reach_a_page() {
    let s = secured(|_| {}).await;
    let mut a = s.jobs(Some(&key(&s.db, "tenant-a", ALL).await)).await;
    let mut b = s.jobs(Some(&key(&s.db, "tenant-b", ALL).await)).await;
    let theirs = b
        .submit_job(labelled("render", "42"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let request = proto::WatchJobsRequest {
        queues: vec!["render".into()],
        labels: [("user".to_string(), "42".to_string())].into(),
        resume_token: String::new(),
    };
    let mut stream = a.watch_jobs(request).await.unwrap().into_inner();
    let (jobs, _) = snapshot(&mut stream).await;
    assert!(jobs.is_empty(), "{jobs:?}");
    b.submit_job(labelled("render", "42")).await.unwrap();
    let mine = a
        .submit_job(labelled("render", "42"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    // The first thing the page hears is its own new job; B's came earlier and did not reach it.
    let r = next(&mut stream).await;
    let job = r.event.unwrap().job.unwrap();
    assert_eq!(job.id, mine.id);
    assert_ne!(job.id, theirs.id);
}

#[tokio::test]
async fn bad_follow_requests_are_refused_and_change_nothing() {
    let (redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let before = crate::bad_inputs::dbsize(&redis).await;
    let cases = [
        (vec![], ""),
        (vec!["render"; 33], ""),
        (vec!["bad queue name!"], ""),
        (vec!["render"], "not-a-token"),
        (vec!["render"], "r1.-5"),
    ];
    for (queues, token) in cases {
        let request = proto::WatchJobsRequest {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            labels: Default::default(),
            resume_token: token.into(),
        };
        let status = match jobs.watch_jobs(request).await {
            Ok(mut stream) => stream.get_mut().message().await.unwrap_err(),
            Err(status) => status,
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{queues:?} {token:?}");
    }
    assert_eq!(crate::bad_inputs::dbsize(&redis).await, before);
    // The server goes on serving.
    submit_job(&mut jobs, submit("render", "x")).await;
}

#[tokio::test]
async fn a_page_that_stops_reading_catches_up_with_every_job() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut stream = follow(&mut jobs, &["render"], "42", "").await;
    let (_, token) = snapshot(&mut stream).await;
    // Far more new jobs than a stream buffers while its page is not reading (2 KiB of labels
    // each, more than the HTTP/2 windows hold): the hub cuts it loose, and it reads the queue
    // again.
    let padded = || {
        let mut request = labelled("render", "42");
        for i in 0..8 {
            request.labels.insert(format!("pad{i}"), "x".repeat(256));
        }
        request
    };
    let mut ids = Vec::new();
    for _ in 0..25 {
        let batch = proto::SubmitJobsRequest {
            jobs: (0..200).map(|_| padded()).collect(),
        };
        let results = jobs.submit_jobs(batch).await.unwrap().into_inner().results;
        ids.extend(results.into_iter().map(|r| r.job.unwrap().id));
    }
    let mut page = Page {
        token,
        ..Page::default()
    };
    page.until(&mut stream, "every job", |p| {
        ids.iter().all(|id| p.jobs.contains_key(id))
    })
    .await;
    assert!(
        ids.iter()
            .all(|id| page.state(id) == Some(JobState::Queued as i32))
    );
}
