//! Append outputs whose values the service checks itself stage batches as
//! chunks of COPY text and promote them with `COPY`: the rows that land
//! are exactly the rows an `INSERT` of what was sent would store, and a bad
//! value is refused at staging, naming row and column.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{problem, TestApp};

/// An append job `ev` on `table` with task `t0`; returns the epoch.
async fn append_job(app: &TestApp, table: &str, on_promotion_error: &str) -> i64 {
    let response = app
        .put_job(
            "ev",
            json!({"tasks": ["t0"], "sink": {"table": table, "mode": "append", "on_promotion_error": on_promotion_error}}),
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
    app.epoch("ev").await
}

async fn write_ok(app: &TestApp, epoch: i64, batch: &str, rows: Value) {
    let response = app.write("ev", "t0", epoch, batch, rows).await;
    let status = response.status();
    assert!(
        status.is_success(),
        "write failed: {}",
        response.text().await.unwrap()
    );
}

async fn commit(app: &TestApp, epoch: i64, offset: i64) -> String {
    let checkpoint = app.checkpoint("ev", epoch).await;
    app.ack_ok("ev", checkpoint, "t0", epoch, json!({"0": offset}))
        .await
}

async fn rows_of(app: &TestApp, query: &str) -> Vec<Value> {
    sqlx::query_scalar::<_, Value>(&format!("SELECT to_jsonb(s) FROM ({query}) s"))
        .fetch_all(&app.db)
        .await
        .unwrap()
}

#[sqlx::test]
async fn chunks_land_exactly_as_an_insert_of_the_rows_would(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql(
        "CREATE TABLE ev_sink (id bigserial PRIMARY KEY, n int NOT NULL, small smallint, flag boolean DEFAULT true,
                               note text, label varchar DEFAULT 'none', tag \"char\" DEFAULT 'x')",
    )
    .await;
    // A "char" column is not one the service checks: that output stages
    // tuples. Without it, chunks.
    app.sql("ALTER TABLE ev_sink DROP COLUMN tag").await;
    let epoch = append_job(&app, "ev_sink", "block").await;
    let awkward = "tab\there, line\nbreak, back\\slash, \\N, ünïcødé ✓, \r";
    write_ok(
        &app,
        epoch,
        "a",
        json!([
            {"n": 1, "small": -32768, "flag": false, "note": awkward, "label": "x"},
            {"n": 2, "note": null},
            {"n": 3},
            {"id": 100, "n": "4", "small": 32767, "flag": null, "label": null},
            {"n": 5}
        ]),
    )
    .await;
    write_ok(&app, epoch, "b", json!([{"n": 6, "note": "\\N"}])).await;
    assert!(
        app.staged_chunks("ev").await >= 3,
        "rows omitting other columns start chunks of their own"
    );
    assert_eq!(app.staged("ev").await, 6);
    assert_eq!(app.count("ev_sink").await, 0);
    assert_eq!(commit(&app, epoch, 6).await, "committed");
    assert_eq!(app.staged("ev").await, 0);
    let rows = rows_of(&app, "SELECT * FROM ev_sink ORDER BY n").await;
    assert_eq!(
        rows,
        vec![
            json!({"id": 1, "n": 1, "small": -32768, "flag": false, "note": awkward, "label": "x"}),
            json!({"id": 2, "n": 2, "small": null, "flag": true, "note": null, "label": "none"}),
            json!({"id": 3, "n": 3, "small": null, "flag": true, "note": null, "label": "none"}),
            json!({"id": 100, "n": 4, "small": 32767, "flag": null, "note": null, "label": null}),
            json!({"id": 4, "n": 5, "small": null, "flag": true, "note": null, "label": "none"}),
            json!({"id": 5, "n": 6, "small": null, "flag": true, "note": "\\N", "label": "none"}),
        ],
        "defaults for omitted columns, in the order sent; explicit nulls stay null"
    );
    app.stop().await;
}

#[sqlx::test]
async fn a_bad_value_is_refused_at_staging_naming_row_and_column(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE ev_sink (id bigint NOT NULL, small smallint, flag boolean, note text)")
        .await;
    let epoch = append_job(&app, "ev_sink", "block").await;
    let cases = [
        (json!({"id": 1.5}), "id"),
        (json!({"id": "ten"}), "id"),
        (json!({"id": 9223372036854775808_u64}), "id"),
        (json!({"id": 1, "small": 32768}), "small"),
        (json!({"id": 1, "flag": "yes"}), "flag"),
        (json!({"id": 1, "note": "nul \u{0000} inside"}), "note"),
        (json!({"id": 1, "note": 7}), "note"),
        (json!({"id": null}), "id"),
        (json!({"note": "no id"}), "id"),
    ];
    for (index, (bad, column)) in cases.into_iter().enumerate() {
        let rows = json!([{"id": 1}, {"id": 2}, bad]);
        let response = app
            .write("ev", "t0", epoch, &format!("bad-{index}"), rows)
            .await;
        let body = problem(response, StatusCode::UNPROCESSABLE_ENTITY, "row-rejected").await;
        assert_eq!(
            (body["row"].clone(), body["column"].clone()),
            (json!(3), json!(column)),
            "{body}"
        );
    }
    assert_eq!(
        app.staged("ev").await,
        0,
        "nothing of a refused batch is staged"
    );
    write_ok(&app, epoch, "good", json!([{"id": 1}])).await;
    assert_eq!(commit(&app, epoch, 1).await, "committed");
    assert_eq!(app.count("ev_sink").await, 1);
    app.stop().await;
}

#[sqlx::test]
async fn rows_of_defaults_only_and_sink_changes_under_staged_chunks(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE ev_sink (id bigserial PRIMARY KEY, note text)")
        .await;
    let epoch = append_job(&app, "ev_sink", "block").await;
    write_ok(&app, epoch, "a", json!([{}, {"note": "one"}, {}, {}])).await;
    assert!(app.staged_chunks("ev").await >= 3);
    // A column added to the sink: staged rows did not send it, so they get
    // its default.
    app.sql("ALTER TABLE ev_sink ADD COLUMN source text NOT NULL DEFAULT 'old'")
        .await;
    let refreshed = app
        .put_job(
            "ev",
            json!({"tasks": ["t0"], "sink": {"table": "ev_sink", "mode": "append"}}),
        )
        .await;
    assert_eq!(
        refreshed.status(),
        StatusCode::OK,
        "{}",
        refreshed.text().await.unwrap()
    );
    // A narrowed type that a staged value does not fit: refused, and what
    // is staged stays as it was (a cast would have cut "one" short).
    app.sql("ALTER TABLE ev_sink ALTER COLUMN note TYPE varchar(2)")
        .await;
    let refused = app
        .put_job(
            "ev",
            json!({"tasks": ["t0"], "sink": {"table": "ev_sink", "mode": "append"}}),
        )
        .await;
    problem(refused, StatusCode::CONFLICT, "conflict").await;
    assert!(app.staged_chunks("ev").await >= 3);
    app.sql("ALTER TABLE ev_sink ALTER COLUMN note TYPE text")
        .await;
    assert_eq!(commit(&app, epoch, 4).await, "committed");
    let rows = rows_of(&app, "SELECT * FROM ev_sink ORDER BY id").await;
    assert_eq!(
        rows,
        vec![
            json!({"id": 1, "note": null, "source": "old"}),
            json!({"id": 2, "note": "one", "source": "old"}),
            json!({"id": 3, "note": null, "source": "old"}),
            json!({"id": 4, "note": null, "source": "old"}),
        ]
    );
    app.stop().await;
}

#[sqlx::test]
async fn chunks_staged_before_a_switch_to_dead_letters_are_promoted_row_by_row(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE ev_sink (id bigint PRIMARY KEY, note text CHECK (note <> 'poison'), extra text DEFAULT 'd')")
        .await;
    let epoch = append_job(&app, "ev_sink", "block").await;
    write_ok(
        &app,
        epoch,
        "a",
        json!([{"id": 1, "note": "a\tb"}, {"id": 2, "note": "poison"}, {"id": 3}, {"id": 1, "note": "again"}]),
    )
    .await;
    assert!(app.staged_chunks("ev").await >= 1);
    let checkpoint = app.checkpoint("ev", epoch).await;
    // The promotion is refused (a constraint the staging does not have).
    let ack = app
        .ack("ev", checkpoint, "t0", epoch, json!({"0": 4}))
        .await;
    let body: Value = ack.json().await.unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(app.count("ev_sink").await, 0);
    // The operator switches the output to dead letters and retries.
    let switched = app
        .put_job(
            "ev",
            json!({"tasks": ["t0"], "sink": {"table": "ev_sink", "mode": "append", "on_promotion_error": "dead_letter"}}),
        )
        .await;
    assert_eq!(
        switched.status(),
        StatusCode::OK,
        "{}",
        switched.text().await.unwrap()
    );
    // (The scheduler may retry it first.)
    let promoted = app.post("/v1/jobs/ev/promotions", json!({})).await;
    assert_eq!(promoted.status(), StatusCode::OK);
    assert_eq!(
        app.checkpoint_details("ev", checkpoint).await["status"],
        "committed"
    );
    let rows = rows_of(&app, "SELECT * FROM ev_sink ORDER BY id").await;
    assert_eq!(
        rows,
        vec![
            json!({"id": 1, "note": "a\tb", "extra": "d"}),
            json!({"id": 3, "note": null, "extra": "d"}),
        ]
    );
    let letters: Value = app
        .get("/v1/jobs/ev/dead-letters")
        .await
        .json()
        .await
        .unwrap();
    let letters: Vec<Value> = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|letter| letter["row"].clone())
        .collect();
    assert_eq!(
        letters,
        vec![
            json!({"id": 2, "note": "poison"}),
            json!({"id": 1, "note": "again"})
        ],
        "refused rows as they were sent, omitted columns left out"
    );
    assert_eq!(app.staged("ev").await, 0);
    app.stop().await;
}

