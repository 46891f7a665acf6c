use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{event_job, events, problem, word_count_job, TestApp};

#[sqlx::test]
async fn rows_become_visible_only_when_their_checkpoint_commits(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = event_job(&app, "ev", &["t0", "t1"]).await;
    let written = app.write("ev", "t0", epoch, "b0", events(0, 5)).await;
    assert_eq!(written.status(), StatusCode::CREATED);
    let written: Value = written.json().await.unwrap();
    assert_eq!(written["staged_rows"], 5);
    assert_eq!(written["checkpoint_id"], 1);
    assert_eq!(written["duplicate"], false);
    let ndjson = (5..8)
        .map(|id| format!("{{\"id\": {id}, \"payload\": \"event {id}\"}}\n"))
        .collect::<String>();
    assert_eq!(
        app.write_ndjson("ev", "t1", epoch, "b0", ndjson)
            .await
            .status(),
        StatusCode::CREATED
    );

    let checkpoint = app.checkpoint("ev", epoch).await;
    app.ack_ok("ev", checkpoint, "t0", epoch, json!({})).await;
    assert_eq!(
        app.count("ev_sink").await,
        0,
        "not visible before the checkpoint completes"
    );
    assert_eq!(
        app.ack_ok("ev", checkpoint, "t1", epoch, json!({})).await,
        "committed"
    );
    assert_eq!(app.count("ev_sink").await, 8);
    assert_eq!(app.staged("ev").await, 0, "promoted rows leave staging");

    let details = app.checkpoint_details("ev", checkpoint).await;
    assert_eq!(details["staged_rows"], 8);
    assert_eq!(details["promoted_rows"], 8);
    assert!(details["staged_bytes"].as_i64().unwrap() > 0);
    assert!(details["promotion_ms"].as_f64().is_some());
    assert_eq!(details["acks"][0]["staged_rows"], 5);
    assert_eq!(details["acks"][1]["staged_rows"], 3);
    app.stop().await;
}

#[sqlx::test]
async fn a_retried_batch_is_staged_once(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let epoch = event_job(&app, "ev", &["t0"]).await;
    let first: Value = app
        .write("ev", "t0", epoch, "b0", events(0, 3))
        .await
        .json()
        .await
        .unwrap();
    let retry = app.write("ev", "t0", epoch, "b0", events(0, 3)).await;
    assert_eq!(retry.status(), StatusCode::OK);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["staged_rows"], first["staged_rows"]);
    assert_eq!(retry["checkpoint_id"], first["checkpoint_id"]);
    let ndjson = "{\"id\": 10, \"payload\": \"x\"}\n";
    assert_eq!(
        app.write_ndjson("ev", "t0", epoch, "n0", ndjson)
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.write_ndjson("ev", "t0", epoch, "n0", ndjson)
            .await
            .status(),
        StatusCode::OK
    );
    // Concurrent retries of one batch.
    let racing = futures::future::join_all(
        (0..8).map(|_| app.write("ev", "t0", epoch, "b1", events(20, 2))),
    )
    .await;
    assert_eq!(
        racing
            .iter()
            .filter(|r| r.status() == StatusCode::CREATED)
            .count(),
        1
    );
    assert_eq!(app.staged("ev").await, 6);

    let checkpoint = app.checkpoint("ev", epoch).await;
    app.ack_ok("ev", checkpoint, "t0", epoch, json!({})).await;
    assert_eq!(app.count("ev_sink").await, 6);
    // A retry after the commit still answers as the first time and stages nothing.
    assert_eq!(
        app.write("ev", "t0", epoch, "b0", events(0, 3))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(app.staged("ev").await, 0);
    app.stop().await;
}

