//! The two-phase-commit sink: staging (pre-commit), promotion (commit), and
//! abort of orphaned staged rows.
//!
//! # Staging layout
//!
//! Each output of a job has one staging table in the `sinkgate_staging` schema, with the
//! sink's writable columns plus five of sinkgate's own: the checkpoint tag
//! (the checkpoint whose ack by the writing task seals the row), the task,
//! the batch's sequence number and the row's index in its batch (together
//! they order rows for last-write-wins upserts, and never overflow), and the
//! names of the columns the row omitted (an omitted column gets its
//! default at promotion; an explicit `null` stays NULL), and whether the row
//! is a delete by key (upsert outputs). It has no indexes,
//! so `COPY` into it is as cheap as PostgreSQL allows.
//!
//! Staging tables are named after the output's internal numeric id
//! (`job_<n>`, partitions `job_<n>_<slot>`), never after user text, so no
//! job id or output name can name another's objects.
//!
//! An append output whose values the service checks completely itself
//! (see [`staging::checked_in_rust`]) stages a batch not as tuples but as
//! its COPY text, about 1 MiB per staging row ([`CHUNK_COLUMN`], the
//! columns it holds in [`CHUNK_COLUMNS_COLUMN`], those its rows omitted in
//! [`OMITTED_COLUMN`]), and promotion feeds that text to
//! `COPY` into the sink: PostgreSQL writes each row once as a tuple, into
//! the sink, with its multi-insert path. A chunk row lives in the same
//! ring, so commit, abort and truncation treat it as any staged row.
//!
//! The table is list-partitioned into a fixed ring of [`SLOTS`] partitions by
//! `tag % SLOTS`. The tags alive at any moment span (last committed, highest
//! triggered + 1], which is almost always a handful, so after a commit the
//! partitions holding the promoted tags hold nothing else and are emptied by
//! `TRUNCATE` (constant time, locks only that partition, concurrent `COPY`
//! into other partitions goes on). When the live span is wider than the
//! ring, promotion falls back to `DELETE` for that commit; correctness never
//! depends on the ring size. No DDL runs on the write path: the partitions
//! are created with the job.

pub mod encode;
pub mod partial;
pub mod promote;
pub mod schema;
pub mod staging;

/// Number of staging partitions per job (the ring).
pub const SLOTS: i64 = 16;

/// sinkgate's own staging columns. User columns with these names are refused.
pub const TAG_COLUMN: &str = "_sinkgate_checkpoint";
pub const TASK_COLUMN: &str = "_sinkgate_task";
pub const SEQ_COLUMN: &str = "_sinkgate_seq";
pub const ROW_COLUMN: &str = "_sinkgate_row";
pub const OMITTED_COLUMN: &str = "_sinkgate_omitted";
/// True for a delete by key (upsert outputs); NULL for an upsert.
pub const DELETE_COLUMN: &str = "_sinkgate_delete";

/// A chunk row's COPY text: the rows of (part of) one batch, for the
/// sink's columns (see [`staging`]). NULL in a row staged as a tuple.
pub const CHUNK_COLUMN: &str = "_sinkgate_chunk";
/// A chunk row's columns, by name, in the order of its text: what its
/// promotion's `COPY` names, whatever the sink's column order is by then.
pub const CHUNK_COLUMNS_COLUMN: &str = "_sinkgate_columns";

/// Every column sinkgate adds to staging, in COPY order after the sink's
/// (the chunk columns, set only by their own statement, are not among them).
pub const OWN_COLUMNS: [&str; 6] = [
    TAG_COLUMN,
    TASK_COLUMN,
    SEQ_COLUMN,
    ROW_COLUMN,
    OMITTED_COLUMN,
    DELETE_COLUMN,
];

/// Names the promotion statements give columns of their own, beside the
/// staging columns (partial updates).
pub const STATEMENT_COLUMNS: [&str; 6] = [
    "_sinkgate_position",
    "_sinkgate_reset_at",
    "_sinkgate_live",
    "_sinkgate_reset",
    "_sinkgate_locked",
    "_sinkgate_done",
];

/// Whether a sink column's name is one sinkgate uses itself (a staging
/// column, the delete field of a row, a promotion statement's column): such
/// a sink is refused at registration.
pub fn is_reserved(name: &str) -> bool {
    OWN_COLUMNS.contains(&name)
        || name == CHUNK_COLUMN
        || name == CHUNK_COLUMNS_COLUMN
        || STATEMENT_COLUMNS.contains(&name)
        || name == crate::model::OP_FIELD
}

/// Schema that holds every job's staging table.
pub const STAGING_SCHEMA: &str = "sinkgate_staging";

/// The quoted, qualified name of a job's staging table, from the job's
/// internal numeric id.
pub fn staging_table(staging_id: i64) -> String {
    crate::db::qualified(STAGING_SCHEMA, &format!("job_{staging_id}"))
}

/// The quoted, qualified name of one ring partition of a job's staging table.
pub fn staging_partition(staging_id: i64, slot: i64) -> String {
    crate::db::qualified(STAGING_SCHEMA, &format!("job_{staging_id}_{slot}"))
}
