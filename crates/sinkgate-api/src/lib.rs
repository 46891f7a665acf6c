//! The JSON shapes of sinkgate's API: what processors and operators send and
//! receive.
//!
//! These types are the API's contract (the OpenAPI document is generated
//! from them). They live in a crate of their own so that the server (handlers and
//! OpenAPI document), the Rust client and the command-line client share one
//! definition without the client depending on the server. Requests deny unknown fields so that a typo is a 422, not a
//! silently ignored setting.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// Gives a unit enum its one table of names: `as_str`, `parse` and `ALL`
/// come from it, and serde, the database (`sqlx`, as `text`) and the
/// OpenAPI document use the same spelling (checked by a unit test below).
macro_rules! names {
    ($kind:ident { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl $kind {
            /// Every value, in declaration order.
            pub const ALL: &'static [$kind] = &[$($kind::$variant),+];

            /// The name on the wire and in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($kind::$variant => $name),+
                }
            }

            /// The value of a name; `None` for anything else.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($name => Some($kind::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $kind {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(self.as_str())
            }
        }
    };
}

/// How promoted rows reach the sink table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(type_name = "text"))]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "sqlx", sqlx(rename_all = "lowercase"))]
pub enum SinkMode {
    /// Plain `INSERT`: every staged row becomes a sink row.
    Append,
    /// `INSERT … ON CONFLICT (key) DO UPDATE`, last write wins per key. A
    /// row with `"_sinkgate_op": "delete"` and only the key columns is a
    /// delete by key (a tombstone): the last operation on a key wins,
    /// whether an upsert or a delete.
    Upsert,
    /// `INSERT … ON CONFLICT (key) DO NOTHING`: the first write of a key
    /// wins, within a checkpoint (the earliest staged row) and across them
    /// (a row already in the sink, whoever wrote it, stays as it is). For
    /// sinks where a trigger or a later process owns some columns.
    #[serde(rename = "first_write_wins")]
    #[cfg_attr(feature = "sqlx", sqlx(rename = "first_write_wins"))]
    FirstWriteWins,
}

names!(SinkMode {
    Append = "append",
    Upsert = "upsert",
    FirstWriteWins = "first_write_wins",
});

/// The user's table that committed rows land in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"table": "word_counts", "mode": "upsert", "key": ["word"]}))]
pub struct SinkSpec {
    /// `table` or `schema.table` (unquoted names, matched exactly).
    pub table: String,
    pub mode: SinkMode,
    /// Key columns for the keyed modes (upsert, first_write_wins): exactly
    /// the key columns of a unique
    /// index or constraint that is not partial, deferrable or on
    /// expressions, and every one NOT NULL.
    #[serde(default)]
    pub key: Vec<String>,
    /// What a commit does with a row the sink refuses (a constraint, a
    /// trigger): `block` (default) keeps the checkpoint decided but
    /// unpromoted until an operator fixes the sink; `dead_letter` promotes
    /// the other rows and records the refused ones, with the database's
    /// error, at `GET /v1/jobs/{job}/dead-letters`.
    #[serde(default)]
    pub on_promotion_error: OnPromotionError,
    /// Upsert only: a row updates only the columns it carries and leaves
    /// the sink's other columns as they are (several rows of one key in a
    /// checkpoint are merged, the last value of each column winning). A row
    /// whose key is new gets the defaults of the columns it omits. Default
    /// false: every non-key column is overwritten, an omitted one with its
    /// default.
    #[serde(default)]
    pub partial_updates: bool,
}

/// One named output of a job: a sink table with its own mode and key.
/// Every output of a job changes in the one transaction that commits a
/// checkpoint. Its fields repeat [`SinkSpec`]'s rather than flatten it:
/// serde's `flatten` cannot be combined with `deny_unknown_fields`, and a
/// misspelt setting must be a 422, not ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "counts", "table": "word_counts", "mode": "upsert", "key": ["word"]}))]
pub struct OutputSpec {
    /// The output's name, which writes give in `output`: 1–48 characters of
    /// a-z, 0-9, '-', '_', starting with a letter or digit.
    pub name: String,
    /// `table` or `schema.table` (unquoted names, matched exactly).
    pub table: String,
    pub mode: SinkMode,
    /// Key columns for the keyed modes (see `SinkSpec.key`).
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default)]
    pub on_promotion_error: OnPromotionError,
    /// Upsert only (see `SinkSpec.partial_updates`).
    #[serde(default)]
    pub partial_updates: bool,
}

