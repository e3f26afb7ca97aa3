//! One trace from a backend's submit, through the queue and a worker's run, to the reported end:
//! a real server and the real worker runtime in this process, their spans caught by an
//! in-memory exporter. Its own test binary, because a process has one tracing subscriber.

#[path = "it/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;

use conveyor::proto::JobState;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The backend's trace, as its own OpenTelemetry SDK would send it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_runs_from_the_submit_through_the_queue_and_the_worker_to_the_end() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("conveyor")))
        .init();
    conveyor::telemetry::enable_spans();

    let redis = harness::Redis::start().await;
    let server = harness::Server::start(harness::config(&redis)).await;
    let mut jobs = server.jobs().await;
    let mut request = tonic::Request::new(harness::submit("render", "{}"));
    request
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    let job = jobs
        .submit_job(request)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    // `conveyor worker`'s runtime; its command answers with the context it was handed.
    let options = conveyor::worker::Options {
        server: conveyor::client::Target::new(server.addr.clone()),
        queues: vec!["render".into()],
        concurrency: 1,
        command: ["sh", "-c", r#"echo "RESULT \"$TRACEPARENT\"""#]
            .map(String::from)
            .to_vec(),
        worker_id: None,
        labels: Default::default(),
        output_root: None,
        shutdown_timeout: Duration::from_secs(5),
        guard: Some(env!("CARGO_BIN_EXE_conveyor").into()),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(conveyor::worker::run(options, async {
        let _ = stopped.await;
    }));
    let done = harness::wait_state(&mut jobs, &job.id, JobState::Succeeded).await;
    let _ = stop.send(());
    let _ = worker.await;
    assert!(
        done.result.contains(TRACE_ID) && !done.result.contains("00f067aa0ba902b7"),
        "the command continues the trace under the worker's span: {}",
        done.result
    );

    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let named = |name: &str| -> &SpanData {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("a {name} span among {:?}", names(&spans)))
    };
    let submit = named("conveyor.v1.JobService/SubmitJob");
    let queued = named("job.queued");
    let run = named("job.run");
    let complete = named("job.complete");
    let script = named("redis submit");
    for span in [submit, script, queued, run, complete] {
        assert_eq!(
            span.span_context.trace_id().to_string(),
            TRACE_ID,
            "{} is in the backend's trace",
            span.name
        );
    }
    // submit -> (its script, queued, run) -> complete: each a child of the one before.
    assert_eq!(submit.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(script.parent_span_id, submit.span_context.span_id());
    assert_eq!(queued.parent_span_id, submit.span_context.span_id());
    assert_eq!(run.parent_span_id, submit.span_context.span_id());
    assert_eq!(complete.parent_span_id, run.span_context.span_id());
    assert!(
        queued.end_time >= queued.start_time && run.end_time >= run.start_time,
        "spans have their times"
    );
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}
