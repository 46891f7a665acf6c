//! The database's own failures, against the real binary and the Python
//! example processor (as in `tests/chaos.rs`): PostgreSQL crashed and
//! restarted mid-run (during promotions too), connections between sinkgate
//! and PostgreSQL reset or stalled at random points (right after a `COMMIT`
//! reached the server among them), and a failover to a synchronous standby.
//! After each, the sink holds every event exactly once and the committed
//! offsets are the ends of the log; the service recovered without a restart.
//!
//! The crash and failover scenarios run on clusters of their own
//! (`scripts/pg-cluster.sh`); the connection faults go through a proxy in
//! the test (`tests/support/proxy.rs`). Bounded by default; a soak is one
//! variable away, as for the chaos tests:
//! `DATABASE_URL=$(scripts/postgres.sh) CHAOS_ITERATIONS=40 CHAOS_SEED=7 cargo test --test database_faults -- --nocapture`.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::process::Child;

use support::cluster::Cluster;
use support::proxy::{Faults, Proxy};
use support::*;

/// One scenario at a time: each starts services and a processor, and the
/// machine has two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A request waits this long for a connection while the database is down,
/// then gets its 503 (the default is 5 s).
const ACQUIRE_TIMEOUT: [&str; 2] = ["--db-acquire-timeout-ms", "1000"];

/// A pool for the test's own queries, which reconnects after an outage.
async fn test_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .unwrap()
}

/// Every statement that writes the sink takes 300 ms, so that a crash can
/// be aimed at a promotion in progress.
async fn slow_promotions(db: &PgPool) {
    sqlx::raw_sql(
        "CREATE FUNCTION slow_statement() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;
         CREATE TRIGGER slow_statement AFTER INSERT ON chaos_sink
           FOR EACH STATEMENT EXECUTE FUNCTION slow_statement();",
    )
    .execute(db)
    .await
    .unwrap();
}

/// Waits (up to `within`) until a promotion is running: a backend sits in
/// the sink's slow trigger.
async fn promotion_running(db: &PgPool, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let sleeping: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND pid <> pg_backend_pid()",
        )
        .fetch_one(db)
        .await
        .unwrap_or(0);
        if sleeping > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// While the database is down: a request is answered 503 `unavailable`
/// with Retry-After, and the service says it is not ready.
async fn assert_outage_answers(service_url: &str) {
    let response = reqwest::get(format!("{service_url}/v1/jobs/{JOB}/recovery"))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(
        response.headers().contains_key("retry-after"),
        "503 without Retry-After"
    );
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["type"].as_str().unwrap().ends_with(":unavailable"),
        "{problem}"
    );
    let ready = reqwest::get(format!("{service_url}/readyz")).await.unwrap();
    assert_eq!(
        ready.status(),
        503,
        "/readyz says ready while the database is down"
    );
}

