//! Webhooks: a receiver run by the test gets the ended job, signed, and again after answering
//! 500; a queue's webhook; BAD_INPUTS row 28 (callback URLs to internal addresses).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use conveyor::config::Config;
use conveyor::proto::{self, JobState};
use conveyor::scheduler::QueueDefaults;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Code;

use crate::bad_inputs::dbsize;
use crate::harness::{self, Redis, Server, Worker, eventually, submit, submit_job, wait_state};

const SECRET: &str = "a-webhook-secret-for-tests";

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// An HTTP receiver on a loopback port that answers each request with the next of `statuses`
/// (then 200), and keeps what it received.
async fn receiver(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, mut body) = loop {
                let n = socket.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    break (head, buf[end + 4..].to_vec());
                }
            };
            let mut lines = head.lines();
            let path = lines
                .next()
                .unwrap_or_default()
                .split(' ')
                .nth(1)
                .unwrap_or_default();
            let headers: HashMap<String, String> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let length: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while body.len() < length {
                let n = socket.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            seen.lock().unwrap().push(Received {
                path: path.to_string(),
                headers,
                body,
            });
            let status = statuses.next().unwrap_or(200);
            let answer =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    (base, got)
}

fn with_webhooks(redis: &Redis) -> Config {
    let mut config = harness::config(redis);
    config.webhook_secret = Some(SECRET.into());
    // The receiver is on loopback, which only an allowlist lets through.
    config.webhook_allow = "127.0.0.1".into();
    config
}

/// The signature a receiver computes to check a delivery.
fn expected_signature(timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={timestamp},v1={hex}")
}

#[tokio::test]
async fn an_ended_job_is_posted_signed_and_retried_until_the_receiver_takes_it() {
    harness::logs();
    let redis = Redis::start().await;
    let server = Server::start(with_webhooks(&redis)).await;
    let (base, got) = receiver(vec![500]).await;
    let mut jobs = server.jobs().await;
    let mut request = submit("render", "{}");
    request.callback_url = format!("{base}/hooks/render");
    let job = submit_job(&mut jobs, request).await;
    assert_eq!(job.callback_url, format!("{base}/hooks/render"));
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let a = worker.assignment().await;
    worker
        .complete(&job.id, a.token, r#"{"video":"out.mp4"}"#)
        .await;
    wait_state(&mut jobs, &job.id, JobState::Succeeded).await;

    let deliveries = eventually("the webhook, twice", || {
        let got = got.clone();
        async move {
            let got = got.lock().unwrap().clone();
            (got.len() >= 2).then_some(got)
        }
    })
    .await;
    // Retried after the 500, as the same delivery.
    assert_eq!(deliveries.len(), 2);
    let (first, second) = (&deliveries[0], &deliveries[1]);
    assert_eq!(
        first.headers["conveyor-delivery"],
        second.headers["conveyor-delivery"]
    );
    for d in &deliveries {
        assert_eq!(d.path, "/hooks/render");
        assert_eq!(d.headers["conveyor-event"], "job.succeeded");
        assert_eq!(d.headers["content-type"], "application/json");
        let signature = &d.headers["conveyor-signature"];
        let timestamp = signature
            .trim_start_matches("t=")
            .split(',')
            .next()
            .unwrap();
        assert_eq!(
            signature,
            &expected_signature(timestamp, &d.body),
            "a bad signature"
        );
        let json: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(json["event"], "job.succeeded");
        assert_eq!(json["job"]["id"], job.id);
        assert_eq!(json["job"]["state"], "SUCCEEDED");
        assert_eq!(json["job"]["result"], r#"{"video":"out.mp4"}"#);
    }
    // A tampered body does not match the signature.
    let mut tampered = first.body.clone();
    tampered[0] ^= 1;
    let signature = &first.headers["conveyor-signature"];
    let timestamp = signature
        .trim_start_matches("t=")
        .split(',')
        .next()
        .unwrap();
    assert_ne!(signature, &expected_signature(timestamp, &tampered));
}

#[tokio::test]
async fn a_queue_webhook_hears_of_its_jobs_that_name_none() {
    harness::logs();
    let redis = Redis::start().await;
    let (base, got) = receiver(vec![]).await;
    let mut config = with_webhooks(&redis);
    let upload = QueueDefaults {
        webhook: Some(format!("{base}/uploads")),
        ..Default::default()
    };
    config.queue_defaults = vec![("upload".into(), upload)];
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("upload", "{}")).await;
    let quiet = submit_job(&mut jobs, submit("render", "{}")).await;
    for id in [&job.id, &quiet.id] {
        let cancel = proto::CancelJobRequest { job_id: id.clone() };
        jobs.cancel_job(cancel).await.unwrap();
    }
    let delivery = eventually("the queue's webhook", || {
        let got = got.clone();
        async move { got.lock().unwrap().first().cloned() }
    })
    .await;
    assert_eq!(delivery.path, "/uploads");
    assert_eq!(delivery.headers["conveyor-event"], "job.cancelled");
    let json: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(json["job"]["id"], job.id);
    // The job in a queue without a webhook was not posted.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(got.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn row_28_callback_urls_to_internal_addresses() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.webhook_secret = Some(SECRET.into());
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    let keys = dbsize(&redis).await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:8080/hook",
        "http://127.0.0.1/hook",
        "http://10.0.0.5/hook",
        "http://192.168.1.10/hook",
        "http://172.20.0.1/hook",
        "http://[::1]/hook",
        "http://[fd12::1]/hook",
        "file:///etc/passwd",
        "ftp://example.com/x",
    ] {
        let mut request = submit("render", "{}");
        request.callback_url = url.into();
        let status = jobs.submit_job(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{url}: {status:?}");
        assert!(status.message().contains("callback_url"), "{status:?}");
        assert_eq!(dbsize(&redis).await, keys, "{url} changed Redis");
    }
    let mut fine = submit("render", "{}");
    fine.callback_url = "https://hooks.example.com/conveyor".into();
    submit_job(&mut jobs, fine).await;

    // Without a webhook secret, webhooks are off, and a callback URL says so.
    let redis = Redis::start().await;
    let server = Server::start(harness::config(&redis)).await;
    let mut request = submit("render", "{}");
    request.callback_url = "https://hooks.example.com/conveyor".into();
    let status = server.jobs().await.submit_job(request).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}
