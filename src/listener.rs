//! The gRPC port's connections: TCP accepted with TCP_NODELAY and, with TLS on, each handshake
//! done on the side within a time limit, offering `h2` and `http/1.1` (gRPC-Web, and clients that
//! speak only HTTP/1.1). The certificate, its key and the client CA are read again when their
//! files change, so a rotated certificate (cert-manager renewing a Secret) needs no restart.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// The PEM files TLS is made of.
#[derive(Clone, Debug)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// mTLS: the CA whose client certificates are accepted (optional: callers without one may
    /// still present a key or a token).
    pub client_ca: Option<PathBuf>,
}

/// The TLS settings in force, and what they were made from.
pub struct Tls {
    files: Files,
    /// The files' bytes as last loaded: a change in any of them makes a new config.
    loaded: RwLock<(Vec<Vec<u8>>, Arc<ServerConfig>)>,
}

impl Files {
    fn read(&self) -> Result<Vec<Vec<u8>>, String> {
        let paths = [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()];
        paths
            .into_iter()
            .flatten()
            .map(|path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display())))
            .collect()
    }

    /// A server config from the files' bytes (`read`'s order).
    fn config(&self, bytes: &[Vec<u8>]) -> Result<ServerConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes[0])
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate", self.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_slice(&bytes[1])
            .map_err(|e| format!("{}: {e}", self.key.display()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match (&self.client_ca, bytes.get(2)) {
            (Some(path), Some(pem)) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("{} and {}: {e}", self.cert.display(), self.key.display()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl Tls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: Files) -> Result<Tls, String> {
        let bytes = files.read()?;
        let config = Arc::new(files.config(&bytes)?);
        Ok(Tls {
            files,
            loaded: RwLock::new((bytes, config)),
        })
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.loaded.read().expect("not poisoned").1.clone()
    }

    /// Loads the files again if they changed; true when new settings are in force. Files that
    /// do not make a config (half written, a key that does not match) leave the old one.
    pub fn reload(&self) -> bool {
        let bytes = match self.files.read() {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(
                    error = e,
                    "TLS files unreadable; keeping the loaded certificate"
                );
                return false;
            }
        };
        if self.loaded.read().expect("not poisoned").0 == bytes {
            return false;
        }
        match self.files.config(&bytes) {
            Ok(config) => {
                *self.loaded.write().expect("not poisoned") = (bytes, Arc::new(config));
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = e,
                    "TLS files changed but do not make a certificate; keeping the loaded one"
                );
                false
            }
        }
    }

    /// Looks at the files every `every` until the task is dropped.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.reload();
        }
    }
}

/// Accepts connections on `listener`, hands each to `handshake` on its own task, and yields what
/// the handshakes produce. An accept error (out of file descriptors) is logged and waited out
/// instead of spinning.
fn accept<IO, F, Fut>(listener: TcpListener, handshake: F) -> ReceiverStream<std::io::Result<IO>>
where
    IO: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = Option<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(5);
        loop {
            let socket = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            match socket {
                Ok((socket, _)) => {
                    backoff = Duration::from_millis(5);
                    // Small messages (an assignment, a report's answer) must not wait for the
                    // peer's delayed ACK.
                    let _ = socket.set_nodelay(true);
                    let (tx, done) = (tx.clone(), handshake(socket));
                    tokio::spawn(async move {
                        if let Some(io) = done.await {
                            let _ = tx.send(Ok(io)).await;
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot accept connections");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Plaintext connections.
pub fn plain(listener: TcpListener) -> ReceiverStream<std::io::Result<TcpStream>> {
    accept(listener, |socket| async move { Some(socket) })
}

/// TLS connections, each handshake with the settings in force when it began, given up after
/// `timeout` (a client that connects and sends nothing holds nothing for long).
pub fn tls(
    listener: TcpListener,
    tls: Arc<Tls>,
    timeout: Duration,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    accept(listener, move |socket| {
        let acceptor = TlsAcceptor::from(tls.current());
        async move {
            let peer = socket.peer_addr().ok();
            match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    tracing::debug!(?peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(?peer, "TLS handshake took longer than {timeout:?}");
                    None
                }
            }
        }
    })
}
