//! `/promotions` and `/dead-letters`: what an operator does when the sink
//! refuses rows.

use axum::extract::{Query, State};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::Admin;
use super::extract::ApiPath;
use super::problem::Problem;
use super::AppState;
use crate::coordinator;
use crate::error::{Error, Result};
use crate::model::{DeadLetterList, DeadLetterQuery, PromotionResult};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(retry_promotion))
        .routes(routes!(list_dead_letters))
}

/// Promote the decided checkpoint now (admin).
///
/// After fixing what blocked a promotion (the sink's data, a constraint, a
/// trigger; after an `ALTER TABLE`, `PUT` the job again first so its columns
/// are refreshed), promotes the last decided checkpoint at once instead of
/// at the scheduler's next retry. Nothing waiting is not an error.
#[utoipa::path(
    post, path = "/v1/jobs/{job}/promotions", tag = "operations",
    params(("job" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Promoted, or nothing was waiting", body = PromotionResult),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The promotion failed again (`promotion-blocked`, with `checkpoint_id` and `sink_error`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn retry_promotion(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<PromotionResult>> {
    Ok(Json(coordinator::promote(&state.db, &job_id).await?))
}

/// Rows a promotion kept out of the sink (admin).
///
/// With `on_promotion_error: "dead_letter"`, a row the sink refuses (a
/// constraint, a trigger, a value) is recorded here with the database's
/// error, in the transaction that commits the rest of its checkpoint.
/// Oldest first; page with `after`.
#[utoipa::path(
    get, path = "/v1/jobs/{job}/dead-letters", tag = "operations",
    params(("job" = String, Path, description = "Job id"), DeadLetterQuery),
    responses(
        (status = 200, description = "Dead letters, oldest first", body = DeadLetterList),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad query parameter (`validation`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_dead_letters(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
    query: std::result::Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadLetterList>> {
    let Query(query) =
        query.map_err(|rejection| Error::validation("query", rejection.body_text()))?;
    Ok(Json(
        coordinator::dead_letters(&state.db, &job_id, &query).await?,
    ))
}
