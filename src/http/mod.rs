//! The HTTP face of the protocol: one file per resource, each with its own
//! `OpenApiRouter`, so the OpenAPI document is generated from the handlers
//! themselves. Handlers parse, call `coordinator`, and answer; errors become
//! RFC 9457 problem documents in `problem`.

pub mod access;
pub mod attempts;
pub mod body;
pub mod checkpoints;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod problem;
pub mod promotions;
pub mod serve;
pub mod state;
pub mod tokens;
pub mod ui;
pub mod writes;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, Request};
use axum::Router;
use sqlx::PgPool;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::AuthMode;
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
    /// Who may call what.
    pub auth: AuthMode,
    /// Every request's task, so shutdown can wait for those whose client
    /// has gone (see [`run_to_completion`]).
    pub requests: TaskTracker,
    /// Cancelled when the service starts shutting down: long-polls stop
    /// waiting (see [`ClientGone`]).
    pub stopping: tokio_util::sync::CancellationToken,
    /// Bounds the writes of one job staged at once.
    pub write_slots: KeyedSlots,
    /// Bounds the long-polls of one job waiting at once (taken by the
    /// handler, keyed by the job id as decoded from the path).
    pub long_poll_slots: KeyedSlots,
    /// Slows down guessing of tokens.
    pub wrong_tokens: WrongTokens,
}

/// Per client address (unknown: `None`): wrong tokens, since when.
type WrongTokenCounts =
    std::collections::HashMap<Option<std::net::IpAddr>, (u32, std::time::Instant)>;

/// Wrong bearer tokens per client address: after `limit` in a minute, that
/// address gets 429 `too-early` (with `Retry-After`) for the rest of the
/// minute, without its tokens being looked at. Requests without a token are
/// not counted (they guess nothing).
#[derive(Clone)]
pub struct WrongTokens {
    limit: u32,
    clients: std::sync::Arc<std::sync::Mutex<WrongTokenCounts>>,
}

impl WrongTokens {
    pub fn new(limit: u32) -> Self {
        WrongTokens {
            limit,
            clients: Default::default(),
        }
    }

    const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
    /// Addresses remembered at most (beyond, expired windows are forgotten).
    const CLIENTS: usize = 10_000;

    fn refuse(&self, client: Option<std::net::IpAddr>) -> Option<Error> {
        let clients = self.clients.lock().expect("wrong-token lock");
        if self.limit == 0 {
            return None;
        }
        let (count, since) = clients.get(&client)?;
        let left = Self::WINDOW.checked_sub(since.elapsed())?;
        (*count >= self.limit).then(|| Error::TooEarly {
            detail: format!(
                "too many wrong tokens from this address; wait {} s",
                left.as_secs() + 1
            ),
            retry_after_ms: left.as_millis() as u64 + 1,
        })
    }

    fn count(&self, client: Option<std::net::IpAddr>) {
        let mut clients = self.clients.lock().expect("wrong-token lock");
        if clients.len() >= Self::CLIENTS {
            clients.retain(|_, (_, since)| since.elapsed() < Self::WINDOW);
            if clients.len() >= Self::CLIENTS {
                clients.clear();
            }
        }
        let entry = clients
            .entry(client)
            .or_insert((0, std::time::Instant::now()));
        if entry.1.elapsed() >= Self::WINDOW {
            *entry = (0, std::time::Instant::now());
        }
        entry.0 += 1;
    }
}

/// A concurrency limit per key: per job for writes (each holds a pooled
/// connection while its body arrives) and long-polls, per client address
/// for connections. Keys that hold no slot are forgotten, so keys taken
/// from requests cannot grow the map.
#[derive(Clone)]
pub struct KeyedSlots {
    per_job: usize,
    jobs: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
    >,
}

impl KeyedSlots {
    pub fn new(per_job: usize) -> Self {
        KeyedSlots {
            per_job: per_job.max(1),
            jobs: Default::default(),
        }
    }

    /// A slot of `job_id` if one is free now.
    pub fn try_acquire(&self, job_id: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.semaphore(job_id).try_acquire_owned().ok()
    }

