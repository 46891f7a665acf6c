//! Chaos tests: the real `sinkgate` binary and real processor processes (the
//! Python examples, `examples/python/event_copy.py` and, for a job of two
//! outputs with deletes, `change_capture.py`) against one database, with
//! SIGKILLs at random points. After each scenario the sink must hold every
//! source event exactly once, and the committed offsets must be the ends of
//! the log.
//!
//! Whenever a processor has copied the whole log, the sink is checked and the
//! job starts over from an empty sink, so that every kill of a long soak
//! lands in the middle of work rather than on an idle, finished job.
//!
//! Bounded by default (a few kills per scenario, seeded). A soak is one
//! variable away: `DATABASE_URL=$(scripts/postgres.sh) CHAOS_ITERATIONS=200 CHAOS_SEED=7 cargo test --test chaos`.

mod support;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use support::*;

/// The scenarios run one at a time: a killed service is restarted on the
/// same port, and a concurrently running scenario could otherwise pick that
/// port while it is free and end up talking to the wrong service.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// A job of two outputs with deletes (`changes`, append; `current`, upsert
/// by key, every fifth change a delete), its processor and the service
/// killed at random points. At the end both tables are the log's ground
/// truth; all along, a reader that reads both in one snapshot never finds
/// one output's checkpoint without the other's.
#[sqlx::test]
async fn two_outputs_with_deletes_change_together_under_kills(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let _serial = SERIAL.lock().await;
    let db = pool(&connect).await;
    let mut service = Service::start(&database_url(&connect), free_port()).await;
    let log = cdc::setup(&db, &service.url()).await;
    let reader = cdc::Reader::spawn(pool(&connect).await);
    let mut rng = Rng::from_env(5);
    let mut runs = 0;
    for kill in 1..=iterations() {
        let mut child = cdc::processor(&[service.url()], log.path(), 60);
        tokio::time::sleep(rng.millis(50, 900)).await;
        if kill % 2 == 0 {
            // The service too, while the processor is at work.
            service.kill().await;
            tokio::time::sleep(rng.millis(0, 200)).await;
            service.restart().await;
            tokio::time::sleep(rng.millis(50, 400)).await;
        }
        let _ = child.kill().await;
        if cdc::offsets_done(&service.url()).await {
            runs += 1;
            let what = format!("run {runs}, after kill {kill}");
            cdc::assert_ground_truth(&db, &service.url(), &what).await;
            cdc::restart_job(&db, &service.url()).await;
        }
    }
    wait_success(
        cdc::processor(&[service.url()], log.path(), 0),
        Duration::from_secs(120),
    )
    .await;
    let seen = reader.stop().await;
    let what = format!(
        "two outputs with deletes, {} processor kills ({} with the service), {runs} runs completed between them; a reader compared both outputs in {} snapshots ({} of a non-empty sink)",
        iterations(),
        iterations() / 2,
        seen.checks,
        seen.nonempty
    );
    assert!(seen.nonempty > 0, "the reader never saw a change");
    assert_eq!(
        seen.violations,
        Vec::<i64>::new(),
        "snapshots in which one output had a checkpoint the other lacked"
    );
    cdc::assert_ground_truth(&db, &service.url(), &what).await;
    drop(service);
    db.close().await;
}
