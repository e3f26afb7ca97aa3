//! OIDC bearer tokens (BAD_INPUTS row 16): signed here with a key made for the test, checked by
//! the server against a JWKS file or URL.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use conveyor::client::{self, Target};
use conveyor::config::Config;
use conveyor::proto;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::harness::{self, Redis, Server, submit};

const ISSUER: &str = "https://id.example.com";
const AUDIENCE: &str = "conveyor";

/// An ES256 signing key and its JWKS.
struct Signer {
    key: EncodingKey,
    jwks: Value,
    /// The public key's raw bytes, for the HS256-with-the-public-key attack.
    public: Vec<u8>,
}

fn signer(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let public = pair.public_key_raw().to_vec(); // 0x04 | x | y
    let jwks = json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": B64.encode(&public[1..33]), "y": B64.encode(&public[33..65]),
    }]});
    Signer {
        key: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwks,
        public,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(tenant: &str, scope: &str) -> Value {
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "exp": now() + 300,
            "tenant": tenant, "scope": scope })
}

fn sign(signer: &Signer, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &signer.key).unwrap()
}

/// A token whose header says `alg` and whose signature is `signature`, built by hand.
fn forged(header: Value, claims: &Value, signature: &[u8]) -> String {
    let part = |v: &Value| B64.encode(serde_json::to_vec(v).unwrap());
    format!(
        "{}.{}.{}",
        part(&header),
        part(claims),
        B64.encode(signature)
    )
}

async fn start(jwks: &str, redis: &Redis) -> Server {
    harness::logs();
    let mut config: Config = harness::config(redis);
    config.insecure = false;
    config.jwt_issuer = Some(ISSUER.into());
    config.jwt_audience = Some(AUDIENCE.into());
    config.jwt_jwks = Some(jwks.into());
    Server::start(config).await
}

async fn jobs(server: &Server, token: &str) -> client::Jobs {
    let target = Target {
        token: Some(token.into()),
        ..Target::new(server.addr.clone())
    };
    client::jobs(server.channel().await, target.bearer().unwrap())
}

async fn submitted(server: &Server, token: &str) -> Result<proto::Job, tonic::Status> {
    let response = jobs(server, token)
        .await
        .submit_job(submit("render", "{}"))
        .await?;
    Ok(response.into_inner().job.unwrap())
}

fn refused(result: Result<proto::Job, tonic::Status>, why: &str) -> tonic::Status {
    let status = result.expect_err(why);
    assert_eq!(status.code(), Code::Unauthenticated, "{why}: {status:?}");
    status
}

#[tokio::test]
async fn row_16_only_well_signed_current_tokens_for_this_audience_pass() {
    let redis = Redis::start().await;
    let signer = signer("k1");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, signer.jwks.to_string()).unwrap();
    let server = start(jwks.to_str().unwrap(), &redis).await;

    // A good token: the tenant comes from its claim, and it can read what it submitted.
    let good = sign(&signer, "k1", &claims("acme", "openid submit read"));
    let job = submitted(&server, &good).await.expect("a good token");
    let get = proto::GetJobRequest {
        job_id: job.id.clone(),
    };
    jobs(&server, &good)
        .await
        .get_job(get.clone())
        .await
        .unwrap();
    let other = sign(&signer, "k1", &claims("globex", "read"));
    let status = jobs(&server, &other).await.get_job(get).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "another tenant's token");

    // Scopes hold: a read-only token cannot submit.
    let status = submitted(&server, &other).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let mut expired = claims("acme", "submit");
    expired["exp"] = json!(now() - 120);
    let status = refused(
        submitted(&server, &sign(&signer, "k1", &expired)).await,
        "expired",
    );
    assert!(status.message().contains("expired"), "{status:?}");

    let mut audience = claims("acme", "submit");
    audience["aud"] = json!("someone-else");
    let status = refused(
        submitted(&server, &sign(&signer, "k1", &audience)).await,
        "audience",
    );
    assert!(status.message().contains("audience"), "{status:?}");

    let mut issuer = claims("acme", "submit");
    issuer["iss"] = json!("https://evil.example.com");
    refused(
        submitted(&server, &sign(&signer, "k1", &issuer)).await,
        "issuer",
    );

    let mut no_tenant = claims("acme", "submit");
    no_tenant.as_object_mut().unwrap().remove("tenant");
    refused(
        submitted(&server, &sign(&signer, "k1", &no_tenant)).await,
        "no tenant",
    );

    let mut no_exp = claims("acme", "submit");
    no_exp.as_object_mut().unwrap().remove("exp");
    refused(
        submitted(&server, &sign(&signer, "k1", &no_exp)).await,
        "no exp",
    );

    // alg=none, with and without a signature.
    let none = json!({ "alg": "none", "typ": "JWT", "kid": "k1" });
    let body = claims("acme", "submit");
    refused(
        submitted(&server, &forged(none.clone(), &body, b"")).await,
        "alg=none",
    );
    refused(
        submitted(&server, &forged(none, &body, b"sig")).await,
        "alg=none signed",
    );

    // HS256 "signed" with the public key as the HMAC secret (algorithm confusion).
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some("k1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &body,
        &EncodingKey::from_secret(&signer.public),
    )
    .unwrap();
    refused(submitted(&server, &hs).await, "HS256 with the public key");

    // Signed by a key the issuer never published, under a known kid.
    let impostor = signer_token_with_other_key("k1", &body);
    refused(submitted(&server, &impostor).await, "another key");
    // A tampered body under a good signature.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = B64.encode(serde_json::to_vec(&claims("globex", "admin")).unwrap());
    refused(
        submitted(&server, &parts.join(".")).await,
        "tampered claims",
    );

    submitted(&server, &good)
        .await
        .expect("the server keeps serving");
}

fn signer_token_with_other_key(kid: &str, claims: &Value) -> String {
    sign(&signer(kid), kid, claims)
}

/// The JWKS can come from an http(s) URL, as identity providers publish it.
#[tokio::test]
async fn the_jwks_is_fetched_from_a_url() {
    let redis = Redis::start().await;
    let signer = signer("url-key");
    let body = signer.jwks.to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    let server = start(&url, &redis).await;
    let token = sign(&signer, "url-key", &claims("acme", "submit"));
    submitted(&server, &token)
        .await
        .expect("a token signed by the published key");
}
