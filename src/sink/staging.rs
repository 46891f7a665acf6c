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

use super::encode::{copy_error_to_rejection, CopyEncoder, RowDigest};
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
    /// Rows that are deletes by key.
    pub deletes: u64,
    /// SHA-256 of the rows as sent (see [`CopyEncoder::digest`]).
    pub digest: [u8; 32],
}

/// Where a batch goes: the job's staging table and the rules for its rows.
pub struct StagingTarget<'a> {
    pub staging_id: i64,
    pub columns: &'a [ColumnDef],
    /// The upsert key (empty in append mode): rows must carry it.
    pub key: &'a [String],
    /// Whether a row may be a delete by key (upsert outputs).
    pub deletes: bool,
}

/// Stages one batch with tag `tag`. Returns what was staged, or the first
/// rejection (after aborting the COPY).
pub async fn copy_rows<S>(
    conn: &mut PgConnection,
    target: &StagingTarget<'_>,
    tag: i64,
    task_id: &str,
    batch_seq: i64,
    rows: Rows<'_, S>,
) -> Result<Staged>
where
    S: Stream<Item = Result<Bytes, Error>> + Unpin,
{
    let mut column_list: Vec<String> = target
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    column_list.extend(super::OWN_COLUMNS.map(String::from));
    let statement = format!(
        "COPY {} ({}) FROM STDIN",
        super::staging_table(target.staging_id),
        column_list.join(", ")
    );
    let mut copy = conn.copy_in_raw(&statement).await?;
    let mut encoder = CopyEncoder::new(
        target.columns,
        target.key,
        target.deletes,
        tag,
        task_id,
        batch_seq,
    );
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
        deletes: encoder.deletes(),
        digest: encoder.digest(),
    })
}

/// The digest that staging `rows` would record (see [`Staged::digest`]),
/// without checking or staging them: how a retry of a batch that is
/// already staged is compared with the original.
pub async fn digest_rows<S>(rows: Rows<'_, S>) -> Result<[u8; 32]>
where
    S: Stream<Item = Result<Bytes, Error>> + Unpin,
{
    let mut digest = RowDigest::default();
    match rows {
        Rows::Json(rows) => rows.iter().for_each(|row| digest.add(row.get().as_bytes())),
        Rows::Ndjson {
            mut body,
            max_bytes,
        } => {
            let mut lines = LineSplitter::new(max_bytes);
            let mut add = |line: &[u8]| {
                if let Some(row) = row_text(line) {
                    digest.add(row);
                }
                Ok(())
            };
            while let Some(chunk) = body.next().await {
                lines.feed(&chunk?, &mut add)?;
            }
            lines.finish(&mut add)?;
        }
    }
    Ok(digest.finish())
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
            let mut lines = LineSplitter::new(max_bytes);
            while let Some(chunk) = body.next().await {
                lines.feed(&chunk?, |line| push_line(encoder, line, buffer))?;
                flush_if_full(copy, buffer).await?;
            }
            lines.finish(|line| push_line(encoder, line, buffer))?;
        }
    }
    if !buffer.is_empty() {
        copy.send(std::mem::take(buffer))
            .await
            .map_err(copy_failure)?;
    }
    Ok(())
}

/// Cuts an NDJSON body into lines as its chunks arrive, within the body
/// and line limits.
struct LineSplitter {
    line: Vec<u8>,
    received: u64,
    max_bytes: u64,
    lines: u64,
}

impl LineSplitter {
    fn new(max_bytes: u64) -> Self {
        LineSplitter {
            line: Vec::new(),
            received: 0,
            max_bytes,
            lines: 0,
        }
    }

    /// Hands every line that `chunk` completes to `on_line`.
    fn feed(&mut self, chunk: &[u8], mut on_line: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.received += chunk.len() as u64;
        if self.received > self.max_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "the NDJSON body exceeds {} bytes",
                self.max_bytes
            )));
        }
        let mut rest = chunk;
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            if self.line.is_empty() {
                on_line(&rest[..newline])?;
            } else {
                self.line.extend_from_slice(&rest[..newline]);
                on_line(&self.line)?;
                self.line.clear();
            }
            self.lines += 1;
            rest = &rest[newline + 1..];
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > MAX_LINE_BYTES {
            return Err(Error::PayloadTooLarge(format!(
                "line {} is longer than {MAX_LINE_BYTES} bytes",
                self.lines + 1
            )));
        }
        Ok(())
    }

    /// Hands the last line (without a newline) to `on_line`.
    fn finish(&mut self, mut on_line: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        on_line(&self.line)
    }
}

/// The row an NDJSON line holds: `None` for a blank line; a trailing `\r`
/// is not part of it.
fn row_text(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    (!line.iter().all(u8::is_ascii_whitespace)).then_some(line)
}

/// Encodes the row of one NDJSON line, if it has one.
fn push_line(encoder: &mut CopyEncoder<'_>, line: &[u8], buffer: &mut Vec<u8>) -> Result<()> {
    match row_text(line) {
        Some(row) => encoder.push(row, buffer),
        None => Ok(()),
    }
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
