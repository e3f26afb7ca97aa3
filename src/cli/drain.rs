//! `conveyor drain`: the pre-stop hook of a server's pod. The local server's readiness goes
//! down and its workers move to other replicas (`POST /drain` on its HTTP port, which answers
//! loopback callers only); then it waits, so load balancers stop sending before SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use super::{Error, Outcome};

#[derive(Clone, Debug, clap::Args)]
pub struct DrainArgs {
    /// The server's HTTP port on this host.
    #[arg(long, env = "CONVEYOR_DRAIN_HTTP", default_value = "127.0.0.1:9090")]
    pub http: String,
    /// How long to wait after the drain started.
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    pub wait: Duration,
}

pub async fn run(args: DrainArgs) -> Outcome {
    let http = crate::client::http()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Usage(format!("cannot make an HTTP client: {e}")))?;
    let url = format!("http://{}/drain", args.http);
    let response = http
        .post(&url)
        .send()
        .await
        .map_err(|e| Error::Usage(format!("cannot reach {url}: {e}")))?;
    if !response.status().is_success() {
        return Err(Error::Usage(format!(
            "{url} answered {}",
            response.status()
        )));
    }
    eprintln!("draining; waiting {:?}", args.wait);
    tokio::time::sleep(args.wait).await;
    Ok(ExitCode::SUCCESS)
}
