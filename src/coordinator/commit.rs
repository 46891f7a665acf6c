//! Commit: promote what a decided checkpoint covers, exactly once.
//!
//! Called in the transaction that decides a checkpoint, and again (roll
//! forward) at start-up, by the scheduler, and by `/attempts`, for a
//! checkpoint that was decided but whose promotion failed or never ran. The
//! caller holds the job row (`FOR NO KEY UPDATE` or stronger), so two
//! replicas never promote the same checkpoint: the second one sees
//! `last_committed_id` already moved.

use sqlx::{Connection, PgConnection};

use super::JobRow;
use crate::error::Result;
use crate::sink::promote::{clear_promoted, promote, Promoted};

/// What a commit attempt did.
#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    /// Nothing was decided and unpromoted.
    Nothing,
    /// The checkpoint is committed; its rows are in the sink.
    Committed { checkpoint_id: i64, rows: u64 },
    /// Promotion failed; the checkpoint stays `completed` with the error
    /// recorded, and is retried later. Nothing of it reached the sink.
    Failed { checkpoint_id: i64, error: String },
}

/// Promotes all staged rows up to the last decided checkpoint, marks it (and
/// any decided ones it covers) committed, and prunes old ack details.
/// Updates `job` to match.
pub async fn commit_decided(conn: &mut PgConnection, job: &mut JobRow) -> Result<CommitOutcome> {
    let Some(decided) = job.last_decided_id else {
        return Ok(CommitOutcome::Nothing);
    };
    let committed = job.last_committed_id.unwrap_or(0);
    if decided <= committed {
        return Ok(CommitOutcome::Nothing);
    }

    // The batch records say which tags hold rows: a checkpoint that staged
    // nothing costs no promotion statement and no TRUNCATE.
    let tags = staged_tags(&mut *conn, &job.job_id, committed, Some(decided)).await?;
    if tags.is_empty() {
        mark_committed(
            &mut *conn,
            job,
            committed,
            decided,
            Promoted {
                rows: 0,
                millis: 0.0,
            },
        )
        .await?;
        crate::metrics::checkpoint_committed(&job.job_id, std::time::Duration::ZERO, 0);
        return Ok(CommitOutcome::Committed {
            checkpoint_id: decided,
            rows: 0,
        });
    }

    // A savepoint, so that a failed promotion rolls back only itself and the
    // decision (made earlier in this transaction) still commits.
    let mut savepoint = conn.begin().await?;
    let promoted = match promote(&mut savepoint, &job.sink_target(), committed, decided).await {
        Ok(promoted) => {
            clear_promoted(
                &mut savepoint,
                &job.job_id,
                &tags,
                committed,
                decided,
                job.next_checkpoint_id,
            )
            .await?;
            savepoint.commit().await?;
            promoted
        }
        Err(error) => {
            savepoint.rollback().await?;
            let message = match error.as_database_error() {
                Some(db) => db.message().to_owned(),
                None => error.to_string(),
            };
            tracing::warn!(job = %job.job_id, checkpoint = decided, error = %message, "promotion failed; will retry");
            crate::metrics::promotion_failed(&job.job_id);
            sqlx::query(
                "UPDATE checkpoints SET promotion_error = $3, promotion_attempts = promotion_attempts + 1
                 WHERE job_id = $1 AND checkpoint_id = $2",
            )
            .bind(&job.job_id)
            .bind(decided)
            .bind(&message)
            .execute(&mut *conn)
            .await?;
            return Ok(CommitOutcome::Failed {
                checkpoint_id: decided,
                error: message,
            });
        }
    };

    mark_committed(&mut *conn, job, committed, decided, promoted).await?;
    crate::metrics::checkpoint_committed(
        &job.job_id,
        std::time::Duration::from_secs_f64(promoted.millis / 1e3),
        promoted.rows,
    );
    Ok(CommitOutcome::Committed {
        checkpoint_id: decided,
        rows: promoted.rows,
    })
}

/// Tags that have staged rows in (after, upto], from the batch records.
pub async fn staged_tags(
    conn: &mut PgConnection,
    job_id: &str,
    after: i64,
    upto: Option<i64>,
) -> Result<Vec<i64>> {
    let tags = sqlx::query_scalar(
        "SELECT DISTINCT checkpoint_tag FROM batches
         WHERE job_id = $1 AND checkpoint_tag > $2 AND ($3::bigint IS NULL OR checkpoint_tag <= $3)
           AND staged_rows > 0",
    )
    .bind(job_id)
    .bind(after)
    .bind(upto)
    .fetch_all(&mut *conn)
    .await?;
    Ok(tags)
}

/// Marks the decided checkpoints in (committed, decided] committed, and
/// keeps ack details (and batch records) of only the `retained` most recent
/// decided checkpoints. One statement: it runs on every checkpoint's
/// critical path.
async fn mark_committed(
    conn: &mut PgConnection,
    job: &mut JobRow,
    committed: i64,
    decided: i64,
    promoted: Promoted,
) -> Result<()> {
    // `horizon` reads the statement's snapshot, where `decided` is already
    // `completed`: it counts among the retained either way.
    sqlx::query(
        "WITH marked AS (
             UPDATE checkpoints SET status = 'committed', committed_at = clock_timestamp(), promotion_error = NULL,
                    promoted_rows = CASE WHEN checkpoint_id = $3 THEN $4 ELSE 0 END,
                    promotion_ms = CASE WHEN checkpoint_id = $3 THEN $5 END,
                    promotion_attempts = promotion_attempts + 1
             WHERE job_id = $1 AND status = 'completed' AND checkpoint_id > $2 AND checkpoint_id <= $3
         ), moved AS (
             UPDATE jobs SET last_committed_id = $3 WHERE job_id = $1
         ), horizon AS (
             SELECT checkpoint_id FROM checkpoints
             WHERE job_id = $1 AND status IN ('completed', 'committed')
             ORDER BY checkpoint_id DESC OFFSET $6 - 1 LIMIT 1
         ), pruned_claims AS (
             DELETE FROM ack_partitions WHERE job_id = $1 AND checkpoint_id < (SELECT checkpoint_id FROM horizon)
         ), pruned_acks AS (
             DELETE FROM acks WHERE job_id = $1 AND checkpoint_id < (SELECT checkpoint_id FROM horizon)
         ), pruned_batches AS (
             DELETE FROM batches WHERE job_id = $1 AND checkpoint_tag < (SELECT checkpoint_id FROM horizon)
         )
         SELECT 1",
    )
    .bind(&job.job_id)
    .bind(committed)
    .bind(decided)
    .bind(promoted.rows as i64)
    .bind(promoted.millis)
    .bind(job.retained as i64)
    .execute(&mut *conn)
    .await?;
    job.last_committed_id = Some(decided);
    Ok(())
}
