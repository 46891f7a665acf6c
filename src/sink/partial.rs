//! Promotion of an upsert output with partial updates.
//!
//! The staged rows of each key in the range are merged, in order, from the
//! key's last delete on: each column takes the value of the last row that
//! carried it (`sinkgate_last … FILTER`, migration 0010), into a temporary
//! table that lives until the promotion's transaction ends. Then, in two
//! phases (all outputs' deletes before any output's writes, so that rows
//! of one output that reference another's can be deleted and written in
//! one checkpoint):
//!
//! 1. [`merge_and_delete`]: keys whose last operation is a delete, and
//!    keys deleted and written again, are deleted (a re-created key is a
//!    new row: triggers and cascades see a delete and an insert).
//! 2. [`write_merged`]: an existing key gets the columns its rows carried
//!    and keeps the others; a new key is inserted, the columns nothing
//!    carried at their defaults. Existing rows are locked (waiting for a
//!    row another transaction holds, skipping one it deleted), then
//!    updated; the keys left are inserted with `ON CONFLICT DO NOTHING`;
//!    a key that someone inserted meanwhile is updated on the next round.
//!    Another writer's row is never overwritten wholesale, and no key is
//!    dropped.

use sqlx::PgConnection;

use super::promote::{same_key, value_columns, SinkTarget};
use super::schema::ColumnDef;
use super::{staging_table, DELETE_COLUMN, OMITTED_COLUMN, ROW_COLUMN, SEQ_COLUMN, TAG_COLUMN};
use crate::db::{qualified, quote_ident, quote_literal};

/// Rounds of update-then-insert before giving up on keys that other
/// writers keep deleting and inserting (the promotion then fails and is
/// retried like any other).
const MAX_ROUNDS: usize = 10;

/// The temporary table of one output's merged rows.
fn merged_table(sink: &SinkTarget<'_>) -> String {
    quote_ident(&format!("sinkgate_merged_{}", sink.staging_id))
}

fn key_columns(sink: &SinkTarget<'_>) -> Vec<String> {
    sink.key.iter().map(|k| quote_ident(k)).collect()
}

/// Whether staged row `s` carried `column` (it was not omitted).
fn carried(column: &ColumnDef) -> String {
    format!(
        "NOT ({} = ANY (coalesce(s.{OMITTED_COLUMN}, '{{}}')))",
        quote_literal(&column.name)
    )
}

/// Phase 1: merges the staged rows matching `filter` into the output's
/// temporary table, and deletes the keys that a delete reset. Answers the
/// rows deleted.
pub async fn merge_and_delete(
    conn: &mut PgConnection,
    sink: &SinkTarget<'_>,
    filter: &str,
) -> Result<u64, sqlx::Error> {
    let merged = merged_table(sink);
    let key = key_columns(sink);
    let position = format!("ARRAY[s.{TAG_COLUMN}, s.{SEQ_COLUMN}, s.{ROW_COLUMN}]");
    let live = "s._sinkgate_live";
    // Key columns as last sent (equal keys may be spelled differently:
    // 1.0 and 1.00), then each value column's last carried value.
    let mut columns: Vec<String> = key
        .iter()
        .map(|k| format!("sinkgate_last(s.{k} ORDER BY s._sinkgate_position) AS {k}"))
        .collect();
    columns.extend(value_columns(sink).map(|column| {
        format!(
            "sinkgate_last(s.{name} ORDER BY s._sinkgate_position) FILTER (WHERE {live} AND {carried}) AS {name}",
            name = quote_ident(&column.name),
            carried = carried(column),
        )
    }));
    let not_carried: Vec<String> = value_columns(sink)
        .map(|column| {
            format!(
                "CASE WHEN bool_or({live} AND {}) THEN NULL ELSE {} END",
                carried(column),
                quote_literal(&column.name)
            )
        })
        .collect();
    let statement = format!(
        "CREATE TEMPORARY TABLE {merged} ON COMMIT DROP AS
         SELECT {columns},
                array_remove(ARRAY[{not_carried}]::text[], NULL) AS {OMITTED_COLUMN},
                bool_or(s._sinkgate_reset_at IS NOT NULL) AS _sinkgate_reset,
                bool_or({live}) AS _sinkgate_live,
                false AS _sinkgate_locked,
                false AS _sinkgate_done
         FROM (
             SELECT s.*, {DELETE_COLUMN} IS NOT TRUE
                    AND (_sinkgate_reset_at IS NULL OR _sinkgate_position > _sinkgate_reset_at) AS _sinkgate_live
             FROM (
                 SELECT s.*, {position} AS _sinkgate_position,
                        max(CASE WHEN s.{DELETE_COLUMN} THEN {position} END)
                            OVER (PARTITION BY {key_s}) AS _sinkgate_reset_at
                 FROM {staging} s WHERE {filter}
             ) s
         ) s
         GROUP BY {key_s}",
        columns = columns.join(", "),
        not_carried = not_carried.join(", "),
        key_s = key
            .iter()
            .map(|k| format!("s.{k}"))
            .collect::<Vec<_>>()
            .join(", "),
        staging = staging_table(sink.staging_id),
    );
    sqlx::query(&format!("DROP TABLE IF EXISTS {merged}"))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&statement).execute(&mut *conn).await?;
    let deleted = sqlx::query(&format!(
        "DELETE FROM {target} t USING {merged} m WHERE m._sinkgate_reset AND {same}",
        target = qualified(sink.schema, sink.table),
        same = same_key(sink, "m"),
    ))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(deleted)
}

