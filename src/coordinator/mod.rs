//! The checkpoint protocol: epochs, writes, checkpoints, acks, decisions,
//! recovery. `docs/DESIGN.md` explains it, with its invariants and the tests
//! that guard each.
//!
//! The functions below, one per protocol operation, are the whole protocol
//! as the service offers it: each takes the pool and owns its transactions
//! and checks. The submodules hold their steps, plain async functions over a
//! PostgreSQL connection that the caller has opened a transaction on; none
//! of them sees HTTP. All state lives in the database and every state change
//! happens under row locks on the job's row, so any number of service
//! replicas can share one database. The lock discipline, always job row
//! first:
//!
//! | operation | job row | task row |
//! |---|---|---|
//! | write (stage a batch) | `FOR KEY SHARE` | `FOR SHARE` |
//! | ack (record) | `FOR KEY SHARE` | `FOR UPDATE` |
//! | decline | `FOR NO KEY UPDATE` | `FOR SHARE` |
//! | decision, abort, trigger, scheduler | `FOR NO KEY UPDATE` | – |
//! | attempt, job update, delete | `FOR UPDATE` | – |
//!
//! An ack also share-locks its checkpoint's row and upserts the floors of
//! its partitions (`ack_floors`, row locks in partition order); a decision or
//! a timeout locks the checkpoint row `FOR UPDATE` and only then counts the
//! acks, in a statement of its own, so it sees every ack that held the row.
//!
//! `FOR KEY SHARE` does not conflict with `FOR NO KEY UPDATE`, so writes run
//! concurrently with acks of other tasks; it does conflict with `FOR UPDATE`,
//! so a write is either wholly before an epoch bump (and then aborted with its
//! epoch) or sees the new epoch and is fenced. A task's write (`FOR SHARE`)
//! and its ack (`FOR UPDATE`) serialize on the task row, which makes the
//! checkpoint tag a write computes exact.

/// A job's row as a [`JobRow`]: every column named and typed, checked
/// against the schema at compile time (a migration that changes `jobs`
/// fails the build, not a request). `$tail` follows `FROM jobs` (the
/// conditions, a lock); `$arg`s are `$1`, `$2`, ….
macro_rules! select_job {
    ($tail:literal $(, $arg:expr)*) => {
        sqlx::query_as!(
            crate::coordinator::JobRow,
            r#"SELECT job_id, staging_id, interval_ms, timeout_ms, min_pause_ms, max_concurrent, retained, epoch,
                      epoch_first_checkpoint, next_checkpoint_id, last_decided_id,
                      last_committed_id, restored_from, created_at, updated_at,
                      epoch_timeline, sinkgate_timeline() AS "server_timeline!"
               FROM jobs"# + $tail
            $(, $arg)*
        )
    };
}

pub mod acks;
pub mod attempts;
pub mod checkpoints;
pub mod commit;
pub mod jobs;
pub mod notify;
pub mod savepoints;
pub mod scheduler;
pub mod state;
pub mod tokens;
pub mod writes;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::model::{
    AbortRequest, AckRequest, AckResult, Attempt, AttemptRequest, Checkpoint, CheckpointDetails,
    CheckpointListQuery, CheckpointStatus, DeadLetterList, DeadLetterQuery, DeclineRequest,
    IssuedToken, Job, JobSpec, OnPromotionError, Output, PendingCheckpoint, PromoteMode,
    PromotionResult, Recovery, Savepoint, SavepointRequest, SinkMode, SinkSpec, StoredChunk,
    TokenInfo, TriggerKind, WriteResult,
};
use crate::sink::promote::SinkTarget;
use crate::sink::schema::ColumnDef;
use crate::sink::staging::{Rows, StagingTarget};

// The protocol's operations. Each owns its transactions and every protocol
// check (epoch, task, lock order); the HTTP handlers, the scheduler and the
// benchmark call these and nothing below them. The submodules hold the steps,
// as functions over a connection the caller has begun a transaction on.

