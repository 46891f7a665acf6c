//! Checkpoint lifecycle: trigger, timeout, history, details, barrier discovery.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgConnection;

use super::{load_job, JobLock, JobRow};
use crate::error::{Error, Result};
use crate::metrics::AbortReason;
use crate::model::{
    Checkpoint, CheckpointDetails, CheckpointListQuery, CheckpointStatus, PendingCheckpoint,
    StateHandle, TaskAck, TriggerKind,
};

/// The channel on which triggers are announced (payload: the job id), so that
/// long-polls on every replica wake at once.
pub const NOTIFY_CHANNEL: &str = "sinkgate_checkpoints";

/// `checkpoints.promoted_outputs`: rows changed, by output name.
type RowsByOutput = sqlx::types::Json<std::collections::BTreeMap<String, i64>>;

struct CheckpointRow {
    checkpoint_id: i64,
    epoch: i64,
    status: CheckpointStatus,
    trigger_kind: TriggerKind,
    task_count: i32,
    acked_count: i32,
    triggered_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
    committed_at: Option<DateTime<Utc>>,
    aborted_at: Option<DateTime<Utc>>,
    failure_reason: Option<String>,
    promoted_rows: Option<i64>,
    promoted_outputs: Option<RowsByOutput>,
    promotion_ms: Option<f64>,
    promotion_error: Option<String>,
    staged_rows: i64,
    staged_bytes: i64,
}

/// Checkpoint columns plus staged volume, as a [`CheckpointRow`] (checked
/// against the schema at compile time): recorded at decision, summed from
/// the batch records while pending. A checkpoint carries the batches tagged
/// since the decided one before it (those of aborted checkpoints between
/// too); an aborted one counts only its own tag. `$tail` follows the
/// `FROM` (conditions, order); `$arg`s are `$1`, `$2`, ….
macro_rules! select_checkpoint {
    ($tail:literal $(, $arg:expr)*) => {
        sqlx::query_as!(
            CheckpointRow,
            r#"
    SELECT c.checkpoint_id, c.epoch, c.status AS "status: CheckpointStatus",
           c.trigger_kind AS "trigger_kind: TriggerKind", c.task_count,
           CASE WHEN c.status IN ('completed', 'committed') THEN c.task_count
                ELSE (SELECT count(*) FROM acks a WHERE a.job_id = c.job_id AND a.checkpoint_id = c.checkpoint_id)::int
           END AS "acked_count!",
           c.triggered_at, c.decided_at, c.committed_at, c.aborted_at, c.failure_reason,
           c.promoted_rows, c.promoted_outputs AS "promoted_outputs: RowsByOutput",
           c.promotion_ms, c.promotion_error,
           COALESCE(c.staged_rows, b.rows, 0)::bigint AS "staged_rows!",
           COALESCE(c.staged_bytes, b.bytes, 0)::bigint AS "staged_bytes!"
    FROM checkpoints c
    LEFT JOIN LATERAL (
        SELECT sum(staged_rows) AS rows, sum(staged_bytes) AS bytes FROM batches b
        WHERE b.job_id = c.job_id AND b.epoch = c.epoch AND b.checkpoint_tag <= c.checkpoint_id
          AND b.checkpoint_tag > CASE WHEN c.status = 'aborted' THEN c.checkpoint_id - 1 ELSE coalesce(c.carried_after, (
              SELECT coalesce(max(p.checkpoint_id), 0) FROM checkpoints p
              WHERE p.job_id = c.job_id AND p.checkpoint_id < c.checkpoint_id
                AND p.status IN ('completed', 'committed'))) END
    ) b ON true"# + $tail
            $(, $arg)*
        )
    };
}

