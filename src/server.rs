//! The server: `run(config, listener, shutdown)` wires Redis, the scheduler, the event hub, the
//! dispatcher and the gRPC services, and serves until `shutdown` resolves.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::ClientLike;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::codec::CompressionEncoding;

use crate::config::Config;
use crate::health::Health;
use crate::proto::job_service_server::JobServiceServer;
use crate::proto::worker_service_server::WorkerServiceServer;
use crate::{api, auth, dispatcher, events, history, listener, proto, scheduler};

/// Room for the rest of a SubmitJob beside the largest payload, so a payload one byte over the
/// limit reaches our own check (INVALID_ARGUMENT) while anything far bigger is refused by tonic.
const ENVELOPE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis at {url}: {source}")]
    Redis {
        url: String,
        source: fred::error::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("database: {0}")]
    History(#[from] history::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Who may call: nobody is checked with `insecure`; otherwise API keys (with a database) and
/// JWTs (when configured), and the server refuses to start when no credential could pass.
/// `address` is where it listens.
async fn authenticator(
    config: &Config,
    store: Option<&history::Store>,
    address: &str,
) -> Result<auth::Authenticator, Error> {
    if config.insecure {
        tracing::warn!(
            "AUTHENTICATION IS OFF: anyone who reaches {address} may submit, read, watch and \
             cancel every job, and connect as a worker for any queue"
        );
        return Ok(auth::Authenticator::Off);
    }
    let jwt = match config.jwt().map_err(Error::Auth)? {
        Some(options) => Some(Arc::new(
            auth::jwt::Verifier::new(options)
                .await
                .map_err(Error::Auth)?,
        )),
        None => None,
    };
    match (&config.bootstrap_key, store) {
        (Some(_), None) => {
            let needs = "CONVEYOR_BOOTSTRAP_KEY needs a database: keys live in it (DATABASE_URL)";
            return Err(Error::Auth(needs.into()));
        }
        (Some(key), Some(store)) => {
            let tenant = &config.bootstrap_tenant;
            let added = auth::keys::bootstrap(store.db(), key, tenant).await;
            if added.map_err(Error::Auth)? {
                tracing::info!(tenant, "added CONVEYOR_BOOTSTRAP_KEY as an admin key");
            }
        }
        (None, _) => {}
    }
    let keys = store.map(|s| auth::keys::Keys::new(s.db().clone()));
    let usable_keys = match store {
        Some(store) => auth::keys::any_usable(store.db())
            .await
            .map_err(|e| Error::History(e.into()))?,
        None => false,
    };
    if jwt.is_none() && !usable_keys {
        return Err(Error::Auth(
            "no credentials: create an API key first (`conveyor keys create --tenant NAME \
             --scopes submit,read,watch,cancel` with the same DATABASE_URL), or configure \
             CONVEYOR_JWT_ISSUER/AUDIENCE/JWKS; `--insecure` serves without authentication"
                .into(),
        ));
    }
    Ok(auth::Authenticator::On { keys, jwt })
}

/// The TLS settings of the gRPC port, from PEM files; `None` serves plaintext.
fn tls(config: &Config) -> Result<Option<Arc<listener::Tls>>, Error> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let files = listener::Files {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: config.tls_client_ca.clone(),
    };
    Ok(Some(Arc::new(
        listener::Tls::load(files).map_err(Error::Tls)?,
    )))
}