#[sqlx::test]
async fn rows_written_after_an_ack_belong_to_the_next_checkpoint(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = event_job(&app, "ev", &["t0", "t1"]).await;
    app.write("ev", "t0", epoch, "a", events(0, 2)).await;
    let first = app.checkpoint("ev", epoch).await;
    app.ack_ok("ev", first, "t0", epoch, json!({})).await;
    // After its barrier, t0's rows are for the next checkpoint.
    let after: Value = app
        .write("ev", "t0", epoch, "b", events(100, 3))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["checkpoint_id"], first + 1);
    // t1 has not reached the barrier: its rows still join the first checkpoint.
    let before: Value = app
        .write("ev", "t1", epoch, "a", events(200, 1))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(before["checkpoint_id"], first);
    app.ack_ok("ev", first, "t1", epoch, json!({})).await;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM ev_sink ORDER BY id")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(ids, vec![0, 1, 200]);
    assert_eq!(
        app.staged("ev").await,
        3,
        "t0's later rows wait for the next checkpoint"
    );

    let second = app.checkpoint("ev", epoch).await;
    app.ack_ok("ev", second, "t0", epoch, json!({})).await;
    app.ack_ok("ev", second, "t1", epoch, json!({})).await;
    assert_eq!(app.count("ev_sink").await, 6);
    app.stop().await;
}

#[sqlx::test]
async fn an_aborted_checkpoints_rows_are_promoted_by_the_next_one(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = event_job(&app, "ev", &["t0", "t1"]).await;
    app.write("ev", "t0", epoch, "a", events(0, 4)).await;
    let aborted = app.checkpoint("ev", epoch).await;
    app.ack_ok("ev", aborted, "t0", epoch, json!({})).await;
    app.write("ev", "t0", epoch, "b", events(10, 1)).await;
    assert_eq!(
        app.decline("ev", aborted, "t1", epoch).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.count("ev_sink").await, 0);

    let next = app.checkpoint("ev", epoch).await;
    app.ack_ok("ev", next, "t0", epoch, json!({})).await;
    app.ack_ok("ev", next, "t1", epoch, json!({})).await;
    assert_eq!(
        app.count("ev_sink").await,
        5,
        "rows sealed in the aborted checkpoint are not lost"
    );
    let details = app.checkpoint_details("ev", next).await;
    assert_eq!(details["promoted_rows"], 5);
    app.stop().await;
}

#[sqlx::test]
async fn upsert_keeps_the_last_write_per_key_within_and_across_checkpoints(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0", "t1"]).await;
    app.write(
        "wc",
        "t0",
        epoch,
        "1",
        json!([{"word": "a", "n": 1}, {"word": "a", "n": 2}, {"word": "b", "n": 1}]),
    )
    .await;
    app.write("wc", "t1", epoch, "1", json!([{"word": "c", "n": 7}]))
        .await;
    app.write("wc", "t0", epoch, "2", json!([{"word": "a", "n": 3}]))
        .await;
    let first = app.checkpoint("wc", epoch).await;
    app.ack_ok("wc", first, "t0", epoch, json!({})).await;
    app.ack_ok("wc", first, "t1", epoch, json!({})).await;
    assert_eq!(
        app.word_counts("wc_sink").await,
        vec![("a".into(), 3), ("b".into(), 1), ("c".into(), 7)]
    );

    app.write(
        "wc",
        "t1",
        epoch,
        "2",
        json!([{"word": "a", "n": 10}, {"word": "d", "n": 1}]),
    )
    .await;
    let second = app.checkpoint("wc", epoch).await;
    app.ack_ok("wc", second, "t0", epoch, json!({})).await;
    app.ack_ok("wc", second, "t1", epoch, json!({})).await;
    assert_eq!(
        app.word_counts("wc_sink").await,
        vec![
            ("a".into(), 10),
            ("b".into(), 1),
            ("c".into(), 7),
            ("d".into(), 1)
        ]
    );
    app.stop().await;
}

