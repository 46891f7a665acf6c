//! Job registration: validate the spec and the sink, create the staging
//! table, keep the task list in sync.

use std::collections::HashSet;

use sqlx::types::Json;
use sqlx::PgConnection;

use super::{attempts, load_job, require_name, JobLock, JobRow};
use crate::error::{Error, Result};
use crate::model::{CheckpointingSettings, CheckpointingSpec, Job, JobSpec};
use crate::sink::schema;

/// Job ids are slugs: they name a staging table and appear in URLs.
pub fn validate_job_id(job_id: &str) -> Result<()> {
    let valid = !job_id.is_empty()
        && job_id.len() <= 48
        && job_id.as_bytes()[0].is_ascii_alphanumeric()
        && job_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::validation(
            "job",
            format!("job id {job_id:?} is not a slug: 1–48 characters of a-z, 0-9, '-', '_', starting with a letter or digit"),
        ))
    }
}

/// Fills in defaults and checks ranges.
pub fn checkpointing_settings(spec: Option<&CheckpointingSpec>) -> Result<CheckpointingSettings> {
    let spec = spec.cloned().unwrap_or_default();
    let settings = CheckpointingSettings {
        interval_ms: spec.interval_ms,
        timeout_ms: spec.timeout_ms.unwrap_or(600_000),
        min_pause_ms: spec.min_pause_ms.unwrap_or(0),
        max_concurrent: spec.max_concurrent.unwrap_or(1),
        retained: spec.retained.unwrap_or(10),
    };
    const DAY_MS: u64 = 86_400_000;
    if let Some(interval) = settings.interval_ms {
        if !(10..=DAY_MS).contains(&interval) {
            return Err(Error::validation(
                "checkpointing.interval_ms",
                "must be between 10 and 86400000",
            ));
        }
    }
    if !(1..=DAY_MS).contains(&settings.timeout_ms) {
        return Err(Error::validation(
            "checkpointing.timeout_ms",
            "must be between 1 and 86400000",
        ));
    }
    if settings.min_pause_ms > DAY_MS {
        return Err(Error::validation(
            "checkpointing.min_pause_ms",
            "must be at most 86400000",
        ));
    }
    if !(1..=100).contains(&settings.max_concurrent) {
        return Err(Error::validation(
            "checkpointing.max_concurrent",
            "must be between 1 and 100",
        ));
    }
    if !(1..=10_000).contains(&settings.retained) {
        return Err(Error::validation(
            "checkpointing.retained",
            "must be between 1 and 10000",
        ));
    }
    Ok(settings)
}

