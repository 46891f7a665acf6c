//! Prometheus metrics, served at `/metrics`.
//!
//! Protocol events are counted where they happen, inside the coordinator's
//! transactions; a transaction that then fails to commit (rare: a lost
//! connection) may have counted an event that did not persist. Gauges that
//! describe shared state (pending checkpoints, pool use) are read from the
//! database and the pool at scrape time, so every replica reports the truth.
//! Names and units follow Prometheus conventions (`_total`, `_seconds`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ])
            .expect("non-empty buckets")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

pub fn checkpoint_triggered(job: &str, trigger: crate::model::TriggerKind) {
    counter!("sinkgate_checkpoints_triggered_total", "job_id" => job.to_owned(), "trigger" => trigger.as_str())
        .increment(1);
}

/// Why checkpoints were aborted: the `reason` label of
/// `sinkgate_checkpoints_aborted_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// Not every task acked within `timeout_ms`.
    Timeout,
    /// A task declined it.
    Declined,
    /// An operator aborted it (`POST …/abort`).
    Operator,
    /// A newer checkpoint was decided first.
    Subsumed,
    /// A new attempt fenced its epoch.
    Fenced,
}

impl AbortReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::Timeout => "timeout",
            AbortReason::Declined => "declined",
            AbortReason::Operator => "operator",
            AbortReason::Subsumed => "subsumed",
            AbortReason::Fenced => "fenced",
        }
    }
}

pub fn checkpoints_aborted(job: &str, reason: AbortReason, count: u64) {
    if count > 0 {
        counter!("sinkgate_checkpoints_aborted_total", "job_id" => job.to_owned(), "reason" => reason.as_str())
            .increment(count);
    }
}

/// A checkpoint decided, `duration` after its trigger.
pub fn checkpoint_completed(job: &str, duration: Duration) {
    counter!("sinkgate_checkpoints_completed_total", "job_id" => job.to_owned()).increment(1);
    histogram!("sinkgate_checkpoint_duration_seconds", "job_id" => job.to_owned())
        .record(duration.as_secs_f64());
}

/// A promotion that committed `rows` rows in `duration`.
pub fn checkpoint_committed(job: &str, duration: Duration, rows: u64) {
    counter!("sinkgate_checkpoints_committed_total", "job_id" => job.to_owned()).increment(1);
    counter!("sinkgate_promoted_rows_total", "job_id" => job.to_owned()).increment(rows);
    histogram!("sinkgate_commit_duration_seconds", "job_id" => job.to_owned())
        .record(duration.as_secs_f64());
}

/// A state chunk uploaded (`created`: new to the store).
pub fn state_chunk_stored(job: &str, created: bool, bytes: u64) {
    let label = if created { "new" } else { "known" };
    counter!("sinkgate_state_chunks_uploaded_total", "job_id" => job.to_owned(), "chunk" => label)
        .increment(1);
    if created {
        counter!("sinkgate_state_bytes_stored_total", "job_id" => job.to_owned()).increment(bytes);
    }
}

/// Rows one output's promotion inserted, updated or deleted.
pub fn output_promoted(job: &str, output: &str, rows: u64) {
    counter!("sinkgate_output_promoted_rows_total", "job_id" => job.to_owned(), "output" => output.to_owned())
        .increment(rows);
}

pub fn promotion_failed(job: &str) {
    counter!("sinkgate_promotion_failures_total", "job_id" => job.to_owned()).increment(1);
}

pub fn ack_recorded(job: &str) {
    counter!("sinkgate_acks_total", "job_id" => job.to_owned()).increment(1);
}

pub fn staged(job: &str, rows: u64, bytes: u64) {
    counter!("sinkgate_staged_rows_total", "job_id" => job.to_owned()).increment(rows);
    counter!("sinkgate_staged_bytes_total", "job_id" => job.to_owned()).increment(bytes);
}

pub fn fenced(job: &str) {
    counter!("sinkgate_fenced_requests_total", "job_id" => job.to_owned()).increment(1);
}

/// The label of an HTTP method: one the service knows, else `other`, so a
/// caller cannot grow the label set (and `/metrics`) with made-up methods.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

/// `route` must be a route template (or `unmatched`), never a raw path.
pub fn http_request(method: &str, route: &str, status: u16, duration: Duration) {
    let labels = [
        ("method", method_label(method).to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    counter!("sinkgate_http_requests_total", &labels).increment(1);
    histogram!("sinkgate_http_request_duration_seconds", &labels).record(duration.as_secs_f64());
}

/// Pending checkpoints of every job, as read at scrape time. A job that is
/// gone since the last scrape is set to 0: the exporter keeps a series for
/// ever, and a deleted job must not look stuck to the alerts.
pub fn pending_checkpoints(per_job: &[(String, i64)]) {
    use std::collections::BTreeSet;
    static REPORTED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let current: BTreeSet<String> = per_job.iter().map(|(job, _)| job.clone()).collect();
    let mut reported = REPORTED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for gone in reported.difference(&current) {
        gauge!("sinkgate_pending_checkpoints", "job_id" => gone.clone()).set(0.0);
    }
    for (job, pending) in per_job {
        gauge!("sinkgate_pending_checkpoints", "job_id" => job.clone()).set(*pending as f64);
    }
    *reported = current;
}

pub fn pool(size: u32, idle: usize, max: u32) {
    gauge!("sinkgate_db_pool_connections", "state" => "idle").set(idle as f64);
    gauge!("sinkgate_db_pool_connections", "state" => "in_use")
        .set(size.saturating_sub(idle as u32) as f64);
    gauge!("sinkgate_db_pool_max_connections").set(max as f64);
}

/// Rows that a promotion sent to the dead-letter table.
/// Rows one output's committed promotion sent to the dead-letter table.
pub fn dead_lettered(job: &str, output: &str, rows: u64) {
    counter!("sinkgate_dead_lettered_rows_total", "job_id" => job.to_owned(), "output" => output.to_owned())
        .increment(rows);
}

/// A scheduler pass over one job that failed (the job is skipped until the
/// next tick; other jobs go on).
pub fn scheduler_job_failed(job: &str) {
    counter!("sinkgate_scheduler_job_failures_total", "job_id" => job.to_owned()).increment(1);
}