#[sqlx::test]
async fn a_bad_row_rejects_its_whole_batch_naming_row_and_column(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql(
        "CREATE TABLE typed (id integer PRIMARY KEY, name varchar(5) NOT NULL, ok boolean, u uuid, d date, doc jsonb, tags text[])",
    )
    .await;
    app.put_job(
        "typed",
        json!({"tasks": ["t0"], "sink": {"table": "typed", "mode": "append"}}),
    )
    .await;
    let epoch = app.epoch("typed").await;
    let good = json!({"id": 1, "name": "a"});
    let cases = [
        (json!({"id": "many", "name": "a"}), "id"),
        (json!({"id": 3_000_000_000_i64, "name": "a"}), "id"),
        (json!({"id": 2}), "name"),
        (json!({"id": 2, "name": null}), "name"),
        (json!({"id": 2, "name": "a", "nope": 1}), "nope"),
        (json!({"id": 2, "name": 5}), "name"),
        (json!({"id": 2, "name": "a", "ok": "yes"}), "ok"),
        (json!({"id": 2, "name": "a\u{0}b"}), "name"),
        // Checked by PostgreSQL's own parsers during COPY:
        (json!({"id": 2, "name": "toolong"}), "name"),
        (json!({"id": 2, "name": "a", "u": "not-a-uuid"}), "u"),
        (json!({"id": 2, "name": "a", "d": "2024-02-30"}), "d"),
    ];
    for (index, (bad, column)) in cases.into_iter().enumerate() {
        let rows = json!([good, good, bad, good]);
        let body = problem(
            app.write("typed", "t0", epoch, &format!("b{index}"), rows)
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "row-rejected",
        )
        .await;
        assert_eq!(body["row"], 3, "{bad}: {body}");
        assert_eq!(body["column"], column, "{bad}: {body}");
    }
    let not_object = problem(
        app.write_ndjson(
            "typed",
            "t0",
            epoch,
            "nd",
            "{\"id\": 1, \"name\": \"a\"}\n[1]\n",
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "row-rejected",
    )
    .await;
    assert_eq!(not_object["row"], 2);
    let array_row = problem(
        app.write("typed", "t0", epoch, "arr", json!([[1, "a"]]))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "row-rejected",
    )
    .await;
    assert_eq!(array_row["row"], 1);
    assert_eq!(
        app.staged("typed").await,
        0,
        "a rejected batch leaves nothing staged"
    );

    // A rejected batch id is free to be sent again, corrected.
    let fixed = json!([good, {"id": 2, "name": "tab\tb", "ok": true, "u": "6f1c1f8e-3f0e-4a57-9d5e-6a4f3c2b1a00",
                             "d": "2024-02-29", "doc": {"k": [1, "x\\y\n"]}, "tags": ["a\"b", "c,d", null]}]);
    assert_eq!(
        app.write("typed", "t0", epoch, "b0", fixed).await.status(),
        StatusCode::CREATED
    );
    let checkpoint = app.checkpoint("typed", epoch).await;
    app.ack_ok("typed", checkpoint, "t0", epoch, json!({}))
        .await;
    let row: (String, Value, Vec<Option<String>>) =
        sqlx::query_as("SELECT name, doc, tags FROM typed WHERE id = 2")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(row.0, "tab\tb");
    assert_eq!(row.1, json!({"k": [1, "x\\y\n"]}));
    assert_eq!(
        row.2,
        vec![Some("a\"b".to_owned()), Some("c,d".to_owned()), None]
    );
    app.stop().await;
}

#[sqlx::test]
async fn sink_defaults_apply_to_omitted_columns(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE d (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, note text NOT NULL DEFAULT 'none', n int, twice int GENERATED ALWAYS AS (n * 2) STORED)").await;
    app.put_job(
        "d",
        json!({"tasks": ["t0"], "sink": {"table": "d", "mode": "append"}}),
    )
    .await;
    let epoch = app.epoch("d").await;
    app.write(
        "d",
        "t0",
        epoch,
        "b",
        json!([{"n": 1}, {"id": 100, "note": "given", "n": 2}]),
    )
    .await;
    problem(
        app.write("d", "t0", epoch, "c", json!([{"twice": 4}]))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "row-rejected",
    )
    .await;
    let checkpoint = app.checkpoint("d", epoch).await;
    app.ack_ok("d", checkpoint, "t0", epoch, json!({})).await;
    let rows: Vec<(i64, String, i32)> = sqlx::query_as("SELECT id, note, twice FROM d ORDER BY n")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(rows[0].1, "none");
    assert_eq!(rows[0].2, 2);
    assert_eq!(rows[1], (100, "given".into(), 4));
    app.stop().await;
}

#[sqlx::test]
async fn a_failed_promotion_keeps_the_decision_and_rolls_forward_after_a_crash(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // No scheduler retries during the test: only start-up and /attempts roll forward.
    let quiet = crate::helpers::quiet_options();
    let app = TestApp::spawn_with(&connect, quiet.clone()).await;
    let epoch = event_job(&app, "ev", &["t0"]).await;
    // A constraint the staging table does not check: promotion will fail.
    app.sql("ALTER TABLE ev_sink ADD CONSTRAINT small_ids CHECK (id < 100)")
        .await;
    app.write("ev", "t0", epoch, "b", events(98, 4)).await;
    let checkpoint = app.checkpoint("ev", epoch).await;
    assert_eq!(
        app.ack_ok("ev", checkpoint, "t0", epoch, json!({"0": 4}))
            .await,
        "completed"
    );
    let details = app.checkpoint_details("ev", checkpoint).await;
    assert_eq!(details["status"], "completed");
    assert!(details["promotion_error"]
        .as_str()
        .unwrap()
        .contains("small_ids"));
    assert_eq!(
        app.count("ev_sink").await,
        0,
        "a failed promotion applies nothing"
    );
    // The decision stands, but no recovery point is served whose rows are
    // not in the sink.
    let blocked = problem(
        app.get("/v1/jobs/ev/recovery").await,
        StatusCode::CONFLICT,
        "promotion-blocked",
    )
    .await;
    assert_eq!(blocked["checkpoint_id"], checkpoint);
    assert!(blocked["sink_error"]
        .as_str()
        .unwrap()
        .contains("small_ids"));

    // The service dies; the operator fixes the sink; a new instance rolls forward at start-up.
    app.kill().await;
    let app = TestApp::spawn_with(&connect, quiet.clone()).await;
    assert_eq!(app.count("ev_sink").await, 0);
    app.sql("ALTER TABLE ev_sink DROP CONSTRAINT small_ids")
        .await;
    app.kill().await;
    let app = TestApp::spawn_with(&connect, quiet).await;
    assert_eq!(app.count("ev_sink").await, 4, "promoted at start-up");
    assert_eq!(
        app.checkpoint_details("ev", checkpoint).await["status"],
        "committed"
    );

    // The same through /attempts: decided, unpromoted, then a restart.
    app.sql("ALTER TABLE ev_sink ADD CONSTRAINT small_ids CHECK (id < 200)")
        .await;
    app.write("ev", "t0", epoch, "c", events(199, 2)).await;
    let second = app.checkpoint("ev", epoch).await;
    assert_eq!(
        app.ack_ok("ev", second, "t0", epoch, json!({"0": 6})).await,
        "completed"
    );
    let still_failing = problem(
        app.post("/v1/jobs/ev/attempts", json!({})).await,
        StatusCode::CONFLICT,
        "promotion-blocked",
    )
    .await;
    assert_eq!(still_failing["checkpoint_id"], second);
    let job: Value = app.get("/v1/jobs/ev").await.json().await.unwrap();
    assert_eq!(job["epoch"], epoch, "a refused attempt changes nothing");
    app.sql("ALTER TABLE ev_sink DROP CONSTRAINT small_ids")
        .await;
    let attempt = app.attempt("ev").await;
    assert_eq!(attempt["rolled_forward_checkpoints"], json!([second]));
    assert_eq!(attempt["recovery"]["status"], "committed");
    assert_eq!(app.count("ev_sink").await, 6);
    app.stop().await;
}

#[sqlx::test]
async fn orphans_of_a_killed_epoch_never_reach_the_sink(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let old = event_job(&app, "ev", &["t0", "t1"]).await;
    app.write("ev", "t0", old, "a", events(0, 3)).await;
    let committed = app.checkpoint("ev", old).await;
    app.ack_ok("ev", committed, "t0", old, json!({"0": 3}))
        .await;
    app.ack_ok("ev", committed, "t1", old, json!({"1": 0}))
        .await;
    // Staged but never decided: orphans once the processors die.
    app.write("ev", "t0", old, "b", events(1000, 50)).await;
    app.write("ev", "t1", old, "b", events(2000, 50)).await;
    let orphaned = app.checkpoint("ev", old).await;
    app.ack_ok("ev", orphaned, "t0", old, json!({"0": 53}))
        .await;
    app.kill().await;

    let app = TestApp::spawn(&connect).await;
    let attempt = app.attempt("ev").await;
    let new = attempt["epoch"].as_i64().unwrap();
    assert_eq!(attempt["recovery"]["offsets"], json!({"0": 3, "1": 0}));
    assert_eq!(attempt["aborted_checkpoints"], json!([orphaned]));
    assert_eq!(app.staged("ev").await, 0);
    app.write("ev", "t0", new, "a", events(3, 1)).await;
    let next = app.checkpoint("ev", new).await;
    app.ack_ok("ev", next, "t0", new, json!({"0": 4})).await;
    app.ack_ok("ev", next, "t1", new, json!({"1": 0})).await;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM ev_sink ORDER BY id")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(ids, vec![0, 1, 2, 3]);
    app.stop().await;
}

/// Peak resident memory of this process (the service runs in it), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// An NDJSON body generated on the fly, so the client holds none of it.
fn ndjson_stream(first: i64, rows: i64, pad: usize) -> reqwest::Body {
    let padding = "x".repeat(pad);
    let chunks = (0..rows / 1000).map(move |chunk| {
        let mut text = String::new();
        for id in first + chunk * 1000..first + (chunk + 1) * 1000 {
            text.push_str(&format!("{{\"id\": {id}, \"payload\": \"{padding}\"}}\n"));
        }
        Ok::<_, std::io::Error>(text)
    });
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

#[sqlx::test]
async fn a_large_ndjson_batch_streams_in_bounded_memory_and_aborts_in_constant_time(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = event_job(&app, "ev", &["t0"]).await;
    // Warm up (pool, allocator), then measure the peak while streaming
    // 200k rows of ~250 bytes (~50 MB).
    app.write_ndjson(
        "ev",
        "t0",
        epoch,
        "warm",
        ndjson_stream(-10_000, 10_000, 230),
    )
    .await;
    let before = peak_rss();
    let response = app
        .write_ndjson("ev", "t0", epoch, "big", ndjson_stream(0, 200_000, 230))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["staged_rows"], 200_000);
    let bytes = body["staged_bytes"].as_u64().unwrap();
    let growth = peak_rss().saturating_sub(before);
    println!("staged {bytes} bytes; peak RSS grew by {growth} bytes");
    assert!(bytes > 45_000_000);
    assert!(
        growth < bytes / 4,
        "memory grew by {growth} bytes while staging {bytes}"
    );

    // Abort of 210k orphaned rows vs. abort of 10 rows.
    let started = Instant::now();
    app.attempt("ev").await;
    let large = started.elapsed();
    assert_eq!(app.staged("ev").await, 0);
    let epoch = epoch + 1;
    app.write("ev", "t0", epoch, "small", events(0, 10)).await;
    let started = Instant::now();
    app.attempt("ev").await;
    let small = started.elapsed();
    println!("abort: {large:?} for 210k rows, {small:?} for 10 rows");
    // TRUNCATE, not DELETE: no dead tuples were produced by the aborts.
    let deleted: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(n_tup_del), 0)::bigint FROM pg_stat_xact_user_tables WHERE schemaname = 'sinkgate_staging'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(deleted, 0);
    assert!(
        large < small * 20 + Duration::from_millis(500),
        "large {large:?} vs small {small:?}"
    );
    app.stop().await;
}

