//! The HTTP face of the protocol: one file per resource, each with its own
//! `OpenApiRouter`, so the OpenAPI document is generated from the handlers
//! themselves. Handlers parse, call `coordinator`, and answer; errors become
//! RFC 9457 problem documents in `problem`.

pub mod attempts;
pub mod checkpoints;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod problem;
pub mod writes;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use sqlx::PgPool;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::coordinator::notify::Notifier;
use crate::coordinator::Limits;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub limits: Limits,
    /// Wakes long-polls when a checkpoint is triggered on any replica.
    pub notifier: Notifier,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sinkgate",
        description = "Exactly-once sink and checkpoint coordinator for PostgreSQL. \
Processors stage rows, ack checkpoints with their source offsets, and resume from the recovery point; \
staged rows reach the sink table exactly once, when a checkpoint that every task acked is committed. \
Errors are RFC 9457 problem documents (`application/problem+json`) whose `type` is \
`urn:sinkgate:problem:<kind>`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(problem::Problem)),
    tags(
        (name = "jobs", description = "Register and inspect jobs"),
        (name = "recovery", description = "Start a job's attempt (epoch) and find where to resume"),
        (name = "writes", description = "Stage rows (pre-commit)"),
        (name = "checkpoints", description = "Trigger, discover, ack and decline checkpoints"),
        (name = "operations", description = "Health and readiness"),
    )
)]
struct ApiDoc;

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(jobs::router())
        .merge(attempts::router())
        .merge(writes::router())
        .merge(checkpoints::router())
        .merge(health::router())
}

/// The OpenAPI document, as served at `/openapi.json` and committed at
/// `openapi/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

/// The whole application, ready to serve.
pub fn app(state: AppState, max_json_body_bytes: usize) -> Router {
    let (router, api) = api_router().split_for_parts();
    router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
        .fallback(|| async { crate::error::Error::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(max_json_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A state for `db` with default limits and a fresh notifier (tests, tools).
pub fn state(db: PgPool, limits: Limits) -> AppState {
    AppState {
        db,
        limits,
        notifier: Notifier::new(),
    }
}