impl OutputSpec {
    /// The output of a job registered with one `sink`.
    pub fn default_output(sink: &SinkSpec) -> OutputSpec {
        OutputSpec {
            name: DEFAULT_OUTPUT.to_owned(),
            table: sink.table.clone(),
            mode: sink.mode,
            key: sink.key.clone(),
            on_promotion_error: sink.on_promotion_error,
            partial_updates: sink.partial_updates,
        }
    }

    /// The sink part of this output.
    pub fn sink(&self) -> SinkSpec {
        SinkSpec {
            table: self.table.clone(),
            mode: self.mode,
            key: self.key.clone(),
            on_promotion_error: self.on_promotion_error,
            partial_updates: self.partial_updates,
        }
    }
}

/// The name of the one output of a job registered with `sink`.
pub const DEFAULT_OUTPUT: &str = "default";

/// The field of a row that makes it a delete by key (upsert outputs):
/// `"_sinkgate_op": "delete"`; `"upsert"` (or no field) is an upsert.
pub const OP_FIELD: &str = "_sinkgate_op";

/// A job's output as registered, with the columns found in its table.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"name": "counts", "table": "public.word_counts", "mode": "upsert", "key": ["word"],
    "on_promotion_error": "block", "partial_updates": false,
    "columns": [{"name": "word", "data_type": "text", "nullable": false, "has_default": false},
                {"name": "n", "data_type": "bigint", "nullable": false, "has_default": false}]}))]
pub struct Output {
    pub name: String,
    pub table: String,
    pub mode: SinkMode,
    pub key: Vec<String>,
    pub on_promotion_error: OnPromotionError,
    pub partial_updates: bool,
    pub columns: Vec<SinkColumn>,
}

/// What a commit does with a row the sink refuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(type_name = "text"))]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "sqlx", sqlx(rename_all = "snake_case"))]
pub enum OnPromotionError {
    /// Keep the checkpoint decided and retry its promotion until the sink
    /// is fixed; `/attempts` and `/recovery` answer `promotion-blocked`.
    #[default]
    Block,
    /// Promote every other row; record the refused ones as dead letters.
    DeadLetter,
}

names!(OnPromotionError {
    Block = "block",
    DeadLetter = "dead_letter",
});

/// Checkpoint settings as sent; every field is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointingSpec {
    /// Trigger a checkpoint every this many ms; absent or null: only explicit triggers.
    pub interval_ms: Option<u64>,
    /// A pending checkpoint older than this is aborted with reason `timeout` (default 600000).
    pub timeout_ms: Option<u64>,
    /// Least time between a checkpoint's decision and the next trigger (default 0).
    pub min_pause_ms: Option<u64>,
    /// Most checkpoints pending at once (default 1).
    pub max_concurrent: Option<u32>,
    /// How many decided checkpoints keep their ack details (default 10).
    pub retained: Option<u32>,
}

/// Checkpoint settings in effect (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointingSettings {
    pub interval_ms: Option<u64>,
    pub timeout_ms: u64,
    pub min_pause_ms: u64,
    pub max_concurrent: u32,
    pub retained: u32,
}

/// `PUT /v1/jobs/{job}` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "tasks": ["task-0", "task-1"],
    "sink": {"table": "word_counts", "mode": "upsert", "key": ["word"]},
    "checkpointing": {"interval_ms": 60000, "timeout_ms": 600000, "min_pause_ms": 0, "max_concurrent": 1, "retained": 10}
}))]
pub struct JobSpec {
    /// The job's task ids; every task acks every checkpoint.
    pub tasks: Vec<String>,
    /// The job's one sink (its output is named `default`). Give either
    /// `sink` or `outputs`.
    #[serde(default)]
    pub sink: Option<SinkSpec>,
    /// Several named outputs, committed together: a reader never sees one
    /// output's rows of a checkpoint without the others'. Promoted in this
    /// order. Give either `sink` or `outputs`.
    #[serde(default)]
    pub outputs: Option<Vec<OutputSpec>>,
    #[serde(default)]
    pub checkpointing: Option<CheckpointingSpec>,
}

/// One writable column of the sink table, as found at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SinkColumn {
    pub name: String,
    /// PostgreSQL type, as `format_type` prints it (e.g. `bigint`, `character varying(20)`).
    pub data_type: String,
    pub nullable: bool,
    /// Whether the column has a default (applied when a row omits it or sends null).
    pub has_default: bool,
}

