//! What the crash tests share: the real `sinkgate` binary, the Python
//! example processor (`examples/python/event_copy.py`) over a generated
//! log, and the exactly-once check of the sink against that log.
//!
//! Used by `tests/chaos.rs` (processes killed) and `tests/database_faults.rs`
//! (the database crashed, failed over, cut off); each uses a part.
#![allow(dead_code)]

pub mod cdc;
pub mod cluster;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::process::{Child, Command};

pub const PARTITIONS: i64 = 4;
pub const EVENTS_PER_PARTITION: i64 = 600;
pub const JOB: &str = "chaos";

/// A small seeded generator (xorshift), so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn from_env(salt: u64) -> Rng {
        let seed: u64 = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(42);
        Rng((seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    pub fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

pub fn iterations() -> usize {
    std::env::var("CHAOS_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

/// `DATABASE_URL` pointed at the test's own database.
pub fn database_url(connect: &PgConnectOptions) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (server, _) = base.rsplit_once('/').expect("DATABASE_URL has a database");
    format!(
        "{server}/{}",
        connect.get_database().expect("test database")
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `sinkgate serve` process.
pub struct Service {
    child: Child,
    port: u16,
    database_url: String,
    extra_args: Vec<String>,
}

impl Service {
    pub async fn start(database_url: &str, port: u16) -> Service {
        Service::start_with(database_url, port, &[]).await
    }

    /// With flags of its own besides the crash tests' usual ones.
    pub async fn start_with(database_url: &str, port: u16, extra_args: &[&str]) -> Service {
        let child = Command::new(env!("CARGO_BIN_EXE_sinkgate"))
            .args([
                "serve",
                "--insecure-no-auth",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--tick-ms",
                "100",
                "--pool-size",
                "8",
            ])
            .args(extra_args)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .stdout(Stdio::null())
            .spawn()
            .expect("start sinkgate");
        let mut service = Service {
            child,
            port,
            database_url: database_url.to_owned(),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
        };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = client.get(format!("{}/readyz", service.url())).send().await {
                // Ready, and it is our process that answered (not one that
                // holds the port while ours failed to bind).
                if response.status().is_success() && service.child.try_wait().unwrap().is_none() {
                    return service;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("sinkgate did not become ready");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then wait for the process to be gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    pub async fn restart(&mut self) {
        let extra_args: Vec<String> = std::mem::take(&mut self.extra_args);
        let extra_args: Vec<&str> = extra_args.iter().map(String::as_str).collect();
        *self = Service::start_with(&self.database_url.clone(), self.port, &extra_args).await;
    }
}

/// The interpreter with the `sinkgate` package (clients/python) installed:
/// `$SINKGATE_PYTHON`, or the virtualenv `scripts/python-env.sh` makes
/// (`scripts/test.sh` runs it first).
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("SINKGATE_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python-venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the sinkgate package: run scripts/python-env.sh (scripts/test.sh does)"
    );
    venv
}

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/python")
        .join(name)
}

/// One processor process: the whole job (all its tasks), as a restart of a
/// stream job restarts all of its tasks.
pub fn processor(urls: &[String], log_dir: &Path, pause_ms: u64) -> Child {
    Command::new(python())
        .arg(example("event_copy.py"))
        .args(["--url", &urls.join(","), "--job", JOB, "--tasks", "2"])
        .args([
            "--partitions",
            &PARTITIONS.to_string(),
            "--batch-rows",
            "40",
            "--checkpoint-batches",
            "6",
        ])
        .args(["--pause-ms", &pause_ms.to_string()])
        .arg("--log-dir")
        .arg(log_dir)
        .kill_on_drop(true)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the Python processor")
}

pub async fn wait_success(mut child: Child, within: Duration) {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("processor did not finish in time")
        .unwrap();
    assert!(status.success(), "processor exited with {status}");
}

/// Log files, the sink table and the job.
pub async fn setup(pool: &PgPool, service_url: &str) -> tempfile::TempDir {
    let dir = make_log();
    // No unique key: a duplicate would show.
    sqlx::raw_sql(r#"CREATE TABLE chaos_sink (id bigint NOT NULL, "partition" int NOT NULL, "offset" bigint NOT NULL, payload text NOT NULL)"#)
        .execute(pool)
        .await
        .unwrap();
    register_job(service_url).await;
    dir
}

/// The source log: `PARTITIONS` files of `EVENTS_PER_PARTITION` events.
pub fn make_log() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("python3")
        .arg(example("make_log.py"))
        .arg("--log-dir")
        .arg(dir.path())
        .args([
            "--partitions",
            &PARTITIONS.to_string(),
            "--events",
            &EVENTS_PER_PARTITION.to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

/// Every event exactly once, nothing beyond the committed offsets. `what`
/// (the scenario and its kills) is printed with the counts, for soak reports
/// (`--nocapture`).
pub async fn assert_exactly_once(pool: &PgPool, service_url: &str, what: &str) {
    let total = PARTITIONS * EVENTS_PER_PARTITION;
    let (rows, distinct, wrong_payload): (i64, i64, i64) = sqlx::query_as(
        r#"SELECT count(*), count(DISTINCT id),
                  count(*) FILTER (WHERE id <> "partition" * 1000000 + "offset")
           FROM chaos_sink"#,
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(distinct, total, "missing events");
    assert_eq!(
        rows,
        total,
        "duplicated events: {} extra rows",
        rows - total
    );
    assert_eq!(wrong_payload, 0);
    let recovery = recovery(service_url).await;
    for partition in 0..PARTITIONS {
        assert_eq!(
            recovery["offsets"][partition.to_string()],
            EVENTS_PER_PARTITION,
            "{recovery}"
        );
    }
    eprintln!("chaos: {what}: {rows} rows for {total} events, 0 duplicated, 0 missing");
}

/// Sends a request until it gets an answer other than 503, as a client
/// does while the database fails (for up to 30 s).
pub async fn send_retrying(request: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    for _ in 0..300 {
        if let Ok(response) = request().send().await {
            if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                return response;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the service answered 503 for 30 s");
}

/// The job's recovery point, as the service reports it.
pub async fn recovery(service_url: &str) -> Value {
    recovery_of(service_url, JOB).await
}

/// `job`'s recovery point.
pub async fn recovery_of(service_url: &str, job: &str) -> Value {
    let client = reqwest::Client::new();
    send_retrying(|| client.get(format!("{service_url}/v1/jobs/{job}/recovery")))
        .await
        .json()
        .await
        .unwrap()
}

/// Whether the committed offsets are the ends of the log.
pub async fn log_done(service_url: &str) -> bool {
    log_done_of(service_url, JOB).await
}

/// Whether `job`'s committed offsets are the ends of the log.
pub async fn log_done_of(service_url: &str, job: &str) -> bool {
    let recovery = recovery_of(service_url, job).await;
    (0..PARTITIONS)
        .all(|partition| recovery["offsets"][partition.to_string()] == EVENTS_PER_PARTITION)
}

/// Counts complete runs of the log: each is checked, then the job starts
/// over from an empty sink.
#[derive(Default)]
pub struct Runs {
    pub complete: usize,
}

impl Runs {
    /// When the log is done: checks the sink and starts over. Call only
    /// while no processor is running.
    pub async fn check_if_done(&mut self, pool: &PgPool, service_url: &str, what: &str) {
        if log_done(service_url).await {
            self.complete += 1;
            let what = format!("run {}, {what}", self.complete);
            assert_exactly_once(pool, service_url, &what).await;
            restart_job(pool, service_url).await;
        }
    }
}

pub async fn pool(connect: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(connect.clone())
        .await
        .unwrap()
}

/// Deletes the job and empties the sink, then registers the job again.
pub async fn restart_job(pool: &PgPool, service_url: &str) {
    delete_job_and_truncate(pool, service_url, JOB, "chaos_sink").await;
    register_job(service_url).await;
}

/// Deletes `job` and empties `tables` (one statement, so a reader never
/// sees one emptied without the others).
pub async fn delete_job_and_truncate(pool: &PgPool, service_url: &str, job: &str, tables: &str) {
    let client = reqwest::Client::new();
    let deleted = send_retrying(|| client.delete(format!("{service_url}/v1/jobs/{job}"))).await;
    assert!(deleted.status().is_success());
    sqlx::query(&format!("TRUNCATE {tables}"))
        .execute(pool)
        .await
        .unwrap();
}

pub async fn register_job(service_url: &str) {
    let client = reqwest::Client::new();
    let response = send_retrying(|| {
        client
            .put(format!("{service_url}/v1/jobs/{JOB}"))
            .json(&serde_json::json!({"tasks": ["task-0", "task-1"], "sink": {"table": "chaos_sink", "mode": "append"},
                                      "checkpointing": {"timeout_ms": 5000}}))
    })
    .await;
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}
