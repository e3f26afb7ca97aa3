//! Traces: a process's tracing subscriber (logs on stderr, as text or, with
//! `CONVEYOR_LOG_FORMAT=json`, one JSON object per line for log pipelines; and spans to
//! OpenTelemetry over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names a
//! collector), and the W3C trace context a job carries from its submit to its worker and back.
//!
//! Without an endpoint nothing is exported and no OpenTelemetry layer is installed: spans cost
//! what tracing's cost. A job still carries the submitter's `traceparent` through, so a worker
//! that exports continues the caller's trace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The tracer name of Conveyor's own spans.
const TRACER: &str = "conveyor";

/// Whether spans go anywhere (an exporter is installed): the spans of script calls are made
/// only then, so a server that exports nothing pays nothing for them.
static SPANS: AtomicBool = AtomicBool::new(false);

/// From now on, script calls made inside an RPC get spans (`init` calls it when exporting; a
/// test with its own exporter calls it itself).
pub fn enable_spans() {
    SPANS.store(true, Ordering::Relaxed);
}

/// The span of one transition script call, a child of the RPC it serves; none outside an RPC
/// (the dispatcher's lease calls serve many jobs, whose own spans say what happened to them).
pub fn script_span(name: &'static str) -> tracing::Span {
    if !SPANS.load(Ordering::Relaxed) || tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "script",
        otel.name = %format_args!("redis {name}"),
        db.system = "redis",
        db.operation = name,
    )
}

/// Flushes the exporter when the process ends.
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Whether the environment asks for traces to be exported (the standard variables).
fn exporting() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Whether `CONVEYOR_LOG_FORMAT` asks for JSON lines (`json`) rather than text (`text`, the
/// default).
fn json_logs() -> bool {
    match std::env::var("CONVEYOR_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") | Ok("") | Err(_) => false,
        Ok(other) => {
            eprintln!("warning: CONVEYOR_LOG_FORMAT={other:?} is not json or text; logging text");
            false
        }
    }
}

/// Installs the process's subscriber: logs filtered by `RUST_LOG` (else `default`), and the
/// OpenTelemetry layer when exporting. Keep the guard until the process ends.
pub fn init(default: &str) -> Guard {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = json_logs();
    let logs = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    // One object per line: time, level, target, message and fields at the top, spans listed.
    let json_logs = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
    });
    let provider = if exporting() {
        match provider() {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("warning: traces are not exported: {e}");
                None
            }
        }
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        global::set_tracer_provider(p.clone());
        enable_spans();
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer(TRACER))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(json_logs)
        .with(otel)
        .init();
    Guard(provider)
}

/// The OTLP/gRPC exporter the standard variables describe (endpoint, headers, timeout,
/// certificates), batched; the resource from `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`.
fn provider() -> Result<SdkTracerProvider, String> {
    if std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").is_ok_and(|p| p != "grpc") {
        return Err("only OTEL_EXPORTER_OTLP_PROTOCOL=grpc is supported".into());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "conveyor".into()))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// gRPC metadata (or any HTTP headers) as a carrier of trace context.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one RPC, a child of the caller's trace context (`traceparent` metadata), when
/// spans go anywhere (measured: making it for nothing cost submits about a tenth). A worker's
/// stream gets none: it lasts for hours and serves many jobs, each with its own trace.
pub fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    if !SPANS.load(Ordering::Relaxed) || path.starts_with("/conveyor.v1.WorkerService/") {
        return tracing::Span::none();
    }
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// The W3C `traceparent` of `context`, if it has a valid span.
fn traceparent_of(context: &Context) -> Option<String> {
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    carrier.remove("traceparent")
}

/// What a new job carries: the current span's context when traces are exported here, else
/// the caller's own `traceparent` as it came, so the worker still continues the caller's trace.
pub fn job_trace_context(caller: &http::HeaderMap) -> String {
    let current = SPANS
        .load(Ordering::Relaxed)
        .then(|| traceparent_of(&tracing::Span::current().context()))
        .flatten();
    current
        .or_else(|| {
            // Most callers send none: nothing to parse.
            caller.get("traceparent")?;
            let parent = TraceContextPropagator::new().extract(&Headers(caller));
            traceparent_of(&parent)
        })
        .unwrap_or_default()
}

/// The context a `traceparent` names (an empty one for none or a malformed one).
pub fn context_of(traceparent: &str) -> Context {
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    TraceContextPropagator::new().extract(&carrier)
}

/// A span of a job's life in its trace, named `name`, from `start` to now (the queue wait) or
/// to when the returned span is dropped; none when the job has no trace context.
pub fn job_span(
    name: &'static str,
    trace_context: &str,
    job_id: &str,
    start: Option<SystemTime>,
) -> Option<global::BoxedSpan> {
    // Called for every lease and report: nothing to parse when nothing is exported or carried.
    if trace_context.is_empty() || !SPANS.load(Ordering::Relaxed) {
        return None;
    }
    let parent = context_of(trace_context);
    if !parent.span().span_context().is_valid() {
        return None;
    }
    let tracer = global::tracer(TRACER);
    let mut builder = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_attributes([KeyValue::new("conveyor.job.id", job_id.to_string())]);
    if let Some(start) = start {
        builder = builder.with_start_time(start);
    }
    Some(builder.start_with_context(&tracer, &parent))
}

/// Ends `span` now.
pub fn end(span: Option<global::BoxedSpan>) {
    if let Some(mut span) = span {
        span.end();
    }
}

/// The `traceparent` of a span made by `job_span`.
pub fn traceparent_of_span(span: &global::BoxedSpan) -> String {
    let context = Context::new().with_remote_span_context(span.span_context().clone());
    traceparent_of(&context).unwrap_or_default()
}

/// The unix time `ms` as a SystemTime.
pub fn at_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}
