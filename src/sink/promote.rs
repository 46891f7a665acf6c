//! Commit and abort of staged rows.
//!
//! Promotion moves every staged row tagged in (last committed, N] into the
//! sink in the caller's transaction, the one that marks N `committed`, so the
//! rows and the status change become visible together or not at all.
//!
//! When the one `INSERT … SELECT` fails on a row (a constraint, a trigger, a
//! bad value for a second unique index) and the job's policy is
//! `dead_letter`, [`promote_with_dead_letters`] bisects: halves of the rows
//! are promoted under savepoints, and each row that fails alone goes to the
//! `dead_letters` table with the database's error, in the same transaction.

use std::time::Instant;

use sqlx::{Connection, PgConnection};

use super::schema::ColumnDef;
use super::{
    staging_partition, staging_table, CHUNK_COLUMN, CHUNK_COLUMNS_COLUMN, DELETE_COLUMN,
    OMITTED_COLUMN, OWN_COLUMNS, ROW_COLUMN, SEQ_COLUMN, SLOTS, TAG_COLUMN, TASK_COLUMN,
};
use crate::db::{qualified, quote_ident, quote_literal};
use crate::model::SinkMode;

/// The sink as promotion needs it.
pub struct SinkTarget<'a> {
    pub job_id: &'a str,
    pub output: &'a str,
    /// Names the output's staging table (see [`staging_table`]).
    pub staging_id: i64,
    pub schema: &'a str,
    pub table: &'a str,
    pub mode: SinkMode,
    pub key: &'a [String],
    pub columns: &'a [ColumnDef],
    /// Upsert only: rows update only the columns they carry.
    pub partial_updates: bool,
}

/// What the staged rows of a range are, from their batch records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holds {
    /// Some rows are deletes by key.
    pub deletes: bool,
    /// Some batches were staged as tuples.
    pub tuples: bool,
    /// Some batches were staged as chunks of COPY text.
    pub chunks: bool,
    /// Bytes of COPY text in those chunks.
    pub chunk_bytes: i64,
}

/// What a promotion did.
#[derive(Debug, Clone, Copy)]
pub struct Promoted {
    pub rows: u64,
    /// Rows that went to the dead-letter table instead of the sink.
    pub dead_lettered: u64,
    pub millis: f64,
}

/// The ring slots that checkpoint tags in (after, upto] occupy.
fn slots_of(after: i64, upto: i64) -> Vec<i64> {
    if upto - after >= SLOTS {
        return (0..SLOTS).collect();
    }
    let mut slots: Vec<i64> = (after + 1..=upto)
        .map(|tag| tag.rem_euclid(SLOTS))
        .collect();
    slots.sort_unstable();
    slots
}

fn tag_filter(after: i64, upto: i64) -> String {
    let slots: Vec<String> = slots_of(after, upto).iter().map(i64::to_string).collect();
    // The slot predicate lets PostgreSQL prune partitions of other tags.
    format!(
        "{TAG_COLUMN} > {after} AND {TAG_COLUMN} <= {upto} AND ({TAG_COLUMN} % {SLOTS}) IN ({})",
        slots.join(", ")
    )
}

/// Restricts a promotion to the rows whose (seq, row) pairs are bound as
/// `$1` and `$2` (two `bigint[]` of equal length).
fn subset_filter() -> String {
    format!("({SEQ_COLUMN}, {ROW_COLUMN}) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[]))")
}

/// A promotion statement, and how it reports the rows it changed.
struct Statement {
    sql: String,
    /// Answers one `bigint`, the rows it inserted, updated or deleted
    /// (statements of several parts); otherwise its row count says.
    counts_itself: bool,
}

impl Statement {
    /// Runs it, with the (seq, row) subset bound when its filter has one.
    async fn run(
        &self,
        conn: &mut PgConnection,
        subset: Option<(&[i64], &[i64])>,
    ) -> Result<u64, sqlx::Error> {
        if self.counts_itself {
            let mut query = sqlx::query_scalar::<_, i64>(&self.sql);
            if let Some((seqs, rows)) = subset {
                query = query.bind(seqs).bind(rows);
            }
            Ok(query.fetch_one(&mut *conn).await? as u64)
        } else {
            let mut query = sqlx::query(&self.sql);
            if let Some((seqs, rows)) = subset {
                query = query.bind(seqs).bind(rows);
            }
            Ok(query.execute(&mut *conn).await?.rows_affected())
        }
    }
}

