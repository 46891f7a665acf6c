//! Who may call what.
//!
//! Two kinds of bearer tokens: the **admin token** (from configuration) may
//! do everything; a **processor token** is issued per job by the admin API,
//! stored only as a SHA-256 of its secret, shown once, revocable, and may
//! run that job's protocol (attempts, writes, checkpoints, acks, declines,
//! recovery, reading the job) and nothing else. No or an unknown token is
//! 401; a valid token without the right is 403. Comparisons of secrets are
//! constant-time. `--insecure-no-auth` turns all of this off (development).

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// The service's authentication settings.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Everything open (logged as a warning at start-up).
    Disabled,
    Enabled {
        admin_token: String,
        /// Whether `/healthz`, `/readyz`, `/metrics` and the API docs need the admin token.
        protect_operations: bool,
    },
}

/// What a request presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Processor { job_id: String, token_id: String },
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Nothing,
    Admin,
    /// The admin, or a processor token of this job.
    Job(String),
}

/// Classifies a request by method and path.
pub fn need(method: &str, path: &str, protect_operations: bool) -> Need {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "jobs"] => Need::Admin,
        ["v1", "jobs", job] => match method {
            "GET" => Need::Job((*job).to_owned()),
            _ => Need::Admin,
        },
        ["v1", "jobs", _, "tokens", ..] => Need::Admin,
        ["v1", "jobs", _, "checkpoints", _, "abort"] => Need::Admin,
        ["v1", "jobs", _, "promotions" | "dead-letters", ..] => Need::Admin,
        ["v1", "jobs", job, ..] => Need::Job((*job).to_owned()),
        ["v1", ..] => Need::Admin,
        _ if protect_operations => Need::Admin,
        _ => Need::Nothing,
    }
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Identifies the caller from an `Authorization: Bearer …` value.
pub async fn authenticate(
    pool: &PgPool,
    admin_token: &str,
    bearer: Option<&str>,
) -> Result<Caller> {
    let Some(token) = bearer else {
        return Err(Error::Unauthenticated("a bearer token is required".into()));
    };
    if bool::from(digest(token).ct_eq(&digest(admin_token))) {
        return Ok(Caller::Admin);
    }
    // Processor tokens: sgt_<token id>_<secret>
    let unknown = || Error::Unauthenticated("unknown or revoked token".into());
    let (token_id, secret) = token
        .strip_prefix("sgt_")
        .and_then(|rest| rest.split_once('_'))
        .ok_or_else(unknown)?;
    let row: Option<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT job_id, secret_sha256 FROM job_tokens WHERE token_id = $1 AND revoked_at IS NULL",
    )
    .bind(token_id)
    .fetch_optional(pool)
    .await?;
    match row {
        Some((job_id, stored)) if bool::from(digest(secret).ct_eq(&stored)) => {
            Ok(Caller::Processor {
                job_id,
                token_id: token_id.to_owned(),
            })
        }
        _ => Err(unknown()),
    }
}

/// Whether `caller` may do what `need` asks.
pub fn authorize(caller: &Caller, need: &Need) -> Result<()> {
    match (caller, need) {
        (Caller::Admin, _) | (_, Need::Nothing) => Ok(()),
        (Caller::Processor { job_id, .. }, Need::Job(job)) if job_id == job => Ok(()),
        (Caller::Processor { job_id, .. }, Need::Job(_)) => Err(Error::Forbidden(format!(
            "this token belongs to job {job_id:?}"
        ))),
        (Caller::Processor { .. }, Need::Admin) => Err(Error::Forbidden(
            "this needs the admin token; processor tokens run their job's protocol only".into(),
        )),
    }
}

pub use crate::model::{IssuedToken, TokenInfo};

/// Issues a processor token for a job.
pub async fn issue(conn: &mut PgConnection, job_id: &str, label: &str) -> Result<IssuedToken> {
    if !label.is_empty() {
        crate::coordinator::require_name("label", label, 200)?;
    }
    crate::coordinator::load_job(&mut *conn, job_id, crate::coordinator::JobLock::KeyShare).await?;
    let token_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO job_tokens (token_id, job_id, secret_sha256, label) VALUES ($1, $2, $3, $4) RETURNING created_at",
    )
    .bind(&token_id)
    .bind(job_id)
    .bind(digest(&secret))
    .bind(label)
    .fetch_one(&mut *conn)
    .await?;
    Ok(IssuedToken {
        token: format!("sgt_{token_id}_{secret}"),
        token_id,
        job_id: job_id.to_owned(),
        label: label.to_owned(),
        created_at,
    })
}

pub async fn list(conn: &mut PgConnection, job_id: &str) -> Result<Vec<TokenInfo>> {
    crate::coordinator::load_job(&mut *conn, job_id, crate::coordinator::JobLock::None).await?;
    type TokenRow = (String, String, String, DateTime<Utc>, Option<DateTime<Utc>>);
    let rows: Vec<TokenRow> = sqlx::query_as(
        "SELECT token_id, job_id, label, created_at, revoked_at FROM job_tokens WHERE job_id = $1 ORDER BY created_at",
    )
    .bind(job_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(token_id, job_id, label, created_at, revoked_at)| TokenInfo {
                token_id,
                job_id,
                label,
                created_at,
                revoked_at,
            },
        )
        .collect())
}

/// Revokes a token; revoking twice is fine.
pub async fn revoke(conn: &mut PgConnection, job_id: &str, token_id: &str) -> Result<()> {
    let found = sqlx::query(
        "UPDATE job_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE job_id = $1 AND token_id = $2",
    )
    .bind(job_id)
    .bind(token_id)
    .execute(&mut *conn)
    .await?;
    if found.rows_affected() == 0 {
        return Err(Error::not_found(format!(
            "token {token_id:?} of job {job_id:?} does not exist"
        )));
    }
    Ok(())
}

/// Refuses a processor token revoked since its request was authenticated:
/// checked in the write's own transaction, just before it commits, so a
/// revocation stops an upload in progress from staging anything.
pub async fn ensure_not_revoked(conn: &mut PgConnection, caller: Option<&Caller>) -> Result<()> {
    let Some(Caller::Processor { token_id, .. }) = caller else {
        return Ok(());
    };
    let live: Option<bool> = sqlx::query_scalar(
        "SELECT revoked_at IS NULL FROM job_tokens WHERE token_id = $1 FOR SHARE",
    )
    .bind(token_id)
    .fetch_optional(&mut *conn)
    .await?;
    if live == Some(true) {
        Ok(())
    } else {
        Err(Error::Unauthenticated(
            "the token was revoked during the request; nothing was staged".into(),
        ))
    }
}
