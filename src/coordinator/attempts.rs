//! Start and restart: a new epoch fences the old one, rolls forward what was
//! decided, aborts what was not, and says where to resume.

use std::collections::BTreeMap;

use sqlx::types::Json;
use sqlx::PgConnection;

use super::acks::decide_complete_pending;
use super::commit::{commit_decided, staged_tags, CommitOutcome};
use super::{load_job, JobLock};
use crate::error::Result;
use crate::model::{Attempt, CheckpointStatus, Recovery, StateHandle, TaskRecovery};
use crate::sink::promote::abort_orphans;

/// `POST /v1/jobs/{job}/attempts`.
///
/// Holding the job row `FOR UPDATE` waits for every in-flight write, ack and
/// trigger of the old epoch and fences every later one. Then, in order:
/// promote a decided-but-unpromoted checkpoint (roll forward), abort the old
/// epoch's pending checkpoints, throw away the staged rows above the last
/// decided checkpoint, forget the old epoch's batches and acks-in-progress,
/// and bump the epoch.
pub async fn start(conn: &mut PgConnection, job_id: &str) -> Result<Attempt> {
    load_job(&mut *conn, job_id, JobLock::Update).await?;
    // Every task acked it: the decision only had not been written yet.
    decide_complete_pending(&mut *conn, job_id).await?;
    let mut job = load_job(&mut *conn, job_id, JobLock::None).await?;
    let new_epoch = job.epoch + 1;

    let decided_unpromoted: Vec<i64> = sqlx::query_scalar(
        "SELECT checkpoint_id FROM checkpoints WHERE job_id = $1 AND status = 'completed' ORDER BY checkpoint_id",
    )
    .bind(job_id)
    .fetch_all(&mut *conn)
    .await?;
    let rolled_forward = match commit_decided(&mut *conn, &mut job).await? {
        CommitOutcome::Committed { .. } => decided_unpromoted,
        _ => Vec::new(),
    };

    let aborted: Vec<i64> = sqlx::query_scalar(
        "UPDATE checkpoints SET status = 'aborted', aborted_at = now(), failure_reason = 'fenced by epoch ' || $2
         WHERE job_id = $1 AND status = 'pending' RETURNING checkpoint_id",
    )
    .bind(job_id)
    .bind(new_epoch)
    .fetch_all(&mut *conn)
    .await?;
    crate::metrics::checkpoints_aborted(job_id, "fenced", aborted.len() as u64);

    // After a successful roll forward nothing decided is left staged, so the
    // orphans are the whole staging table.
    let decided = job.last_decided_id.unwrap_or(0);
    let nothing_decided_staged = job.last_committed_id == job.last_decided_id;
    let orphan_tags = staged_tags(&mut *conn, job_id, decided, None).await?;
    abort_orphans(
        &mut *conn,
        job_id,
        &orphan_tags,
        decided,
        nothing_decided_staged,
    )
    .await?;
    sqlx::query("DELETE FROM batches WHERE job_id = $1 AND checkpoint_tag > $2")
        .bind(job_id)
        .bind(decided)
        .execute(&mut *conn)
        .await?;

    sqlx::query(
        "UPDATE jobs SET epoch = $2, epoch_first_checkpoint = next_checkpoint_id, updated_at = now() WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(new_epoch)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE tasks SET last_acked_id = NULL WHERE job_id = $1")
        .bind(job_id)
        .execute(&mut *conn)
        .await?;
    tracing::info!(
        job = job_id,
        epoch = new_epoch,
        ?aborted,
        ?rolled_forward,
        "new attempt"
    );

    Ok(Attempt {
        epoch: new_epoch,
        recovery: recovery(&mut *conn, job_id).await?,
        aborted_checkpoints: aborted,
        rolled_forward_checkpoints: rolled_forward,
    })
}

#[derive(sqlx::FromRow)]
struct RecoveryAck {
    task_id: String,
    offsets: Json<BTreeMap<String, i64>>,
    state: Option<Json<StateHandle>>,
}

/// `GET /v1/jobs/{job}/recovery`: the latest decided checkpoint, per task and
/// merged. Read-only.
pub async fn recovery(conn: &mut PgConnection, job_id: &str) -> Result<Recovery> {
    let job = load_job(&mut *conn, job_id, JobLock::None).await?;
    let Some(checkpoint_id) = job.last_decided_id else {
        return Ok(Recovery {
            checkpoint_id: None,
            epoch: None,
            status: None,
            tasks: BTreeMap::new(),
            offsets: BTreeMap::new(),
        });
    };
    let (epoch, status): (i64, String) = sqlx::query_as(
        "SELECT epoch, status FROM checkpoints WHERE job_id = $1 AND checkpoint_id = $2",
    )
    .bind(job_id)
    .bind(checkpoint_id)
    .fetch_one(&mut *conn)
    .await?;
    let acks: Vec<RecoveryAck> = sqlx::query_as(
        "SELECT task_id, offsets, state FROM acks WHERE job_id = $1 AND checkpoint_id = $2",
    )
    .bind(job_id)
    .bind(checkpoint_id)
    .fetch_all(&mut *conn)
    .await?;
    let offsets: Vec<(String, i64)> = sqlx::query_as(
        "SELECT source_partition, next_offset FROM committed_offsets WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Recovery {
        checkpoint_id: Some(checkpoint_id),
        epoch: Some(epoch),
        status: CheckpointStatus::parse(&status),
        tasks: acks
            .into_iter()
            .map(|ack| {
                (
                    ack.task_id,
                    TaskRecovery {
                        offsets: ack.offsets.0,
                        state: ack.state.map(|state| state.0),
                    },
                )
            })
            .collect(),
        offsets: offsets.into_iter().collect(),
    })
}
