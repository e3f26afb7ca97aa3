//! Bad inputs (the BAD_INPUTS table, rows 1-15, 19-25, 31 and 32; rows 16-18, 26 and 27 are in
//! `auth.rs` and `tokens.rs`, row 28 in `webhooks.rs`; rows 29 and 30 wait for artifacts and
//! gRPC-Web): each gets the right status and a message a person can act on, changes nothing,
//! and leaves the server serving.

use std::future::poll_fn;
use std::pin::Pin;

use conveyor::proto::job_service_client::JobServiceClient;
use conveyor::proto::{self, Assignment, ConnectResponse, Job, JobState, ReportResult};
use conveyor::proto::{connect_request::Msg, connect_response::Msg as ServerMsg};
use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost_types::{Duration, Timestamp};
use tokio_stream::StreamExt;
use tonic::client::Grpc;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body as _, Service, http};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::harness::{self, Redis, Server, Worker, get, hello, submit, submit_job};

const SUBMIT: &str = "/conveyor.v1.JobService/SubmitJob";
const MIB: usize = 1 << 20;
/// DBSIZE's reply for an empty Redis.
const EMPTY: &str = ":0\r\n";

/// Passes message bodies through as they are, so a test can put any bytes in a gRPC frame.
#[derive(Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// One unary call whose request message is `body`, byte for byte.
async fn raw_call(server: &Server, method: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = Grpc::new(server.channel().await);
    grpc.ready().await.expect("channel ready");
    let path = http::uri::PathAndQuery::from_static(method);
    let response = grpc.unary(tonic::Request::new(body), path, Raw).await?;
    Ok(response.into_inner())
}

/// One hand-built HTTP/2 request (headers and framing included); returns the grpc-status it gets,
/// from the headers of a trailers-only answer or from the trailers.
async fn raw_http(server: &Server, encoding: Option<&'static str>, frame: &[u8]) -> Status {
    // `String` is the one ready-made body type; the frames used here are ASCII.
    let body = String::from_utf8(frame.to_vec()).expect("an ASCII frame");
    let mut request = http::Request::builder()
        .method("POST")
        .uri(SUBMIT)
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(encoding) = encoding {
        request = request.header("grpc-encoding", encoding);
    }
    let request = request.body(tonic::body::Body::new(body)).unwrap();
    let mut channel: Channel = server.channel().await;
    poll_fn(|cx| channel.poll_ready(cx))
        .await
        .expect("channel ready");
    let response = channel.call(request).await.expect("an HTTP answer");
    if let Some(status) = Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(trailers) = frame.expect("a body frame").into_trailers() {
            return Status::from_header_map(&trailers).expect("grpc-status in the trailers");
        }
    }
    panic!("the answer carried no grpc-status");
}

/// How many keys Redis holds, the reconciler's marker aside: a bad request must leave it as it
/// was.
pub async fn dbsize(redis: &Redis) -> String {
    let count = "return redis.call('DBSIZE') - redis.call('EXISTS', 'cv:marker')";
    redis.command(&["EVAL", count, "0"]).await.expect("DBSIZE")
}

/// Redis still holds `keys` keys, and a valid submit on a fresh connection still works.
async fn unharmed(redis: &Redis, server: &Server, keys: &str) {
    assert_eq!(dbsize(redis).await, keys, "a refused request changed Redis");
    let job = submit_job(&mut server.jobs().await, submit("after", "fine")).await;
    assert_eq!(job.state, JobState::Queued as i32);
}

/// Checks the code, that the message mentions `needle` (the field, or what to fix), and that it
/// shows nothing of the server's insides.
#[track_caller]
fn check(status: Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let message = status.message();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
    let internals = message.contains(".rs:") || message.contains("panicked");
    assert!(!internals, "{message:?}");
}

#[track_caller]
fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) {
    let status = result.expect_err("the request must be refused");
    check(status, code, needle);
}

/// A valid SubmitJob changed by `edit`.
fn req(edit: impl FnOnce(&mut proto::SubmitJobRequest)) -> proto::SubmitJobRequest {
    let mut request = submit("q", "x");
    edit(&mut request);
    request
}

