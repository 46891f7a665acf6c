//! Commit: promote what a decided checkpoint covers, exactly once.
//!
//! Called in the transaction that decides a checkpoint, and again (roll
//! forward) at start-up, by the scheduler, and by `/attempts`, for a
//! checkpoint that was decided but whose promotion failed or never ran. The
//! caller holds the job row (`FOR NO KEY UPDATE` or stronger), so two
//! replicas never promote the same checkpoint: the second one sees
//! `last_committed_id` already moved.

use sqlx::types::Json;
use sqlx::{Connection, PgConnection};

use super::{load_job, JobLock, JobRow};
use crate::error::{Error, Result};
use crate::model::{
    DeadLetter, DeadLetterList, DeadLetterQuery, OnPromotionError, PromotionResult,
};
use crate::sink::promote::{
    clear_promoted, is_row_error, promote, promote_with_dead_letters, Promoted,
};

/// What a commit attempt did.
#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    /// Nothing was decided and unpromoted.
    Nothing,
    /// The checkpoint is committed; its rows are in the sink (but for
    /// `dead_lettered` ones, under the `dead_letter` policy).
    Committed {
        checkpoint_id: i64,
        rows: u64,
        dead_lettered: u64,
    },
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
                dead_lettered: 0,
                millis: 0.0,
            },
        )
        .await?;
        crate::metrics::checkpoint_committed(&job.job_id, std::time::Duration::ZERO, 0);
        return Ok(CommitOutcome::Committed {
            checkpoint_id: decided,
            rows: 0,
            dead_lettered: 0,
        });
    }

    // A savepoint, so that a failed promotion rolls back only itself and the
    // decision (made earlier in this transaction) still commits.
    let mut savepoint = conn.begin().await?;
    promotion_settings(&mut savepoint).await?;
    let mut outcome = promote(&mut savepoint, &job.sink_target(), committed, decided).await;
    if let Err(error) = &outcome {
        if job.on_promotion_error == OnPromotionError::DeadLetter && is_row_error(error) {
            // The failed statement spoiled the savepoint; start over in a new one.
            savepoint.rollback().await?;
            savepoint = conn.begin().await?;
            promotion_settings(&mut savepoint).await?;
            outcome = promote_with_dead_letters(
                &mut savepoint,
                &job.sink_target(),
                decided,
                committed,
                decided,
            )
            .await;
        }
    }
    let promoted = match outcome {
        Ok(promoted) => {
            clear_promoted(
                &mut savepoint,
                job.staging_id,
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
            sqlx::query!("UPDATE checkpoints SET promotion_error = $3, promotion_attempts = promotion_attempts + 1
                 WHERE job_id = $1 AND checkpoint_id = $2", &job.job_id, decided, &message)
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
        dead_lettered: promoted.dead_lettered,
    })
}

impl CommitOutcome {
    /// The answer to an operator's promotion: what was promoted (nothing,
    /// when nothing was decided), or `promotion-blocked`.
    pub fn answer(self, job: &JobRow) -> Result<PromotionResult> {
        match self {
            CommitOutcome::Nothing => Ok(PromotionResult {
                checkpoint_id: job.last_committed_id,
                promoted_rows: 0,
                dead_lettered_rows: 0,
            }),
            CommitOutcome::Committed {
                checkpoint_id,
                rows,
                dead_lettered,
            } => Ok(PromotionResult {
                checkpoint_id: Some(checkpoint_id),
                promoted_rows: rows as i64,
                dead_lettered_rows: dead_lettered as i64,
            }),
            CommitOutcome::Failed {
                checkpoint_id,
                error,
            } => Err(Error::PromotionBlocked {
                checkpoint_id,
                error,
            }),
        }
    }
}

/// Settings of a promotion's savepoint. Deferred constraints of the sink
/// are checked by the promotion itself, under its savepoint, not at the
/// decision's COMMIT (where a failure would take the decision down with
/// it). A promotion lasts as long as its checkpoint's data: the session's
/// statement timeout does not apply to it (its lock waits stay bounded, so
/// a sink locked by someone else fails the promotion, which is retried).
async fn promotion_settings(savepoint: &mut PgConnection) -> Result<()> {
    // Two statements in one round trip (the simple query protocol).
    sqlx::Executor::execute(
        savepoint,
        "SET CONSTRAINTS ALL IMMEDIATE; SET LOCAL statement_timeout = 0",
    )
    .await?;
    Ok(())
}

struct DeadLetterRow {
    dead_letter_id: i64,
    checkpoint_id: i64,
    task_id: String,
    row: Json<serde_json::Value>,
    error: String,
    sqlstate: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /v1/jobs/{job}/dead-letters`: rows a promotion kept out of the
/// sink, oldest first, paged by id.
pub async fn dead_letters(
    conn: &mut PgConnection,
    job_id: &str,
    query: &DeadLetterQuery,
) -> Result<DeadLetterList> {
    let limit = super::page_limit(query.limit)?;
    load_job(&mut *conn, job_id, JobLock::None).await?;
    let rows = sqlx::query_as!(
        DeadLetterRow,
        r#"SELECT dead_letter_id, checkpoint_id, task_id, row AS "row: Json<serde_json::Value>",
                  error, sqlstate, created_at
           FROM dead_letters WHERE job_id = $1 AND dead_letter_id > $2
             AND ($3::bigint IS NULL OR checkpoint_id = $3)
           ORDER BY dead_letter_id LIMIT $4"#,
        job_id,
        query.after.unwrap_or(0),
        query.checkpoint_id,
        limit
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(DeadLetterList {
        dead_letters: rows
            .into_iter()
            .map(|row| DeadLetter {
                dead_letter_id: row.dead_letter_id,
                checkpoint_id: row.checkpoint_id,
                task_id: row.task_id,
                row: row.row.0,
                error: row.error,
                sqlstate: row.sqlstate,
                created_at: row.created_at,
            })
            .collect(),
    })
}

/// Tags that have staged rows in (after, upto], from the batch records.
pub async fn staged_tags(
    conn: &mut PgConnection,
    job_id: &str,
    after: i64,
    upto: Option<i64>,
) -> Result<Vec<i64>> {
    let tags = sqlx::query_scalar!(
        "SELECT DISTINCT checkpoint_tag FROM batches
         WHERE job_id = $1 AND checkpoint_tag > $2 AND ($3::bigint IS NULL OR checkpoint_tag <= $3)
           AND staged_rows > 0",
        job_id,
        after,
        upto
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(tags)
}

/// Marks the decided checkpoints in (committed, decided] committed, and
/// keeps ack details of only the `retained` most recent decided
/// checkpoints. Batch records are kept for their whole epoch (they make
/// retries idempotent); a new attempt removes the old epoch's. One statement: it runs on every checkpoint's
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
    sqlx::query!("WITH marked AS (
             UPDATE checkpoints SET status = 'committed', committed_at = clock_timestamp(), promotion_error = NULL,
                    promoted_rows = CASE WHEN checkpoint_id = $3 THEN $4::bigint ELSE 0 END,
                    promotion_ms = CASE WHEN checkpoint_id = $3 THEN $5::float8 END,
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
         )
         SELECT 1 AS done", &job.job_id, committed, decided, promoted.rows as i64, promoted.millis, job.retained as i64)
    .fetch_one(&mut *conn)
    .await?;
    job.last_committed_id = Some(decided);
    Ok(())
}
