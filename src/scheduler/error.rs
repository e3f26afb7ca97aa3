//! The scheduler's errors; `api::status` maps them to gRPC codes.

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("job not found")]
    NotFound,
    /// The transition does not apply to the job as it is now (stale token, finished job...).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The database (system of record) failed; the request had no effect.
    #[error("database: {0}")]
    History(String),
    /// Redis lost its data and is being rebuilt from the database; submits wait for it.
    #[error("Redis is being restored from the database; retry shortly")]
    Restoring,
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// Redis answered something the scripts never write; a bug or a foreign writer.
    #[error("unexpected data in redis: {0}")]
    Corrupt(String),
}
