//! Commit and abort of staged rows.
//!
//! Promotion moves every staged row tagged in (last committed, N] into the
//! sink in the caller's transaction, the one that marks N `committed`, so the
//! rows and the status change become visible together or not at all.

use std::time::Instant;

use sqlx::PgConnection;

use super::schema::ColumnDef;
use super::{staging_partition, staging_table, SEQ_COLUMN, SLOTS, TAG_COLUMN};
use crate::db::{qualified, quote_ident};
use crate::model::SinkMode;

/// The sink as promotion needs it.
pub struct SinkTarget<'a> {
    pub job_id: &'a str,
    pub schema: &'a str,
    pub table: &'a str,
    pub mode: SinkMode,
    pub key: &'a [String],
    pub columns: &'a [ColumnDef],
}

/// What a promotion did.
#[derive(Debug, Clone, Copy)]
pub struct Promoted {
    pub rows: u64,
    pub millis: f64,
}

/// The ring slots that tags in (after, upto] occupy, as SQL literals.
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

/// Inserts the staged rows tagged in (after, upto] into the sink.
///
/// Errors (a sink constraint the staging table does not have, a dropped
/// column) are returned as is; the caller runs this under a savepoint.
pub async fn promote(
    conn: &mut PgConnection,
    sink: &SinkTarget<'_>,
    after: i64,
    upto: i64,
) -> Result<Promoted, sqlx::Error> {
    let started = Instant::now();
    let names: Vec<String> = sink.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = sink
        .columns
        .iter()
        .map(|column| {
            let name = quote_ident(&column.name);
            match &column.default_expr {
                Some(default) => format!("COALESCE(s.{name}, {default})"),
                None => format!("s.{name}"),
            }
        })
        .collect();
    let target = qualified(sink.schema, sink.table);
    let staging = staging_table(sink.job_id);
    let filter = tag_filter(after, upto);
    let statement = match sink.mode {
        SinkMode::Append => format!(
            "INSERT INTO {target} ({}) SELECT {} FROM {staging} s WHERE {filter}",
            names.join(", "),
            values.join(", ")
        ),
        SinkMode::Upsert => {
            let key: Vec<String> = sink.key.iter().map(|k| quote_ident(k)).collect();
            let updates: Vec<String> = sink
                .columns
                .iter()
                .filter(|column| !sink.key.contains(&column.name))
                .map(|column| {
                    let name = quote_ident(&column.name);
                    format!("{name} = EXCLUDED.{name}")
                })
                .collect();
            let on_conflict = if updates.is_empty() {
                "DO NOTHING".to_owned()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            };
            // Postgres refuses to update one row twice in one statement:
            // keep the last staged row per key (latest tag, then latest seq).
            format!(
                "INSERT INTO {target} ({names}) SELECT {values} FROM (
                    SELECT DISTINCT ON ({key}) * FROM {staging} WHERE {filter}
                    ORDER BY {key}, {TAG_COLUMN} DESC, {SEQ_COLUMN} DESC
                 ) s ON CONFLICT ({key}) {on_conflict}",
                names = names.join(", "),
                values = values.join(", "),
                key = key.join(", "),
            )
        }
    };
    let result = sqlx::query(&statement).execute(&mut *conn).await?;
    Ok(Promoted {
        rows: result.rows_affected(),
        millis: started.elapsed().as_secs_f64() * 1e3,
    })
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
    job_id: &str,
    tags: &[i64],
    after: i64,
    upto: i64,
    highest_live_tag: i64,
) -> Result<(), sqlx::Error> {
    if tags.is_empty() {
        return Ok(());
    }
    if highest_live_tag - after <= SLOTS {
        truncate_slots(conn, job_id, tags).await
    } else {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE {}",
            staging_table(job_id),
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
    job_id: &str,
    tags: &[i64],
) -> Result<(), sqlx::Error> {
    let mut slots: Vec<i64> = tags.iter().map(|tag| tag.rem_euclid(SLOTS)).collect();
    slots.sort_unstable();
    slots.dedup();
    let partitions: Vec<String> = slots
        .into_iter()
        .map(|slot| staging_partition(job_id, slot))
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
    job_id: &str,
    tags: &[i64],
    decided: i64,
    nothing_else_staged: bool,
) -> Result<(), sqlx::Error> {
    if tags.is_empty() {
        return Ok(());
    }
    if nothing_else_staged {
        truncate_slots(conn, job_id, tags).await
    } else {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE {TAG_COLUMN} > {decided}",
            staging_table(job_id)
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