fn millis_between(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Option<f64> {
    to.map(|to| (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3)
}

impl From<CheckpointRow> for Checkpoint {
    fn from(row: CheckpointRow) -> Self {
        Checkpoint {
            checkpoint_id: row.checkpoint_id,
            epoch: row.epoch,
            status: row.status,
            trigger: row.trigger_kind,
            acked_tasks: row.acked_count,
            total_tasks: row.task_count,
            decide_ms: millis_between(row.triggered_at, row.decided_at),
            commit_ms: row
                .decided_at
                .and_then(|decided| millis_between(decided, row.committed_at)),
            triggered_at: row.triggered_at,
            decided_at: row.decided_at,
            committed_at: row.committed_at,
            aborted_at: row.aborted_at,
            failure_reason: row.failure_reason,
            staged_rows: row.staged_rows,
            staged_bytes: row.staged_bytes,
            promoted_rows: row.promoted_rows,
            promoted_outputs: row.promoted_outputs.map(|outputs| outputs.0),
            promotion_ms: row.promotion_ms,
            promotion_error: row.promotion_error,
        }
    }
}

/// One checkpoint, or `not-found`.
pub async fn get(conn: &mut PgConnection, job_id: &str, checkpoint_id: i64) -> Result<Checkpoint> {
    select_checkpoint!(
        " WHERE c.job_id = $1 AND c.checkpoint_id = $2",
        job_id,
        checkpoint_id
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(Checkpoint::from)
    .ok_or_else(|| {
        Error::not_found(format!(
            "checkpoint {checkpoint_id} of job {job_id:?} does not exist"
        ))
    })
}

/// History, newest first.
pub async fn list(
    conn: &mut PgConnection,
    job_id: &str,
    query: &CheckpointListQuery,
) -> Result<Vec<Checkpoint>> {
    let limit = super::page_limit(query.limit)?;
    load_job(&mut *conn, job_id, JobLock::None).await?;
    let rows: Vec<CheckpointRow> = select_checkpoint!(
        " WHERE c.job_id = $1 AND ($2::bigint IS NULL OR c.checkpoint_id < $2)
            AND ($3::text IS NULL OR c.status = $3)
          ORDER BY c.checkpoint_id DESC LIMIT $4",
        job_id,
        query.before,
        query.status.map(CheckpointStatus::as_str),
        limit
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(Checkpoint::from).collect())
}

struct TaskAckRow {
    task_id: String,
    acked_at: Option<DateTime<Utc>>,
    offsets: Option<Json<BTreeMap<String, i64>>>,
    state: Option<Json<StateHandle>>,
    staged_rows: i64,
    staged_bytes: i64,
}

/// The tag above which the batches a checkpoint carries start: recorded at
/// its decision; else the decided checkpoint before it (an aborted one
/// carries only its own tag).
async fn carried_after(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint: &Checkpoint,
) -> Result<i64> {
    if checkpoint.status == CheckpointStatus::Aborted {
        return Ok(checkpoint.checkpoint_id - 1);
    }
    Ok(sqlx::query_scalar!(
        r#"SELECT coalesce(
             (SELECT carried_after FROM checkpoints WHERE job_id = $1 AND checkpoint_id = $2),
             (SELECT max(checkpoint_id) FROM checkpoints
              WHERE job_id = $1 AND checkpoint_id < $2 AND status IN ('completed', 'committed')),
             0) AS "carried_after!""#,
        job_id,
        checkpoint.checkpoint_id
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// A checkpoint with every task's ack or its absence.
pub async fn details(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
) -> Result<CheckpointDetails> {
    let checkpoint = get(&mut *conn, job_id, checkpoint_id).await?;
    let carried_after = carried_after(&mut *conn, job_id, &checkpoint).await?;
    let rows = sqlx::query_as!(
        TaskAckRow,
        r#"SELECT t.task_id, a.acked_at AS "acked_at?",
                a.offsets AS "offsets?: Json<BTreeMap<String, i64>>",
                a.state AS "state?: Json<StateHandle>",
                COALESCE(b.rows, 0)::bigint AS "staged_rows!",
                COALESCE(b.bytes, 0)::bigint AS "staged_bytes!"
         FROM tasks t
         LEFT JOIN acks a ON a.job_id = t.job_id AND a.checkpoint_id = $2 AND a.task_id = t.task_id
         LEFT JOIN LATERAL (
             SELECT sum(staged_rows) AS rows, sum(staged_bytes) AS bytes FROM batches b
             WHERE b.job_id = t.job_id AND b.task_id = t.task_id AND b.epoch = $3
               AND b.checkpoint_tag <= $2 AND b.checkpoint_tag > $4
         ) b ON true
         WHERE t.job_id = $1
         ORDER BY t.ordinal"#,
        job_id,
        checkpoint_id,
        checkpoint.epoch,
        carried_after
    )
    .fetch_all(&mut *conn)
    .await?;
    let acked_all = matches!(
        checkpoint.status,
        CheckpointStatus::Completed | CheckpointStatus::Committed
    );
    let acks = rows
        .into_iter()
        .map(|row| TaskAck {
            // Details of old checkpoints are pruned; a decided one was acked by all.
            acked: row.acked_at.is_some() || acked_all,
            task_id: row.task_id,
            acked_at: row.acked_at,
            offsets: row.offsets.map(|offsets| offsets.0),
            state: row.state.map(|state| state.0),
            staged_rows: row.staged_rows,
            staged_bytes: row.staged_bytes,
        })
        .collect();
    Ok(CheckpointDetails { checkpoint, acks })
}

/// Aborts pending checkpoints older than the job's timeout whose acks are
/// not all in. Returns their ids.
///
/// A checkpoint every task acked before its deadline is never aborted, even
/// if its decision comes late (a crash between an ack and its decision):
/// its acks were answered, and a retry of any of them must not learn
/// otherwise. The rows are locked first and the acks counted in a second
/// statement, whose snapshot sees every ack that held a row's share lock.
pub async fn abort_timed_out(conn: &mut PgConnection, job: &JobRow) -> Result<Vec<i64>> {
    let expired: Vec<i64> = sqlx::query_scalar!(
        "SELECT checkpoint_id FROM checkpoints
         WHERE job_id = $1 AND status = 'pending'
           AND triggered_at + make_interval(secs => $2::double precision / 1000) < now()
         ORDER BY checkpoint_id FOR UPDATE",
        &job.job_id,
        job.timeout_ms as f64
    )
    .fetch_all(&mut *conn)
    .await?;
    if expired.is_empty() {
        return Ok(expired);
    }
    let ids = sqlx::query_scalar!("UPDATE checkpoints c SET status = 'aborted', aborted_at = now(), failure_reason = 'timeout'
         WHERE c.job_id = $1 AND c.checkpoint_id = ANY ($2) AND c.status = 'pending'
           AND (SELECT count(*) FROM acks a WHERE a.job_id = c.job_id AND a.checkpoint_id = c.checkpoint_id) < c.task_count
         RETURNING checkpoint_id", &job.job_id, &expired)
    .fetch_all(&mut *conn)
    .await?;
    crate::metrics::checkpoints_aborted(&job.job_id, AbortReason::Timeout, ids.len() as u64);
    Ok(ids)
}

/// Triggers the next checkpoint. The caller holds the job row
/// `FOR NO KEY UPDATE` and has checked the epoch.
///
/// Refused with 409 when `max_concurrent` checkpoints are pending, and with
/// 429 (`too-early`, with the time to wait) inside `min_pause_ms` after the
/// last decision.
pub async fn trigger(
    conn: &mut PgConnection,
    job: &mut JobRow,
    kind: TriggerKind,
) -> Result<Checkpoint> {
    if job.epoch == 0 {
        return Err(Error::conflict(
            "the job has no attempt yet: POST /attempts first",
        ));
    }
    abort_timed_out(&mut *conn, job).await?;
    let pending: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM checkpoints WHERE job_id = $1 AND status = 'pending'"#,
        &job.job_id
    )
    .fetch_one(&mut *conn)
    .await?;
    if pending >= job.max_concurrent as i64 {
        return Err(Error::conflict(format!(
            "{pending} checkpoint(s) pending; max_concurrent is {}",
            job.max_concurrent
        )));
    }
    if job.min_pause_ms > 0 {
        let wait_ms: Option<f64> = sqlx::query_scalar!("SELECT (extract(epoch FROM (max(decided_at) + make_interval(secs => $2::double precision / 1000) - now())) * 1000)::float8
             FROM checkpoints WHERE job_id = $1 AND decided_at IS NOT NULL", &job.job_id, job.min_pause_ms as f64)
        .fetch_one(&mut *conn)
        .await?;
        if let Some(wait_ms) = wait_ms.filter(|wait| *wait > 0.0) {
            return Err(Error::TooEarly {
                detail: format!(
                    "min_pause_ms is {}: the next checkpoint may start in {:.0} ms",
                    job.min_pause_ms, wait_ms
                ),
                retry_after_ms: wait_ms.ceil() as u64,
            });
        }
    }
    let checkpoint_id = job.next_checkpoint_id;
    sqlx::query!(
        "INSERT INTO checkpoints (job_id, checkpoint_id, epoch, status, trigger_kind, task_count)
         SELECT $1, $2, $3, 'pending', $4, count(*) FROM tasks WHERE job_id = $1",
        &job.job_id,
        checkpoint_id,
        job.epoch,
        kind.as_str()
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "UPDATE jobs SET next_checkpoint_id = $2 WHERE job_id = $1",
        &job.job_id,
        checkpoint_id + 1
    )
    .execute(&mut *conn)
    .await?;
    job.next_checkpoint_id = checkpoint_id + 1;
    crate::metrics::checkpoint_triggered(&job.job_id, kind);
    sqlx::query!("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, &job.job_id)
        .execute(&mut *conn)
        .await?;
    get(&mut *conn, &job.job_id, checkpoint_id).await
}

/// The oldest pending, unexpired checkpoint with an id above `after`.
pub async fn first_pending(
    conn: &mut PgConnection,
    job_id: &str,
    after: i64,
) -> Result<Option<PendingCheckpoint>> {
    Ok(sqlx::query_as!(
        PendingCheckpoint,
        "SELECT c.checkpoint_id, c.epoch, c.triggered_at FROM checkpoints c JOIN jobs j USING (job_id)
         WHERE c.job_id = $1 AND c.status = 'pending' AND c.checkpoint_id > $2
           AND c.triggered_at + make_interval(secs => j.timeout_ms::double precision / 1000) >= now()
         ORDER BY c.checkpoint_id LIMIT 1",
        job_id,
        after
    )
    .fetch_optional(&mut *conn)
    .await?)
}
