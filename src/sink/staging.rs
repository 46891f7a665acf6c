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
use super::schema::{ColumnDef, ColumnKind};
use super::{
    CHUNK_COLUMN, CHUNK_COLUMNS_COLUMN, OMITTED_COLUMN, ROW_COLUMN, SEQ_COLUMN, TAG_COLUMN,
    TASK_COLUMN,
};
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
    /// Staging rows that hold chunks of COPY text (0: staged as tuples).
    pub chunks: u64,
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
    /// Whether the batch may be staged as chunks of COPY text: an append
    /// output (without dead letters, whose row-by-row retry needs tuples)
    /// whose every column the service checks completely
    /// ([`checked_in_rust`]).
    pub chunked: bool,
}

/// Whether every value the encoder accepts for this column is one
/// PostgreSQL accepts too, so that no value needs PostgreSQL's own parser
/// at staging. True for PostgreSQL's own booleans and integers (the
/// encoder checks ranges and writes canonical digits) and unbounded text
/// (any UTF-8 without NUL, in a UTF-8 database). A typmod (`varchar(10)`),
/// a domain, an enum or extension type (even one named `int4`), or any
/// other type leaves the check to PostgreSQL, and the output stages tuples.
pub fn checked_in_rust(column: &ColumnDef) -> bool {
    if !column.builtin {
        return false;
    }
    match column.kind {
        ColumnKind::Bool | ColumnKind::Int2 | ColumnKind::Int4 | ColumnKind::Int8 => true,
        ColumnKind::Text => matches!(column.data_type.as_str(), "text" | "character varying"),
        _ => false,
    }
}

/// Whether the database stores text as UTF-8 (every valid string is then
/// valid text). Asked once per process: a database's encoding is fixed.
async fn server_is_utf8(conn: &mut PgConnection) -> Result<bool> {
    static UTF8: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(utf8) = UTF8.get() {
        return Ok(*utf8);
    }
    let utf8: bool = sqlx::query_scalar("SELECT current_setting('server_encoding') = 'UTF8'")
        .fetch_one(&mut *conn)
        .await?;
    Ok(*UTF8.get_or_init(|| utf8))
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
    if target.chunked && server_is_utf8(&mut *conn).await? {
        return stage_chunks(conn, target, tag, task_id, batch_seq, rows).await;
    }
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
    let mut encoder = CopyEncoder::new(
        target.columns,
        target.key,
        target.deletes,
        tag,
        task_id,
        batch_seq,
    );
    let mut copy = TupleCopy {
        copy: conn.copy_in_raw(&statement).await?,
        buffer: Vec::with_capacity(SEND_CHUNK + 64 * 1024),
    };
    if let Err(error) = feed(&mut copy, &mut encoder, rows).await {
        // Best effort: the transaction is rolled back by the caller anyway.
        let _ = copy.copy.abort("batch rejected").await;
        return Err(error);
    }
    copy.copy.finish().await.map_err(copy_failure)?;
    Ok(Staged {
        rows: encoder.rows(),
        bytes: encoder.bytes(),
        chunks: 0,
        deletes: encoder.deletes(),
        digest: encoder.digest(),
    })
}

/// Stages one batch as chunks of COPY text for the sink's columns: each
/// staging row holds about [`SEND_CHUNK`] bytes of rows that omit the same
/// columns (a change of omitted columns starts a new chunk, whose column
/// list then leaves them out, so that promotion's `COPY` gives them their
/// defaults). Every value was checked by the encoder, so nothing here can
/// fail on a row that promotion would refuse for its type.
async fn stage_chunks<S>(
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
    let mut encoder = CopyEncoder::chunked(target.columns);
    let mut chunks = ChunkWriter {
        conn,
        statement: format!(
            "INSERT INTO {} ({TAG_COLUMN}, {TASK_COLUMN}, {SEQ_COLUMN}, {ROW_COLUMN}, {OMITTED_COLUMN}, {CHUNK_COLUMNS_COLUMN}, {CHUNK_COLUMN})
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            super::staging_table(target.staging_id)
        ),
        columns: target.columns,
        tag,
        task_id,
        batch_seq,
        buffer: Vec::with_capacity(SEND_CHUNK + 64 * 1024),
        segments: Vec::new(),
        written: 0,
    };
    feed(&mut chunks, &mut encoder, rows).await?;
    Ok(Staged {
        rows: encoder.rows(),
        bytes: encoder.bytes(),
        chunks: chunks.written,
        deletes: 0,
        digest: encoder.digest(),
    })
}