// Issue "more of what sinks need": first write wins. Within a checkpoint
// the earliest staged row of a key is promoted, across checkpoints (and for
// rows someone else put there) the row already in the sink stays; a row
// without its key is refused at staging, as in upsert mode; the key must be
// a sound unique key, as in upsert mode.
#[sqlx::test]
async fn first_write_wins_keeps_the_first_row_per_key_within_and_across_checkpoints(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE firsts (word text PRIMARY KEY, n bigint NOT NULL)")
        .await;
    app.sql("INSERT INTO firsts VALUES ('owned', 100)").await;
    let spec = |key: Value| json!({"tasks": ["t0", "t1"], "sink": {"table": "firsts", "mode": "first_write_wins", "key": key}});
    let refused = problem(
        app.put_job("fw", spec(json!(["n"]))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(refused["field"], "sink.key", "{refused}");
    assert_eq!(
        app.put_job("fw", spec(json!(["word"]))).await.status(),
        StatusCode::CREATED
    );
    let job: Value = app.get("/v1/jobs/fw").await.json().await.unwrap();
    assert_eq!(job["sink"]["mode"], "first_write_wins");
    let epoch = app.epoch("fw").await;

    app.write(
        "fw",
        "t0",
        epoch,
        "1",
        json!([{"word": "a", "n": 1}, {"word": "a", "n": 2}, {"word": "owned", "n": 1}]),
    )
    .await;
    app.write("fw", "t1", epoch, "1", json!([{"word": "a", "n": 3}]))
        .await;
    problem(
        app.write("fw", "t0", epoch, "2", json!([{"n": 5}])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "row-rejected",
    )
    .await;
    let first = app.checkpoint("fw", epoch).await;
    app.ack_ok("fw", first, "t0", epoch, json!({})).await;
    app.ack_ok("fw", first, "t1", epoch, json!({})).await;
    assert_eq!(
        app.word_counts("firsts").await,
        vec![("a".into(), 1), ("owned".into(), 100)]
    );
    let details = app.checkpoint_details("fw", first).await;
    assert_eq!(details["promoted_rows"], 1, "{details}");

    app.write(
        "fw",
        "t1",
        epoch,
        "2",
        json!([{"word": "a", "n": 10}, {"word": "b", "n": 4}]),
    )
    .await;
    let second = app.checkpoint("fw", epoch).await;
    app.ack_ok("fw", second, "t0", epoch, json!({})).await;
    app.ack_ok("fw", second, "t1", epoch, json!({})).await;
    assert_eq!(
        app.word_counts("firsts").await,
        vec![("a".into(), 1), ("b".into(), 4), ("owned".into(), 100)]
    );
    app.stop().await;
}

// A row whose key is already in the sink changes nothing in first-write-wins
// mode, so it must not run the sink's CHECK constraints or BEFORE triggers
// (ON CONFLICT DO NOTHING alone would, and a refused no-op would block the
// checkpoint, or fire the trigger that owns some of the sink's columns).
#[sqlx::test]
async fn first_write_wins_leaves_rows_of_existing_keys_out_before_checks_and_triggers(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE firsts (word text PRIMARY KEY, n bigint NOT NULL CHECK (n > 0))")
        .await;
    app.sql("CREATE TABLE fired (word text)").await;
    app.sql(
        "CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO fired VALUES (NEW.word); RETURN NEW; END $$",
    )
    .await;
    app.sql("CREATE TRIGGER note BEFORE INSERT ON firsts FOR EACH ROW EXECUTE FUNCTION note()")
        .await;
    app.sql("INSERT INTO firsts VALUES ('owned', 100)").await;
    app.sql("DELETE FROM fired").await;
    let spec = json!({"tasks": ["t0"], "sink": {"table": "firsts", "mode": "first_write_wins", "key": ["word"]}});
    assert_eq!(app.put_job("fw", spec).await.status(), StatusCode::CREATED);
    let epoch = app.epoch("fw").await;
    app.write(
        "fw",
        "t0",
        epoch,
        "1",
        json!([{"word": "owned", "n": -1}, {"word": "new", "n": 2}]),
    )
    .await;
    let checkpoint = app.checkpoint("fw", epoch).await;
    assert_eq!(
        app.ack_ok("fw", checkpoint, "t0", epoch, json!({})).await,
        "committed"
    );
    assert_eq!(
        app.word_counts("firsts").await,
        vec![("new".into(), 2), ("owned".into(), 100)]
    );
    let fired: Vec<String> = sqlx::query_scalar("SELECT word FROM fired")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(fired, vec!["new".to_owned()]);
    app.stop().await;
}
