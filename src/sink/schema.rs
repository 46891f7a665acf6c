//! The sink table's shape, read from the catalog at job registration.
//!
//! sinkgate never creates or alters the sink. It checks that the table exists,
//! records its writable columns (the staging table and the COPY encoder are
//! built from them), and in the keyed modes that the key has a unique index that
//! `ON CONFLICT (key)` can use.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::db::quote_ident;
use crate::error::{Error, Result};
use crate::model::{OnPromotionError, SinkColumn, SinkMode, SinkSpec};

/// sinkgate's metadata tables (migrations), never a sink.
const OWN_TABLES: [&str; 12] = [
    "jobs",
    "tasks",
    "checkpoints",
    "acks",
    "committed_offsets",
    "batches",
    "ack_partitions",
    "job_tokens",
    "ack_floors",
    "dead_letters",
    "last_epoch_timeline",
    "_sqlx_migrations",
];

/// How values of a column are turned into COPY text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float,
    /// text, varchar, char, citext, name: JSON strings only.
    Text,
    Json,
    /// Any array type: JSON arrays become array literals.
    Array,
    /// Everything else (numeric, uuid, dates, times, inet, bytea, …): strings
    /// and numbers are passed through and PostgreSQL parses them.
    Other,
}

/// One writable column of the sink, with what promotion and encoding need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`: already quoted where needed.
    pub data_type: String,
    pub kind: ColumnKind,
    pub nullable: bool,
    /// The default expression (`pg_get_expr`), applied at promotion when the
    /// staged value is null.
    pub default_expr: Option<String>,
    /// The type is one of PostgreSQL's own base types (in `pg_catalog`, not
    /// a domain, enum or extension type that happens to share a name).
    /// Recorded since migration 0013; false for columns recorded before,
    /// until the job is put again.
    #[serde(default)]
    pub builtin: bool,
}

impl ColumnDef {
    pub fn public(&self) -> SinkColumn {
        SinkColumn {
            name: self.name.clone(),
            data_type: self.data_type.clone(),
            nullable: self.nullable,
            has_default: self.default_expr.is_some(),
        }
    }
}

/// The resolved sink: where it is and what it holds.
#[derive(Debug, Clone)]
pub struct SinkTable {
    pub schema: String,
    pub table: String,
    pub columns: Vec<ColumnDef>,
}

struct CatalogColumn {
    name: String,
    data_type: String,
    type_name: String,
    type_category: String,
    nullable: bool,
    default_expr: Option<String>,
    generated: bool,
    builtin: bool,
}

/// Looks the sink up and validates it against the spec. Errors name the
/// field under `at` (`sink`, or `outputs[2]` for a job's third output).
pub async fn resolve(conn: &mut PgConnection, spec: &SinkSpec, at: &str) -> Result<SinkTable> {
    resolve_sink(conn, spec).await.map_err(|error| match error {
        Error::Validation { field, detail } => Error::Validation {
            field: match field.strip_prefix("sink") {
                Some(rest) => format!("{at}{rest}"),
                None => field,
            },
            detail,
        },
        other => other,
    })
}

async fn resolve_sink(conn: &mut PgConnection, spec: &SinkSpec) -> Result<SinkTable> {
    if spec.partial_updates && spec.mode != SinkMode::Upsert {
        return Err(Error::validation(
            "sink.partial_updates",
            "partial updates are for mode \"upsert\"",
        ));
    }
    if spec.partial_updates && spec.on_promotion_error == OnPromotionError::DeadLetter {
        return Err(Error::validation(
            "sink.partial_updates",
            "partial updates cannot be combined with on_promotion_error \"dead_letter\" (a merged row has no one staged row to record); use \"block\"",
        ));
    }
    let (schema, table, oid) = locate(&mut *conn, &spec.table).await?;
    let columns = writable_columns(&mut *conn, oid).await?;
    if columns.is_empty() {
        return Err(Error::validation(
            "sink.table",
            format!("{schema}.{table} has no writable columns"),
        ));
    }
    match spec.mode {
        SinkMode::Append => {
            if !spec.key.is_empty() {
                return Err(Error::validation(
                    "sink.key",
                    "a key is only used in the keyed modes; remove it or use mode \"upsert\" or \"first_write_wins\"",
                ));
            }
        }
        SinkMode::Upsert | SinkMode::FirstWriteWins => {
            check_upsert_key(&mut *conn, oid, &columns, &spec.key).await?
        }
    }
    Ok(SinkTable {
        schema,
        table,
        columns,
    })
}

