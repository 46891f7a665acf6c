//! Start and restart: a new epoch fences the old one, rolls forward what was
//! decided, aborts what was not, and says where to resume.

use std::collections::BTreeMap;

use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use super::acks::decide_newest_complete;
use super::commit::{commit_decided, staged_outputs, CommitOutcome};
use super::{load_job, load_outputs, JobLock, JobRow};
use crate::error::{Error, Result};
use crate::metrics::AbortReason;
use crate::model::{Attempt, CheckpointStatus, Recovery, SinkMode, StateHandle, TaskRecovery};
use crate::sink::promote::abort_orphans;

/// How long a fencing request waits for the job row before it ends the
/// sessions of writes that hold it (a zombie's stalled upload).
const FENCE_LOCK_WAIT: &str = "1s";

/// How many times a fencing request waits and ends stalled writes before
/// it gives up with 503.
const FENCE_TRIES: usize = 10;

/// Opens a transaction that holds the job's row `FOR UPDATE` (or finds no
/// job): what every fencing request (`/attempts`, `PUT` and `DELETE` of the
/// job) starts with.
///
/// A write holds the job row (`FOR KEY SHARE`) for as long as its body
/// takes to arrive, and a zombie's upload over a bad network may never end.
/// A fence must not wait for it: after a short wait, the database sessions
/// of this job's writes that are in progress (marked by their
/// `application_name`, on any replica) are ended, which rolls their
/// batches back whole, and the lock is tried again. Only writes are ended:
/// they belong to the epoch being fenced, whose staged rows are thrown away
/// anyway.
pub async fn begin_fence(
    pool: &PgPool,
    job_id: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    for _ in 0..FENCE_TRIES {
        let mut tx = pool.begin().await?;
        // What a fence then does grows with the job (its epoch's batch
        // records, a sink's staged rows to convert): not bounded by the
        // statement timeout, or a long-lived job could never restart.
        sqlx::Executor::execute(
            &mut *tx,
            format!(
                "SET LOCAL lock_timeout = '{FENCE_LOCK_WAIT}'; SET LOCAL statement_timeout = 0"
            )
            .as_str(),
        )
        .await?;
        let locked: std::result::Result<Option<i64>, sqlx::Error> = sqlx::query_scalar!(
            "SELECT staging_id FROM jobs WHERE job_id = $1 FOR UPDATE",
            job_id
        )
        .fetch_optional(&mut *tx)
        .await;
        match locked {
            Ok(_) => {
                sqlx::query!("SET LOCAL lock_timeout = DEFAULT")
                    .execute(&mut *tx)
                    .await?;
                return Ok(tx);
            }
            Err(error)
                if error
                    .as_database_error()
                    .and_then(|db| db.code())
                    .as_deref()
                    == Some("55P03") =>
            {
                drop(tx);
                let staging_id: Option<i64> =
                    sqlx::query_scalar!("SELECT staging_id FROM jobs WHERE job_id = $1", job_id)
                        .fetch_optional(pool)
                        .await?;
                if let Some(staging_id) = staging_id {
                    // Materialized first, so that only the job's writers
                    // ever reach pg_terminate_backend.
                    let ended: Vec<i32> = sqlx::query_scalar!(
                        r#"WITH writers AS MATERIALIZED (
                             SELECT pid FROM pg_stat_activity
                             WHERE datname = current_database() AND application_name = $1
                               AND pid <> pg_backend_pid())
                         SELECT pid AS "pid!" FROM writers WHERE pg_terminate_backend(pid)"#,
                        writer_name(staging_id)
                    )
                    .fetch_all(pool)
                    .await?;
                    if !ended.is_empty() {
                        tracing::warn!(job = job_id, sessions = ?ended, "ended stalled writes of a fenced epoch");
                    }
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(Error::Unavailable)
}

/// The `application_name` a write's session carries while it stages rows
/// for the job whose staging id this is (see [`begin_fence`]).
pub fn writer_name(staging_id: i64) -> String {
    format!("{WRITER_NAME_PREFIX}{staging_id}")
}

/// [`writer_name`] without the staging id.
pub const WRITER_NAME_PREFIX: &str = "sinkgate write job_";

/// Starts a new epoch; the caller holds the job row `FOR UPDATE`.
///
/// Holding the job row `FOR UPDATE` waits for every in-flight write, ack and
/// trigger of the old epoch and fences every later one. Then, in order:
/// promote a decided-but-unpromoted checkpoint (roll forward; if that fails,
/// the attempt is refused with `promotion-blocked` and changes nothing),
/// abort the old epoch's pending checkpoints, throw away the staged rows
/// above the last decided checkpoint, forget the old epoch's batches, acks
/// in progress and offset floors, and bump the epoch.
///
/// `from`: restart from this savepoint or retained checkpoint instead (see
/// [`restore`]).
pub async fn start(conn: &mut PgConnection, job_id: &str, from: Option<i64>) -> Result<Attempt> {
    let before = load_job(&mut *conn, job_id, JobLock::Update).await?;
    // Every task acked it: the decision only had not been written yet.
    decide_newest_complete(&mut *conn, job_id).await?;
    let mut job = load_job(&mut *conn, job_id, JobLock::None).await?;
    // Above every epoch any job ever had (one sequence for all): a job
    // deleted and registered again cannot reissue a zombie's epoch. The
    // first attempt on a new server timeline (after a failover) moves the
    // sequence 2^32 ahead, past epochs the old primary issued and the new
    // one never heard of (migration 0006).
    let new_epoch: i64 = sqlx::query_scalar!(
        r#"WITH moved AS (
             UPDATE last_epoch_timeline SET timeline = sinkgate_timeline()
             WHERE timeline <> sinkgate_timeline() RETURNING 1)
           SELECT CASE WHEN EXISTS (SELECT FROM moved)
                       THEN setval('epoch_seq', nextval('epoch_seq') + 4294967296)
                       ELSE nextval('epoch_seq') END AS "epoch!""#
    )
    .fetch_one(&mut *conn)
    .await?;

    let rolled_forward = match commit_decided(&mut *conn, &mut job).await? {
        CommitOutcome::Committed { .. } | CommitOutcome::Nothing => {
            // Committed by this attempt: here, or by the decision of a
            // complete checkpoint just above.
            sqlx::query_scalar!(
                "SELECT checkpoint_id FROM checkpoints
                 WHERE job_id = $1 AND status = 'committed' AND checkpoint_id > $2
                 ORDER BY checkpoint_id",
                job_id,
                before.last_committed_id.unwrap_or(0)
            )
            .fetch_all(&mut *conn)
            .await?
        }
        CommitOutcome::Failed {
            checkpoint_id,
            error,
        } => {
            // Its rows are not in the sink: there is no recovery point to
            // hand out (resuming after it would lose them).
            return Err(Error::PromotionBlocked {
                checkpoint_id,
                error,
            });
        }
    };

    let aborted: Vec<i64> = sqlx::query_scalar!("UPDATE checkpoints SET status = 'aborted', aborted_at = now(), failure_reason = 'fenced by epoch ' || $2::bigint
         WHERE job_id = $1 AND status = 'pending' RETURNING checkpoint_id", job_id, new_epoch)
    .fetch_all(&mut *conn)
    .await?;
    crate::metrics::checkpoints_aborted(job_id, AbortReason::Fenced, aborted.len() as u64);

    // After the roll forward nothing decided is left staged, so the orphans
    // are the whole staging table.
    let decided = job.last_decided_id.unwrap_or(0);
    for (output, staged) in staged_outputs(&mut *conn, job_id, decided, None).await? {
        abort_orphans(&mut *conn, output.staging_id, &staged.tags, decided, true).await?;
    }
    // Every batch record is of the old epoch, whose writes are fenced from
    // now on: retries of them can no longer arrive.
    sqlx::query!("DELETE FROM batches WHERE job_id = $1", job_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM ack_floors WHERE job_id = $1", job_id)
        .execute(&mut *conn)
        .await?;

    sqlx::query!("UPDATE jobs SET epoch = $2, epoch_timeline = sinkgate_timeline(), epoch_first_checkpoint = next_checkpoint_id, updated_at = now()
         WHERE job_id = $1", job_id, new_epoch)
    .execute(&mut *conn)
    .await?;
    if let Some(checkpoint_id) = from {
        restore(&mut *conn, job_id, checkpoint_id).await?;
    }
    sqlx::query!(
        "UPDATE tasks SET last_acked_id = NULL WHERE job_id = $1",
        job_id
    )
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

/// Makes an older checkpoint (a savepoint, or one whose acks are still
/// retained) the recovery point: its acks' state handles, and the offsets
/// as of its decision, which replace the committed offsets (acks of the
/// new epoch start from them). Only for jobs whose every output is upsert:
/// replaying from an older point re-stages rows that are in the sink
/// already, which an upsert writes again to the same value, but an append
/// would duplicate and first write wins would not restore. In the
/// attempt's transaction: a refusal changes nothing.
async fn restore(conn: &mut PgConnection, job_id: &str, checkpoint_id: i64) -> Result<()> {
    if let Some(output) = load_outputs(&mut *conn, job_id)
        .await?
        .into_iter()
        .find(|output| output.sink_mode != SinkMode::Upsert)
    {
        return Err(Error::conflict(format!(
            "a restart from an older checkpoint replays what is already in the sink; output {:?} is {}, whose promoted rows cannot be taken back (only jobs whose every output is upsert can restart from a savepoint or an older checkpoint)",
            output.output,
            output.sink_mode.as_str()
        )));
    }
    // After the roll forward every decided checkpoint is committed.
    let snapshot =
        super::savepoints::retained(&mut *conn, job_id, checkpoint_id, "from_checkpoint").await?;
    sqlx::query!("DELETE FROM committed_offsets WHERE job_id = $1", job_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!(
        "INSERT INTO committed_offsets (job_id, source_partition, next_offset, checkpoint_id)
         SELECT $1, key, value::bigint, $2 FROM jsonb_each_text($3)",
        job_id,
        checkpoint_id,
        Json(&snapshot) as _
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "UPDATE jobs SET restored_from = $2 WHERE job_id = $1",
        job_id,
        checkpoint_id
    )
    .execute(&mut *conn)
    .await?;
    // The checkpoints after it are a branch abandoned: a restart to one of
    // them would skip what the new branch has not processed. Savepoints
    // stay (an operator's explicit choice).
    sqlx::query!(
        "UPDATE checkpoints SET offsets_snapshot = NULL
         WHERE job_id = $1 AND checkpoint_id > $2 AND offsets_snapshot IS NOT NULL
           AND checkpoint_id NOT IN (SELECT checkpoint_id FROM savepoints WHERE job_id = $1)",
        job_id,
        checkpoint_id
    )
    .execute(&mut *conn)
    .await?;
    tracing::info!(
        job = job_id,
        checkpoint = checkpoint_id,
        "restarted from an older checkpoint"
    );
    Ok(())
}

/// Refuses to hand out a recovery point whose rows are not in the sink.
async fn ensure_promoted(conn: &mut PgConnection, job: &JobRow) -> Result<()> {
    if job.last_decided_id <= job.last_committed_id {
        return Ok(());
    }
    let checkpoint_id = job.last_decided_id.unwrap_or_default();
    let error: Option<String> = sqlx::query_scalar!(
        "SELECT promotion_error FROM checkpoints WHERE job_id = $1 AND checkpoint_id = $2",
        &job.job_id,
        checkpoint_id
    )
    .fetch_optional(&mut *conn)
    .await?
    .flatten();
    Err(Error::PromotionBlocked {
        checkpoint_id,
        error: error.unwrap_or_else(|| "the promotion has not run yet".into()),
    })
}

struct RecoveryAck {
    task_id: String,
    offsets: Json<BTreeMap<String, i64>>,
    state: Option<Json<StateHandle>>,
}

/// `GET /v1/jobs/{job}/recovery`: the latest decided checkpoint (or the one
/// an attempt restarted from, until the next decision), per task and
/// merged, once its rows are in the sink (`promotion-blocked` before).
/// Read-only.
pub async fn recovery(conn: &mut PgConnection, job_id: &str) -> Result<Recovery> {
    let job = load_job(&mut *conn, job_id, JobLock::None).await?;
    ensure_promoted(&mut *conn, &job).await?;
    let Some(checkpoint_id) = job.restored_from.or(job.last_decided_id) else {
        return Ok(Recovery {
            checkpoint_id: None,
            epoch: None,
            status: None,
            tasks: BTreeMap::new(),
            offsets: BTreeMap::new(),
        });
    };
    let decided = sqlx::query!(
        r#"SELECT epoch, status AS "status: CheckpointStatus"
           FROM checkpoints WHERE job_id = $1 AND checkpoint_id = $2"#,
        job_id,
        checkpoint_id
    )
    .fetch_one(&mut *conn)
    .await?;
    let (epoch, status) = (decided.epoch, decided.status);
    let acks = sqlx::query_as!(
        RecoveryAck,
        r#"SELECT task_id, offsets AS "offsets: Json<BTreeMap<String, i64>>",
                  state AS "state: Json<StateHandle>"
           FROM acks WHERE job_id = $1 AND checkpoint_id = $2"#,
        job_id,
        checkpoint_id
    )
    .fetch_all(&mut *conn)
    .await?;
    let offsets = sqlx::query!(
        "SELECT source_partition, next_offset FROM committed_offsets WHERE job_id = $1",
        job_id
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.source_partition, row.next_offset));
    Ok(Recovery {
        checkpoint_id: Some(checkpoint_id),
        epoch: Some(epoch),
        status: Some(status),
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