#[sqlx::test]
async fn chunks_of_a_fenced_epoch_are_thrown_away(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE ev_sink (id bigint PRIMARY KEY, note text)")
        .await;
    let epoch = append_job(&app, "ev_sink", "block").await;
    let body: String = (0..20_000)
        .map(|id| format!("{}\n", json!({"id": id, "note": "x".repeat(100)})))
        .collect();
    let written = app.write_ndjson("ev", "t0", epoch, "a", body).await;
    assert_eq!(written.status(), StatusCode::CREATED);
    assert!(app.staged_chunks("ev").await >= 2, "more than one chunk");
    let next = app.epoch("ev").await;
    assert_eq!(app.staged("ev").await, 0);
    write_ok(&app, next, "b", json!([{"id": 1}])).await;
    assert_eq!(commit(&app, next, 1).await, "committed");
    assert_eq!(app.count("ev_sink").await, 1);
    app.stop().await;
}

/// Puts job `ev` again (after an `ALTER TABLE` of its sink).
async fn put_again(app: &TestApp, table: &str) -> reqwest::Response {
    app.put_job(
        "ev",
        json!({"tasks": ["t0"], "sink": {"table": table, "mode": "append"}}),
    )
    .await
}

#[sqlx::test]
async fn chunk_values_stay_in_their_columns_when_the_sink_changes_its_column_order(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE ev_sink (a text, b text, c text, n int)")
        .await;
    let epoch = append_job(&app, "ev_sink", "block").await;
    write_ok(
        &app,
        epoch,
        "a",
        json!([{"a": "A", "b": "B", "c": "C", "n": 1}]),
    )
    .await;
    assert!(app.staged_chunks("ev").await >= 1);
    // b dropped and added again: the sink's order is now a, c, n, b.
    app.sql("ALTER TABLE ev_sink DROP COLUMN b; ALTER TABLE ev_sink ADD COLUMN b text")
        .await;
    let refreshed = put_again(&app, "ev_sink").await;
    assert_eq!(
        refreshed.status(),
        StatusCode::OK,
        "{}",
        refreshed.text().await.unwrap()
    );
    // A widened type: staged chunks become tuples and are converted.
    app.sql("ALTER TABLE ev_sink ALTER COLUMN n TYPE bigint")
        .await;
    let widened = put_again(&app, "ev_sink").await;
    assert_eq!(
        widened.status(),
        StatusCode::OK,
        "{}",
        widened.text().await.unwrap()
    );
    write_ok(
        &app,
        epoch,
        "b",
        json!([{"a": "A2", "b": "B2", "c": "C2", "n": 5_000_000_000_i64}]),
    )
    .await;
    assert_eq!(commit(&app, epoch, 2).await, "committed");
    let rows = rows_of(&app, "SELECT * FROM ev_sink ORDER BY a").await;
    assert_eq!(
        rows,
        vec![
            json!({"a": "A", "b": "B", "c": "C", "n": 1}),
            json!({"a": "A2", "b": "B2", "c": "C2", "n": 5_000_000_000_i64}),
        ]
    );
    app.stop().await;
}