/// The HTTP port's listener, if the config has one.
async fn http_listener(config: &Config) -> Result<Option<TcpListener>, Error> {
    let address = match config.http_listen.as_deref() {
        None | Some("off") | Some("") => return Ok(None),
        Some(address) => address,
    };
    let listener = TcpListener::bind(address).await.map_err(|e| {
        Error::Config(format!(
            "cannot listen on {address} for HTTP: {e} (set CONVEYOR_HTTP_LISTEN, or off)"
        ))
    })?;
    Ok(Some(listener))
}

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (redis, subscriber) = crate::redis::connect(config.redis_url(), config.redis_timeout)
        .await
        .map_err(|source| Error::Redis {
            url: config.redis_url().to_string(),
            source,
        })?;
    let mut scheduler = scheduler::Handle::new(redis.clone(), config.scheduler());
    let store = match config.database() {
        Some(url) => Some(history::Store::open(url, config.history()).await?),
        None => None,
    };
    // Everything that can refuse the configuration does so before anything starts.
    let address = listener
        .local_addr()
        .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
    let authenticator = authenticator(&config, store.as_ref(), &address).await?;
    let tls = tls(&config)?;
    let webhooks = config.webhooks().map_err(Error::Config)?;
    let storage = config.storage().await.map_err(Error::Config)?;
    match &storage {
        Some(s) => tracing::info!(bucket = s.options().bucket, "artifacts on S3"),
        None => tracing::info!("artifacts are off (no CONVEYOR_S3_BUCKET)"),
    }

    let mut background = Vec::new();
    if let Some(store) = store {
        tracing::info!(backend = ?store.backend(), "job history in the database");
        scheduler = scheduler.with_history(store.clone());
        // Long enough for every replica's writer to flush what it holds (capped: with a very
        // long flush interval, the repair catches what the restore misses).
        let settle =
            (config.history_flush * 2).min(Duration::from_secs(5)) + Duration::from_millis(200);
        if let Some(reconciler) =
            scheduler::Reconciler::new(&scheduler, settle, config.history_repair)
        {
            // A first look before serving, so a server starts on a rebuilt Redis.
            reconciler.check_logged().await;
            background.push(tokio::spawn(reconciler.run()));
        }
    }
    let sweeper = crate::retention::Sweeper {
        policy: config.retention(),
        scheduler: scheduler.clone(),
        history: scheduler.history().cloned(),
        storage: storage.clone(),
        page: crate::retention::PAGE,
    };
    if !config.retention_sweep.is_zero() {
        background.push(tokio::spawn(sweeper.run(config.retention_sweep)));
    }
    if let Some(options) = webhooks {
        let webhooks = crate::webhooks::spawn(scheduler.clone(), options);
        scheduler = scheduler.with_webhooks(webhooks);
    }
    if let auth::Authenticator::On {
        keys: Some(keys), ..
    } = &authenticator
    {
        background.push(tokio::spawn(keys.clone().follow(subscriber.clone())));
    }
    let (flows, flows_task) = crate::flows::spawn(scheduler.clone(), config.limits());
    background.push(flows_task);
    let hub = events::Handle::default();
    let (signals_tx, signals_rx) = mpsc::channel(1024);
    let dispatcher = dispatcher::spawn(scheduler.clone(), config.dispatcher(), signals_rx);
    let events_task = tokio::spawn(events::run(
        subscriber.clone(),
        hub.clone(),
        signals_tx,
        flows,
    ));
    background.push(tokio::spawn(events::keep_followed(
        hub.clone(),
        scheduler.clone(),
    )));

    // Health: the gRPC service and the HTTP probes, down while Redis or the database does not
    // answer, and from the start of a drain or shutdown.
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter).await;
    background.push(tokio::spawn(crate::health::watch(
        health.clone(),
        scheduler.clone(),
        scheduler.history().cloned(),
        config.health_check,
    )));
    if let Some(listener) = http_listener(&config).await? {
        tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics and probes over HTTP");
        let port = crate::http::Port {
            health: health.clone(),
            dispatcher: dispatcher.clone(),
            hub: hub.clone(),
            scheduler: scheduler.clone(),
        };
        background.push(tokio::spawn(crate::http::serve(listener, port)));
    }

    let (stopping_tx, stopping) = watch::channel(false);
    let drain = dispatcher.clone();
    let stopped = async move {
        shutdown.await;
        tracing::info!("shutting down: draining workers and watchers");
        health.drain().await;
        drain.drain().await;
        let _ = stopping_tx.send(true);
    };
    let mut stopped_rx = stopping.clone();
    let shutdown_timeout = config.shutdown_timeout;

    let cors = api::web::cors(&config.cors_origins).map_err(Error::Config)?;
    let max_message = config.max_payload + ENVELOPE;
    let jobs = JobServiceServer::new(
        api::Jobs::new(
            scheduler.clone(),
            hub,
            config.limits(),
            Arc::new(config.quotas()),
            storage.clone(),
            stopping,
        )
        .keepalive(config.watch_keepalive),
    )
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message)
    .accept_compressed(CompressionEncoding::Gzip);
    let uploads = api::Uploads {
        scheduler: scheduler.clone(),
        storage,
    };
    let workers = WorkerServiceServer::new(api::Workers::new(
        dispatcher.clone(),
        config.max_worker_slots,
        uploads,
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message)
    .accept_compressed(CompressionEncoding::Gzip);
    // Both versions of reflection: grpcurl speaks v1, Python's grpcio-reflection only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection, reflection_v1alpha) =
        (reflection().build_v1()?, reflection().build_v1alpha()?);

    let scheme = if tls.is_some() { "https" } else { "http" };
    let dashboard = format!("{scheme}://{address}/dashboard/");
    tracing::info!(address, dashboard, "serving");
    if let (Some(tls), false) = (&tls, config.tls_reload.is_zero()) {
        background.push(tokio::spawn(tls.clone().watch(config.tls_reload)));
    }
    // What bursts of streams freed goes back to the system (see memory.rs).
    background.push(tokio::spawn(crate::memory::trim_every(
        Duration::from_secs(10),
    )));
    let router = tonic::transport::Server::builder()
        // Dead peers are noticed within seconds even when no message is due.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .http2_max_header_list_size(Some(config.max_metadata))
        // Calls at once on one connection, advertised in SETTINGS (tonic's default is none).
        .max_concurrent_streams(Some(config.max_streams))
        // A span per RPC while traces are exported, continuing the caller's trace.
        .trace_fn(crate::telemetry::rpc_span)
        // Browsers: gRPC-Web over HTTP/1.1 on the same port, translated to gRPC, behind the
        // CORS policy (whose preflights need no credentials).
        .accept_http1(true)
        // The metadata cap for HTTP/1.1 (HTTP/2 is held to it by the transport, above).
        .layer(api::headers::layer(config.max_metadata))
        // The dashboard's page, on the same origin as the calls it makes.
        .layer(api::dashboard::layer())
        .layer(cors)
        .layer(tonic_web::GrpcWebLayer::new())
        // Every service sits behind authentication (health and reflection pass through).
        .layer(auth::Layer::new(authenticator))
        .add_service(jobs)
        .add_service(workers)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha);
    // Connections come from `listener`: TLS, when on, is done there (reloaded as its files
    // change), not by the transport.
    let limits = listener::Limits {
        max_connections: config.max_connections.max(1),
        handshake: config.handshake_timeout,
    };
    let server: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match tls {
        Some(tls) => {
            let incoming = listener::tls(listener, tls, limits);
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        None => {
            let incoming = listener::plain(listener, limits);
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    };
    let result = tokio::select! {
        result = server => result.map_err(Error::from),
        _ = async {
            let _ = stopped_rx.wait_for(|s| *s).await;
            tokio::time::sleep(shutdown_timeout).await;
        } => {
            tracing::warn!("streams still open after {shutdown_timeout:?}; closing them");
            Ok(())
        }
    };
    events_task.abort();
    background.iter().for_each(|task| task.abort());
    if let Some(store) = scheduler.history() {
        store.flush().await;
    }
    let _ = subscriber.quit().await;
    let _ = redis.quit().await;
    result
}
