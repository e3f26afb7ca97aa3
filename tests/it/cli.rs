//! What the `conveyor` CLI shows a person: `watch` says why a job waits, as that changes.

use std::process::Stdio;

use conveyor::proto;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStderr;

use crate::harness::{self, DEADLINE, Worker, submit, submit_job};

/// Reads lines until one contains `needle`; all lines read so far otherwise fail the test.
async fn until(lines: &mut Lines<BufReader<ChildStderr>>, needle: &str, seen: &mut Vec<String>) {
    let found = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert!(found == Ok(true), "{needle:?} not in {seen:#?}");
}

#[tokio::test]
async fn watch_says_why_a_job_waits_and_when_that_changes() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "{}")).await;
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["watch", "--addr", &server.addr, &job.id])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    until(&mut lines, "waiting: waiting for a worker", &mut seen).await;
    let pause = |queue: &str| proto::PauseQueueRequest {
        queue: queue.into(),
    };
    jobs.pause_queue(pause("render")).await.unwrap();
    until(&mut lines, "waiting: queue paused", &mut seen).await;
    let resume = proto::ResumeQueueRequest {
        queue: "render".into(),
    };
    jobs.resume_queue(resume).await.unwrap();
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let a = worker.assignment().await;
    worker.complete(&job.id, a.token, "{}").await;
    until(&mut lines, "SUCCEEDED", &mut seen).await;
    assert!(watch.wait().await.unwrap().success());
}

/// `conveyor dev` names the address it really listens on and the dashboard's URL, and a fresh
/// start beside an empty history is not reported as a Redis that lost its data.
#[tokio::test]
async fn dev_says_where_it_listens_and_where_the_dashboard_is() {
    let data = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", harness::free_port());
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["dev", "--listen", &address])
        .env("CONVEYOR_DATA_DIR", data.path())
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    until(&mut lines, "serving", &mut seen).await;
    let said = seen.join("\n");
    assert!(
        said.contains(&format!("anyone who reaches {address} ")),
        "{said}"
    );
    assert!(
        said.contains(&format!("http://{address}/dashboard/")),
        "{said}"
    );
    assert!(!said.contains("lost its data"), "{said}");
    dev.start_kill().unwrap();
}

/// The README's first command: `conveyor demo` runs a job to its result on its own private
/// Redis and server, and says where the server it warns about really listens.
#[tokio::test]
async fn the_demo_runs_a_job_to_its_result() {
    let data = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .arg("demo")
        .env("CONVEYOR_DATA_DIR", data.path())
        .env("NO_COLOR", "1")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the demo ends")
        .unwrap();
    let (said, result) = (
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
    );
    assert!(out.status.success(), "{said}");
    assert!(result.contains(r#""frames":20"#), "{result}");
    let server = said
        .split("server at http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the demo names its server: {said}"));
    assert!(
        said.contains(&format!("anyone who reaches {server} ")),
        "{said}"
    );
}

/// `conveyor watch --after-seq N` of a job whose last event was N: the server has nothing more to
/// send, and the watch says how the job ended and exits with it, at once.
#[tokio::test]
async fn watch_after_the_last_event_of_an_ended_job_ends_at_once() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "{}")).await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let a = worker.assignment().await;
    worker.complete(&job.id, a.token, r#"{"ok":1}"#).await;
    let events = harness::watch_all(&mut jobs, &job.id, None).await;
    let last = events.iter().map(|e| e.seq).max().unwrap();
    let watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args([
            "watch",
            "--addr",
            &server.addr,
            "--after-seq",
            &last.to_string(),
            &job.id,
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, watch)
        .await
        .expect("it ends")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#"{"ok":1}"#));
}