/// The sink named `table` or `schema.table` (the current schema when
/// none): an existing table (plain or partitioned) that is neither in the
/// staging schema nor one of sinkgate's own. Answers schema, name and oid.
async fn locate(
    conn: &mut PgConnection,
    name: &str,
) -> Result<(String, String, sqlx::postgres::types::Oid)> {
    let (schema, table) = match name.split_once('.') {
        Some((schema, table)) => (Some(schema.to_owned()), table.to_owned()),
        None => (None, name.to_owned()),
    };
    if table.is_empty() || schema.as_deref() == Some("") || table.contains('.') {
        return Err(Error::validation(
            "sink.table",
            format!("{name:?} is not `table` or `schema.table`"),
        ));
    }
    let schema = match schema {
        Some(schema) => schema,
        None => {
            sqlx::query_scalar!(r#"SELECT current_schema() AS "schema!""#)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    let relation = sqlx::query!(
        r#"SELECT c.oid, c.relkind::text AS "relkind!",
                  (c.relpersistence <> 'p'
                   OR EXISTS (SELECT FROM pg_partition_tree(c.oid) p JOIN pg_class part ON part.oid = p.relid
                              WHERE part.relpersistence <> 'p')) AS "unlogged!"
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = $1 AND c.relname = $2"#,
        schema,
        table
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| (row.oid, row.relkind, row.unlogged));
    let Some((oid, relkind, unlogged)) = relation else {
        return Err(Error::validation(
            "sink.table",
            format!("table {schema}.{table} does not exist (sinkgate never creates sink tables)"),
        ));
    };
    if relkind != "r" && relkind != "p" {
        return Err(Error::validation(
            "sink.table",
            format!("{schema}.{table} is not a table"),
        ));
    }
    if unlogged {
        // A crash or failover empties an unlogged table while the committed
        // offsets (logged) survive: the recovery point would claim rows that
        // are gone.
        return Err(Error::validation(
            "sink.table",
            format!("{schema}.{table} (or one of its partitions) is UNLOGGED: a database crash would empty it while its checkpoints stay committed; use a logged table (ALTER TABLE … SET LOGGED)"),
        ));
    }
    if schema == super::STAGING_SCHEMA {
        return Err(Error::validation(
            "sink.table",
            "the staging schema cannot be a sink",
        ));
    }
    // sinkgate's own metadata, as its queries resolve it: a job that could
    // insert into `job_tokens` could mint tokens for other jobs.
    let own_tables: Vec<String> = OWN_TABLES.iter().map(|name| (*name).to_owned()).collect();
    let own = sqlx::query_scalar!(
        r#"SELECT $1 = ANY (ARRAY(SELECT to_regclass(name)::oid FROM unnest($2::text[]) AS name)) AS "own!""#,
        oid,
        &own_tables
    )
    .fetch_one(&mut *conn)
    .await?;
    if own {
        return Err(Error::validation(
            "sink.table",
            format!("{schema}.{table} is one of sinkgate's own tables and cannot be a sink"),
        ));
    }
    Ok((schema, table, oid))
}

/// The columns rows may set, in table order: all but generated ones (and
/// identity `ALWAYS`), each with what encoding and promotion need.
async fn writable_columns(
    conn: &mut PgConnection,
    oid: sqlx::postgres::types::Oid,
) -> Result<Vec<ColumnDef>> {
    let catalog = sqlx::query_as!(
        CatalogColumn,
        r#"SELECT a.attname::text AS "name!",
                format_type(a.atttypid, a.atttypmod) AS "data_type!",
                t.typname::text AS "type_name!",
                t.typcategory::text AS "type_category!",
                NOT a.attnotnull AS "nullable!",
                CASE WHEN a.attidentity = 'd'
                     THEN format('nextval(%L::regclass)', pg_get_serial_sequence($1::oid::regclass::text, a.attname))
                     ELSE pg_get_expr(d.adbin, d.adrelid) END AS default_expr,
                (a.attgenerated <> '' OR a.attidentity = 'a') AS "generated!",
                (t.typnamespace = 'pg_catalog'::regnamespace AND t.typtype = 'b') AS "builtin!"
         FROM pg_attribute a
         JOIN pg_type t ON t.oid = a.atttypid
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum"#,
        oid
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut columns = Vec::new();
    for column in catalog {
        if column.generated {
            continue; // computed by PostgreSQL; rows may not set it
        }
        if super::is_reserved(&column.name) {
            return Err(Error::validation(
                "sink.table",
                format!(
                    "column {:?} has a name sinkgate uses itself (a staging column, the delete field, or a promotion statement's column)",
                    column.name
                ),
            ));
        }
        columns.push(ColumnDef {
            kind: column_kind(&column.type_category, &column.type_name),
            name: column.name,
            data_type: column.data_type,
            nullable: column.nullable,
            default_expr: column.default_expr,
            builtin: column.builtin,
        });
    }
    Ok(columns)
}

/// How a column's values are checked and encoded, by its type's category
/// and name (`pg_type.typcategory`, `typname`).
fn column_kind(category: &str, type_name: &str) -> ColumnKind {
    match (category, type_name) {
        ("A", _) => ColumnKind::Array,
        (_, "bool") => ColumnKind::Bool,
        (_, "int2") => ColumnKind::Int2,
        (_, "int4") => ColumnKind::Int4,
        (_, "int8") => ColumnKind::Int8,
        (_, "float4" | "float8") => ColumnKind::Float,
        (_, "json" | "jsonb") => ColumnKind::Json,
        (_, "text" | "varchar" | "bpchar" | "name" | "citext") => ColumnKind::Text,
        _ => ColumnKind::Other,
    }
}

/// An upsert key must be exactly the key columns of a unique index or
/// constraint that `ON CONFLICT` can use (valid, not partial, not on
/// expressions, not deferrable), and every key column NOT NULL: the staged
/// rows are reduced to one per key with `DISTINCT ON`, which would treat
/// NULLs as equal where the index does not.
async fn check_upsert_key(
    conn: &mut PgConnection,
    oid: sqlx::postgres::types::Oid,
    columns: &[ColumnDef],
    key: &[String],
) -> Result<()> {
    if key.is_empty() {
        return Err(Error::validation(
            "sink.key",
            "the keyed modes (upsert, first_write_wins) need the key columns",
        ));
    }
    for (index, name) in key.iter().enumerate() {
        let Some(column) = columns.iter().find(|column| &column.name == name) else {
            return Err(Error::validation(
                format!("sink.key[{index}]"),
                format!("{name:?} is not a writable column of the sink table"),
            ));
        };
        if key[..index].contains(name) {
            return Err(Error::validation(
                format!("sink.key[{index}]"),
                format!("{name:?} is listed twice"),
            ));
        }
        if column.nullable {
            return Err(Error::validation(
                format!("sink.key[{index}]"),
                format!("key column {name:?} is nullable: rows with a NULL key would never match each other in the unique index; make it NOT NULL (ALTER TABLE … ALTER COLUMN {name} SET NOT NULL)"),
            ));
        }
    }
    // DISTINCT ON groups by the staging column's collation, which is the
    // type's default: a key that compares case-insensitively in the sink
    // would keep two rows for what the index calls one key.
    let nondeterministic = sqlx::query_scalar!(
        r#"SELECT a.attname::text AS "name!" FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
           WHERE a.attrelid = $1 AND a.attname = ANY ($2) AND NOT c.collisdeterministic
           ORDER BY a.attnum LIMIT 1"#,
        oid,
        key as &[String]
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(name) = nondeterministic {
        let index = key.iter().position(|k| *k == name).unwrap_or(0);
        return Err(Error::validation(
            format!("sink.key[{index}]"),
            format!("key column {name:?} has a nondeterministic collation; keys need a deterministic one"),
        ));
    }
    // Key columns only (the first indnkeyatts), not INCLUDE columns.
    let unique_indexes: Vec<Vec<String>> = sqlx::query_scalar!(
        r#"SELECT array_agg(a.attname::text ORDER BY a.attname) AS "key!"
         FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid
              AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])
         WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indimmediate
           AND i.indpred IS NULL AND i.indexprs IS NULL
           AND NOT EXISTS (SELECT 1 FROM pg_collation c
                           WHERE c.oid = ANY (i.indcollation::oid[]) AND NOT c.collisdeterministic)
         GROUP BY i.indexrelid"#,
        oid
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut wanted: Vec<String> = key.to_vec();
    wanted.sort();
    if !unique_indexes.contains(&wanted) {
        return Err(Error::validation(
            "sink.key",
            format!(
                "no unique constraint or index has exactly ({}) as its key columns (partial, expression, deferrable, nondeterministic-collation and INCLUDE-only indexes do not count); the keyed modes need one for ON CONFLICT",
                key.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The staging table's columns: the sink's, then sinkgate's own.
fn staging_definition(columns: &[ColumnDef]) -> Vec<String> {
    let mut definition: Vec<String> = columns
        .iter()
        .map(|column| format!("{} {}", quote_ident(&column.name), staging_type(column)))
        .collect();
    definition.push(format!("{} bigint NOT NULL", super::TAG_COLUMN));
    definition.push(format!("{} text NOT NULL", super::TASK_COLUMN));
    definition.push(format!("{} bigint NOT NULL", super::SEQ_COLUMN));
    definition.push(format!("{} bigint NOT NULL", super::ROW_COLUMN));
    definition.push(format!("{} text[]", super::OMITTED_COLUMN));
    definition.push(format!("{} boolean", super::DELETE_COLUMN));
    definition.push(format!("{} bytea", super::CHUNK_COLUMN));
    definition.push(format!("{} text[]", super::CHUNK_COLUMNS_COLUMN));
    definition
}

/// A staging column has the sink column's type, so that COPY parses values
/// exactly as an INSERT would (domains included: their checks run at
/// staging, where a failure names the row).
fn staging_type(column: &ColumnDef) -> &str {
    &column.data_type
}

/// Creates a new job's staging table and its ring of partitions. Runs at
/// registration, never on the write path. Fails rather than replace an
/// existing table: a job never drops an object it did not create.
pub async fn create_staging(
    conn: &mut PgConnection,
    staging_id: i64,
    columns: &[ColumnDef],
) -> Result<()> {
    let parent = super::staging_table(staging_id);
    sqlx::query(&format!(
        "CREATE TABLE {parent} ({}) PARTITION BY LIST (({} % {}))",
        staging_definition(columns).join(", "),
        super::TAG_COLUMN,
        super::SLOTS
    ))
    .execute(&mut *conn)
    .await?;
    for slot in 0..super::SLOTS {
        sqlx::query(&format!(
            "CREATE TABLE {} PARTITION OF {parent} FOR VALUES IN ({slot})
             WITH (autovacuum_enabled = false)",
            super::staging_partition(staging_id, slot)
        ))
        .execute(&mut *conn)
        .await?;
    }
    // Chunks are already compact COPY text: compressing them costs more
    // than it saves (partitions follow the parent).
    sqlx::query(&format!(
        "ALTER TABLE {parent} ALTER COLUMN {} SET STORAGE EXTERNAL",
        super::CHUNK_COLUMN
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Brings a job's staging table in line with the sink's columns after an
/// `ALTER TABLE` of the sink, keeping every staged row: new columns are
/// added (staged rows did not send them, so they get the column's default),
/// dropped ones dropped, changed types converted. Refused (409, naming the
/// column) when a staged value cannot be converted, or when a column that
/// is gone (dropped, or renamed) still holds staged values.
pub async fn refresh_staging(
    conn: &mut PgConnection,
    staging_id: i64,
    old: &[ColumnDef],
    new: &[ColumnDef],
) -> Result<()> {
    let table = super::staging_table(staging_id);
    for column in old {
        if !new.iter().any(|n| n.name == column.name) {
            // A renamed column looks dropped: what staged rows sent for it
            // (a value, or an explicit null) would be lost.
            let holds_values: bool = sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM {table} WHERE NOT ({} = ANY (coalesce({}, '{{}}'))))",
                crate::db::quote_literal(&column.name),
                super::OMITTED_COLUMN
            ))
            .fetch_one(&mut *conn)
            .await?;
            if holds_values {
                return Err(Error::conflict(format!(
                    "column {:?} is gone from the sink (dropped or renamed) but staged rows sent values for it; put the column back, or let what is staged commit (or abort with a new attempt) first",
                    column.name
                )));
            }
            sqlx::query(&format!(
                "ALTER TABLE {table} DROP COLUMN {}",
                quote_ident(&column.name)
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    for column in new {
        let name = quote_ident(&column.name);
        match old.iter().find(|o| o.name == column.name) {
            None => {
                sqlx::query(&format!(
                    "ALTER TABLE {table} ADD COLUMN {name} {}",
                    staging_type(column)
                ))
                .execute(&mut *conn)
                .await?;
                // Rows staged before the column existed did not send it.
                sqlx::query(&format!(
                    "UPDATE {table} SET {omitted} = array_append(coalesce({omitted}, '{{}}'), {literal})",
                    omitted = super::OMITTED_COLUMN,
                    literal = crate::db::quote_literal(&column.name),
                ))
                .execute(&mut *conn)
                .await?;
            }
            Some(previous) if previous.data_type != column.data_type => {
                // Chunks hold the column's values as text of the old type:
                // staged as tuples first, they are converted with the rest.
                let in_chunks: bool = sqlx::query_scalar(&format!(
                    "SELECT EXISTS (SELECT 1 FROM {table} WHERE {literal} = ANY ({columns}))",
                    literal = crate::db::quote_literal(&column.name),
                    columns = super::CHUNK_COLUMNS_COLUMN,
                ))
                .fetch_one(&mut *conn)
                .await?;
                if in_chunks {
                    super::promote::chunks_to_tuples(&mut *conn, staging_id, None).await?;
                }
                let altered = convert_column(&mut *conn, &table, &name, staging_type(column)).await;
                if let Err(error) = altered {
                    if crate::sink::promote::is_row_error(&error) {
                        return Err(Error::conflict(format!(
                            "staged values of column {:?} cannot be converted to {}: {}; commit or abort what is staged first",
                            column.name,
                            column.data_type,
                            error.as_database_error().map(|db| db.message().to_owned()).unwrap_or_default()
                        )));
                    }
                    return Err(error.into());
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Converts a staging column to `ty` as an `INSERT` into the sink would
/// convert its values (an assignment cast: a value too long for
/// `varchar(n)` is an error, never cut short), and only where no such cast
/// exists (`text` to `integer`, say) with an explicit cast, which then
/// parses each value and fails on any it cannot.
async fn convert_column(
    conn: &mut PgConnection,
    table: &str,
    name: &str,
    ty: &str,
) -> std::result::Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut attempt = conn.begin().await?;
    let assigned = sqlx::query(&format!(
        "ALTER TABLE {table} ALTER COLUMN {name} TYPE {ty}"
    ))
    .execute(&mut *attempt)
    .await;
    match assigned {
        Ok(_) => attempt.commit().await,
        // 42804: no assignment cast from the old type.
        Err(error)
            if error
                .as_database_error()
                .and_then(|db| db.code())
                .as_deref()
                == Some("42804") =>
        {
            attempt.rollback().await?;
            sqlx::query(&format!(
                "ALTER TABLE {table} ALTER COLUMN {name} TYPE {ty} USING {name}::{ty}"
            ))
            .execute(&mut *conn)
            .await
            .map(|_| ())
        }
        Err(error) => Err(error),
    }
}

/// Drops a job's staging table (and partitions) if it exists.
pub async fn drop_staging(conn: &mut PgConnection, staging_id: i64) -> Result<()> {
    sqlx::query(&format!(
        "DROP TABLE IF EXISTS {}",
        super::staging_table(staging_id)
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
