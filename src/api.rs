//! The gRPC services: validate, convert, call the scheduler, dispatcher or event hub, map errors.
//! No scheduling logic and no Redis here.

mod convert;
mod jobs;
mod status;
mod validate;
mod workers;

use tonic::Request;

pub use jobs::Jobs;
pub use status::Error;
pub use workers::Workers;

/// Who is calling. Set by the server's interceptor from the caller's identity, never from a
/// request field; until authentication lands every caller is the tenant `default`.
#[derive(Clone, Debug)]
pub struct Tenant(pub String);

pub const DEFAULT_TENANT: &str = "default";

/// Tags a request with its tenant (the place authentication will plug in).
#[allow(clippy::result_large_err)]
pub fn identify(mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
    request
        .extensions_mut()
        .insert(Tenant(DEFAULT_TENANT.to_string()));
    Ok(request)
}

fn tenant<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Tenant>()
        .map(|t| t.0.clone())
        .unwrap_or_else(|| DEFAULT_TENANT.to_string())
}

/// Limits on what callers may send.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest job payload in bytes. Default 1 MiB.
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: 1 << 20,
        }
    }
}