fn validate_tasks(tasks: &[String]) -> Result<()> {
    if tasks.is_empty() {
        return Err(Error::validation("tasks", "a job needs at least one task"));
    }
    if tasks.len() > 10_000 {
        return Err(Error::validation("tasks", "at most 10000 tasks"));
    }
    let mut seen = HashSet::new();
    for (index, task) in tasks.iter().enumerate() {
        require_name(&format!("tasks[{index}]"), task, 200)?;
        if !seen.insert(task) {
            return Err(Error::validation(
                format!("tasks[{index}]"),
                format!("task {task:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// Creates or updates a job whose id the caller validated; the caller
/// holds its row `FOR UPDATE` if it exists. Returns the job and whether it was created.
///
/// - A change of the sink's table, mode or key is refused (409) while rows
///   are staged or a decided checkpoint is not promoted: the staging table
///   is rebuilt for the new sink.
/// - The same sink whose columns changed (an `ALTER TABLE`) refreshes the
///   job's view of them and alters the staging table to match, keeping every
///   staged row: the remedy for a promotion blocked by a schema change.
/// - A change of the task set (rescaling) fences the current epoch exactly
///   as `POST /attempts` does: pending checkpoints are aborted, staged rows
///   of no decided checkpoint are thrown away, decided ones rolled forward,
///   and every processor must start a new attempt and resume from the
///   recovery point. Nothing of the old task set can then be promoted
///   without its offsets, nor staged twice by the task that takes its
///   partitions over.
pub async fn put(conn: &mut PgConnection, job_id: &str, spec: &JobSpec) -> Result<(Job, bool)> {
    validate_tasks(&spec.tasks)?;
    let settings = checkpointing_settings(spec.checkpointing.as_ref())?;
    let sink = schema::resolve(&mut *conn, &spec.sink).await?;
    let columns = Json(sink.columns.clone());

    let existing = match load_job(&mut *conn, job_id, JobLock::Update).await {
        Ok(job) => Some(job),
        Err(Error::NotFound(_)) => None,
        Err(error) => return Err(error),
    };
    let created = existing.is_none();
    let mut fence = false;
    if let Some(job) = &existing {
        let sink_moved = job.sink_schema != sink.schema
            || job.sink_table != sink.table
            || job.sink_mode != spec.sink.mode
            || job.sink_key != spec.sink.key;
        if sink_moved {
            let staged: bool = sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM {})",
                crate::sink::staging_table(job.staging_id)
            ))
            .fetch_one(&mut *conn)
            .await?;
            if staged || job.last_decided_id > job.last_committed_id {
                return Err(Error::conflict(
                    "rows are staged for this job; its sink table, mode or key can change only when nothing is staged (after a commit, or after a new attempt)",
                ));
            }
            schema::drop_staging(&mut *conn, job.staging_id).await?;
            schema::create_staging(&mut *conn, job.staging_id, &sink.columns).await?;
        } else if job.sink_columns.0 != sink.columns {
            schema::refresh_staging(
                &mut *conn,
                job.staging_id,
                &job.sink_columns.0,
                &sink.columns,
            )
            .await?;
        }
        let current: Vec<String> =
            sqlx::query_scalar!("SELECT task_id FROM tasks WHERE job_id = $1", job_id)
                .fetch_all(&mut *conn)
                .await?;
        let current: HashSet<&String> = current.iter().collect();
        fence = job.epoch > 0 && current != spec.tasks.iter().collect::<HashSet<_>>();
    }
    // One statement creates or updates the row. `inserted` tells a row
    // created by a concurrent request (its staging is that request's).
    let row = sqlx::query!(
        r#"INSERT INTO jobs (job_id, sink_schema, sink_table, sink_mode, sink_key, sink_columns,
                           interval_ms, timeout_ms, min_pause_ms, max_concurrent, retained,
                           on_promotion_error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (job_id) DO UPDATE SET
             sink_schema = EXCLUDED.sink_schema, sink_table = EXCLUDED.sink_table,
             sink_mode = EXCLUDED.sink_mode, sink_key = EXCLUDED.sink_key,
             sink_columns = EXCLUDED.sink_columns, interval_ms = EXCLUDED.interval_ms,
             timeout_ms = EXCLUDED.timeout_ms, min_pause_ms = EXCLUDED.min_pause_ms,
             max_concurrent = EXCLUDED.max_concurrent, retained = EXCLUDED.retained,
             on_promotion_error = EXCLUDED.on_promotion_error, updated_at = now()
         RETURNING staging_id, xmax = 0 AS "inserted!""#,
        job_id,
        sink.schema,
        sink.table,
        spec.sink.mode.as_str(),
        &spec.sink.key,
        columns as _,
        settings.interval_ms.map(|v| v as i64),
        settings.timeout_ms as i64,
        settings.min_pause_ms as i64,
        settings.max_concurrent as i32,
        settings.retained as i32,
        spec.sink.on_promotion_error.as_str()
    )
    .fetch_one(&mut *conn)
    .await?;
    let (staging_id, inserted) = (row.staging_id, row.inserted);
    if created && !inserted {
        return Err(Error::conflict(format!(
            "job {job_id:?} was created concurrently; retry the request"
        )));
    }
    if created {
        schema::create_staging(&mut *conn, staging_id, &sink.columns).await?;
    }

    if fence {
        // With the old task set: its decided checkpoint is rolled forward,
        // its pending ones and their staged rows are aborted.
        attempts::start(&mut *conn, job_id).await?;
    }
    // Tasks: keep the acks of tasks that stay, add new ones, drop removed ones.
    sqlx::query!(
        "DELETE FROM tasks WHERE job_id = $1 AND NOT (task_id = ANY ($2))",
        job_id,
        &spec.tasks
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!("INSERT INTO tasks (job_id, task_id, ordinal)
         SELECT $1, task_id, ordinal::int FROM unnest($2::text[]) WITH ORDINALITY AS t(task_id, ordinal)
         ON CONFLICT (job_id, task_id) DO UPDATE SET ordinal = EXCLUDED.ordinal", job_id, &spec.tasks)
    .execute(&mut *conn)
    .await?;

    Ok((get(&mut *conn, job_id).await?, created))
}

/// The public view of a job.
pub async fn view(conn: &mut PgConnection, job: JobRow) -> Result<Job> {
    let tasks: Vec<String> = sqlx::query_scalar!(
        "SELECT task_id FROM tasks WHERE job_id = $1 ORDER BY ordinal",
        &job.job_id
    )
    .fetch_all(&mut *conn)
    .await?;
    let pending: Vec<i64> = sqlx::query_scalar!("SELECT checkpoint_id FROM checkpoints WHERE job_id = $1 AND status = 'pending' ORDER BY checkpoint_id", &job.job_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Job {
        sink: job.sink_spec(),
        checkpointing: CheckpointingSettings {
            interval_ms: job.interval_ms.map(|v| v as u64),
            timeout_ms: job.timeout_ms as u64,
            min_pause_ms: job.min_pause_ms as u64,
            max_concurrent: job.max_concurrent as u32,
            retained: job.retained as u32,
        },
        epoch: job.epoch,
        last_decided_checkpoint: job.last_decided_id,
        last_committed_checkpoint: job.last_committed_id,
        pending_checkpoints: pending,
        sink_columns: job.sink_columns.0.iter().map(|c| c.public()).collect(),
        created_at: job.created_at,
        updated_at: job.updated_at,
        job_id: job.job_id,
        tasks,
    })
}

pub async fn get(conn: &mut PgConnection, job_id: &str) -> Result<Job> {
    let job = load_job(&mut *conn, job_id, JobLock::None).await?;
    view(conn, job).await
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<Job>> {
    let rows: Vec<JobRow> = select_job!(" ORDER BY job_id")
        .fetch_all(&mut *conn)
        .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        jobs.push(view(&mut *conn, row).await?);
    }
    Ok(jobs)
}

/// Removes a job whose row the caller holds `FOR UPDATE`.
pub async fn delete(conn: &mut PgConnection, job_id: &str) -> Result<()> {
    let job = load_job(&mut *conn, job_id, JobLock::Update).await?;
    schema::drop_staging(&mut *conn, job.staging_id).await?;
    sqlx::query!("DELETE FROM jobs WHERE job_id = $1", job_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
