//! Pre-commit of one batch: fence, tag, stage, record.

use bytes::Bytes;
use futures::Stream;
use sqlx::PgConnection;

use super::{require_name, JobRow, OutputRow, SinkColumns};
use crate::error::{Error, Result};
use crate::model::{OnPromotionError, SinkMode, WriteResult};
use crate::sink::staging::{copy_rows, digest_rows, Rows};

/// Who is writing which batch.
#[derive(Debug, Clone)]
pub struct BatchKey<'a> {
    pub task_id: &'a str,
    pub epoch: i64,
    pub batch_id: &'a str,
    /// The output named by the write (may be left out when the job has one).
    pub output: Option<&'a str>,
}

/// What [`write`] did.
pub enum Staged<'r, S> {
    /// The batch is staged (the caller commits).
    New(WriteResult),
    /// This task staged this batch id in this epoch before: `answer` is the
    /// first answer, to give again if `rows` are the same rows ([`retried`]).
    /// The caller ends its transaction first: reading a retried body may
    /// take long, and nothing is left to write.
    Seen {
        answer: WriteResult,
        digest: Option<Vec<u8>>,
        rows: Rows<'r, S>,
    },
}

/// The first answer again for a retried batch if its rows are the ones
/// staged; the same id with other rows is 409 `batch-conflict`.
pub async fn retried<S>(
    answer: WriteResult,
    digest: Option<Vec<u8>>,
    rows: Rows<'_, S>,
) -> Result<WriteResult>
where
    S: Stream<Item = Result<Bytes, Error>> + Unpin,
{
    // The same id with other rows is a bug in the writer, never a retry:
    // staging nothing and answering "duplicate" would drop its rows. No
    // digest: recorded before digests existed (an upgrade within this
    // epoch); the content cannot be compared, so it is not assumed.
    let same_rows = match digest {
        Some(digest) => digest == digest_rows(rows).await?,
        None => false,
    };
    if !same_rows {
        return Err(Error::BatchConflict {
            batch_id: answer.batch_id,
        });
    }
    Ok(answer)
}

/// `POST /v1/jobs/{job}/writes`: stages a batch, or finds that this task
/// already staged this batch id in this epoch.
///
/// The rows are tagged with the checkpoint that the task's next ack seals:
/// one above its last ack in this epoch, but never at or below the last
/// decided checkpoint or the epoch's first one.
pub async fn write<'r, S>(
    conn: &mut PgConnection,
    job_id: &str,
    key: BatchKey<'_>,
    rows: Rows<'r, S>,
) -> Result<Staged<'r, S>>
where
    S: Stream<Item = Result<Bytes, Error>> + Unpin,
{
    require_name("task_id", key.task_id, 200)?;
    require_name("batch_id", key.batch_id, 200)?;
    // The job row, and this session marked as the job's writer until the
    // transaction ends (so that a fencing attempt can end it if its upload
    // stalls), in one round trip. An upload's `COPY` lasts as long as its
    // body (bounded by the body's pace and size, not by a statement
    // timeout); its lock waits stay bounded.
    let job: JobRow = select_job!(
        " WHERE job_id = $1 AND set_config('application_name', $2 || staging_id, true) IS NOT NULL
           AND set_config('statement_timeout', '0', true) IS NOT NULL
           FOR KEY SHARE",
        job_id,
        super::attempts::WRITER_NAME_PREFIX
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::not_found(format!("job {job_id:?} does not exist")))?;
    job.check_epoch(key.epoch)?;
    let (last_acked, outputs) = task_and_outputs(&mut *conn, job_id, key.task_id).await?;
    let output = match choose_output(job_id, outputs, key.output) {
        Ok(output) => output,
        // The job's outputs changed since this batch was staged (an output
        // added, so it must now be named; or removed): a retry still gets
        // its first answer, never a refusal of rows that are staged.
        Err(error) => match recorded_batch(&mut *conn, job_id, &key).await? {
            Some(seen) if key.output.is_none_or(|named| named == seen.output) => {
                return Ok(seen.into_staged(&key, rows));
            }
            _ => return Err(error),
        },
    };

    let tag = [
        last_acked.map_or(0, |last| last + 1),
        job.last_decided_id.map_or(0, |last| last + 1),
        job.epoch_first_checkpoint,
    ]
    .into_iter()
    .max()
    .unwrap_or(1);

    // Claim the batch id first: a concurrent retry of the same batch waits on
    // this row and then finds it taken. Batch records live as long as their
    // epoch (see `attempts`), so a retry, however late, is recognised.
    let batch_seq: Option<i64> = sqlx::query_scalar!("INSERT INTO batches (job_id, epoch, task_id, batch_id, checkpoint_tag, batch_seq, staged_rows, staged_bytes, output)
         VALUES ($1, $2, $3, $4, $5, nextval('batch_seq'), 0, 0, $6)
         ON CONFLICT DO NOTHING RETURNING batch_seq", job_id, key.epoch, key.task_id, key.batch_id, tag, &output.output)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(batch_seq) = batch_seq else {
        let seen = recorded_batch(&mut *conn, job_id, &key)
            .await?
            .ok_or_else(|| Error::conflict("the batch record vanished; retry the write"))?;
        if key.output.is_some_and(|named| named != seen.output) {
            // The same batch id for another output's rows: not a retry.
            return Err(Error::BatchConflict {
                batch_id: key.batch_id.to_owned(),
            });
        }
        return Ok(seen.into_staged(&key, rows));
    };

    // Rows of a batch are ordered after every row of earlier batches.
    let staged = copy_rows(
        &mut *conn,
        &output.staging_target(),
        tag,
        key.task_id,
        batch_seq,
        rows,
    )
    .await?;
    sqlx::query!(
        "UPDATE batches SET staged_rows = $5, staged_bytes = $6, digest = $7, staged_deletes = $8,
                staged_chunks = $9
         WHERE job_id = $1 AND epoch = $2 AND task_id = $3 AND batch_id = $4",
        job_id,
        key.epoch,
        key.task_id,
        key.batch_id,
        staged.rows as i64,
        staged.bytes as i64,
        &staged.digest[..],
        staged.deletes as i64,
        staged.chunks as i32
    )
    .execute(&mut *conn)
    .await?;
    crate::metrics::staged(job_id, staged.rows, staged.bytes);
    Ok(Staged::New(WriteResult {
        task_id: key.task_id.to_owned(),
        batch_id: key.batch_id.to_owned(),
        epoch: key.epoch,
        checkpoint_id: tag,
        staged_rows: staged.rows as i64,
        staged_bytes: staged.bytes as i64,
        duplicate: false,
    }))
}

