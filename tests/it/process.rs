//! Real `conveyor` processes: `worker -- CMD` running shell commands, `submit --watch`, and a
//! worker killed with SIGKILL mid-job.

use std::process::Stdio;

use conveyor::proto::{self, JobState};
use tokio::process::{Child, Command};

use crate::harness::{self, Server, eventually, get, submit, submit_job, wait_state};

const BIN: &str = env!("CARGO_BIN_EXE_conveyor");

fn worker(addr: &str, id: &str, script: &str) -> Child {
    worker_with(addr, &["--worker-id", id], script)
}

/// A real `conveyor worker` on queue `render` with `options`, running `sh -c script` per job.
pub fn worker_with(addr: &str, options: &[&str], script: &str) -> Child {
    Command::new(BIN)
        .args(["worker", "--addr", addr, "--queue", "render"])
        .args(options)
        .args(["--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A client of the server process at `addr`, once its health service says it serves.
pub async fn answering(
    addr: &str,
) -> proto::job_service_client::JobServiceClient<tonic::transport::Channel> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    eventually("the server to answer", || async {
        let endpoint = tonic::transport::Endpoint::from_shared(addr.to_string()).ok()?;
        let channel = endpoint.connect().await.ok()?;
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest::default())
            .await
            .ok()?;
        (health.into_inner().status == 1)
            .then(|| proto::job_service_client::JobServiceClient::new(channel))
    })
    .await
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn a_job_whose_worker_is_killed_completes_on_another() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    // The first attempt reports progress until its stdout breaks (its worker died); later
    // attempts finish at once.
    let script = r#"if [ "$CONVEYOR_ATTEMPT" = 1 ]; then
        while echo "PROGRESS 10 start"; do sleep 0.1; done; exit 1
    fi
    echo "RESULT {\"attempt\":$CONVEYOR_ATTEMPT}""#;
    let job = submit_job(&mut jobs, submit("render", "{}")).await;
    let mut first = worker(&server.addr, "doomed", script);
    eventually("the first attempt to report progress", || {
        let mut jobs = jobs.clone();
        let id = job.id.clone();
        async move { (get(&mut jobs, &id).await.progress?.percent == 10.0).then_some(()) }
    })
    .await;
    first.start_kill().unwrap(); // SIGKILL: no goodbye, no drain
    first.wait().await.unwrap();
    let _second = worker(&server.addr, "survivor", script);
    let done = wait_state(&mut jobs, &job.id, JobState::Succeeded).await;
    assert_eq!(
        (done.attempt, done.result.as_str(), done.worker_id.as_str()),
        (2, r#"{"attempt":2}"#, "survivor")
    );
}

#[tokio::test]
async fn cancel_reaches_a_real_worker_and_kills_its_command() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!(
        "echo $$ > {}; echo 'PROGRESS 1 waiting'; exec sleep 600",
        pidfile.display()
    );
    let _worker = worker(&server.addr, "w", &script);
    let job = submit_job(&mut jobs, submit("render", "{}")).await;
    let pid: u32 = eventually("the command to start", || {
        let pidfile = pidfile.clone();
        async move { std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok() }
    })
    .await;
    assert!(alive(pid));
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: job.id.clone(),
    })
    .await
    .unwrap();
    eventually("the command to be killed", || async move {
        (!alive(pid)).then_some(())
    })
    .await;
    assert_eq!(
        get(&mut jobs, &job.id).await.state,
        JobState::Cancelled as i32
    );
}

