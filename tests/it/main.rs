//! Integration tests: real redis-server, real Conveyor servers, generated gRPC clients.

mod bad_inputs;
mod cost;
mod fairness;
mod harness;
mod jobs;
mod process;
mod replicas;
mod standard;
mod workers;
