//! The one error type of the protocol. Every variant has a stable problem
//! `type`; `http::problem` turns it into an RFC 9457 document.
//!
//! Coordinator and sink functions return these and never see HTTP; database
//! errors that are not the caller's fault become `Internal` and are logged,
//! never shown.

pub use crate::model::ProblemKind;

/// A protocol error: what went wrong, in terms a processor can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job, checkpoint, or other resource does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The request carries an epoch older than the job's current one: the
    /// sender is a zombie and must stop.
    #[error("epoch {sent} is fenced: the job's current epoch is {current}")]
    Fenced { sent: i64, current: i64 },

    /// The database failed over (its timeline moved) since the epoch began:
    /// what the old primary committed last may be missing. The processor
    /// must stop and start a new attempt.
    #[error("epoch {sent} began before the database failed over (timeline {epoch_timeline}, now {server_timeline}): what the old primary committed last may be missing; start a new attempt (POST /attempts), which resumes from what the new primary holds")]
    FencedByFailover {
        sent: i64,
        epoch_timeline: i64,
        server_timeline: i64,
    },

    /// The checkpoint was aborted; acks for it are refused.
    #[error("checkpoint {checkpoint_id} was aborted ({reason})")]
    CheckpointAborted { checkpoint_id: i64, reason: String },

    /// The task id is not one of the job's tasks.
    #[error("task {0:?} is not a task of this job")]
    UnknownTask(String),

    /// A staged row does not fit the sink table; nothing of its batch was staged.
    #[error("row {row}: {detail}")]
    RowRejected {
        /// 1-based row number within the batch.
        row: u64,
        column: Option<String>,
        detail: String,
    },

    /// A batch id that this task already used in this epoch, sent again
    /// with different rows.
    #[error("batch {batch_id:?} was already staged by this task in this epoch with different rows; a retry must resend the same rows, and new rows need a new batch id")]
    BatchConflict { batch_id: String },

    /// The last decided checkpoint's rows could not be promoted into the
    /// sink (job policy `block`): there is no recovery point to hand out
    /// until an operator fixes the sink.
    #[error("checkpoint {checkpoint_id} is decided but its rows cannot be promoted into the sink: {error}. Fix the sink (or its data), then retry with POST /v1/jobs/{{job}}/promotions (the scheduler also retries every few seconds); after an ALTER TABLE, PUT the job again to refresh its columns")]
    PromotionBlocked { checkpoint_id: i64, error: String },

    /// An ack reports an offset below the last committed one for a
    /// partition, or below an earlier ack of that partition in this epoch
    /// (by any task: a partition may move between tasks).
    #[error("partition {partition:?}: offset {offset} is below offset {committed}, already committed or acked for this partition in this epoch")]
    OffsetRegression {
        partition: String,
        offset: i64,
        committed: i64,
    },

    /// No valid credentials (401).
    #[error("{0}")]
    Unauthenticated(String),

    /// Valid credentials without the right to do this (403).
    #[error("{0}")]
    Forbidden(String),

    /// The request is well-formed but contradicts the current state.
    #[error("{0}")]
    Conflict(String),

    /// The request itself is invalid; `field` names the offending field.
    #[error("{detail}")]
    Validation { field: String, detail: String },

    /// Refused for now (e.g. `min_pause_ms`); retry after the given delay.
    #[error("{detail}")]
    TooEarly { detail: String, retry_after_ms: u64 },

    /// The body is not parseable JSON (or NDJSON framing).
    #[error("{0}")]
    Malformed(String),

    /// The body's media type is not one this endpoint takes.
    #[error("{0}")]
    UnsupportedMediaType(String),

    /// The request body stopped arriving, or arrived slower than allowed.
    /// Says which limit, with its value; nothing of the upload was staged.
    #[error("{0}; the upload was abandoned and nothing of it was staged")]
    BodyTimeout(String),

    /// The request body is larger than allowed.
    #[error("{0}")]
    PayloadTooLarge(String),

    /// Too many requests in flight: shed rather than queue without bound.
    #[error("the service is at its limit of requests in flight; retry shortly")]
    Overloaded,

    /// No answer within the request timeout. The work goes on and may still
    /// take effect, so the caller retries (writes and acks are idempotent).
    #[error("no answer within {0} ms; the request may still take effect: retry it (writes and acks are safe to repeat)")]
    Timeout(u64),

    /// The database cannot be reached right now.
    #[error("the database is unavailable, retry later")]
    Unavailable,

    /// A stored state chunk no longer matches its SHA-256.
    #[error("{0}")]
    StateCorrupted(String),

    /// The error of one item of a request that carries several (`acks[3]`):
    /// its problem names the item, and its `field` is prefixed with it.
    #[error("{item}: {error}")]
    Item { item: String, error: Box<Error> },

    /// Anything else: a bug or an unexpected database failure. Logged, not shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn validation(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Validation {
            field: field.into(),
            detail: detail.into(),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Error::NotFound(detail.into())
    }

    /// This error, as the error of item `item` (`acks[3]`) of a request.
    /// Errors that are not the item's (the database, the service) stay as
    /// they are.
    pub fn of_item(self, item: impl Into<String>) -> Self {
        match self {
            // The database's, the service's, or the checkpoint's (every
            // ack of the request names the same one).
            Error::Unavailable
            | Error::Timeout(_)
            | Error::Overloaded
            | Error::Internal(_)
            | Error::NotFound(_)
            | Error::CheckpointAborted { .. } => self,
            error => Error::Item {
                item: item.into(),
                error: Box::new(error),
            },
        }
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Error::Conflict(detail.into())
    }

    /// The stable problem type (the last part of the problem document's `type`).
    pub fn kind(&self) -> ProblemKind {
        match self {
            Error::NotFound(_) => ProblemKind::NotFound,
            Error::Fenced { .. } | Error::FencedByFailover { .. } => ProblemKind::Fenced,
            Error::CheckpointAborted { .. } => ProblemKind::CheckpointAborted,
            Error::UnknownTask(_) => ProblemKind::UnknownTask,
            Error::RowRejected { .. } => ProblemKind::RowRejected,
            Error::OffsetRegression { .. } => ProblemKind::OffsetRegression,
            Error::BatchConflict { .. } => ProblemKind::BatchConflict,
            Error::PromotionBlocked { .. } => ProblemKind::PromotionBlocked,
            Error::BodyTimeout(_) => ProblemKind::BodyTimeout,
            Error::Unauthenticated(_) => ProblemKind::Unauthenticated,
            Error::Forbidden(_) => ProblemKind::Forbidden,
            Error::Conflict(_) => ProblemKind::Conflict,
            Error::Validation { .. } => ProblemKind::Validation,
            Error::TooEarly { .. } => ProblemKind::TooEarly,
            Error::PayloadTooLarge(_) => ProblemKind::PayloadTooLarge,
            Error::Malformed(_) => ProblemKind::Malformed,
            Error::UnsupportedMediaType(_) => ProblemKind::UnsupportedMediaType,
            Error::Overloaded => ProblemKind::Overloaded,
            Error::Timeout(_) => ProblemKind::Timeout,
            Error::Unavailable => ProblemKind::Unavailable,
            Error::StateCorrupted(_) => ProblemKind::StateCorrupted,
            Error::Item { error, .. } => error.kind(),
            Error::Internal(_) => ProblemKind::Internal,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Error::Unavailable
            }
            // Worth a retry: a deadlock, a serialization failure, a lock or
            // statement timeout (or a cancelled query), a read-only server
            // (a standby reached during a failover, before the address
            // moves on), a session ended (by a fencing attempt, an
            // idle-in-transaction timeout, a shutdown or crash of the
            // server), a server still starting, too many connections, or a
            // broken connection (class 08). Mostly nothing was changed; a
            // connection lost around COMMIT leaves the outcome unknown, and
            // the retry finds it (writes and acks are idempotent).
            sqlx::Error::Database(db)
                if db.code().is_some_and(|code| {
                    code.starts_with("08")
                        || matches!(
                            code.as_ref(),
                            "40P01"
                                | "40001"
                                | "55P03"
                                | "25P03"
                                | "25006"
                                | "57014"
                                | "57P01"
                                | "57P02"
                                | "57P03"
                                | "53300"
                        )
                }) =>
            {
                Error::Unavailable
            }
            _ => Error::Internal(error.into()),
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(error: anyhow::Error) -> Self {
        Error::Internal(error)
    }
}
