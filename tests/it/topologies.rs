//! Redis Cluster and Sentinel, for real: several redis-server processes on loopback, a server
//! given a `redis-cluster://` or `redis-sentinel://` URL, and jobs run, watched and chained
//! through them.

use std::process::Stdio;
use std::time::Duration;

use conveyor::proto::{self, JobState, job_event::Kind};
use tokio::process::{Child, Command};

use crate::harness::{self, Server, Worker, eventually, submit, submit_job, watch_all};

/// A loopback port whose cluster bus port (+10000) is usable too.
fn node_port() -> u16 {
    loop {
        let port = harness::free_port();
        if port < 50_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn redis_server(args: &[&str]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server must be installed")
}

async fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("redis-cli comes with redis-server");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn answers(port: u16) -> Option<()> {
    let pong = redis_cli(&["-p", &port.to_string(), "PING"]).await;
    pong.contains("PONG").then_some(())
}

/// Three masters sharing the 16,384 slots; the nodes die with the value.
struct Cluster {
    ports: Vec<u16>,
    _nodes: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| node_port()).collect();
        let mut nodes = Vec::new();
        for port in &ports {
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            nodes.push(redis_server(&[
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                conf.to_str().unwrap(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]));
        }
        for port in &ports {
            eventually("a cluster node to answer", || answers(*port)).await;
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(&create).await;
        for port in &ports {
            eventually("the cluster to be ok", || async {
                let info = redis_cli(&["-p", &port.to_string(), "CLUSTER", "INFO"]).await;
                info.contains("cluster_state:ok").then_some(())
            })
            .await;
        }
        Cluster {
            ports,
            _nodes: nodes,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        let others: Vec<String> = self.ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            self.ports[0],
            others.join("&")
        )
    }
}

/// Jobs in several queues (so several slots) run, a watcher sees one to its end, a page's
/// WatchJobs hears another, and a job waits for a dependency in another queue.
async fn runs_jobs_through(server: &Server) {
    let mut jobs = server.jobs().await;
    let queues = ["render", "upload", "mix"];
    let mut worker = Worker::connect(server, &queues, 10).await;

    let watched = submit_job(&mut jobs, submit("render", "watched")).await;
    let watcher = {
        let (mut jobs, id) = (jobs.clone(), watched.id.clone());
        tokio::spawn(async move { watch_all(&mut jobs, &id, None).await })
    };
    let follow = proto::WatchJobsRequest {
        queues: vec!["mix".into()],
        ..Default::default()
    };
    let mut page = jobs.watch_jobs(follow).await.unwrap().into_inner();
    assert!(page.message().await.unwrap().unwrap().synced);

    let mut ids = vec![watched.id.clone()];
    for queue in &queues[1..] {
        ids.push(submit_job(&mut jobs, submit(queue, "x")).await.id);
    }
    let mut waiting = submit("thumbnails", "after the upload");
    waiting.depends_on = vec![ids[1].clone()];
    let waiting = submit_job(&mut jobs, waiting).await;
    assert_eq!(waiting.state, JobState::Waiting as i32);
    ids.push(waiting.id.clone());

    let mut leases = Vec::new();
    while leases.len() < queues.len() {
        leases.push(worker.assignment().await);
    }
    for lease in &leases {
        let id = lease.job.clone().unwrap().id;
        worker.progress(lease, 50.0, "half").await;
        assert_eq!(
            worker.complete(&id, lease.token, "ok").await.code,
            0,
            "{id}"
        );
    }
    // The waiting job was let in line when its dependency, in another slot, succeeded.
    let mut thumbnails = Worker::connect(server, &["thumbnails"], 1).await;
    let lease = thumbnails.assignment().await;
    assert_eq!(lease.job.clone().unwrap().id, waiting.id);
    let done = thumbnails.complete(&waiting.id, lease.token, "ok").await;
    assert_eq!(done.code, 0);
    let events = watcher.await.unwrap();
    assert!(events.iter().any(|e| e.kind == Kind::Progress as i32));
    assert_eq!(events.last().unwrap().state, JobState::Succeeded as i32);
    let mix = &ids[2];
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let r = page.message().await.unwrap().unwrap();
            let e = r.event.unwrap();
            if e.job_id == *mix && e.state == JobState::Succeeded as i32 {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "the page heard the mix job end");
    for id in &ids {
        harness::wait_state(&mut jobs, id, JobState::Succeeded).await;
    }
}

#[tokio::test]
async fn a_server_runs_on_a_redis_cluster_of_three_masters() {
    harness::logs();
    let cluster = Cluster::start().await;
    let mut config = harness::config(&harness::Redis::start().await);
    config.redis_url = Some(cluster.url());
    let server = Server::start(config).await;
    runs_jobs_through(&server).await;
}

impl Cluster {
    /// The port of the master that holds `key`.
    async fn owner(&self, key: &str) -> u16 {
        for port in &self.ports {
            let reply = redis_cli(&["-p", &port.to_string(), "EXISTS", key]).await;
            if !reply.contains("MOVED") {
                return *port;
            }
        }
        panic!("no master holds {key}");
    }
}

/// One master of a cluster loses its data (FLUSHALL) while another holds the reconciler's
/// marker: the jobs of a queue on the flushed master come back from the database as soon as a
/// submit meets the queue, and all of them run. Before, the submit made the queue anew, its
/// waiting jobs were in the database only, and only the repair (5 minutes) brought them back.
#[tokio::test]
async fn a_cluster_shard_that_lost_its_data_gets_its_queues_back() {
    harness::logs();
    let cluster = Cluster::start().await;
    let mut config = harness::config(&harness::Redis::start().await);
    config.redis_url = Some(cluster.url());
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    let marker = cluster.owner("cv:marker").await;
    let mut queue = String::new();
    for i in 0.. {
        queue = format!("q{i}");
        if cluster.owner(&format!("cv:{{{queue}}}:ok")).await != marker {
            break;
        }
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            submit_job(&mut jobs, submit(&queue, &i.to_string()))
                .await
                .id,
        );
    }
    let shard = cluster.owner(&format!("cv:{{{queue}}}:ok")).await;
    redis_cli(&["-p", &shard.to_string(), "FLUSHALL"]).await;

    let mut late = submit(&queue, "5");
    late.idempotency_key = "late".into();
    let late = eventually("the submit to be taken once the queue is back", || {
        let (mut jobs, late) = (jobs.clone(), late.clone());
        async move { Some(jobs.submit_job(late).await.ok()?.into_inner().job?.id) }
    })
    .await;
    ids.push(late);
    let mut worker = Worker::connect(&server, &[&queue], 10).await;
    let _beating = worker.keep_alive();
    let mut leased: Vec<String> = worker
        .assignments(Duration::from_secs(2))
        .await
        .into_iter()
        .map(|a| a.job.unwrap().id)
        .collect();
    leased.sort();
    ids.sort();
    assert_eq!(leased, ids);
}

#[tokio::test]
async fn a_server_finds_its_redis_through_sentinel() {
    harness::logs();
    let dir = tempfile::tempdir().unwrap();
    let master = harness::Redis::start().await;
    let sentinel_port = harness::free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "bind 127.0.0.1\nport {sentinel_port}\nsentinel monitor conveyor 127.0.0.1 {} 1\n",
            master.port
        ),
    )
    .unwrap();
    let _sentinel = redis_server(&[conf.to_str().unwrap(), "--sentinel"]);
    eventually("the sentinel to know the master", || async {
        let reply = redis_cli(&[
            "-p",
            &sentinel_port.to_string(),
            "SENTINEL",
            "get-master-addr-by-name",
            "conveyor",
        ])
        .await;
        reply.contains(&master.port.to_string()).then_some(())
    })
    .await;
    let mut config = harness::config(&master);
    config.redis_url = Some(format!(
        "redis-sentinel://127.0.0.1:{sentinel_port}/0?sentinelServiceName=conveyor"
    ));
    let server = Server::start(config).await;
    runs_jobs_through(&server).await;
}

