//! Integration tests: real redis-server, real Conveyor servers, generated gRPC clients.

mod harness;
mod jobs;
