//! Black-box tests: the real service over HTTP against a real PostgreSQL,
//! one fresh database per test (`#[sqlx::test]`). One binary for all of them.

mod acks;
mod auth;
mod checkpoints;
mod chunks;
mod concurrency;
mod edges;
mod epochs;
mod helpers;
mod hostile;
mod jobs;
mod operations;
mod outputs;
mod roundtrip;
mod sink;
mod state;
