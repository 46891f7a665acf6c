//! # sinkgate
//!
//! An HTTP service that gives stream processors in any language exactly-once
//! output into PostgreSQL: it is their checkpoint coordinator and their
//! two-phase-commit sink. `DESIGN.md` explains the protocol; this is where
//! each part lives.
//!
//! # Layout
//!
//! - [`model`]: the JSON shapes of the API, shared with clients.
//! - [`http`]: axum handlers, one module per resource; the OpenAPI document;
//!   errors as RFC 9457 problem documents. Thin: parse, call, answer.
//! - [`coordinator`]: the protocol itself (epochs, writes, checkpoints, acks,
//!   decisions, recovery, the scheduler) as plain functions over a
//!   PostgreSQL transaction. No HTTP in here.
//! - [`sink`]: the user's table (catalog checks), staging with `COPY`,
//!   promotion and abort.
//! - [`db`]: pool, embedded migrations, identifier quoting.
//! - [`config`]: command-line flags and environment variables.
//! - [`error`]: the one error type, with a stable problem type per case.
//!
//! No state that matters lives in the process: every decision is a
//! transaction with row locks, so replicas can share one database.

pub mod config;
pub mod coordinator;
pub mod db;
pub mod error;
pub mod http;
pub mod model;
pub mod sink;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::coordinator::Limits;

/// Runs the service on `listener` until `shutdown` resolves: applies
/// migrations, rolls forward decided checkpoints, starts the scheduler and
/// the notification listener, and serves HTTP. In-flight requests finish
/// before it returns.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    db::migrate(&pool).await?;
    coordinator::scheduler::roll_forward_all(&pool).await?;

    let limits = Limits {
        max_inline_state_bytes: config.max_inline_state_bytes,
        max_ndjson_body_bytes: config.max_ndjson_body_bytes,
    };
    let state = http::state(pool.clone(), limits);
    let listener_task = state.notifier.spawn_listener(pool.clone());
    let (stop_scheduler, scheduler_stopped) = watch::channel(false);
    let scheduler = tokio::spawn(coordinator::scheduler::run(
        pool.clone(),
        Duration::from_millis(config.tick_ms),
        scheduler_stopped,
    ));

    let app = http::app(state, config.max_json_body_bytes);
    tracing::info!(address = %listener.local_addr()?, "sinkgate listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;

    let _ = stop_scheduler.send(true);
    let _ = scheduler.await;
    listener_task.abort();
    pool.close().await;
    Ok(())
}
