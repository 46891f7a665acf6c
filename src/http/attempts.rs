//! `/attempts` and `/recovery`: (re)starting a job and where to resume.

use axum::extract::{Request, State};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::JobCaller;
use super::extract::{is_json, parse_json, read_body, ApiPath};
use super::problem::Problem;
use super::AppState;
use crate::coordinator;
use crate::error::{Error, Result};
use crate::model::{Attempt, AttemptRequest, Recovery};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_attempt))
        .routes(routes!(get_recovery))
}

/// Start or restart a job: new epoch, fence the old one, recover.
///
/// Rolls forward a checkpoint decided before a crash, aborts the old epoch's
/// pending checkpoints and its staged rows, and returns the offsets and
/// state handles to resume from. The body may be empty or `{}`; with
/// `from_checkpoint`, the job restarts from that savepoint or retained
/// checkpoint instead (upsert-only jobs). An upload
/// of the old epoch that stalls is ended after about a second, so a new
/// attempt never waits for a zombie's network.
#[utoipa::path(
    post, path = "/v1/jobs/{job}/attempts", tag = "recovery",
    params(("job" = String, Path, description = "Job id")),
    request_body(content = AttemptRequest, description = "Empty object (or no body), or the checkpoint to restart from"),
    responses(
        (status = 200, description = "The new epoch and the recovery point", body = Attempt),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The last decided checkpoint's rows cannot be promoted into the sink (`promotion-blocked`, with `checkpoint_id` and `sink_error`); nothing was changed. Retry after the operator fixed the sink. Or a restart from an older checkpoint of a job with an append or first_write_wins output (`conflict`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown field in the body, or a `from_checkpoint` that is unknown, not committed or no longer retained (`validation`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn start_attempt(
    JobCaller(caller): JobCaller,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
    request: Request,
) -> Result<Json<Attempt>> {
    let json = is_json(
        request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok()),
    );
    let body = read_body(request, &()).await?;
    let mut options = AttemptRequest::default();
    if !body.iter().all(u8::is_ascii_whitespace) {
        if !json {
            return Err(Error::UnsupportedMediaType(
                "send the body as Content-Type: application/json (or send none)".into(),
            ));
        }
        options = parse_json::<AttemptRequest>(&body)?;
    }
    if options.from_checkpoint.is_some() && !matches!(caller, crate::auth::Caller::Admin) {
        // Rewinding a job is an operator's decision, as savepoints are.
        return Err(Error::Forbidden(
            "a restart from an older checkpoint needs the admin token".into(),
        ));
    }
    Ok(Json(
        coordinator::attempt(&state.db, &job_id, &options).await?,
    ))
}

/// Where to resume: the latest decided checkpoint's offsets and state (read-only).
#[utoipa::path(
    get, path = "/v1/jobs/{job}/recovery", tag = "recovery",
    params(("job" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The recovery point; `checkpoint_id` null and offsets empty before the first decided checkpoint", body = Recovery),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The last decided checkpoint's rows are not in the sink yet: its promotion failed (`promotion-blocked`, with `checkpoint_id` and `sink_error`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_recovery(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<Recovery>> {
    Ok(Json(coordinator::recovery(&state.db, &job_id).await?))
}
