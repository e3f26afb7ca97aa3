//! OIDC bearer tokens: checked against the configured issuer, audience and JWKS (a file, or an
//! http(s) URL fetched at start and again when a token names a key id it does not know, at most
//! every `REFETCH`). Only asymmetric algorithms on the allowlist pass: `alg: none` does not even
//! parse, HS* is refused when configured (a shared secret is not a public key), and a key is only
//! used with an algorithm of its own family, so an HS256 token signed with a public key fails.

use std::str::FromStr;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::RwLock;

use super::{Error, Principal, Role, Scopes};

/// The least time between two fetches of a JWKS URL, so unknown key ids cannot make the server
/// hammer the identity provider.
const REFETCH: Duration = Duration::from_secs(30);
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

#[derive(Clone, Debug)]
pub struct Options {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must include.
    pub audience: String,
    /// A JWKS file, or an http(s) URL serving one.
    pub jwks: String,
    pub algorithms: Vec<Algorithm>,
    /// The claim naming the caller's tenant.
    pub tenant_claim: String,
}

/// Parses an allowlist like `RS256,ES256`; HS* is refused.
pub fn parse_algorithms(text: &str) -> Result<Vec<Algorithm>, String> {
    let mut algorithms = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let alg =
            Algorithm::from_str(name).map_err(|_| format!("{name:?} is not a JWT algorithm"))?;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(format!(
                "{name}: HMAC algorithms need a shared secret; allow RS*, PS*, ES* or EdDSA"
            ));
        }
        algorithms.push(alg);
    }
    if algorithms.is_empty() {
        return Err("allow at least one algorithm, e.g. RS256,ES256".into());
    }
    Ok(algorithms)
}

pub struct Verifier {
    options: Options,
    keys: RwLock<(JwkSet, Instant)>,
    http: Option<reqwest::Client>,
}

impl Verifier {
    /// Loads the JWKS once; a server does not start with one it cannot read.
    pub async fn new(options: Options) -> Result<Verifier, String> {
        let http = if is_url(&options.jwks) {
            // reqwest is built without a default crypto provider; rustls uses ring here.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| format!("JWKS client: {e}"))?;
            Some(client)
        } else {
            None
        };
        let set = load(&options.jwks, http.as_ref()).await?;
        Ok(Verifier {
            options,
            keys: RwLock::new((set, Instant::now())),
            http,
        })
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, Error> {
        let invalid = |why: &str| Error::Unauthenticated(format!("bearer token refused: {why}"));
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("not a JWT, or its algorithm is not supported"))?;
        if !self.options.algorithms.contains(&header.alg) {
            return Err(invalid(&format!(
                "algorithm {:?} is not allowed",
                header.alg
            )));
        }
        let kid = header.kid.as_deref();
        let key = match self.key(kid, header.alg).await {
            Some(key) => key,
            None if self.refetch().await => self
                .key(kid, header.alg)
                .await
                .ok_or_else(|| invalid("unknown signing key"))?,
            None => return Err(invalid("unknown signing key")),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.options.issuer]);
        validation.set_audience(&[&self.options.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| {
                invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not valid yet",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::MissingRequiredClaim(_) => "exp, iss and aud are required",
                    _ => "bad signature or claims",
                })
            })?
            .claims;
        let tenant = claims
            .get(&self.options.tenant_claim)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= 128)
            .ok_or_else(|| invalid(&format!("no {:?} claim", self.options.tenant_claim)))?;
        // `scope` is a space-separated string (RFC 8693); some providers send `scp` as a list.
        let scopes = match claims.get("scope").or_else(|| claims.get("scp")) {
            Some(Value::String(s)) => Scopes::parse_known(s),
            Some(Value::Array(a)) => {
                let names: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                Scopes::parse_known(&names.join(" "))
            }
            _ => Scopes::default(),
        };
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or("?");
        Ok(Principal {
            tenant: tenant.to_string(),
            role: Role::Client(scopes),
            credential: format!("jwt:{subject}"),
        })
    }

    /// The key for `kid` (or the only key, when the token names none) usable with `alg`.
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().await;
        let set = &keys.0;
        let jwk = match kid {
            Some(kid) => set.find(kid)?,
            None if set.keys.len() == 1 => &set.keys[0],
            None => return None,
        };
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            return None;
        }
        let key = DecodingKey::from_jwk(jwk).ok()?;
        (alg.family() == key.family()).then_some(key)
    }

    /// Fetches the JWKS URL again, unless it was fetched lately; true when it was.
    async fn refetch(&self) -> bool {
        let Some(http) = &self.http else { return false };
        let mut keys = self.keys.write().await;
        if keys.1.elapsed() < REFETCH {
            return false;
        }
        keys.1 = Instant::now();
        match load(&self.options.jwks, Some(http)).await {
            Ok(set) => {
                keys.0 = set;
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = e,
                    "refreshing the JWKS failed; keeping the old keys"
                );
                false
            }
        }
    }
}

fn is_url(source: &str) -> bool {
    source.starts_with("https://") || source.starts_with("http://")
}

async fn load(source: &str, http: Option<&reqwest::Client>) -> Result<JwkSet, String> {
    let bytes = match http {
        Some(http) => {
            let response = http
                .get(source)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("fetching JWKS {source}: {e}"))?;
            response
                .bytes()
                .await
                .map_err(|e| format!("reading JWKS {source}: {e}"))?
                .to_vec()
        }
        None => tokio::fs::read(source)
            .await
            .map_err(|e| format!("reading JWKS {source}: {e}"))?,
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("JWKS {source}: {e}"))
}