/// `rediss://`: the server speaks TLS to Redis and checks its certificate (against the system's
/// roots, or `SSL_CERT_FILE`); a Redis whose certificate it cannot trust is refused.
#[tokio::test]
async fn a_server_reaches_redis_over_tls_and_checks_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::tls::ca("redis test CA");
    let (cert, key) = crate::tls::leaf(&ca, "localhost", &["localhost"]);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (ca_file, cert_file, key_file) = (
        write("ca.pem", &ca.pem),
        write("redis.pem", &cert),
        write("redis.key", &key),
    );
    let tls_port = harness::free_port();
    let _redis = redis_server(&[
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &cert_file,
        "--tls-key-file",
        &key_file,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "no",
        "--save",
        "",
    ]);
    eventually("the TLS port to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let serve = |trust: Option<&str>| {
        let port = harness::free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_conveyor"));
        command
            .arg("serve")
            .env("CONVEYOR_INSECURE", "true")
            .env("REDIS_URL", format!("rediss://localhost:{tls_port}"))
            .env("DATABASE_URL", "none")
            .env("CONVEYOR_LISTEN", format!("127.0.0.1:{port}"))
            .env("CONVEYOR_HTTP_LISTEN", "off")
            .env("CONVEYOR_REDIS_TIMEOUT", "2s")
            .env_remove("SSL_CERT_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(ca) = trust {
            command.env("SSL_CERT_FILE", ca);
        }
        (command.spawn().unwrap(), format!("http://127.0.0.1:{port}"))
    };

    let (_server, addr) = serve(Some(&ca_file));
    let mut jobs = crate::process::answering(&addr).await;
    let job = submit_job(&mut jobs, submit("render", "over tls")).await;
    assert_eq!(job.state, JobState::Queued as i32);

    // Without the CA, the certificate is not trusted: the server does not start.
    let (untrusting, _) = serve(None);
    let out = tokio::time::timeout(Duration::from_secs(30), untrusting.wait_with_output())
        .await
        .expect("it gives up")
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.to_lowercase().contains("certificate"), "{said}");
}
