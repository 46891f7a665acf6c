//! The two-phase-commit sink: staging (pre-commit), promotion (commit), and
//! abort of orphaned staged rows.
//!
//! # Staging layout
//!
//! Each job has one staging table in the `sinkgate_staging` schema, with the
//! sink's writable columns plus three of sinkgate's own: the checkpoint tag
//! (the checkpoint whose ack by the writing task seals the row), the task, and
//! a sequence that orders rows for last-write-wins upserts. It has no indexes,
//! so `COPY` into it is as cheap as PostgreSQL allows.
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
pub mod promote;
pub mod schema;
pub mod staging;

/// Number of staging partitions per job (the ring).
pub const SLOTS: i64 = 16;

/// sinkgate's own staging columns. User columns with these names are refused.
pub const TAG_COLUMN: &str = "_sinkgate_checkpoint";
pub const TASK_COLUMN: &str = "_sinkgate_task";
pub const SEQ_COLUMN: &str = "_sinkgate_seq";

/// Schema that holds every job's staging table.
pub const STAGING_SCHEMA: &str = "sinkgate_staging";

/// The quoted, qualified name of a job's staging table.
pub fn staging_table(job_id: &str) -> String {
    crate::db::qualified(STAGING_SCHEMA, job_id)
}

/// The quoted, qualified name of one ring partition of a job's staging table.
pub fn staging_partition(job_id: &str, slot: i64) -> String {
    crate::db::qualified(STAGING_SCHEMA, &format!("{job_id}__{slot}"))
}
