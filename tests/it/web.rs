//! Browsers: gRPC-Web over HTTP/1.1 on the server's one port, behind the CORS allowlist (bad
//! input row 30), and keep-alive events on quiet watches. Spoken here byte for byte, as a
//! browser's gRPC-Web client does, with reqwest on HTTP/1.1.

use std::time::Duration;

use conveyor::proto;
use prost::Message;

use crate::harness::{self, submit};

const APP: &str = "https://app.example.com";

/// A gRPC-Web frame: flag (0 data, 0x80 trailers), big-endian length, bytes.
pub fn frame(message: &impl Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut out = vec![0];
    out.extend((bytes.len() as u32).to_be_bytes());
    out.extend(bytes);
    out
}

/// Splits whole frames off the front of `buf`: (flag, payload) each.
fn frames(buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        out.push((buf[0], buf[5..5 + len].to_vec()));
        buf.drain(..5 + len);
    }
    out
}

fn http1() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().http1_only().build().unwrap()
}

async fn server_with(origins: &[&str]) -> (harness::Redis, harness::Server) {
    let redis = harness::Redis::start().await;
    let mut config = harness::config(&redis);
    config.cors_origins = origins.iter().map(|o| o.to_string()).collect();
    config.watch_keepalive = Duration::from_millis(300);
    let server = harness::Server::start(config).await;
    (redis, server)
}

/// POSTs one gRPC-Web call from `origin`.
async fn call(
    server: &harness::Server,
    method: &str,
    origin: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    http1()
        .post(format!("{}/conveyor.v1.JobService/{method}", server.addr))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", origin)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_submits_and_watches_over_grpc_web() {
    let (_redis, server) = server_with(&[APP]).await;

    // The browser's preflight: answered for the allowed origin, with the headers it may send.
    let preflight = http1()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/conveyor.v1.JobService/SubmitJob", server.addr),
        )
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,authorization,traceparent",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{preflight:?}");
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], APP);
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_string();
    for h in ["authorization", "traceparent", "x-grpc-web", "content-type"] {
        assert!(allowed.contains(h), "{h} in {allowed}");
    }

    // A unary call: one data frame, then the trailers frame with the status.
    let submitted = call(&server, "SubmitJob", APP, frame(&submit("render", "{}"))).await;
    assert_eq!(submitted.status(), 200);
    assert_eq!(submitted.headers()["access-control-allow-origin"], APP);
    let exposed = submitted.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        exposed.contains("grpc-status") && exposed.contains("grpc-message"),
        "{exposed}"
    );
    let mut body = submitted.bytes().await.unwrap().to_vec();
    let parts = frames(&mut body);
    assert_eq!(parts.len(), 2, "{parts:?}");
    let job = proto::SubmitJobResponse::decode(parts[0].1.as_slice())
        .unwrap()
        .job
        .unwrap();
    assert_eq!(parts[1].0, 0x80);
    assert!(String::from_utf8_lossy(&parts[1].1).contains("grpc-status:0"));

    // A refusal travels as a status too.
    let unknown = proto::GetJobRequest {
        job_id: "render:0190b5a0-0000-7000-8000-000000000000".into(),
    };
    let refused = call(&server, "GetJob", APP, frame(&unknown)).await;
    // Trailers-only: the status comes in the headers, or else in a trailers frame.
    let status = match refused.headers().get("grpc-status") {
        Some(v) => v.to_str().unwrap().to_string(),
        None => {
            let mut body = refused.bytes().await.unwrap().to_vec();
            let trailers = frames(&mut body).pop().expect("a trailers frame").1;
            let text = String::from_utf8(trailers).unwrap();
            let line = text.lines().find_map(|l| l.strip_prefix("grpc-status:"));
            line.unwrap_or_default().trim().to_string()
        }
    };
    assert_eq!(status, (tonic::Code::NotFound as i32).to_string());

    // A watch of a job no worker takes: its snapshot, then keep-alives while nothing happens.
    let watch = proto::WatchJobRequest {
        job_id: job.id.clone(),
        after_seq: None,
    };
    let mut stream = call(&server, "WatchJob", APP, frame(&watch)).await;
    assert_eq!(stream.status(), 200);
    let (mut buf, mut events) = (Vec::new(), Vec::new());
    while events.len() < 3 {
        let chunk = tokio::time::timeout(harness::DEADLINE, stream.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream stays open");
        buf.extend_from_slice(&chunk);
        for (flag, payload) in frames(&mut buf) {
            assert_eq!(flag, 0, "no trailers while the job waits");
            let answer = proto::WatchJobResponse::decode(payload.as_slice()).unwrap();
            events.push(answer.event.unwrap());
        }
    }
    use proto::job_event::Kind;
    assert_eq!(events[0].kind, Kind::Snapshot as i32);
    for beat in &events[1..3] {
        assert_eq!(beat.kind, Kind::Keepalive as i32, "{beat:?}");
        assert_eq!((beat.job_id.as_str(), beat.seq), (job.id.as_str(), 0));
    }
}

/// Row 30: a page from an origin not on the allowlist gets no Access-Control-Allow-Origin, so
/// its browser refuses it the answer (and, its preflight failing, never sends a call that could
/// change anything); with no allowlist, no origin gets one.
#[tokio::test]
async fn row_30_an_origin_not_on_the_allowlist_gets_no_cors_headers() {
    for (origins, origin) in [(&[APP][..], "https://evil.example.com"), (&[][..], APP)] {
        let (_redis, server) = server_with(origins).await;
        let preflight = http1()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/conveyor.v1.JobService/SubmitJob", server.addr),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert!(
            preflight
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{origins:?} {origin}: {preflight:?}"
        );
        let read = proto::GetJobRequest {
            job_id: "render:0190b5a0-0000-7000-8000-000000000000".into(),
        };
        let answer = call(&server, "GetJob", origin, frame(&read)).await;
        assert!(
            answer
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
    }
}

/// The metadata cap holds over HTTP/1.1 too: a gRPC-Web call with headers over
/// `CONVEYOR_MAX_METADATA` is answered 431 and changes nothing; one under it is served. Before,
/// HTTP/1.1 requests with hundreds of KB of headers were served.
#[tokio::test]
async fn metadata_over_the_cap_is_refused_over_http1_too() {
    let redis = harness::Redis::start().await;
    let mut config = harness::config(&redis);
    config.max_metadata = 8 * 1024;
    let server = harness::Server::start(config).await;
    let body = frame(&submit("web", "{}"));
    let send = |padding: usize| {
        http1()
            .post(format!("{}/conveyor.v1.JobService/SubmitJob", server.addr))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .header("x-padding", "x".repeat(padding))
            .body(body.clone())
            .send()
    };
    let refused = send(16 * 1024).await.unwrap();
    assert_eq!(
        refused.status(),
        reqwest::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let served = send(1024).await.unwrap();
    assert_eq!(served.status(), reqwest::StatusCode::OK);
    let header = served.headers().get("grpc-status").cloned();
    let mut body = served.bytes().await.unwrap().to_vec();
    let parts = frames(&mut body);
    assert!(
        header.is_none() && String::from_utf8_lossy(&parts[1].1).contains("grpc-status:0"),
        "{header:?} {parts:?}"
    );
}
