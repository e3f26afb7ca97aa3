//! The client side of the CLI: `submit`, `get`, `list`, `watch`, `cancel`, `worker`, and the
//! database chores `migrate`, `cleanup` and `keys`.

pub mod database;
pub mod drain;
pub mod keys;
pub mod queues;
pub mod show;
pub mod submit;
pub mod watch;
pub mod worker;

use std::process::ExitCode;

use std::path::PathBuf;

use tonic::transport::Channel;

use crate::client::{self, Target};
pub use show::{CancelArgs, GetArgs, ListArgs, RetryArgs};
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
    /// The Conveyor server (`https://` for TLS). Several replicas, comma-separated: the command
    /// goes on through another when one is gone.
    #[arg(long, env = "CONVEYOR_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// An API key (`cvk_...`), worker token (`cvw_...`) or OIDC token.
    #[arg(long, env = "CONVEYOR_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// A CA certificate (PEM) to trust for the server's certificate.
    #[arg(long, env = "CONVEYOR_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) for mTLS; needs --client-key.
    #[arg(long, env = "CONVEYOR_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "CONVEYOR_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
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

impl From<(String, tonic::transport::Error)> for Error {
    fn from((addr, source): (String, tonic::transport::Error)) -> Error {
        Error::Connect { addr, source }
    }
}

impl ClientArgs {
    pub fn target(&self) -> Target {
        Target {
            addr: self.addr.clone(),
            token: self.key.clone(),
            ca: self.ca_cert.clone(),
            identity: self.client_cert.clone().zip(self.client_key.clone()),
        }
    }

    pub fn dialer(&self) -> Result<client::Dialer, Error> {
        client::Dialer::new(&self.target(), |e| e).map_err(Error::Usage)
    }

    pub async fn channel(&self) -> Result<Channel, Error> {
        self.dialer()?.channel().await.map_err(Error::from)
    }

    pub async fn jobs(&self) -> Result<client::Jobs, Error> {
        self.dialer()?.jobs().await.map_err(Error::from)
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
