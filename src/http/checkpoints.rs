//! `/checkpoints`: trigger, history, barrier discovery, acks, declines.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{Admin, JobCaller};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::problem::Problem;
use super::AppState;
use crate::coordinator;
use crate::error::{Error, Result};
use crate::model::{
    AbortRequest, AckBatchRequest, AckParams, AckRequest, AckResult, Checkpoint, CheckpointDetails,
    CheckpointList, CheckpointListQuery, DeclineRequest, PendingCheckpoint, PendingQuery,
    TriggerRequest,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(trigger_checkpoint, list_checkpoints))
        .routes(routes!(wait_for_pending))
        .routes(routes!(get_checkpoint))
        .routes(routes!(ack_checkpoint))
        .routes(routes!(ack_checkpoint_batch))
        .routes(routes!(decline_checkpoint))
        .routes(routes!(abort_checkpoint))
}

/// Longest long-poll.
pub const MAX_WAIT_MS: u64 = 60_000;

/// Trigger a checkpoint.
///
/// Tasks learn of it from `GET /checkpoints/pending`. Refused while
/// `max_concurrent` checkpoints are pending (409) or within `min_pause_ms`
/// of the last decision (429 with Retry-After).
#[utoipa::path(
    post, path = "/v1/jobs/{job}/checkpoints", tag = "checkpoints",
    params(("job" = String, Path, description = "Job id")),
    request_body = TriggerRequest,
    responses(
        (status = 201, description = "Triggered; pending", body = Checkpoint),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Fenced epoch (`fenced`), too many pending checkpoints, or no attempt yet (`conflict`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid body (`validation`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Within min_pause_ms (`too-early`, Retry-After)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn trigger_checkpoint(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(request): ApiJson<TriggerRequest>,
) -> Result<(StatusCode, Json<Checkpoint>)> {
    let checkpoint = coordinator::trigger(&state.db, &job_id, request.epoch).await?;
    Ok((StatusCode::CREATED, Json(checkpoint)))
}

/// Checkpoint history, newest first, with timings and staged volume.
#[utoipa::path(
    get, path = "/v1/jobs/{job}/checkpoints", tag = "checkpoints",
    params(("job" = String, Path, description = "Job id"), CheckpointListQuery),
    responses(
        (status = 200, description = "Checkpoints", body = CheckpointList),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter (`validation`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_checkpoints(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<CheckpointListQuery>,
) -> Result<Json<CheckpointList>> {
    Ok(Json(CheckpointList {
        checkpoints: coordinator::checkpoints(&state.db, &job_id, &query).await?,
    }))
}

/// Long-poll for a pending checkpoint (barrier discovery).
///
/// Answers at once when a pending checkpoint with an id above `after`
/// exists, otherwise waits up to `wait_ms` for one to be triggered (on any
/// replica). 204 when none came.
#[utoipa::path(
    get, path = "/v1/jobs/{job}/checkpoints/pending", tag = "checkpoints",
    params(("job" = String, Path, description = "Job id"), PendingQuery),
    responses(
        (status = 200, description = "The oldest pending checkpoint above `after`", body = PendingCheckpoint),
        (status = 204, description = "None pending within `wait_ms`"),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad parameter (`validation`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn wait_for_pending(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PendingQuery>,
    gone: Option<axum::Extension<super::ClientGone>>,
) -> Result<Response> {
    let gone = gone.map(|gone| gone.0 .0).unwrap_or_default();
    let wait_ms = query.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(Error::validation(
            "wait_ms",
            format!("wait_ms must be at most {MAX_WAIT_MS}"),
        ));
    }
    // The job's share of the long-poll budget, by its id as decoded
    // (however the path spells it).
    let _slot = state
        .long_poll_slots
        .try_acquire(&job_id)
        .ok_or(Error::Overloaded)?;
    let found = coordinator::wait_for_pending(
        &state.db,
        &state.notifier,
        &job_id,
        query.after.unwrap_or(0),
        Duration::from_millis(wait_ms),
        &gone,
    )
    .await?;
    Ok(match found {
        Some(checkpoint) => Json(checkpoint).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// One checkpoint, with each task's ack (time, offsets, state) or its absence.
#[utoipa::path(
    get, path = "/v1/jobs/{job}/checkpoints/{id}", tag = "checkpoints",
    params(("job" = String, Path, description = "Job id"), ("id" = i64, Path, description = "Checkpoint id")),
    responses(
        (status = 200, description = "The checkpoint", body = CheckpointDetails),
        (status = 404, description = "No such job or checkpoint (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Non-numeric id (`validation`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_checkpoint(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath((job_id, checkpoint_id)): ApiPath<(String, i64)>,
) -> Result<Json<CheckpointDetails>> {
    Ok(Json(
        coordinator::checkpoint(&state.db, &job_id, checkpoint_id).await?,
    ))
}

/// Ack a checkpoint: this task reached the barrier.
///
/// Seals the task's staged rows into this checkpoint and records its offsets
/// and state handle. The ack that completes the set decides the checkpoint
/// and promotes its rows into the sink before answering (`committed`), or,
/// with `promote=background`, answers once recorded and promotes after. An
/// identical re-ack answers as the first; a different one is 409.
#[utoipa::path(
    post, path = "/v1/jobs/{job}/checkpoints/{id}/acks", tag = "checkpoints",
    params(("job" = String, Path, description = "Job id"), ("id" = i64, Path, description = "Checkpoint id"), AckParams),
    request_body = AckRequest,
    responses(
        (status = 200, description = "Acked; the checkpoint's status after this ack", body = AckResult),
        (status = 404, description = "No such job or checkpoint (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Fenced epoch (`fenced`), aborted checkpoint (`checkpoint-aborted`), a different re-ack or an ack out of order (`conflict`)", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:sinkgate:problem:checkpoint-aborted", "title": "Checkpoint aborted", "status": 409,
                             "detail": "checkpoint 42 was aborted (timeout)", "checkpoint_id": 42})),
        (status = 422, description = "Unknown task (`unknown-task`), offset below the committed one (`offset-regression`), negative offset, partition claimed twice, state too large (`validation`)", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:sinkgate:problem:offset-regression", "title": "Offset regression", "status": 422,
                             "detail": "partition \"0\": offset 10 is below the committed offset 5000", "field": "offsets.0",
                             "partition": "0", "committed_offset": 5000})),
    )
)]
async fn ack_checkpoint(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath((job_id, checkpoint_id)): ApiPath<(String, i64)>,
    ApiQuery(params): ApiQuery<AckParams>,
    ApiJson(request): ApiJson<AckRequest>,
) -> Result<Json<AckResult>> {
    let promote = params.promote.unwrap_or_default();
    let acks = std::slice::from_ref(&request);
    Ok(Json(
        coordinator::ack(
            &state.db,
            &job_id,
            checkpoint_id,
            acks,
            false,
            promote,
            &state.limits,
        )
        .await?,
    ))
}

/// Ack a checkpoint for several tasks at once (one process running many).
///
/// The acks are recorded in one transaction, all or none, each checked as
/// a single ack would be; a refused one is named by its place (`field`
/// `acks[3].offsets.0`). A batch retried after a lost answer is answered
/// as the first. When the batch completes the set it decides and promotes
/// the checkpoint, as the last single ack does.
#[utoipa::path(
    post, path = "/v1/jobs/{job}/checkpoints/{id}/acks/batch", tag = "checkpoints",
    params(("job" = String, Path, description = "Job id"), ("id" = i64, Path, description = "Checkpoint id"), AckParams),
    request_body = AckBatchRequest,
    responses(
        (status = 200, description = "Every ack recorded; the checkpoint's status after them", body = AckResult),
        (status = 404, description = "No such job or checkpoint (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Fenced epoch (`fenced`), aborted checkpoint (`checkpoint-aborted`), a different re-ack or an ack out of order (`conflict`); nothing of the batch was recorded", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:sinkgate:problem:conflict", "title": "Conflict", "status": 409,
                             "detail": "acks[1]: task \"task-1\" already acked checkpoint 42 with different offsets or state", "field": "acks[1]"})),
        (status = 422, description = "Empty batch, more than 1024 acks, a task twice, or an ack a single ack would be refused for (`unknown-task`, `offset-regression`, `validation`), named `acks[i]`; nothing of the batch was recorded", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:sinkgate:problem:offset-regression", "title": "Offset regression", "status": 422,
                             "detail": "acks[3]: partition \"0\": offset 10 is below offset 5000, already committed or acked for this partition in this epoch",
                             "field": "acks[3].offsets.0", "partition": "0", "committed_offset": 5000})),
    )
)]
async fn ack_checkpoint_batch(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath((job_id, checkpoint_id)): ApiPath<(String, i64)>,
    ApiQuery(params): ApiQuery<AckParams>,
    ApiJson(request): ApiJson<AckBatchRequest>,
) -> Result<Json<AckResult>> {
    let promote = params.promote.unwrap_or_default();
    Ok(Json(
        coordinator::ack(
            &state.db,
            &job_id,
            checkpoint_id,
            &request.acks,
            true,
            promote,
            &state.limits,
        )
        .await?,
    ))
}