    fn semaphore(&self, job_id: &str) -> std::sync::Arc<tokio::sync::Semaphore> {
        let mut jobs = self.jobs.lock().expect("slots lock");
        if !jobs.contains_key(job_id) {
            // Forget keys nobody holds or waits for (a permit holds the
            // semaphore too): ids from URLs cannot grow the map, and a
            // semaphore in use is never replaced by a fresh one.
            jobs.retain(|_, slots| std::sync::Arc::strong_count(slots) > 1);
        }
        jobs.entry(job_id.to_owned())
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(self.per_job)))
            .clone()
    }

    /// Waits up to 5 s for a slot of `job_id`, else 503 `overloaded`.
    pub async fn acquire(&self, job_id: &str) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let semaphore = self.semaphore(job_id);
        match tokio::time::timeout(std::time::Duration::from_secs(5), semaphore.acquire_owned())
            .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::Overloaded),
        }
    }
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
        (name = "tokens", description = "Processor tokens (admin)"),
        (name = "state", description = "Checkpoint state: the built-in chunk store, shared external objects, savepoints"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
struct ApiDoc;

/// What every `/v1` operation shares, documented once here rather than on
/// each handler: bearer authentication with its 401, 403 and 429 answers, and the
/// 503 answers of the layers in front of every handler (load shedding, the
/// request timeout, an unreachable database).
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Their examples are added by `problem::ProblemExamples`.
        let problem = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/problem+json",
                        ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                "Problem",
                            ))))
                            .build(),
                    )
                    .build(),
            )
        };
        let shared = [
            ("401", "No or unknown bearer token (`unauthenticated`); with `WWW-Authenticate: Bearer`"),
            ("403", "A valid token without the right: a processor token of another job, or on an admin endpoint (`forbidden`)"),
            ("429", "Too many wrong tokens from this address in the last minute (`too-early`); retry after `Retry-After` seconds"),
            ("503", "Retry after `Retry-After` seconds: too many requests in flight (`overloaded`), no answer within the request timeout (`timeout`; the request may still take effect), or the database is unreachable (`unavailable`)"),
        ];
        // Every operation with a body can meet these; a handler lists only
        // what is its own (or says it differently).
        let body_answers = [
            ("400", "Malformed JSON (`malformed`)"),
            ("408", "The body stopped arriving, or arrived slower than the minimum rate (`body-timeout`)"),
            ("413", "Body too large (`payload-too-large`)"),
            ("415", "Not JSON (`unsupported-media-type`)"),
        ];
        for (path, operation) in operations_mut(openapi) {
            if !path.starts_with("/v1/") {
                continue;
            }
            operation.security = Some(vec![SecurityRequirement::new(
                "bearer",
                Vec::<String>::new(),
            )]);
            let with_body = operation.request_body.is_some();
            let answers = shared
                .iter()
                .chain(with_body.then_some(&body_answers).into_iter().flatten());
            for (status, description) in answers {
                operation
                    .responses
                    .responses
                    .entry((*status).into())
                    .or_insert_with(|| problem(description));
            }
        }
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(jobs::router())
        .merge(attempts::router())
        .merge(writes::router())
        .merge(checkpoints::router())
        .merge(promotions::router())
        .merge(tokens::router())
        .merge(state::router())
        .merge(health::router())
}

/// The OpenAPI document, as served at `/openapi.json` and committed at
/// `openapi/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    split().1
}

/// Every operation of the document, with its path.
fn operations_mut(
    openapi: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (&String, &mut utoipa::openapi::path::Operation)> {
    openapi.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        .map(move |operation| (&*path, operation))
    })
}

/// OpenAPI links along the protocol (job → attempt → trigger → ack, and the
/// reads beside them), so that a reader (and a stateful test generator)
/// sees which answer feeds which request: the job id carries over, an
/// attempt's `epoch` goes into a trigger, a checkpoint's id into its ack.
struct ProtocolLinks;

