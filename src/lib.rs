//! Conveyor: job orchestration over gRPC with a Redis lease scheduler and remote workers.
// Unsafe code only where a system call needs it (`child.rs`), each with its reason.
#![deny(unsafe_code)]

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod bench;
pub mod child;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod dev;
pub mod dispatcher;
pub mod events;
pub mod flows;
pub mod health;
pub mod history;
pub mod http;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod redis;
pub mod retention;
pub mod scheduler;
pub mod server;
pub mod telemetry;
pub mod webhooks;
pub mod worker;

/// Code generated from `proto/conveyor/v1/*.proto`.
pub mod proto {
    mod codec;
    pub use codec::Codec;

    tonic::include_proto!("conveyor.v1");
    /// The encoded descriptors, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("conveyor_descriptor");
}
