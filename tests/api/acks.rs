use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{event_job, events, problem, word_count_job, TestApp};

#[sqlx::test]
async fn checkpoint_completes_when_every_task_acked(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0", "t1", "t2"]).await;
    let checkpoint = app.checkpoint("wc", epoch).await;
    assert_eq!(
        app.ack_ok("wc", checkpoint, "t0", epoch, json!({"0": 1}))
            .await,
        "pending"
    );
    assert_eq!(
        app.ack_ok("wc", checkpoint, "t1", epoch, json!({"1": 1}))
            .await,
        "pending"
    );
    let last = app
        .ack("wc", checkpoint, "t2", epoch, json!({"2": 1}))
        .await;
    let body: Value = last.json().await.unwrap();
    assert_eq!(
        body,
        json!({"checkpoint_id": checkpoint, "status": "committed", "acked_tasks": 3, "total_tasks": 3})
    );
    app.stop().await;
}

#[sqlx::test]
async fn identical_reack_answers_the_same_and_a_different_one_conflicts(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0", "t1"]).await;
    let checkpoint = app.checkpoint("wc", epoch).await;
    assert_eq!(
        app.ack_ok("wc", checkpoint, "t0", epoch, json!({"0": 5}))
            .await,
        "pending"
    );
    assert_eq!(
        app.ack_ok("wc", checkpoint, "t0", epoch, json!({"0": 5}))
            .await,
        "pending"
    );
    problem(
        app.ack("wc", checkpoint, "t0", epoch, json!({"0": 6}))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert_eq!(
        app.ack_ok("wc", checkpoint, "t1", epoch, json!({"1": 5}))
            .await,
        "committed"
    );
    // A retry of an ack whose answer was lost, after the commit: same answer.
    assert_eq!(
        app.ack_ok("wc", checkpoint, "t0", epoch, json!({"0": 5}))
            .await,
        "committed"
    );
    let details = app.checkpoint_details("wc", checkpoint).await;
    assert_eq!(details["acked_tasks"], 2);
    app.stop().await;
}

#[sqlx::test]
async fn acks_with_bad_content_are_refused_and_change_nothing(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0", "t1"]).await;
    let checkpoint = app.checkpoint("wc", epoch).await;
    let path = format!("/v1/jobs/wc/checkpoints/{checkpoint}/acks");

    problem(
        app.ack("wc", checkpoint, "ghost", epoch, json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown-task",
    )
    .await;
    problem(
        app.ack("wc", 777, "t0", epoch, json!({})).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    let negative = problem(
        app.ack("wc", checkpoint, "t0", epoch, json!({"3": -1}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(negative["field"], "offsets.3");
    let fractional = problem(
        app.ack("wc", checkpoint, "t0", epoch, json!({"3": 1.5}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(fractional["field"], "offsets.3");
    let big_state = json!({"task_id": "t0", "epoch": epoch, "offsets": {}, "state": {"inline": "x".repeat(10_000)}});
    let too_big = problem(
        app.post(&path, big_state).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(too_big["field"], "state.inline");
    let unknown_field =
        json!({"task_id": "t0", "epoch": epoch, "offsets": {}, "state": {"inline": 1, "extra": 2}});
    problem(
        app.post(&path, unknown_field).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    let bad_external = json!({"task_id": "t0", "epoch": epoch, "state": {"external": {"uri": "s3://x", "size_bytes": -1, "checksum": "c"}}});
    let bad_external = problem(
        app.post(&path, bad_external).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(bad_external["field"], "state.external.size_bytes");

    // A partition may be claimed by only one task per checkpoint.
    app.ack_ok("wc", checkpoint, "t0", epoch, json!({"0": 10}))
        .await;
    let claimed = problem(
        app.ack("wc", checkpoint, "t1", epoch, json!({"0": 10, "1": 3}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(claimed["field"], "offsets.0");

    let details = app.checkpoint_details("wc", checkpoint).await;
    assert_eq!(details["status"], "pending");
    assert_eq!(details["acked_tasks"], 1);
    assert_eq!(details["acks"][1]["acked"], false);
    app.stop().await;
}

#[sqlx::test]
async fn an_offset_below_the_committed_one_is_a_regression(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0"]).await;
    let first = app.checkpoint("wc", epoch).await;
    app.ack_ok("wc", first, "t0", epoch, json!({"0": 100}))
        .await;
    let second = app.checkpoint("wc", epoch).await;
    let regression = problem(
        app.ack("wc", second, "t0", epoch, json!({"0": 99})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "offset-regression",
    )
    .await;
    assert_eq!(regression["partition"], "0");
    assert_eq!(regression["committed_offset"], 100);
    assert_eq!(
        app.ack_ok("wc", second, "t0", epoch, json!({"0": 100}))
            .await,
        "committed",
        "equal is fine"
    );

    // Below the task's own previous ack, even before that ack is decided.
    // (Adding t1 fences the epoch: a new attempt resumes from offset 100.)
    let spec = json!({"tasks": ["t0", "t1"], "sink": {"table": "wc_sink", "mode": "upsert", "key": ["word"]},
                      "checkpointing": {"max_concurrent": 2}});
    assert_eq!(app.put_job("wc", spec).await.status(), StatusCode::OK);
    let epoch = app.epoch("wc").await;
    let third = app.checkpoint("wc", epoch).await;
    let fourth = app.checkpoint("wc", epoch).await;
    app.ack_ok("wc", third, "t0", epoch, json!({"0": 150}))
        .await;
    let own = problem(
        app.ack("wc", fourth, "t0", epoch, json!({"0": 120})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "offset-regression",
    )
    .await;
    assert_eq!(own["committed_offset"], 150);
    assert_eq!(
        app.ack_ok("wc", fourth, "t0", epoch, json!({"0": 150}))
            .await,
        "pending"
    );
    app.stop().await;
}

#[sqlx::test]
async fn acks_must_go_to_increasing_checkpoints(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0", "t1"]).await;
    let spec = json!({"tasks": ["t0", "t1"], "sink": {"table": "wc_sink", "mode": "upsert", "key": ["word"]},
                      "checkpointing": {"max_concurrent": 2}});
    assert_eq!(app.put_job("wc", spec).await.status(), StatusCode::OK);
    let first = app.checkpoint("wc", epoch).await;
    let second = app.checkpoint("wc", epoch).await;
    app.ack_ok("wc", second, "t0", epoch, json!({})).await;
    let out_of_order = problem(
        app.ack("wc", first, "t0", epoch, json!({})).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert!(out_of_order["detail"]
        .as_str()
        .unwrap()
        .contains("increasing"));
    app.stop().await;
}

/// Posts a batch of acks (`acks`: `[task, offsets]` pairs) for checkpoint
/// `checkpoint`.
async fn ack_batch(
    app: &TestApp,
    checkpoint: i64,
    epoch: i64,
    acks: &[(&str, Value)],
    query: &str,
) -> reqwest::Response {
    let acks: Vec<Value> = acks
        .iter()
        .map(|(task, offsets)| json!({"task_id": task, "epoch": epoch, "offsets": offsets}))
        .collect();
    app.post(
        &format!("/v1/jobs/ev/checkpoints/{checkpoint}/acks/batch{query}"),
        json!({ "acks": acks }),
    )
    .await
}

#[sqlx::test]
async fn a_batch_acks_for_several_tasks_all_or_none(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let epoch = event_job(&app, "ev", &["t0", "t1", "t2", "t3"]).await;
    for (task, first) in [("t0", 0), ("t2", 10)] {
        let written = app.write("ev", task, epoch, "b", events(first, 5)).await;
        assert_eq!(written.status(), StatusCode::CREATED);
    }
    let checkpoint = app.checkpoint("ev", epoch).await;
    let first = ack_batch(
        &app,
        checkpoint,
        epoch,
        &[("t1", json!({"1": 7})), ("t0", json!({"0": 5}))],
        "",
    )
    .await;
    assert_eq!(first.status(), StatusCode::OK);
    let body: Value = first.json().await.unwrap();
    assert_eq!(
        body,
        json!({"checkpoint_id": checkpoint, "status": "pending", "acked_tasks": 2, "total_tasks": 4})
    );

    // One refused ack refuses the batch, named by its place; the other
    // ack of it is not recorded either.
    let refused = ack_batch(
        &app,
        checkpoint,
        epoch,
        &[("t2", json!({"2": 5})), ("t9", json!({}))],
        "",
    )
    .await;
    let body = problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "unknown-task").await;
    assert_eq!(body["field"], "acks[1].task_id", "{body}");
    let regressed = ack_batch(
        &app,
        checkpoint,
        epoch,
        &[("t2", json!({"2": 5})), ("t3", json!({"1": 6}))],
        "",
    )
    .await;
    let body = problem(
        regressed,
        StatusCode::UNPROCESSABLE_ENTITY,
        "offset-regression",
    )
    .await;
    assert_eq!(body["field"], "acks[1].offsets.1", "{body}");
    let twice = ack_batch(
        &app,
        checkpoint,
        epoch,
        &[("t2", json!({"2": 5})), ("t2", json!({"2": 5}))],
        "",
    )
    .await;
    let body = problem(twice, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["field"], "acks[1].task_id", "{body}");
    let empty = ack_batch(&app, checkpoint, epoch, &[], "").await;
    problem(empty, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(
        app.checkpoint_details("ev", checkpoint).await["acked_tasks"],
        2
    );
    // A retried ack (its answer was lost) with a new one: the new one is
    // recorded, the retry answered as before.
    let mixed = ack_batch(
        &app,
        checkpoint,
        epoch,
        &[("t0", json!({"0": 5})), ("t3", json!({"3": 1}))],
        "",
    )
    .await;
    let body: Value = mixed.json().await.unwrap();
    assert_eq!(
        (body["status"].clone(), body["acked_tasks"].clone()),
        (json!("pending"), json!(3)),
        "{body}"
    );
    assert_eq!(app.count("ev_sink").await, 0);

    // The batch that completes the set commits every task's rows.
    let last = [("t2", json!({"2": 5})), ("t3", json!({"3": 1}))];
    let completed = ack_batch(&app, checkpoint, epoch, &last, "").await;
    let body: Value = completed.json().await.unwrap();
    assert_eq!(body["status"], "committed", "{body}");
    assert_eq!(app.count("ev_sink").await, 10);
    // Its retry (a lost answer) answers the same; a changed one is refused.
    let again = ack_batch(&app, checkpoint, epoch, &last, "").await;
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["status"], "committed", "{body}");
    let changed = ack_batch(
        &app,
        checkpoint,
        epoch,
        &[("t2", json!({"2": 5})), ("t3", json!({"3": 2}))],
        "",
    )
    .await;
    let body = problem(changed, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(body["field"], "acks[1]", "{body}");
    assert_eq!(app.count("ev_sink").await, 10);
    app.stop().await;
}

#[sqlx::test]
async fn a_background_promotion_answers_once_recorded_and_commits_after(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = event_job(&app, "ev", &["t0", "t1"]).await;
    let written = app.write("ev", "t0", epoch, "a", events(0, 100)).await;
    assert_eq!(written.status(), StatusCode::CREATED);
    // Promotions are slowed, so the answer comes before the rows.
    app.sql(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
         CREATE TRIGGER slow AFTER INSERT ON ev_sink FOR EACH STATEMENT EXECUTE FUNCTION slow();",
    )
    .await;
    let checkpoint = app.checkpoint("ev", epoch).await;
    assert_eq!(
        app.ack_ok("ev", checkpoint, "t0", epoch, json!({"0": 100}))
            .await,
        "pending"
    );
    let started = std::time::Instant::now();
    let last = app
        .post(
            &format!("/v1/jobs/ev/checkpoints/{checkpoint}/acks?promote=background"),
            json!({"task_id": "t1", "epoch": epoch, "offsets": {"1": 3}}),
        )
        .await;
    assert_eq!(last.status(), StatusCode::OK);
    let body: Value = last.json().await.unwrap();
    assert_eq!(
        body,
        json!({"checkpoint_id": checkpoint, "status": "pending", "acked_tasks": 2, "total_tasks": 2})
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(450));
    // The tasks go on at once: these rows belong to the next checkpoint,
    // not to the one being promoted.
    for task in ["t0", "t1"] {
        let written = app
            .write(
                "ev",
                task,
                epoch,
                "b",
                events(if task == "t0" { 100 } else { 200 }, 10),
            )
            .await;
        let body: Value = written.json().await.unwrap();
        assert_eq!(body["checkpoint_id"], checkpoint + 1, "{body}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.checkpoint_details("ev", checkpoint).await["status"] != "committed" {
        assert!(std::time::Instant::now() < deadline, "never committed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(app.count("ev_sink").await, 100);
    let (_, status) = app.commit("ev", epoch, &["t0", "t1"]).await;
    assert_eq!(status, "committed");
    assert_eq!(app.count("ev_sink").await, 120);
    app.stop().await;
}
