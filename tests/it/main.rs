//! Integration tests: real redis-server, real Conveyor servers, generated gRPC clients.

mod artifacts;
mod auth;
mod bad_inputs;
mod batches;
mod clients;
mod cost;
mod fairness;
mod flows;
mod harness;
mod history;
mod jobs;
mod limits;
mod process;
mod queues;
mod replicas;
mod retry;
mod standard;
mod tls;
mod tokens;
mod web;
mod webhooks;
mod workers;
