//! The gRPC port's connections: TCP accepted with TCP_NODELAY, at most `CONVEYOR_MAX_CONNECTIONS`
//! open at once, each
//! given a time limit to speak (its first bytes, or with TLS on its whole handshake, done on the
//! side) and, with TLS, offering `h2` and `http/1.1` (gRPC-Web, and clients that speak only
//! HTTP/1.1). The certificate, its key and the client CA are read again when their files change,
//! so a rotated certificate (cert-manager renewing a Secret) needs no restart.
//!
//! At the cap, a new connection pushes out the oldest one that has not spoken yet, and is
//! refused only when every open one has: a client that opens connections and sends nothing
//! cannot keep others out, nor run the process out of file descriptors.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

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

/// How many connections may be open, and how long a new one has to speak.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake: Duration,
}

/// An accepted connection, holding its place under the cap while it lives.
pub struct Conn<IO> {
    io: IO,
    _place: Place,
}

/// A place under the connection cap, counted in `conveyor_connections_open`.
struct Place {
    _permit: OwnedSemaphorePermit,
}

impl Place {
    fn new(permit: OwnedSemaphorePermit) -> Place {
        crate::metrics::get().connections_open.inc();
        Place { _permit: permit }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        crate::metrics::get().connections_open.dec();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The connections still in their handshake, oldest first: the ones the cap pushes out. Owned
/// by the accept loop; a connection's task holds the other end of its entry.
#[derive(Default)]
struct Silent(VecDeque<oneshot::Sender<()>>);

impl Silent {
    /// Registers a new connection; it is told to go through the receiver.
    fn add(&mut self, cap: usize) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let queue = &mut self.0;
        // Entries of connections that spoke (their receiver is gone) are dropped now and then.
        if queue.len() >= cap {
            queue.retain(|tx| !tx.is_closed());
        }
        queue.push_back(tx);
        rx
    }

    /// Pushes out the oldest connection still silent; false when there is none.
    fn push_out(&mut self) -> bool {
        while let Some(tx) = self.0.pop_front() {
            if tx.send(()).is_ok() {
                return true;
            }
        }
        false
    }
}

/// Says, at most every 10 s, that the cap was reached.
struct CapLog(Option<Instant>);

impl CapLog {
    fn shed(&mut self, max: usize, refused: bool) {
        crate::metrics::get().connections_shed.inc();
        if self
            .0
            .is_none_or(|at| at.elapsed() > Duration::from_secs(10))
        {
            self.0 = Some(Instant::now());
            let what = if refused {
                "refusing new connections (every open one has spoken)"
            } else {
                "closing the oldest connections that have not spoken yet"
            };
            tracing::warn!(
                max_connections = max,
                "connection cap (CONVEYOR_MAX_CONNECTIONS) reached: {what}"
            );
        }
    }
}

/// Accepts connections on `listener` up to the cap, hands each to `handshake` on its own task
/// (given up after the time limit, or when the cap pushes it out), and yields what the
/// handshakes produce. An accept error (out of file descriptors) is logged and waited out
/// instead of spinning.
fn accept<IO, F, Fut>(
    listener: TcpListener,
    limits: Limits,
    handshake: F,
) -> ReceiverStream<std::io::Result<Conn<IO>>>
where
    IO: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let places = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let mut silent = Silent::default();
        let mut backoff = Duration::from_millis(5);
        let mut log = CapLog(None);
        loop {
            let socket = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let socket = match socket {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot accept connections");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(5);
            let permit = match places.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) if silent.push_out() => {
                    log.shed(limits.max_connections, false);
                    // The pushed-out connection's task lets go of its place at once (unless it
                    // spoke at that very moment: then this one is refused after all).
                    let freed = places.clone().acquire_owned();
                    match tokio::time::timeout(Duration::from_secs(1), freed).await {
                        Ok(Ok(permit)) => permit,
                        Ok(Err(_)) => return,
                        Err(_) => continue,
                    }
                }
                Err(_) => {
                    log.shed(limits.max_connections, true);
                    continue; // dropped: closed
                }
            };
            let place = Place::new(permit);
            // Small messages (an assignment, a report's answer) must not wait for the peer's
            // delayed ACK.
            let _ = socket.set_nodelay(true);
            let peer = socket.peer_addr().ok();
            let pushed_out = silent.add(limits.max_connections);
            let (tx, done) = (tx.clone(), handshake(socket));
            tokio::spawn(async move {
                let io = tokio::select! {
                    io = tokio::time::timeout(limits.handshake, done) => io,
                    _ = pushed_out => {
                        tracing::debug!(?peer, "a silent connection pushed out by the cap");
                        return;
                    }
                };
                match io {
                    Ok(Ok(io)) => {
                        let _ = tx.send(Ok(Conn { io, _place: place })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, error = %e, "handshake failed"),
                    Err(_) => tracing::debug!(
                        ?peer,
                        "a connection silent for longer than {:?} closed",
                        limits.handshake
                    ),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Plaintext connections, each let in once its first bytes arrive.
pub fn plain(
    listener: TcpListener,
    limits: Limits,
) -> ReceiverStream<std::io::Result<Conn<TcpStream>>> {
    accept(listener, limits, |socket| async move {
        // (`readable` may wake with nothing to read; a peek waits for a byte, or the end.)
        match socket.peek(&mut [0u8; 1]).await? {
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(socket),
        }
    })
}

/// TLS connections, each handshake with the settings in force when it began.
pub fn tls(
    listener: TcpListener,
    tls: Arc<Tls>,
    limits: Limits,
) -> ReceiverStream<std::io::Result<Conn<TlsStream<TcpStream>>>> {
    accept(listener, limits, move |socket| {
        let acceptor = TlsAcceptor::from(tls.current());
        acceptor.accept(socket)
    })
}
