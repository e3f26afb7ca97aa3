//! `conveyor dev`: a private redis-server child for a laptop, stopped with the server.

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
    let child = Command::new("redis-server")
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
