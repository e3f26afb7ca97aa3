//! `conveyor dev`: a private redis-server child and a private S3-compatible store for a laptop,
//! stopped with the server.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "redis-server was not found on PATH. Install it (Debian/Ubuntu: `sudo apt-get install redis-server`, \
         macOS: `brew install redis`) or point REDIS_URL at a running Redis"
    )]
    Missing,
    #[error("could not start redis-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis-server did not answer on port {0} within 10s; see {1}")]
    NotReady(u16, PathBuf),
}

/// A running redis-server child; killed when dropped.
pub struct Redis {
    pub url: String,
    pub port: u16,
    _child: Child,
}

fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

async fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").await.is_ok()
        && stream.read_exact(&mut reply).await.is_ok()
        && &reply == b"+PONG\r\n"
}

/// Starts redis-server on a free loopback port with its log, and with `persist` its data (an
/// append-only file, so jobs survive a restart of `conveyor dev`), under `dir`.
pub async fn start_redis(dir: &Path, persist: bool) -> Result<Redis, Error> {
    if !on_path("redis-server") {
        return Err(Error::Missing);
    }
    std::fs::create_dir_all(dir)?;
    // redis-server changes into `--dir` before opening its log, so paths must be absolute.
    let dir = &dir.canonicalize()?;
    let port = free_port()?;
    let log = dir.join("redis.log");
    let mut command = Command::new("redis-server");
    // SIGTERM: a persistent one writes what it holds before it goes.
    crate::child::die_with_parent(&mut command, nix::sys::signal::Signal::SIGTERM);
    let child = command
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            if persist { "yes" } else { "no" },
        ])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !answers_ping(port).await {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::NotReady(port, log));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Redis {
        url: format!("redis://127.0.0.1:{port}"),
        port,
        _child: child,
    })
}

/// The private store's bucket and keys (it listens on loopback only).
pub const STORE_BUCKET: &str = "artifacts";
pub const STORE_ACCESS_KEY: &str = "conveyor-dev";
pub const STORE_SECRET_KEY: &str = "conveyor-dev-secret-key";

/// A running S3-compatible store (s3s-fs: objects are files under its folder, requests are
/// SigV4-checked against its one key); stopped when dropped.
pub struct Store {
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the objects under `dir` (bucket `STORE_BUCKET`) on a free loopback port.
pub async fn start_store(dir: &Path) -> Result<Store, Error> {
    std::fs::create_dir_all(dir.join(STORE_BUCKET))?;
    let fs = s3s_fs::FileSystem::new(dir)
        .map_err(|e| Error::Io(std::io::Error::other(format!("{e:?}"))))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(
        STORE_ACCESS_KEY,
        STORE_SECRET_KEY,
    ));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let http =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let io = hyper_util::rt::TokioIo::new(socket);
            let conn = http.serve_connection(io, service.clone()).into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok(Store { endpoint, task })
}
