//! Property tests that throw arbitrary requests and worker messages at the validation layer:
//! whatever arrives, it answers Ok or a refusal, never a panic. Arbitrary bytes are decoded as
//! the protobuf types too (SubmitJob, worker messages, ListJobs, RetryJob), as the server
//! would. `PROPTEST_CASES=200000 cargo test --lib fuzz` runs them longer than CI does.

use std::collections::HashMap;

use proptest::prelude::*;
use prost::Message;

use super::{Limits, validate, workers};
use crate::auth::{Principal, Queues, Role};
use crate::proto::{self, connect_request::Msg};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[a-z0-9:._-]{0,130}",
        Just(String::new()),
        Just("0190b5a0-0000-7000-8000-000000000000".to_string()),
        Just("render".to_string()),
    ]
}

fn duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    proptest::option::of(
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    )
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    proptest::option::of(
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

prop_compose! {
    fn submit_request()(
        queue in text(),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
        content_type in text(),
        tier in prop_oneof![-2..6i32, any::<i32>()],
        priority in proptest::option::of(prop_oneof![-2..12i32, any::<i32>()]),
        labels in proptest::collection::hash_map(text(), text(), 0..80),
        run_at in timestamp(),
        delay in duration(),
        max_attempts in proptest::option::of(any::<u32>()),
        backoff_initial in duration(),
        backoff_max in duration(),
        timeout in duration(),
        idempotency_key in text(),
        fairness_key in text(),
        limit_key in text(),
        callback_url in prop_oneof![text(), Just("http://169.254.169.254/".to_string()), Just("https://hooks.example.com/x".to_string())],
        keep in any::<bool>(),
        inputs in proptest::collection::vec(
            prop_oneof![text(), Just("0190b5a0-0000-7000-8000-000000000000/in.mov".to_string())],
            0..20,
        ),
    ) -> proto::SubmitJobRequest {
        proto::SubmitJobRequest {
            queue, payload, content_type, tier, priority, labels, run_at, delay, max_attempts,
            backoff_initial, backoff_max, timeout, idempotency_key, fairness_key, callback_url,
            limit_key, keep, inputs, ..Default::default()
        }
    }
}

/// A submit with a chain of follow-ups (up to 7 levels, beyond the limit of 5), dependencies
/// and a dependency-failure option at each level. The chain is folded from a flat list: a
/// recursive strategy's value trees overflow a test thread's stack.
fn flow_request() -> impl Strategy<Value = proto::SubmitJobRequest> {
    let ids = proptest::collection::vec(
        prop_oneof![
            text(),
            Just("render:0190b5a0-0000-7000-8000-000000000000".to_string())
        ],
        0..4,
    );
    let level = (submit_request(), ids, prop_oneof![0..3i32, any::<i32>()]);
    proptest::collection::vec(level, 1..8).prop_map(|levels| {
        let mut chain: Option<proto::SubmitJobRequest> = None;
        for (mut r, depends_on, fails) in levels.into_iter().rev() {
            r.on_success = chain.take().into_iter().collect();
            r.depends_on = depends_on;
            r.if_dependency_fails = fails;
            chain = Some(r);
        }
        chain.expect("one level at least")
    })
}

prop_compose! {
    fn hello()(
        queues in proptest::collection::vec(text(), 0..5),
        concurrency in any::<u32>(),
        worker_id in text(),
        held in proptest::collection::vec((text(), any::<u64>()), 0..4),
        stopping in any::<bool>(),
    ) -> proto::Hello {
        proto::Hello {
            queues,
            concurrency,
            labels: HashMap::new(),
            version: String::new(),
            worker_id,
            held: held.into_iter().map(|(job_id, token)| proto::HeldLease { job_id, token }).collect(),
            stopping,
        }
    }
}

fn worker_message() -> impl Strategy<Value = Msg> {
    let progress = (text(), any::<u64>(), any::<f32>(), text(), text()).prop_map(
        |(job_id, token, percent, stage, message)| {
            Msg::Progress(proto::ProgressReport {
                job_id,
                token,
                progress: Some(proto::Progress {
                    percent,
                    stage,
                    message,
                }),
            })
        },
    );
    let complete = (
        text(),
        any::<u64>(),
        text(),
        proptest::collection::vec(text(), 0..4),
        text(),
    )
        .prop_map(|(job_id, token, result, artifacts, trace_context)| {
            Msg::Complete(proto::Complete {
                job_id,
                token,
                result,
                artifacts,
                trace_context,
            })
        });
    let fail = (text(), any::<u64>(), text(), any::<bool>(), text()).prop_map(
        |(job_id, token, error, retryable, trace_context)| {
            Msg::Fail(proto::Fail {
                job_id,
                token,
                error,
                retryable,
                trace_context,
            })
        },
    );
    let upload = (text(), any::<u64>(), text(), any::<u64>(), text()).prop_map(
        |(job_id, token, name, size, content_type)| {
            Msg::Upload(proto::UploadRequest {
                job_id,
                token,
                name,
                size,
                content_type,
            })
        },
    );
    let upload_done = (
        text(),
        any::<u64>(),
        text(),
        text(),
        proptest::collection::vec(text(), 0..3),
    )
        .prop_map(|(job_id, token, name, upload_id, part_etags)| {
            Msg::UploadDone(proto::UploadDone {
                job_id,
                token,
                name,
                upload_id,
                part_etags,
            })
        });
    let decline = (text(), any::<u64>(), text()).prop_map(|(job_id, token, reason)| {
        Msg::Decline(proto::Decline {
            job_id,
            token,
            reason,
        })
    });
    let stopping = text().prop_map(|reason| Msg::Stopping(proto::Stopping { reason }));
    prop_oneof![
        progress,
        complete,
        fail,
        decline,
        stopping,
        upload,
        upload_done,
        hello().prop_map(Msg::Hello),
        Just(Msg::Heartbeat(proto::Heartbeat {}))
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2000)
}

fn worker() -> Principal {
    Principal {
        tenant: "ops".into(),
        role: Role::Worker(Queues::Only(vec!["render".into()])),
        credential: "fuzz".into(),
    }
}

/// What the server does with one worker message, minus the network.
fn take(msg: Msg) {
    match msg {
        Msg::Hello(h) => {
            let _ = workers::check_hello(h, &worker(), 1000);
        }
        // What upload messages and a Complete naming artifacts are checked against before
        // any lookup.
        Msg::Upload(u) => {
            let _ = validate::job_id(&u.job_id);
            let _ = crate::artifacts::check_name(&u.name);
            let _ = crate::artifacts::check_upload(u.size, &u.content_type);
        }
        Msg::UploadDone(d) => {
            let _ = validate::job_id(&d.job_id);
            let _ = crate::artifacts::check_name(&d.name);
        }
        Msg::Complete(c) if !c.artifacts.is_empty() => {
            let _ = super::uploads::check_names(&c.artifacts);
        }
        other => {
            let _ = workers::report(other);
        }
    }
}

proptest! {
    // 2,000 cases each in CI; PROPTEST_CASES sets more.
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn submit_requests_never_panic(request in flow_request()) {
        let limits = Limits {
            max_payload: 1024,
            webhooks: Some(std::sync::Arc::new(crate::webhooks::Allow::default())),
            ..Limits::default()
        };
        if let Ok(job) = validate::submit(request.clone(), &limits) {
            // What passes is within the limits.
            prop_assert!(job.payload.len() <= limits.max_payload);
            prop_assert!(job.labels.len() <= limits.max_labels);
            prop_assert!((1..=9).contains(&job.priority));
            prop_assert!(validate::queue(&job.queue).is_ok());
            prop_assert!(job.inputs.len() <= crate::artifacts::MAX_INPUTS);
            prop_assert!(job.inputs.iter().all(|i| crate::artifacts::check_input(i).is_ok()));
        }
    }

    #[test]
    fn worker_messages_never_panic(msg in worker_message()) {
        take(msg);
    }

    #[test]
    fn arbitrary_bytes_decoded_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = proto::SubmitJobRequest::decode(bytes.as_slice()) {
            let _ = validate::submit(request, &Limits::default());
        }
        if let Ok(proto::ConnectRequest { msg: Some(msg) }) = proto::ConnectRequest::decode(bytes.as_slice()) {
            take(msg);
        }
        if let Ok(request) = proto::ListJobsRequest::decode(bytes.as_slice()) {
            let _ = validate::list(request, true, |_| true);
        }
        if let Ok(request) = proto::RetryJobRequest::decode(bytes.as_slice()) {
            let _ = validate::retry(request);
        }
    }
}