impl ProtocolLinks {
    /// (operation, link name, target operation, parameters, request body).
    #[allow(clippy::type_complexity)]
    const LINKS: &'static [(
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<(&'static str, &'static str)>,
    )] = &[
        ("put_job", "StartAttempt", "start_attempt", &[JOB], None),
        ("put_job", "GetJob", "get_job", &[JOB], None),
        (
            "start_attempt",
            "TriggerCheckpoint",
            "trigger_checkpoint",
            &[JOB],
            Some(("epoch", "$response.body#/epoch")),
        ),
        ("start_attempt", "GetRecovery", "get_recovery", &[JOB], None),
        (
            "start_attempt",
            "WaitForPending",
            "wait_for_pending",
            &[JOB],
            None,
        ),
        (
            "trigger_checkpoint",
            "GetCheckpoint",
            "get_checkpoint",
            &[JOB, CHECKPOINT],
            None,
        ),
        (
            "trigger_checkpoint",
            "AckCheckpoint",
            "ack_checkpoint",
            &[JOB, CHECKPOINT],
            None,
        ),
        (
            "trigger_checkpoint",
            "DeclineCheckpoint",
            "decline_checkpoint",
            &[JOB, CHECKPOINT],
            None,
        ),
        (
            "trigger_checkpoint",
            "AbortCheckpoint",
            "abort_checkpoint",
            &[JOB, CHECKPOINT],
            None,
        ),
        (
            "wait_for_pending",
            "AckCheckpoint",
            "ack_checkpoint",
            &[JOB, CHECKPOINT],
            None,
        ),
        (
            "wait_for_pending",
            "GetCheckpoint",
            "get_checkpoint",
            &[JOB, CHECKPOINT],
            None,
        ),
        (
            "issue_token",
            "RevokeToken",
            "revoke_token",
            &[JOB, ("token_id", "$response.body#/token_id")],
            None,
        ),
    ];
}

const JOB: (&str, &str) = ("job", "$request.path.job");
const CHECKPOINT: (&str, &str) = ("id", "$response.body#/checkpoint_id");

impl utoipa::Modify for ProtocolLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        for (_, operation) in operations_mut(openapi) {
            let Some(id) = operation.operation_id.clone() else {
                continue;
            };
            let mut links = serde_json::Map::new();
            for (_, name, target, parameters, body) in
                Self::LINKS.iter().filter(|link| link.0 == id)
            {
                let parameters: serde_json::Map<String, serde_json::Value> = parameters
                    .iter()
                    .map(|(parameter, expression)| ((*parameter).to_owned(), (*expression).into()))
                    .collect();
                let mut link = serde_json::json!({"operationId": target, "parameters": parameters});
                if let Some((field, expression)) = body {
                    link["requestBody"] = serde_json::json!({ *field: *expression });
                }
                links.insert((*name).to_owned(), link);
            }
            if links.is_empty() {
                continue;
            }
            for (status, response) in operation.responses.responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                if !status.starts_with('2') || status == "204" {
                    continue;
                }
                // utoipa 5.5 writes a `Link`'s fields in snake case
                // (`operation_id`), which no reader understands; the links
                // go in as raw JSON, flattened into the response object.
                let extensions = utoipa::openapi::extensions::Extensions::from_iter([(
                    "links",
                    serde_json::Value::Object(links.clone()),
                )]);
                match response.extensions.as_mut() {
                    Some(existing) => existing.merge(extensions),
                    None => response.extensions = Some(extensions),
                }
            }
        }
    }
}

/// The router and its finished OpenAPI document.
fn split() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::Modify;
    let (router, mut api) = api_router().split_for_parts();
    Security.modify(&mut api);
    problem::ProblemExamples.modify(&mut api);
    ProtocolLinks.modify(&mut api);
    (router, api)
}