/// A registered job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "job_id": "word-count", "tasks": ["task-0", "task-1"],
    "sink": {"table": "public.word_counts", "mode": "upsert", "key": ["word"]},
    "checkpointing": {"interval_ms": 10000, "timeout_ms": 600000, "min_pause_ms": 0, "max_concurrent": 1, "retained": 10},
    "epoch": 3, "last_decided_checkpoint": 41, "last_committed_checkpoint": 41, "pending_checkpoints": [42],
    "sink_columns": [{"name": "word", "data_type": "text", "nullable": false, "has_default": false},
                     {"name": "n", "data_type": "bigint", "nullable": false, "has_default": false}],
    "created_at": "2026-11-25T09:00:00Z", "updated_at": "2026-11-25T10:00:00Z"
}))]
pub struct Job {
    pub job_id: String,
    pub tasks: Vec<String>,
    /// The job's sink when it has one output named `default` (registered
    /// with `sink`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSpec>,
    /// Every output, in promotion order (one, named `default`, for a job
    /// registered with `sink`).
    #[serde(default)]
    pub outputs: Vec<Output>,
    pub checkpointing: CheckpointingSettings,
    /// Current epoch; 0 until the first `POST /attempts`.
    pub epoch: i64,
    pub last_decided_checkpoint: Option<i64>,
    pub last_committed_checkpoint: Option<i64>,
    pub pending_checkpoints: Vec<i64>,
    /// The columns of `sink` (empty without it: see each output's
    /// `columns`).
    pub sink_columns: Vec<SinkColumn>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/jobs` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"jobs": [{
    "job_id": "word-count", "tasks": ["task-0", "task-1"],
    "sink": {"table": "public.word_counts", "mode": "upsert", "key": ["word"]},
    "checkpointing": {"interval_ms": 10000, "timeout_ms": 600000, "min_pause_ms": 0, "max_concurrent": 1, "retained": 10},
    "epoch": 3, "last_decided_checkpoint": 41, "last_committed_checkpoint": 41, "pending_checkpoints": [42],
    "sink_columns": [{"name": "word", "data_type": "text", "nullable": false, "has_default": false},
                     {"name": "n", "data_type": "bigint", "nullable": false, "has_default": false}],
    "created_at": "2026-11-25T09:00:00Z", "updated_at": "2026-11-25T10:00:00Z"
}]}))]
pub struct JobList {
    pub jobs: Vec<Job>,
}

/// What a task needs to restore, recorded with its ack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"inline": {"any": "json"},
    "stored": {"chunks": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"], "size_bytes": 4},
    "objects": [{"uri": "s3://bucket/job/sst-17", "size_bytes": 1048576, "checksum": "sha256:..."}]}))]
pub struct StateHandle {
    /// A small JSON value, stored as is (size limited by the service's configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<Value>,
    /// A reference to state stored elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalState>,
    /// State in sinkgate's own store: the chunks uploaded with
    /// `PUT /v1/jobs/{job}/state/chunks/{sha256}`, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredState>,
    /// Objects in the task's own store that this state uses, some perhaps
    /// shared with earlier checkpoints; sinkgate tracks which retained
    /// checkpoints reference each (`GET /v1/jobs/{job}/state/objects/unreferenced`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ExternalState>,
}

/// State in sinkgate's state store: its chunks, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"chunks": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"], "size_bytes": 4}))]
pub struct StoredState {
    /// SHA-256 of each chunk, lowercase hex, in the order they make up the state.
    pub chunks: Vec<String>,
    /// The state's size: the sum of its chunks' sizes.
    pub size_bytes: u64,
}

/// `POST /v1/jobs/{job}/state/chunks/missing` body and answer: chunk ids
/// (SHA-256, lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"chunks": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]}))]
pub struct ChunkList {
    pub chunks: Vec<String>,
}

/// `PUT /v1/jobs/{job}/state/chunks/{sha256}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "size_bytes": 4, "created": true}))]
pub struct StoredChunk {
    pub sha256: String,
    pub size_bytes: u64,
    /// False when the store held this chunk already.
    pub created: bool,
}

/// `GET /v1/jobs/{job}/state/objects/unreferenced` answer, and
/// `POST /v1/jobs/{job}/state/objects/released` body: external objects by URI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"uris": ["s3://bucket/job/sst-3"]}))]
pub struct ObjectList {
    pub uris: Vec<String>,
}

/// State stored outside sinkgate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalState {
    pub uri: String,
    pub size_bytes: u64,
    pub checksum: String,
}

/// One task's part of the recovery point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskRecovery {
    /// Source partition → next offset to read.
    pub offsets: BTreeMap<String, i64>,
    pub state: Option<StateHandle>,
}