/// The value each sink column gets from staged (or merged) row `s`: the
/// column's default when the row omitted it, else the value sent (even
/// null).
fn column_values(sink: &SinkTarget<'_>) -> Vec<String> {
    sink.columns
        .iter()
        .map(|column| {
            let name = quote_ident(&column.name);
            match &column.default_expr {
                Some(default) => format!(
                    "CASE WHEN {} = ANY (s.{OMITTED_COLUMN}) THEN {default} ELSE s.{name} END",
                    quote_literal(&column.name)
                ),
                None => format!("s.{name}"),
            }
        })
        .collect()
}

/// `t.k = <other>.k AND …` over the key columns.
pub(super) fn same_key(sink: &SinkTarget<'_>, other: &str) -> String {
    sink.key
        .iter()
        .map(|k| {
            let k = quote_ident(k);
            format!("t.{k} = {other}.{k}")
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The sink's non-key columns.
pub(super) fn value_columns<'s>(sink: &'s SinkTarget<'_>) -> impl Iterator<Item = &'s ColumnDef> {
    sink.columns
        .iter()
        .filter(|column| !sink.key.contains(&column.name))
}

/// What a keyed output's statement does with staged deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deletes {
    /// None are staged.
    None,
    /// They ran in phase 1 ([`delete_statement`]): write the other winners.
    Done,
    /// Delete and write in one statement ([`Phase::Both`]).
    Apply,
}

/// Each key's winning staged row among those matching `filter`.
///
/// Postgres refuses to update one row twice in one statement: keep one
/// staged row per key, the last (upsert) or the first (first write wins)
/// by tag, then batch, then row. Key columns are NOT NULL in the sink and
/// in every staged row (checked at registration and staging), so DISTINCT
/// ON groups exactly as the unique index does. A delete competes like any
/// row: the winner decides whether the key is deleted or written.
fn winners(sink: &SinkTarget<'_>, filter: &str) -> String {
    let key: Vec<String> = sink.key.iter().map(|k| quote_ident(k)).collect();
    format!(
        "SELECT DISTINCT ON ({key}) * FROM {staging} WHERE {filter} ORDER BY {key}, {order}",
        key = key.join(", "),
        staging = staging_table(sink.staging_id),
        order = winner_order(sink.mode),
    )
}

/// Upsert, phase 1: deletes the keys whose winning row is a delete.
fn delete_statement(sink: &SinkTarget<'_>, filter: &str) -> String {
    format!(
        "DELETE FROM {target} t USING ({winners}) w WHERE w.{DELETE_COLUMN} AND {same}",
        target = qualified(sink.schema, sink.table),
        winners = winners(sink, filter),
        same = same_key(sink, "w"),
    )
}

/// The statement that writes the staged rows matching `filter` (append and
/// the keyed modes, not partial updates).
fn promotion_statement(sink: &SinkTarget<'_>, filter: &str, deletes: Deletes) -> Statement {
    let names: Vec<String> = sink.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values = column_values(sink);
    let target = qualified(sink.schema, sink.table);
    let staging = staging_table(sink.staging_id);
    if sink.mode == SinkMode::Append {
        return Statement {
            sql: format!(
                "INSERT INTO {target} ({}) SELECT {} FROM {staging} s WHERE {filter} AND s.{CHUNK_COLUMN} IS NULL",
                names.join(", "),
                values.join(", ")
            ),
            counts_itself: false,
        };
    }
    let key: Vec<String> = sink.key.iter().map(|k| quote_ident(k)).collect();
    let updates: Vec<String> = value_columns(sink)
        .map(|column| {
            let name = quote_ident(&column.name);
            format!("{name} = EXCLUDED.{name}")
        })
        .collect();
    let on_conflict = if updates.is_empty() || sink.mode == SinkMode::FirstWriteWins {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    let winners = winners(sink, filter);
    match deletes {
        Deletes::None => Statement {
            sql: format!(
                "INSERT INTO {target} ({names}) SELECT {values} FROM ({winners}) s{absent}
                 ON CONFLICT ({key}) {on_conflict}",
                names = names.join(", "),
                values = values.join(", "),
                key = key.join(", "),
                absent = absent_from_sink(sink),
            ),
            counts_itself: false,
        },
        Deletes::Done => Statement {
            sql: format!(
                "INSERT INTO {target} ({names}) SELECT {values} FROM ({winners}) s
                 WHERE s.{DELETE_COLUMN} IS NOT TRUE
                 ON CONFLICT ({key}) {on_conflict}",
                names = names.join(", "),
                values = values.join(", "),
                key = key.join(", "),
            ),
            counts_itself: false,
        },
        // A key whose last operation is a delete is deleted, the others
        // upserted: disjoint keys, so the two parts of one statement never
        // touch one row twice.
        Deletes::Apply => Statement {
            sql: format!(
                "WITH winners AS MATERIALIZED ({winners}),
                 deleted AS (
                     DELETE FROM {target} t USING winners w
                     WHERE w.{DELETE_COLUMN} AND {same_w} RETURNING 1),
                 upserted AS (
                     INSERT INTO {target} ({names}) SELECT {values} FROM winners s
                     WHERE s.{DELETE_COLUMN} IS NOT TRUE
                     ON CONFLICT ({key}) {on_conflict} RETURNING 1)
                 SELECT (SELECT count(*) FROM deleted) + (SELECT count(*) FROM upserted)",
                same_w = same_key(sink, "w"),
                names = names.join(", "),
                values = values.join(", "),
                key = key.join(", "),
            ),
            counts_itself: true,
        },
    }
}

/// First write wins: ` WHERE` the key of staged row `s` is not in the sink
/// yet (empty in the other modes). A row whose key exists is left out
/// before it is inserted, not only skipped by `ON CONFLICT DO NOTHING`,
/// which would first run the sink's CHECK constraints and BEFORE triggers
/// on it: a row that would change nothing must not block a checkpoint, be
/// dead-lettered, or fire a trigger. `ON CONFLICT` stays for a row someone
/// inserts meanwhile.
fn absent_from_sink(sink: &SinkTarget<'_>) -> String {
    if sink.mode != SinkMode::FirstWriteWins {
        return String::new();
    }
    format!(
        " WHERE NOT EXISTS (SELECT FROM {} t WHERE {})",
        qualified(sink.schema, sink.table),
        same_key(sink, "s")
    )
}

/// Which staged row of a key is promoted: the last one written (upsert) or
/// the first (first write wins).
fn winner_order(mode: SinkMode) -> String {
    let direction = if mode == SinkMode::FirstWriteWins {
        "ASC"
    } else {
        "DESC"
    };
    format!("{TAG_COLUMN} {direction}, {SEQ_COLUMN} {direction}, {ROW_COLUMN} {direction}")
}

/// Which part of a promotion to run. A job's outputs are promoted in two
/// phases, every output's deletes (in reverse declaration order) before
/// any output's writes (in declaration order): rows of one output that
/// reference another's can then be deleted and written in one checkpoint.
/// An output whose refused rows are dead-lettered runs both at once (its
/// row-by-row retry needs one statement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Deletes,
    Writes,
    Both,
}

/// Applies part (`phase`) of the staged rows tagged in (after, upto] to
/// the sink; `deletes`: some of them are deletes by key.
///
/// Errors (a sink constraint the staging table does not have, a dropped
/// column) are returned as is; the caller runs this under a savepoint.
pub async fn promote(
    conn: &mut PgConnection,
    sink: &SinkTarget<'_>,
    (after, upto): (i64, i64),
    holds: Holds,
    phase: Phase,
) -> Result<Promoted, sqlx::Error> {
    let started = Instant::now();
    let filter = tag_filter(after, upto);
    let with_deletes = holds.deletes && sink.mode == SinkMode::Upsert;
    let rows = match phase {
        Phase::Writes | Phase::Both if sink.mode == SinkMode::Append => {
            let mut holds = holds;
            if holds.chunks && !copy_allowed(&mut *conn, sink).await? {
                // Every row through the one `INSERT … SELECT` below, once.
                chunks_to_tuples(&mut *conn, sink.staging_id, Some((after, upto))).await?;
                holds.chunks = false;
                holds.tuples = true;
            }
            let mut rows = 0;
            if holds.tuples {
                rows += promotion_statement(sink, &filter, Deletes::None)
                    .run(&mut *conn, None)
                    .await?;
            }
            if holds.chunks {
                rows += copy_chunks(&mut *conn, sink, &filter, holds.chunk_bytes).await?;
            }
            rows
        }
        _ if sink.partial_updates => {
            let mut rows = 0;
            if phase != Phase::Writes {
                rows += super::partial::merge_and_delete(&mut *conn, sink, &filter).await?;
            }
            if phase != Phase::Deletes {
                rows += super::partial::write_merged(&mut *conn, sink).await?;
            }
            rows
        }
        Phase::Deletes if with_deletes => sqlx::query(&delete_statement(sink, &filter))
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        Phase::Deletes => 0,
        Phase::Writes if with_deletes => {
            promotion_statement(sink, &filter, Deletes::Done)
                .run(&mut *conn, None)
                .await?
        }
        Phase::Both if with_deletes => {
            promotion_statement(sink, &filter, Deletes::Apply)
                .run(&mut *conn, None)
                .await?
        }
        Phase::Writes | Phase::Both => {
            promotion_statement(sink, &filter, Deletes::None)
                .run(&mut *conn, None)
                .await?
        }
    };
    Ok(Promoted {
        rows,
        dead_lettered: 0,
        millis: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Chunks of at most this many bytes in all are read at once, not
/// through a cursor (two round trips fewer for a small checkpoint).
const CHUNKS_READ_AT_ONCE: i64 = 4 << 20;

/// Appends the chunks staged in `filter` (`bytes` of COPY text) to the
/// sink, each by a `COPY` of its text (PostgreSQL's multi-insert path), in
/// staging order. Beyond [`CHUNKS_READ_AT_ONCE`], a cursor hands them over
/// one at a time on this connection, in this transaction: memory stays one
/// chunk, whatever the checkpoint's volume. A chunk's column list leaves
/// out the columns its rows omitted, so `COPY` gives them their defaults as
/// an `INSERT` would.
async fn copy_chunks(
    conn: &mut PgConnection,
    sink: &SinkTarget<'_>,
    filter: &str,
    bytes: i64,
) -> Result<u64, sqlx::Error> {
    type Chunk = (Vec<String>, Vec<u8>);
    let select = format!(
        "SELECT {CHUNK_COLUMNS_COLUMN}, {CHUNK_COLUMN} FROM {staging}
         WHERE {filter} AND {CHUNK_COLUMN} IS NOT NULL
         ORDER BY {TAG_COLUMN}, {SEQ_COLUMN}, {ROW_COLUMN}",
        staging = staging_table(sink.staging_id),
    );
    let mut rows = 0;
    if bytes <= CHUNKS_READ_AT_ONCE {
        let chunks: Vec<Chunk> = sqlx::query_as(&select)
            .persistent(false)
            .fetch_all(&mut *conn)
            .await?;
        for chunk in chunks {
            rows += copy_chunk(&mut *conn, sink, chunk).await?;
        }
        return Ok(rows);
    }
    sqlx::query(&format!(
        "DECLARE sinkgate_chunks NO SCROLL CURSOR FOR {select}"
    ))
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    loop {
        let chunk: Option<Chunk> = sqlx::query_as("FETCH NEXT FROM sinkgate_chunks")
            .persistent(false)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(chunk) = chunk else {
            break;
        };
        rows += copy_chunk(&mut *conn, sink, chunk).await?;
    }
    sqlx::query("CLOSE sinkgate_chunks")
        .persistent(false)
        .execute(&mut *conn)
        .await?;
    Ok(rows)
}

/// `COPY` of one chunk (the columns its text holds, and the text) into
/// the sink; its rows.
async fn copy_chunk(
    conn: &mut PgConnection,
    sink: &SinkTarget<'_>,
    (carried, text): (Vec<String>, Vec<u8>),
) -> Result<u64, sqlx::Error> {
    let target = qualified(sink.schema, sink.table);
    if carried.is_empty() {
        // Rows that omitted every column: each gets every default.
        let count = text.iter().filter(|&&byte| byte == b'\n').count();
        return insert_defaults(&mut *conn, sink, &target, count).await;
    }
    let columns: Vec<String> = carried.iter().map(|name| quote_ident(name)).collect();
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {target} ({}) FROM STDIN",
            columns.join(", ")
        ))
        .await?;
    copy.send(text).await?;
    copy.finish().await
}

/// Turns staged chunks into staged tuples, in the caller's transaction:
/// each line of a chunk becomes a staging row with the chunk's tag, task,
/// batch and omitted columns, numbered in order within its batch. Those of
/// tags in `range` (after, upto], or all. What promotion needs where `COPY`
/// into the sink would not do what an `INSERT` does (see [`copy_allowed`]),
/// or with dead letters (it retries rows one by one), and what a column's
/// new type needs (staged tuples are converted in place).
pub async fn chunks_to_tuples(
    conn: &mut PgConnection,
    staging_id: i64,
    range: Option<(i64, i64)>,
) -> Result<(), sqlx::Error> {
    let staging = staging_table(staging_id);
    let filter = match range {
        Some((after, upto)) => tag_filter(after, upto),
        None => "true".to_owned(),
    };
    sqlx::query(&format!(
        "DECLARE sinkgate_chunks NO SCROLL CURSOR FOR
         SELECT {TAG_COLUMN}, {TASK_COLUMN}, {SEQ_COLUMN}, {OMITTED_COLUMN}, {CHUNK_COLUMNS_COLUMN}, {CHUNK_COLUMN}
         FROM {staging}
         WHERE {filter} AND {CHUNK_COLUMN} IS NOT NULL
         ORDER BY {TAG_COLUMN}, {SEQ_COLUMN}, {ROW_COLUMN}"
    ))
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    // (seq, next row index) of the batch being numbered.
    let mut numbering = (i64::MIN, 0_i64);
    loop {
        type Chunk = (i64, String, i64, Option<Vec<String>>, Vec<String>, Vec<u8>);
        let chunk: Option<Chunk> = sqlx::query_as("FETCH NEXT FROM sinkgate_chunks")
            .persistent(false)
            .fetch_optional(&mut *conn)
            .await?;
        let Some((tag, task, seq, omitted, carried, text)) = chunk else {
            break;
        };
        let mut columns: Vec<String> = carried.iter().map(|name| quote_ident(name)).collect();
        columns.extend(OWN_COLUMNS.map(String::from));
        // What follows each line: the tab after its last value, then
        // tag, task, batch, row (per line), omitted columns, delete flag.
        let mut own = Vec::new();
        if !carried.is_empty() {
            own.push(b'\t');
        }
        own.extend_from_slice(format!("{tag}\t").as_bytes());
        super::encode::escape_into(&task, &mut own);
        own.extend_from_slice(format!("\t{seq}\t").as_bytes());
        let mut omitted_text = Vec::new();
        match omitted.filter(|omitted| !omitted.is_empty()) {
            None => omitted_text.extend_from_slice(b"\\N"),
            Some(omitted) => {
                let mut array = String::from("{");
                for (index, name) in omitted.iter().enumerate() {
                    if index > 0 {
                        array.push(',');
                    }
                    super::encode::quote_array_element(name, &mut array);
                }
                array.push('}');
                super::encode::escape_into(&array, &mut omitted_text);
            }
        }
        if numbering.0 != seq {
            numbering = (seq, 0);
        }
        let mut tuples = Vec::with_capacity(text.len() + text.len() / 2);
        for line in text.split_inclusive(|&byte| byte == b'\n') {
            tuples.extend_from_slice(line.strip_suffix(b"\n").unwrap_or(line));
            tuples.extend_from_slice(&own);
            tuples.extend_from_slice(numbering.1.to_string().as_bytes());
            tuples.push(b'\t');
            tuples.extend_from_slice(&omitted_text);
            tuples.extend_from_slice(b"\t\\N\n");
            numbering.1 += 1;
        }
        let mut copy = conn
            .copy_in_raw(&format!(
                "COPY {staging} ({}) FROM STDIN",
                columns.join(", ")
            ))
            .await?;
        copy.send(tuples).await?;
        copy.finish().await?;
    }
    sqlx::query("CLOSE sinkgate_chunks")
        .persistent(false)
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!(
        "DELETE FROM {staging} WHERE {filter} AND {CHUNK_COLUMN} IS NOT NULL"
    ))
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    // Their batches are tuples now: promotion must read them as such.
    let (after, upto) = range.unwrap_or((i64::MIN, i64::MAX));
    sqlx::query(
        "UPDATE batches b SET staged_chunks = 0 FROM job_outputs o
         WHERE o.staging_id = $1 AND b.job_id = o.job_id AND b.output = o.output
           AND b.staged_chunks > 0 AND b.checkpoint_tag > $2 AND b.checkpoint_tag <= $3",
    )
    .bind(staging_id)
    .bind(after)
    .bind(upto)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether `COPY` into the sink does what an `INSERT` would: not when the
/// sink has rules (`COPY` ignores them), row-level security applies to this
/// session (`COPY FROM` refuses it), or insert triggers that see a
/// statement's rows together (statement-level ones, and row-level ones with
/// a transition table: each `COPY` of a chunk would be a statement of its
/// own). Asked at each promotion of chunks: any of these may come after the
/// job's registration.
pub async fn copy_allowed(
    conn: &mut PgConnection,
    sink: &SinkTarget<'_>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT c.relhasrules AND NOT row_security_active(c.oid)
                AND NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
                                AND t.tgenabled <> 'D' AND (t.tgtype & 4) <> 0
                                AND ((t.tgtype & 1) = 0 OR t.tgnewtable IS NOT NULL))
         FROM pg_class c WHERE c.oid = $1::regclass",
    )
    .bind(qualified(sink.schema, sink.table))
    .fetch_one(&mut *conn)
    .await
}

/// Inserts `count` rows of defaults only, a thousand per statement.
async fn insert_defaults(
    conn: &mut PgConnection,
    sink: &SinkTarget<'_>,
    target: &str,
    count: usize,
) -> Result<u64, sqlx::Error> {
    let Some(first) = sink.columns.first() else {
        return Ok(0);
    };
    let mut inserted = 0;
    let mut left = count;
    while left > 0 {
        let now = left.min(1000);
        let values = vec!["(DEFAULT)"; now].join(", ");
        inserted += sqlx::query(&format!(
            "INSERT INTO {target} ({}) VALUES {values}",
            quote_ident(&first.name)
        ))
        .persistent(false)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        left -= now;
    }
    Ok(inserted)
}

/// Whether a promotion error is the fault of some row (a value or a
/// constraint), so that promoting without that row could succeed. Anything
/// else (a dropped column, a missing privilege, a lost connection) is the
/// sink's or the database's, and dead-lettering every row would be wrong.
pub fn is_row_error(error: &sqlx::Error) -> bool {
    let Some(code) = error.as_database_error().and_then(|db| db.code()) else {
        return false;
    };
    // 22: data exception; 23: integrity constraint violation; 44: WITH
    // CHECK OPTION violation; P0: raised by a PL/pgSQL trigger.
    ["22", "23", "44", "P0"]
        .iter()
        .any(|class| code.starts_with(class))
}

/// Promotes the rows of (after, upto] that can be promoted and sends each
/// row that cannot to the dead-letter table, with the error it raised.
///
/// Runs under a savepoint of its own: if an error that is not a row's fault
/// turns up on the way, everything it did is rolled back and the error
/// returned (the promotion is then blocked, as without the policy).
pub async fn promote_with_dead_letters(
    conn: &mut PgConnection,
    sink: &SinkTarget<'_>,
    checkpoint_id: i64,
    (after, upto): (i64, i64),
    deletes: bool,
) -> Result<Promoted, sqlx::Error> {
    let started = Instant::now();
    let mut all = conn.begin().await?;
    let candidates = candidate_rows(&mut all, sink, after, upto).await?;
    let statement = promotion_statement(
        sink,
        &format!("{} AND {}", tag_filter(after, upto), subset_filter()),
        if deletes && sink.mode == SinkMode::Upsert {
            Deletes::Apply
        } else {
            Deletes::None
        },
    );
    let mut promoted = 0;
    let mut dead_lettered = 0;
    // Lower halves first, so rows are tried in staging order.
    let mut ranges = vec![(0, candidates.len())];
    while let Some((low, high)) = ranges.pop() {
        if low == high {
            continue;
        }
        let (seqs, rows): (Vec<i64>, Vec<i64>) = candidates[low..high].iter().copied().unzip();
        let mut attempt = all.begin().await?;
        let result = statement.run(&mut attempt, Some((&seqs, &rows))).await;
        match result {
            Ok(done) => {
                attempt.commit().await?;
                promoted += done;
            }
            Err(error) if is_row_error(&error) => {
                attempt.rollback().await?;
                if high - low == 1 && dead_lettered + 1 == candidates.len() as u64 {
                    // Every row refused on its own: most likely the sink,
                    // not the rows, is at fault (an exhausted sequence, a
                    // parent table that is not there yet). Block rather
                    // than dead-letter the whole checkpoint.
                    drop(all);
                    return Err(error);
                }
                if high - low == 1 {
                    let row = candidates[low];
                    dead_letter(&mut all, sink, checkpoint_id, (after, upto), row, &error).await?;
                    dead_lettered += 1;
                } else {
                    let middle = low + (high - low) / 2;
                    ranges.push((middle, high));
                    ranges.push((low, middle));
                }
            }
            Err(error) => return Err(error),
        }
    }
    all.commit().await?;
    Ok(Promoted {
        rows: promoted,
        dead_lettered,
        millis: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// The (seq, row) of every row a promotion of (after, upto] would insert:
/// all staged rows in append mode, the one promoted per key in the keyed
/// modes; in staging order.
async fn candidate_rows(
    conn: &mut PgConnection,
    sink: &SinkTarget<'_>,
    after: i64,
    upto: i64,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let staging = staging_table(sink.staging_id);
    let filter = tag_filter(after, upto);
    let statement = match sink.mode {
        SinkMode::Append => format!(
            "SELECT {SEQ_COLUMN}, {ROW_COLUMN} FROM {staging} WHERE {filter} AND {CHUNK_COLUMN} IS NULL ORDER BY 1, 2"
        ),
        SinkMode::Upsert | SinkMode::FirstWriteWins => {
            let key: Vec<String> = sink.key.iter().map(|k| quote_ident(k)).collect();
            format!(
                "SELECT {SEQ_COLUMN}, {ROW_COLUMN} FROM (
                    SELECT DISTINCT ON ({key}) {SEQ_COLUMN}, {ROW_COLUMN}, {key} FROM {staging} WHERE {filter}
                    ORDER BY {key}, {order}
                 ) s{absent} ORDER BY 1, 2",
                key = key.join(", "),
                order = winner_order(sink.mode),
                absent = absent_from_sink(sink),
            )
        }
    };
    sqlx::query_as(&statement).fetch_all(&mut *conn).await
}

/// Records one staged row, as the writer sent it (omitted columns left
/// out), with the error that kept it out of the sink.
async fn dead_letter(
    conn: &mut PgConnection,
    sink: &SinkTarget<'_>,
    checkpoint_id: i64,
    (after, upto): (i64, i64),
    (seq, row): (i64, i64),
    error: &sqlx::Error,
) -> Result<(), sqlx::Error> {
    let (message, code) = match error.as_database_error() {
        Some(db) => (
            db.message().to_owned(),
            db.code().map(|code| code.into_owned()),
        ),
        None => (error.to_string(), None),
    };
    let own: Vec<String> = OWN_COLUMNS
        .iter()
        .chain([&CHUNK_COLUMN, &CHUNK_COLUMNS_COLUMN])
        .map(|c| quote_literal(c))
        .collect();
    sqlx::query(&format!(
        "INSERT INTO dead_letters (job_id, output, checkpoint_id, task_id, row, error, sqlstate)
         SELECT $1, $7, $2, s.{TASK_COLUMN},
                to_jsonb(s) - ARRAY[{own}]::text[] - coalesce(s.{OMITTED_COLUMN}, '{{}}')
                  || CASE WHEN s.{DELETE_COLUMN} THEN jsonb_build_object({op}, 'delete') ELSE '{{}}' END,
                $3, $4
         FROM {staging} s WHERE {filter} AND {SEQ_COLUMN} = $5 AND {ROW_COLUMN} = $6",
        op = quote_literal(crate::model::OP_FIELD),
        own = own.join(", "),
        staging = staging_table(sink.staging_id),
        filter = tag_filter(after, upto),
    ))
    .bind(sink.job_id)
    .bind(checkpoint_id)
    .bind(&message)
    .bind(code)
    .bind(seq)
    .bind(row)
    .bind(sink.output)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes the promoted rows (tags in (after, upto]) from staging; `tags`
/// are the tags in that range that hold rows.
///
/// `highest_live_tag` bounds the tags that any write can be using now (the
/// highest triggered checkpoint + 1). When every live tag has its own slot,
/// the promoted slots hold nothing else and are truncated: constant time,
/// whatever the volume. Otherwise (more live tags than slots, after many
/// aborted checkpoints) the promoted rows are deleted.
pub async fn clear_promoted(
    conn: &mut PgConnection,
    staging_id: i64,
    tags: &[i64],
    after: i64,
    upto: i64,
    highest_live_tag: i64,
) -> Result<(), sqlx::Error> {
    if tags.is_empty() {
        return Ok(());
    }
    if highest_live_tag - after <= SLOTS {
        truncate_slots(conn, staging_id, tags).await
    } else {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE {}",
            staging_table(staging_id),
            tag_filter(after, upto)
        ))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// `TRUNCATE` of the ring partitions that hold `tags`.
async fn truncate_slots(
    conn: &mut PgConnection,
    staging_id: i64,
    tags: &[i64],
) -> Result<(), sqlx::Error> {
    let mut slots: Vec<i64> = tags.iter().map(|tag| tag.rem_euclid(SLOTS)).collect();
    slots.sort_unstable();
    slots.dedup();
    let partitions: Vec<String> = slots
        .into_iter()
        .map(|slot| staging_partition(staging_id, slot))
        .collect();
    sqlx::query(&format!("TRUNCATE {}", partitions.join(", ")))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Throws away every staged row tagged above `decided` (orphans of fenced
/// epochs); `tags` are the orphans' tags. With nothing decided-but-unpromoted
/// left, the orphans are all that is staged: a `TRUNCATE` of their
/// partitions, whatever the volume.
pub async fn abort_orphans(
    conn: &mut PgConnection,
    staging_id: i64,
    tags: &[i64],
    decided: i64,
    nothing_else_staged: bool,
) -> Result<(), sqlx::Error> {
    if tags.is_empty() {
        return Ok(());
    }
    if nothing_else_staged {
        truncate_slots(conn, staging_id, tags).await
    } else {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE {TAG_COLUMN} > {decided}",
            staging_table(staging_id)
        ))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_wrap_around_the_ring() {
        assert_eq!(slots_of(14, 17), vec![0, 1, 15]);
        assert_eq!(slots_of(0, 100).len(), SLOTS as usize);
        assert!(slots_of(5, 5).is_empty());
    }
}