#[sqlx::test]
async fn rules_row_security_and_statement_triggers_see_what_an_insert_would_do(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql(
        "CREATE TABLE ev_sink (id bigint PRIMARY KEY, note text);
         CREATE TABLE ev_audit (id bigint);
         CREATE TABLE ev_statements (at timestamptz DEFAULT clock_timestamp());",
    )
    .await;
    let epoch = append_job(&app, "ev_sink", "block").await;
    let rows = |first: i64| -> String {
        (first..first + 30_000)
            .map(|id| format!("{}\n", json!({"id": id, "note": "y".repeat(60)})))
            .collect()
    };
    let commit_ndjson = |batch: &'static str, first: i64| {
        let app = &app;
        async move {
            let written = app
                .write_ndjson("ev", "t0", epoch, batch, rows(first))
                .await;
            assert_eq!(written.status(), StatusCode::CREATED);
            assert!(app.staged_chunks("ev").await >= 2, "several chunks");
            assert_eq!(commit(app, epoch, first + 30_000).await, "committed");
        }
    };
    // A rule that copies every insert: COPY would skip it.
    app.sql(
        "CREATE RULE audit AS ON INSERT TO ev_sink DO ALSO INSERT INTO ev_audit VALUES (NEW.id)",
    )
    .await;
    commit_ndjson("a", 0).await;
    assert_eq!(app.count("ev_audit").await, 30_000);
    app.sql("DROP RULE audit ON ev_sink").await;
    // Forced row-level security: COPY FROM would be refused.
    app.sql(
        "ALTER TABLE ev_sink ENABLE ROW LEVEL SECURITY; ALTER TABLE ev_sink FORCE ROW LEVEL SECURITY;
         CREATE POLICY everything ON ev_sink USING (true) WITH CHECK (true);",
    )
    .await;
    commit_ndjson("b", 30_000).await;
    app.sql("ALTER TABLE ev_sink DISABLE ROW LEVEL SECURITY")
        .await;
    // A statement trigger fires once per promotion, not once per chunk.
    app.sql(
        "CREATE FUNCTION note_statement() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO ev_statements DEFAULT VALUES; RETURN NULL; END $$;
         CREATE TRIGGER statements AFTER INSERT ON ev_sink FOR EACH STATEMENT EXECUTE FUNCTION note_statement();",
    )
    .await;
    commit_ndjson("c", 60_000).await;
    assert_eq!(app.count("ev_statements").await, 1);
    assert_eq!(app.count("ev_sink").await, 90_000);
    app.stop().await;
}

