use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{event_job, events, problem, word_count_job, TestApp};

async fn set_checkpointing(app: &TestApp, job: &str, tasks: &[&str], checkpointing: Value) {
    let spec = json!({"tasks": tasks, "sink": {"table": format!("{job}_sink"), "mode": "upsert", "key": ["word"]},
                      "checkpointing": checkpointing});
    assert_eq!(app.put_job(job, spec).await.status(), StatusCode::OK);
}

#[sqlx::test]
async fn max_concurrent_and_min_pause_refuse_triggers(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0"]).await;
    set_checkpointing(
        &app,
        "wc",
        &["t0"],
        json!({"max_concurrent": 1, "min_pause_ms": 60000}),
    )
    .await;

    let first = app.checkpoint("wc", epoch).await;
    let busy = problem(
        app.trigger("wc", epoch).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert!(busy["detail"].as_str().unwrap().contains("max_concurrent"));

    app.ack_ok("wc", first, "t0", epoch, json!({})).await;
    let response = app.trigger("wc", epoch).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    let early = problem(response, StatusCode::TOO_MANY_REQUESTS, "too-early").await;
    assert!(early["retry_after_ms"].as_u64().unwrap() <= 60_000);
    app.stop().await;
}

#[sqlx::test]
async fn a_timed_out_checkpoint_is_aborted_and_refuses_acks(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0", "t1"]).await;
    set_checkpointing(&app, "wc", &["t0", "t1"], json!({"timeout_ms": 100})).await;
    let checkpoint = app.checkpoint("wc", epoch).await;
    app.ack_ok("wc", checkpoint, "t0", epoch, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let aborted = problem(
        app.ack("wc", checkpoint, "t1", epoch, json!({})).await,
        StatusCode::CONFLICT,
        "checkpoint-aborted",
    )
    .await;
    assert_eq!(aborted["checkpoint_id"], checkpoint);
    let details = app.checkpoint_details("wc", checkpoint).await;
    assert_eq!(details["status"], "aborted");
    assert_eq!(details["failure_reason"], "timeout");
    // The timed-out checkpoint no longer blocks the next one.
    let next = app.checkpoint("wc", epoch).await;
    assert!(next > checkpoint);
    app.stop().await;
}

#[sqlx::test]
async fn a_decline_aborts_the_checkpoint(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0", "t1"]).await;
    let checkpoint = app.checkpoint("wc", epoch).await;
    let declined = app.decline("wc", checkpoint, "t1", epoch).await;
    assert_eq!(declined.status(), StatusCode::OK);
    let body: Value = declined.json().await.unwrap();
    assert_eq!(body["status"], "aborted");
    assert_eq!(body["failure_reason"], "declined by t1: test");
    assert_eq!(
        app.decline("wc", checkpoint, "t1", epoch).await.status(),
        StatusCode::OK,
        "idempotent"
    );
    problem(
        app.ack("wc", checkpoint, "t0", epoch, json!({})).await,
        StatusCode::CONFLICT,
        "checkpoint-aborted",
    )
    .await;
    problem(
        app.decline("wc", checkpoint, "nobody", epoch).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown-task",
    )
    .await;
    problem(
        app.decline("wc", 999, "t0", epoch).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;

    let next = app.checkpoint("wc", epoch).await;
    app.ack_ok("wc", next, "t0", epoch, json!({})).await;
    app.ack_ok("wc", next, "t1", epoch, json!({})).await;
    problem(
        app.decline("wc", next, "t0", epoch).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    app.stop().await;
}

#[sqlx::test]
async fn an_operator_abort_keeps_staged_rows_for_the_next_checkpoint(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = event_job(&app, "ev", &["t0"]).await;
    let written = app.write("ev", "t0", epoch, "b1", events(1, 3)).await;
    assert_eq!(written.status(), StatusCode::CREATED);
    let stuck = app.checkpoint("ev", epoch).await;
    let abort = |id: i64, body: Value| {
        let app = &app;
        async move {
            app.post(&format!("/v1/jobs/ev/checkpoints/{id}/abort"), body)
                .await
        }
    };

    let aborted = abort(stuck, json!({"reason": "t0 is stuck"})).await;
    assert_eq!(aborted.status(), StatusCode::OK);
    let body: Value = aborted.json().await.unwrap();
    assert_eq!(body["status"], "aborted");
    assert_eq!(
        body["failure_reason"],
        "aborted by an operator: t0 is stuck"
    );
    assert_eq!(
        abort(stuck, json!({})).await.status(),
        StatusCode::OK,
        "idempotent"
    );
    assert_eq!(app.count("ev_sink").await, 0);

    // The rows staged before the abort are promoted by the next checkpoint.
    let next = app.checkpoint("ev", epoch).await;
    assert_eq!(
        app.ack_ok("ev", next, "t0", epoch, json!({})).await,
        "committed"
    );
    assert_eq!(app.count("ev_sink").await, 3);
    problem(
        abort(next, json!({})).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    problem(
        abort(999, json!({})).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    let field = problem(
        abort(next + 1, json!({"reason": 5})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(field["field"], "reason");
    app.stop().await;
}

#[sqlx::test]
async fn completing_a_checkpoint_subsumes_older_pending_ones(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0", "t1"]).await;
    set_checkpointing(&app, "wc", &["t0", "t1"], json!({"max_concurrent": 3})).await;
    let first = app.checkpoint("wc", epoch).await;
    let second = app.checkpoint("wc", epoch).await;
    app.ack_ok("wc", first, "t0", epoch, json!({})).await;
    app.ack_ok("wc", second, "t0", epoch, json!({})).await;
    assert_eq!(
        app.ack_ok("wc", second, "t1", epoch, json!({})).await,
        "committed"
    );
    let details = app.checkpoint_details("wc", first).await;
    assert_eq!(details["status"], "aborted");
    assert_eq!(details["failure_reason"], format!("subsumed by {second}"));
    app.stop().await;
}

#[sqlx::test]
async fn history_is_newest_first_filterable_and_shows_absent_acks(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0", "t1"]).await;
    set_checkpointing(&app, "wc", &["t0", "t1"], json!({"retained": 2})).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = app.checkpoint("wc", epoch).await;
        app.ack_ok("wc", id, "t0", epoch, json!({"p": id})).await;
        app.ack_ok("wc", id, "t1", epoch, json!({})).await;
        ids.push(id);
    }
    let pending = app.checkpoint("wc", epoch).await;
    app.ack_ok("wc", pending, "t1", epoch, json!({})).await;

    let history: Value = app
        .get("/v1/jobs/wc/checkpoints?limit=3")
        .await
        .json()
        .await
        .unwrap();
    let listed: Vec<i64> = history["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["checkpoint_id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, vec![pending, ids[3], ids[2]]);
    let committed = &history["checkpoints"][1];
    assert_eq!(committed["status"], "committed");
    assert!(committed["decided_at"].is_string() && committed["committed_at"].is_string());
    assert!(committed["decide_ms"].as_f64().unwrap() >= 0.0);

    let filtered: Value = app
        .get(&format!(
            "/v1/jobs/wc/checkpoints?status=committed&before={}",
            ids[3]
        ))
        .await
        .json()
        .await
        .unwrap();
    let listed: Vec<i64> = filtered["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["checkpoint_id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[2], ids[1], ids[0]]);
    problem(
        app.get("/v1/jobs/wc/checkpoints?limit=0").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    problem(
        app.get("/v1/jobs/wc/checkpoints?status=weird").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;

    let details = app.checkpoint_details("wc", pending).await;
    assert_eq!(details["acks"][0]["task_id"], "t0");
    assert_eq!(details["acks"][0]["acked"], false);
    assert_eq!(details["acks"][1]["acked"], true);

    // Only the last `retained` decided checkpoints keep ack details.
    let recent = app.checkpoint_details("wc", ids[3]).await;
    assert_eq!(recent["acks"][0]["offsets"], json!({"p": ids[3]}));
    let old = app.checkpoint_details("wc", ids[0]).await;
    assert_eq!(old["acks"][0]["acked"], true);
    assert_eq!(old["acks"][0]["offsets"], Value::Null, "pruned");
    problem(
        app.get("/v1/jobs/wc/checkpoints/999").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    app.stop().await;
}

#[sqlx::test]
async fn long_poll_wakes_when_a_checkpoint_is_triggered(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0"]).await;

    let none = app.get("/v1/jobs/wc/checkpoints/pending?wait_ms=200").await;
    assert_eq!(none.status(), StatusCode::NO_CONTENT);

    let started = Instant::now();
    let waiter = {
        let http = app.http.clone();
        let url = app.url("/v1/jobs/wc/checkpoints/pending?after=0&wait_ms=20000");
        tokio::spawn(async move { http.get(url).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let triggered = app.checkpoint("wc", epoch).await;
    let woken = waiter.await.unwrap();
    assert_eq!(woken.status(), StatusCode::OK);
    let body: Value = woken.json().await.unwrap();
    assert_eq!(body["checkpoint_id"], triggered);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the trigger, not by the deadline"
    );

    let after = app
        .get(&format!(
            "/v1/jobs/wc/checkpoints/pending?after={triggered}"
        ))
        .await;
    assert_eq!(after.status(), StatusCode::NO_CONTENT);
    problem(
        app.get("/v1/jobs/wc/checkpoints/pending?wait_ms=600000")
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    problem(
        app.get("/v1/jobs/nope/checkpoints/pending").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    app.stop().await;
}

#[sqlx::test]
async fn the_scheduler_triggers_every_interval(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0"]).await;
    set_checkpointing(&app, "wc", &["t0"], json!({"interval_ms": 100})).await;
    let found = app
        .get("/v1/jobs/wc/checkpoints/pending?wait_ms=5000")
        .await;
    assert_eq!(found.status(), StatusCode::OK);
    let body: Value = found.json().await.unwrap();
    let checkpoint = body["checkpoint_id"].as_i64().unwrap();
    assert_eq!(body["epoch"], epoch);
    assert_eq!(
        app.ack_ok("wc", checkpoint, "t0", epoch, json!({})).await,
        "committed"
    );
    let next = app
        .get(&format!(
            "/v1/jobs/wc/checkpoints/pending?after={checkpoint}&wait_ms=5000"
        ))
        .await;
    assert_eq!(next.status(), StatusCode::OK);
    let details: Value = app
        .get(&format!("/v1/jobs/wc/checkpoints/{checkpoint}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(details["trigger"], "interval");
    app.stop().await;
}
