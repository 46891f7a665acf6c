//! `/v1/jobs/{job}/tokens`: processor tokens, managed with the admin token.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::Admin;
use super::extract::{ApiJson, ApiPath};
use super::problem::Problem;
use super::AppState;
use crate::coordinator;
use crate::error::Result;
use crate::model::{IssuedToken, TokenInfo, TokenRequest};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(issue_token, list_tokens))
        .routes(routes!(revoke_token))
}

/// Issue a processor token for this job (admin only). The token is shown once.
#[utoipa::path(
    post, path = "/v1/jobs/{job}/tokens", tag = "tokens",
    params(("job" = String, Path, description = "Job id")),
    request_body = TokenRequest,
    responses(
        (status = 201, description = "Issued; `token` is not retrievable later", body = IssuedToken),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid label (`validation`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn issue_token(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<(StatusCode, Json<IssuedToken>)> {
    let issued = coordinator::issue_token(&state.db, &job_id, &request.label).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// List this job's processor tokens (admin only; secrets are never shown).
#[utoipa::path(
    get, path = "/v1/jobs/{job}/tokens", tag = "tokens",
    params(("job" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Tokens, oldest first", body = Vec<TokenInfo>),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_tokens(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<Vec<TokenInfo>>> {
    Ok(Json(coordinator::tokens(&state.db, &job_id).await?))
}

/// Revoke a processor token (admin only). Requests with it get 401 from now on.
#[utoipa::path(
    delete, path = "/v1/jobs/{job}/tokens/{token_id}", tag = "tokens",
    params(("job" = String, Path, description = "Job id"), ("token_id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such token (`not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn revoke_token(
    _: Admin,
    State(state): State<AppState>,
    ApiPath((job_id, token_id)): ApiPath<(String, String)>,
) -> Result<StatusCode> {
    coordinator::revoke_token(&state.db, &job_id, &token_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
