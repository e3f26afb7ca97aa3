//! Running it: the HTTP port's metrics and probes, the gRPC health service, and a drain.

use std::time::Duration;

use conveyor::proto::connect_response::Msg as ServerMsg;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::harness::{self, Redis, Server, Worker, eventually, free_port, submit, submit_job};

/// A server with its HTTP port on; the port's base URL.
async fn serving(redis: &Redis) -> (Server, String) {
    let mut config = harness::config(redis);
    let port = free_port();
    config.http_listen = Some(format!("127.0.0.1:{port}"));
    let server = Server::start(config).await;
    // The server binds it once it has connected to Redis.
    let base = format!("http://127.0.0.1:{port}");
    let healthz = format!("{base}/healthz");
    eventually("the HTTP port to listen", || {
        let healthz = healthz.clone();
        async move {
            let answer = crate::artifacts::http().get(healthz).send().await;
            answer.ok().map(|_| ())
        }
    })
    .await;
    (server, base)
}

async fn get(url: &str) -> (u16, String) {
    let response = crate::artifacts::http()
        .get(url)
        .send()
        .await
        .expect("the HTTP port answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of the metric line that starts with `series` (name and labels, as rendered).
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn grpc_health(server: &Server, service: &str) -> ServingStatus {
    let mut health = HealthClient::new(server.channel().await);
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let status = health.check(request).await.unwrap().into_inner().status;
    ServingStatus::try_from(status).unwrap()
}

#[tokio::test]
async fn counters_move_as_a_job_runs_and_probes_answer() {
    harness::logs();
    let redis = Redis::start().await;
    let (server, http) = serving(&redis).await;
    assert_eq!(get(&format!("{http}/healthz")).await.0, 200);
    assert_eq!(
        get(&format!("{http}/readyz")).await,
        (200, "ready\n".into())
    );
    for service in ["", "conveyor.v1.JobService", "conveyor.v1.WorkerService"] {
        assert_eq!(grpc_health(&server, service).await, ServingStatus::Serving);
    }

    // A queue of this test's own: the registry is the process's, shared with other tests.
    let queue = "metered-render";
    let mut jobs = server.jobs().await;
    let mut worker = Worker::connect(&server, &[queue], 1).await;
    let mut premium = submit(queue, "x");
    premium.tier = conveyor::proto::Tier::Premium as i32;
    let job = submit_job(&mut jobs, premium).await;
    let lease = worker.assignment().await;
    let done = worker.complete(&job.id, lease.token, "ok").await;
    assert_eq!(done.code, 0);
    // Two more: the worker's one slot takes the first, the second waits in line.
    let first = submit_job(&mut jobs, submit(queue, "y")).await;
    submit_job(&mut jobs, submit(queue, "z")).await;
    assert_eq!(worker.assignment().await.job.unwrap().id, first.id);

    let (status, text) = get(&format!("{http}/metrics")).await;
    assert_eq!(status, 200);
    let q = format!("queue=\"{queue}\"");
    let series = |name: &str, labels: &str| format!("conveyor_{name}{{{labels}}}");
    let at = |name: &str, labels: &str| value(&text, &series(name, labels));
    assert_eq!(
        at("jobs_submitted_total", &format!("{q},tier=\"premium\"")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        at("jobs_submitted_total", &format!("{q},tier=\"free\"")),
        Some(2.0)
    );
    assert_eq!(
        at("jobs_started_total", &format!("{q},tier=\"premium\"")),
        Some(1.0)
    );
    assert_eq!(
        at(
            "jobs_finished_total",
            &format!("{q},tier=\"premium\",outcome=\"succeeded\"")
        ),
        Some(1.0)
    );
    assert_eq!(
        at(
            "submit_to_start_seconds_count",
            &format!("{q},tier=\"premium\"")
        ),
        Some(1.0)
    );
    assert_eq!(at("lease_to_start_seconds_count", &q), Some(2.0));
    assert_eq!(at("queue_depth", &format!("{q},tier=\"free\"")), Some(1.0));
    assert_eq!(
        at("queue_depth", &format!("{q},tier=\"premium\"")),
        Some(0.0)
    );
    let waited = at("queue_oldest_wait_seconds", &format!("{q},tier=\"free\""));
    assert!(
        waited.is_some_and(|w| (0.0..60.0).contains(&w)),
        "{waited:?}"
    );
    assert!(
        value(&text, "conveyor_workers_connected") >= Some(1.0),
        "{text}"
    );
    assert!(
        value(&text, "conveyor_watchers{kind=\"job\"}").is_some(),
        "{text}"
    );
    assert!(
        at("redis_call_duration_seconds_count", "op=\"submit\"") >= Some(3.0),
        "{text}"
    );
    assert!(at("db_call_duration_seconds_count", "op=\"insert\"") >= Some(3.0));
}

/// `/metrics` for a scraper that asks for nothing in particular: the classic exposition, which
/// the classic parser (Python's prometheus_client, the reference one) reads with every counter
/// typed; for Prometheus, which asks, OpenMetrics. Both carry the process and build metrics.
#[tokio::test]
async fn metrics_speak_the_format_asked_for_with_process_and_build_metrics() {
    let redis = Redis::start().await;
    let (server, http) = serving(&redis).await;
    // Families with samples: the parser passes over empty ones.
    submit_job(&mut server.jobs().await, submit("formats", "x")).await;
    let url = format!("{http}/metrics");
    let plain = crate::artifacts::http().get(&url).send().await.unwrap();
    let kind = plain.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    let text = plain.text().await.unwrap();
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    // What the classic parser makes of it: family name -> type.
    let parse = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        for f in parse(sys.stdin.read()): print(f.name, f.type)";
    let mut python = std::process::Command::new(crate::tools::python())
        .args(["-c", parse])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    python
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success(), "{text}");
    let families = String::from_utf8(out.stdout).unwrap();
    for (name, kind) in [
        ("conveyor_jobs_submitted", "counter"),
        ("conveyor_redis_call_duration_seconds", "histogram"),
        ("conveyor_build_info", "gauge"),
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        let line = format!("{name} {kind}");
        assert!(
            families.lines().any(|l| l == line),
            "{line:?} in\n{families}"
        );
    }
    assert!(!families.contains(" unknown"), "{families}");
    let version = format!(
        "conveyor_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&version), "{text}");

    let asked = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let open = crate::artifacts::http()
        .get(&url)
        .header("accept", asked)
        .send()
        .await
        .unwrap();
    let kind = open.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = open.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE conveyor_jobs_submitted counter"),
        "{text}"
    );
    assert!(text.contains("process_cpu_seconds_total "), "{text}");
}

/// `CONVEYOR_LOG_FORMAT=json`: every line a server writes is one JSON object with a level and a
/// message, for log pipelines.
#[tokio::test]
async fn logs_can_be_json_lines() {
    let redis = Redis::start().await;
    let port = free_port();
    let serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .arg("serve")
        .env("CONVEYOR_LOG_FORMAT", "json")
        .env("CONVEYOR_INSECURE", "true")
        .env("CONVEYOR_HTTP_LISTEN", "off")
        .env("DATABASE_URL", "none")
        .env("REDIS_URL", redis.url())
        .env("CONVEYOR_LISTEN", format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    crate::process::answering(&format!("http://127.0.0.1:{port}")).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = serve.wait_with_output().await.unwrap();
    let said = String::from_utf8(out.stderr).unwrap();
    assert!(said.lines().count() >= 3, "{said}");
    for line in said.lines() {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["level"].is_string() && entry["message"].is_string(),
            "{line}"
        );
    }
    assert!(said.contains("AUTHENTICATION IS OFF"), "{said}");
}

#[tokio::test]
async fn readiness_follows_redis_and_drops_for_a_drain() {
    harness::logs();
    let mut redis = Redis::start().await;
    let (server, http) = serving(&redis).await;
    let readyz = format!("{http}/readyz");

    redis.kill().await;
    let why = eventually("readiness to drop with Redis", || async {
        let (status, body) = get(&readyz).await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(why.contains("Redis"), "{why}");
    assert_eq!(grpc_health(&server, "").await, ServingStatus::NotServing);
    // Liveness is not readiness: the process is fine, it waits for Redis.
    assert_eq!(get(&format!("{http}/healthz")).await.0, 200);

    redis.restart().await;
    eventually("readiness to come back", || async {
        (get(&readyz).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(grpc_health(&server, "").await, ServingStatus::Serving);

    // A drain (the pod's pre-stop hook): not ready, and the worker is told to move.
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let drained = crate::artifacts::http()
        .post(format!("{http}/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status().as_u16(), 200);
    assert_eq!(get(&readyz).await, (503, "draining\n".into()));
    assert_eq!(
        grpc_health(&server, "conveyor.v1.JobService").await,
        ServingStatus::NotServing
    );
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let ServerMsg::Drain(_) = worker.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(told.is_ok(), "the worker is told to drain");
}
