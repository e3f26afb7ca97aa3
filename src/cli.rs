//! The client side of the CLI: `submit`, `get`, `list`, `watch`, `cancel`, `worker`, and the
//! database chores `migrate` and `cleanup`.

pub mod database;
pub mod show;
pub mod submit;
pub mod watch;
pub mod worker;

use std::process::ExitCode;

use tonic::transport::{Channel, Endpoint};

use crate::proto::job_service_client::JobServiceClient;
pub use show::{CancelArgs, GetArgs, ListArgs};
pub use submit::SubmitArgs;
pub use watch::WatchArgs;
pub use worker::WorkerArgs;

/// Exit codes of client commands.
pub mod exit {
    /// The job SUCCEEDED (or the command did what it was asked).
    pub const OK: u8 = 0;
    /// The job FAILED.
    pub const FAILED: u8 = 1;
    /// The server refused the request, or could not be reached.
    pub const ERROR: u8 = 2;
    /// The job was CANCELLED.
    pub const CANCELLED: u8 = 3;
}

#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// The Conveyor server.
    #[arg(long, env = "CONVEYOR_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
}

/// What a client command ends with: an exit code, or an error to print.
pub type Outcome = Result<ExitCode, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach {addr}: {source} (is the server running? set CONVEYOR_ADDR or --addr)")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error(transparent)]
    Worker(#[from] crate::worker::Error),
    #[error(transparent)]
    History(#[from] crate::history::Error),
}

impl ClientArgs {
    pub async fn channel(&self) -> Result<Channel, Error> {
        let endpoint = Endpoint::from_shared(self.addr.clone()).map_err(|_| {
            Error::Usage(format!(
                "{}: not an address like http://127.0.0.1:50051",
                self.addr
            ))
        })?;
        endpoint.connect().await.map_err(|source| Error::Connect {
            addr: self.addr.clone(),
            source,
        })
    }

    pub async fn jobs(&self) -> Result<JobServiceClient<Channel>, Error> {
        Ok(JobServiceClient::new(self.channel().await?))
    }
}

/// Prints an error the way every client command does, and picks its exit code.
pub fn report(outcome: Outcome) -> ExitCode {
    outcome.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(exit::ERROR)
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
