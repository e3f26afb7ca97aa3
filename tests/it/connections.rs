//! The gRPC port under connection floods: a cap on open connections that silent ones cannot
//! fill, a time limit to speak, and a cap on concurrent streams advertised in SETTINGS.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::harness::{self, Redis, Server, submit};

fn addr(server: &Server) -> String {
    server.addr.trim_start_matches("http://").to_string()
}

/// Whether the server closed `socket` (EOF or reset) within `within`.
async fn closed(socket: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, socket.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Far more silent connections than the cap allows (each one a file descriptor the attacker
/// needs no credential for): the oldest silent ones are closed to make room, and a normal
/// client is served at once. Before, there was no cap: they were all kept open.
#[tokio::test]
async fn silent_connections_past_the_cap_do_not_keep_a_client_out() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.max_connections = 20;
    config.handshake_timeout = Duration::from_secs(60);
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await; // one connection, spoken for
    harness::submit_job(&mut jobs, submit("caps", "before")).await;

    let mut silent = Vec::new();
    for _ in 0..60 {
        silent.push(TcpStream::connect(addr(&server)).await.unwrap());
    }
    let started = std::time::Instant::now();
    let mut fresh = server.jobs().await;
    let reply = fresh.submit_job(submit("caps", "a new client")).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The client that had spoken before the flood is still served too.
    assert!(jobs.submit_job(submit("caps", "after")).await.is_ok());

    let mut shut = 0;
    for socket in &mut silent {
        shut += closed(socket, Duration::from_millis(50)).await as usize;
    }
    assert!(
        shut >= 60 - 20,
        "only {shut} of 60 silent connections were closed"
    );
    assert!(conveyor::metrics::get().connections_shed.get() > 0);
}

/// A connection that says nothing is closed once the time limit to speak has passed. Before,
/// a plaintext connection could stay silent for good.
#[tokio::test]
async fn a_connection_that_never_speaks_is_closed() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.handshake_timeout = Duration::from_millis(300);
    let server = Server::start(config).await;
    let mut socket = TcpStream::connect(addr(&server)).await.unwrap();
    assert!(closed(&mut socket, Duration::from_secs(3)).await);
    // One that speaks in time is served.
    let mut jobs = server.jobs().await;
    assert!(jobs.submit_job(submit("caps", "spoke")).await.is_ok());
}

/// The server advertises its stream cap in SETTINGS, and a client holding that many streams open
/// waits for one to end before the next call starts. Before, it advertised none.
#[tokio::test]
async fn the_stream_cap_is_advertised_and_held_to() {
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.max_streams = 4;
    let server = Server::start(config).await;

    let socket = TcpStream::connect(addr(&server)).await.unwrap();
    let (_client, connection) = h2::client::handshake(socket).await.unwrap();
    let mut connection = Box::pin(connection);
    // The server's SETTINGS arrive with its first frames.
    let advertised = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                _ = &mut connection => panic!("connection closed"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let max = connection.max_concurrent_send_streams();
            if max != usize::MAX {
                return max;
            }
        }
    })
    .await
    .expect("SETTINGS with a stream cap");
    assert_eq!(advertised, 4);

    // Four watches fill the connection; a fifth call waits until one of them ends.
    let mut jobs = server.jobs().await;
    let job = harness::submit_job(&mut jobs, submit("caps", "watched")).await;
    let mut watches = Vec::new();
    for _ in 0..4 {
        let request = conveyor::proto::WatchJobRequest {
            job_id: job.id.clone(),
            ..Default::default()
        };
        watches.push(jobs.watch_job(request).await.unwrap().into_inner());
    }
    let fifth = tokio::spawn({
        let mut jobs = jobs.clone();
        async move { jobs.submit_job(submit("caps", "fifth")).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!fifth.is_finished(), "a fifth stream opened beside four");
    watches.pop();
    let reply = tokio::time::timeout(Duration::from_secs(5), fifth).await;
    assert!(matches!(reply, Ok(Ok(Ok(_)))), "{reply:?}");
}

/// The server's resident memory, from /proc.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Figures, not a check: a `conveyor serve` process's memory before, while and after 10,000
/// WatchJob streams are opened and closed on one connection (at most `CONVEYOR_MAX_STREAMS` at
/// once). `cargo test --release --test it connections::memory_of_streams -- --ignored --nocapture`
#[tokio::test]
#[ignore = "prints figures; run on demand"]
async fn memory_of_streams() {
    let redis = Redis::start().await;
    let port = harness::free_port();
    let env = [("CONVEYOR_MAX_WATCHES", "100000")];
    let url = harness::sqlite_url();
    let server =
        crate::process::replica_with(&redis.url(), &url, port, &env, std::process::Stdio::null());
    let pid = server.id().unwrap();
    let mut jobs = crate::process::answering(&format!("http://127.0.0.1:{port}")).await;
    let job = harness::submit_job(&mut jobs, submit("memory", "watched")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_mb(pid);
    let mut peak = before;
    let mut opened = 0;
    while opened < 10_000 {
        let mut open = Vec::new();
        for _ in 0..1000 {
            let request = conveyor::proto::WatchJobRequest {
                job_id: job.id.clone(),
                ..Default::default()
            };
            let mut stream = jobs.watch_job(request).await.unwrap().into_inner();
            stream.message().await.unwrap().expect("a snapshot");
            open.push(stream);
            opened += 1;
        }
        peak = peak.max(rss_mb(pid));
        drop(open);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The server gives freed memory back every 10 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = rss_mb(pid);
    println!(
        "server RSS: before {before:.1} MB; with 1,000 of 10,000 streams open {peak:.1} MB; \
         after all closed {after:.1} MB"
    );
}
