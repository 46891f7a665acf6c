//! Chaos tests: the real `sinkgate` binary and real processor processes (the
//! Python example, `examples/python/event_copy.py`) against one database,
//! with SIGKILLs at random points. After each scenario the sink must hold
//! every source event exactly once, and the committed offsets must be the
//! ends of the log.
//!
//! Whenever a processor has copied the whole log, the sink is checked and the
//! job starts over from an empty sink, so that every kill of a long soak
//! lands in the middle of work rather than on an idle, finished job.
//!
//! Bounded by default (a few kills per scenario, seeded). A soak is one
//! variable away: `DATABASE_URL=$(scripts/postgres.sh) CHAOS_ITERATIONS=200 CHAOS_SEED=7 cargo test --test chaos`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::process::{Child, Command};

/// The scenarios run one at a time: a killed service is restarted on the
/// same port, and a concurrently running scenario could otherwise pick that
/// port while it is free and end up talking to the wrong service.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PARTITIONS: i64 = 4;
const EVENTS_PER_PARTITION: i64 = 600;
const JOB: &str = "chaos";

/// A small seeded generator (xorshift), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn from_env(salt: u64) -> Rng {
        let seed: u64 = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(42);
        Rng((seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

fn iterations() -> usize {
    std::env::var("CHAOS_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

/// `DATABASE_URL` pointed at the test's own database.
fn database_url(connect: &PgConnectOptions) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (server, _) = base.rsplit_once('/').expect("DATABASE_URL has a database");
    format!(
        "{server}/{}",
        connect.get_database().expect("test database")
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `sinkgate serve` process.
struct Service {
    child: Child,
    port: u16,
    database_url: String,
}

impl Service {
    async fn start(database_url: &str, port: u16) -> Service {
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

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then wait for the process to be gone.
    async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    async fn restart(&mut self) {
        *self = Service::start(&self.database_url.clone(), self.port).await;
    }
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/python")
        .join(name)
}

/// One processor process: the whole job (all its tasks), as a restart of a
/// stream job restarts all of its tasks.
fn processor(urls: &[String], log_dir: &Path, pause_ms: u64) -> Child {
    Command::new("python3")
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

async fn wait_success(mut child: Child, within: Duration) {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("processor did not finish in time")
        .unwrap();
    assert!(status.success(), "processor exited with {status}");
}

/// Log files, the sink table and the job.
async fn setup(pool: &PgPool, service_url: &str) -> tempfile::TempDir {
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
    // No unique key: a duplicate would show.
    sqlx::raw_sql(r#"CREATE TABLE chaos_sink (id bigint NOT NULL, "partition" int NOT NULL, "offset" bigint NOT NULL, payload text NOT NULL)"#)
        .execute(pool)
        .await
        .unwrap();
    register_job(service_url).await;
    dir
}

/// Every event exactly once, nothing beyond the committed offsets. `what`
/// (the scenario and its kills) is printed with the counts, for soak reports
/// (`--nocapture`).
async fn assert_exactly_once(pool: &PgPool, service_url: &str, what: &str) {
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
    let recovery: Value = reqwest::get(format!("{service_url}/v1/jobs/{JOB}/recovery"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for partition in 0..PARTITIONS {
        assert_eq!(
            recovery["offsets"][partition.to_string()],
            EVENTS_PER_PARTITION,
            "{recovery}"
        );
    }
    eprintln!("chaos: {what}: {rows} rows for {total} events, 0 duplicated, 0 missing");
}

/// Whether the committed offsets are the ends of the log.
async fn log_done(service_url: &str) -> bool {
    let Ok(response) = reqwest::get(format!("{service_url}/v1/jobs/{JOB}/recovery")).await else {
        return false;
    };
    let recovery: Value = response.json().await.unwrap_or_default();
    (0..PARTITIONS)
        .all(|partition| recovery["offsets"][partition.to_string()] == EVENTS_PER_PARTITION)
}

/// Counts complete runs of the log: each is checked, then the job starts
/// over from an empty sink.
#[derive(Default)]
struct Runs {
    complete: usize,
}

impl Runs {
    /// When the log is done: checks the sink and starts over. Call only
    /// while no processor is running.
    async fn check_if_done(&mut self, pool: &PgPool, service_url: &str, what: &str) {
        if log_done(service_url).await {
            self.complete += 1;
            let what = format!("run {}, {what}", self.complete);
            assert_exactly_once(pool, service_url, &what).await;
            restart_job(pool, service_url).await;
        }
    }
}

async fn pool(connect: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(connect.clone())
        .await
        .unwrap()
}

#[sqlx::test]
async fn processors_killed_at_random_points_still_copy_exactly_once(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let _serial = SERIAL.lock().await;
    let db = pool(&connect).await;
    let service = Service::start(&database_url(&connect), free_port()).await;
    let log = setup(&db, &service.url()).await;
    let mut rng = Rng::from_env(1);
    let mut runs = Runs::default();
    let mut mid_run = 0;
    for kill in 1..=iterations() {
        // Paced (60 ms a round of batches, about a second a run) so that most kills
        // land in a running processor.
        let mut child = processor(&[service.url()], log.path(), 60);
        tokio::time::sleep(rng.millis(50, 900)).await;
        if matches!(child.try_wait(), Ok(None)) {
            mid_run += 1;
        }
        let _ = child.kill().await; // SIGKILL, wherever it was
        let what = format!("after processor kill {kill}");
        runs.check_if_done(&db, &service.url(), &what).await;
    }
    wait_success(
        processor(&[service.url()], log.path(), 0),
        Duration::from_secs(120),
    )
    .await;
    let what = format!(
        "{} processor kills ({mid_run} of a running processor), {} runs completed between them",
        iterations(),
        runs.complete
    );
    assert_exactly_once(&db, &service.url(), &what).await;
    drop(service);
    db.close().await;
}

#[sqlx::test]
async fn the_service_killed_at_random_points_loses_and_duplicates_nothing(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let _serial = SERIAL.lock().await;
    let db = pool(&connect).await;
    let mut service = Service::start(&database_url(&connect), free_port()).await;
    let log = setup(&db, &service.url()).await;
    let mut rng = Rng::from_env(2);
    // A slow processor, so that the kills land in the middle of its work.
    let mut child = processor(&[service.url()], log.path(), 30);
    let mut runs = Runs::default();
    for kill in 1..=iterations() {
        tokio::time::sleep(rng.millis(100, 1200)).await;
        service.kill().await;
        tokio::time::sleep(rng.millis(0, 300)).await;
        service.restart().await;
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "processor exited with {status}");
            let what = format!("after service kill {kill}");
            runs.check_if_done(&db, &service.url(), &what).await;
            child = processor(&[service.url()], log.path(), 30);
        }
    }
    wait_success(child, Duration::from_secs(120)).await;
    let what = format!(
        "{} service kills, {} runs completed between them",
        iterations(),
        runs.complete
    );
    assert_exactly_once(&db, &service.url(), &what).await;
    drop(service);
    db.close().await;
}

#[sqlx::test]
async fn three_replicas_one_killed_mid_run(_: PgPoolOptions, connect: PgConnectOptions) {
    let _serial = SERIAL.lock().await;
    let db = pool(&connect).await;
    let url = database_url(&connect);
    let mut replicas = vec![
        Service::start(&url, free_port()).await,
        Service::start(&url, free_port()).await,
        Service::start(&url, free_port()).await,
    ];
    let urls: Vec<String> = replicas.iter().map(Service::url).collect();
    let log = setup(&db, &urls[0]).await;
    let mut rng = Rng::from_env(3);
    let mut runs = Runs::default();
    for kill in 1..=iterations() {
        // A processor spreading requests over the replicas; one replica is
        // killed under it, then the processor too; the replica comes back.
        let mut child = processor(&urls, log.path(), 10);
        tokio::time::sleep(rng.millis(100, 1000)).await;
        let victim = rng.below(3) as usize;
        replicas[victim].kill().await;
        tokio::time::sleep(rng.millis(100, 800)).await;
        let _ = child.kill().await;
        replicas[victim].restart().await;
        let what = format!("after replica and processor kill {kill}");
        runs.check_if_done(&db, &urls[0], &what).await;
    }
    // The last run finishes on two replicas after the third is killed.
    let child = processor(&urls, log.path(), 10);
    tokio::time::sleep(rng.millis(100, 800)).await;
    let victim = rng.below(3) as usize;
    replicas[victim].kill().await;
    wait_success(child, Duration::from_secs(120)).await;
    let what = format!(
        "{} replica kills and {} processor kills, 3 replicas, {} runs completed between them",
        iterations() + 1,
        iterations(),
        runs.complete
    );
    assert_exactly_once(&db, &replicas[(victim + 1) % 3].url(), &what).await;
    drop(replicas);
    db.close().await;
}

#[sqlx::test]
async fn a_zombie_processor_is_fenced_and_changes_nothing(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let _serial = SERIAL.lock().await;
    let db = pool(&connect).await;
    let service = Service::start(&database_url(&connect), free_port()).await;
    let log = setup(&db, &service.url()).await;
    let mut rng = Rng::from_env(4);
    // A quarter of the iterations: each round is a whole run of the log.
    for round in 0..iterations().div_ceil(4) {
        if round > 0 {
            // Every round starts from an empty sink, so the zombie has work left.
            restart_job(&db, &service.url()).await;
        }
        // The old instance keeps running (slowly) while a new one starts.
        let mut zombie = processor(&[service.url()], log.path(), 300);
        tokio::time::sleep(rng.millis(200, 1000)).await;
        let mut successor = processor(&[service.url()], log.path(), 50);
        let zombie_status = tokio::time::timeout(Duration::from_secs(120), zombie.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            zombie_status.code(),
            Some(3),
            "the zombie must learn it is fenced and stop"
        );
        tokio::time::sleep(rng.millis(0, 300)).await;
        let _ = successor.kill().await;
        wait_success(
            processor(&[service.url()], log.path(), 0),
            Duration::from_secs(120),
        )
        .await;
        let what = format!("zombie round {}: fenced, exit 3", round + 1);
        assert_exactly_once(&db, &service.url(), &what).await;
    }
    drop(service);
    db.close().await;
}

/// Deletes the job and empties the sink, then registers the job again.
async fn restart_job(pool: &PgPool, service_url: &str) {
    let client = reqwest::Client::new();
    let deleted = client
        .delete(format!("{service_url}/v1/jobs/{JOB}"))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    sqlx::query("TRUNCATE chaos_sink")
        .execute(pool)
        .await
        .unwrap();
    register_job(service_url).await;
}

async fn register_job(service_url: &str) {
    let response = reqwest::Client::new()
        .put(format!("{service_url}/v1/jobs/{JOB}"))
        .json(&serde_json::json!({"tasks": ["task-0", "task-1"], "sink": {"table": "chaos_sink", "mode": "append"},
                                  "checkpointing": {"timeout_ms": 5000}}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}
