//! PostgreSQL over TLS, as managed services require: a private PostgreSQL the test starts with a
//! certificate from a CA made here, refusing every connection without TLS. `DATABASE_URL` with
//! `sslmode=verify-full&sslrootcert=CA` serves; without TLS, or trusting another CA, the server
//! refuses to start.

use conveyor::proto::JobState;

use crate::harness::{self, Redis, Server, eventually, submit, submit_job};
use crate::postgres::Postgres;

#[tokio::test]
async fn the_history_can_live_on_a_postgresql_that_requires_tls() {
    harness::logs();
    let postgres = Postgres::start_tls();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    let ca = postgres.ca.as_ref().unwrap().display().to_string();
    config.database_url = Some(postgres.url(&format!("sslmode=verify-full&sslrootcert={ca}")));
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "{}")).await;
    assert_eq!(job.state, JobState::Queued as i32);
    let store = conveyor::history::Store::open(
        &postgres.url(&format!("sslmode=verify-full&sslrootcert={ca}")),
        Default::default(),
    )
    .await
    .unwrap();
    eventually("the job's row", || async {
        store.get(&job.id).await.ok()?.map(|_| ())
    })
    .await;

    // Without TLS the database refuses; trusting another CA, the server refuses the database.
    let stranger = crate::tls::ca("not the database's CA");
    let other = postgres.dir.path().join("other.pem");
    std::fs::write(&other, &stranger.pem).unwrap();
    let other = other.display().to_string();
    for query in [
        "sslmode=disable".to_string(),
        format!("sslmode=verify-full&sslrootcert={other}"),
    ] {
        let refused = conveyor::history::connect(&postgres.url(&query)).await;
        assert!(refused.is_err(), "{query} connected");
    }
}
