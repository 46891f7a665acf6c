//! Who may call what, said in each handler's signature.
//!
//! Every `/v1` handler takes [`Admin`] or [`JobCaller`] as its first
//! extractor, so the permission is part of the handler's type and is checked
//! before its body is read: a handler without one would be open to every
//! token, which `tests/api/auth.rs` (`every_route_declares_who_may_call_it`)
//! catches for every route of the OpenAPI document. The `authenticate`
//! middleware (in `http/mod.rs`) only says who the caller is; it refuses a
//! `/v1` request without a token (every `/v1` route needs one) and, with
//! `--protect-operations`, the operations endpoints to all but the admin.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;

use super::AppState;
use crate::auth::{AuthMode, Caller};
use crate::error::Error;

/// The admin token only (anything when authentication is off).
pub struct Admin;

/// The admin token, or a processor token of the job named by the route's
/// `{job}` segment. Holds who it was (an upload checks its token again
/// before it commits).
pub struct JobCaller(pub Caller);

/// The authenticated caller of a request (the admin when authentication is
/// off); 401 when it presented no token.
fn caller(parts: &Parts, state: &AppState) -> Result<Caller, Error> {
    if let AuthMode::Disabled = state.auth {
        return Ok(Caller::Admin);
    }
    parts
        .extensions
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated("a bearer token is required".into()))
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        match caller(parts, state)? {
            Caller::Admin => Ok(Admin),
            Caller::Processor { .. } => Err(Error::Forbidden(
                "this needs the admin token; processor tokens run their job's protocol only".into(),
            )),
        }
    }
}

impl FromRequestParts<AppState> for JobCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let caller = caller(parts, state)?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Error::Malformed(rejection.body_text()))?;
        let Some((_, job)) = params.iter().find(|(name, _)| *name == "job") else {
            return Err(Error::Internal(anyhow::anyhow!(
                "JobCaller on a route without a {{job}} segment"
            )));
        };
        match &caller {
            Caller::Admin => Ok(JobCaller(caller)),
            Caller::Processor { job_id, .. } if job_id == job => Ok(JobCaller(caller)),
            Caller::Processor { job_id, .. } => Err(Error::Forbidden(format!(
                "this token belongs to job {job_id:?}"
            ))),
        }
    }
}
