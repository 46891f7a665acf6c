//! `/v1/jobs`: register, inspect, and remove jobs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{Admin, JobCaller};
use super::extract::{ApiJson, ApiPath};
use super::problem::Problem;
use super::AppState;
use crate::coordinator;
use crate::error::Result;
use crate::model::{Job, JobList, JobSpec};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(put_job, get_job, delete_job))
}

/// Create or update a job.
///
/// Checks that the sink table exists and, in the keyed modes (upsert,
/// first_write_wins), that the key is
/// exactly the key of a usable unique index and NOT NULL; creates the job's
/// staging table. Sending the same spec again after an `ALTER TABLE` of the
/// sink refreshes the job's columns, keeping staged rows. A change of the
/// sink's table, mode or key is refused while rows are staged. A change of
/// the task set (rescaling) fences the current epoch like `POST /attempts`:
/// processors then start a new attempt and resume from the recovery point.
#[utoipa::path(
    put, path = "/v1/jobs/{job}", tag = "jobs",
    params(("job" = String, Path, description = "Job id: a slug of a-z, 0-9, '-', '_'")),
    request_body = JobSpec,
    responses(
        (status = 201, description = "Job created", body = Job),
        (status = 200, description = "Job updated", body = Job),
        (status = 409, description = "Rows staged for a change of the sink's table, mode or key, or staged values that a column's new type cannot hold (`conflict`); or a rescale whose roll forward is blocked (`promotion-blocked`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid job id, tasks, sink or settings (`validation`, names the field)", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:sinkgate:problem:validation", "title": "Invalid request", "status": 422,
                             "detail": "table public.word_counts does not exist (sinkgate never creates sink tables)", "field": "sink.table"})),
    )
)]
async fn put_job(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<(StatusCode, Json<Job>)> {
    let (job, created) = coordinator::put_job(&state.db, &job_id, &spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(job)))
}

/// Inspect a job.
#[utoipa::path(
    get, path = "/v1/jobs/{job}", tag = "jobs",
    params(("job" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_job(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<Job>> {
    Ok(Json(coordinator::job(&state.db, &job_id).await?))
}

/// Remove a job, its checkpoints and its staged rows. The sink table is never touched.
#[utoipa::path(
    delete, path = "/v1/jobs/{job}", tag = "jobs",
    params(("job" = String, Path, description = "Job id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_job(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<StatusCode> {
    coordinator::delete_job(&state.db, &job_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List jobs.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs",
    responses((status = 200, description = "All jobs, by id", body = JobList))
)]
async fn list_jobs(_: Admin, State(state): State<AppState>) -> Result<Json<JobList>> {
    Ok(Json(JobList {
        jobs: coordinator::jobs(&state.db).await?,
    }))
}