/// Phase 2: writes the merged rows of phase 1. Answers the rows updated
/// and inserted.
pub async fn write_merged(
    conn: &mut PgConnection,
    sink: &SinkTarget<'_>,
) -> Result<u64, sqlx::Error> {
    let merged = merged_table(sink);
    let target = qualified(sink.schema, sink.table);
    let key = key_columns(sink);
    let returned: Vec<String> = key.iter().map(|k| format!("t.{k}")).collect();
    let mark_done = |source: &str| {
        format!(
            "UPDATE {merged} m SET _sinkgate_done = true FROM {source} t WHERE {}",
            key.iter()
                .map(|k| format!("m.{k} = t.{k}"))
                .collect::<Vec<_>>()
                .join(" AND ")
        )
    };
    // A column's new value: what the rows carried; for one they did not
    // carry, the sink's (an existing key, not reset) or the default.
    let value = |column: &ColumnDef, keep: &str| {
        let name = quote_ident(&column.name);
        let otherwise = match &column.default_expr {
            Some(default) => format!("CASE WHEN m._sinkgate_reset THEN {default} ELSE {keep} END"),
            None => format!("CASE WHEN m._sinkgate_reset THEN NULL ELSE {keep} END"),
        };
        format!(
            "CASE WHEN {} = ANY (m.{OMITTED_COLUMN}) THEN {otherwise} ELSE m.{name} END",
            quote_literal(&column.name)
        )
    };
    let sets: Vec<String> = value_columns(sink)
        .map(|column| {
            let name = quote_ident(&column.name);
            format!("{name} = {}", value(column, &format!("t.{name}")))
        })
        .collect();
    let names: Vec<String> = sink.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let inserted_values: Vec<String> = sink
        .columns
        .iter()
        .map(|column| {
            let name = quote_ident(&column.name);
            if sink.key.contains(&column.name) {
                return format!("m.{name}");
            }
            match &column.default_expr {
                Some(default) => format!(
                    "CASE WHEN {} = ANY (m.{OMITTED_COLUMN}) THEN {default} ELSE m.{name} END",
                    quote_literal(&column.name)
                ),
                None => format!("m.{name}"),
            }
        })
        .collect();
    // An existing key is locked first and counts as done once locked: a
    // BEFORE UPDATE trigger that skips the row (returns NULL, as
    // suppress_redundant_updates_trigger does) leaves it as the sink
    // wants, and must not make the key look missing.
    let update = (!sets.is_empty()).then(|| {
        (
            format!(
                "WITH locked AS (
                     SELECT {returned} FROM {target} t JOIN {merged} m ON {same}
                     WHERE m._sinkgate_live AND NOT m._sinkgate_done
                     FOR NO KEY UPDATE OF t
                 )
                 UPDATE {merged} m SET _sinkgate_locked = true FROM locked t WHERE {same}",
                returned = returned.join(", "),
                same = same_key(sink, "m"),
            ),
            format!(
                "WITH written AS (
                     UPDATE {target} t SET {sets} FROM {merged} m
                     WHERE m._sinkgate_locked AND NOT m._sinkgate_done AND {same}
                     RETURNING 1
                 ), marked AS (
                     UPDATE {merged} SET _sinkgate_done = true
                     WHERE _sinkgate_locked AND NOT _sinkgate_done
                 )
                 SELECT count(*) FROM written",
                sets = sets.join(", "),
                same = same_key(sink, "m"),
            ),
        )
    });
    let insert = format!(
        "WITH written AS (
             INSERT INTO {target} AS t ({names}) SELECT {values} FROM {merged} m
             WHERE m._sinkgate_live AND NOT m._sinkgate_done
             ON CONFLICT ({key}) DO NOTHING
             RETURNING {returned}
         ), marked AS ({mark})
         SELECT count(*) FROM written",
        names = names.join(", "),
        values = inserted_values.join(", "),
        key = key.join(", "),
        returned = returned.join(", "),
        mark = mark_done("written"),
    );
    let mut written = 0u64;
    for _ in 0..MAX_ROUNDS {
        if let Some((lock, update)) = &update {
            sqlx::query(lock).execute(&mut *conn).await?;
            written += sqlx::query_scalar::<_, i64>(update)
                .fetch_one(&mut *conn)
                .await? as u64;
        }
        written += sqlx::query_scalar::<_, i64>(&insert)
            .fetch_one(&mut *conn)
            .await? as u64;
        let left: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT FROM {merged} WHERE _sinkgate_live AND NOT _sinkgate_done)"
        ))
        .fetch_one(&mut *conn)
        .await?;
        if !left {
            return Ok(written);
        }
        if update.is_none() {
            // Only key columns: a key someone else inserted is as it should be.
            return Ok(written);
        }
    }
    Err(sqlx::Error::Protocol(format!(
        "keys of {target} could not be written in {MAX_ROUNDS} rounds of the promotion: other writers kept deleting and inserting them, or a BEFORE INSERT trigger of the sink skips them (returns NULL); it is retried"
    )))
}
