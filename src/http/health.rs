//! Liveness and readiness.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::model::Readiness;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(prometheus_metrics))
}

/// Prometheus metrics (text exposition format).
///
/// Checkpoints triggered/completed/committed/aborted (by reason), checkpoint
/// and commit duration histograms, acks, staged rows and bytes, promoted
/// rows, fenced requests, pending checkpoints per job, HTTP requests by
/// route and status with latency, database pool use.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain",
        example = "sinkgate_acks_total{job_id=\"wordcount\"} 42")))]
async fn prometheus_metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Shared state is read at scrape time, so every replica reports the truth.
    if let Ok(pending) = crate::coordinator::pending_per_job(&state.db).await {
        crate::metrics::pending_checkpoints(&pending);
    }
    crate::metrics::pool(
        state.db.size(),
        state.db.num_idle(),
        state.db.options().get_max_connections(),
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = String, example = "ok")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers as a primary (not a standby) and every
/// migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; the body says what is missing", body = Readiness),
    ))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let primary = crate::db::is_primary(&state.db).await;
    let migrations = crate::db::migrations_applied(&state.db).await;
    let readiness = Readiness {
        database: primary.unwrap_or(false),
        migrations: migrations.unwrap_or(false),
    };
    let status = if readiness.database && readiness.migrations {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}
