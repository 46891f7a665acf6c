//! What sinks need beyond one table of appends or upserts: deletes by key,
//! partial updates, and several outputs committed together.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{self, problem, TestApp};

async fn created(response: reqwest::Response) {
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Stages a batch (JSON) and asserts it was staged.
async fn stage(app: &TestApp, job: &str, task: &str, epoch: i64, batch: &str, rows: Value) {
    created(app.write(job, task, epoch, batch, rows).await).await;
}

/// [`stage`] to a named output.
async fn stage_to(
    app: &TestApp,
    job: &str,
    output: &str,
    task: &str,
    epoch: i64,
    batch: &str,
    rows: Value,
) {
    created(app.write_to(job, output, task, epoch, batch, rows).await).await;
}

async fn rows(app: &TestApp, query: &str) -> Vec<(i64, Option<String>)> {
    sqlx::query_as(query).fetch_all(&app.db).await.unwrap()
}

#[sqlx::test]
async fn deletes_by_key_the_last_operation_on_a_key_wins(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE kv (id bigint PRIMARY KEY, v text NOT NULL)")
        .await;
    app.sql("INSERT INTO kv VALUES (7, 'before'), (8, 'before')")
        .await;
    app.sql("CREATE TABLE log (id bigint, v text)").await;
    let spec =
        json!({"tasks": ["t0", "t1"], "sink": {"table": "kv", "mode": "upsert", "key": ["id"]}});
    created(app.put_job("kv", spec).await).await;
    let epoch = app.epoch("kv").await;
    let delete = |id: i64| json!({"_sinkgate_op": "delete", "id": id});

    // Within one batch, across batches and tasks of one checkpoint, and
    // against rows already in the sink.
    stage(&app, "kv",
            "t0",
            epoch,
            "1",
            json!([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, delete(2), {"id": 3, "v": "c"}, delete(7)]),).await;
    stage(
        &app,
        "kv",
        "t1",
        epoch,
        "1",
        json!([delete(3), {"id": 3, "v": "c2", "_sinkgate_op": "upsert"}, delete(99)]),
    )
    .await;
    // NDJSON carries deletes the same way.
    let ndjson = "{\"_sinkgate_op\": \"delete\", \"id\": 8}\n{\"id\": 4, \"v\": \"d\"}\n";
    created(app.write_ndjson("kv", "t1", epoch, "2", ndjson).await).await;
    let (first, status) = app.commit("kv", epoch, &["t0", "t1"]).await;
    assert_eq!(status, "committed");
    assert_eq!(
        rows(&app, "SELECT id, v FROM kv ORDER BY id").await,
        vec![
            (1, Some("a".into())),
            (3, Some("c2".into())),
            (4, Some("d".into()))
        ]
    );
    let details = app.checkpoint_details("kv", first).await;
    assert_eq!(
        details["promoted_rows"], 5,
        "3 upserted, 2 deleted: {details}"
    );

    // Across checkpoints: a later delete wins over an earlier upsert, and
    // a delete of a missing key is no error.
    stage(
        &app,
        "kv",
        "t0",
        epoch,
        "3",
        json!([delete(1), delete(1000)]),
    )
    .await;
    assert_eq!(app.commit("kv", epoch, &["t0", "t1"]).await.1, "committed");
    assert_eq!(
        rows(&app, "SELECT id, v FROM kv ORDER BY id").await,
        vec![(3, Some("c2".into())), (4, Some("d".into()))]
    );

    // A delete that carries more than its key, an unknown operation, a
    // delete without its key: refused, naming row and column; nothing staged.
    for (bad, row, column) in [
        (
            json!([{"id": 3, "v": "x"}, {"_sinkgate_op": "delete", "id": 3, "v": "x"}]),
            2,
            "v",
        ),
        (
            json!([{"_sinkgate_op": "remove", "id": 3}]),
            1,
            "_sinkgate_op",
        ),
        (json!([{"_sinkgate_op": "delete"}]), 1, "id"),
    ] {
        let refused = problem(
            app.write("kv", "t0", epoch, "bad", bad).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "row-rejected",
        )
        .await;
        assert_eq!(refused["row"], row, "{refused}");
        assert_eq!(refused["column"], column, "{refused}");
    }
    assert_eq!(app.staged("kv").await, 0);

    // Only upsert outputs take deletes.
    let spec = json!({"tasks": ["t0"], "sink": {"table": "log", "mode": "append"}});
    created(app.put_job("log", spec).await).await;
    let log_epoch = app.epoch("log").await;
    let refused = problem(
        app.write("log", "t0", log_epoch, "1", json!([delete(1)]))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "row-rejected",
    )
    .await;
    assert_eq!(refused["column"], "_sinkgate_op", "{refused}");
    app.stop().await;
}

#[sqlx::test]
async fn partial_updates_change_only_the_columns_a_row_carries(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql(
        r#"CREATE TABLE profiles (id bigint PRIMARY KEY, "Name" text, email text,
                                  plan text NOT NULL DEFAULT 'free', tags int[])"#,
    )
    .await;
    app.sql(r#"INSERT INTO profiles VALUES (1, 'Ann', 'ann@old', 'pro', '{1}'), (2, 'Bob', 'bob@old', 'pro', NULL)"#)
        .await;
    // Partial updates are for upsert outputs whose refused rows block.
    for (sink, field) in [
        (
            json!({"table": "profiles", "mode": "append", "partial_updates": true}),
            "sink.partial_updates",
        ),
        (
            json!({"table": "profiles", "mode": "upsert", "key": ["id"], "partial_updates": true,
                "on_promotion_error": "dead_letter"}),
            "sink.partial_updates",
        ),
    ] {
        let refused = problem(
            app.put_job("p", json!({"tasks": ["t0"], "sink": sink}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        )
        .await;
        assert_eq!(refused["field"], field, "{refused}");
    }
    let spec = json!({"tasks": ["t0", "t1"],
                      "sink": {"table": "profiles", "mode": "upsert", "key": ["id"], "partial_updates": true}});
    created(app.put_job("p", spec).await).await;
    let job: Value = app.get("/v1/jobs/p").await.json().await.unwrap();
    assert_eq!(job["sink"]["partial_updates"], true, "{job}");
    let epoch = app.epoch("p").await;

    // Row 1: two rows carrying different columns merge; an explicit null
    // is a value. Row 2: deleted, then written again: a new row, with
    // defaults for what it does not carry. Row 3: new, with defaults.
    // Arrays of different lengths merge (no two-dimensional array).
    stage(
        &app,
        "p",
        "t0",
        epoch,
        "1",
        json!([{"id": 1, "Name": "Anne"}, {"id": 2, "_sinkgate_op": "delete"},
                   {"id": 3, "email": "cy@new", "tags": [1, 2, 3]}]),
    )
    .await;
    stage(
        &app,
        "p",
        "t1",
        epoch,
        "1",
        json!([{"id": 1, "email": null, "tags": [4, 5]}, {"id": 2, "Name": "Bo"},
                   {"id": 3, "tags": [6]}]),
    )
    .await;
    assert_eq!(app.commit("p", epoch, &["t0", "t1"]).await.1, "committed");
    type Profile = (
        i64,
        Option<String>,
        Option<String>,
        String,
        Option<Vec<i32>>,
    );
    let profiles = || async {
        sqlx::query_as::<_, Profile>(
            r#"SELECT id, "Name", email, plan, tags FROM profiles ORDER BY id"#,
        )
        .fetch_all(&app.db)
        .await
        .unwrap()
    };
    assert_eq!(
        profiles().await,
        vec![
            (1, Some("Anne".into()), None, "pro".into(), Some(vec![4, 5])),
            (2, Some("Bo".into()), None, "free".into(), None),
            (3, None, Some("cy@new".into()), "free".into(), Some(vec![6])),
        ]
    );

    // Across checkpoints: a row that carries only its key changes nothing.
    stage(
        &app,
        "p",
        "t0",
        epoch,
        "2",
        json!([{"id": 3}, {"id": 1, "plan": "team"}]),
    )
    .await;
    assert_eq!(app.commit("p", epoch, &["t0", "t1"]).await.1, "committed");
    let after = profiles().await;
    assert_eq!(
        after[0],
        (
            1,
            Some("Anne".into()),
            None,
            "team".into(),
            Some(vec![4, 5])
        )
    );
    assert_eq!(
        after[2],
        (3, None, Some("cy@new".into()), "free".into(), Some(vec![6]))
    );
    app.stop().await;
}

/// A job of two outputs: `facts` (append) and `totals` (upsert by word).
async fn two_output_job(app: &TestApp) -> i64 {
    app.sql("CREATE TABLE facts (word text NOT NULL, n bigint NOT NULL)")
        .await;
    app.sql("CREATE TABLE totals (word text PRIMARY KEY, n bigint NOT NULL CHECK (n < 1000))")
        .await;
    let spec = json!({"tasks": ["t0", "t1"], "outputs": [
        {"name": "facts", "table": "facts", "mode": "append"},
        {"name": "totals", "table": "totals", "mode": "upsert", "key": ["word"]}]});
    created(app.put_job("wc", spec).await).await;
    app.epoch("wc").await
}

#[sqlx::test]
async fn several_outputs_commit_in_one_transaction(_: PgPoolOptions, connect: PgConnectOptions) {
    // No scheduler: the promotion retried below is the operator's.
    let app = TestApp::spawn_with(&connect, helpers::quiet_options()).await;
    let epoch = two_output_job(&app).await;
    let job: Value = app.get("/v1/jobs/wc").await.json().await.unwrap();
    assert!(job.get("sink").is_none(), "{job}");
    assert_eq!(job["outputs"][0]["name"], "facts");
    assert_eq!(job["outputs"][1]["columns"][1]["name"], "n", "{job}");

    // A write names its output: none, or one the job lacks, is refused.
    let facts = json!([{"word": "a", "n": 1}, {"word": "a", "n": 2}]);
    let refused = problem(
        app.write("wc", "t0", epoch, "1", facts.clone()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(refused["field"], "output", "{refused}");
    let refused = problem(
        app.write_to("wc", "factz", "t0", epoch, "1", facts.clone())
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(refused["field"], "output", "{refused}");

    stage_to(&app, "wc", "facts", "t0", epoch, "f1", facts.clone()).await;
    stage_to(
        &app,
        "wc",
        "totals",
        "t0",
        epoch,
        "t1",
        json!([{"word": "a", "n": 3}]),
    )
    .await;
    // The same batch id for the other output is not a retry.
    problem(
        app.write_to("wc", "totals", "t0", epoch, "f1", facts.clone())
            .await,
        StatusCode::CONFLICT,
        "batch-conflict",
    )
    .await;
    let (first, status) = app.commit("wc", epoch, &["t0", "t1"]).await;
    assert_eq!(status, "committed");
    assert_eq!(app.count("facts").await, 2);
    assert_eq!(app.word_counts("totals").await, vec![("a".into(), 3)]);
    let details = app.checkpoint_details("wc", first).await;
    assert_eq!(
        details["promoted_outputs"],
        json!({"facts": 2, "totals": 1}),
        "{details}"
    );

    // One output's promotion fails (a CHECK of `totals`): neither output
    // changes, and the error names the output.
    stage_to(
        &app,
        "wc",
        "facts",
        "t1",
        epoch,
        "f2",
        json!([{"word": "b", "n": 5000}]),
    )
    .await;
    stage_to(
        &app,
        "wc",
        "totals",
        "t1",
        epoch,
        "t2",
        json!([{"word": "b", "n": 5000}]),
    )
    .await;
    let (second, status) = app.commit("wc", epoch, &["t0", "t1"]).await;
    assert_eq!(status, "completed");
    let details = app.checkpoint_details("wc", second).await;
    let error = details["promotion_error"].as_str().unwrap();
    assert!(error.starts_with("output \"totals\": "), "{error}");
    assert_eq!(app.count("facts").await, 2, "facts wait for totals");
    assert_eq!(app.word_counts("totals").await, vec![("a".into(), 3)]);

    app.sql("ALTER TABLE totals DROP CONSTRAINT totals_n_check")
        .await;
    let promoted = app
        .post("/v1/jobs/wc/promotions", json!({}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(promoted["promoted_rows"], 2, "{promoted}");
    assert_eq!(app.count("facts").await, 3);
    assert_eq!(
        app.word_counts("totals").await,
        vec![("a".into(), 3), ("b".into(), 5000)]
    );
    app.stop().await;
}

#[sqlx::test]
async fn dead_letters_and_aborts_are_per_output(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE facts (word text NOT NULL, n bigint NOT NULL CHECK (n > 0))")
        .await;
    app.sql("CREATE TABLE totals (word text PRIMARY KEY, n bigint NOT NULL)")
        .await;
    let spec = json!({"tasks": ["t0"], "outputs": [
        {"name": "facts", "table": "facts", "mode": "append", "on_promotion_error": "dead_letter"},
        {"name": "totals", "table": "totals", "mode": "upsert", "key": ["word"]}]});
    created(app.put_job("wc", spec).await).await;
    let epoch = app.epoch("wc").await;
    stage_to(
        &app,
        "wc",
        "facts",
        "t0",
        epoch,
        "f",
        json!([{"word": "a", "n": 1}, {"word": "a", "n": -1}]),
    )
    .await;
    stage_to(
        &app,
        "wc",
        "totals",
        "t0",
        epoch,
        "t",
        json!([{"word": "a", "n": -1}]),
    )
    .await;
    assert_eq!(app.commit("wc", epoch, &["t0"]).await.1, "committed");
    assert_eq!(app.count("facts").await, 1);
    assert_eq!(app.word_counts("totals").await, vec![("a".into(), -1)]);
    let letters: Value = app
        .get("/v1/jobs/wc/dead-letters?output=facts")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(letters["dead_letters"][0]["output"], "facts", "{letters}");
    assert_eq!(
        letters["dead_letters"][0]["row"],
        json!({"word": "a", "n": -1})
    );
    let none: Value = app
        .get("/v1/jobs/wc/dead-letters?output=totals")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["dead_letters"], json!([]));

    // A new attempt throws away what every output staged after the last
    // decision.
    stage_to(
        &app,
        "wc",
        "facts",
        "t0",
        epoch,
        "f2",
        json!([{"word": "z", "n": 1}]),
    )
    .await;
    stage_to(
        &app,
        "wc",
        "totals",
        "t0",
        epoch,
        "t2",
        json!([{"word": "z", "n": 1}]),
    )
    .await;
    let epoch = app.epoch("wc").await;
    assert_eq!(app.commit("wc", epoch, &["t0"]).await.1, "committed");
    assert_eq!(app.count("facts").await, 1);
    assert_eq!(app.word_counts("totals").await, vec![("a".into(), -1)]);
    let staging: Vec<i64> =
        sqlx::query_scalar("SELECT staging_id FROM job_outputs WHERE job_id = 'wc'")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(staging.len(), 2);
    for id in staging {
        assert_eq!(app.count(&format!("sinkgate_staging.job_{id}")).await, 0);
    }
    app.stop().await;
}

#[sqlx::test]
async fn outputs_change_only_while_nothing_is_staged_for_them(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = two_output_job(&app).await;
    let spec = |outputs: Value| json!({"tasks": ["t0", "t1"], "outputs": outputs});
    let facts = json!({"name": "facts", "table": "facts", "mode": "append"});
    let totals = json!({"name": "totals", "table": "totals", "mode": "upsert", "key": ["word"]});

    // Declarations are checked: names, duplicates, both forms at once.
    for (body, field) in [
        (
            spec(json!([facts, {"name": "Totals!", "table": "totals", "mode": "append"}])),
            "outputs[1].name",
        ),
        (spec(json!([facts, facts])), "outputs[1].name"),
        (spec(json!([])), "outputs"),
        (
            json!({"tasks": ["t0"], "sink": {"table": "facts", "mode": "append"}, "outputs": [facts]}),
            "outputs",
        ),
        (
            spec(json!([facts, {"name": "t", "table": "nope", "mode": "append"}])),
            "outputs[1].table",
        ),
    ] {
        let refused = problem(
            app.put_job("wc", body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        )
        .await;
        assert_eq!(refused["field"], field, "{refused}");
    }

    stage_to(
        &app,
        "wc",
        "totals",
        "t0",
        epoch,
        "t",
        json!([{"word": "a", "n": 3}]),
    )
    .await;
    // Removing an output with staged rows would drop them.
    problem(
        app.put_job("wc", spec(json!([facts]))).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    // Adding one is fine.
    app.sql("CREATE TABLE extra (word text)").await;
    let extra = json!({"name": "extra", "table": "extra", "mode": "append"});
    let answer = app.put_job("wc", spec(json!([facts, totals, extra]))).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(app.commit("wc", epoch, &["t0", "t1"]).await.1, "committed");
    assert_eq!(app.word_counts("totals").await, vec![("a".into(), 3)]);
    // Once committed, the output can go; its staging table goes with it.
    let staging: i64 = sqlx::query_scalar(
        "SELECT staging_id FROM job_outputs WHERE job_id = 'wc' AND output = 'totals'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let answer = app.put_job("wc", spec(json!([facts, extra]))).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let gone: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("sinkgate_staging.job_{staging}"))
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(gone, None);
    let job: Value = app.get("/v1/jobs/wc").await.json().await.unwrap();
    let names: Vec<&str> = job["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["facts", "extra"]);
    app.stop().await;
}

// Outputs linked by a foreign key: one checkpoint deletes an order with its
// lines and writes another with its lines. Every output's deletes run
// before any output's writes (deletes in reverse declaration order), so
// neither the parent's delete nor the child's insert meets the other's
// rows.
#[sqlx::test]
async fn deletes_and_writes_across_outputs_linked_by_a_foreign_key(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE orders (id bigint PRIMARY KEY, total int NOT NULL)")
        .await;
    app.sql("CREATE TABLE lines (id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders, n int NOT NULL)")
        .await;
    app.sql("INSERT INTO orders VALUES (1, 10); INSERT INTO lines VALUES (11, 1, 1), (12, 1, 2)")
        .await;
    let spec = json!({"tasks": ["t0"], "outputs": [
        {"name": "orders", "table": "orders", "mode": "upsert", "key": ["id"]},
        {"name": "lines", "table": "lines", "mode": "upsert", "key": ["id"]}]});
    created(app.put_job("shop", spec).await).await;
    let epoch = app.epoch("shop").await;
    let delete = |id: i64| json!({"_sinkgate_op": "delete", "id": id});
    stage_to(
        &app,
        "shop",
        "orders",
        "t0",
        epoch,
        "o",
        json!([delete(1), {"id": 2, "total": 20}]),
    )
    .await;
    stage_to(
        &app,
        "shop",
        "lines",
        "t0",
        epoch,
        "l",
        json!([delete(11), delete(12), {"id": 21, "order_id": 2, "n": 5}]),
    )
    .await;
    let (checkpoint, status) = app.commit("shop", epoch, &["t0"]).await;
    let details = app.checkpoint_details("shop", checkpoint).await;
    assert_eq!(status, "committed", "{details}");
    assert_eq!(
        rows(&app, "SELECT id, total::text FROM orders").await,
        vec![(2, Some("20".into()))]
    );
    assert_eq!(
        rows(&app, "SELECT id, order_id::text FROM lines").await,
        vec![(21, Some("2".into()))]
    );
    assert_eq!(
        details["promoted_outputs"],
        json!({"orders": 2, "lines": 3})
    );
    app.stop().await;
}

// Partial updates next to another writer of the same table: a row that the
// other writer deletes while the promotion waits for it is written again
// (as a new key), not dropped; one it inserts meanwhile keeps the columns
// the staged rows did not carry.
#[sqlx::test]
async fn partial_updates_neither_drop_nor_clobber_another_writers_rows(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE profiles (id bigint PRIMARY KEY, name text, email text)")
        .await;
    app.sql("INSERT INTO profiles VALUES (1, 'Ann', 'ann@old')")
        .await;
    let spec = json!({"tasks": ["t0"],
                      "sink": {"table": "profiles", "mode": "upsert", "key": ["id"], "partial_updates": true}});
    created(app.put_job("p", spec).await).await;
    let epoch = app.epoch("p").await;
    stage(
        &app,
        "p",
        "t0",
        epoch,
        "1",
        json!([{"id": 1, "name": "Anne"}, {"id": 2, "name": "Bo"}]),
    )
    .await;

    // The other writer deletes row 1 and inserts row 2, and holds both.
    let mut other = app.db.begin().await.unwrap();
    sqlx::raw_sql(
        "DELETE FROM profiles WHERE id = 1; INSERT INTO profiles VALUES (2, 'B', 'bo@theirs')",
    )
    .execute(&mut *other)
    .await
    .unwrap();
    let checkpoint = app.checkpoint("p", epoch).await;
    let ack = {
        let request = app
            .http
            .post(app.url(&format!("/v1/jobs/p/checkpoints/{checkpoint}/acks")))
            .json(&json!({"task_id": "t0", "epoch": epoch, "offsets": {}}));
        tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    other.commit().await.unwrap();
    let acked = ack.await.unwrap();
    assert_eq!(acked["status"], "committed", "{acked}");
    let profiles: Vec<(i64, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, name, email FROM profiles ORDER BY id")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        profiles,
        vec![
            (1, Some("Anne".into()), None),
            (2, Some("Bo".into()), Some("bo@theirs".into()))
        ]
    );
    app.stop().await;
}

// A batch staged before the job's outputs changed is still answered as a
// duplicate when retried, never refused (a refusal of staged rows could
// make a processor send them elsewhere).
#[sqlx::test]
async fn a_retry_after_the_outputs_changed_is_a_duplicate(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE facts (word text NOT NULL)").await;
    app.sql("CREATE TABLE audit (word text NOT NULL)").await;
    created(
        app.put_job(
            "j",
            json!({"tasks": ["t0"], "sink": {"table": "facts", "mode": "append"}}),
        )
        .await,
    )
    .await;
    let epoch = app.epoch("j").await;
    let batch = json!([{"word": "a"}]);
    stage(&app, "j", "t0", epoch, "b1", batch.clone()).await;
    let spec = json!({"tasks": ["t0"], "outputs": [
        {"name": "default", "table": "facts", "mode": "append"},
        {"name": "audit", "table": "audit", "mode": "append"}]});
    assert_eq!(app.put_job("j", spec).await.status(), StatusCode::OK);
    let job: Value = app.get("/v1/jobs/j").await.json().await.unwrap();
    assert!(job.get("sink").is_none(), "{job}");

    let retried = app.write("j", "t0", epoch, "b1", batch.clone()).await;
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["duplicate"], true, "{retried}");
    // Naming the output it went to is the same retry; another is a conflict.
    let named: Value = app
        .write_to("j", "default", "t0", epoch, "b1", batch.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(named["duplicate"], true, "{named}");
    problem(
        app.write_to("j", "audit", "t0", epoch, "b1", batch).await,
        StatusCode::CONFLICT,
        "batch-conflict",
    )
    .await;
    assert_eq!(app.commit("j", epoch, &["t0"]).await.1, "committed");
    assert_eq!(app.count("facts").await, 1);
    app.stop().await;
}

// A BEFORE UPDATE trigger that skips a row (here PostgreSQL's own
// suppress_redundant_updates_trigger, for a row re-sent unchanged) leaves
// the row as the sink wants; the promotion goes on.
#[sqlx::test]
async fn partial_updates_pass_a_trigger_that_skips_an_update(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn_with(&connect, helpers::quiet_options()).await;
    app.sql("CREATE TABLE profiles (id bigint PRIMARY KEY, name text, email text)")
        .await;
    app.sql("CREATE TRIGGER unchanged BEFORE UPDATE ON profiles FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()")
        .await;
    app.sql("INSERT INTO profiles VALUES (1, 'Ann', 'ann@x')")
        .await;
    let spec = json!({"tasks": ["t0"],
                      "sink": {"table": "profiles", "mode": "upsert", "key": ["id"], "partial_updates": true}});
    created(app.put_job("p", spec).await).await;
    let epoch = app.epoch("p").await;
    stage(
        &app,
        "p",
        "t0",
        epoch,
        "1",
        json!([{"id": 1, "name": "Ann"}, {"id": 2, "name": "Bo"}]),
    )
    .await;
    let (_, status) = app.commit("p", epoch, &["t0"]).await;
    assert_eq!(status, "committed");
    assert_eq!(
        rows(&app, "SELECT id, name FROM profiles ORDER BY id").await,
        vec![(1, Some("Ann".into())), (2, Some("Bo".into()))]
    );
    app.stop().await;
}