/// Limits of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest JSON body (NDJSON writes are streamed and limited separately).
    pub max_json_body_bytes: usize,
    /// Buffered body bytes (past each body's first [`body::FREE_BYTES`])
    /// held in memory at once (raised to `max_json_body_bytes` if lower).
    pub max_json_bytes_in_flight: usize,
    /// Requests handled at once; beyond it requests are shed with 503
    /// (`overloaded`, Retry-After) instead of queueing without bound.
    pub max_in_flight: usize,
    /// Longest wait for an answer (see [`answer_in_time`]).
    pub request_timeout: std::time::Duration,
    /// Long-polls waiting at once (they do not count as requests in
    /// flight); beyond, 503 `overloaded`.
    pub max_long_polls: usize,
    /// Long-polls of one job waiting at once.
    pub max_long_polls_per_job: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        use crate::config::defaults;
        HttpLimits {
            max_json_body_bytes: defaults::MAX_JSON_BODY_BYTES,
            max_json_bytes_in_flight: defaults::MAX_JSON_BYTES_IN_FLIGHT,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            request_timeout: std::time::Duration::from_millis(defaults::REQUEST_TIMEOUT_MS),
            max_long_polls: defaults::MAX_LONG_POLLS,
            max_long_polls_per_job: defaults::MAX_LONG_POLLS_PER_JOB,
        }
    }
}

/// The whole application, ready to serve.
///
/// Every request gets an `x-request-id` (kept when the client sends one),
/// echoed in the response, in problem documents, and in the request's log
/// span.
///
/// The layers, outermost first: request id and tracing; the id made known
/// to problem documents; the answer deadline; the request's own task;
/// metrics; load shedding and body metering; authentication; body limit;
/// the handler.
pub fn app(state: AppState, limits: &HttpLimits) -> Router {
    let state = AppState {
        long_poll_slots: KeyedSlots::new(limits.max_long_polls_per_job),
        ..state
    };
    let (router, api) = split();
    let request_id = HeaderName::from_static("x-request-id");
    let budget = limits
        .max_json_bytes_in_flight
        .max(limits.max_json_body_bytes);
    let admission = Admission {
        in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight.max(1))),
        long_polls: std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_long_polls.max(1))),
        body_budget: body::Budget::new(budget),
        max_json_body_bytes: limits.max_json_body_bytes,
        // A chunk larger than the whole budget could never be admitted:
        // 413 at once rather than 503 for ever.
        max_chunk_bytes: crate::coordinator::state::MAX_CHUNK_BYTES.min(budget),
        pace: state.pace(),
    };
    router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
        .merge(ui::router())
        .fallback(|| async { Error::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(limits.max_json_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(axum::middleware::from_fn_with_state(admission, admit))
        .layer(axum::middleware::from_fn(record_request))
        .layer(axum::middleware::from_fn_with_state(
            (state.requests.clone(), state.stopping.clone()),
            run_to_completion,
        ))
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            answer_in_time,
        ))
        .layer(axum::middleware::from_fn(with_request_id))
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn(drop_unfit_request_id))
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

/// Keeps a client's `x-request-id` only if it is a plain, bounded id
/// (`[A-Za-z0-9._-]{1,128}`); otherwise the service makes one. It is echoed
/// in headers, problem documents and log lines, where a huge or structured
/// value would cost memory or forge structure.
async fn drop_unfit_request_id(
    mut request: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let fit = |value: &axum::http::HeaderValue| {
        let bytes = value.as_bytes();
        (1..=128).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if request
        .headers()
        .get_all("x-request-id")
        .iter()
        .any(|value| !fit(value))
        || request.headers().get_all("x-request-id").iter().count() > 1
    {
        request.headers_mut().remove("x-request-id");
    }
    next.run(request).await
}

/// What may run at once: requests in flight, and long-polls apart.
#[derive(Clone)]
struct Admission {
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    long_polls: std::sync::Arc<tokio::sync::Semaphore>,
    /// Buffered body bytes, all requests together.
    body_budget: body::Budget,
    max_json_body_bytes: usize,
    /// A state chunk's limit (its route has its own body limit).
    max_chunk_bytes: usize,
    /// How fast a buffered body must arrive.
    pace: body::Pace,
}

impl Admission {
    /// Puts a buffered body under the pace and the budget (a streamed
    /// NDJSON upload to `/writes` paces itself and holds no bytes); 413 at
    /// once for a declared length over the limit. What it holds of the
    /// budget is in the returned [`body::Held`].
    fn meter_body(
        &self,
        request: Request<Body>,
    ) -> Result<(Request<Body>, Option<body::Held>), Error> {
        use axum::http::header;
        use futures::TryStreamExt;
        if is_upload(&request) {
            return Ok((request, None));
        }
        let headers = request.headers();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        // A state chunk has a limit of its own (its route enforces it too).
        let limit = if route(&request) == Some(CHUNK_ROUTE) {
            self.max_chunk_bytes
        } else {
            self.max_json_body_bytes
        };
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(Error::PayloadTooLarge(format!(
                "the request body is larger than the configured limit ({limit} bytes)"
            )));
        }
        let held = body::Held::default();
        let (budget, pace, holder) = (self.body_budget.clone(), self.pace, held.clone());
        let request = request.map(move |incoming| {
            let chunks = incoming
                .into_data_stream()
                .map_err(|error| Error::Malformed(format!("reading the body failed: {error}")));
            Body::from_stream(body::metered(
                Box::pin(body::paced(chunks, pace)),
                budget,
                holder,
            ))
        });
        Ok((request, Some(held)))
    }
}