/// Where processors resume: the latest decided checkpoint.
///
/// Everything staged up to it is in the sink (or will be: a decided checkpoint
/// is promoted before any new one, and `/attempts` rolls it forward first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "checkpoint_id": 41, "epoch": 2, "status": "committed",
    "tasks": {"task-0": {"offsets": {"0": 5000, "2": 4100}, "state": {"inline": {"words": 17}}},
              "task-1": {"offsets": {"1": 4900, "3": 5100}, "state": null}},
    "offsets": {"0": 5000, "1": 4900, "2": 4100, "3": 5100}
}))]
pub struct Recovery {
    /// Null before the first checkpoint is decided: start from the beginning.
    pub checkpoint_id: Option<i64>,
    /// The epoch in which that checkpoint was triggered.
    pub epoch: Option<i64>,
    /// `completed` (decided, promotion pending) or `committed`; null before the first.
    pub status: Option<CheckpointStatus>,
    /// Per task of that checkpoint: offsets and state handle.
    pub tasks: BTreeMap<String, TaskRecovery>,
    /// Every source partition ever committed → its next offset.
    pub offsets: BTreeMap<String, i64>,
}

/// `POST /v1/jobs/{job}/attempts` body (may be empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"from_checkpoint": 41}))]
pub struct AttemptRequest {
    /// Restart from this savepoint or retained checkpoint instead of the
    /// last decided one. Only for jobs whose every output is upsert (their
    /// replays converge); refused (409) for append and first_write_wins
    /// outputs, whose promoted rows cannot be taken back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_checkpoint: Option<i64>,
}

/// `POST /v1/jobs/{job}/savepoints` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"label": "before-upgrade-2.4"}))]
pub struct SavepointRequest {
    /// A name for it, unique in the job (1–200 characters).
    pub label: String,
    /// A decided checkpoint whose acks are still retained (default: the
    /// last decided one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<i64>,
}

