//! Acks and declines, and the decision that the last ack makes.

use std::collections::BTreeMap;

use sqlx::types::Json;
use sqlx::PgConnection;

use super::checkpoints::{abort_timed_out, get};
use super::commit::{commit_decided, CommitOutcome};
use super::{load_job, lock_task, require_name, JobLock, JobRow, Limits};
use crate::error::{Error, Result};
use crate::model::{
    AckRequest, AckResult, Checkpoint, CheckpointStatus, DeclineRequest, StateHandle,
};

fn validate_ack(request: &AckRequest, limits: &Limits) -> Result<()> {
    require_name("task_id", &request.task_id, 200)?;
    for (partition, offset) in &request.offsets {
        require_name("offsets", partition, 200)?;
        if *offset < 0 {
            return Err(Error::validation(
                format!("offsets.{partition}"),
                format!("offset {offset} of partition {partition:?} is negative"),
            ));
        }
    }
    if let Some(state) = &request.state {
        if let Some(inline) = &state.inline {
            let size = serde_json::to_vec(inline)
                .map(|bytes| bytes.len())
                .unwrap_or(usize::MAX);
            if size > limits.max_inline_state_bytes {
                return Err(Error::validation(
                    "state.inline",
                    format!(
                        "inline state is {size} bytes; the limit is {} (store larger state externally)",
                        limits.max_inline_state_bytes
                    ),
                ));
            }
        }
        if let Some(external) = &state.external {
            require_name("state.external.uri", &external.uri, 4096)?;
            require_name("state.external.checksum", &external.checksum, 512)?;
        }
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct StoredAck {
    epoch: i64,
    offsets: Json<BTreeMap<String, i64>>,
    state: Option<Json<StateHandle>>,
}

#[derive(sqlx::FromRow)]
struct CheckpointState {
    status: String,
    failure_reason: Option<String>,
    acked_count: i32,
    task_count: i32,
}

/// `POST /checkpoints/{id}/acks`. The ack that completes the set decides the
/// checkpoint and commits it, in this transaction.
pub async fn ack(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
    request: &AckRequest,
    limits: &Limits,
) -> Result<AckResult> {
    validate_ack(request, limits)?;
    let mut job = load_job(&mut *conn, job_id, JobLock::NoKeyUpdate).await?;
    job.check_epoch(request.epoch)?;
    abort_timed_out(&mut *conn, &job).await?;
    let last_acked = lock_task(&mut *conn, job_id, &request.task_id, true).await?;
    let checkpoint = lock_checkpoint(&mut *conn, job_id, checkpoint_id).await?;

    if checkpoint.status == "aborted" {
        return Err(Error::CheckpointAborted {
            checkpoint_id,
            reason: checkpoint.failure_reason.unwrap_or_default(),
        });
    }
    let previous: Option<StoredAck> = sqlx::query_as(
        "SELECT epoch, offsets, state FROM acks WHERE job_id = $1 AND checkpoint_id = $2 AND task_id = $3",
    )
    .bind(job_id)
    .bind(checkpoint_id)
    .bind(&request.task_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(previous) = previous {
        let identical = previous.epoch == request.epoch
            && previous.offsets.0 == request.offsets
            && previous.state.map(|state| state.0) == request.state;
        if !identical {
            return Err(Error::conflict(format!(
                "task {:?} already acked checkpoint {checkpoint_id} with different offsets or state",
                request.task_id
            )));
        }
        return Ok(ack_result(checkpoint_id, &checkpoint));
    }

    match checkpoint.status.as_str() {
        "pending" => {}
        status => {
            return Err(Error::conflict(format!(
                "checkpoint {checkpoint_id} is already {status}"
            )))
        }
    }
    if let Some(last) = last_acked.filter(|last| *last >= checkpoint_id) {
        return Err(Error::conflict(format!(
            "task {:?} already acked checkpoint {last}; acks must go to increasing checkpoints",
            request.task_id
        )));
    }
    check_offsets(&mut *conn, job_id, checkpoint_id, request).await?;

    sqlx::query(
        "INSERT INTO acks (job_id, checkpoint_id, task_id, epoch, offsets, state) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(job_id)
    .bind(checkpoint_id)
    .bind(&request.task_id)
    .bind(request.epoch)
    .bind(Json(&request.offsets))
    .bind(request.state.as_ref().map(Json))
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE tasks SET last_acked_id = $3 WHERE job_id = $1 AND task_id = $2")
        .bind(job_id)
        .bind(&request.task_id)
        .bind(checkpoint_id)
        .execute(&mut *conn)
        .await?;
    let (acked_count, task_count): (i32, i32) = sqlx::query_as(
        "UPDATE checkpoints SET acked_count = acked_count + 1 WHERE job_id = $1 AND checkpoint_id = $2
         RETURNING acked_count, task_count",
    )
    .bind(job_id)
    .bind(checkpoint_id)
    .fetch_one(&mut *conn)
    .await?;

    let mut status = CheckpointStatus::Pending;
    if acked_count >= task_count {
        decide(&mut *conn, &mut job, checkpoint_id).await?;
        status = match commit_decided(&mut *conn, &mut job).await? {
            CommitOutcome::Committed { .. } => CheckpointStatus::Committed,
            _ => CheckpointStatus::Completed,
        };
    }
    Ok(AckResult {
        checkpoint_id,
        status,
        acked_tasks: acked_count,
        total_tasks: task_count,
    })
}

fn ack_result(checkpoint_id: i64, checkpoint: &CheckpointState) -> AckResult {
    AckResult {
        checkpoint_id,
        status: CheckpointStatus::parse(&checkpoint.status).unwrap_or(CheckpointStatus::Aborted),
        acked_tasks: checkpoint.acked_count,
        total_tasks: checkpoint.task_count,
    }
}

async fn lock_checkpoint(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
) -> Result<CheckpointState> {
    sqlx::query_as(
        "SELECT status, failure_reason, acked_count, task_count FROM checkpoints
         WHERE job_id = $1 AND checkpoint_id = $2 FOR UPDATE",
    )
    .bind(job_id)
    .bind(checkpoint_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        Error::not_found(format!(
            "checkpoint {checkpoint_id} of job {job_id:?} does not exist"
        ))
    })
}

/// A partition may be claimed by one task per checkpoint, and its offset may
/// not go below the committed one.
async fn check_offsets(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
    request: &AckRequest,
) -> Result<()> {
    if request.offsets.is_empty() {
        return Ok(());
    }
    let partitions: Vec<&String> = request.offsets.keys().collect();
    let claimed: Option<(String, String)> = sqlx::query_as(
        "SELECT a.task_id, p FROM acks a, jsonb_object_keys(a.offsets) AS p
         WHERE a.job_id = $1 AND a.checkpoint_id = $2 AND p = ANY ($3) LIMIT 1",
    )
    .bind(job_id)
    .bind(checkpoint_id)
    .bind(&partitions)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((task, partition)) = claimed {
        return Err(Error::validation(
            format!("offsets.{partition}"),
            format!("partition {partition:?} is already claimed by task {task:?} in checkpoint {checkpoint_id}"),
        ));
    }
    let committed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT source_partition, next_offset FROM committed_offsets WHERE job_id = $1 AND source_partition = ANY ($2)",
    )
    .bind(job_id)
    .bind(&partitions)
    .fetch_all(&mut *conn)
    .await?;
    for (partition, committed) in committed {
        let offset = request.offsets[&partition];
        if offset < committed {
            return Err(Error::OffsetRegression {
                partition,
                offset,
                committed,
            });
        }
    }
    Ok(())
}

/// Makes checkpoint `checkpoint_id` decided: every task acked it. Older
/// pending checkpoints are subsumed; its offsets become the recovery point.
async fn decide(conn: &mut PgConnection, job: &mut JobRow, checkpoint_id: i64) -> Result<()> {
    sqlx::query(
        "UPDATE checkpoints c SET status = 'completed', decided_at = clock_timestamp(),
                staged_rows = COALESCE(b.rows, 0), staged_bytes = COALESCE(b.bytes, 0)
         FROM (SELECT sum(staged_rows) AS rows, sum(staged_bytes) AS bytes FROM batches
               WHERE job_id = $1 AND epoch = $3 AND checkpoint_tag = $2) b
         WHERE c.job_id = $1 AND c.checkpoint_id = $2",
    )
    .bind(&job.job_id)
    .bind(checkpoint_id)
    .bind(job.epoch)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE checkpoints SET status = 'aborted', aborted_at = now(), failure_reason = 'subsumed by ' || $2
         WHERE job_id = $1 AND status = 'pending' AND checkpoint_id < $2",
    )
    .bind(&job.job_id)
    .bind(checkpoint_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO committed_offsets (job_id, source_partition, next_offset, checkpoint_id)
         SELECT a.job_id, o.key, o.value::bigint, a.checkpoint_id
         FROM acks a, jsonb_each_text(a.offsets) AS o
         WHERE a.job_id = $1 AND a.checkpoint_id = $2
         ON CONFLICT (job_id, source_partition) DO UPDATE
         SET next_offset = EXCLUDED.next_offset, checkpoint_id = EXCLUDED.checkpoint_id",
    )
    .bind(&job.job_id)
    .bind(checkpoint_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE jobs SET last_decided_id = $2 WHERE job_id = $1")
        .bind(&job.job_id)
        .bind(checkpoint_id)
        .execute(&mut *conn)
        .await?;
    job.last_decided_id = Some(checkpoint_id);
    Ok(())
}

/// `POST /checkpoints/{id}/declines`: a task cannot take this checkpoint, so
/// it is aborted. Its staged rows stay staged for the next checkpoint.
/// Declining an aborted checkpoint again is a no-op.
pub async fn decline(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
    request: &DeclineRequest,
) -> Result<Checkpoint> {
    require_name("task_id", &request.task_id, 200)?;
    if request.reason.len() > 2000 {
        return Err(Error::validation(
            "reason",
            "reason is longer than 2000 bytes",
        ));
    }
    let job = load_job(&mut *conn, job_id, JobLock::NoKeyUpdate).await?;
    job.check_epoch(request.epoch)?;
    abort_timed_out(&mut *conn, &job).await?;
    lock_task(&mut *conn, job_id, &request.task_id, false).await?;
    let checkpoint = lock_checkpoint(&mut *conn, job_id, checkpoint_id).await?;
    match checkpoint.status.as_str() {
        "pending" => {
            let reason = if request.reason.is_empty() {
                format!("declined by {}", request.task_id)
            } else {
                format!("declined by {}: {}", request.task_id, request.reason)
            };
            sqlx::query(
                "UPDATE checkpoints SET status = 'aborted', aborted_at = now(), failure_reason = $3
                 WHERE job_id = $1 AND checkpoint_id = $2",
            )
            .bind(job_id)
            .bind(checkpoint_id)
            .bind(reason)
            .execute(&mut *conn)
            .await?;
        }
        "aborted" => {}
        status => {
            return Err(Error::conflict(format!(
                "checkpoint {checkpoint_id} is {status}; a decided checkpoint cannot be declined"
            )))
        }
    }
    get(&mut *conn, job_id, checkpoint_id).await
}