#[sqlx::test]
async fn a_type_that_only_shares_a_name_is_checked_by_postgres_at_staging(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql(
        "CREATE SCHEMA lookalike;
         CREATE DOMAIN lookalike.int4 AS integer CHECK (VALUE > 0);
         CREATE TABLE ev_sink (id lookalike.int4, note text);",
    )
    .await;
    let epoch = append_job(&app, "ev_sink", "block").await;
    let refused = app
        .write("ev", "t0", epoch, "a", json!([{"id": 1}, {"id": -5}]))
        .await;
    let body = problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "row-rejected").await;
    assert_eq!(body["row"], 2, "{body}");
    write_ok(&app, epoch, "b", json!([{"id": 7}])).await;
    assert_eq!(app.staged_chunks("ev").await, 0, "a domain stages tuples");
    assert_eq!(commit(&app, epoch, 1).await, "committed");
    app.stop().await;
}

#[sqlx::test]
async fn a_narrowed_column_never_cuts_staged_tuples_short(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    // A timestamptz column: the output stages tuples.
    app.sql("CREATE TABLE ev_sink (id bigint, note text, at timestamptz DEFAULT now())")
        .await;
    let epoch = append_job(&app, "ev_sink", "block").await;
    write_ok(
        &app,
        epoch,
        "a",
        json!([{"id": 1, "note": "three"}, {"id": 2, "note": "42"}]),
    )
    .await;
    assert_eq!(app.staged_chunks("ev").await, 0);
    app.sql("ALTER TABLE ev_sink ALTER COLUMN note TYPE varchar(2)")
        .await;
    let refused = put_again(&app, "ev_sink").await;
    let body = problem(refused, StatusCode::CONFLICT, "conflict").await;
    assert!(body["detail"].as_str().unwrap().contains("note"), "{body}");
    app.sql("ALTER TABLE ev_sink ALTER COLUMN note TYPE text")
        .await;
    app.sql("DELETE FROM ev_sink").await;
    assert_eq!(commit(&app, epoch, 2).await, "committed");
    let rows = rows_of(&app, "SELECT id, note FROM ev_sink ORDER BY id").await;
    assert_eq!(
        rows,
        vec![
            json!({"id": 1, "note": "three"}),
            json!({"id": 2, "note": "42"})
        ]
    );
    app.stop().await;
}