/// A savepoint: a decided checkpoint kept, with its acks, state and
/// offsets, until deleted (exempt from `retained`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"checkpoint_id": 41, "label": "before-upgrade-2.4", "created_at": "2026-11-25T10:00:00Z"}))]
pub struct Savepoint {
    pub checkpoint_id: i64,
    pub label: String,
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/jobs/{job}/savepoints` answer, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"savepoints": [{"checkpoint_id": 41, "label": "before-upgrade-2.4", "created_at": "2026-11-25T10:00:00Z"}]}))]
pub struct SavepointList {
    pub savepoints: Vec<Savepoint>,
}

/// `POST /v1/jobs/{job}/attempts` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "epoch": 4,
    "recovery": {"checkpoint_id": 41, "epoch": 3, "status": "committed",
                 "tasks": {"task-0": {"offsets": {"0": 5000}, "state": {"inline": {"words": 17}}},
                           "task-1": {"offsets": {"1": 4900}, "state": null}},
                 "offsets": {"0": 5000, "1": 4900}},
    "aborted_checkpoints": [42], "rolled_forward_checkpoints": []
}))]
pub struct Attempt {
    /// The new epoch: send it with every write, trigger, ack, and decline.
    /// Higher than every earlier epoch of this job (and of any job: epochs
    /// come from one sequence, so they need not be consecutive).
    pub epoch: i64,
    pub recovery: Recovery,
    /// Checkpoints of older epochs aborted by this attempt.
    pub aborted_checkpoints: Vec<i64>,
    /// Checkpoints decided before the crash and promoted by this attempt.
    pub rolled_forward_checkpoints: Vec<i64>,
}

/// Lifecycle of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(type_name = "text"))]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "sqlx", sqlx(rename_all = "lowercase"))]
pub enum CheckpointStatus {
    /// Triggered; waiting for acks.
    Pending,
    /// Every task acked: the decision is durable; promotion pending.
    Completed,
    /// Staged rows promoted into the sink.
    Committed,
    /// Timed out, declined, subsumed, or fenced by a new epoch.
    Aborted,
}

names!(CheckpointStatus {
    Pending = "pending",
    Completed = "completed",
    Committed = "committed",
    Aborted = "aborted",
});

/// Who triggered a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(type_name = "text"))]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "sqlx", sqlx(rename_all = "lowercase"))]
pub enum TriggerKind {
    /// `POST /v1/jobs/{job}/checkpoints`.
    Manual,
    /// The scheduler, every `interval_ms`.
    Interval,
}

names!(TriggerKind {
    Manual = "manual",
    Interval = "interval",
});

/// `POST /v1/jobs/{job}/checkpoints` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"epoch": 3}))]
pub struct TriggerRequest {
    pub epoch: i64,
}

/// A checkpoint with its timing and volume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "checkpoint_id": 42, "epoch": 3, "status": "committed", "trigger": "manual",
    "acked_tasks": 2, "total_tasks": 2,
    "triggered_at": "2026-11-25T10:00:00Z", "decided_at": "2026-11-25T10:00:01Z",
    "committed_at": "2026-11-25T10:00:01.2Z", "aborted_at": null, "failure_reason": null,
    "decide_ms": 1000.0, "commit_ms": 200.0, "staged_rows": 1000, "staged_bytes": 40000,
    "promoted_rows": 1000, "promotion_ms": 180.5, "promotion_error": null
}))]
pub struct Checkpoint {
    pub checkpoint_id: i64,
    /// Epoch in which it was triggered.
    pub epoch: i64,
    pub status: CheckpointStatus,
    pub trigger: TriggerKind,
    pub acked_tasks: i32,
    pub total_tasks: i32,
    pub triggered_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub committed_at: Option<DateTime<Utc>>,
    pub aborted_at: Option<DateTime<Utc>>,
    /// Why it was aborted: `timeout`, `declined by <task>: <reason>`, `subsumed by <id>`, `fenced by epoch <n>`.
    pub failure_reason: Option<String>,
    /// Trigger → decision, in ms.
    pub decide_ms: Option<f64>,
    /// Decision → commit, in ms.
    pub commit_ms: Option<f64>,
    /// Rows and bytes the tasks staged into this checkpoint (sealed by their acks of it).
    pub staged_rows: i64,
    pub staged_bytes: i64,
    /// Rows moved into the sink by its promotion (including rows of aborted checkpoints before it).
    /// One promotion can commit several decided checkpoints (after a blocked one): the newest
    /// reports all the rows it moved, the older ones 0.
    pub promoted_rows: Option<i64>,
    /// `promoted_rows` by output name (rows inserted, updated or deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_outputs: Option<BTreeMap<String, i64>>,
    pub promotion_ms: Option<f64>,
    /// The last promotion failure, while it is `completed` and retried.
    pub promotion_error: Option<String>,
}

/// `GET /v1/jobs/{job}/checkpoints` answer, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"checkpoints": [{"checkpoint_id": 42, "epoch": 3, "status": "committed", "trigger": "interval",
    "acked_tasks": 2, "total_tasks": 2,
    "triggered_at": "2026-11-25T10:00:00Z", "decided_at": "2026-11-25T10:00:01Z",
    "committed_at": "2026-11-25T10:00:01.2Z", "aborted_at": null, "failure_reason": null,
    "decide_ms": 1000.0, "commit_ms": 200.0, "staged_rows": 1000, "staged_bytes": 40000,
    "promoted_rows": 1000, "promotion_ms": 180.5, "promotion_error": null}]}))]
pub struct CheckpointList {
    pub checkpoints: Vec<Checkpoint>,
}

/// History filters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CheckpointListQuery {
    /// At most this many (1–1000, default 100).
    pub limit: Option<i64>,
    /// Only checkpoints with a smaller id (paging).
    pub before: Option<i64>,
    /// Only checkpoints in this status.
    pub status: Option<CheckpointStatus>,
}

/// One task's part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskAck {
    pub task_id: String,
    pub acked: bool,
    pub acked_at: Option<DateTime<Utc>>,
    pub offsets: Option<BTreeMap<String, i64>>,
    pub state: Option<StateHandle>,
    /// Rows and bytes this task staged into the checkpoint.
    pub staged_rows: i64,
    pub staged_bytes: i64,
}

/// `GET /v1/jobs/{job}/checkpoints/{id}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "checkpoint_id": 42, "epoch": 3, "status": "committed", "trigger": "interval",
    "acked_tasks": 2, "total_tasks": 2,
    "triggered_at": "2026-11-25T10:00:00Z", "decided_at": "2026-11-25T10:00:01Z",
    "committed_at": "2026-11-25T10:00:01.2Z", "aborted_at": null, "failure_reason": null,
    "decide_ms": 1000.0, "commit_ms": 200.0, "staged_rows": 1000, "staged_bytes": 40000,
    "promoted_rows": 1000, "promotion_ms": 180.5, "promotion_error": null,
    "acks": [{"task_id": "task-0", "acked": true, "acked_at": "2026-11-25T10:00:00.4Z", "offsets": {"0": 5000},
              "state": {"inline": {"words": 17}}, "staged_rows": 600, "staged_bytes": 24000},
             {"task_id": "task-1", "acked": true, "acked_at": "2026-11-25T10:00:01Z", "offsets": {"1": 4900},
              "state": null, "staged_rows": 400, "staged_bytes": 16000}]
}))]
pub struct CheckpointDetails {
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
    /// Every task of the checkpoint, acked or not. Ack details of checkpoints
    /// older than the `retained` most recent decided ones are pruned
    /// (`acked` stays true, offsets and state become null).
    pub acks: Vec<TaskAck>,
}

