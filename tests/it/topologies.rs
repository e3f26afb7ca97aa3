//! Redis Cluster and Sentinel, for real: several redis-server processes on loopback, a server
//! given a `redis-cluster://` or `redis-sentinel://` URL, and jobs run, watched and chained
//! through them.

use std::process::Stdio;
use std::time::Duration;

use conveyor::proto::{self, JobState, job_event::Kind};
use tokio::process::Command;

use conveyor::proto::connect_request::Msg as WorkerMsg;
use conveyor::proto::connect_response::Msg as ServerMsg;

use crate::harness::{self, Server, Worker, eventually, submit, submit_job, watch_all};
use crate::redis_groups::{Cluster, redis_cli, redis_server};

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
    let server = Server::start(harness::config_for(cluster.url())).await;
    runs_jobs_through(&server).await;
}

/// One master of a cluster loses its data (FLUSHALL) while another holds the reconciler's
/// marker: the jobs of a queue on the flushed master come back from the database as soon as a
/// submit meets the queue, and all of them run. Before, the submit made the queue anew, its
/// waiting jobs were in the database only, and only the repair (5 minutes) brought them back.
#[tokio::test]
async fn a_cluster_shard_that_lost_its_data_gets_its_queues_back() {
    harness::logs();
    let cluster = Cluster::start().await;
    let server = Server::start(harness::config_for(cluster.url())).await;
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

/// A queue's slot moves to another master and back (key by key, slowly) while jobs are
/// submitted and run: every job runs once, and the server keeps serving once the slot has
/// settled. Before, a script that met a key already moved failed halfway, keeping its first
/// writes (a job in the database and half in Redis), and a redirect that ran out of attempts
/// ended the Redis client's connection task, after which every call timed out for good.
#[tokio::test]
async fn a_slot_moving_under_load_costs_seconds_and_leaves_no_script_half_done() {
    harness::logs();
    let cluster = Cluster::start().await;
    let server = Server::start(harness::config_for(cluster.url())).await;
    let queue = "moving";
    let slot = redis_cli(&[
        "-p",
        &cluster.ports[0].to_string(),
        "CLUSTER",
        "KEYSLOT",
        "{moving}",
    ])
    .await
    .trim()
    .to_string();
    let home = cluster.owner(&format!("cv:{{{queue}}}:ok")).await;
    let away = *cluster.ports.iter().find(|p| **p != home).unwrap();

    const JOBS: usize = 300;
    let submitting = {
        let mut jobs = server.jobs().await;
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..JOBS {
                let mut job = submit(queue, &i.to_string());
                job.idempotency_key = format!("job-{i}");
                // A refused submit changed nothing; the same key makes its retry safe.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                let id = loop {
                    match jobs.submit_job(job.clone()).await {
                        Ok(reply) => break reply.into_inner().job.unwrap().id,
                        Err(e) if std::time::Instant::now() < deadline => {
                            tracing::info!("submit {i} refused: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("submit {i} still refused after 30 s: {e}"),
                    }
                };
                ids.push(id);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            ids
        })
    };
    let mut worker = Worker::connect(&server, &[queue], 20).await;
    let _beating = worker.keep_alive();
    let working = tokio::spawn(async move {
        let mut leased: std::collections::HashMap<String, usize> = Default::default();
        let mut succeeded = 0;
        while succeeded < JOBS {
            match worker.recv().await {
                ServerMsg::Assignment(a) => {
                    let id = a.job.unwrap().id;
                    *leased.entry(id.clone()).or_default() += 1;
                    let done = proto::Complete {
                        job_id: id,
                        token: a.token,
                        result: "ok".into(),
                        ..Default::default()
                    };
                    worker.send(WorkerMsg::Complete(done)).await;
                }
                ServerMsg::ReportResult(r) if r.code == 0 => succeeded += 1,
                ServerMsg::ReportResult(r) => tracing::info!("result refused: {r:?}"),
                _ => {}
            }
        }
        leased
    });

    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster
        .move_slot(&slot, home, away, Duration::from_millis(20))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster
        .move_slot(&slot, away, home, Duration::from_millis(20))
        .await;

    let ids = submitting.await.unwrap();
    let leased = tokio::time::timeout(Duration::from_secs(60), working)
        .await
        .expect("every job ran within a minute of the last submit")
        .unwrap();
    let mut jobs = server.jobs().await;
    for id in &ids {
        assert_eq!(
            harness::get(&mut jobs, id).await.state,
            JobState::Succeeded as i32,
            "{id}"
        );
        assert_eq!(leased.get(id), Some(&1), "{id} ran once");
    }
    // The server still serves at once.
    let late = tokio::time::timeout(
        Duration::from_secs(2),
        jobs.submit_job(submit(queue, "late")),
    )
    .await;
    assert!(matches!(late, Ok(Ok(_))), "{late:?}");
}

/// While a queue's slot is marked as moving (nothing moved yet), a submit waits instead of
/// running its script: before, the script bumped the queue's counter, then failed on the new
/// job's key (not here, so "non local"), keeping the bump, and the client was refused. Once the
/// slot is stable again the submit goes through, once.
#[tokio::test]
async fn a_script_waits_for_its_slot_to_settle_instead_of_failing_halfway() {
    harness::logs();
    let cluster = Cluster::start().await;
    let server = Server::start(harness::config_for(cluster.url())).await;
    let mut jobs = server.jobs().await;
    let queue = "settling";
    submit_job(&mut jobs, submit(queue, "first")).await;
    let seq = format!("cv:{{{queue}}}:seq");
    let home = cluster.owner(&seq).await;
    let away = *cluster.ports.iter().find(|p| **p != home).unwrap();
    let slot = redis_cli(&["-p", &home.to_string(), "CLUSTER", "KEYSLOT", &seq]).await;
    let slot = slot.trim();
    let (home_id, away_id) = (Cluster::node_id(home).await, Cluster::node_id(away).await);
    let (home, away) = (home.to_string(), away.to_string());
    redis_cli(&[
        "-p",
        &away,
        "CLUSTER",
        "SETSLOT",
        slot,
        "IMPORTING",
        &home_id,
    ])
    .await;
    redis_cli(&[
        "-p",
        &home,
        "CLUSTER",
        "SETSLOT",
        slot,
        "MIGRATING",
        &away_id,
    ])
    .await;
    let before = redis_cli(&["-p", &home, "GET", &seq]).await;

    let second = tokio::spawn({
        let mut jobs = jobs.clone();
        async move { jobs.submit_job(submit(queue, "second")).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !second.is_finished(),
        "the submit waits while the slot moves"
    );
    assert_eq!(redis_cli(&["-p", &home, "GET", &seq]).await, before);

    for port in [&away, &home] {
        redis_cli(&["-p", port, "CLUSTER", "SETSLOT", slot, "STABLE"]).await;
    }
    let second = second.await.unwrap().expect("taken once the slot settled");
    let id = second.into_inner().job.unwrap().id;
    let after: i64 = redis_cli(&["-p", &home, "GET", &seq])
        .await
        .trim()
        .parse()
        .unwrap();
    assert_eq!(after, before.trim().parse::<i64>().unwrap() + 1);
    let mut worker = Worker::connect(&server, &[queue], 10).await;
    let leased: Vec<String> = worker
        .assignments(Duration::from_secs(1))
        .await
        .into_iter()
        .map(|a| a.job.unwrap().id)
        .collect();
    assert_eq!(leased.len(), 2);
    assert!(leased.contains(&id));
}

/// A master of a 6-node cluster is SIGKILLed: submits to a queue on another master keep being
/// answered at once while its replica takes over (before, every call waited ~10 s: the client
/// would not route anything until it reached every master), and the dead master's queue works
/// again once the replica has taken over.
#[tokio::test]
async fn a_dead_master_stalls_only_its_own_queues() {
    harness::logs();
    let mut cluster = Cluster::start_with(1).await;
    let server = Server::start(harness::config_for(cluster.url())).await;
    let mut jobs = server.jobs().await;
    let marker = cluster.owner("cv:marker").await;
    let mut queues = Vec::new();
    for i in 0.. {
        let queue = format!("q{i}");
        let owner = cluster.owner(&format!("cv:{{{queue}}}:ok")).await;
        if owner != marker && queues.iter().all(|(_, o)| *o != owner) {
            queues.push((queue, owner));
        }
        if queues.len() == 2 {
            break;
        }
    }
    let (doomed, healthy) = (queues[0].clone(), queues[1].0.clone());
    for (queue, _) in &queues {
        submit_job(&mut jobs, submit(queue, "before")).await;
    }

    cluster.kill(doomed.1).await;
    let killed = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    let mut i = 0;
    while killed.elapsed() < Duration::from_secs(6) {
        let started = std::time::Instant::now();
        let mut job = submit(&healthy, &i.to_string());
        job.idempotency_key = format!("healthy-{i}");
        let reply = tokio::time::timeout(Duration::from_secs(20), jobs.submit_job(job)).await;
        slowest = slowest.max(started.elapsed());
        assert!(
            matches!(reply, Ok(Ok(_))),
            "submit {i} to {healthy}: {reply:?}"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a submit to a healthy master's queue took {slowest:?} while another master was down"
    );
    let queue = doomed.0.clone();
    eprintln!(
        "DEBUG NODES {}",
        redis_cli(&["-p", &queues[1].1.to_string(), "CLUSTER", "NODES"]).await
    );
    eventually("the dead master's queue to take submits again", || {
        let mut jobs = jobs.clone();
        let mut job = submit(&queue, "after");
        job.idempotency_key = "after".into();
        async move { jobs.submit_job(job).await.ok() }
    })
    .await;
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