#[tokio::test]
async fn submit_watch_follows_a_job_to_its_result_and_exit_codes_tell_the_outcome() {
    let (_redis, server) = harness::start().await;
    let script = r#"read payload
        if [ "$payload" = '"bad"' ]; then echo "FATAL no such video"; exit 1; fi
        sleep 0.5; echo "PROGRESS 50 encode half way"; sleep 0.2; echo "RESULT {\"echo\":$payload}""#;
    // The sleeps stand for work; they let `submit --watch` attach before the job is done (a
    // watcher that comes late gets the final snapshot without the progress lines).
    let _worker = worker(&server.addr, "w", script);
    let run = |payload: &str| {
        Command::new(BIN)
            .args([
                "submit",
                "--addr",
                &server.addr,
                "--queue",
                "render",
                "--watch",
                &format!("{payload}\n"),
            ])
            .output()
    };
    let ok = run("1").await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr),
    );
    assert_eq!(ok.status.code(), Some(0), "{stderr}");
    assert!(stdout.ends_with("{\"echo\":1}\n"), "{stdout}");
    assert!(stderr.contains("50.0%  encode  half way"), "{stderr}");
    assert!(stderr.contains("SUCCEEDED"), "{stderr}");

    let bad = run("\"bad\"").await.unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no such video"));

    let refused = Command::new(BIN)
        .args([
            "submit",
            "--addr",
            &server.addr,
            "--queue",
            "has space",
            "x",
        ])
        .output();
    let refused = refused.await.unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("queue"));
}

#[tokio::test]
async fn a_worker_keeps_its_running_job_across_a_server_restart() {
    harness::logs();
    let redis = harness::Redis::start().await;
    let server = Server::start(harness::config(&redis)).await;
    let addr = server.addr.trim_start_matches("http://").to_string();
    let mut jobs = server.jobs().await;
    let held = Held::new();
    let _worker = worker(&server.addr, "steady", &held.script());
    let job = submit_job(&mut jobs, submit("render", "{}")).await;
    wait_state(&mut jobs, &job.id, JobState::Running).await;
    let before = held.session(&redis, &job.id).await;

    server.stop().await; // the worker gets Drain and starts reconnecting
    let server = Server::start_at(harness::config(&redis), &addr).await;
    let mut jobs = server.jobs().await;
    held.carries_on(&redis, &mut jobs, &job.id, &before).await;
}

