//! The api's errors, and the one place any error becomes a gRPC status.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{artifacts, auth, dispatcher, scheduler};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Over a cap (watch streams and the like).
    #[error("{0}")]
    Exhausted(String),
    /// Over the tenant's submit rate; the caller may retry after the delay.
    #[error("over this tenant's submit rate; retry in {0:?}")]
    RateLimited(Duration),
    /// Not done in time; the client may retry.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Scheduler(#[from] scheduler::Error),
    #[error(transparent)]
    Dispatcher(#[from] dispatcher::Error),
    #[error(transparent)]
    Artifacts(#[from] artifacts::Error),
}

pub fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Exhausted(m) => Status::resource_exhausted(m),
            Error::Unavailable(m) => Status::unavailable(m),
            e @ Error::RateLimited(delay) => {
                // google.rpc.RetryInfo in grpc-status-details-bin: clients back off that long.
                let details = ErrorDetails::with_retry_info(Some(delay));
                Status::with_error_details(Code::ResourceExhausted, e.to_string(), details)
            }
            Error::Scheduler(e) => e.into(),
            Error::Dispatcher(dispatcher::Error::Scheduler(e)) => e.into(),
            Error::Dispatcher(e @ dispatcher::Error::ShuttingDown) => {
                Status::unavailable(e.to_string())
            }
            Error::Artifacts(e) => match e {
                artifacts::Error::Name(_) => Status::invalid_argument(e.to_string()),
                artifacts::Error::Off | artifacts::Error::Rejected(_) => {
                    Status::failed_precondition(e.to_string())
                }
                artifacts::Error::Config(_) | artifacts::Error::Store(_) => {
                    tracing::warn!(error = %e, "artifact store call failed");
                    Status::unavailable("the artifact store is unavailable; retry shortly")
                }
            },
        }
    }
}

impl From<scheduler::Error> for Status {
    fn from(e: scheduler::Error) -> Status {
        match e {
            scheduler::Error::NotFound => Status::not_found("no job with this id"),
            scheduler::Error::FailedPrecondition(m) => Status::failed_precondition(m),
            scheduler::Error::AlreadyExists(m) => Status::already_exists(m),
            scheduler::Error::Redis(e) => {
                tracing::warn!(error = %e, "redis call failed");
                Status::unavailable("the job store is unavailable; retry shortly")
            }
            scheduler::Error::History(e) => {
                tracing::warn!(error = %e, "database call failed");
                Status::unavailable("the job history is unavailable; retry shortly")
            }
            e @ scheduler::Error::Restoring => Status::unavailable(e.to_string()),
            scheduler::Error::Corrupt(m) => {
                tracing::error!(detail = %m, "unexpected data in redis");
                Status::internal("internal error")
            }
        }
    }
}

impl From<auth::Error> for Status {
    fn from(e: auth::Error) -> Status {
        match e {
            e @ (auth::Error::Missing | auth::Error::Unauthenticated(_)) => {
                Status::unauthenticated(e.to_string())
            }
            auth::Error::Denied(m) => Status::permission_denied(m),
            auth::Error::Unavailable(detail) => {
                tracing::warn!(detail, "credentials could not be checked");
                Status::unavailable("cannot check credentials now; retry shortly")
            }
        }
    }
}
