//! A fresh install starts with the first admin key an operator put in a Secret
//! (`CONVEYOR_BOOTSTRAP_KEY`): no key made by hand first, no crash loop.

use conveyor::client::{self, Target};
use conveyor::proto;
use tonic::Code;

use crate::harness::{self, Redis, Server, submit};

/// A key in the format `conveyor keys create` prints.
const KEY: &str =
    "cvk_0123456789abcdef_4f2c8e1b9a7d6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e";

async fn jobs(server: &Server, token: &str) -> client::Jobs {
    let target = Target {
        token: Some(token.into()),
        ..Target::new(server.addr.clone())
    };
    client::jobs(server.channel().await, target.bearer().unwrap())
}

#[tokio::test]
async fn a_fresh_install_starts_with_the_bootstrap_key_and_keeps_its_revocation() {
    harness::logs();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.insecure = false;
    config.bootstrap_key = Some(KEY.into());
    config.bootstrap_tenant = "acme".into();
    // An empty database: without the bootstrap key the server would refuse to start.
    let server = Server::start(config.clone()).await;
    let mut admin = jobs(&server, KEY).await;
    let job = admin.submit_job(submit("render", "{}")).await.unwrap();
    let pause = proto::PauseQueueRequest {
        queue: "render".into(),
    };
    admin.pause_queue(pause.clone()).await.unwrap();
    assert!(!job.into_inner().job.unwrap().id.is_empty());
    let wrong = format!("{}0", &KEY[..KEY.len() - 1]);
    let refused = jobs(&server, &wrong).await.pause_queue(pause.clone()).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    server.stop().await;

    // Once revoked it stays revoked: a restart with the same Secret does not bring it back.
    let db = conveyor::history::connect(config.database_url.as_deref().unwrap())
        .await
        .unwrap();
    let rows = conveyor::auth::keys::list(&db, Some("acme")).await.unwrap();
    assert_eq!(rows.len(), 1, "one row, however often it starts");
    assert!(
        conveyor::auth::keys::revoke(&db, &rows[0].id)
            .await
            .unwrap()
    );
    let mut another = harness::config(&redis);
    another.insecure = false;
    another.bootstrap_key = Some(KEY.into());
    another.database_url = config.database_url.clone();
    let second = conveyor::auth::keys::NewCredential {
        tenant: "acme".into(),
        role: conveyor::auth::Role::Client(conveyor::auth::Scopes::parse("read").unwrap()),
        name: "reader".into(),
        expires_in: None,
        cert_identity: None,
    };
    conveyor::auth::keys::create(&db, second).await.unwrap();
    let server = Server::start(another).await;
    let refused = jobs(&server, KEY).await.pause_queue(pause).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_bootstrap_key_that_is_not_a_key_is_refused_at_start() {
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    config.insecure = false;
    config.bootstrap_key = Some("hunter2".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = conveyor::server::run(config, listener, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("CONVEYOR_BOOTSTRAP_KEY"), "{refused}");
    assert!(
        !refused.contains("hunter2"),
        "the secret is not echoed: {refused}"
    );
}