/// Registers a job, or updates it (`PUT /v1/jobs/{job}`). A change of the
/// task set fences the epoch as a new attempt does. Answers whether it was
/// created.
pub async fn put_job(pool: &PgPool, job_id: &str, spec: &JobSpec) -> Result<(Job, bool)> {
    jobs::validate_job_id(job_id)?;
    let mut tx = attempts::begin_fence(pool, job_id).await?;
    let answer = jobs::put(&mut tx, job_id, spec).await?;
    tx.commit().await?;
    Ok(answer)
}

/// One job, with its epoch and checkpoint position.
pub async fn job(pool: &PgPool, job_id: &str) -> Result<Job> {
    jobs::get(&mut *pool.acquire().await?, job_id).await
}

/// Every job, by id.
pub async fn jobs(pool: &PgPool) -> Result<Vec<Job>> {
    jobs::list(&mut *pool.acquire().await?).await
}

/// Removes a job, its metadata and its staged rows; the sink is not touched.
pub async fn delete_job(pool: &PgPool, job_id: &str) -> Result<()> {
    let mut tx = attempts::begin_fence(pool, job_id).await?;
    jobs::delete(&mut tx, job_id).await?;
    tx.commit().await?;
    Ok(())
}

/// Starts a new attempt: fences the old epoch (its zombies get `fenced`),
/// rolls decided checkpoints forward, aborts the rest, and answers the new
/// epoch with the recovery point.
pub async fn attempt(pool: &PgPool, job_id: &str, request: &AttemptRequest) -> Result<Attempt> {
    let mut tx = attempts::begin_fence(pool, job_id).await?;
    let attempt = attempts::start(&mut tx, job_id, request.from_checkpoint).await?;
    tx.commit().await?;
    Ok(attempt)
}

/// The offsets and state to resume from, in one read-only snapshot so that
/// the checkpoint, its acks and the merged offsets belong to one decision;
/// `promotion-blocked` while its rows are not in the sink.
pub async fn recovery(pool: &PgPool, job_id: &str) -> Result<Recovery> {
    let mut tx = snapshot(pool).await?;
    let recovery = attempts::recovery(&mut tx, job_id).await?;
    tx.commit().await?;
    Ok(recovery)
}