/// Submits each request, expects INVALID_ARGUMENT naming `field`, and that nothing was stored.
async fn refuse_submits(field: &str, requests: impl IntoIterator<Item = proto::SubmitJobRequest>) {
    let (redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    for request in requests {
        assert_status(jobs.submit_job(request).await, Code::InvalidArgument, field);
        assert_eq!(dbsize(&redis).await, EMPTY);
    }
    unharmed(&redis, &server, EMPTY).await;
}

fn seconds(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

#[tokio::test]
async fn rows_01_05_06_undecodable_bodies_and_unknown_methods() {
    let (redis, server) = harness::start().await;
    // Row 1: a valid request cut short, and bytes that are no protobuf at all (field 1 with wire
    // type 7, which does not exist, then a varint that never ends).
    let mut truncated = submit("q", "a payload long enough to cut").encode_to_vec();
    truncated.truncate(truncated.len() - 5);
    let garbage = [0x0f].into_iter().chain([0xff; 11]).collect();
    for body in [truncated, garbage] {
        assert_status(raw_call(&server, SUBMIT, body).await, Code::Internal, "");
    }
    // A frame whose header promises 100 bytes, then the body ends.
    let status = raw_http(&server, None, b"\x00\x00\x00\x00\x64short").await;
    check(status, Code::Internal, "EOF");
    // Row 5: field 1 (queue), wire type 2 (length-delimited), two bytes that are not UTF-8.
    let result = raw_call(&server, SUBMIT, vec![0x0a, 0x02, 0xff, 0xfe]).await;
    assert_status(result, Code::Internal, "UTF-8");
    // Row 6.
    let result = raw_call(&server, "/conveyor.v1.JobService/Nope", Vec::new()).await;
    assert_status(result, Code::Unimplemented, "");
    unharmed(&redis, &server, EMPTY).await;
}

#[tokio::test]
async fn row_02_message_over_the_size_limit() {
    let (redis, server) = harness::start().await;
    let request = req(|r| r.payload = vec![b'x'; 3 * MIB]);
    // tonic checks the frame's length prefix against max_decoding_message_size (1 MiB + 64 KiB)
    // and answers OUT_OF_RANGE before decoding anything.
    let result = server.jobs().await.submit_job(request).await;
    assert_status(result, Code::OutOfRange, "too large");
    unharmed(&redis, &server, EMPTY).await;
}

#[tokio::test]
async fn row_03_gzip_body_that_inflates_past_the_limit() {
    let (redis, server) = harness::start().await;
    let request = req(|r| r.payload = vec![0; 5 * MIB]);
    let jobs = server.jobs().await;
    let mut jobs = jobs.send_compressed(CompressionEncoding::Gzip);
    let result = jobs.submit_job(request).await;
    assert_status(result, Code::ResourceExhausted, "size limit");
    unharmed(&redis, &server, EMPTY).await;
    // Compressed requests within the limit are fine.
    submit_job(&mut jobs, submit("zip", "small")).await;
}

#[tokio::test]
async fn row_04_unknown_grpc_encoding() {
    let (redis, server) = harness::start().await;
    let status = raw_http(&server, Some("br"), b"\x01\x00\x00\x00\x03abc").await;
    check(status, Code::Unimplemented, "br");
    unharmed(&redis, &server, EMPTY).await;
}

#[tokio::test]
async fn row_07_unknown_or_unspecified_enums() {
    let unspecified = req(|r| r.tier = proto::Tier::Unspecified as i32);
    refuse_submits("tier", [unspecified, req(|r| r.tier = 99)]).await;

    let (redis, server) = harness::start().await;
    let mut list = proto::ListJobsRequest::default();
    (list.queue, list.state) = ("q".into(), 99);
    let result = server.jobs().await.list_jobs(list).await;
    assert_status(result, Code::InvalidArgument, "state");
    unharmed(&redis, &server, EMPTY).await;
}

#[tokio::test]
async fn row_08_bad_queue_names() {
    let names = ["", "has space", "bell\u{7}", &"q".repeat(129)];
    refuse_submits("queue", names.map(|q| submit(q, "x"))).await;
}

#[tokio::test]
async fn row_09_payload_one_byte_over_the_limit() {
    // Ours, not tonic's: the envelope lets it through, so the answer can name the field.
    refuse_submits("payload", [req(|r| r.payload = vec![b'x'; MIB + 1])]).await;

    let (_redis, server) = harness::start().await;
    let exact = req(|r| r.payload = vec![b'x'; MIB]);
    let job = submit_job(&mut server.jobs().await, exact).await;
    assert_eq!(job.payload.len(), MIB);
}

/// A payload that says it is JSON must parse as JSON (`conveyor submit` sends
/// application/json unless told otherwise): INVALID_ARGUMENT, nothing stored.
#[tokio::test]
async fn a_payload_declared_json_must_be_json() {
    let json = |payload: &[u8], content_type: &str| {
        req(|r| {
            r.payload = payload.to_vec();
            r.content_type = content_type.into();
        })
    };
    refuse_submits(
        "payload",
        [
            json(br#"{"video":"#, "application/json"),
            json(b"not json", "application/vnd.render+json; charset=utf-8"),
        ],
    )
    .await;
    // The CLI says so and exits non-zero, instead of printing a job id.
    let (_redis, server) = harness::start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args([
            "submit",
            "--addr",
            &server.addr,
            "--queue",
            "render",
            r#"{"video":"#,
        ])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("not valid JSON"), "{said}");
}

#[tokio::test]
async fn row_10_too_many_labels_or_a_huge_label_key() {
    let many = req(|r| r.labels = (0..10_000).map(|i| (format!("k{i}"), "v".into())).collect());
    let huge = req(|r| r.labels = [("k".repeat(1_000_000), "v".into())].into());
    refuse_submits("labels", [many, huge]).await;
}

#[tokio::test]
async fn rows_11_12_13_numbers_and_times_out_of_range() {
    let priorities = [0, 10, -1].map(|p| req(|r| r.priority = Some(p)));
    refuse_submits("priority", priorities).await;
    let timeouts = [0, -1, 8 * 24 * 3600].map(|s| req(|r| r.timeout = seconds(s)));
    refuse_submits("timeout", timeouts).await;
    let attempts = [0, 1_000_000].map(|n| req(|r| r.max_attempts = Some(n)));
    refuse_submits("max_attempts", attempts).await;
    // 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    let run_at = [0, 253_402_300_799].map(|seconds| Some(Timestamp { seconds, nanos: 0 }));
    refuse_submits("run_at", run_at.map(|t| req(|r| r.run_at = t))).await;
    refuse_submits("delay", [req(|r| r.delay = seconds(-5))]).await;
}

#[tokio::test]
async fn row_14_idempotency_key_reused_with_another_payload() {
    let (redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let first = submit_job(&mut jobs, req(|r| r.idempotency_key = "order-7".into())).await;
    let before = get(&mut jobs, &first.id).await;
    let keys = dbsize(&redis).await;
    let other = req(|r| (r.idempotency_key, r.payload) = ("order-7".into(), b"y".into()));
    assert_status(jobs.submit_job(other).await, Code::AlreadyExists, &first.id);
    assert_eq!(get(&mut jobs, &first.id).await, before);
    unharmed(&redis, &server, &keys).await;
}

/// Cancels `id` and returns the job as the server answered.
async fn cancel(jobs: &mut JobServiceClient<Channel>, id: &str) -> Result<Job, Status> {
    let job_id = id.to_string();
    let response = jobs.cancel_job(proto::CancelJobRequest { job_id }).await?;
    Ok(response.into_inner().job.expect("the cancelled job"))
}

/// The status a WatchJob ends with, whether the call or its first item carries it.
async fn watch(server: &Server, job_id: &str) -> Result<(), Status> {
    let request = proto::WatchJobRequest {
        job_id: job_id.into(),
        after_seq: None,
    };
    let mut stream = server.jobs().await.watch_job(request).await?.into_inner();
    match stream.next().await {
        Some(Err(status)) => Err(status),
        other => panic!("expected the watch to fail, got {other:?}"),
    }
}

#[tokio::test]
async fn row_15_malformed_or_unknown_job_ids() {
    let (redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let unknown = format!("q:{}", uuid::Uuid::now_v7());
    let malformed = ("not-a-uuid", Code::InvalidArgument, "job_id");
    for (id, code, needle) in [malformed, (&unknown, Code::NotFound, "no job")] {
        let job_id = id.to_string();
        let get = jobs.get_job(proto::GetJobRequest { job_id }).await;
        assert_status(get, code, needle);
        assert_status(cancel(&mut jobs, id).await, code, needle);
        assert_status(watch(&server, id).await, code, needle);
    }
    unharmed(&redis, &server, EMPTY).await;
}

/// A job on `queue`, leased by a fresh worker (concurrency 1) that reports as `worker`.
async fn running(server: &Server, queue: &str, worker: &str) -> (Worker, Assignment, Job) {
    let job = submit_job(&mut server.jobs().await, submit(queue, "x")).await;
    let mut worker = Worker::connect_with(server, hello(&[queue], 1, worker)).await;
    let a = worker.assignment().await;
    assert_eq!(a.job.as_ref().unwrap().id, job.id);
    let job = get(&mut server.jobs().await, &job.id).await;
    assert_eq!(job.state, JobState::Running as i32);
    (worker, a, job)
}

#[track_caller]
fn assert_report(r: ReportResult, code: Code, needle: &str) {
    assert_eq!(r.code, code as i32, "{r:?}");
    assert!(r.message.contains(needle), "{needle:?} not in {r:?}");
}

/// Reports progress on `a`'s job under `token` and returns the answer (only refusals get one).
async fn progress(worker: &mut Worker, a: &Assignment, token: u64, percent: f32) -> ReportResult {
    let mut a = a.clone();
    a.token = token;
    worker.progress(&a, percent, "stage").await;
    worker.report_result().await
}

/// Completes `a`'s job, as a worker that did the work would; the server must accept it.
async fn finish(worker: &mut Worker, a: &Assignment) {
    let id = a.job.as_ref().unwrap().id.clone();
    assert_report(worker.complete(&id, a.token, "done").await, Code::Ok, "");
}

#[tokio::test]
async fn row_19_stale_fencing_tokens() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let (mut worker, a, job) = running(&server, "q", "w1").await;
    let r = worker.complete(&job.id, a.token + 1, "done").await;
    assert_report(r, Code::FailedPrecondition, "stale fencing token");
    let r = progress(&mut worker, &a, a.token + 1, 50.0).await;
    assert_report(r, Code::FailedPrecondition, "stale fencing token");
    assert_eq!(get(&mut jobs, &job.id).await, job);

    // The first attempt's token, once a retry has leased the job again.
    assert_eq!(worker.fail(&job.id, a.token, "flaky", true).await.code, 0);
    let second = worker.assignment().await;
    assert_eq!(second.attempt, 2);
    let retried = get(&mut jobs, &job.id).await;
    let r = worker.complete(&job.id, a.token, "late").await;
    assert_report(r, Code::FailedPrecondition, "stale fencing token");
    let r = worker.fail(&job.id, a.token, "late", false).await;
    assert_report(r, Code::FailedPrecondition, "stale fencing token");
    assert_eq!(get(&mut jobs, &job.id).await, retried);
    finish(&mut worker, &second).await;
}

#[tokio::test]
async fn row_19_a_refused_report_keeps_the_workers_slot() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let j1 = submit_job(&mut jobs, submit("q", "1")).await;
    let j2 = submit_job(&mut jobs, submit("q", "2")).await;
    let mut busy = Worker::connect_with(&server, hello(&["q"], 3, "busy")).await;
    let (a1, a2) = (busy.assignment().await, busy.assignment().await);
    let r = busy.complete(&j1.id, a1.token + 1, "x").await;
    assert_report(r, Code::FailedPrecondition, "token");
    let r = busy.fail(&j2.id, a2.token + 1, "x", false).await;
    assert_report(r, Code::FailedPrecondition, "token");
    // `busy` still runs two jobs: one free slot, fewer than `idle`'s two, so the next job is
    // idle's. Were the refused reports counted as finished, busy would have three and take it.
    let _idle = Worker::connect_with(&server, hello(&["q"], 2, "idle")).await;
    let j3 = submit_job(&mut jobs, submit("q", "3")).await;
    let j3 = harness::wait_state(&mut jobs, &j3.id, JobState::Running).await;
    assert_eq!(j3.worker_id, "idle");
}

#[tokio::test]
async fn row_20_garbage_fencing_token_or_job_id() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let (mut worker, a, job) = running(&server, "q", "w1").await;
    let r = worker.complete(&job.id, 0, "x").await;
    assert_report(r, Code::InvalidArgument, "token");
    let r = worker.fail(&job.id, 0, "x", true).await;
    assert_report(r, Code::InvalidArgument, "token");
    let r = progress(&mut worker, &a, 0, 10.0).await;
    assert_report(r, Code::InvalidArgument, "token");
    let r = worker.complete("not-a-uuid", a.token, "x").await;
    assert_report(r, Code::InvalidArgument, "job_id");
    assert_eq!(get(&mut jobs, &job.id).await, job);
    finish(&mut worker, &a).await;
}

#[tokio::test]
async fn rows_21_22_reports_after_the_job_succeeded() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let (mut worker, a, job) = running(&server, "q", "w1").await;
    finish(&mut worker, &a).await;
    let done = get(&mut jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32);
    assert_eq!(done.result, "done");
    // Row 21: the same completion again is fine; a different result is not.
    finish(&mut worker, &a).await;
    let r = worker.complete(&job.id, a.token, "other").await;
    assert_report(r, Code::FailedPrecondition, "different result");
    // Row 22.
    let r = progress(&mut worker, &a, a.token, 50.0).await;
    assert_report(r, Code::FailedPrecondition, "SUCCEEDED");
    assert_eq!(get(&mut jobs, &job.id).await, done);
}