/// Load shedding: beyond the limit, 503 `overloaded` at once, never a queue.
///
/// A long-poll (`GET …/checkpoints/pending`) waits for up to a minute
/// doing nothing, so long-polls have a budget of their own (in all here;
/// per job in the handler, which knows the decoded job id) instead of
/// holding request slots: however many a caller opens, health checks,
/// administration and the protocol's own requests are still admitted.
/// Requests are told apart by the route they matched, never by their path.
async fn admit(
    State(admission): State<Admission>,
    request: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let slots = if is_long_poll(&request) {
        &admission.long_polls
    } else {
        &admission.in_flight
    };
    let Ok(_slot) = slots.clone().try_acquire_owned() else {
        return Error::Overloaded.into_response();
    };
    let (request, _held) = match admission.meter_body(request) {
        Ok(metered) => metered,
        Err(error) => return error.into_response(),
    };
    next.run(request).await
}

/// The route template a request matched (`/v1/jobs/{job}/writes`), if any.
fn route(request: &Request<Body>) -> Option<&str> {
    request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str())
}

/// A streamed NDJSON upload: `POST /writes` as `application/x-ndjson`.
fn is_upload(request: &Request<Body>) -> bool {
    route(request) == Some("/v1/jobs/{job}/writes")
        && extract::is_ndjson(
            request
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok()),
        )
}

/// The route of a state chunk's upload and download.
const CHUNK_ROUTE: &str = "/v1/jobs/{job}/state/chunks/{sha256}";

/// A long-poll for the next checkpoint.
fn is_long_poll(request: &Request<Body>) -> bool {
    route(request) == Some("/v1/jobs/{job}/checkpoints/pending")
}

/// Cancelled when the client of a request has gone (its connection closed
/// before the answer), or when the service shuts down: a long-poll then
/// stops waiting at once instead of holding its budget (or the shutdown)
/// until `wait_ms`.
#[derive(Clone)]
pub struct ClientGone(pub tokio_util::sync::CancellationToken);

/// Runs each request in a task of its own, so a client that disconnects (a
/// crashed processor) cannot cancel its handler half-way through database
/// work.
///
/// Cancelling a future that is using a sqlx 0.8 connection is not safe: a
/// future dropped inside `begin()` returns its connection to the pool with
/// the transaction still open, and dropped queries can leave the connection
/// out of step with the server. The chaos and word-count tests saw both after
/// processor crashes — a `SELECT` answered with another statement's empty
/// result ("job does not exist" for a live job), then "expected
/// ParseComplete, got ReadyForQuery". In a task, the work always finishes
/// (or rolls back) on its own; the answer is dropped when nobody waits.
async fn run_to_completion(
    State((requests, stopping)): State<(TaskTracker, tokio_util::sync::CancellationToken)>,
    request: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use tracing::Instrument;
    // Also cancelled when the service shuts down.
    let gone = stopping.child_token();
    let mut request = request;
    request.extensions_mut().insert(ClientGone(gone.clone()));
    // Dropped with this future when the client goes away (hyper drops it);
    // defused once the answer is here.
    let guard = gone.drop_guard();
    // The task of its own keeps the request id for problem documents.
    let id = problem::REQUEST_ID.try_with(Clone::clone).ok().flatten();
    let work =
        problem::REQUEST_ID.scope(id, next.run(request).instrument(tracing::Span::current()));
    let answered = requests.spawn(work).await;
    guard.disarm();
    match answered {
        Ok(response) => response,
        Err(failed) => {
            Error::Internal(anyhow::anyhow!("request handler failed: {failed}")).into_response()
        }
    }
}

