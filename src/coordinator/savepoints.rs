//! Savepoints: decided checkpoints an operator keeps, with a label, until
//! deleted. Retention (`retained`) passes them by: their acks (offsets,
//! state handles, references to stored chunks and external objects) and
//! their offsets snapshot stay, so a job can restart from one
//! (`POST /attempts` with `from_checkpoint`).

use std::collections::BTreeMap;

use sqlx::types::Json;
use sqlx::PgConnection;

use super::{load_job, require_name, JobLock};
use crate::error::{Error, Result};
use crate::model::{CheckpointStatus, Savepoint, SavepointRequest};

/// `POST /savepoints`: labels a decided checkpoint (by default the last
/// one) whose acks are still retained. The same label for the same
/// checkpoint again answers the savepoint as it is.
pub async fn create(
    conn: &mut PgConnection,
    job_id: &str,
    request: &SavepointRequest,
) -> Result<Savepoint> {
    require_name("label", &request.label, 200)?;
    // The lock a commit's pruning holds: what is checked here stays true.
    let job = load_job(&mut *conn, job_id, JobLock::NoKeyUpdate).await?;
    // By default the recovery point: after a restart from an older
    // checkpoint, that one until the next decision.
    let default = job.restored_from.or(job.last_decided_id);
    let Some(checkpoint_id) = request.checkpoint_id.or(default) else {
        return Err(Error::validation(
            "checkpoint_id",
            format!("job {job_id:?} has no decided checkpoint yet"),
        ));
    };
    retained(&mut *conn, job_id, checkpoint_id, "checkpoint_id").await?;
    let inserted = sqlx::query_as!(
        Savepoint,
        "INSERT INTO savepoints (job_id, checkpoint_id, label) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING RETURNING checkpoint_id, label, created_at",
        job_id,
        checkpoint_id,
        &request.label
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(savepoint) = inserted {
        return Ok(savepoint);
    }
    let existing = sqlx::query_as!(
        Savepoint,
        "SELECT checkpoint_id, label, created_at FROM savepoints
         WHERE job_id = $1 AND (checkpoint_id = $2 OR label = $3)",
        job_id,
        checkpoint_id,
        &request.label
    )
    .fetch_all(&mut *conn)
    .await?;
    match existing.as_slice() {
        [same] if same.checkpoint_id == checkpoint_id && same.label == request.label => {
            Ok(same.clone())
        }
        _ => Err(Error::conflict(format!(
            "checkpoint {checkpoint_id} already has a savepoint, or label {:?} names another one: {}",
            request.label,
            existing
                .iter()
                .map(|s| format!("{} = {:?}", s.checkpoint_id, s.label))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The offsets snapshot of a decided checkpoint whose acks are all still
/// kept (a savepoint, or one of the `retained` newest): what a savepoint
/// keeps and a restart resumes from. 422 naming `field` otherwise.
pub async fn retained(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
    field: &str,
) -> Result<BTreeMap<String, i64>> {
    let found = sqlx::query!(
        r#"SELECT c.status AS "status: CheckpointStatus", c.task_count,
                  c.offsets_snapshot AS "snapshot: Json<BTreeMap<String, i64>>",
                  (SELECT count(*) FROM acks a WHERE a.job_id = c.job_id AND a.checkpoint_id = c.checkpoint_id) AS "acks!"
           FROM checkpoints c WHERE c.job_id = $1 AND c.checkpoint_id = $2"#,
        job_id,
        checkpoint_id
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        Error::validation(
            field,
            format!("job {job_id:?} has no checkpoint {checkpoint_id}"),
        )
    })?;
    if !matches!(
        found.status,
        CheckpointStatus::Completed | CheckpointStatus::Committed
    ) {
        return Err(Error::validation(
            field,
            format!(
                "checkpoint {checkpoint_id} is {}; only a decided checkpoint can be kept or restarted from",
                found.status.as_str()
            ),
        ));
    }
    match found.snapshot {
        Some(Json(snapshot)) if found.acks >= i64::from(found.task_count) => Ok(snapshot),
        _ => Err(Error::validation(
            field,
            format!("checkpoint {checkpoint_id} is no longer retained (its acks were pruned); savepoints and the `retained` newest decided checkpoints are"),
        )),
    }
}

/// `GET /savepoints`, newest first.
pub async fn list(conn: &mut PgConnection, job_id: &str) -> Result<Vec<Savepoint>> {
    load_job(&mut *conn, job_id, JobLock::None).await?;
    Ok(sqlx::query_as!(
        Savepoint,
        "SELECT checkpoint_id, label, created_at FROM savepoints WHERE job_id = $1
         ORDER BY checkpoint_id DESC",
        job_id
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// `DELETE /savepoints/{id}`: the checkpoint is retained like any other
/// again (its acks go at the next commit if it is older than `retained`).
pub async fn delete(conn: &mut PgConnection, job_id: &str, checkpoint_id: i64) -> Result<()> {
    load_job(&mut *conn, job_id, JobLock::NoKeyUpdate).await?;
    let deleted = sqlx::query!(
        "DELETE FROM savepoints WHERE job_id = $1 AND checkpoint_id = $2",
        job_id,
        checkpoint_id
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if deleted == 0 {
        return Err(Error::not_found(format!(
            "job {job_id:?} has no savepoint of checkpoint {checkpoint_id}"
        )));
    }
    Ok(())
}