/// The writing task's last ack in this epoch, with its row share-locked
/// (see [`super::lock_task`]), and the job's outputs: one round trip on
/// every write's path.
async fn task_and_outputs(
    conn: &mut PgConnection,
    job_id: &str,
    task_id: &str,
) -> Result<(Option<i64>, Vec<OutputRow>)> {
    let rows = sqlx::query!(
        r#"SELECT t.last_acked_id, o.job_id AS "job_id?", o.output AS "output?", o.ordinal AS "ordinal?",
                  o.staging_id AS "staging_id?", o.sink_schema AS "sink_schema?", o.sink_table AS "sink_table?",
                  o.sink_mode AS "sink_mode?: SinkMode", o.sink_key AS "sink_key?",
                  o.sink_columns AS "sink_columns?: SinkColumns",
                  o.on_promotion_error AS "on_promotion_error?: OnPromotionError",
                  o.partial_updates AS "partial_updates?"
           FROM tasks t LEFT JOIN job_outputs o ON o.job_id = t.job_id
           WHERE t.job_id = $1 AND t.task_id = $2
           ORDER BY o.ordinal
           FOR SHARE OF t"#,
        job_id,
        task_id
    )
    .fetch_all(&mut *conn)
    .await?;
    let Some(first) = rows.first() else {
        return Err(Error::UnknownTask(task_id.to_owned()));
    };
    let last_acked = first.last_acked_id;
    let outputs = rows
        .into_iter()
        .filter_map(|row| {
            Some(OutputRow {
                job_id: row.job_id?,
                output: row.output?,
                ordinal: row.ordinal?,
                staging_id: row.staging_id?,
                sink_schema: row.sink_schema?,
                sink_table: row.sink_table?,
                sink_mode: row.sink_mode?,
                sink_key: row.sink_key?,
                sink_columns: row.sink_columns?,
                on_promotion_error: row.on_promotion_error?,
                partial_updates: row.partial_updates?,
            })
        })
        .collect();
    Ok((last_acked, outputs))
}

/// The output a write goes to: the one it names, or the job's only one.
fn choose_output(
    job_id: &str,
    mut outputs: Vec<OutputRow>,
    named: Option<&str>,
) -> Result<OutputRow> {
    let names = || {
        outputs
            .iter()
            .map(|o| format!("{:?}", o.output))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match named {
        Some(name) => match outputs.iter().position(|o| o.output == name) {
            Some(index) => Ok(outputs.swap_remove(index)),
            None => Err(Error::validation(
                "output",
                format!(
                    "job {job_id:?} has no output {name:?}; its outputs: {}",
                    names()
                ),
            )),
        },
        None if outputs.len() == 1 => Ok(outputs.remove(0)),
        None => Err(Error::validation(
            "output",
            format!(
                "job {job_id:?} has several outputs ({}): name one in `output`",
                names()
            ),
        )),
    }
}

/// A batch as recorded when it was staged.
struct RecordedBatch {
    checkpoint_tag: i64,
    staged_rows: i64,
    staged_bytes: i64,
    digest: Option<Vec<u8>>,
    output: String,
}

impl RecordedBatch {
    /// The first answer, to give again if `rows` are the rows staged.
    fn into_staged<'r, S>(self, key: &BatchKey<'_>, rows: Rows<'r, S>) -> Staged<'r, S> {
        Staged::Seen {
            answer: WriteResult {
                task_id: key.task_id.to_owned(),
                batch_id: key.batch_id.to_owned(),
                epoch: key.epoch,
                checkpoint_id: self.checkpoint_tag,
                staged_rows: self.staged_rows,
                staged_bytes: self.staged_bytes,
                duplicate: true,
            },
            digest: self.digest,
            rows,
        }
    }
}

/// The record of this task's batch id in this epoch, if it was staged.
async fn recorded_batch(
    conn: &mut PgConnection,
    job_id: &str,
    key: &BatchKey<'_>,
) -> Result<Option<RecordedBatch>> {
    Ok(sqlx::query_as!(
        RecordedBatch,
        "SELECT checkpoint_tag, staged_rows, staged_bytes, digest, output FROM batches
         WHERE job_id = $1 AND epoch = $2 AND task_id = $3 AND batch_id = $4",
        job_id,
        key.epoch,
        key.task_id,
        key.batch_id
    )
    .fetch_optional(&mut *conn)
    .await?)
}
