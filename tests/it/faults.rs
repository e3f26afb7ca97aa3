//! Faults a job must survive without being lost or run twice at once: a worker frozen while its
//! job finishes, then back within the grace period.

use std::process::Stdio;
use std::time::Duration;

use conveyor::proto::{self, JobState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;

use crate::harness::{self, Redis, Server, eventually, get, submit, submit_job, wait_state};

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
