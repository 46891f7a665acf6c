//! The word-count example (upsert, state in checkpoints) against the real
//! service, crashed at random points and restarted; the sink must hold the
//! counts computed from the log, exactly.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "../crates/sinkgate-client/examples/word_count.rs"]
mod word_count;

use std::collections::BTreeMap;
use std::time::Duration;

use helpers::TestApp;
use sinkgate::ServiceOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use word_count::{register, run, word, Args};

// This test found the service's worst bug so far: aborted processors
// cancelled handlers inside sqlx calls, which left pooled connections broken,
// and the restarted processor got 404 "job does not exist" for a live job
// (see `run_to_completion` in src/http/mod.rs).
#[sqlx::test(migrator = "sinkgate::db::MIGRATOR")]
async fn word_counts_are_exact_after_crashes(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn_with(
        &connect,
        ServiceOptions {
            tick: Duration::from_millis(100),
            ..helpers::options()
        },
    )
    .await;
    let (pool, url) = (app.db.clone(), app.base.clone());

    let log = tempfile::tempdir().unwrap();
    let log_dir = log.path().to_owned();
    let (partitions, events) = (4, 500);
    let mut truth: BTreeMap<String, i64> = BTreeMap::new();
    for p in 0..partitions {
        let lines: String = (0..events)
            .map(|offset| {
                format!(
                    "{{\"id\": {}, \"payload\": \"e\"}}\n",
                    p * 1_000_000 + offset
                )
            })
            .collect();
        std::fs::write(log_dir.join(format!("partition-{p}.ndjson")), lines).unwrap();
        for offset in 0..events {
            *truth.entry(word(p, offset)).or_default() += 1;
        }
    }
    sqlx::query("CREATE TABLE word_counts (word text PRIMARY KEY, n bigint NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let args = Args {
        url,
        job: "wordcount".into(),
        log_dir: log_dir.clone(),
        tasks: 2,
        partitions,
        batch_rows: 25,
        checkpoint_batches: 3,
    };
    register(&args).await.unwrap();

    // Crash the processor at pseudo-random points, mid-request included.
    for crash in 0..8u64 {
        let instance = tokio::spawn({
            let args = args.clone();
            async move { run(&args).await }
        });
        tokio::time::sleep(Duration::from_millis(15 + (crash * 37) % 120)).await;
        instance.abort();
        let _ = instance.await;
    }
    run(&args).await.unwrap();

    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT word, n FROM word_counts ORDER BY word")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(counts, truth.into_iter().collect::<Vec<_>>());

    app.stop().await;
}
