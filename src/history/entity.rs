//! The sea-orm entities of the history tables (see `migrations/`).

pub mod attempts;
pub mod jobs;
pub mod labels;