/// `GET /v1/jobs/{job}/checkpoints/pending` parameters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PendingQuery {
    /// Only a checkpoint with a larger id (default: any).
    pub after: Option<i64>,
    /// Wait up to this long for one to be triggered (0–60000, default 0).
    pub wait_ms: Option<u64>,
}

/// A pending checkpoint, as barrier discovery reports it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"checkpoint_id": 43, "epoch": 3, "triggered_at": "2026-11-25T10:00:10Z"}))]
pub struct PendingCheckpoint {
    pub checkpoint_id: i64,
    pub epoch: i64,
    pub triggered_at: DateTime<Utc>,
}

/// `POST /v1/jobs/{job}/checkpoints/{id}/acks` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "task_id": "task-0", "epoch": 3, "offsets": {"0": 5200, "2": 4300},
    "state": {"inline": {"any": "json"}, "external": {"uri": "s3://b/k", "size_bytes": 10, "checksum": "sha256:..."}}
}))]
pub struct AckRequest {
    pub task_id: String,
    pub epoch: i64,
    /// Source partition → next offset to read (non-negative).
    #[serde(default)]
    pub offsets: BTreeMap<String, i64>,
    #[serde(default)]
    pub state: Option<StateHandle>,
}

/// Most acks one batch request carries.
pub const MAX_BATCH_ACKS: usize = 1024;

/// `POST /acks/batch` body: the acks of several tasks of one process,
/// recorded in one transaction, all or none.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"acks": [
    {"task_id": "task-0", "epoch": 3, "offsets": {"0": 5200}},
    {"task_id": "task-1", "epoch": 3, "offsets": {"1": 4300}}
]}))]
pub struct AckBatchRequest {
    /// One ack per task (at most 1024, each task once); each is checked as
    /// a single ack would be, and a refused one is named `acks[i]`.
    pub acks: Vec<AckRequest>,
}

/// When the ack that completes a checkpoint answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromoteMode {
    /// After the decision and the promotion (`committed`, or `completed`
    /// when the promotion is blocked): the rows are visible.
    #[default]
    Inline,
    /// Once the ack is recorded (`pending`, with `acked_tasks` equal to
    /// `total_tasks` when it completed the set); the decision and
    /// promotion follow in the background. The task may go on writing at
    /// once, so the next checkpoint's staging overlaps this one's
    /// promotion.
    Background,
}

/// Query of the ack endpoints.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AckParams {
    /// `inline` (default): the completing ack answers after the promotion;
    /// `background`: it answers once recorded.
    #[param(inline)]
    pub promote: Option<PromoteMode>,
}

/// `POST /acks` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"checkpoint_id": 42, "status": "committed", "acked_tasks": 2, "total_tasks": 2}))]
pub struct AckResult {
    pub checkpoint_id: i64,
    /// The checkpoint's status after this ack.
    pub status: CheckpointStatus,
    pub acked_tasks: i32,
    pub total_tasks: i32,
}

/// `POST /declines` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"task_id": "task-1", "epoch": 3, "reason": "state backend unavailable"}))]
pub struct DeclineRequest {
    pub task_id: String,
    pub epoch: i64,
    #[serde(default)]
    pub reason: String,
}

/// `POST /v1/jobs/{job}/checkpoints/{id}/abort` body (operators).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "task-3 is stuck; restarting the job"}))]
pub struct AbortRequest {
    /// Why, for the checkpoint's `failure_reason`.
    #[serde(default)]
    pub reason: String,
}

/// `POST /v1/jobs/{job}/writes` JSON body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"task_id": "task-0", "epoch": 3, "batch_id": "task-0-3-17", "rows": [{"word": "hello", "n": 2}]}))]
pub struct WriteRequest {
    pub task_id: String,
    pub epoch: i64,
    /// Retry key: the same batch id from the same task in one epoch is staged once.
    pub batch_id: String,
    /// The output the rows go to; may be left out when the job has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Rows as objects, column → value. (Declared as maps of any value, so
    /// that generated clients type a row as such, not as an empty object.)
    #[schema(value_type = Vec<BTreeMap<String, Value>>)]
    pub rows: Vec<Map<String, Value>>,
}