/// A read-only transaction whose statements all see one snapshot.
async fn snapshot(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Stages a batch (the pre-commit), or answers as before for a batch id
/// this task staged in this epoch. `token_id`, the processor token the
/// write came with, is checked again just before the staging commits, so a
/// revocation stops an upload in progress.
pub async fn write<S>(
    pool: &PgPool,
    job_id: &str,
    key: writes::BatchKey<'_>,
    rows: Rows<'_, S>,
    token_id: Option<&str>,
) -> Result<WriteResult>
where
    S: Stream<Item = Result<Bytes, Error>> + Unpin,
{
    let mut tx = pool.begin().await?;
    match writes::write(&mut tx, job_id, key, rows).await? {
        writes::Staged::New(result) => {
            if let Some(token_id) = token_id {
                tokens::ensure_not_revoked(&mut tx, token_id).await?;
            }
            tx.commit().await?;
            Ok(result)
        }
        // A retry staged nothing now; its answer is the truth either way.
        // Its body is compared after the transaction ends, so a slow one
        // holds no locks (the task's acks wait on them) and no session.
        writes::Staged::Seen {
            answer,
            digest,
            rows,
        } => {
            tx.rollback().await?;
            writes::retried(answer, digest, rows).await
        }
    }
}

/// Triggers a checkpoint by hand, in the caller's epoch.
pub async fn trigger(pool: &PgPool, job_id: &str, epoch: i64) -> Result<Checkpoint> {
    let mut tx = pool.begin().await?;
    let mut job = load_job(&mut tx, job_id, JobLock::NoKeyUpdate).await?;
    job.check_epoch(epoch)?;
    let checkpoint = checkpoints::trigger(&mut tx, &mut job, TriggerKind::Manual).await?;
    tx.commit().await?;
    Ok(checkpoint)
}

/// A job's checkpoints, newest first, filtered and paged.
pub async fn checkpoints(
    pool: &PgPool,
    job_id: &str,
    query: &CheckpointListQuery,
) -> Result<Vec<Checkpoint>> {
    checkpoints::list(&mut *pool.acquire().await?, job_id, query).await
}

/// One checkpoint with its per-task acks, read in one snapshot (a decision
/// between its statements cannot pair a pending status with decided
/// counts).
pub async fn checkpoint(
    pool: &PgPool,
    job_id: &str,
    checkpoint_id: i64,
) -> Result<CheckpointDetails> {
    let mut tx = snapshot(pool).await?;
    let details = checkpoints::details(&mut tx, job_id, checkpoint_id).await?;
    tx.commit().await?;
    Ok(details)
}

/// The first pending checkpoint above `after`, waiting up to `wait` for one
/// (the barrier a processor discovers); none when `gone` is cancelled.
pub async fn wait_for_pending(
    pool: &PgPool,
    notifier: &notify::Notifier,
    job_id: &str,
    after: i64,
    wait: Duration,
    gone: &CancellationToken,
) -> Result<Option<PendingCheckpoint>> {
    load_job(&mut *pool.acquire().await?, job_id, JobLock::None).await?;
    notifier
        .wait_for_pending(pool, job_id, after, wait, gone)
        .await
}

/// Decisions with promotion running in the background at once, in this
/// process (`PromoteMode::Background`).
static BACKGROUND_SETTLES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

pub use crate::model::MAX_BATCH_ACKS;

/// Records the acks of one or more tasks (offsets and state, in one
/// transaction: all or none) and, when they complete the set, decides and
/// commits the checkpoint: before answering (`PromoteMode::Inline`), or in
/// the background once the acks are recorded. Two transactions (see
/// [`acks::record_ack`]). Answers with the checkpoint's status after them.
///
/// `batch`: the acks came as a list, so a refused one is named by its
/// place in it (`acks[i]`).
pub async fn ack(
    pool: &PgPool,
    job_id: &str,
    checkpoint_id: i64,
    requests: &[AckRequest],
    batch: bool,
    promote: PromoteMode,
    limits: &Limits,
) -> Result<AckResult> {
    if requests.is_empty() {
        return Err(Error::validation("acks", "a batch holds at least one ack"));
    }
    if requests.len() > MAX_BATCH_ACKS {
        return Err(Error::validation(
            "acks",
            format!(
                "a batch holds at most {MAX_BATCH_ACKS} acks, this one {}",
                requests.len()
            ),
        ));
    }
    // Tasks are locked in task order, so two batches sharing tasks never
    // wait for each other in a cycle.
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|&a, &b| requests[a].task_id.cmp(&requests[b].task_id));
    for pair in order.windows(2) {
        if requests[pair[0]].task_id == requests[pair[1]].task_id {
            let later = pair[0].max(pair[1]);
            return Err(Error::validation(
                format!("acks[{later}].task_id"),
                format!("task {:?} acks twice in one batch", requests[later].task_id),
            ));
        }
    }
    let of_item = |index: usize| {
        move |error: Error| match batch {
            true => error.of_item(format!("acks[{index}]")),
            false => error,
        }
    };
    for &index in &order {
        acks::validate_ack(&requests[index], limits).map_err(of_item(index))?;
    }
    let ordered: Vec<&AckRequest> = order.iter().map(|&index| &requests[index]).collect();
    let mut tx = pool.begin().await?;
    let mut recorded = None;
    let mut expired = false;
    match acks::record_new_acks(&mut tx, job_id, checkpoint_id, &ordered).await? {
        acks::NewAcks::Recorded(result) => recorded = Some(result),
        outcome => {
            if let acks::NewAcks::Refused = outcome {
                tx.rollback().await?;
                tx = pool.begin().await?;
            }
            // One by one, each with its exact answer or refusal.
            for index in order {
                let request = &requests[index];
                let one = acks::record_ack(&mut tx, job_id, checkpoint_id, request, limits)
                    .await
                    .map_err(of_item(index))?;
                expired |= one.expired;
                recorded = Some(one.result);
            }
        }
    }
    let mut recorded = recorded.unwrap_or(AckResult {
        checkpoint_id,
        status: CheckpointStatus::Pending,
        acked_tasks: 0,
        total_tasks: 0,
    });
    tx.commit().await?;
    if recorded.status != CheckpointStatus::Pending {
        return Ok(recorded);
    }
    // Counted after the commit: of acks committing at the same time, the
    // last one to commit sees them all.
    recorded.acked_tasks = {
        let mut conn = pool.acquire().await?;
        acks::count_acks(&mut conn, job_id, checkpoint_id).await?
    };
    if recorded.acked_tasks < recorded.total_tasks && !expired {
        return Ok(recorded);
    }
    if promote == PromoteMode::Background && !expired {
        // At most a few at once (each holds a connection for a promotion);
        // beyond that the ack settles before answering, as inline.
        if let Ok(permit) = BACKGROUND_SETTLES.try_acquire() {
            // Recorded: if this decision is lost (the service stops), the
            // scheduler, a retried ack, or the next `/attempts` makes it.
            let (pool, job_id) = (pool.clone(), job_id.to_owned());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(error) = settle(&pool, &job_id, checkpoint_id).await {
                    tracing::warn!(job_id, checkpoint_id, %error, "background decision failed; the scheduler will retry it");
                }
            });
            return Ok(recorded);
        }
    }
    let settled = settle(pool, job_id, checkpoint_id).await?;
    settled_answer(pool, job_id, settled).await
}

