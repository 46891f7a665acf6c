use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{event_job, events, problem, word_count_job, TestApp};

#[sqlx::test]
async fn each_attempt_bumps_the_epoch_and_recovery_is_empty_before_a_commit(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let first = word_count_job(&app, "wc", &["t0"]).await;
    assert_eq!(first, 1);
    let second = app.attempt("wc").await;
    assert_eq!(second["epoch"], 2);
    assert_eq!(
        second["recovery"],
        json!({"checkpoint_id": null, "epoch": null, "status": null, "tasks": {}, "offsets": {}})
    );
    problem(
        app.post("/v1/jobs/nope/attempts", json!({})).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    let empty_body = app
        .http
        .post(app.url("/v1/jobs/wc/attempts"))
        .send()
        .await
        .unwrap();
    assert_eq!(empty_body.status(), StatusCode::OK, "an empty body is fine");
    let unknown = problem(
        app.post("/v1/jobs/wc/attempts", json!({"force": true}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert!(unknown["detail"].as_str().unwrap().contains("force"));
    app.stop().await;
}

#[sqlx::test]
async fn a_fenced_epoch_cannot_write_trigger_ack_or_decline(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let old = event_job(&app, "ev", &["t0", "t1"]).await;
    let checkpoint = app.checkpoint("ev", old).await;
    assert_eq!(
        app.write("ev", "t0", old, "b0", events(0, 3))
            .await
            .status(),
        StatusCode::CREATED
    );
    let new = app.epoch("ev").await;
    assert_eq!(new, old + 1);

    let fenced = problem(
        app.write("ev", "t0", old, "b1", events(3, 3)).await,
        StatusCode::CONFLICT,
        "fenced",
    )
    .await;
    assert_eq!(fenced["current_epoch"], new);
    problem(app.trigger("ev", old).await, StatusCode::CONFLICT, "fenced").await;
    problem(
        app.ack("ev", checkpoint, "t0", old, json!({"0": 1})).await,
        StatusCode::CONFLICT,
        "fenced",
    )
    .await;
    problem(
        app.decline("ev", checkpoint, "t1", old).await,
        StatusCode::CONFLICT,
        "fenced",
    )
    .await;
    let ndjson = app
        .write_ndjson("ev", "t0", old, "b2", "{\"id\": 9, \"payload\": \"x\"}\n")
        .await;
    problem(ndjson, StatusCode::CONFLICT, "fenced").await;

    // Nothing changed: the old checkpoint was aborted by the attempt, nothing is staged.
    let details = app.checkpoint_details("ev", checkpoint).await;
    assert_eq!(details["status"], "aborted");
    assert_eq!(details["failure_reason"], format!("fenced by epoch {new}"));
    assert!(details["acks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|ack| ack["acked"] == false));
    assert_eq!(app.staged("ev").await, 0);
    let history: Value = app
        .get("/v1/jobs/ev/checkpoints")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        history["checkpoints"].as_array().unwrap().len(),
        1,
        "no checkpoint was triggered by the zombie"
    );

    // An epoch that was never issued is not a zombie but a mistake.
    let future = problem(
        app.trigger("ev", new + 5).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(future["field"], "epoch");
    app.stop().await;
}

#[sqlx::test]
async fn requests_before_the_first_attempt_are_refused(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE t (id bigint)").await;
    app.put_job(
        "j",
        json!({"tasks": ["t0"], "sink": {"table": "t", "mode": "append"}}),
    )
    .await;
    problem(
        app.trigger("j", 1).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    problem(
        app.write("j", "t0", 1, "b", json!([{"id": 1}])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    // Not epoch 0 either: writers that skipped `/attempts` would share one
    // epoch that nothing fences.
    problem(
        app.trigger("j", 0).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    let refused = problem(
        app.write("j", "t0", 0, "b", json!([{"id": 1}])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(refused["field"], "epoch");
    assert_eq!(app.staged("j").await, 0);
    app.stop().await;
}

#[sqlx::test]
async fn recovery_serves_the_last_decided_checkpoint(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0", "t1"]).await;
    let first = app.checkpoint("wc", epoch).await;
    app.ack_ok("wc", first, "t0", epoch, json!({"0": 10, "2": 20}))
        .await;
    let state = json!({"inline": {"words": 3}, "external": {"uri": "s3://b/k", "size_bytes": 10, "checksum": "sha256:ab"}});
    let response = app
        .post(
            &format!("/v1/jobs/wc/checkpoints/{first}/acks"),
            json!({"task_id": "t1", "epoch": epoch, "offsets": {"1": 11}, "state": state}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let second = app.checkpoint("wc", epoch).await;
    app.ack_ok("wc", second, "t0", epoch, json!({"0": 15}))
        .await; // t1 never acks: not decided

    let recovery = app.recovery("wc").await;
    assert_eq!(
        recovery,
        json!({"checkpoint_id": first, "epoch": epoch, "status": "committed",
               "tasks": {"t0": {"offsets": {"0": 10, "2": 20}, "state": null},
                         "t1": {"offsets": {"1": 11}, "state": state}},
               "offsets": {"0": 10, "1": 11, "2": 20}})
    );
    let attempt = app.attempt("wc").await;
    assert_eq!(
        attempt["recovery"], recovery,
        "/attempts answers with the same recovery point"
    );
    assert_eq!(attempt["aborted_checkpoints"], json!([second]));
    app.stop().await;
}

// Issue "database failures": after a failover the database is on a new
// timeline, and what the old primary committed last may be missing. An
// epoch begun on another timeline is fenced for every request that carries
// it, naming the failover; the first attempt on the new timeline moves the
// epoch sequence 2^32 ahead, above any epoch the old primary issued and the
// new one never received. (The timeline is moved here by hand; the real
// failovers are in tests/database_faults.rs.)
#[sqlx::test]
async fn an_epoch_begun_before_a_failover_is_fenced_and_the_next_one_jumps_ahead(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = event_job(&app, "ev", &["t0", "t1"]).await;
    let checkpoint = app.checkpoint("ev", epoch).await;
    // As if the epoch and the newest issued one were from an older timeline.
    app.sql("UPDATE jobs SET epoch_timeline = epoch_timeline - 1")
        .await;
    app.sql("UPDATE last_epoch_timeline SET timeline = timeline - 1")
        .await;
    let failed_over = |problem: Value| {
        assert!(
            problem["detail"].as_str().unwrap().contains("failed over"),
            "{problem}"
        );
    };
    failed_over(
        problem(
            app.write("ev", "t0", epoch, "b0", events(0, 1)).await,
            StatusCode::CONFLICT,
            "fenced",
        )
        .await,
    );
    failed_over(
        problem(
            app.trigger("ev", epoch).await,
            StatusCode::CONFLICT,
            "fenced",
        )
        .await,
    );
    failed_over(
        problem(
            app.ack("ev", checkpoint, "t0", epoch, json!({"0": 1}))
                .await,
            StatusCode::CONFLICT,
            "fenced",
        )
        .await,
    );
    failed_over(
        problem(
            app.decline("ev", checkpoint, "t1", epoch).await,
            StatusCode::CONFLICT,
            "fenced",
        )
        .await,
    );
    // An ack for a checkpoint the new primary never heard of: fenced too.
    failed_over(
        problem(
            app.ack("ev", checkpoint + 5, "t0", epoch, json!({"0": 1}))
                .await,
            StatusCode::CONFLICT,
            "fenced",
        )
        .await,
    );
    // An epoch above the current one (issued by a lost attempt): fenced.
    failed_over(
        problem(
            app.write("ev", "t0", epoch + 1, "b0", events(0, 1)).await,
            StatusCode::CONFLICT,
            "fenced",
        )
        .await,
    );
    let next = app.epoch("ev").await;
    assert!(next > epoch + (1 << 32), "epoch {next} did not jump ahead");
    assert_eq!(
        app.write("ev", "t0", next, "b0", events(0, 1))
            .await
            .status(),
        StatusCode::CREATED
    );
    // Once: the next attempt on the same timeline takes the next number.
    assert_eq!(app.epoch("ev").await, next + 1);
    app.stop().await;
}
