//! Integration tests: real redis-server, real Conveyor servers, generated gRPC clients.

mod artifacts;
mod auth;
mod bad_inputs;
mod batches;
mod clients;
mod cost;
mod fairness;
mod flows;
mod follow;
mod harness;
mod helm;
mod history;
mod jobs;
mod limits;
mod ops;
mod process;
mod queues;
mod replicas;
mod retry;
mod standard;
mod tls;
mod tokens;
mod topologies;
mod web;
mod webhooks;
mod workers;