/// The answer to the ack that settled a checkpoint: its status, or, when
/// acks were missing after all, why it was aborted.
async fn settled_answer(pool: &PgPool, job_id: &str, settled: AckResult) -> Result<AckResult> {
    let checkpoint_id = settled.checkpoint_id;
    if settled.status == CheckpointStatus::Aborted {
        // Acks were missing: timed out, declined, aborted or fenced between
        // this ack's two transactions. Say which.
        let mut conn = pool.acquire().await?;
        let reason: Option<String> = sqlx::query_scalar!(
            "SELECT failure_reason FROM checkpoints WHERE job_id = $1 AND checkpoint_id = $2",
            job_id,
            checkpoint_id
        )
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
        return Err(Error::CheckpointAborted {
            checkpoint_id,
            reason: reason.unwrap_or_else(|| "timeout".into()),
        });
    }
    Ok(settled)
}

/// The second transaction of an ack that completed the set.
async fn settle(pool: &PgPool, job_id: &str, checkpoint_id: i64) -> Result<AckResult> {
    let mut tx = pool.begin().await?;
    let settled = acks::settle(&mut tx, job_id, checkpoint_id).await?;
    tx.commit().await?;
    Ok(settled)
}

/// A task declines a checkpoint: it is aborted with the task's reason.
pub async fn decline(
    pool: &PgPool,
    job_id: &str,
    checkpoint_id: i64,
    request: &DeclineRequest,
) -> Result<Checkpoint> {
    let mut tx = pool.begin().await?;
    let checkpoint = acks::decline(&mut tx, job_id, checkpoint_id, request).await?;
    tx.commit().await?;
    Ok(checkpoint)
}

/// An operator aborts a pending checkpoint (a decided one cannot be).
pub async fn abort(
    pool: &PgPool,
    job_id: &str,
    checkpoint_id: i64,
    request: &AbortRequest,
) -> Result<Checkpoint> {
    let mut tx = pool.begin().await?;
    let checkpoint = acks::abort(&mut tx, job_id, checkpoint_id, request).await?;
    tx.commit().await?;
    Ok(checkpoint)
}

/// Promotes the decided checkpoint now (an operator fixed the sink);
/// `promotion-blocked` if it still fails.
pub async fn promote(pool: &PgPool, job_id: &str) -> Result<PromotionResult> {
    let mut tx = pool.begin().await?;
    let mut job = load_job(&mut tx, job_id, JobLock::NoKeyUpdate).await?;
    let outcome = commit::commit_decided(&mut tx, &mut job).await?;
    tx.commit().await?;
    outcome.answer(&job)
}