/// CI's guard that the benchmark keeps working; its figures are printed, not judged.
#[tokio::test]
async fn the_benchmark_smoke_run_reports_every_scenario() {
    let output = Command::new(BIN)
        .args(["bench", "--smoke"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let scenarios: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line per scenario"))
        .map(|v| v["scenario"].as_str().unwrap().to_string())
        .collect();
    for expected in [
        "submit_one_at_a_time",
        "submit_50_in_flight",
        "submit_batch_1000",
        "end_to_end",
        "end_to_end_mixed_tiers_priorities",
        "drain",
        "submit_to_worker_latency_ms",
        "progress_latency_ms",
        "watch_fanout",
        "redis_bytes_per_waiting_job",
        "idle_redis_commands_per_minute",
    ] {
        assert!(
            scenarios.iter().any(|s| s == expected),
            "{expected} missing: {stdout}"
        );
    }
}

#[tokio::test]
async fn migrate_and_cleanup_run_by_hand_and_serve_demands_a_database() {
    let url = harness::sqlite_url();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let migrated = run(&["migrate", "--database-url", &url]);
    assert!(migrated.status.success(), "{migrated:?}");
    assert_eq!(
        String::from_utf8_lossy(&migrated.stdout),
        "schema up to date\n"
    );
    let cleaned = run(&["cleanup", "--database-url", &url, "--older-than", "30d"]);
    assert!(cleaned.status.success(), "{cleaned:?}");
    assert_eq!(
        String::from_utf8_lossy(&cleaned.stdout),
        "deleted 0 finished jobs\n"
    );
    let bad = run(&["cleanup", "--database-url", &url, "--older-than", "soon"]);
    assert_eq!(bad.status.code(), Some(2));
    let serve = run(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!serve.status.success());
    assert!(String::from_utf8_lossy(&serve.stderr).contains("DATABASE_URL"));
}

#[tokio::test]
async fn what_a_killed_server_never_wrote_to_the_history_is_repaired() {
    harness::logs();
    let redis = harness::Redis::start().await;
    let url = harness::sqlite_url();
    let port = harness::free_port();
    let addr = format!("http://127.0.0.1:{port}");
    // A server whose history writer would wait an hour before writing.
    let mut server = Command::new(BIN)
        .arg("serve")
        .env("CONVEYOR_INSECURE", "true")
        .env("CONVEYOR_HTTP_LISTEN", "off")
        .env("REDIS_URL", redis.url())
        .env("DATABASE_URL", &url)
        .env("CONVEYOR_LISTEN", format!("127.0.0.1:{port}"))
        .env("CONVEYOR_HISTORY_FLUSH", "1h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut jobs = answering(&addr).await;
    let job = submit_job(&mut jobs, submit("render", "{}")).await;
    let _worker = worker(&addr, "w", r#"echo 'RESULT {"ok":1}'"#);
    wait_state(&mut jobs, &job.id, JobState::Succeeded).await;
    server.kill().await.unwrap(); // SIGKILL: no flush

    let store = conveyor::history::Store::open(&url, Default::default())
        .await
        .unwrap();
    let row = store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(row.state, "QUEUED", "the killed server never wrote the run");

    let mut config = harness::config(&redis);
    config.database_url = Some(url);
    config.history_repair = std::time::Duration::from_millis(300);
    let _repairer = Server::start(config).await;
    let row = eventually("the row to catch up with Redis", || async {
        let row = store.get(&job.id).await.unwrap()?;
        (row.state == "SUCCEEDED").then_some(row)
    })
    .await;
    assert_eq!((row.result.as_str(), row.attempt), (r#"{"ok":1}"#, 1));
    let attempts = store.attempts(&job.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_deref(), Some("SUCCEEDED"));
}

/// The security workflow with the real binary: `serve` refuses without credentials, `keys
/// create` makes a client key and a worker token, `submit --key` and `worker --key` use them, and
/// `keys revoke` shuts the key out.
#[tokio::test]
async fn keys_made_with_the_cli_admit_a_client_and_a_worker_until_revoked() {
    harness::logs();
    let redis = harness::Redis::start().await;
    let url = harness::sqlite_url();
    let env = |c: &mut Command| {
        c.env("DATABASE_URL", &url)
            .env("REDIS_URL", redis.url())
            .env_remove("CONVEYOR_KEY")
            .env_remove("CONVEYOR_INSECURE");
    };
    let cli = |args: &[&str]| {
        let mut c = Command::new(BIN);
        env(&mut c);
        c.args(args).output()
    };
    let refused = cli(&["serve", "--listen", "127.0.0.1:0"]).await.unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("conveyor keys create"), "{stderr}");

    let made = cli(&["keys", "create", "--tenant", "acme", "--name", "backend"])
        .await
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let key = String::from_utf8(made.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("cvk_"), "{key}");
    let args = [
        "keys", "create", "--tenant", "ops", "--worker", "--queues", "render",
    ];
    let made = cli(&args).await.unwrap();
    let token = String::from_utf8(made.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("cvw_"), "{token}");
    let listed = cli(&["keys", "list"]).await.unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("acme") && listed.contains("render") && listed.contains("active"));
    let secret = key.rsplit('_').next().unwrap();
    assert!(!listed.contains(secret), "list shows a secret:\n{listed}");

    let port = harness::free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let mut serve = Command::new(BIN);
    env(&mut serve);
    let _server = serve
        .arg("serve")
        .env("CONVEYOR_LISTEN", format!("127.0.0.1:{port}"))
        .env("CONVEYOR_HTTP_LISTEN", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut worker = Command::new(BIN);
    let _worker = worker
        .args([
            "worker", "--addr", &addr, "--queue", "render", "--key", &token, "--",
        ])
        .args(["sh", "-c", r#"echo 'RESULT {"ok":1}'"#])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let submit = |key: String| {
        let addr = addr.clone();
        async move {
            Command::new(BIN)
                .args([
                    "submit", "--addr", &addr, "--key", &key, "--queue", "render", "{}",
                ])
                .arg("--watch")
                .output()
                .await
                .unwrap()
        }
    };
    let done = eventually("a submit with the key to succeed", || {
        let submit = submit(key.clone());
        async move { Some(submit.await).filter(|o| o.status.success()) }
    })
    .await;
    assert!(
        String::from_utf8_lossy(&done.stderr).contains("SUCCEEDED"),
        "{done:?}"
    );
    let as_worker = submit(token.clone()).await;
    assert_eq!(as_worker.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&as_worker.stderr).contains("PermissionDenied"));

    let id = key.split('_').nth(1).unwrap();
    let revoked = cli(&["keys", "revoke", id]).await.unwrap();
    assert!(revoked.status.success(), "{revoked:?}");
    let after = submit(key.clone()).await;
    assert_eq!(after.status.code(), Some(2), "{after:?}");
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("Unauthenticated"),
        "{after:?}"
    );
    let listed = cli(&["keys", "list", "--tenant", "acme"]).await.unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("revoked"));
}

/// The README's video pipeline with the real binary, as a new user runs it: `conveyor dev`
/// (private Redis, SQLite and S3-compatible store under its data folder), a worker running
/// `examples/render-video.sh`, `submit --input --watch`, then `get --download`.
#[tokio::test]
async fn the_readme_video_pipeline_runs_end_to_end() {
    harness::logs();
    let data = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let dev = |c: &mut Command| {
        c.env("CONVEYOR_DATA_DIR", data.path())
            .env("CONVEYOR_ADDR", &addr)
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("CONVEYOR_S3_BUCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
    };
    let mut server = Command::new(BIN);
    dev(server.args(["dev", "--listen", &format!("127.0.0.1:{port}")]));
    let _server = server
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/render-video.sh");
    let mut worker = Command::new(BIN);
    dev(worker.args(["worker", "--queue", "render", "--", "sh", script]));
    let _worker = worker
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let clip = data.path().join("clip.mov");
    std::fs::write(&clip, "raw footage\n").unwrap();

    let submit = eventually("the server to take the submit", || async {
        let mut c = Command::new(BIN);
        dev(c.args([
            "submit", "--queue", "render", "--tier", "premium", "--input",
        ]));
        let out = c
            .arg(&clip)
            .args(["--watch", r#"{"title":"Weather for Lisbon"}"#])
            .output()
            .await
            .unwrap();
        out.status.success().then_some(out)
    })
    .await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&submit.stdout),
        String::from_utf8_lossy(&submit.stderr)
    );
    assert!(said.contains("artifact video.mp4"), "{said}");
    assert!(said.contains("upload"), "the upload stage shows: {said}");
    let id = said
        .split_whitespace()
        .skip_while(|w| *w != "get")
        .nth(1)
        .expect("the fetch hint names the job")
        .to_string();

    let into = data.path().join("out");
    let mut get = Command::new(BIN);
    dev(get.args(["get", &id, "--download"]).arg(&into));
    let got = get.output().await.unwrap();
    assert!(got.status.success(), "{got:?}");
    let video = std::fs::read_to_string(into.join("video.mp4")).unwrap();
    assert!(
        video.contains("Weather for Lisbon") && video.contains("raw footage"),
        "{video}"
    );
    assert!(into.join("thumbnail.png").exists());
}

/// A job command held running (reporting progress) until the test lets it finish; it answers
/// with its attempt number.
pub struct Held {
    dir: tempfile::TempDir,
}

impl Held {
    pub fn new() -> Held {
        Held {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn script(&self) -> String {
        format!(
            "while [ ! -e {go} ]; do echo 'PROGRESS 10 waiting'; sleep 0.1; done; echo 'RESULT {{\"attempt\":'$CONVEYOR_ATTEMPT'}}'",
            go = self.dir.path().join("go").display()
        )
    }

    /// The worker session the job's lease belongs to now.
    pub async fn session(&self, redis: &harness::Redis, job_id: &str) -> String {
        let key = format!("cv:{{render}}:job:{job_id}");
        let session = redis.command(&["HGET", &key, "session"]).await;
        session.unwrap_or_default()
    }

    /// Waits for the job's lease to move to another session than `before` (the worker
    /// re-attached it), lets the command finish, and checks the same attempt carried on.
    pub async fn carries_on(
        &self,
        redis: &harness::Redis,
        jobs: &mut proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
        job_id: &str,
        before: &str,
    ) {
        eventually("the worker to re-attach its running job", || async {
            let now = self.session(redis, job_id).await;
            (now != before && now.len() > 8).then_some(())
        })
        .await;
        std::fs::write(self.dir.path().join("go"), "").unwrap();
        let done = wait_state(jobs, job_id, JobState::Succeeded).await;
        assert_eq!(
            (done.attempt, done.result.as_str()),
            (1, r#"{"attempt":1}"#),
            "the same attempt carried on"
        );
    }
}

/// A `conveyor serve` replica on `port`, on `redis` and the database at `url`.
pub fn replica(redis: &harness::Redis, url: &str, port: u16) -> Child {
    replica_with(&redis.url(), url, port, &[], Stdio::null())
}

/// A replica with more settings (`env`), its log written to `log`.
pub fn replica_with(
    redis_url: &str,
    url: &str,
    port: u16,
    env: &[(&str, &str)],
    log: impl Into<Stdio>,
) -> Child {
    Command::new(BIN)
        .arg("serve")
        .env("CONVEYOR_INSECURE", "true")
        .env("REDIS_URL", redis_url)
        .env("DATABASE_URL", url)
        .env("CONVEYOR_LISTEN", format!("127.0.0.1:{port}"))
        .env("CONVEYOR_HTTP_LISTEN", "off")
        .env("CONVEYOR_SHUTDOWN_TIMEOUT", "5s")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A load balancer in front of replicas, as a Service is: each connection goes to the first
/// backend that accepts it.
async fn balancer(backends: Vec<u16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for backend in backends {
                    let to = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await;
                    if let Ok(mut outbound) = to {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A rolling update: two `conveyor serve` replicas behind a balancer, a real worker running a
/// job on the first. SIGTERM to that replica: it stops taking connections, tells the worker
/// to drain and exits within its shutdown timeout; the worker moves to the other replica with
/// the job still running, and the same attempt finishes there. No job is lost.
#[tokio::test]
async fn sigterm_moves_a_running_jobs_worker_to_the_other_replica() {
    harness::logs();
    let redis = harness::Redis::start().await;
    let url = harness::sqlite_url();
    let ports = [harness::free_port(), harness::free_port()];
    let replica = |port: u16| replica(&redis, &url, port);
    let mut first = replica(ports[0]);
    let mut jobs = answering(&format!("http://127.0.0.1:{}", ports[0])).await;
    let _second = replica(ports[1]);
    answering(&format!("http://127.0.0.1:{}", ports[1])).await;
    let balanced = format!("http://127.0.0.1:{}", balancer(ports.to_vec()).await);

    let held = Held::new();
    let _worker = worker(&balanced, "rolling", &held.script());
    let job = submit_job(&mut jobs, submit("render", "{}")).await;
    wait_state(&mut jobs, &job.id, JobState::Running).await;
    let before = held.session(&redis, &job.id).await;

    let pid = nix::unistd::Pid::from_raw(first.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let exited = tokio::time::timeout(std::time::Duration::from_secs(15), first.wait()).await;
    let status = exited
        .expect("the replica exits within its shutdown timeout")
        .unwrap();
    assert!(status.success(), "{status}");

    let mut jobs = answering(&format!("http://127.0.0.1:{}", ports[1])).await;
    held.carries_on(&redis, &mut jobs, &job.id, &before).await;
}