#[tokio::test]
async fn row_23_progress_percent_out_of_range() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let (mut worker, a, job) = running(&server, "q", "w1").await;
    worker.progress(&a, 10.0, "start").await;
    let job = harness::eventually("the valid progress to be stored", || {
        let (mut jobs, id) = (jobs.clone(), job.id.clone());
        async move {
            let job = get(&mut jobs, &id).await;
            let stored = job.progress.as_ref().map(|p| p.percent);
            (stored == Some(10.0)).then_some(job)
        }
    })
    .await;
    for percent in [f32::NAN, -1.0, 150.0] {
        let r = progress(&mut worker, &a, a.token, percent).await;
        assert_report(r, Code::InvalidArgument, "progress.percent");
    }
    assert_eq!(get(&mut jobs, &job.id).await, job);
    finish(&mut worker, &a).await;
}

/// The status a worker stream ends with, from the Connect call or a later item.
async fn stream_end(opened: Result<(impl Sized, Streaming<ConnectResponse>), Status>) -> Status {
    let (_tx, mut rx) = match opened {
        Ok(ends) => ends,
        Err(status) => return status,
    };
    loop {
        match rx.next().await.expect("the stream to end with a status") {
            Ok(ConnectResponse {
                msg: Some(ServerMsg::Heartbeat(_) | ServerMsg::Welcome(_)),
            }) => {}
            Ok(other) => panic!("expected the stream to end, got {other:?}"),
            Err(status) => return status,
        }
    }
}

