//! # sinkgate
//!
//! An HTTP service that gives stream processors in any language exactly-once
//! output into PostgreSQL: it is their checkpoint coordinator and their
//! two-phase-commit sink. `docs/DESIGN.md` states the protocol's rules and
//! invariants and starts with a newcomer's path; this is where each part
//! lives.
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
//! - [`cli`]: the command-line client (`sinkgate jobs …`), over `sinkgate-client`.
//! - [`error`]: the one error type, with a stable problem type per case.
//! - [`metrics`]: Prometheus counters and histograms of protocol events.
//!
//! No state that matters lives in the process: every decision is a
//! transaction with row locks, so replicas can share one database.

pub mod auth;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod db;
pub mod error;
pub mod http;
pub mod metrics;
/// The API's JSON shapes, from the `sinkgate-api` crate that clients share.
pub use sinkgate_api as model;
pub mod sink;

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::coordinator::Limits;

/// Knobs of a running service that are not the database or the listener,
/// made from the flags ([`Config`]); each part's `Default` is the flags'
/// defaults (`config::defaults`).
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// What the protocol enforces on request contents and writers.
    pub limits: Limits,
    /// Bodies, requests in flight, long-polls, the answer deadline.
    pub http: http::HttpLimits,
    /// Open connections and how long one may take to send a request head
    /// (or sit idle between requests).
    pub connections: http::serve::ConnectionLimits,
    /// Who may call what.
    pub auth: auth::AuthMode,
    /// Scheduler period (interval triggers, timeouts, promotion retries).
    pub tick: Duration,
    /// How long an unreferenced state chunk is kept (see `--state-grace-ms`).
    pub state_grace: Duration,
}

impl From<&Config> for ServiceOptions {
    fn from(config: &Config) -> Self {
        ServiceOptions {
            limits: Limits {
                max_inline_state_bytes: config.max_inline_state_bytes,
                max_ndjson_body_bytes: config.max_ndjson_body_bytes,
                body_idle_timeout: Duration::from_millis(config.body_idle_timeout_ms),
                min_body_bytes_per_second: config.min_body_rate,
                max_writes_per_job: config.max_writes_per_job,
                wrong_tokens_per_minute: config.max_wrong_tokens_per_minute,
            },
            http: http::HttpLimits {
                max_json_body_bytes: config.max_json_body_bytes,
                max_json_bytes_in_flight: config.max_json_bytes_in_flight,
                max_in_flight: config.max_in_flight,
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                max_long_polls: config.max_long_polls,
                max_long_polls_per_job: config.max_long_polls_per_job,
            },
            connections: http::serve::ConnectionLimits {
                max_connections: config.max_connections,
                max_connections_per_address: config.max_connections_per_address,
                header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            },
            auth: match &config.admin_token {
                Some(token) if !config.insecure_no_auth => auth::AuthMode::Enabled {
                    admin_token: token.clone(),
                    protect_operations: config.protect_operations,
                },
                _ => auth::AuthMode::Disabled,
            },
            tick: Duration::from_millis(config.tick_ms),
            state_grace: Duration::from_millis(config.state_grace_ms),
        }
    }
}

/// Connects, applies migrations, and runs the service on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    mut config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.resolve_admin_token()?;
    anyhow::ensure!(
        config.admin_token.is_some() || config.insecure_no_auth,
        "set an admin token (--admin-token-file, --admin-token or SINKGATE_ADMIN_TOKEN), or pass --insecure-no-auth for local development"
    );
    let pool = db::connect(&config.database).await?;
    db::migrate(&pool).await?;
    run(
        pool.clone(),
        ServiceOptions::from(&config),
        listener,
        shutdown,
    )
    .await?;
    // Connections still held by abandoned requests are not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(1), pool.close()).await;
    Ok(())
}

/// Runs the service over an open, migrated pool: rolls forward decided
/// checkpoints, starts the scheduler and the notification listener, and
/// serves HTTP until `shutdown` resolves. In-flight requests finish before it
/// returns; the scheduler releases its advisory lock.
pub async fn run(
    pool: PgPool,
    options: ServiceOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    metrics::handle();
    coordinator::scheduler::roll_forward_all(&pool).await?;
    if matches!(options.auth, auth::AuthMode::Disabled) {
        tracing::warn!("authentication is OFF (--insecure-no-auth): anyone who reaches this port can do anything");
    }
    let state = http::state(pool.clone(), options.limits.clone(), options.auth.clone());
    let listener_task = state.notifier.spawn_listener(pool.clone());
    let (stop_scheduler, scheduler_stopped) = watch::channel(false);
    let scheduler = tokio::spawn(coordinator::scheduler::run(
        pool.clone(),
        options.tick,
        options.state_grace,
        scheduler_stopped,
    ));

    let requests = state.requests.clone();
    let state_stopping = state.stopping.clone();
    let app = http::app(state, &options.http);
    tracing::info!(address = %listener.local_addr()?, "sinkgate listening");
    let stopping = state_stopping;
    // One drain period for everything, from the moment shutdown begins.
    let drained_by = std::sync::Arc::new(std::sync::OnceLock::new());
    let shutdown = {
        let drained_by = drained_by.clone();
        async move {
            shutdown.await;
            let _ = drained_by.set(tokio::time::Instant::now() + http::serve::DRAIN);
            stopping.cancel();
        }
    };
    let served = http::serve::serve(listener, app, options.connections.clone(), shutdown).await;
    // Requests whose client went away are not waited for by the server
    // loop; their transactions still finish before the pool closes, within
    // what is left of the drain period.
    requests.close();
    let deadline = drained_by
        .get()
        .copied()
        .unwrap_or_else(|| tokio::time::Instant::now() + http::serve::DRAIN);
    if tokio::time::timeout_at(deadline, requests.wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after the drain period are abandoned; when the process exits, their transactions roll back");
    }

    let _ = stop_scheduler.send(true);
    let _ = scheduler.await;
    listener_task.abort();
    served?;
    Ok(())
}