/// Rows a promotion kept out of the sink, oldest first.
pub async fn dead_letters(
    pool: &PgPool,
    job_id: &str,
    query: &DeadLetterQuery,
) -> Result<DeadLetterList> {
    commit::dead_letters(&mut *pool.acquire().await?, job_id, query).await
}

/// Which of these chunks the state store lacks (the task uploads those).
pub async fn missing_chunks(pool: &PgPool, job_id: &str, chunks: &[String]) -> Result<Vec<String>> {
    state::missing(&mut *pool.acquire().await?, job_id, chunks).await
}

/// Stores a state chunk, checked against its SHA-256.
pub async fn put_chunk(
    pool: &PgPool,
    job_id: &str,
    sha256: &str,
    content: Bytes,
) -> Result<StoredChunk> {
    // A transaction, so that its share lock on the job holds off a delete.
    let mut tx = pool.begin().await?;
    let stored = state::put_chunk(&mut tx, job_id, sha256, content).await?;
    tx.commit().await?;
    Ok(stored)
}

/// A state chunk's content, checked against its SHA-256.
pub async fn chunk(pool: &PgPool, job_id: &str, sha256: &str) -> Result<Bytes> {
    state::get_chunk(&mut *pool.acquire().await?, job_id, sha256).await
}

/// External objects that no retained checkpoint or savepoint references.
pub async fn unreferenced_objects(pool: &PgPool, job_id: &str) -> Result<Vec<String>> {
    state::unreferenced_objects(&mut *pool.acquire().await?, job_id).await
}

/// The owner releases (deletes) external objects: none may be referenced.
pub async fn release_objects(pool: &PgPool, job_id: &str, uris: &[String]) -> Result<()> {
    let mut tx = pool.begin().await?;
    state::release_objects(&mut tx, job_id, uris).await?;
    tx.commit().await?;
    Ok(())
}

/// Takes a savepoint of a decided checkpoint.
pub async fn create_savepoint(
    pool: &PgPool,
    job_id: &str,
    request: &SavepointRequest,
) -> Result<Savepoint> {
    let mut tx = pool.begin().await?;
    let savepoint = savepoints::create(&mut tx, job_id, request).await?;
    tx.commit().await?;
    Ok(savepoint)
}

/// A job's savepoints, newest first.
pub async fn savepoints(pool: &PgPool, job_id: &str) -> Result<Vec<Savepoint>> {
    savepoints::list(&mut *pool.acquire().await?, job_id).await
}

/// Deletes a savepoint (the checkpoint is retained like any other again).
pub async fn delete_savepoint(pool: &PgPool, job_id: &str, checkpoint_id: i64) -> Result<()> {
    let mut tx = pool.begin().await?;
    savepoints::delete(&mut tx, job_id, checkpoint_id).await?;
    tx.commit().await?;
    Ok(())
}

/// Issues a processor token for a job (its secret is shown only here).
pub async fn issue_token(pool: &PgPool, job_id: &str, label: &str) -> Result<IssuedToken> {
    let mut tx = pool.begin().await?;
    let issued = tokens::issue(&mut tx, job_id, label).await?;
    tx.commit().await?;
    Ok(issued)
}

/// A job's processor tokens (never their secrets).
pub async fn tokens(pool: &PgPool, job_id: &str) -> Result<Vec<TokenInfo>> {
    tokens::list(&mut *pool.acquire().await?, job_id).await
}

/// Revokes a processor token; revoking twice is fine.
pub async fn revoke_token(pool: &PgPool, job_id: &str, token_id: &str) -> Result<()> {
    tokens::revoke(&mut *pool.acquire().await?, job_id, token_id).await
}