#[tokio::test]
async fn row_24_a_stream_must_start_with_one_hello() {
    let (redis, server) = harness::start().await;
    // Whatever it says, a first message other than Hello ends the stream.
    let heartbeat = Msg::Heartbeat(proto::Heartbeat {});
    for first in [
        Msg::Progress(Default::default()),
        Msg::Complete(Default::default()),
        heartbeat,
    ] {
        let status = stream_end(Worker::open(&server, first).await).await;
        check(status, Code::FailedPrecondition, "Hello");
    }
    unharmed(&redis, &server, EMPTY).await;

    let worker = Worker::connect(&server, &["q"], 1).await;
    worker.send(Msg::Hello(hello(&["q"], 1, ""))).await;
    let status = stream_end(Ok((worker.tx, worker.rx))).await;
    check(status, Code::FailedPrecondition, "second Hello");
    // The next worker is served as usual.
    let (mut next, a, _) = running(&server, "q", "w2").await;
    finish(&mut next, &a).await;
}

#[tokio::test]
async fn row_25_a_job_never_assigned_to_this_worker() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let (mut owner, a, job) = running(&server, "q", "owner").await;
    let mut stranger = Worker::connect_with(&server, hello(&["other"], 1, "stranger")).await;
    let r = stranger.complete(&job.id, a.token, "stolen").await;
    assert_report(r, Code::FailedPrecondition, "never assigned");
    let r = stranger.fail(&job.id, a.token, "stolen", false).await;
    assert_report(r, Code::FailedPrecondition, "never assigned");
    // Still RUNNING for its owner.
    assert_eq!(get(&mut jobs, &job.id).await, job);
    assert_eq!(job.worker_id, "owner");
    finish(&mut owner, &a).await;
}

