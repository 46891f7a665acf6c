//! The change-capture job of the crash tests: one job, two outputs
//! (`changes`, append; `current`, upsert with deletes), written by the
//! Python example `examples/python/change_capture.py` from the same log as
//! the event copy. Its ground truth: every change exactly once in
//! `cdc_changes`, and `cdc_current` equal to the fold of the changes per
//! key, at every moment a reader looks (one snapshot) and at the end.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::process::{Child, Command};

use super::{example, python, send_retrying, EVENTS_PER_PARTITION, PARTITIONS};

pub const JOB: &str = "changes";

/// Rows of `cdc_current` that differ from the fold of `cdc_changes` (a key
/// whose latest change is a delete must be absent, any other must hold the
/// latest value): 0 whenever both tables are read in one snapshot. One
/// statement, so one snapshot.
const DISAGREEMENTS: &str = r#"
    WITH latest AS (
        SELECT DISTINCT ON (key) key, op, value, "offset" FROM cdc_changes ORDER BY key, "offset" DESC)
    SELECT count(*) FROM latest l FULL JOIN cdc_current c USING (key)
    WHERE CASE WHEN l.key IS NULL THEN true
               WHEN l.op = 'delete' THEN c.key IS NOT NULL
               ELSE c.key IS NULL OR c.value <> l.value OR c."offset" <> l."offset" END"#;

/// The log (the event copy's), both tables and the job.
pub async fn setup(pool: &PgPool, service_url: &str) -> tempfile::TempDir {
    let dir = super::make_log();
    sqlx::raw_sql(
        r#"CREATE TABLE cdc_changes (id bigint NOT NULL, "partition" int NOT NULL, "offset" bigint NOT NULL,
                                     key bigint NOT NULL, op text NOT NULL, value text NOT NULL);
           CREATE TABLE cdc_current (key bigint PRIMARY KEY, value text NOT NULL, "offset" bigint NOT NULL);"#,
    )
    .execute(pool)
    .await
    .unwrap();
    register(service_url).await;
    dir
}

async fn register(service_url: &str) {
    let client = reqwest::Client::new();
    let response = send_retrying(|| {
        client.put(format!("{service_url}/v1/jobs/{JOB}")).json(
            &serde_json::json!({"tasks": ["task-0", "task-1"], "outputs": [
                {"name": "changes", "table": "cdc_changes", "mode": "append"},
                {"name": "current", "table": "cdc_current", "mode": "upsert", "key": ["key"]}],
                "checkpointing": {"timeout_ms": 5000}}),
        )
    })
    .await;
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

/// One processor process for the whole job.
pub fn processor(urls: &[String], log_dir: &Path, pause_ms: u64) -> Child {
    Command::new(python())
        .arg(example("change_capture.py"))
        .args(["--url", &urls.join(","), "--job", JOB, "--tasks", "2"])
        .args(["--partitions", &PARTITIONS.to_string()])
        .args(["--batch-rows", "40", "--checkpoint-batches", "6"])
        .args(["--pause-ms", &pause_ms.to_string()])
        .arg("--log-dir")
        .arg(log_dir)
        .kill_on_drop(true)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the change-capture processor")
}

/// Every change exactly once, as the log says it; `cdc_current` the fold
/// of the changes; the committed offsets the ends of the log.
pub async fn assert_ground_truth(pool: &PgPool, service_url: &str, what: &str) {
    let total = PARTITIONS * EVENTS_PER_PARTITION;
    let (rows, distinct, wrong, deletes): (i64, i64, i64, i64) = sqlx::query_as(
        r#"SELECT count(*), count(DISTINCT id),
                  count(*) FILTER (WHERE id <> "partition" * 1000000 + "offset"
                      OR key <> "partition" * 1000 + id % 37
                      OR op <> CASE WHEN "offset" % 5 = 3 THEN 'delete' ELSE 'upsert' END
                      OR value <> format('p%s-o%s-%s', "partition", "offset", repeat('x', ("offset" % 17)::int))),
                  count(*) FILTER (WHERE op = 'delete')
           FROM cdc_changes"#,
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(distinct, total, "missing changes");
    assert_eq!(rows, total, "duplicated changes: {} extra", rows - total);
    assert_eq!(wrong, 0, "changes that are not the log's");
    let disagreements: i64 = sqlx::query_scalar(DISAGREEMENTS)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        disagreements, 0,
        "cdc_current is not the fold of the changes"
    );
    let current: i64 = sqlx::query_scalar("SELECT count(*) FROM cdc_current")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(offsets_done(service_url).await, "offsets short of the log");
    eprintln!(
        "chaos: {what}: {rows} changes ({deletes} deletes) for {total} events, {current} current keys, 0 duplicated, 0 missing, current = fold of changes"
    );
}

/// Whether the committed offsets are the ends of the log.
pub async fn offsets_done(service_url: &str) -> bool {
    super::log_done_of(service_url, JOB).await
}

/// Deletes the job and empties both tables, then registers it again.
pub async fn restart_job(pool: &PgPool, service_url: &str) {
    super::delete_job_and_truncate(pool, service_url, JOB, "cdc_changes, cdc_current").await;
    register(service_url).await;
}

/// A reader that checks, in one snapshot at a time, that the two outputs
/// agree, for as long as it runs.
pub struct Reader {
    stop: Arc<AtomicBool>,
    checks: Arc<AtomicU64>,
    nonempty: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<i64>>,
}

/// What a [`Reader`] saw.
pub struct ReaderReport {
    pub checks: u64,
    /// Checks that found changes in the table (not an empty sink).
    pub nonempty: u64,
    /// The disagreements of every check that found any.
    pub violations: Vec<i64>,
}

impl Reader {
    pub fn spawn(pool: PgPool) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let checks = Arc::new(AtomicU64::new(0));
        let nonempty = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, checks, nonempty) = (stop.clone(), checks.clone(), nonempty.clone());
            async move {
                let mut violations = Vec::new();
                let query = format!("SELECT ({DISAGREEMENTS}), EXISTS (SELECT FROM cdc_changes)");
                while !stop.load(Ordering::Relaxed) {
                    let (bad, any): (i64, bool) =
                        sqlx::query_as(&query).fetch_one(&pool).await.unwrap();
                    checks.fetch_add(1, Ordering::Relaxed);
                    if any {
                        nonempty.fetch_add(1, Ordering::Relaxed);
                    }
                    if bad != 0 {
                        violations.push(bad);
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                violations
            }
        });
        Reader {
            stop,
            checks,
            nonempty,
            task,
        }
    }

    pub async fn stop(self) -> ReaderReport {
        self.stop.store(true, Ordering::Relaxed);
        let violations = self.task.await.unwrap();
        ReaderReport {
            checks: self.checks.load(Ordering::Relaxed),
            nonempty: self.nonempty.load(Ordering::Relaxed),
            violations,
        }
    }
}
