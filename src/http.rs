//! The HTTP port (`CONVEYOR_HTTP_LISTEN`): `/metrics` for Prometheus, `/healthz` (the process
//! serves) and `/readyz` (it should get traffic) for probes, and `POST /drain` for a pre-stop
//! hook, which only loopback callers may use: anyone else could take a replica out of service.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::health::Health;
use crate::{dispatcher, events, metrics, scheduler};

/// What the port reads and drives.
#[derive(Clone)]
pub struct Port {
    pub health: Health,
    pub dispatcher: dispatcher::Handle,
    pub hub: events::Handle,
    pub scheduler: scheduler::Handle,
}

/// Serves the port on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, port: Port) {
    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    loop {
        let Ok((socket, peer)) = listener.accept().await else {
            continue;
        };
        let port = port.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let port = port.clone();
            async move { Ok::<_, Infallible>(port.answer(request, peer).await) }
        });
        let conn = http
            .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl Port {
    async fn answer(&self, request: Request<Incoming>, peer: SocketAddr) -> Answer {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => match self.health.ready() {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
            },
            (&Method::GET, "/metrics") => {
                use metrics::exposition::{CLASSIC, OPENMETRICS, classic, wants_openmetrics};
                self.gauges().await;
                let rendered = metrics::get().render();
                let accept = request.headers().get(header::ACCEPT);
                let (body, kind) = match wants_openmetrics(accept.and_then(|a| a.to_str().ok())) {
                    true => (rendered, OPENMETRICS),
                    false => (classic(&rendered), CLASSIC),
                };
                let mut response = text(StatusCode::OK, body);
                let kind = header::HeaderValue::from_static(kind);
                response.headers_mut().insert(header::CONTENT_TYPE, kind);
                response
            }
            // An IPv4 caller on a dual-stack listener shows as ::ffff:127.0.0.1.
            (&Method::POST, "/drain") if peer.ip().to_canonical().is_loopback() => {
                tracing::info!("draining: readiness down, workers told to move");
                self.health.drain().await;
                self.dispatcher.drain().await;
                text(StatusCode::OK, "draining\n")
            }
            (&Method::POST, "/drain") => text(StatusCode::FORBIDDEN, "loopback callers only\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Reads the gauges of what is: workers and slots, watchers, and the depth of the queues
    /// this replica serves (a few Redis reads per queue, per scrape).
    async fn gauges(&self) {
        let m = metrics::get();
        let census = self.dispatcher.census().await;
        m.workers.set(census.workers as i64);
        m.free_slots.set(census.free_slots as i64);
        let (jobs, queues) = self.hub.counts();
        for (kind, n) in [("job", jobs), ("queue", queues)] {
            let kind = metrics::Kind { kind: kind.into() };
            m.watchers.get_or_create(&kind).set(n as i64);
        }
        let now = scheduler::now_ms();
        for queue in census.queues {
            let Ok(depth) = self.scheduler.depth(&queue).await else {
                continue;
            };
            for tier in scheduler::Tier::ALL {
                let labels = metrics::queue_tier(&queue, tier);
                let (n, since) = depth
                    .iter()
                    .find(|(t, _, _)| *t == tier)
                    .map_or((0, None), |(_, n, since)| (*n, *since));
                m.queue_depth.get_or_create(&labels).set(n as i64);
                let waited = since.map_or(0.0, |s| (now - s).max(0) as f64 / 1000.0);
                m.oldest_wait.get_or_create(&labels).set(waited);
            }
        }
    }
}
