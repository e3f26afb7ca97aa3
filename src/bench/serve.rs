//! The server under test as a child process (`conveyor serve`), so its own CPU time and memory
//! can be read from `/proc` apart from the benchmark's clients.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::{proc, usage};
use crate::cli::Error;
use crate::proto::{self, job_service_client::JobServiceClient};

/// How long a fresh server may take to answer.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// A running `conveyor serve`; killed when dropped.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    pub pid: u32,
    /// Where its log goes, named in errors.
    pub log: PathBuf,
    _child: Child,
}

impl Server {
    /// CPU ms used so far; an error here means the server is gone.
    pub fn cpu_ms(&self) -> Result<f64, Error> {
        proc::cpu_ms(self.pid).map_err(|e| self.gone(e))
    }

    pub fn memory(&self) -> Result<proc::Memory, Error> {
        proc::memory(self.pid).map_err(|e| self.gone(e))
    }

    fn gone(&self, e: impl std::fmt::Display) -> Error {
        usage(format!(
            "the server (pid {}) cannot be read: {e}; see {}",
            self.pid,
            self.log.display()
        ))
    }
}

/// How the server under test runs.
pub struct Options<'a> {
    /// Its CONVEYOR_THREADS (unset: its default).
    pub threads: Option<u16>,
    /// Its DATABASE_URL.
    pub database: &'a str,
    /// Without authentication (the suite measures the scheduler, not the guard in front of it).
    pub insecure: bool,
    /// Its CONVEYOR_KEY_LIMITS, if any.
    pub key_limits: Option<&'a str>,
}

/// Starts `<this exe> serve` against `redis_url` on a free loopback port and waits until it
/// answers a gRPC call. Its log goes to `dir/server.log`.
pub async fn start(redis_url: &str, dir: &Path, options: Options<'_>) -> Result<Server, Error> {
    let Options {
        threads,
        database,
        insecure,
        key_limits,
    } = options;
    let port = StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(usage)?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.join("server.log");
    let file = std::fs::File::create(&log).map_err(usage)?;
    let mut command = Command::new(std::env::current_exe().map_err(usage)?);
    crate::child::die_with_parent(&mut command, nix::sys::signal::Signal::SIGKILL);
    let mut child = command
        .arg("serve")
        .env("REDIS_URL", redis_url)
        .env("DATABASE_URL", database)
        .env("CONVEYOR_LISTEN", &listen)
        // Several benchmark servers may run at once; none needs the HTTP port.
        .env("CONVEYOR_HTTP_LISTEN", "off")
        .env("CONVEYOR_INSECURE", insecure.to_string())
        // The fan-out scenario opens 10,000 streams as one tenant (the default allows 1,000).
        .env("CONVEYOR_MAX_WATCHES", "100000")
        .envs(threads.map(|n| ("CONVEYOR_THREADS", n.to_string())))
        .envs(key_limits.map(|limits| ("CONVEYOR_KEY_LIMITS", limits)))
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(usage)?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .map_err(usage)?;
    let pid = child
        .id()
        .ok_or_else(|| usage("the server exited at once"))?;
    let addr = format!("http://{listen}");
    let deadline = tokio::time::Instant::now() + START_DEADLINE;
    while !answers(&addr).await {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(usage(format!(
                "the server exited ({status}); see {}",
                log.display()
            )));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(usage(format!(
                "the server did not answer within {START_DEADLINE:?}; see {}",
                log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Server {
        addr,
        pid,
        log,
        _child: child,
    })
}

/// A new connection of its own (HTTP/2 multiplexes calls over one connection per Channel).
pub async fn connect(addr: &str) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(addr.to_string()).map_err(usage)?;
    endpoint.connect().await.map_err(|source| Error::Connect {
        addr: addr.to_string(),
        source,
    })
}

/// True once the server answers GetJob with any status of its own (NOT_FOUND is fine).
async fn answers(addr: &str) -> bool {
    let attempt = async {
        let channel = Endpoint::from_shared(addr.to_string())
            .ok()?
            .connect()
            .await
            .ok()?;
        let request = proto::GetJobRequest {
            job_id: "00000000-0000-7000-8000-000000000000".into(),
        };
        match JobServiceClient::new(channel).get_job(request).await {
            Ok(_) => Some(()),
            Err(s) if !matches!(s.code(), Code::Unavailable | Code::Unknown) => Some(()),
            Err(_) => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}
