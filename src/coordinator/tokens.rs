//! Processor tokens as stored: per job, only a SHA-256 of the secret, shown
//! once at issue, revocable. Who may call what is decided in `crate::auth`.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use super::{load_job, require_name, JobLock};
use crate::error::{Error, Result};
pub use crate::model::{IssuedToken, TokenInfo};

/// What is stored of a secret.
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// The job and stored digest of an unrevoked token, by its id.
pub async fn live_token(pool: &PgPool, token_id: &str) -> Result<Option<(String, Vec<u8>)>> {
    let row = sqlx::query!(
        "SELECT job_id, secret_sha256 FROM job_tokens WHERE token_id = $1 AND revoked_at IS NULL",
        token_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| (row.job_id, row.secret_sha256)))
}

/// Issues a processor token for a job.
pub async fn issue(conn: &mut PgConnection, job_id: &str, label: &str) -> Result<IssuedToken> {
    if !label.is_empty() {
        require_name("label", label, 200)?;
    }
    load_job(&mut *conn, job_id, JobLock::KeyShare).await?;
    let token_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let created_at: DateTime<Utc> = sqlx::query_scalar!(
        "INSERT INTO job_tokens (token_id, job_id, secret_sha256, label) VALUES ($1, $2, $3, $4) RETURNING created_at",
        token_id,
        job_id,
        digest(&secret),
        label
    )
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
    load_job(&mut *conn, job_id, JobLock::None).await?;
    Ok(sqlx::query_as!(
        TokenInfo,
        "SELECT token_id, job_id, label, created_at, revoked_at FROM job_tokens WHERE job_id = $1 ORDER BY created_at",
        job_id
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// Revokes a token; revoking twice is fine.
pub async fn revoke(conn: &mut PgConnection, job_id: &str, token_id: &str) -> Result<()> {
    let found = sqlx::query!(
        "UPDATE job_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE job_id = $1 AND token_id = $2",
        job_id,
        token_id
    )
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
pub async fn ensure_not_revoked(conn: &mut PgConnection, token_id: &str) -> Result<()> {
    let live = sqlx::query_scalar!(
        r#"SELECT revoked_at IS NULL AS "live!" FROM job_tokens WHERE token_id = $1 FOR SHARE"#,
        token_id
    )
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