/// The periodic work on one job, in one transaction under its row lock:
/// decides a checkpoint whose decision was lost (every ack in), aborts
/// checkpoints past their deadline, promotes a decided checkpoint when
/// `retry_promotion` (a failed promotion is retried by this), and triggers
/// one when `interval_ms` has passed. Answers whether it tried a promotion.
pub async fn sweep(pool: &PgPool, job_id: &str, retry_promotion: bool) -> Result<bool> {
    let mut tx = pool.begin().await?;
    match load_job(&mut tx, job_id, JobLock::NoKeyUpdate).await {
        Ok(_) => {}
        Err(Error::NotFound(_)) => return Ok(false),
        Err(error) => return Err(error),
    };
    // An ack whose decision was lost to a crash: decide it before any timeout.
    acks::decide_newest_complete(&mut tx, job_id).await?;
    let mut job = load_job(&mut tx, job_id, JobLock::NoKeyUpdate).await?;
    let aborted = checkpoints::abort_timed_out(&mut tx, &job).await?;
    if !aborted.is_empty() {
        tracing::info!(job = %job_id, ?aborted, "checkpoints timed out");
    }
    let promoting = retry_promotion && job.last_decided_id > job.last_committed_id;
    if promoting {
        commit::commit_decided(&mut tx, &mut job).await?;
    }
    if let Some(interval_ms) = job.interval_ms {
        let since_last: Option<f64> = sqlx::query_scalar!(
            "SELECT (extract(epoch FROM now() - max(triggered_at)) * 1000)::float8 FROM checkpoints WHERE job_id = $1 AND epoch = $2",
            job_id,
            job.epoch
        )
        .fetch_one(&mut *tx)
        .await?;
        if since_last.is_none_or(|elapsed| elapsed >= interval_ms as f64) {
            match checkpoints::trigger(&mut tx, &mut job, TriggerKind::Interval).await {
                Ok(checkpoint) => {
                    tracing::debug!(job = %job_id, checkpoint = checkpoint.checkpoint_id, "interval trigger")
                }
                // Too many pending, or within min_pause: try again next tick.
                Err(Error::Conflict(_) | Error::TooEarly { .. }) => {}
                Err(error) => return Err(error),
            }
        }
    }
    tx.commit().await?;
    Ok(promoting)
}

/// Pending checkpoints per job (for `/metrics`).
pub async fn pending_per_job(pool: &PgPool) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query!(
        r#"SELECT j.job_id, count(c.checkpoint_id) AS "pending!" FROM jobs j
           LEFT JOIN checkpoints c ON c.job_id = j.job_id AND c.status = 'pending'
           GROUP BY j.job_id"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.job_id, row.pending))
    .collect())
}

/// Limits that the coordinator enforces on request contents.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_inline_state_bytes: usize,
    pub max_ndjson_body_bytes: u64,
    /// An NDJSON upload whose body sends nothing for this long is abandoned
    /// (408 `body-timeout`) and rolled back.
    pub body_idle_timeout: std::time::Duration,
    /// Slowest a body may arrive, in bytes per second, over each
    /// `body_idle_timeout` of waiting for it; slower is 408 `body-timeout`.
    /// 0 turns it off.
    pub min_body_bytes_per_second: u64,
    /// Writes of one job staged at once on this replica (each holds a
    /// database connection); more wait, then get 503 `overloaded`.
    pub max_writes_per_job: usize,
    /// Wrong bearer tokens one client address may send a minute before it
    /// is refused (429) for the rest of the minute.
    pub wrong_tokens_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        use crate::config::defaults;
        Limits {
            max_inline_state_bytes: defaults::MAX_INLINE_STATE_BYTES,
            max_ndjson_body_bytes: defaults::MAX_NDJSON_BODY_BYTES,
            body_idle_timeout: std::time::Duration::from_millis(defaults::BODY_IDLE_TIMEOUT_MS),
            min_body_bytes_per_second: defaults::MIN_BODY_RATE,
            max_writes_per_job: defaults::MAX_WRITES_PER_JOB,
            wrong_tokens_per_minute: defaults::WRONG_TOKENS_PER_MINUTE,
        }
    }
}

/// The sink's columns as `job_outputs.sink_columns` stores them (JSON).
pub type SinkColumns = Json<Vec<ColumnDef>>;

