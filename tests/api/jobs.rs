use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{problem, word_count_job, TestApp};

#[sqlx::test]
async fn job_is_created_read_listed_updated_and_deleted(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE counts (word text PRIMARY KEY, n bigint NOT NULL, note text)")
        .await;
    let spec = json!({"tasks": ["t0", "t1"], "sink": {"table": "counts", "mode": "upsert", "key": ["word"]},
                      "checkpointing": {"interval_ms": 60000}});

    let created = app.put_job("wordcount", spec.clone()).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let job: Value = created.json().await.unwrap();
    assert_eq!(job["tasks"], json!(["t0", "t1"]));
    assert_eq!(job["sink"]["table"], "public.counts");
    assert_eq!(
        job["checkpointing"],
        json!({"interval_ms": 60000, "timeout_ms": 600000, "min_pause_ms": 0, "max_concurrent": 1, "retained": 10})
    );
    assert_eq!(job["epoch"], 0);
    assert_eq!(
        job["sink_columns"][2],
        json!({"name": "note", "data_type": "text", "nullable": true, "has_default": false})
    );

    let mut updated_spec = spec.clone();
    updated_spec["tasks"] = json!(["t0", "t1", "t2"]);
    let updated = app.put_job("wordcount", updated_spec).await;
    assert_eq!(updated.status(), StatusCode::OK);

    let read: Value = app.get("/v1/jobs/wordcount").await.json().await.unwrap();
    assert_eq!(read["tasks"], json!(["t0", "t1", "t2"]));
    let list: Value = app.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);

    let staging_table = app.staging_table("wordcount").await;
    let deleted = app
        .http
        .delete(app.url("/v1/jobs/wordcount"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    problem(
        app.get("/v1/jobs/wordcount").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    // The sink table is the user's: still there.
    assert_eq!(app.count("counts").await, 0);
    let staging: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&staging_table)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(staging, None, "deleting a job drops its staging table");
    app.stop().await;
}

#[sqlx::test]
async fn registration_names_what_is_wrong(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE nokey (word text NOT NULL, n bigint)")
        .await;
    app.sql("CREATE VIEW a_view AS SELECT 1 AS x").await;
    let cases = [
        (
            "bad job id!",
            json!({"tasks": ["t"], "sink": {"table": "nokey", "mode": "append"}}),
            "job",
        ),
        (
            "j",
            json!({"tasks": ["t"], "sink": {"table": "missing", "mode": "append"}}),
            "sink.table",
        ),
        (
            "j",
            json!({"tasks": ["t"], "sink": {"table": "a_view", "mode": "append"}}),
            "sink.table",
        ),
        (
            "j",
            json!({"tasks": ["t"], "sink": {"table": "nokey", "mode": "upsert", "key": ["word"]}}),
            "sink.key",
        ),
        (
            "j",
            json!({"tasks": ["t"], "sink": {"table": "nokey", "mode": "upsert", "key": ["nope"]}}),
            "sink.key[0]",
        ),
        (
            "j",
            json!({"tasks": ["t"], "sink": {"table": "nokey", "mode": "upsert"}}),
            "sink.key",
        ),
        (
            "j",
            json!({"tasks": ["t", "t"], "sink": {"table": "nokey", "mode": "append"}}),
            "tasks[1]",
        ),
        (
            "j",
            json!({"tasks": [""], "sink": {"table": "nokey", "mode": "append"}}),
            "tasks[0]",
        ),
        (
            "j",
            json!({"tasks": [], "sink": {"table": "nokey", "mode": "append"}}),
            "tasks",
        ),
        (
            "j",
            json!({"tasks": ["t"], "sink": {"table": "nokey", "mode": "sideways"}}),
            "sink.mode",
        ),
        (
            "j",
            json!({"tasks": ["t"], "sink": {"table": "nokey", "mode": "append", "typo": 1}}),
            "sink.typo",
        ),
        (
            "j",
            json!({"tasks": ["t"], "sink": {"table": "nokey", "mode": "append"}, "checkpointing": {"max_concurrent": 0}}),
            "checkpointing.max_concurrent",
        ),
        (
            "j",
            json!({"tasks": ["t"], "sink": {"table": "nokey", "mode": "append"}, "checkpointing": {"timeout_ms": -1}}),
            "checkpointing.timeout_ms",
        ),
        (
            "j",
            json!({"tasks": "t", "sink": {"table": "nokey", "mode": "append"}}),
            "tasks",
        ),
    ];
    for (job, spec, field) in cases {
        let body = problem(
            app.put_job(job, spec.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        )
        .await;
        assert_eq!(body["field"], field, "spec {spec}: {body}");
    }
    let list: Value = app.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(list["jobs"], json!([]), "nothing was registered");
    app.stop().await;
}

#[sqlx::test]
async fn malformed_bodies_are_4xx_problems(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let url = app.url("/v1/jobs/j");
    let not_json = app
        .http
        .put(&url)
        .header("content-type", "application/json")
        .body("{\"tasks\": [")
        .send()
        .await
        .unwrap();
    problem(not_json, StatusCode::BAD_REQUEST, "malformed").await;
    let trailing = app
        .http
        .put(&url)
        .header("content-type", "application/json")
        .body(r#"{"tasks": ["t"], "sink": {"table": "x", "mode": "append"}} trailing"#)
        .send()
        .await
        .unwrap();
    problem(trailing, StatusCode::BAD_REQUEST, "malformed").await;
    let wrong_type = app
        .http
        .put(&url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(
        wrong_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
    )
    .await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep = app
        .http
        .put(&url)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert!(deep.status().is_client_error());
    let huge = app
        .http
        .put(&url)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    problem(huge, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    problem(
        app.get("/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    let bad_id = problem(
        app.get("/v1/jobs/j/checkpoints/abc").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(bad_id["field"], "path");
    app.stop().await;
}

#[sqlx::test]
async fn a_settings_update_leaves_the_epoch_and_pending_checkpoints_alone(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0"]).await;
    let pending = app.checkpoint("wc", epoch).await;
    let spec = json!({"tasks": ["t0"], "sink": {"table": "wc_sink", "mode": "upsert", "key": ["word"]},
                      "checkpointing": {"timeout_ms": 5000}});
    assert_eq!(app.put_job("wc", spec).await.status(), StatusCode::OK);
    let job: Value = app.get("/v1/jobs/wc").await.json().await.unwrap();
    assert_eq!(job["epoch"], epoch);
    assert_eq!(job["pending_checkpoints"], json!([pending]));
    assert_eq!(job["checkpointing"]["timeout_ms"], 5000);
    app.stop().await;
}

#[sqlx::test]
async fn sink_change_is_refused_while_rows_are_staged(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0"]).await;
    app.sql("CREATE TABLE other (word text PRIMARY KEY, n bigint NOT NULL)")
        .await;
    assert_eq!(
        app.write("wc", "t0", epoch, "b", json!([{"word": "a", "n": 1}]))
            .await
            .status(),
        StatusCode::CREATED
    );
    let spec =
        json!({"tasks": ["t0"], "sink": {"table": "other", "mode": "upsert", "key": ["word"]}});
    problem(
        app.put_job("wc", spec.clone()).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert_eq!(
        app.staged("wc").await,
        1,
        "staged rows survive the refused update"
    );
    // After a commit nothing is staged and the sink may change.
    let checkpoint = app.checkpoint("wc", epoch).await;
    assert_eq!(
        app.ack_ok("wc", checkpoint, "t0", epoch, json!({})).await,
        "committed"
    );
    assert_eq!(app.put_job("wc", spec).await.status(), StatusCode::OK);
    app.stop().await;
}

// Issue "database failures": a crash or a failover empties an UNLOGGED
// table while the checkpoints that filled it stay committed (their offsets
// are logged): the recovery point would claim rows that are gone. Such a
// sink, or a partitioned one with an unlogged partition, is refused.
#[sqlx::test]
async fn an_unlogged_sink_is_refused(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE UNLOGGED TABLE fast (id bigint)").await;
    app.sql("CREATE TABLE parted (id bigint) PARTITION BY RANGE (id)")
        .await;
    app.sql("CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100)")
        .await;
    app.sql("CREATE UNLOGGED TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (200)")
        .await;
    for table in ["fast", "parted"] {
        let refused = problem(
            app.put_job(
                "j",
                json!({"tasks": ["t0"], "sink": {"table": table, "mode": "append"}}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        )
        .await;
        assert_eq!(refused["field"], "sink.table");
        assert!(
            refused["detail"].as_str().unwrap().contains("UNLOGGED"),
            "{refused}"
        );
    }
    app.sql("ALTER TABLE parted_high SET LOGGED").await;
    assert!(app
        .put_job(
            "j",
            json!({"tasks": ["t0"], "sink": {"table": "parted", "mode": "append"}})
        )
        .await
        .status()
        .is_success());
    app.stop().await;
}