/// `POST /writes` query parameters for an NDJSON body.
/// `POST /v1/jobs/{job}/promotions` answer: what the promotion did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"checkpoint_id": 42, "promoted_rows": 1000, "dead_lettered_rows": 1}))]
pub struct PromotionResult {
    /// The checkpoint now committed (the last committed one when nothing
    /// was waiting; null before any).
    pub checkpoint_id: Option<i64>,
    pub promoted_rows: i64,
    /// Rows sent to the dead-letter table (policy `dead_letter`).
    pub dead_lettered_rows: i64,
}

/// A row that a promotion kept out of the sink, with the database's error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"dead_letter_id": 7, "checkpoint_id": 42, "output": "default", "task_id": "task-0",
    "row": {"id": 17, "word": "hello"}, "error": "duplicate key value violates unique constraint \"events_pkey\"",
    "sqlstate": "23505", "created_at": "2026-11-25T10:00:00Z"}))]
pub struct DeadLetter {
    pub dead_letter_id: i64,
    pub checkpoint_id: i64,
    /// The output whose sink refused the row.
    pub output: String,
    pub task_id: String,
    /// The row as staged: the columns it sent (omitted ones left out).
    #[schema(value_type = BTreeMap<String, Value>)]
    pub row: serde_json::Value,
    pub error: String,
    /// PostgreSQL's SQLSTATE of the error.
    pub sqlstate: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/jobs/{job}/dead-letters` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"dead_letters": [{"dead_letter_id": 7, "checkpoint_id": 42, "output": "default", "task_id": "task-0",
    "row": {"id": 17, "word": "hello"}, "error": "duplicate key value violates unique constraint \"events_pkey\"",
    "sqlstate": "23505", "created_at": "2026-11-25T10:00:00Z"}]}))]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetter>,
}

/// `GET /v1/jobs/{job}/dead-letters` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Only dead letters with a larger id (paging).
    pub after: Option<i64>,
    /// Only those of this checkpoint.
    pub checkpoint_id: Option<i64>,
    /// Only those of this output.
    pub output: Option<String>,
    /// At most this many (1–1000, default 100).
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    pub task_id: String,
    pub epoch: i64,
    pub batch_id: String,
    /// The output the rows go to; may be left out when the job has one.
    pub output: Option<String>,
}

/// `POST /writes` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"task_id": "task-0", "batch_id": "task-0-3-17", "epoch": 3, "checkpoint_id": 42, "staged_rows": 1, "staged_bytes": 9, "duplicate": false}))]
pub struct WriteResult {
    pub task_id: String,
    pub batch_id: String,
    pub epoch: i64,
    /// The checkpoint whose ack by this task seals these rows.
    pub checkpoint_id: i64,
    pub staged_rows: i64,
    /// Bytes of COPY text staged.
    pub staged_bytes: i64,
    /// True when this batch had been staged before; nothing was staged again.
    pub duplicate: bool,
}

/// `/readyz` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"database": true, "migrations": true}))]
pub struct Readiness {
    /// The database answers, as a primary (a standby takes no writes).
    pub database: bool,
    /// Every migration of this version is applied.
    pub migrations: bool,
}

/// An error answer (`application/problem+json`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:sinkgate:problem:fenced", "title": "Fenced epoch", "status": 409,
    "detail": "epoch 2 is fenced: the job's current epoch is 3", "current_epoch": 3,
    "request_id": "6f1c2a9e-3d4b-4c5a-9e8f-7a6b5c4d3e2f"
}))]
pub struct Problem {
    /// Stable identifier: `urn:sinkgate:problem:` followed by one of
    /// `not-found`, `fenced`, `checkpoint-aborted`,
    /// `unknown-task`, `row-rejected`, `offset-regression`, `batch-conflict`,
    /// `promotion-blocked`, `conflict`, `validation`, `malformed`,
    /// `unsupported-media-type`, `too-early`, `payload-too-large`,
    /// `body-timeout`, `unauthenticated`, `forbidden`, `overloaded`,
    /// `timeout`, `unavailable`, `state-corrupted`, `internal`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The offending request field (`validation`, `unknown-task`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// 1-based row number within the batch (`row-rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
    /// The offending column (`row-rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// The job's current epoch (`fenced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<i64>,
    /// The aborted checkpoint (`checkpoint-aborted`), or the decided one
    /// whose promotion is blocked (`promotion-blocked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<i64>,
    /// The database's error that blocks the promotion (`promotion-blocked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_error: Option<String>,
    /// The source partition (`offset-regression`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// The offset the ack fell below: committed, or acked before by this task (`offset-regression`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_offset: Option<i64>,
    /// How long to wait before retrying, in ms (`too-early`, `overloaded`, `timeout`, `unavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The request's id, as in the `x-request-id` header and the service's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Prefix of every problem `type`; the suffix is a [`ProblemKind`].
pub const PROBLEM_TYPE_PREFIX: &str = "urn:sinkgate:problem:";

impl Problem {
    /// The kind named by `type`; `None` for a type this version does not
    /// know (a newer server).
    pub fn kind(&self) -> Option<ProblemKind> {
        self.problem_type
            .strip_prefix(PROBLEM_TYPE_PREFIX)
            .and_then(ProblemKind::parse)
    }
}

/// What went wrong, as a client dispatches on it: the suffix of a problem's
/// `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    NotFound,
    /// The epoch is over: a newer attempt started (this instance is a
    /// zombie), or the database failed over since it began. Stop.
    Fenced,
    CheckpointAborted,
    UnknownTask,
    RowRejected,
    OffsetRegression,
    BatchConflict,
    PromotionBlocked,
    BodyTimeout,
    Unauthenticated,
    Forbidden,
    Conflict,
    Validation,
    TooEarly,
    PayloadTooLarge,
    Malformed,
    UnsupportedMediaType,
    Overloaded,
    Timeout,
    Unavailable,
    /// A stored state chunk no longer matches its SHA-256: it is refused,
    /// never served.
    StateCorrupted,
    Internal,
}

