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
/// A job has one `sink`, or several named `outputs` (each a table with its
/// own mode and key) that every checkpoint changes in one transaction.
/// Checks that each sink table exists and, in the keyed modes (upsert,
/// first_write_wins), that the key is
/// exactly the key of a usable unique index and NOT NULL; creates each
/// output's staging table. Sending the same spec again after an `ALTER TABLE`
/// of a sink refreshes the job's columns, keeping staged rows. Removing an
/// output, or changing its table, mode, key or partial updates, is refused
/// while rows are staged for it. A change of
/// the task set (rescaling) fences the current epoch like `POST /attempts`:
/// processors then start a new attempt and resume from the recovery point.
#[utoipa::path(
    put, path = "/v1/jobs/{job}", tag = "jobs",
    params(("job" = String, Path, description = "Job id: a slug of a-z, 0-9, '-', '_'")),
    request_body(content = JobSpec, examples(
        ("one sink" = (value = json!({
            "tasks": ["task-0", "task-1"],
            "sink": {"table": "word_counts", "mode": "upsert", "key": ["word"]},
            "checkpointing": {"interval_ms": 60000}
        }))),
        ("several outputs" = (value = json!({
            "tasks": ["task-0", "task-1"],
            "outputs": [
                {"name": "orders", "table": "orders", "mode": "append"},
                {"name": "customers", "table": "customers", "mode": "upsert", "key": ["customer_id"], "partial_updates": true}
            ],
            "checkpointing": {"interval_ms": 60000}
        }))),
    )),
    responses(
        (status = 201, description = "Job created", body = Job),
        (status = 200, description = "Job updated", body = Job),
        (status = 409, description = "Rows staged for an output removed or whose table, mode, key or partial updates change, or staged values that a column's new type cannot hold (`conflict`); or a rescale whose roll forward is blocked (`promotion-blocked`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid job id, tasks, sink, outputs or settings (`validation`, names the field, e.g. `outputs[1].key`)", body = Problem, content_type = "application/problem+json",
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
