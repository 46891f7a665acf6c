//! Who may call what.
//!
//! Two kinds of bearer tokens: the **admin token** (from configuration) may
//! do everything; a **processor token** is issued per job by the admin API,
//! stored only as a SHA-256 of its secret, shown once, revocable, and may
//! run that job's protocol (attempts, writes, checkpoints, acks, declines,
//! recovery, reading the job) and nothing else. No or an unknown token is
//! 401; a valid token without the right is 403. Comparisons of secrets are
//! constant-time. `--insecure-no-auth` turns all of this off (development).
//!
//! The tokens themselves (issue, list, revoke, look up) are stored by
//! [`crate::coordinator::tokens`].

use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::coordinator::tokens::digest;
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
    match crate::coordinator::tokens::live_token(pool, token_id).await? {
        Some((job_id, stored)) if bool::from(digest(secret).ct_eq(&stored)) => {
            Ok(Caller::Processor {
                job_id,
                token_id: token_id.to_owned(),
            })
        }
        _ => Err(unknown()),
    }
}