/// A job's row, as the protocol reads it.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub job_id: String,
    /// The job's internal number: names its writer sessions (see
    /// [`attempts::writer_name`]).
    pub staging_id: i64,
    pub interval_ms: Option<i64>,
    pub timeout_ms: i64,
    pub min_pause_ms: i64,
    pub max_concurrent: i32,
    pub retained: i32,
    pub epoch: i64,
    pub epoch_first_checkpoint: i64,
    pub next_checkpoint_id: i64,
    pub last_decided_id: Option<i64>,
    pub last_committed_id: Option<i64>,
    /// Set by an attempt that restarted from an older checkpoint: the
    /// recovery point until the next decision.
    pub restored_from: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The database server's timeline the current epoch began on.
    pub epoch_timeline: i64,
    /// The server's timeline now (a failover moves it on).
    pub server_timeline: i64,
}

/// One output of a job, as the protocol reads it (`job_outputs`).
#[derive(Debug, Clone)]
pub struct OutputRow {
    pub job_id: String,
    pub output: String,
    pub ordinal: i32,
    /// Names the output's staging objects (never user text: see `sink`).
    pub staging_id: i64,
    pub sink_schema: String,
    pub sink_table: String,
    pub sink_mode: SinkMode,
    pub sink_key: Vec<String>,
    pub sink_columns: SinkColumns,
    pub on_promotion_error: OnPromotionError,
    pub partial_updates: bool,
}

impl OutputRow {
    pub fn sink_spec(&self) -> SinkSpec {
        SinkSpec {
            table: format!("{}.{}", self.sink_schema, self.sink_table),
            mode: self.sink_mode,
            key: self.sink_key.clone(),
            on_promotion_error: self.on_promotion_error,
            partial_updates: self.partial_updates,
        }
    }

    /// The public view of the output.
    pub fn public(&self) -> Output {
        Output {
            name: self.output.clone(),
            table: format!("{}.{}", self.sink_schema, self.sink_table),
            mode: self.sink_mode,
            key: self.sink_key.clone(),
            on_promotion_error: self.on_promotion_error,
            partial_updates: self.partial_updates,
            columns: self.sink_columns.0.iter().map(|c| c.public()).collect(),
        }
    }

    pub fn staging_target(&self) -> StagingTarget<'_> {
        StagingTarget {
            staging_id: self.staging_id,
            columns: &self.sink_columns.0,
            key: match self.sink_mode {
                SinkMode::Upsert | SinkMode::FirstWriteWins => &self.sink_key,
                SinkMode::Append => &[],
            },
            deletes: self.sink_mode == SinkMode::Upsert,
            chunked: self.sink_mode == SinkMode::Append
                && self.on_promotion_error != OnPromotionError::DeadLetter
                && self
                    .sink_columns
                    .0
                    .iter()
                    .all(crate::sink::staging::checked_in_rust),
        }
    }

    pub fn sink_target(&self) -> SinkTarget<'_> {
        SinkTarget {
            job_id: &self.job_id,
            output: &self.output,
            staging_id: self.staging_id,
            schema: &self.sink_schema,
            table: &self.sink_table,
            mode: self.sink_mode,
            key: &self.sink_key,
            columns: &self.sink_columns.0,
            partial_updates: self.partial_updates,
        }
    }
}

/// A job's outputs, in promotion order.
pub async fn load_outputs(conn: &mut PgConnection, job_id: &str) -> Result<Vec<OutputRow>> {
    Ok(sqlx::query_as!(
        OutputRow,
        r#"SELECT job_id, output, ordinal, staging_id, sink_schema, sink_table,
                  sink_mode AS "sink_mode: SinkMode", sink_key,
                  sink_columns AS "sink_columns: SinkColumns",
                  on_promotion_error AS "on_promotion_error: OnPromotionError", partial_updates
           FROM job_outputs WHERE job_id = $1 ORDER BY ordinal"#,
        job_id
    )
    .fetch_all(&mut *conn)
    .await?)
}

impl JobRow {
    /// Refuses a request from an older epoch (a zombie), from an epoch
    /// begun before a failover, or from one never issued.
    pub fn check_epoch(&self, sent: i64) -> Result<()> {
        let timelines = Timelines {
            epoch: self.epoch_timeline,
            server: self.server_timeline,
        };
        check_epoch(&self.job_id, self.epoch, timelines, sent)
    }
}