/// Decline a checkpoint: this task cannot take it, so it is aborted.
///
/// Staged rows stay staged and are promoted by the next checkpoint that
/// completes. Declining an already aborted checkpoint is a no-op.
#[utoipa::path(
    post, path = "/v1/jobs/{job}/checkpoints/{id}/declines", tag = "checkpoints",
    params(("job" = String, Path, description = "Job id"), ("id" = i64, Path, description = "Checkpoint id")),
    request_body = DeclineRequest,
    responses(
        (status = 200, description = "The checkpoint, now aborted", body = Checkpoint),
        (status = 404, description = "No such job or checkpoint (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Fenced epoch (`fenced`), or the checkpoint is already decided (`conflict`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown task (`unknown-task`) or invalid body (`validation`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn decline_checkpoint(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath((job_id, checkpoint_id)): ApiPath<(String, i64)>,
    ApiJson(request): ApiJson<DeclineRequest>,
) -> Result<Json<Checkpoint>> {
    Ok(Json(
        coordinator::decline(&state.db, &job_id, checkpoint_id, &request).await?,
    ))
}

/// Abort a pending checkpoint (admin): for operators, when a task is stuck.
///
/// Staged rows stay staged and are promoted by the next checkpoint that
/// completes. Aborting an already aborted checkpoint is a no-op.
#[utoipa::path(
    post, path = "/v1/jobs/{job}/checkpoints/{id}/abort", tag = "checkpoints",
    params(("job" = String, Path, description = "Job id"), ("id" = i64, Path, description = "Checkpoint id")),
    request_body = AbortRequest,
    responses(
        (status = 200, description = "The checkpoint, now aborted", body = Checkpoint),
        (status = 404, description = "No such job or checkpoint (`not-found`)", body = Problem, content_type = "application/problem+json",
         example = json!({"type": "urn:sinkgate:problem:not-found", "title": "Not found", "status": 404,
                          "detail": "checkpoint 9 of job \"word-count\" does not exist"})),
        (status = 409, description = "The checkpoint is already decided (`conflict`)", body = Problem, content_type = "application/problem+json",
         example = json!({"type": "urn:sinkgate:problem:conflict", "title": "Conflict", "status": 409,
                          "detail": "checkpoint 7 is committed; a decided checkpoint cannot be aborted"})),
        (status = 422, description = "Invalid body (`validation`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn abort_checkpoint(
    _: Admin,
    State(state): State<AppState>,
    ApiPath((job_id, checkpoint_id)): ApiPath<(String, i64)>,
    ApiJson(request): ApiJson<AbortRequest>,
) -> Result<Json<Checkpoint>> {
    Ok(Json(
        coordinator::abort(&state.db, &job_id, checkpoint_id, &request).await?,
    ))
}