/// Where the rows of a batch go, encoded, as its body is read.
trait Destination {
    /// Encodes one row (the text of a JSON object) into what is buffered.
    fn push(&mut self, encoder: &mut CopyEncoder<'_>, row: &[u8]) -> Result<()>;

    /// Sends what is buffered once it reaches [`SEND_CHUNK`] bytes, or
    /// (`all`) whatever it is.
    async fn send(&mut self, all: bool) -> Result<()>;
}

/// Tuples: one `COPY` into the staging table, fed in chunks.
struct TupleCopy<'c> {
    copy: PgCopyIn<&'c mut PgConnection>,
    buffer: Vec<u8>,
}

impl Destination for TupleCopy<'_> {
    fn push(&mut self, encoder: &mut CopyEncoder<'_>, row: &[u8]) -> Result<()> {
        encoder.push(row, &mut self.buffer)
    }

    async fn send(&mut self, all: bool) -> Result<()> {
        if self.buffer.len() >= SEND_CHUNK || (all && !self.buffer.is_empty()) {
            let chunk =
                std::mem::replace(&mut self.buffer, Vec::with_capacity(SEND_CHUNK + 64 * 1024));
            self.copy.send(chunk).await.map_err(copy_failure)?;
        }
        Ok(())
    }
}

/// Rows encoded but not yet staged, cut into chunks by omitted columns.
struct ChunkWriter<'a> {
    conn: &'a mut PgConnection,
    statement: String,
    columns: &'a [ColumnDef],
    tag: i64,
    task_id: &'a str,
    batch_seq: i64,
    buffer: Vec<u8>,
    /// Where each run of rows omitting the same columns starts in
    /// `buffer`, with those columns.
    segments: Vec<(usize, Vec<usize>)>,
    /// Chunks staged so far (the next one's index in the batch).
    written: u64,
}

impl Destination for ChunkWriter<'_> {
    fn push(&mut self, encoder: &mut CopyEncoder<'_>, row: &[u8]) -> Result<()> {
        let start = self.buffer.len();
        encoder.push(row, &mut self.buffer)?;
        let omitted = encoder.omitted();
        if self.segments.last().is_none_or(|(_, last)| last != omitted) {
            self.segments.push((start, omitted.to_vec()));
        }
        Ok(())
    }

    /// Stages every buffered segment as a chunk row of its own.
    async fn send(&mut self, all: bool) -> Result<()> {
        if self.buffer.len() < SEND_CHUNK && !all {
            return Ok(());
        }
        let segments = std::mem::take(&mut self.segments);
        for (index, (start, omitted)) in segments.iter().enumerate() {
            let end = segments
                .get(index + 1)
                .map_or(self.buffer.len(), |(next, _)| *next);
            let mut carried: Vec<&str> = Vec::new();
            let mut left_out: Vec<&str> = Vec::new();
            for (index, column) in self.columns.iter().enumerate() {
                match omitted.contains(&index) {
                    true => left_out.push(&column.name),
                    false => carried.push(&column.name),
                }
            }
            let omitted = (!left_out.is_empty()).then_some(left_out);
            sqlx::query(&self.statement)
                .bind(self.tag)
                .bind(self.task_id)
                .bind(self.batch_seq)
                .bind(self.written as i64)
                .bind(omitted)
                .bind(carried)
                .bind(&self.buffer[*start..end])
                .execute(&mut *self.conn)
                .await?;
            self.written += 1;
        }
        self.buffer.clear();
        Ok(())
    }
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

/// Reads a batch's rows (a JSON array, or NDJSON as it arrives) into
/// `destination`, sending as the buffer fills and the rest at the end.
async fn feed<S>(
    destination: &mut impl Destination,
    encoder: &mut CopyEncoder<'_>,
    rows: Rows<'_, S>,
) -> Result<()>
where
    S: Stream<Item = Result<Bytes, Error>> + Unpin,
{
    match rows {
        Rows::Json(rows) => {
            for row in rows {
                destination.push(encoder, row.get().as_bytes())?;
                destination.send(false).await?;
            }
        }
        Rows::Ndjson {
            mut body,
            max_bytes,
        } => {
            let mut lines = LineSplitter::new(max_bytes);
            while let Some(chunk) = body.next().await {
                lines.feed(&chunk?, |line| push_line(destination, encoder, line))?;
                destination.send(false).await?;
            }
            lines.finish(|line| push_line(destination, encoder, line))?;
        }
    }
    destination.send(true).await
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

/// Pushes the row of one NDJSON line, if it has one.
fn push_line(
    destination: &mut impl Destination,
    encoder: &mut CopyEncoder<'_>,
    line: &[u8],
) -> Result<()> {
    match row_text(line) {
        Some(row) => destination.push(encoder, row),
        None => Ok(()),
    }
}

fn copy_failure(error: sqlx::Error) -> Error {
    copy_error_to_rejection(&error).unwrap_or_else(|| error.into())
}
