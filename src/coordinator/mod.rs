//! The checkpoint protocol (its rules: the README's "Choices worth knowing"): epochs, writes, checkpoints, acks,
//! decisions, recovery.
//!
//! Every function here is a plain async function over a PostgreSQL
//! connection that the caller has opened a transaction on; none of them sees
//! HTTP. All state lives in the database and every state change happens under
//! row locks on the job's row, so any number of service replicas can share
//! one database. The lock discipline, always job row first:
//!
//! | operation | job row | task row |
//! |---|---|---|
//! | write (stage a batch) | `FOR KEY SHARE` | `FOR SHARE` |
//! | ack (record) | `FOR KEY SHARE` | `FOR UPDATE` |
//! | decision, decline, abort, trigger, scheduler | `FOR NO KEY UPDATE` | – |
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

pub mod acks;
pub mod attempts;
pub mod checkpoints;
pub mod commit;
pub mod jobs;
pub mod notify;
pub mod scheduler;
pub mod writes;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::model::{OnPromotionError, SinkMode, SinkSpec};
use crate::sink::promote::SinkTarget;
use crate::sink::schema::ColumnDef;
use crate::sink::staging::StagingTarget;

/// Limits that the coordinator enforces on request contents.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_inline_state_bytes: usize,
    pub max_ndjson_body_bytes: u64,
    /// An NDJSON upload whose body sends nothing for this long is abandoned
    /// (408 `body-timeout`) and rolled back.
    pub body_idle_timeout: std::time::Duration,
    /// Slowest an NDJSON upload may arrive, in bytes per second on average
    /// (after a first `body_idle_timeout` of grace); slower is 408
    /// `body-timeout`. 0 turns it off.
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
        Limits {
            max_inline_state_bytes: 64 * 1024,
            max_ndjson_body_bytes: 16 << 30,
            body_idle_timeout: std::time::Duration::from_secs(30),
            min_body_bytes_per_second: 1024,
            max_writes_per_job: 8,
            wrong_tokens_per_minute: 20,
        }
    }
}

/// A job's row, as the protocol reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub job_id: String,
    pub sink_schema: String,
    pub sink_table: String,
    pub sink_mode: SinkMode,
    pub sink_key: Vec<String>,
    pub sink_columns: Json<Vec<ColumnDef>>,
    /// Names the job's staging objects (never the job id: see `sink`).
    pub staging_id: i64,
    pub on_promotion_error: OnPromotionError,
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
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl JobRow {
    pub fn sink_spec(&self) -> SinkSpec {
        SinkSpec {
            table: format!("{}.{}", self.sink_schema, self.sink_table),
            mode: self.sink_mode,
            key: self.sink_key.clone(),
            on_promotion_error: self.on_promotion_error,
        }
    }

    pub fn staging_target(&self) -> StagingTarget<'_> {
        StagingTarget {
            staging_id: self.staging_id,
            columns: &self.sink_columns.0,
            key: match self.sink_mode {
                SinkMode::Upsert => &self.sink_key,
                SinkMode::Append => &[],
            },
        }
    }

    pub fn sink_target(&self) -> SinkTarget<'_> {
        SinkTarget {
            job_id: &self.job_id,
            staging_id: self.staging_id,
            schema: &self.sink_schema,
            table: &self.sink_table,
            mode: self.sink_mode,
            key: &self.sink_key,
            columns: &self.sink_columns.0,
        }
    }

    /// Refuses a request from an older epoch (a zombie) or one never issued.
    pub fn check_epoch(&self, sent: i64) -> Result<()> {
        check_epoch(&self.job_id, self.epoch, sent)
    }
}

/// Refuses a request from an older epoch than `current` (a zombie: 409
/// `fenced`) or from one never issued (422).
pub fn check_epoch(job_id: &str, current: i64, sent: i64) -> Result<()> {
    if sent < current {
        crate::metrics::fenced(job_id);
        return Err(Error::Fenced { sent, current });
    }
    if sent > current {
        return Err(Error::validation(
            "epoch",
            if current == 0 {
                format!("epoch {sent} was never issued: start an attempt first (POST /attempts)")
            } else {
                format!("epoch {sent} was never issued; the current epoch is {current}")
            },
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
    let suffix = match lock {
        JobLock::None => "",
        JobLock::KeyShare => " FOR KEY SHARE",
        JobLock::NoKeyUpdate => " FOR NO KEY UPDATE",
        JobLock::Update => " FOR UPDATE",
    };
    sqlx::query_as::<_, JobRow>(&format!("SELECT * FROM jobs WHERE job_id = $1{suffix}"))
        .bind(job_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::not_found(format!("job {job_id:?} does not exist")))
}

/// Checks that a task belongs to the job and locks its row; returns its last
/// acked checkpoint in the current epoch.
pub async fn lock_task(
    conn: &mut PgConnection,
    job_id: &str,
    task_id: &str,
    exclusive: bool,
) -> Result<Option<i64>> {
    let lock = if exclusive { "FOR UPDATE" } else { "FOR SHARE" };
    let row: Option<(Option<i64>,)> = sqlx::query_as(&format!(
        "SELECT last_acked_id FROM tasks WHERE job_id = $1 AND task_id = $2 {lock}"
    ))
    .bind(job_id)
    .bind(task_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|(last,)| last)
        .ok_or_else(|| Error::UnknownTask(task_id.to_owned()))
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
