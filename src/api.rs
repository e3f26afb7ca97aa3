//! The gRPC services: validate, convert, call the scheduler, dispatcher or event hub, map errors.
//! No scheduling logic and no Redis here.

mod convert;
pub mod dashboard;
#[cfg(test)]
mod fuzz;
pub mod headers;
mod intercept;
mod jobs;
mod status;
mod uploads;
pub mod validate;
pub mod web;
mod workers;

mod quota;

use tonic::{Request, Status};

use crate::auth::Principal;
pub use jobs::Jobs;
pub use quota::{Quotas, Rate};
pub use status::Error;
pub use uploads::Uploads;
pub use workers::Workers;

/// The caller, as the auth layer admitted it. Every service is served behind that layer; a
/// request without a principal means one is not, and is refused rather than let through.
#[allow(clippy::result_large_err)]
fn caller<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credentials"))
}

/// Limits on what callers may send.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest job payload in bytes. Default 1 MiB.
    pub max_payload: usize,
    /// Most labels on one job. Default 64.
    pub max_labels: usize,
    /// Most slots (jobs in flight) one worker stream may announce. Default 1000.
    pub max_worker_slots: u32,
    /// What callback URLs may name; `None` when webhooks are off.
    pub webhooks: Option<std::sync::Arc<crate::webhooks::Allow>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: 1 << 20,
            max_labels: validate::MAX_LABELS,
            max_worker_slots: 1000,
            webhooks: None,
        }
    }
}
