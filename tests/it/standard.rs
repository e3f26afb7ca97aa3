//! Standard gRPC tooling works against the server: health checks and reflection.

use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::harness;

#[tokio::test]
async fn health_reports_serving_for_each_service() {
    let (_redis, server) = harness::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["conveyor.v1.JobService", "conveyor.v1.WorkerService"] {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let status = health.check(request).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
}

/// The services a reflection client must find.
const SERVICES: [&str; 3] = [
    "conveyor.v1.JobService",
    "conveyor.v1.WorkerService",
    "grpc.health.v1.Health",
];

/// Asks one version of the reflection service (`$v`: `v1` or `v1alpha`) for its list.
macro_rules! list_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect(stringify!($v))
            .into_inner();
        let Some(Ok(reply)) = replies.next().await else {
            panic!("no {} reflection reply", stringify!($v))
        };
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("{reply:?}")
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}

/// grpcurl speaks reflection v1; Python's grpcio-reflection speaks only v1alpha.
#[tokio::test]
async fn reflection_lists_the_services_in_both_versions() {
    let (_redis, server) = harness::start().await;
    let v1 = list_services!(v1, server.channel().await);
    let v1alpha = list_services!(v1alpha, server.channel().await);
    for (version, names) in [("v1", v1), ("v1alpha", v1alpha)] {
        for expected in SERVICES {
            assert!(
                names.iter().any(|n| n == expected),
                "{version}: {expected} missing from {names:?}"
            );
        }
    }
}

/// The proto is what a client author reads: it says what the server does where a client written
/// from it alone would otherwise guess wrong (each line below was missing or wrong before).
#[test]
fn the_proto_says_what_the_server_does() {
    let read = |name: &str| {
        let path = format!("{}/proto/conveyor/v1/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path)
            .unwrap()
            .replace("\n  // ", " ")
            .replace("\n// ", " ")
    };
    let (jobs, workers) = (read("jobs.proto"), read("workers.proto"));
    let says = |text: &str, what: &str| assert!(text.contains(what), "the proto must say {what:?}");
    // WatchJob's resume gives a fresh snapshot, not the missed events.
    assert!(!jobs.contains("events after it are sent instead of a snapshot"));
    says(
        &jobs,
        "it starts with a fresh snapshot of the job as it is now, not with the events that were missed",
    );
    says(&jobs, "Accepts up to 1,000 jobs of one queue in one call");
    says(
        &jobs,
        "FAILED_PRECONDITION when artifacts are off on this server",
    );
    says(
        &jobs,
        "FAILED_PRECONDITION when webhooks are off on this server",
    );
    says(&jobs, "Status codes every RPC may answer");
    says(&workers, "this is not the job's timeout");
    says(
        &workers,
        "A worker that sends nothing at all for 3 intervals is cut off",
    );
    says(
        &workers,
        "is answered on the stream by a ReportResult whose `code` says what became of it",
    );
}