#[tokio::test]
async fn row_31_cancel_of_a_finished_job() {
    let (redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let (mut worker, a, succeeded) = running(&server, "q", "w1").await;
    finish(&mut worker, &a).await;
    let cancelled = submit_job(&mut jobs, submit("q2", "x")).await;
    cancel(&mut jobs, &cancelled.id).await.expect("cancel");
    let keys = dbsize(&redis).await;
    for id in [&succeeded.id, &cancelled.id] {
        let before = get(&mut jobs, id).await;
        let result = cancel(&mut jobs, id).await;
        assert_status(result, Code::FailedPrecondition, "already finished");
        assert_eq!(get(&mut jobs, id).await, before);
    }
    unharmed(&redis, &server, &keys).await;
}

#[tokio::test]
async fn row_32_retry_of_a_job_that_is_not_failed() {
    let (redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let (mut worker, a, succeeded) = running(&server, "q", "w1").await;
    finish(&mut worker, &a).await;
    let queued = submit_job(&mut jobs, submit("q2", "x")).await;
    let cancelled = submit_job(&mut jobs, submit("q3", "x")).await;
    cancel(&mut jobs, &cancelled.id).await.expect("cancel");
    let keys = dbsize(&redis).await;
    for (id, state) in [
        (&succeeded.id, "SUCCEEDED"),
        (&queued.id, "QUEUED"),
        (&cancelled.id, "CANCELLED"),
    ] {
        let before = get(&mut jobs, id).await;
        let retry = proto::RetryJobRequest {
            job_id: id.clone(),
            ..Default::default()
        };
        assert_status(jobs.retry_job(retry).await, Code::FailedPrecondition, state);
        assert_eq!(get(&mut jobs, id).await, before);
    }
    // A job id and a queue at once, neither, or a malformed id.
    let both = proto::RetryJobRequest {
        job_id: queued.id.clone(),
        queue: "q2".into(),
        ..Default::default()
    };
    assert_status(jobs.retry_job(both).await, Code::InvalidArgument, "either");
    let neither = proto::RetryJobRequest::default();
    assert_status(
        jobs.retry_job(neither).await,
        Code::InvalidArgument,
        "either",
    );
    let malformed = proto::RetryJobRequest {
        job_id: "not an id".into(),
        ..Default::default()
    };
    assert_status(
        jobs.retry_job(malformed).await,
        Code::InvalidArgument,
        "job_id",
    );
    unharmed(&redis, &server, &keys).await;
}
