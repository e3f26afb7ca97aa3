//! A worker that takes no more jobs (shutting down, or unable to start its command) says so,
//! gets none, and hands back any assignment still on its way without costing the job an
//! attempt; a shutting-down worker keeps its shutdown timeout across reconnects.

use std::process::Stdio;
use std::time::Duration;

use conveyor::proto::{self, JobState, connect_request::Msg as WorkerMsg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::time::Instant;
use tonic::Code;

use crate::harness::{self, Server, Worker, get, submit, submit_job, wait_state};

const BIN: &str = env!("CARGO_BIN_EXE_conveyor");

/// One attempt only: a job that lost it would end FAILED.
fn once(queue: &str) -> proto::SubmitJobRequest {
    let mut r = submit(queue, "{}");
    r.max_attempts = Some(1);
    r
}

#[tokio::test]
async fn a_declined_assignment_goes_back_without_costing_an_attempt() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut first = Worker::connect(&server, &["render"], 2).await;
    let job = submit_job(&mut jobs, once("render")).await;
    let a = first.assignment().await;
    first
        .send(WorkerMsg::Stopping(proto::Stopping {
            reason: "shutting down".into(),
        }))
        .await;
    first
        .send(WorkerMsg::Decline(proto::Decline {
            job_id: job.id.clone(),
            token: a.token,
            reason: "shutting down".into(),
        }))
        .await;
    assert_eq!(first.report_result().await.code, Code::Ok as i32);
    let back = get(&mut jobs, &job.id).await;
    assert_eq!((back.state, back.attempt), (JobState::Queued as i32, 0));
    // The stopping worker, with two free slots, is offered nothing; another takes the job as
    // its first attempt.
    assert!(
        first
            .assignments(Duration::from_millis(500))
            .await
            .is_empty()
    );
    let mut second = Worker::connect(&server, &["render"], 1).await;
    let a = second.assignment().await;
    assert_eq!(a.attempt, 1);
    second.complete(&job.id, a.token, "ok").await;
    wait_state(&mut jobs, &job.id, JobState::Succeeded).await;
    // A decline with a stale token changes nothing.
    first
        .send(WorkerMsg::Decline(proto::Decline {
            job_id: job.id.clone(),
            token: a.token,
            reason: "late".into(),
        }))
        .await;
    assert_eq!(
        first.report_result().await.code,
        Code::FailedPrecondition as i32
    );
    assert_eq!(
        get(&mut jobs, &job.id).await.state,
        JobState::Succeeded as i32
    );
}

#[tokio::test]
async fn a_worker_that_says_hello_stopping_gets_no_jobs() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut hello = harness::hello(&["render"], 4, "leaving");
    hello.stopping = true;
    let mut leaving = Worker::connect_with(&server, hello).await;
    let job = submit_job(&mut jobs, once("render")).await;
    assert!(
        leaving
            .assignments(Duration::from_millis(500))
            .await
            .is_empty()
    );
    assert_eq!(get(&mut jobs, &job.id).await.state, JobState::Queued as i32);
}

/// SIGTERM with two jobs running, then the server restarts: the worker reconnects only to
/// report, takes no new job, and stops its jobs when its shutdown timeout (counted from the
/// SIGTERM) runs out, not minutes later.
#[tokio::test]
async fn a_shutting_down_worker_takes_no_jobs_and_keeps_its_timeout_across_a_reconnect() {
    harness::logs();
    let redis = harness::Redis::start().await;
    let config = harness::config(&redis);
    let server = Server::start(config.clone()).await;
    let mut jobs = server.jobs().await;
    let mut worker = Command::new(BIN)
        .args(["worker", "--addr", &server.addr, "--queue", "render"])
        .args(["--concurrency", "3", "--shutdown-timeout", "3s"])
        .args([
            "--",
            "sh",
            "-c",
            "echo 'PROGRESS 1 working'; exec sleep 600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let held = [
        submit_job(&mut jobs, submit("render", "{}")).await,
        submit_job(&mut jobs, submit("render", "{}")).await,
    ];
    for job in &held {
        wait_state(&mut jobs, &job.id, JobState::Running).await;
    }
    kill(Pid::from_raw(worker.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let asked = Instant::now();
    let addr = server.addr.trim_start_matches("http://").to_string();
    server.stop().await;
    let server = Server::start_at(config, &addr).await;
    let mut jobs = server.jobs().await;
    let new = submit_job(&mut jobs, once("render")).await;
    let status = tokio::time::timeout(harness::DEADLINE, worker.wait())
        .await
        .expect("the worker stops")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "stopped {:?} after SIGTERM, with a 3 s timeout",
        asked.elapsed()
    );
    let new = get(&mut jobs, &new.id).await;
    assert_eq!((new.state, new.attempt), (JobState::Queued as i32, 0));
}

/// A worker whose command does not exist says so at start; one whose command goes away while it
/// runs hands the job back (no attempt lost), takes no more, and exits with the reason.
#[tokio::test]
async fn a_worker_that_cannot_start_its_command_says_so_and_fails_no_job() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let out = Command::new(BIN)
        .args(["worker", "--addr", &server.addr, "--queue", "render"])
        .args(["--", "/nonexistent/cmd"])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("/nonexistent/cmd"),
        "{said}"
    );

    let dir = tempfile::tempdir().unwrap();
    let command = dir.path().join("render.sh");
    std::fs::write(&command, "#!/bin/sh\necho 'RESULT {}'\n").unwrap();
    std::fs::set_permissions(
        &command,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let worker = Command::new(BIN)
        .args(["worker", "--addr", &server.addr, "--queue", "render"])
        .arg("--")
        .arg(&command)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let first = submit_job(&mut jobs, once("render")).await;
    wait_state(&mut jobs, &first.id, JobState::Succeeded).await;
    std::fs::remove_file(&command).unwrap();
    let job = submit_job(&mut jobs, once("render")).await;
    let out = tokio::time::timeout(harness::DEADLINE, worker.wait_with_output())
        .await
        .expect("the worker exits")
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("could not start"), "{said}");
    let job = get(&mut jobs, &job.id).await;
    assert_eq!((job.state, job.attempt), (JobState::Queued as i32, 0));
}