#[sqlx::test]
async fn a_range_of_tuples_and_chunks_is_promoted_once_where_copy_is_not_allowed(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    // No unique key: a row promoted twice would show.
    app.sql("CREATE TABLE ev_sink (id bigint, note text)").await;
    let epoch = append_job(&app, "ev_sink", "block").await;
    write_ok(&app, epoch, "a", json!([{"id": 1}, {"id": 2}])).await;
    assert!(app.staged_chunks("ev").await >= 1);
    // A column the service does not check: later batches stage tuples.
    app.sql("ALTER TABLE ev_sink ADD COLUMN at timestamptz DEFAULT now()")
        .await;
    let refreshed = put_again(&app, "ev_sink").await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    write_ok(&app, epoch, "b", json!([{"id": 3}, {"id": 4}, {"id": 5}])).await;
    // And a statement trigger: COPY is not allowed.
    app.sql(
        "CREATE FUNCTION seen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
         CREATE TRIGGER seen AFTER INSERT ON ev_sink FOR EACH STATEMENT EXECUTE FUNCTION seen();",
    )
    .await;
    assert_eq!(commit(&app, epoch, 5).await, "committed");
    let ids = rows_of(&app, "SELECT id FROM ev_sink ORDER BY id").await;
    assert_eq!(ids, (1..=5).map(|id| json!({"id": id})).collect::<Vec<_>>());
    app.stop().await;
}

#[sqlx::test]
async fn a_row_trigger_sees_every_row_of_the_promotion_in_its_transition_table(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql(
        "CREATE TABLE ev_sink (id bigint, note text);
         CREATE TABLE ev_seen (id bigint, rows bigint);
         CREATE FUNCTION seen() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO ev_seen SELECT NEW.id, count(*) FROM inserted; RETURN NULL; END $$;
         CREATE TRIGGER seen AFTER INSERT ON ev_sink REFERENCING NEW TABLE AS inserted
           FOR EACH ROW EXECUTE FUNCTION seen();",
    )
    .await;
    let epoch = append_job(&app, "ev_sink", "block").await;
    // Three rows of 600 KB: more than one chunk.
    let rows: Vec<Value> = (1..=3)
        .map(|id| json!({"id": id, "note": "z".repeat(600_000)}))
        .collect();
    let body: String = rows.iter().map(|row| format!("{row}\n")).collect();
    let written = app.write_ndjson("ev", "t0", epoch, "a", body).await;
    assert_eq!(written.status(), StatusCode::CREATED);
    assert!(app.staged_chunks("ev").await >= 2);
    assert_eq!(commit(&app, epoch, 3).await, "committed");
    let seen = rows_of(&app, "SELECT * FROM ev_seen ORDER BY id").await;
    assert_eq!(
        seen,
        (1..=3)
            .map(|id| json!({"id": id, "rows": 3}))
            .collect::<Vec<_>>(),
        "as from one INSERT of the three rows"
    );
    app.stop().await;
}
