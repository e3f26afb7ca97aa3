//! How a client reaches a server: the address, TLS when it is `https://` (a CA to trust, and a
//! client certificate for mTLS), and a credential sent as `authorization: Bearer` on every call.
//! The CLI, the worker runtime and the demo connect through here, and fetch the presigned URLs
//! the server hands out.

use std::path::PathBuf;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::job_service_client::JobServiceClient;
use crate::proto::worker_service_client::WorkerServiceClient;

#[derive(Clone, Debug, Default)]
pub struct Target {
    /// e.g. `http://127.0.0.1:50051` or `https://conveyor.example.com`; several replicas'
    /// addresses separated by commas (see `Dialer`).
    pub addr: String,
    /// An API key, worker token or JWT.
    pub token: Option<String>,
    /// A CA (PEM) to trust for the server's certificate, beside the system's.
    pub ca: Option<PathBuf>,
    /// A client certificate and key (PEM), for mTLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

pub type Jobs = JobServiceClient<InterceptedService<Channel, Bearer>>;
pub type Workers = WorkerServiceClient<InterceptedService<Channel, Bearer>>;

pub fn jobs(channel: Channel, bearer: Bearer) -> Jobs {
    JobServiceClient::with_interceptor(channel, bearer)
}

pub fn workers(channel: Channel, bearer: Bearer) -> Workers {
    WorkerServiceClient::with_interceptor(channel, bearer)
}

impl Target {
    pub fn new(addr: impl Into<String>) -> Target {
        Target {
            addr: addr.into(),
            ..Default::default()
        }
    }

    /// The endpoint of each address, in order; an error says what is wrong with an address or
    /// the files.
    pub fn endpoints(&self) -> Result<Vec<(String, Endpoint)>, String> {
        let addrs: Vec<&str> = self.addr.split(',').map(str::trim).collect();
        addrs
            .into_iter()
            .map(|addr| Ok((addr.to_string(), self.endpoint_of(addr)?)))
            .collect()
    }

    /// The endpoint of the first address.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let first = self.addr.split(',').next().unwrap_or_default().trim();
        self.endpoint_of(first)
    }

    fn endpoint_of(&self, addr: &str) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|_| format!("{addr}: not an address like http://127.0.0.1:50051"))?;
        if !addr.starts_with("https://") {
            return Ok(endpoint);
        }
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))
    }

    /// What every call carries.
    pub fn bearer(&self) -> Result<Bearer, String> {
        match &self.token {
            None => Ok(Bearer(None)),
            Some(token) => format!("Bearer {}", token.trim())
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| "the key or token has characters a header cannot carry".to_string()),
        }
    }
}

/// Dials one of a target's addresses: the one that answered last, or, once it failed, the next
/// that answers. A worker or a watcher given every replica's address (or a name that resolves
/// to them all: each connection tries the addresses a name resolves to in turn) goes on through
/// another replica in seconds when one dies or drains, and clients spread over the replicas by
/// starting at a random one.
pub struct Dialer {
    endpoints: Vec<(String, Endpoint)>,
    next: usize,
    pub bearer: Bearer,
}

impl Dialer {
    /// `configure` adjusts each endpoint (timeouts, keep-alives).
    pub fn new(
        target: &Target,
        configure: impl Fn(Endpoint) -> Endpoint,
    ) -> Result<Dialer, String> {
        let endpoints: Vec<_> = target
            .endpoints()?
            .into_iter()
            .map(|(addr, endpoint)| (addr, configure(endpoint)))
            .collect();
        let next = rand::random_range(0..endpoints.len().max(1));
        Ok(Dialer {
            endpoints,
            next,
            bearer: target.bearer()?,
        })
    }

    /// A channel to the first address, from where it is, that takes a connection; else the last
    /// address tried and why it did not.
    pub async fn channel(&mut self) -> Result<Channel, (String, tonic::transport::Error)> {
        let n = self.endpoints.len();
        let mut last = None;
        for i in 0..n {
            let at = (self.next + i) % n;
            let (addr, endpoint) = &self.endpoints[at];
            match endpoint.connect().await {
                Ok(channel) => {
                    self.next = at;
                    return Ok(channel);
                }
                Err(e) => last = Some((addr.clone(), e)),
            }
        }
        Err(last.expect("a target has an address"))
    }

    /// The address in use failed (its stream broke, or its server drained): the next channel
    /// tries the following one first.
    pub fn failed(&mut self) {
        self.next = (self.next + 1) % self.endpoints.len().max(1);
    }

    /// JobService on the next channel.
    pub async fn jobs(&mut self) -> Result<Jobs, (String, tonic::transport::Error)> {
        let channel = self.channel().await?;
        Ok(jobs(channel, self.bearer.clone()))
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// An HTTP client for presigned URLs. reqwest is built without a default crypto provider;
/// rustls uses ring here, as everywhere in Conveyor.
pub fn http() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// GETs `url` into the file at `path` (its folders made as needed), streaming; returns the
/// bytes written. Errors name `what` is being fetched.
pub async fn fetch_to(
    http: &reqwest::Client,
    url: &str,
    path: &std::path::Path,
    what: &str,
) -> Result<u64, String> {
    use tokio::io::AsyncWriteExt;
    let on_file = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let fetching = |e: reqwest::Error| format!("fetching {what}: {e}");
    let mut response = http
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(fetching)?;
    let mut file = tokio::fs::File::create(path).await.map_err(on_file)?;
    let mut written = 0;
    while let Some(chunk) = response.chunk().await.map_err(fetching)? {
        written += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(on_file)?;
    }
    file.flush().await.map_err(on_file)?;
    Ok(written)
}