/// Bounds how long a client waits for its answer: 503 `timeout` after
/// `limit`. Only the wait is cut short; the request's task (see
/// [`run_to_completion`]) finishes or rolls back on its own, which is why the
/// problem tells the client to retry rather than to assume nothing happened.
///
/// NDJSON uploads are exempt (a large upload takes as long as it takes;
/// `max_ndjson_body_bytes` bounds it), and a long-poll gets its `wait_ms` on
/// top of the limit.
async fn answer_in_time(
    State(limit): State<std::time::Duration>,
    request: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // Only uploads to `/writes` are exempt, whatever else claims NDJSON.
    if is_upload(&request) {
        return next.run(request).await;
    }
    let limit = if is_long_poll(&request) {
        limit + std::time::Duration::from_millis(checkpoints::MAX_WAIT_MS)
    } else {
        limit
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Error::Timeout(limit.as_millis() as u64).into_response(),
    }
}

/// Makes the request's id known to whatever renders a problem document
/// for it (see [`problem::REQUEST_ID`]), so a user's error report can be
/// found in the service's log.
async fn with_request_id(
    request: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let id = request
        .headers()
        .get("x-request-id")
        .map(|id| String::from_utf8_lossy(id.as_bytes()).into_owned());
    problem::REQUEST_ID.scope(id, next.run(request)).await
}

/// Authentication, before any handler runs: who the caller is (a `Caller`
/// in the request's extensions). What each caller may do is in the
/// handlers' signatures (see [`access`]). A `/v1` request without a token
/// is refused here, before its body is read (every `/v1` route needs one);
/// with `--protect-operations`, so is any other request but the admin's.
async fn authenticate(
    State(state): State<AppState>,
    mut request: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use axum_extra::headers::authorization::{Authorization, Bearer};
    use axum_extra::headers::HeaderMapExt;
    let AuthMode::Enabled {
        admin_token,
        protect_operations,
    } = &state.auth
    else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let api = path == "/v1" || path.starts_with("/v1/");
    if ui::is_ui(path) {
        // Static files without data; the page calls /v1 with its token.
        return next.run(request).await;
    }
    let bearer = request.headers().typed_get::<Authorization<Bearer>>();
    if !api && !*protect_operations {
        return next.run(request).await;
    }
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    if let Some(error) = state.wrong_tokens.refuse(client) {
        return error.into_response();
    }
    let authenticated = crate::auth::authenticate(
        &state.db,
        admin_token,
        bearer.as_ref().map(|bearer| bearer.token()),
    )
    .await;
    if bearer.is_some() && matches!(authenticated, Err(Error::Unauthenticated(_))) {
        state.wrong_tokens.count(client);
    }
    let caller = match authenticated {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    if !api && *protect_operations && caller != crate::auth::Caller::Admin {
        return Error::Forbidden("the operations endpoints need the admin token".into())
            .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
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

impl AppState {
    /// How fast request bodies must arrive.
    pub fn pace(&self) -> body::Pace {
        body::Pace {
            idle: self.limits.body_idle_timeout,
            min_bytes_per_second: self.limits.min_body_bytes_per_second,
        }
    }
}

/// A state for `db` with these limits, a fresh notifier, and `auth`.
pub fn state(db: PgPool, limits: Limits, auth: AuthMode) -> AppState {
    AppState {
        write_slots: KeyedSlots::new(limits.max_writes_per_job),
        long_poll_slots: KeyedSlots::new(crate::config::defaults::MAX_LONG_POLLS_PER_JOB),
        wrong_tokens: WrongTokens::new(limits.wrong_tokens_per_minute),
        db,
        limits,
        notifier: Notifier::new(),
        auth,
        requests: TaskTracker::new(),
        stopping: tokio_util::sync::CancellationToken::new(),
    }
}