/// Waits until the service answers ready again, by itself.
async fn wait_ready(service_url: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(response) = reqwest::get(format!("{service_url}/readyz")).await {
            if response.status().is_success() {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service_url} not ready again {within:?} after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sessions holding the scheduler's advisory lock (the only advisory lock
/// sinkgate takes).
async fn scheduler_lock_holders(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        .fetch_one(db)
        .await
        .unwrap()
}

/// Exactly one replica takes the scheduler's lock again, and keeps it alone.
async fn assert_one_scheduler(db: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while scheduler_lock_holders(db).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replica took the scheduler's lock again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert_eq!(scheduler_lock_holders(db).await, 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

/// Answers 500 the service gave, from its own metrics: a database failure
/// must be a 503 the processor retries, never an internal error.
async fn internal_errors(service_url: &str) -> u64 {
    let text = reqwest::get(format!("{service_url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("sinkgate_http_requests_total") && line.contains("status=\"500\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// How every scenario ends: no answer was a 500 (a database failure is a
/// 503 the processor retries), and the sink holds every event exactly once.
async fn assert_scenario_end(db: &PgPool, urls: &[String], what: &str) {
    for url in urls {
        assert_eq!(internal_errors(url).await, 0, "{url} answered 500");
    }
    assert_exactly_once(db, &urls[0], what).await;
}

/// Starts processors as a supervisor would. A processor that copied the
/// whole log has its run checked and another run starts. One that stopped
/// short is a failure, except after a failover: then every epoch begun
/// before it is fenced, each processor stops, and a new one starts (a new
/// attempt, from the recovery point the new primary holds).
#[derive(Default)]
struct Supervisor {
    runs: Runs,
    /// Whether a processor that stopped short is started again.
    restart_stopped: bool,
    /// Processors fenced (exit 3) and started again.
    restarts: usize,
}

impl Supervisor {
    async fn tend(
        &mut self,
        mut child: Child,
        db: &PgPool,
        urls: &[String],
        log: &tempfile::TempDir,
        pause_ms: u64,
        what: &str,
    ) -> Child {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                self.runs.check_if_done(db, &urls[0], what).await;
                processor(urls, log.path(), pause_ms)
            }
            Ok(Some(status)) => {
                // Only a fenced processor (exit 3) may stop short.
                assert!(
                    self.restart_stopped && status.code() == Some(3),
                    "processor exited with {status}"
                );
                self.restarts += 1;
                processor(urls, log.path(), pause_ms)
            }
            _ => child,
        }
    }

    /// Until a processor has copied the whole log.
    async fn finish(&mut self, mut child: Child, urls: &[String], log: &tempfile::TempDir) {
        for _ in 0..10 {
            let status = tokio::time::timeout(Duration::from_secs(180), child.wait())
                .await
                .expect("processor did not finish in time")
                .unwrap();
            if status.success() {
                return;
            }
            assert!(
                self.restart_stopped && status.code() == Some(3),
                "processor exited with {status}"
            );
            self.restarts += 1;
            child = processor(urls, log.path(), 0);
        }
        panic!("the processor kept failing");
    }
}

/// Committed offsets of the job, summed over partitions.
async fn committed_events(service_url: &str) -> i64 {
    recovery(service_url).await["offsets"]
        .as_object()
        .map(|offsets| offsets.values().filter_map(Value::as_i64).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn postgres_crashes_and_restarts_mid_run() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::create("sinkgate-crash", free_port());
    let db = test_pool(&cluster.url()).await;
    let replicas = [
        Service::start_with(&cluster.url(), free_port(), &ACQUIRE_TIMEOUT).await,
        Service::start_with(&cluster.url(), free_port(), &ACQUIRE_TIMEOUT).await,
    ];
    let urls: Vec<String> = replicas.iter().map(Service::url).collect();
    let log = setup(&db, &urls[0]).await;
    slow_promotions(&db).await;
    let mut rng = Rng::from_env(11);
    let mut supervisor = Supervisor::default();
    let mut during_promotion = 0;
    // Unpaced: requests are in flight whenever the database goes down.
    let mut child = processor(&urls, log.path(), 0);
    for crash in 1..=iterations() {
        // Every other crash is aimed at a promotion in progress.
        if crash % 2 == 0 && promotion_running(&db, Duration::from_secs(10)).await {
            during_promotion += 1;
        } else {
            tokio::time::sleep(rng.millis(100, 1500)).await;
        }
        cluster.crash();
        assert_outage_answers(&urls[crash % 2]).await;
        tokio::time::sleep(rng.millis(0, 500)).await;
        cluster.start();
        for url in &urls {
            wait_ready(url, Duration::from_secs(30)).await;
        }
        assert_one_scheduler(&db).await;
        let what = format!("after database crash {crash}");
        child = supervisor.tend(child, &db, &urls, &log, 0, &what).await;
    }
    supervisor.finish(child, &urls, &log).await;
    let what = format!(
        "{} database crashes ({during_promotion} during a promotion), 2 replicas, {} runs completed between them",
        iterations(),
        supervisor.runs.complete
    );
    assert_scenario_end(&db, &urls, &what).await;
    drop(replicas);
    db.close().await;
}

#[sqlx::test]
async fn connections_to_postgres_reset_and_stalled_at_random_points(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let _serial = SERIAL.lock().await;
    let db = pool(&connect).await;
    let proxy = Proxy::start(connect.get_port(), 21).await;
    let service = Service::start_with(
        &proxy.url(&database_url(&connect)),
        free_port(),
        &ACQUIRE_TIMEOUT,
    )
    .await;
    let urls = vec![service.url()];
    let log = setup(&db, &urls[0]).await;
    proxy.set_faults(Faults {
        reset: 0.003,
        cut_after_commit: 0.08,
        stall: 0.003,
        stall_ms: (100, 2500),
    });
    let mut supervisor = Supervisor::default();
    let mut child = processor(&urls, log.path(), 20);
    for round in 1..=iterations() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let what = format!("connection faults, round {round}");
        child = supervisor.tend(child, &db, &urls, &log, 20, &what).await;
    }
    // The faults stop; the run in progress completes.
    proxy.set_faults(Faults::default());
    supervisor.finish(child, &urls, &log).await;
    let injected = proxy.injected();
    let (resets, cuts, stalls) = (
        injected.resets.load(Ordering::Relaxed),
        injected.commit_cuts.load(Ordering::Relaxed),
        injected.stalls.load(Ordering::Relaxed),
    );
    assert!(
        resets > 0 && cuts > 0,
        "no fault was injected: {injected:?}"
    );
    let what = format!(
        "{resets} connection resets, {cuts} answers to COMMIT lost, {stalls} stalls over {} connections, {} runs completed between them",
        injected.connections.load(Ordering::Relaxed),
        supervisor.runs.complete
    );
    assert_scenario_end(&db, &urls, &what).await;
    drop(service);
    db.close().await;
}

// Multi-threaded: the cluster script blocks its thread while the proxy
// (on another) carries the standby's replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_synchronous_standby_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut primary = Cluster::create("sinkgate-failover-a", free_port());
    let mut standby = Some(Cluster::standby_of(
        &primary,
        "sinkgate-failover-b",
        free_port(),
    ));
    // sinkgate reaches whichever is primary through the proxy, as clients
    // reach a failover address (a virtual IP, a DNS name, a pooler).
    let proxy = Proxy::start(primary.port, 31).await;
    let service =
        Service::start_with(&proxy.url(&primary.url()), free_port(), &ACQUIRE_TIMEOUT).await;
    let urls = vec![service.url()];
    let db = test_pool(&proxy.url(&primary.url())).await;
    let log = setup(&db, &urls[0]).await;
    let mut rng = Rng::from_env(31);
    let mut supervisor = Supervisor {
        restart_stopped: true,
        ..Default::default()
    };
    let mut child = processor(&urls, log.path(), 20);
    let failovers = iterations().div_ceil(2);
    for failover in 1..=failovers {
        tokio::time::sleep(rng.millis(300, 2000)).await;
        let committed = committed_events(&urls[0]).await;
        // The primary dies at once; the standby takes over.
        primary.kill();
        let promoted = standby.as_mut().unwrap();
        promoted.promote();
        proxy.retarget(promoted.port);
        proxy.reset_all();
        std::mem::swap(&mut primary, promoted);
        wait_ready(&urls[0], Duration::from_secs(30)).await;
        // Everything a processor was told committed is on the new primary.
        let held = committed_events(&urls[0]).await;
        assert!(
            held >= committed,
            "the new primary holds {held} committed events, {committed} were committed"
        );
        assert_one_scheduler(&db).await;
        // A new standby of the new primary, where the old one was.
        let dead = standby.take().unwrap();
        let (name, port) = (dead.name.clone(), dead.port);
        drop(dead); // its files go
        standby = Some(Cluster::standby_of(&primary, &name, port));
        let what = format!("after failover {failover}");
        child = supervisor.tend(child, &db, &urls, &log, 20, &what).await;
    }
    supervisor.finish(child, &urls, &log).await;
    let what = format!(
        "{failovers} failovers to a synchronous standby, {} processors fenced and restarted, {} runs completed between them",
        supervisor.restarts, supervisor.runs.complete
    );
    assert_scenario_end(&db, &urls, &what).await;
    drop(service);
    db.close().await;
}

/// An asynchronous standby loses what had not reached it: here every
/// checkpoint decided after its replication was cut. sinkgate must then
/// report the recovery point the new primary holds, and fence the
/// processors that went on from the lost ones; they resume from that
/// recovery point and the sink ends up exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_lagging_asynchronous_standby_fences_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut rng = Rng::from_env(41);
    let mut supervisor = Supervisor {
        restart_stopped: true,
        ..Default::default()
    };
    let rounds = iterations().div_ceil(4);
    let mut lost_in_all = 0;
    for round in 1..=rounds {
        let primary = Cluster::create("sinkgate-async-a", free_port());
        // The standby streams through a proxy, so the test can make it lag.
        let replication = Proxy::start(primary.port, 41).await;
        let standby = Cluster::async_standby("sinkgate-async-b", free_port(), replication.port);
        let proxy = Proxy::start(primary.port, 42).await;
        let service =
            Service::start_with(&proxy.url(&primary.url()), free_port(), &ACQUIRE_TIMEOUT).await;
        let urls = vec![service.url()];
        let db = test_pool(&proxy.url(&primary.url())).await;
        let log = setup(&db, &urls[0]).await;
        let mut child = processor(&urls, log.path(), 150);
        tokio::time::sleep(rng.millis(300, 800)).await;
        // From here on, the standby hears nothing.
        replication.cut_off();
        let at_cut = committed_events(&urls[0]).await;
        let epoch = reqwest::get(format!("{}/v1/jobs/{JOB}", urls[0]))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["epoch"]
            .as_i64()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let at_failover = committed_events(&urls[0]).await;
        assert!(
            at_failover > at_cut,
            "no checkpoint was decided while the standby lagged ({at_cut} events committed)"
        );
        primary.kill();
        standby.promote();
        proxy.retarget(standby.port);
        proxy.reset_all();
        wait_ready(&urls[0], Duration::from_secs(30)).await;
        // The recovery point is the new primary's: the lost checkpoints are
        // not reported.
        let after = committed_events(&urls[0]).await;
        assert!(
            after < at_failover,
            "recovery point {after} events, the lost primary had {at_failover}"
        );
        lost_in_all += at_failover - after;
        // The epoch the processor was in is fenced, naming the failover.
        let (status, problem, _) = post(
            &urls[0],
            "/writes",
            serde_json::json!({"task_id": "task-0", "epoch": epoch, "batch_id": "late",
                               "rows": [{"id": 0, "partition": 0, "offset": 0, "payload": "x"}]}),
        )
        .await;
        assert_eq!(status, 409, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("failed over"),
            "{problem}"
        );
        child = supervisor
            .tend(child, &db, &urls, &log, 0, "after an asynchronous failover")
            .await;
        supervisor.finish(child, &urls, &log).await;
        let what = format!(
            "asynchronous failover {round}: the new primary lacked {} committed events, processors fenced and restarted",
            at_failover - after
        );
        assert_scenario_end(&db, &urls, &what).await;
        drop(service);
        db.close().await;
    }
    eprintln!(
        "chaos: {rounds} asynchronous failovers, {lost_in_all} committed events missing on the new primaries, {} processor restarts, each run exactly once",
        supervisor.restarts
    );
}

/// `POST` of a JSON body to the job, with how long the answer took.
async fn post(service_url: &str, path: &str, body: Value) -> (u16, Value, Duration) {
    let started = tokio::time::Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{service_url}/v1/jobs/{JOB}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

/// sinkgate's sessions that have been waiting on a lock, running or
/// sitting in a transaction for more than `for_seconds`.
async fn stuck_sinkgate_sessions(db: &PgPool, for_seconds: f64) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name LIKE 'sinkgate%'
           AND (wait_event_type = 'Lock' OR state IN ('active', 'idle in transaction'))
           AND now() - state_change > make_interval(secs => $1)",
    )
    .bind(for_seconds)
    .fetch_one(db)
    .await
    .unwrap()
}

/// Issue "database failures", slow database: a lock held by someone else
/// (a long transaction on the job's row, a migration holding the sink) or
/// a statement that hangs gets requests answered 503 in bounded time, far
/// inside the request deadline; nothing waits on in the pool; a refused
/// write left nothing behind; the blocked promotion lands once the lock
/// goes.
#[sqlx::test]
async fn a_held_lock_or_a_hung_statement_gets_answers_in_bounded_time(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let _serial = SERIAL.lock().await;
    let db = pool(&connect).await;
    let service = Service::start_with(
        &database_url(&connect),
        free_port(),
        &[
            "--db-lock-timeout-ms",
            "500",
            "--db-statement-timeout-ms",
            "1000",
        ],
    )
    .await;
    let url = service.url();
    let _log = setup(&db, &url).await;
    let (status, attempt, _) = post(&url, "/attempts", serde_json::json!({})).await;
    assert_eq!(status, 200, "{attempt}");
    let epoch = attempt["epoch"].as_i64().unwrap();
    let write = serde_json::json!({"task_id": "task-0", "epoch": epoch, "batch_id": "b1",
        "rows": [{"id": 1, "partition": 0, "offset": 0, "payload": "one"}]});

    // A transaction elsewhere holds the job's row.
    let mut holder = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobs WHERE job_id = $1 FOR UPDATE")
        .bind(JOB)
        .execute(&mut *holder)
        .await
        .unwrap();
    for (path, body) in [
        ("/writes", write.clone()),
        ("/checkpoints", serde_json::json!({"epoch": epoch})),
    ] {
        let (status, problem, took) = post(&url, path, body).await;
        assert_eq!(status, 503, "{path}: {problem}");
        assert!(
            problem["type"].as_str().unwrap().ends_with(":unavailable"),
            "{problem}"
        );
        // The request deadline is 30 s; the lock wait is bounded at 0.5 s.
        assert!(took < Duration::from_secs(5), "{path} took {took:?}");
    }
    // Nothing waits on after its answer.
    assert_eq!(stuck_sinkgate_sessions(&db, 0.0).await, 0);
    holder.rollback().await.unwrap();
    let (status, staged, _) = post(&url, "/writes", write).await;
    assert_eq!(status, 201, "{staged}");
    assert_eq!(staged["duplicate"], false, "the refused write left a trace");

    // A statement that hangs (here a trigger someone put on sinkgate's own
    // table) is cancelled at the statement limit: 503, nothing half-done.
    sqlx::raw_sql(
        "CREATE FUNCTION hang() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$;
         CREATE TRIGGER hang BEFORE INSERT ON checkpoints FOR EACH ROW EXECUTE FUNCTION hang();",
    )
    .execute(&db)
    .await
    .unwrap();
    let (status, problem, took) =
        post(&url, "/checkpoints", serde_json::json!({"epoch": epoch})).await;
    assert_eq!(status, 503, "{problem}");
    assert!(
        problem["type"].as_str().unwrap().ends_with(":unavailable"),
        "{problem}"
    );
    assert!(took < Duration::from_secs(5), "the trigger took {took:?}");
    assert_eq!(stuck_sinkgate_sessions(&db, 0.0).await, 0);
    sqlx::raw_sql("DROP TRIGGER hang ON checkpoints")
        .execute(&db)
        .await
        .unwrap();

    // A migration holds the sink: the checkpoint is decided, its
    // promotion waits for the lock no longer than the limit and is retried.
    let mut migration = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE chaos_sink IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *migration)
        .await
        .unwrap();
    let (status, checkpoint, _) =
        post(&url, "/checkpoints", serde_json::json!({"epoch": epoch})).await;
    assert_eq!(status, 201, "{checkpoint}");
    let id = checkpoint["checkpoint_id"].as_i64().unwrap();
    for task in ["task-0", "task-1"] {
        let offsets = if task == "task-0" {
            serde_json::json!({"0": 1})
        } else {
            serde_json::json!({})
        };
        let (status, answer, took) = post(
            &url,
            &format!("/checkpoints/{id}/acks"),
            serde_json::json!({"task_id": task, "epoch": epoch, "offsets": offsets}),
        )
        .await;
        assert!(status < 300, "{answer}");
        assert!(took < Duration::from_secs(5), "ack took {took:?}");
    }
    let details: Value = reqwest::get(format!("{url}/v1/jobs/{JOB}/checkpoints/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(details["status"], "completed", "{details}");
    assert!(
        details["promotion_error"]
            .as_str()
            .is_some_and(|error| error.contains("lock")),
        "{details}"
    );
    // The scheduler's retries wait for the lock, each no longer than the limit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stuck_sinkgate_sessions(&db, 1.0).await, 0);
    migration.rollback().await.unwrap();
    // The scheduler retries the promotion (every 2 s at most).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM chaos_sink")
            .fetch_one(&db)
            .await
            .unwrap();
        if rows == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never promoted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let details: Value = reqwest::get(format!("{url}/v1/jobs/{JOB}/checkpoints/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(details["status"], "committed", "{details}");
    assert_eq!(stuck_sinkgate_sessions(&db, 0.0).await, 0);
    drop(service);
    db.close().await;
}
