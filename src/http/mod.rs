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

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::{BoxError, Router};
use sqlx::PgPool;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::coordinator::notify::Notifier;
use crate::coordinator::Limits;
use crate::error::Error;

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

/// Limits of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest JSON body (NDJSON writes are streamed and limited separately).
    pub max_json_body_bytes: usize,
    /// Requests handled at once; beyond it requests are shed with 503
    /// (`overloaded`, Retry-After) instead of queueing without bound.
    pub max_in_flight: usize,
}

/// The whole application, ready to serve.
///
/// Every request gets an `x-request-id` (kept when the client sends one),
/// echoed in the response and recorded in the request's log span.
pub fn app(state: AppState, limits: &HttpLimits) -> Router {
    let (router, api) = api_router().split_for_parts();
    let request_id = HeaderName::from_static("x-request-id");
    let shed = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: BoxError| async {
            Error::Overloaded
        }))
        .load_shed()
        // One semaphore for the whole router (a plain concurrency limit
        // would be per route, as axum layers every route separately).
        .layer(GlobalConcurrencyLimitLayer::new(limits.max_in_flight));
    router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
        .fallback(|| async { Error::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(limits.max_json_body_bytes))
        .layer(shed)
        .layer(axum::middleware::from_fn(record_request))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<Body>| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request_id = %id)
                }))
                .layer(PropagateRequestIdLayer::new(request_id)),
        )
        .with_state(state)
}

/// Counts requests by method, route template and status, with latency.
async fn record_request(
    request: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    crate::metrics::http_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// A state for `db` with default limits and a fresh notifier (tests, tools).
pub fn state(db: PgPool, limits: Limits) -> AppState {
    AppState {
        db,
        limits,
        notifier: Notifier::new(),
    }
}
