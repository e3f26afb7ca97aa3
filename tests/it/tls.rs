//! TLS on the gRPC port and mTLS identities, with a CA made in the test: a client certificate's
//! name maps to a tenant or a worker role; a certificate from another CA never gets through.

use conveyor::auth::keys::{self, NewCredential};
use conveyor::auth::{Queues, Role, Scopes};
use conveyor::client::{self, Target};
use conveyor::proto::{self, connect_request::Msg as WorkerMsg};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::harness::{self, Redis, Server, submit};

pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate and key (PEM) signed by `ca`, named `cn`, valid for `sans`.
pub fn leaf(ca: &Ca, cn: &str, sans: &[&str]) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

struct Files(tempfile::TempDir);

impl Files {
    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A client target for `addr` trusting `ca`, presenting `identity` when given.
    fn target(&self, addr: &str, ca: &Ca, identity: Option<(&str, &(String, String))>) -> Target {
        Target {
            addr: addr.into(),
            token: None,
            ca: Some(self.write("trust.pem", &ca.pem)),
            identity: identity.map(|(name, (cert, key))| {
                (
                    self.write(&format!("{name}.crt"), cert),
                    self.write(&format!("{name}.key"), key),
                )
            }),
        }
    }
}

async fn jobs(target: &Target) -> Result<client::Jobs, tonic::transport::Error> {
    let channel = target.endpoint().unwrap().connect().await?;
    Ok(client::jobs(channel, target.bearer().unwrap()))
}

