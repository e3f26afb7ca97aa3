//! `conveyor demo`: the whole loop in one command — a private Redis, a server, a worker running
//! `examples/render.sh`, and a submitted job followed to its result with a progress bar.

use std::path::Path;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::cli::{self, ClientArgs, exit, watch};
use crate::config::Config;
use crate::{dev, proto, server, worker};

/// The job the demo runs: a stand-in render that reports 20 progress steps.
const RENDER: &str = include_str!("../examples/render.sh");

pub async fn run(data_dir: &Path) -> cli::Outcome {
    let redis = dev::start_redis(&data_dir.join("demo-redis"), false)
        .await
        .map_err(|e| cli::Error::Usage(e.to_string()))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| cli::Error::Usage(e.to_string()))?;
    let addr = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| cli::Error::Usage(e.to_string()))?
    );
    eprintln!("demo: redis at {}, server at {addr}", redis.url);

    // The history in a fresh SQLite file, as `conveyor dev` keeps it.
    let db = data_dir.join("demo.db");
    for stale in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{stale}", db.display()));
    }
    let mut config = Config::with_redis(&redis.url);
    config.database_url = Some(format!("sqlite://{}?mode=rwc", db.display()));
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(config, listener, async {
        let _ = server_stopped.await;
    }));
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let options = worker::Options {
        server: crate::client::Target::new(addr.clone()),
        queues: vec!["render".into()],
        concurrency: 2,
        command: vec!["sh".into(), "-c".into(), RENDER.into()],
        worker_id: None,
        labels: Default::default(),
        output_root: None,
        shutdown_timeout: std::time::Duration::from_secs(30),
        guard: std::env::current_exe().ok(),
    };
    let worker = tokio::spawn(worker::run(options, async {
        let _ = worker_stopped.await;
    }));

    let client = ClientArgs {
        addr,
        key: None,
        ca_cert: None,
        client_cert: None,
        client_key: None,
    };
    let mut dialer = client.dialer()?;
    let mut jobs = dialer.jobs().await?;
    let request = proto::SubmitJobRequest {
        queue: "render".into(),
        payload: br#"{"video":"intro.mp4"}"#.to_vec(),
        content_type: "application/json".into(),
        tier: proto::Tier::Premium as i32,
        ..Default::default()
    };
    let job = jobs
        .submit_job(request)
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    eprintln!(
        "demo: submitted job {} to queue render; watching it",
        job.id
    );
    let outcome = watch::follow(&mut dialer, &job.id, None).await;

    let _ = stop_worker.send(());
    let _ = worker.await;
    let _ = stop_server.send(());
    let _ = server.await;
    eprintln!(
        "demo: done. Next: `conveyor dev`, then `conveyor worker --queue render -- sh examples/render.sh`"
    );
    eprintln!(
        "      and `conveyor submit --queue render --watch '{{\"video\":\"a.mp4\"}}'` in other terminals."
    );
    match outcome {
        Ok(code) if code == ExitCode::from(exit::OK) => Ok(code),
        other => other,
    }
}