names!(ProblemKind {
    NotFound = "not-found",
    Fenced = "fenced",
    CheckpointAborted = "checkpoint-aborted",
    UnknownTask = "unknown-task",
    RowRejected = "row-rejected",
    OffsetRegression = "offset-regression",
    BatchConflict = "batch-conflict",
    PromotionBlocked = "promotion-blocked",
    BodyTimeout = "body-timeout",
    Unauthenticated = "unauthenticated",
    Forbidden = "forbidden",
    Conflict = "conflict",
    Validation = "validation",
    TooEarly = "too-early",
    PayloadTooLarge = "payload-too-large",
    Malformed = "malformed",
    UnsupportedMediaType = "unsupported-media-type",
    Overloaded = "overloaded",
    Timeout = "timeout",
    Unavailable = "unavailable",
    StateCorrupted = "state-corrupted",
    Internal = "internal",
});

/// `POST /v1/jobs/{job}/tokens` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// A note for humans (who holds it).
    #[serde(default)]
    pub label: String,
}

/// A newly issued token: the only time its secret is seen.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"token_id": "f8b824947217", "job_id": "word-count", "label": "team-a",
    "token": "sgt_f8b824947217_ce8f2a9d54454fff8a97a3a967427ed14ffae3ee64164b97b586018e0727445a",
    "created_at": "2026-11-25T10:00:00Z"}))]
pub struct IssuedToken {
    pub token_id: String,
    pub job_id: String,
    pub label: String,
    /// Send as `Authorization: Bearer <token>`. Not retrievable later.
    pub token: String,
    pub created_at: DateTime<Utc>,
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"token_id": "f8b824947217", "job_id": "word-count", "label": "team-a",
    "created_at": "2026-11-25T10:00:00Z", "revoked_at": null}))]
pub struct TokenInfo {
    pub token_id: String,
    pub job_id: String,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde's spelling of each value is the one table's.
    fn same_names<T: Serialize + Copy>(all: &[T], name: impl Fn(T) -> &'static str) {
        for &value in all {
            assert_eq!(serde_json::to_value(value).unwrap(), name(value));
        }
    }

    #[test]
    fn every_enum_has_one_spelling() {
        same_names(SinkMode::ALL, SinkMode::as_str);
        same_names(OnPromotionError::ALL, OnPromotionError::as_str);
        same_names(CheckpointStatus::ALL, CheckpointStatus::as_str);
        same_names(TriggerKind::ALL, TriggerKind::as_str);
        for kind in ProblemKind::ALL {
            assert_eq!(ProblemKind::parse(kind.as_str()), Some(*kind));
        }
        assert_eq!(CheckpointStatus::parse("Aborted"), None);
    }
}