#[tokio::test]
async fn client_certificates_map_to_tenants_and_workers() {
    harness::logs();
    let redis = Redis::start().await;
    let files = Files(tempfile::tempdir().unwrap());
    let ca = ca("conveyor test CA");
    let (server_cert, server_key) = leaf(&ca, "conveyor", &["127.0.0.1", "localhost"]);
    let backend = leaf(&ca, "acme-backend", &[]);
    let node = leaf(&ca, "render-node-1", &[]);
    let stranger = leaf(&ca, "nobody-mapped", &[]);
    let rogue = leaf(&self::ca("rogue CA"), "acme-backend", &[]);

    let mut config = harness::config(&redis);
    config.insecure = false;
    config.tls_cert = Some(files.write("server.crt", &server_cert));
    config.tls_key = Some(files.write("server.key", &server_key));
    config.tls_client_ca = Some(files.write("clients.pem", &ca.pem));
    let db = conveyor::history::connect(config.database_url.as_deref().unwrap())
        .await
        .unwrap();
    conveyor::history::migrate(&db).await.unwrap();
    let admit = |name: &str, tenant: &str, role: Role| NewCredential {
        tenant: tenant.into(),
        role,
        name: name.into(),
        expires_in: None,
        cert_identity: Some(name.into()),
    };
    let all = Scopes::parse("submit,read,watch,cancel").unwrap();
    keys::create(&db, admit("acme-backend", "acme", Role::Client(all)))
        .await
        .unwrap();
    let worker = Role::Worker(Queues::parse("render").unwrap());
    keys::create(&db, admit("render-node-1", "ops", worker))
        .await
        .unwrap();
    let new_key = NewCredential {
        tenant: "acme".into(),
        role: Role::Client(all),
        name: "k".into(),
        expires_in: None,
        cert_identity: None,
    };
    let (_, acme_key) = keys::create(&db, new_key).await.unwrap();
    let server = Server::start(config).await;
    let addr = server.addr.replace("http://", "https://");

    // The backend's certificate makes it tenant acme.
    let mut acme = jobs(&files.target(&addr, &ca, Some(("backend", &backend))))
        .await
        .unwrap();
    let job = acme
        .submit_job(submit("render", "{}"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let keyed = Target {
        token: acme_key,
        ..files.target(&addr, &ca, None)
    };
    let get = proto::GetJobRequest {
        job_id: job.id.clone(),
    };
    jobs(&keyed)
        .await
        .unwrap()
        .get_job(get)
        .await
        .expect("a key of the same tenant, over TLS");

    // No certificate and no key; a certificate nobody mapped.
    let status = jobs(&files.target(&addr, &ca, None))
        .await
        .unwrap()
        .submit_job(submit("render", "{}"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = jobs(&files.target(&addr, &ca, Some(("stranger", &stranger))))
        .await
        .unwrap()
        .submit_job(submit("render", "{}"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // The render node's certificate connects as a worker, and gets the job.
    let node_target = files.target(&addr, &ca, Some(("node", &node)));
    let channel = node_target.endpoint().unwrap().connect().await.unwrap();
    let hello = WorkerMsg::Hello(harness::hello(&["render"], 1, "node-1"));
    let (_tx, mut inbound) = harness::Worker::open_on(channel, None, hello)
        .await
        .expect("the node connects");
    let mut assigned = None;
    while let Some(Ok(message)) = inbound.next().await {
        if let Some(proto::connect_response::Msg::Assignment(a)) = message.msg {
            assigned = a.job.map(|j| j.id);
            break;
        }
    }
    assert_eq!(assigned, Some(job.id.clone()));
    // The node cannot submit; the backend cannot connect as a worker.
    let status = client::jobs(
        node_target.endpoint().unwrap().connect().await.unwrap(),
        node_target.bearer().unwrap(),
    )
    .submit_job(submit("render", "{}"))
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A certificate from another CA does not get through the handshake; nor does plaintext.
    let rogue_target = files.target(&addr, &ca, Some(("rogue", &rogue)));
    let refused = match jobs(&rogue_target).await {
        Err(_) => true,
        Ok(mut c) => c.submit_job(submit("render", "{}")).await.is_err(),
    };
    assert!(refused, "a rogue certificate got through");
    let plain = Target::new(server.addr.clone());
    let refused = match jobs(&plain).await {
        Err(_) => true,
        Ok(mut c) => c.submit_job(submit("render", "{}")).await.is_err(),
    };
    assert!(refused, "plaintext got through to a TLS port");
}

/// A rotated certificate is served without a restart: once the files hold one from a new CA,
/// new connections get it (and clients trusting only the old CA stop getting through); files
/// that do not make a certificate leave the served one alone.
#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    harness::logs();
    let redis = Redis::start().await;
    let files = Files(tempfile::tempdir().unwrap());
    let (old, new) = (ca("old CA"), ca("new CA"));
    let (cert, key) = leaf(&old, "conveyor", &["127.0.0.1"]);
    let mut config = harness::config(&redis);
    config.tls_cert = Some(files.write("server.crt", &cert));
    config.tls_key = Some(files.write("server.key", &key));
    config.tls_reload = std::time::Duration::from_millis(100);
    let server = Server::start(config).await;
    let addr = server.addr.replace("http://", "https://");
    let served = |trust: &Ca| {
        let target = files.target(&addr, trust, None);
        async move {
            match jobs(&target).await {
                Ok(mut c) => c.list_queues(proto::ListQueuesRequest {}).await.is_ok(),
                Err(_) => false,
            }
        }
    };
    assert!(served(&old).await && !served(&new).await);

    // Half a rotation (a key that is not the certificate's) changes nothing.
    let (cert, key) = leaf(&new, "conveyor", &["127.0.0.1"]);
    let (_, other_key) = leaf(&new, "conveyor", &["127.0.0.1"]);
    files.write("server.crt", &cert);
    files.write("server.key", &other_key);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        served(&old).await,
        "a bad pair replaced the served certificate"
    );
    files.write("server.key", &key);
    harness::eventually("the new certificate to be served", || async {
        served(&new).await.then_some(())
    })
    .await;
    assert!(!served(&old).await);
}

/// A client that offers only `http/1.1` in ALPN (Node's fetch, Python requests, `curl
/// --http1.1`) gets through the TLS handshake and makes a gRPC-Web call.
#[tokio::test]
async fn a_client_that_speaks_only_http1_connects_over_tls() {
    let redis = Redis::start().await;
    let files = Files(tempfile::tempdir().unwrap());
    let ca = ca("conveyor test CA");
    let (cert, key) = leaf(&ca, "conveyor", &["localhost"]);
    let mut config = harness::config(&redis);
    config.tls_cert = Some(files.write("server.crt", &cert));
    config.tls_key = Some(files.write("server.key", &key));
    let server = Server::start(config).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .http1_only()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let port = server.addr.rsplit(':').next().unwrap();
    let body = crate::web::frame(&submit("web", "{}"));
    let reply = client
        .post(format!(
            "https://localhost:{port}/conveyor.v1.JobService/SubmitJob"
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(body)
        .send()
        .await
        .expect("an HTTP/1.1-only client completes the handshake");
    assert_eq!(reply.status(), reqwest::StatusCode::OK);
    assert_eq!(reply.version(), reqwest::Version::HTTP_11);
}

/// A key that is not the certificate's is refused at start, naming both files, before anything
/// is served.
#[tokio::test]
async fn a_key_that_is_not_the_certificates_is_refused_at_start() {
    let redis = Redis::start().await;
    let files = Files(tempfile::tempdir().unwrap());
    let ca = ca("conveyor test CA");
    let (cert, _) = leaf(&ca, "conveyor", &["localhost"]);
    let (_, other_key) = leaf(&ca, "conveyor", &["localhost"]);
    let mut config = harness::config(&redis);
    config.tls_cert = Some(files.write("server.crt", &cert));
    config.tls_key = Some(files.write("server.key", &other_key));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conveyor::server::run(config, listener, async {}),
    )
    .await
    .expect("refused at once");
    let error = started.unwrap_err().to_string();
    assert!(
        error.contains("server.crt") && error.contains("server.key"),
        "{error}"
    );
}