/// The server timeline a job's epoch began on, and the server's now.
#[derive(Debug, Clone, Copy)]
pub struct Timelines {
    pub epoch: i64,
    pub server: i64,
}

/// Refuses a request from an older epoch than `current` (a zombie: 409
/// `fenced`), from any epoch once the database has failed over since the
/// current one began (409 `fenced`: what the old primary committed last may
/// be gone, and the processor must resume from what the new one holds), or
/// from one never issued (422). Before the first attempt no epoch is
/// issued, not even 0: writers that skipped `/attempts` would share one
/// unfenced epoch.
pub fn check_epoch(job_id: &str, current: i64, timelines: Timelines, sent: i64) -> Result<()> {
    if current == 0 {
        return Err(Error::validation(
            "epoch",
            format!("epoch {sent} was never issued: start an attempt first (POST /attempts)"),
        ));
    }
    if sent < current {
        crate::metrics::fenced(job_id);
        return Err(Error::Fenced { sent, current });
    }
    if timelines.epoch != timelines.server {
        // Also an epoch above `current`: issued by an attempt the new
        // primary never received.
        crate::metrics::fenced(job_id);
        return Err(Error::FencedByFailover {
            sent,
            epoch_timeline: timelines.epoch,
            server_timeline: timelines.server,
        });
    }
    if sent > current {
        return Err(Error::validation(
            "epoch",
            format!("epoch {sent} was never issued; the current epoch is {current}"),
        ));
    }
    Ok(())
}

/// Row lock taken on the job's row.
#[derive(Debug, Clone, Copy)]
pub enum JobLock {
    None,
    KeyShare,
    NoKeyUpdate,
    Update,
}

/// Loads (and locks) a job's row, or `not-found`.
pub async fn load_job(conn: &mut PgConnection, job_id: &str, lock: JobLock) -> Result<JobRow> {
    let conn = &mut *conn;
    let job = match lock {
        JobLock::None => {
            select_job!(" WHERE job_id = $1", job_id)
                .fetch_optional(conn)
                .await?
        }
        JobLock::KeyShare => {
            select_job!(" WHERE job_id = $1 FOR KEY SHARE", job_id)
                .fetch_optional(conn)
                .await?
        }
        JobLock::NoKeyUpdate => {
            select_job!(" WHERE job_id = $1 FOR NO KEY UPDATE", job_id)
                .fetch_optional(conn)
                .await?
        }
        JobLock::Update => {
            select_job!(" WHERE job_id = $1 FOR UPDATE", job_id)
                .fetch_optional(conn)
                .await?
        }
    };
    job.ok_or_else(|| Error::not_found(format!("job {job_id:?} does not exist")))
}

/// Checks that a task belongs to the job and locks its row; returns its last
/// acked checkpoint in the current epoch.
pub async fn lock_task(
    conn: &mut PgConnection,
    job_id: &str,
    task_id: &str,
    exclusive: bool,
) -> Result<Option<i64>> {
    let row = if exclusive {
        sqlx::query_scalar!(
            "SELECT last_acked_id FROM tasks WHERE job_id = $1 AND task_id = $2 FOR UPDATE",
            job_id,
            task_id
        )
        .fetch_optional(&mut *conn)
        .await?
    } else {
        sqlx::query_scalar!(
            "SELECT last_acked_id FROM tasks WHERE job_id = $1 AND task_id = $2 FOR SHARE",
            job_id,
            task_id
        )
        .fetch_optional(&mut *conn)
        .await?
    };
    row.ok_or_else(|| Error::UnknownTask(task_id.to_owned()))
}

/// The `limit` of a paged listing: 100 when absent, 1 to 1000.
pub fn page_limit(limit: Option<i64>) -> Result<i64> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::validation(
            "limit",
            "limit must be between 1 and 1000",
        ));
    }
    Ok(limit)
}

/// A non-empty identifier from a request body, of bounded length.
pub fn require_name(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::validation(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if value.len() > max {
        return Err(Error::validation(
            field,
            format!("{field} is longer than {max} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::validation(
            field,
            format!("{field} contains control characters"),
        ));
    }
    Ok(())
}
