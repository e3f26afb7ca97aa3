//! The api's errors, and the one place any error becomes a gRPC status.

use tonic::Status;

use crate::{dispatcher, scheduler};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Scheduler(#[from] scheduler::Error),
    #[error(transparent)]
    Dispatcher(#[from] dispatcher::Error),
}

pub fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::Scheduler(e) => e.into(),
            Error::Dispatcher(dispatcher::Error::Scheduler(e)) => e.into(),
            Error::Dispatcher(e @ dispatcher::Error::ShuttingDown) => {
                Status::unavailable(e.to_string())
            }
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
