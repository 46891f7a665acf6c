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

use std::collections::BTreeMap;

use super::{load_job, JobLock, JobRow, OutputRow, SinkColumns};
use crate::error::{Error, Result};
use crate::model::{
    DeadLetter, DeadLetterList, DeadLetterQuery, OnPromotionError, PromotionResult, SinkMode,
};
use crate::sink::promote::{
    chunks_to_tuples, clear_promoted, is_row_error, promote, promote_with_dead_letters, Holds,
    Phase, Promoted,
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

/// Promotes all staged rows up to the last decided checkpoint, into every
/// output of the job, marks it (and any decided ones it covers) committed,
/// and prunes old ack details. Updates `job` to match.
///
/// Every output changes under one savepoint of the caller's transaction:
/// a reader sees all outputs of a checkpoint or none, and a failure of one
/// output's promotion leaves every output as it was.
pub async fn commit_decided(conn: &mut PgConnection, job: &mut JobRow) -> Result<CommitOutcome> {
    let Some(decided) = job.last_decided_id else {
        return Ok(CommitOutcome::Nothing);
    };
    let committed = job.last_committed_id.unwrap_or(0);
    if decided <= committed {
        return Ok(CommitOutcome::Nothing);
    }

    // The batch records say which outputs and tags hold rows: a checkpoint
    // that staged nothing costs no promotion statement and no TRUNCATE.
    let staged = staged_outputs(&mut *conn, &job.job_id, committed, Some(decided)).await?;
    if staged.is_empty() {
        let nothing = Promoted {
            rows: 0,
            dead_lettered: 0,
            millis: 0.0,
        };
        mark_committed(
            &mut *conn,
            job,
            committed,
            decided,
            nothing,
            &BTreeMap::new(),
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
    let started = std::time::Instant::now();
    let mut total = Promoted {
        rows: 0,
        dead_lettered: 0,
        millis: 0.0,
    };
    // Counted once the promotion commits (a rolled-back one recorded nothing).
    let mut dead_lettered = Vec::new();
    let mut by_output = BTreeMap::new();
    // Every output's deletes (reverse declaration order), then every
    // output's writes (declaration order): see `Phase`.
    // (A phase with nothing to do costs no round trip.)
    let deletes = staged
        .iter()
        .rev()
        .filter(|(output, _)| output.on_promotion_error != OnPromotionError::DeadLetter)
        .filter(|(output, range)| output.partial_updates || range.holds.deletes)
        .map(|(output, range)| (output, range, Phase::Deletes));
    let writes = staged.iter().map(|(output, range)| {
        let phase = if output.on_promotion_error == OnPromotionError::DeadLetter {
            Phase::Both
        } else {
            Phase::Writes
        };
        (output, range, phase)
    });
    for (output, range, phase) in deletes.chain(writes) {
        let outcome = promote_output(
            &mut savepoint,
            output,
            decided,
            (committed, decided),
            range,
            phase,
        )
        .await;
        match outcome {
            Ok(promoted) => {
                total.rows += promoted.rows;
                total.dead_lettered += promoted.dead_lettered;
                *by_output.entry(output.output.clone()).or_insert(0) += promoted.rows as i64;
                if promoted.dead_lettered > 0 {
                    dead_lettered.push((output.output.clone(), promoted.dead_lettered));
                }
            }
            Err(error) => {
                savepoint.rollback().await?;
                let mut message = match error.as_database_error() {
                    Some(db) => db.message().to_owned(),
                    None => error.to_string(),
                };
                // Named, unless it is the one output of a job with a `sink`.
                let outputs: i64 = sqlx::query_scalar!(
                    r#"SELECT count(*) AS "outputs!" FROM job_outputs WHERE job_id = $1"#,
                    &job.job_id
                )
                .fetch_one(&mut *conn)
                .await?;
                if outputs > 1 || output.output != crate::model::DEFAULT_OUTPUT {
                    message = format!("output {:?}: {message}", output.output);
                }
                return record_failure(&mut *conn, job, decided, message).await;
            }
        }
    }
    for (output, range) in &staged {
        clear_promoted(
            &mut savepoint,
            output.staging_id,
            &range.tags,
            committed,
            decided,
            job.next_checkpoint_id,
        )
        .await?;
    }
    savepoint.commit().await?;
    total.millis = started.elapsed().as_secs_f64() * 1e3;

    mark_committed(&mut *conn, job, committed, decided, total, &by_output).await?;
    crate::metrics::checkpoint_committed(
        &job.job_id,
        std::time::Duration::from_secs_f64(total.millis / 1e3),
        total.rows,
    );
    for (output, rows) in &by_output {
        crate::metrics::output_promoted(&job.job_id, output, *rows as u64);
    }
    for (output, rows) in &dead_lettered {
        crate::metrics::dead_lettered(&job.job_id, output, *rows);
    }
    Ok(CommitOutcome::Committed {
        checkpoint_id: decided,
        rows: total.rows,
        dead_lettered: total.dead_lettered,
    })
}

/// Promotes one phase of one output's staged rows of (after, upto]. Under
/// the `dead_letter` policy it runs under a savepoint of its own, and a
/// row's error starts over row by row (see [`promote_with_dead_letters`]);
/// otherwise an error fails the whole promotion.
async fn promote_output(
    conn: &mut PgConnection,
    output: &OutputRow,
    decided: i64,
    range: (i64, i64),
    staged: &StagedRange,
    phase: Phase,
) -> std::result::Result<Promoted, sqlx::Error> {
    let sink = output.sink_target();
    if phase != Phase::Both || output.on_promotion_error != OnPromotionError::DeadLetter {
        // A failure rolls back the whole promotion: no savepoint of its own.
        return promote(conn, &sink, range, staged.holds, phase).await;
    }
    let mut holds = staged.holds;
    if holds.chunks {
        // Staged as chunks before the policy became `dead_letter`: the
        // row-by-row retry needs tuples.
        chunks_to_tuples(&mut *conn, sink.staging_id, Some(range)).await?;
        holds.chunks = false;
        holds.tuples = true;
    }
    let mut attempt = conn.begin().await?;
    match promote(&mut attempt, &sink, range, holds, phase).await {
        Ok(promoted) => {
            attempt.commit().await?;
            Ok(promoted)
        }
        Err(error) if is_row_error(&error) => {
            // The failed statement spoiled the savepoint; start over in a new one.
            attempt.rollback().await?;
            let mut attempt = conn.begin().await?;
            let promoted = promote_with_dead_letters(
                &mut attempt,
                &sink,
                decided,
                range,
                staged.holds.deletes,
            )
            .await?;
            attempt.commit().await?;
            Ok(promoted)
        }
        Err(error) => Err(error),
    }
}

/// Records a failed promotion: the checkpoint stays `completed`, with the
/// error, and is retried later.
async fn record_failure(
    conn: &mut PgConnection,
    job: &JobRow,
    decided: i64,
    message: String,
) -> Result<CommitOutcome> {
    tracing::warn!(job = %job.job_id, checkpoint = decided, error = %message, "promotion failed; will retry");
    crate::metrics::promotion_failed(&job.job_id);
    sqlx::query!(
        "UPDATE checkpoints SET promotion_error = $3, promotion_attempts = promotion_attempts + 1
         WHERE job_id = $1 AND checkpoint_id = $2",
        &job.job_id,
        decided,
        &message
    )
    .execute(&mut *conn)
    .await?;
    Ok(CommitOutcome::Failed {
        checkpoint_id: decided,
        error: message,
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
    output: String,
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
        r#"SELECT dead_letter_id, checkpoint_id, output, task_id, row AS "row: Json<serde_json::Value>",
                  error, sqlstate, created_at
           FROM dead_letters WHERE job_id = $1 AND dead_letter_id > $2
             AND ($3::bigint IS NULL OR checkpoint_id = $3)
             AND ($5::text IS NULL OR output = $5)
           ORDER BY dead_letter_id LIMIT $4"#,
        job_id,
        query.after.unwrap_or(0),
        query.checkpoint_id,
        limit,
        query.output
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(DeadLetterList {
        dead_letters: rows
            .into_iter()
            .map(|row| DeadLetter {
                dead_letter_id: row.dead_letter_id,
                checkpoint_id: row.checkpoint_id,
                output: row.output,
                task_id: row.task_id,
                row: row.row.0,
                error: row.error,
                sqlstate: row.sqlstate,
                created_at: row.created_at,
            })
            .collect(),
    })
}

/// What one output has staged in a range of tags.
#[derive(Debug, Clone, Default)]
pub struct StagedRange {
    /// The tags that hold rows.
    pub tags: Vec<i64>,
    /// Deletes by key, tuples, chunks: what the rows are.
    pub holds: Holds,
}

/// The outputs that have rows staged in (after, upto], in declaration
/// order, each with what it has staged (from the batch records): one round
/// trip, on every commit's path.
pub async fn staged_outputs(
    conn: &mut PgConnection,
    job_id: &str,
    after: i64,
    upto: Option<i64>,
) -> Result<Vec<(OutputRow, StagedRange)>> {
    let rows = sqlx::query!(
        r#"SELECT o.job_id, o.output, o.ordinal, o.staging_id, o.sink_schema, o.sink_table,
                  o.sink_mode AS "sink_mode: SinkMode", o.sink_key,
                  o.sink_columns AS "sink_columns: SinkColumns",
                  o.on_promotion_error AS "on_promotion_error: OnPromotionError", o.partial_updates,
                  b.tags AS "tags!", b.deletes AS "deletes!", b.tuples AS "tuples!", b.chunks AS "chunks!",
                  b.chunk_bytes AS "chunk_bytes!"
           FROM job_outputs o
           JOIN (SELECT output, array_agg(DISTINCT checkpoint_tag) AS tags, bool_or(staged_deletes > 0) AS deletes,
                        bool_or(staged_chunks = 0) AS tuples, bool_or(staged_chunks > 0) AS chunks,
                        coalesce(sum(staged_bytes) FILTER (WHERE staged_chunks > 0), 0)::bigint AS chunk_bytes
                 FROM batches
                 WHERE job_id = $1 AND checkpoint_tag > $2 AND ($3::bigint IS NULL OR checkpoint_tag <= $3)
                   AND staged_rows > 0
                 GROUP BY output) b ON b.output = o.output
           WHERE o.job_id = $1
           ORDER BY o.ordinal"#,
        job_id,
        after,
        upto
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                OutputRow {
                    job_id: row.job_id,
                    output: row.output,
                    ordinal: row.ordinal,
                    staging_id: row.staging_id,
                    sink_schema: row.sink_schema,
                    sink_table: row.sink_table,
                    sink_mode: row.sink_mode,
                    sink_key: row.sink_key,
                    sink_columns: row.sink_columns,
                    on_promotion_error: row.on_promotion_error,
                    partial_updates: row.partial_updates,
                },
                StagedRange {
                    tags: row.tags,
                    holds: Holds {
                        deletes: row.deletes,
                        tuples: row.tuples,
                        chunks: row.chunks,
                        chunk_bytes: row.chunk_bytes,
                    },
                },
            )
        })
        .collect())
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
    by_output: &BTreeMap<String, i64>,
) -> Result<()> {
    // `horizon` reads the statement's snapshot, where `decided` is already
    // `completed`: it counts among the retained either way.
    sqlx::query!("WITH marked AS (
             UPDATE checkpoints SET status = 'committed', committed_at = clock_timestamp(), promotion_error = NULL,
                    promoted_rows = CASE WHEN checkpoint_id = $3 THEN $4::bigint ELSE 0 END,
                    promotion_ms = CASE WHEN checkpoint_id = $3 THEN $5::float8 END,
                    promoted_outputs = CASE WHEN checkpoint_id = $3 THEN $7::jsonb END,
                    promotion_attempts = promotion_attempts + 1
             WHERE job_id = $1 AND status = 'completed' AND checkpoint_id > $2 AND checkpoint_id <= $3
         ), moved AS (
             UPDATE jobs SET last_committed_id = $3 WHERE job_id = $1
         ), horizon AS (
             SELECT checkpoint_id FROM checkpoints
             WHERE job_id = $1 AND status IN ('completed', 'committed')
             ORDER BY checkpoint_id DESC OFFSET $6 - 1 LIMIT 1
         ), kept AS (
             -- Savepoints keep their acks (offsets, state and its
             -- references) and their offsets snapshot.
             SELECT checkpoint_id FROM savepoints WHERE job_id = $1
         ), pruned_claims AS (
             DELETE FROM ack_partitions WHERE job_id = $1 AND checkpoint_id < (SELECT checkpoint_id FROM horizon)
         ), pruned_acks AS (
             DELETE FROM acks WHERE job_id = $1 AND checkpoint_id < (SELECT checkpoint_id FROM horizon)
               AND checkpoint_id NOT IN (SELECT checkpoint_id FROM kept)
         ), pruned_snapshots AS (
             -- Not a row `marked` updates (one statement must not update
             -- a row twice): those are above the last committed one.
             UPDATE checkpoints SET offsets_snapshot = NULL
             WHERE job_id = $1 AND checkpoint_id < (SELECT checkpoint_id FROM horizon) AND checkpoint_id <= $2
               AND offsets_snapshot IS NOT NULL AND checkpoint_id NOT IN (SELECT checkpoint_id FROM kept)
         )
         SELECT 1 AS done", &job.job_id, committed, decided, promoted.rows as i64, promoted.millis, job.retained as i64,
         Json(by_output) as _)
    .fetch_one(&mut *conn)
    .await?;
    job.last_committed_id = Some(decided);
    Ok(())
}
