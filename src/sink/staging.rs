//! Pre-commit: rows of one batch go into the job's staging table with one
//! `COPY … FROM STDIN`, encoded in Rust and sent in bounded chunks, so a
//! batch of any size costs constant memory.
//!
//! The caller runs this inside the transaction that also records the batch;
//! any rejection aborts the COPY and the transaction, so a bad row leaves
//! nothing of its batch staged.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::value::RawValue;
use sqlx::postgres::PgCopyIn;
use sqlx::PgConnection;

use super::encode::{copy_error_to_rejection, CopyEncoder};
use super::schema::ColumnDef;
use crate::db::quote_ident;
use crate::error::{Error, Result};

/// COPY data is sent to PostgreSQL in chunks of about this size.
const SEND_CHUNK: usize = 1 << 20;

/// Longest NDJSON line (one row) accepted.
pub const MAX_LINE_BYTES: usize = 32 << 20;

/// Where a batch's rows come from.
pub enum Rows<'a, S> {
    /// The rows of a JSON body, each still as its JSON text.
    Json(Vec<&'a RawValue>),
    /// An NDJSON body, one object per line, read as it arrives.
    Ndjson { body: S, max_bytes: u64 },
}

/// Totals of one staged batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    pub rows: u64,
    pub bytes: u64,
}

/// Stages one batch with tag `tag`. Returns what was staged, or the first
/// rejection (after aborting the COPY).
pub async fn copy_rows<S>(
    conn: &mut PgConnection,
    job_id: &str,
    columns: &[ColumnDef],
    tag: i64,
    task_id: &str,
    seq_base: i64,
    rows: Rows<'_, S>,
) -> Result<Staged>
where
    S: Stream<Item = Result<Bytes, Error>> + Unpin,
{
    let mut column_list: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    column_list
        .extend([super::TAG_COLUMN, super::TASK_COLUMN, super::SEQ_COLUMN].map(String::from));
    let statement = format!(
        "COPY {} ({}) FROM STDIN",
        super::staging_table(job_id),
        column_list.join(", ")
    );
    let mut copy = conn.copy_in_raw(&statement).await?;
    let mut encoder = CopyEncoder::new(columns, tag, task_id, seq_base);
    let mut buffer = Vec::with_capacity(SEND_CHUNK + 64 * 1024);

    let fed = feed(&mut copy, &mut encoder, &mut buffer, rows).await;
    let outcome = match fed {
        Ok(()) => copy.finish().await.map_err(copy_failure),
        Err(error) => {
            // Best effort: the transaction is rolled back by the caller anyway.
            let _ = copy.abort("batch rejected").await;
            return Err(error);
        }
    };
    outcome?;
    Ok(Staged {
        rows: encoder.rows(),
        bytes: encoder.bytes(),
    })
}

async fn feed<S>(
    copy: &mut PgCopyIn<&mut PgConnection>,
    encoder: &mut CopyEncoder<'_>,
    buffer: &mut Vec<u8>,
    rows: Rows<'_, S>,
) -> Result<()>
where
    S: Stream<Item = Result<Bytes, Error>> + Unpin,
{
    match rows {
        Rows::Json(rows) => {
            for row in rows {
                encoder.push(row.get().as_bytes(), buffer)?;
                flush_if_full(copy, buffer).await?;
            }
        }
        Rows::Ndjson {
            mut body,
            max_bytes,
        } => {
            let mut received: u64 = 0;
            let mut line: Vec<u8> = Vec::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                received += chunk.len() as u64;
                if received > max_bytes {
                    return Err(Error::PayloadTooLarge(format!(
                        "the NDJSON body exceeds {max_bytes} bytes"
                    )));
                }
                let mut rest: &[u8] = &chunk;
                while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
                    line.extend_from_slice(&rest[..newline]);
                    push_line(encoder, &line, buffer)?;
                    line.clear();
                    rest = &rest[newline + 1..];
                    flush_if_full(copy, buffer).await?;
                }
                line.extend_from_slice(rest);
                if line.len() > MAX_LINE_BYTES {
                    return Err(Error::PayloadTooLarge(format!(
                        "row {} is longer than {MAX_LINE_BYTES} bytes",
                        encoder.rows() + 1
                    )));
                }
            }
            push_line(encoder, &line, buffer)?;
        }
    }
    if !buffer.is_empty() {
        copy.send(std::mem::take(buffer))
            .await
            .map_err(copy_failure)?;
    }
    Ok(())
}

/// Parses one NDJSON line (blank lines are skipped) and encodes it.
fn push_line(encoder: &mut CopyEncoder<'_>, line: &[u8], buffer: &mut Vec<u8>) -> Result<()> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    encoder.push(line, buffer)
}

async fn flush_if_full(copy: &mut PgCopyIn<&mut PgConnection>, buffer: &mut Vec<u8>) -> Result<()> {
    if buffer.len() >= SEND_CHUNK {
        let chunk = std::mem::replace(buffer, Vec::with_capacity(SEND_CHUNK + 64 * 1024));
        copy.send(chunk).await.map_err(copy_failure)?;
    }
    Ok(())
}

fn copy_failure(error: sqlx::Error) -> Error {
    copy_error_to_rejection(&error).unwrap_or_else(|| error.into())
}
