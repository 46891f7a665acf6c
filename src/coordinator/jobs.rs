//! Job registration: validate the spec and its outputs' sinks, create and
//! keep their staging tables, keep the task list in sync.

use std::collections::HashSet;

use sqlx::types::Json;
use sqlx::PgConnection;

use super::{attempts, load_job, load_outputs, require_name, JobLock, JobRow, OutputRow};
use crate::error::{Error, Result};
use crate::model::{
    CheckpointingSettings, CheckpointingSpec, Job, JobSpec, OutputSpec, DEFAULT_OUTPUT,
};
use crate::sink::schema;

/// 1–48 characters of a-z, 0-9, '-', '_', starting with a letter or digit.
fn is_slug(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Job ids are slugs: they appear in URLs and metric labels.
pub fn validate_job_id(job_id: &str) -> Result<()> {
    if is_slug(job_id) {
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

/// Most outputs one job may have.
const MAX_OUTPUTS: usize = 64;

/// The outputs a spec declares, each with the field that names it in
/// errors (`sink`, or `outputs[i]`): one `sink`, or named `outputs`.
fn declared_outputs(spec: &JobSpec) -> Result<Vec<(String, OutputSpec)>> {
    match (&spec.sink, &spec.outputs) {
        (Some(sink), None) => Ok(vec![("sink".to_owned(), OutputSpec::default_output(sink))]),
        (None, Some(outputs)) => {
            if outputs.is_empty() || outputs.len() > MAX_OUTPUTS {
                return Err(Error::validation(
                    "outputs",
                    format!("a job has 1 to {MAX_OUTPUTS} outputs"),
                ));
            }
            let mut seen = HashSet::new();
            let mut declared = Vec::with_capacity(outputs.len());
            for (index, output) in outputs.iter().enumerate() {
                let at = format!("outputs[{index}]");
                if !is_slug(&output.name) {
                    return Err(Error::validation(
                        format!("{at}.name"),
                        format!("output name {:?} is not a slug: 1–48 characters of a-z, 0-9, '-', '_', starting with a letter or digit", output.name),
                    ));
                }
                if !seen.insert(&output.name) {
                    return Err(Error::validation(
                        format!("{at}.name"),
                        format!("output {:?} is declared twice", output.name),
                    ));
                }
                declared.push((at, output.clone()));
            }
            Ok(declared)
        }
        (Some(_), Some(_)) => Err(Error::validation(
            "outputs",
            "give either `sink` (one output) or `outputs`, not both",
        )),
        (None, None) => Err(Error::validation(
            "sink",
            "a job needs a `sink` (or several `outputs`)",
        )),
    }
}

/// Creates or updates a job whose id the caller validated; the caller
/// holds its row `FOR UPDATE` if it exists. Returns the job and whether it was created.
///
/// - An output added gets its staging table; an output removed, or whose
///   table, mode, key or partial updates change, is refused (409) while it
///   has rows staged or a decided checkpoint is not promoted: its staging
///   table is dropped (and rebuilt for the new sink).
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
    let declared = declared_outputs(spec)?;
    let mut wanted = Vec::with_capacity(declared.len());
    for (at, output) in declared {
        let sink = schema::resolve(&mut *conn, &output.sink(), &at).await?;
        wanted.push((output, sink));
    }

    let existing = match load_job(&mut *conn, job_id, JobLock::Update).await {
        Ok(job) => Some(job),
        Err(Error::NotFound(_)) => None,
        Err(error) => return Err(error),
    };
    let created = existing.is_none();
    // One statement creates or updates the row. `inserted` tells a row
    // created by a concurrent request (its staging is that request's).
    let row = sqlx::query!(
        r#"INSERT INTO jobs (job_id, interval_ms, timeout_ms, min_pause_ms, max_concurrent, retained)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (job_id) DO UPDATE SET
             interval_ms = EXCLUDED.interval_ms,
             timeout_ms = EXCLUDED.timeout_ms, min_pause_ms = EXCLUDED.min_pause_ms,
             max_concurrent = EXCLUDED.max_concurrent, retained = EXCLUDED.retained,
             updated_at = now()
         RETURNING xmax = 0 AS "inserted!""#,
        job_id,
        settings.interval_ms.map(|v| v as i64),
        settings.timeout_ms as i64,
        settings.min_pause_ms as i64,
        settings.max_concurrent as i32,
        settings.retained as i32,
    )
    .fetch_one(&mut *conn)
    .await?;
    if created && !row.inserted {
        return Err(Error::conflict(format!(
            "job {job_id:?} was created concurrently; retry the request"
        )));
    }

    let mut fence = false;
    let current = match &existing {
        Some(job) => {
            let tasks: Vec<String> =
                sqlx::query_scalar!("SELECT task_id FROM tasks WHERE job_id = $1", job_id)
                    .fetch_all(&mut *conn)
                    .await?;
            let tasks: HashSet<&String> = tasks.iter().collect();
            fence = job.epoch > 0 && tasks != spec.tasks.iter().collect::<HashSet<_>>();
            load_outputs(&mut *conn, job_id).await?
        }
        None => Vec::new(),
    };
    let undecided_rows = existing
        .as_ref()
        .is_some_and(|job| job.last_decided_id > job.last_committed_id);
    for old in &current {
        if !wanted.iter().any(|(output, _)| output.name == old.output) {
            ensure_nothing_staged(&mut *conn, old, undecided_rows, "removed").await?;
            schema::drop_staging(&mut *conn, old.staging_id).await?;
            sqlx::query!(
                "DELETE FROM job_outputs WHERE job_id = $1 AND output = $2",
                job_id,
                &old.output
            )
            .execute(&mut *conn)
            .await?;
        }
    }
    for (ordinal, (output, sink)) in wanted.iter().enumerate() {
        let columns = Json(sink.columns.clone());
        let old = current.iter().find(|old| old.output == output.name);
        if let Some(old) = old {
            let sink_moved = old.sink_schema != sink.schema
                || old.sink_table != sink.table
                || old.sink_mode != output.mode
                || old.sink_key != output.key
                || old.partial_updates != output.partial_updates;
            if sink_moved {
                ensure_nothing_staged(&mut *conn, old, undecided_rows, "changed").await?;
                schema::drop_staging(&mut *conn, old.staging_id).await?;
                schema::create_staging(&mut *conn, old.staging_id, &sink.columns).await?;
            } else if old.sink_columns.0 != sink.columns {
                schema::refresh_staging(
                    &mut *conn,
                    old.staging_id,
                    &old.sink_columns.0,
                    &sink.columns,
                )
                .await?;
            }
        }
        let staging_id: i64 = sqlx::query_scalar!(
            r#"INSERT INTO job_outputs (job_id, output, ordinal, sink_schema, sink_table, sink_mode,
                                       sink_key, sink_columns, on_promotion_error, partial_updates)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (job_id, output) DO UPDATE SET
                   ordinal = EXCLUDED.ordinal, sink_schema = EXCLUDED.sink_schema,
                   sink_table = EXCLUDED.sink_table, sink_mode = EXCLUDED.sink_mode,
                   sink_key = EXCLUDED.sink_key, sink_columns = EXCLUDED.sink_columns,
                   on_promotion_error = EXCLUDED.on_promotion_error,
                   partial_updates = EXCLUDED.partial_updates
               RETURNING staging_id"#,
            job_id,
            &output.name,
            ordinal as i32 + 1,
            &sink.schema,
            &sink.table,
            output.mode.as_str(),
            &output.key,
            columns as _,
            output.on_promotion_error.as_str(),
            output.partial_updates,
        )
        .fetch_one(&mut *conn)
        .await?;
        if old.is_none() {
            schema::create_staging(&mut *conn, staging_id, &sink.columns).await?;
        }
    }

    if fence {
        // With the old task set: its decided checkpoint is rolled forward,
        // its pending ones and their staged rows are aborted.
        attempts::start(&mut *conn, job_id, None).await?;
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

/// Refuses (409) to drop an output's staging table while it holds rows, or
/// while a decided checkpoint waits for promotion.
async fn ensure_nothing_staged(
    conn: &mut PgConnection,
    output: &OutputRow,
    undecided_rows: bool,
    what: &str,
) -> Result<()> {
    let staged: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {})",
        crate::sink::staging_table(output.staging_id)
    ))
    .fetch_one(&mut *conn)
    .await?;
    if staged || undecided_rows {
        return Err(Error::conflict(format!(
            "rows are staged for output {:?}; an output can be {what} (its table, mode, key or partial updates) only when nothing is staged (after a commit, or after a new attempt)",
            output.output
        )));
    }
    Ok(())
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
    let outputs = load_outputs(&mut *conn, &job.job_id).await?;
    // `sink` is the shorthand of a job with one output named `default`: a
    // client that PUTs back what it read must not rename an output.
    let only = match outputs.as_slice() {
        [only] if only.output == DEFAULT_OUTPUT => Some(only),
        _ => None,
    };
    Ok(Job {
        sink: only.map(OutputRow::sink_spec),
        sink_columns: only.map_or_else(Vec::new, |only| {
            only.sink_columns.0.iter().map(|c| c.public()).collect()
        }),
        outputs: outputs.iter().map(OutputRow::public).collect(),
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
    load_job(&mut *conn, job_id, JobLock::Update).await?;
    for output in load_outputs(&mut *conn, job_id).await? {
        schema::drop_staging(&mut *conn, output.staging_id).await?;
    }
    // The references first: the cascades from `jobs` run in no fixed order,
    // and a chunk or object still referenced cannot go.
    sqlx::query!("DELETE FROM state_refs WHERE job_id = $1", job_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM external_refs WHERE job_id = $1", job_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM jobs WHERE job_id = $1", job_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
