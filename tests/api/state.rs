//! The checkpoint's state: the built-in chunk store (incremental, checked,
//! collected), shared external objects, savepoints and restarts from them.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sinkgate::ServiceOptions;
use sinkgate_client::model::StoredState;
use sinkgate_client::{Client, ProblemKind};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{self, problem, TestApp};

/// A word-count state of `words` keys, one `"key": count` line each.
fn counts(words: usize, bump: Option<usize>) -> Vec<u8> {
    let mut text = String::from("{\n");
    for word in 0..words {
        let n = word % 1000 + usize::from(bump == Some(word));
        text.push_str(&format!("  \"word-{word:07}\": {n},\n"));
    }
    text.push_str("  \"end\": 0\n}\n");
    text.into_bytes()
}

async fn job(app: &TestApp, mode: &str, retained: u32) -> i64 {
    app.sql("CREATE TABLE kv (k text PRIMARY KEY, v bigint NOT NULL)")
        .await;
    let key = if mode == "append" {
        json!([])
    } else {
        json!(["k"])
    };
    let answer = app
        .put_job(
            "st",
            json!({"tasks": ["t0"], "sink": {"table": "kv", "mode": mode, "key": key},
                   "checkpointing": {"retained": retained}}),
        )
        .await;
    assert_eq!(answer.status(), StatusCode::CREATED);
    app.epoch("st").await
}

/// Triggers a checkpoint and acks it with `offsets` and `state`; answers the
/// ack's response.
async fn ack_with(app: &TestApp, epoch: i64, offsets: Value, state: Value) -> reqwest::Response {
    let checkpoint = app.checkpoint("st", epoch).await;
    app.post(
        &format!("/v1/jobs/st/checkpoints/{checkpoint}/acks"),
        json!({"task_id": "t0", "epoch": epoch, "offsets": offsets, "state": state}),
    )
    .await
}

async fn committed(app: &TestApp, epoch: i64, offset: i64, stored: &StoredState) -> i64 {
    let answer = ack_with(app, epoch, json!({"0": offset}), json!({"stored": stored})).await;
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "committed", "{body}");
    body["checkpoint_id"].as_i64().unwrap()
}

#[sqlx::test]
async fn stored_state_is_incremental_and_restored_exactly(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = job(&app, "upsert", 10).await;
    let client = Client::new(&[&app.base], "st");

    let state = counts(400_000, None);
    let first = client.save_state(&state).await.unwrap();
    assert!(
        first.stored.chunks.len() >= 4,
        "{:?}",
        first.stored.chunks.len()
    );
    assert_eq!(first.uploaded_chunks, first.stored.chunks.len());
    assert_eq!(first.stored.size_bytes, state.len() as u64);
    // Unchanged: nothing to upload.
    let again = client.save_state(&state).await.unwrap();
    assert_eq!(again.uploaded_chunks, 0);
    assert_eq!(again.stored, first.stored);
    // One key changed (a count grows by a digit): one chunk.
    let changed = counts(400_000, Some(200_999));
    let third = client.save_state(&changed).await.unwrap();
    assert_eq!(third.uploaded_chunks, 1, "{third:?}");

    committed(&app, epoch, 10, &third.stored).await;
    let recovery = app.recovery("st").await;
    let stored: StoredState =
        serde_json::from_value(recovery["tasks"]["t0"]["state"]["stored"].clone()).unwrap();
    assert_eq!(client.restore_state(&stored).await.unwrap(), changed);
    app.stop().await;
}

#[sqlx::test]
async fn chunks_are_checked_on_upload_ack_and_download(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = job(&app, "upsert", 10).await;
    let client = Client::new(&[&app.base], "st");
    let sha = sinkgate_client::state::sha256_hex(b"hello");

    // A body that is not what the path names.
    let refused = problem(
        app.http
            .put(app.url(&format!("/v1/jobs/st/state/chunks/{sha}")))
            .body("hellO")
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(refused["field"], "sha256");
    let refused = problem(
        app.http
            .put(app.url("/v1/jobs/st/state/chunks/ABC"))
            .body("x")
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(refused["field"], "sha256");

    // An ack naming a chunk never uploaded, or the wrong size: refused,
    // nothing recorded.
    let saved = client.save_state(b"hello").await.unwrap();
    let missing = "0".repeat(64);
    for (state, field) in [
        (
            json!({"stored": {"chunks": [sha, missing], "size_bytes": 5}}),
            "state.stored.chunks[1]",
        ),
        (
            json!({"stored": {"chunks": [sha], "size_bytes": 6}}),
            "state.stored.size_bytes",
        ),
    ] {
        let checkpoint = app.checkpoint("st", epoch).await;
        let refused = problem(
            app.post(
                &format!("/v1/jobs/st/checkpoints/{checkpoint}/acks"),
                json!({"task_id": "t0", "epoch": epoch, "offsets": {"0": 1}, "state": state}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        )
        .await;
        assert_eq!(refused["field"], field, "{refused}");
        let details = app.checkpoint_details("st", checkpoint).await;
        assert_eq!(details["acked_tasks"], 0, "{details}");
        app.post(
            &format!("/v1/jobs/st/checkpoints/{checkpoint}/abort"),
            json!({}),
        )
        .await;
    }

    committed(&app, epoch, 1, &saved.stored).await;
    // Corrupted in the database: refused on download, never served.
    app.sql("UPDATE state_chunks SET content = 'jello'").await;
    let corrupted = problem(
        app.get(&format!("/v1/jobs/st/state/chunks/{sha}")).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "state-corrupted",
    )
    .await;
    assert!(corrupted["detail"].as_str().unwrap().contains(&sha));
    let started = std::time::Instant::now();
    let error = client.restore_state(&saved.stored).await.unwrap_err();
    assert_eq!(error.kind(), Some(ProblemKind::StateCorrupted), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "not retried");
    // Found corrupted, the chunk is reported missing: the next save
    // uploads it again, which repairs it.
    let repaired = client.save_state(b"hello").await.unwrap();
    assert_eq!(repaired.uploaded_chunks, 1);
    assert_eq!(client.restore_state(&saved.stored).await.unwrap(), b"hello");

    // Bad input around state is a 422, never a 500.
    let checkpoint = app.checkpoint("st", epoch).await;
    for (state, field) in [
        (
            json!({"objects": [{"uri": "x".repeat(2001), "size_bytes": 1, "checksum": "c"}]}),
            "state.objects[0].uri",
        ),
        (json!({"inline": {"a": "nul \u{0} here"}}), "state.inline"),
    ] {
        let refused = problem(
            app.post(
                &format!("/v1/jobs/st/checkpoints/{checkpoint}/acks"),
                json!({"task_id": "t0", "epoch": epoch, "offsets": {"0": 2}, "state": state}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        )
        .await;
        assert_eq!(refused["field"], field, "{refused}");
    }
    // The text `\u0000` (a backslash, then letters) is no NUL.
    let accepted = app
        .post(
            &format!("/v1/jobs/st/checkpoints/{checkpoint}/acks"),
            json!({"task_id": "t0", "epoch": epoch, "offsets": {"0": 2},
                   "state": {"inline": {"escaped": "\\u0000 as text"}}}),
        )
        .await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let refused = problem(
        app.post(
            "/v1/jobs/st/state/objects/released",
            json!({"uris": ["a\u{0}b"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(refused["field"], "uris[0]");

    // A job with stored state and references can be deleted, chunks and all.
    let deleted = app
        .http
        .delete(app.url("/v1/jobs/st"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.count("state_chunks").await, 0);
    app.stop().await;
}

#[sqlx::test]
async fn chunks_no_retained_checkpoint_or_savepoint_needs_are_collected(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn_with(
        &connect,
        ServiceOptions {
            state_grace: Duration::from_secs(1),
            ..helpers::options()
        },
    )
    .await;
    let epoch = job(&app, "upsert", 2).await;
    let client = Client::new(&[&app.base], "st");
    let chunks = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM state_chunks")
            .fetch_one(&app.db)
            .await
            .unwrap();
        n
    };
    let wait_for = |expected: i64| async move {
        for _ in 0..200 {
            if chunks().await == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "state_chunks never held {expected} chunks (holds {})",
            chunks().await
        );
    };

    // Each state: a chunk of its own and one shared by all.
    let shared = client.save_state(b"shared").await.unwrap().stored;
    let state = |own: &str| {
        let own = sinkgate_client::state::sha256_hex(own.as_bytes());
        StoredState {
            chunks: vec![shared.chunks[0].clone(), own],
            size_bytes: 6 + 2,
        }
    };
    for (offset, own) in ["s1", "s2", "s3"].iter().enumerate() {
        client.save_state(own.as_bytes()).await.unwrap();
        let checkpoint = committed(&app, epoch, offset as i64 + 1, &state(own)).await;
        if *own == "s2" {
            let taken = app
                .post("/v1/jobs/st/savepoints", json!({"label": "keep-s2"}))
                .await;
            assert_eq!(taken.status(), StatusCode::CREATED);
            let savepoint: Value = taken.json().await.unwrap();
            assert_eq!(savepoint["checkpoint_id"], checkpoint);
        }
    }
    // retained = 2: s1's ack is pruned and its chunk collected; s2 is a
    // savepoint; the shared chunk stays.
    wait_for(3).await;
    let own: Vec<String> =
        sqlx::query_scalar("SELECT encode(sha256, 'hex') FROM state_chunks ORDER BY 1")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert!(!own.contains(&sinkgate_client::state::sha256_hex(b"s1")));

    client.save_state(b"s4").await.unwrap();
    committed(&app, epoch, 4, &state("s4")).await;
    wait_for(4).await; // s2 (savepoint), s3, s4, shared
    let listed: Value = app
        .get("/v1/jobs/st/savepoints")
        .await
        .json()
        .await
        .unwrap();
    let savepoint = listed["savepoints"][0]["checkpoint_id"].as_i64().unwrap();
    let deleted = app
        .http
        .delete(app.url(&format!("/v1/jobs/st/savepoints/{savepoint}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    client.save_state(b"s5").await.unwrap();
    committed(&app, epoch, 5, &state("s5")).await;
    wait_for(3).await; // s4, s5, shared
    app.stop().await;
}

#[sqlx::test]
async fn external_objects_are_released_only_when_no_retained_state_uses_them(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = job(&app, "upsert", 1).await;
    let object = |uri: &str| json!({"uri": uri, "size_bytes": 1, "checksum": "sha256:x"});
    for (offset, uris) in [["s3://b/a", "s3://b/shared"], ["s3://b/c", "s3://b/shared"]]
        .iter()
        .enumerate()
    {
        let objects: Vec<Value> = uris.iter().map(|uri| object(uri)).collect();
        let answer = ack_with(
            &app,
            epoch,
            json!({"0": offset}),
            json!({"objects": objects}),
        )
        .await;
        assert_eq!(answer.status(), StatusCode::OK);
    }
    // retained = 1: only the second checkpoint's objects are referenced.
    let unreferenced: Value = app
        .get("/v1/jobs/st/state/objects/unreferenced")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unreferenced["uris"], json!(["s3://b/a"]));
    problem(
        app.post(
            "/v1/jobs/st/state/objects/released",
            json!({"uris": ["s3://b/a", "s3://b/shared"]}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    let released = app
        .post(
            "/v1/jobs/st/state/objects/released",
            json!({"uris": ["s3://b/a"]}),
        )
        .await;
    assert_eq!(released.status(), StatusCode::NO_CONTENT);
    let unreferenced: Value = app
        .get("/v1/jobs/st/state/objects/unreferenced")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unreferenced["uris"], json!([]));
    // A released object cannot come back.
    let refused = problem(
        ack_with(
            &app,
            epoch,
            json!({"0": 5}),
            json!({"objects": [object("s3://b/a")]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(refused["field"], "state.objects[0].uri", "{refused}");
    app.stop().await;
}

#[sqlx::test]
async fn an_upsert_job_restarts_from_a_savepoint_and_an_append_job_refuses(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = job(&app, "upsert", 2).await;
    for offset in [10, 20, 30] {
        let answer = ack_with(
            &app,
            epoch,
            json!({"0": offset}),
            json!({"inline": {"at": offset}}),
        )
        .await;
        assert_eq!(answer.status(), StatusCode::OK);
    }
    let savepoint: Value = app
        .post("/v1/jobs/st/savepoints", json!({"label": "at-30"}))
        .await
        .json()
        .await
        .unwrap();
    for offset in [40, 50, 60] {
        ack_with(
            &app,
            epoch,
            json!({"0": offset}),
            json!({"inline": {"at": offset}}),
        )
        .await;
    }
    // Checkpoint 1 is no longer retained; an unknown one is unknown.
    for from in [1, 99] {
        let refused = problem(
            app.post("/v1/jobs/st/attempts", json!({"from_checkpoint": from}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        )
        .await;
        assert_eq!(refused["field"], "from_checkpoint");
    }
    assert_eq!(
        app.recovery("st").await["offsets"]["0"],
        60,
        "refusals changed nothing"
    );

    let restarted: Value = app
        .post(
            "/v1/jobs/st/attempts",
            json!({"from_checkpoint": savepoint["checkpoint_id"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let recovery = &restarted["recovery"];
    assert_eq!(recovery["checkpoint_id"], savepoint["checkpoint_id"]);
    // A savepoint taken now keeps the recovery point, not the newest decision.
    let deleted = app
        .http
        .delete(app.url(&format!(
            "/v1/jobs/st/savepoints/{}",
            savepoint["checkpoint_id"]
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let again: Value = app
        .post("/v1/jobs/st/savepoints", json!({"label": "after-restart"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["checkpoint_id"], savepoint["checkpoint_id"],
        "{again}"
    );
    assert_eq!(recovery["offsets"]["0"], 30, "{restarted}");
    assert_eq!(recovery["tasks"]["t0"]["state"]["inline"]["at"], 30);
    // The replay acks from the savepoint's offsets on: no regression.
    let epoch = restarted["epoch"].as_i64().unwrap();
    let answer = ack_with(&app, epoch, json!({"0": 35}), json!(null)).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(app.recovery("st").await["offsets"]["0"], 35);
    // The checkpoints after the savepoint are an abandoned branch: a
    // restart to one of them would skip what this branch has not read.
    let refused = problem(
        app.post("/v1/jobs/st/attempts", json!({"from_checkpoint": 6}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("no longer retained"),
        "{refused}"
    );

    // An append output cannot take its promoted rows back.
    app.sql("CREATE TABLE log (k text)").await;
    app.put_job(
        "ap",
        json!({"tasks": ["t0"], "sink": {"table": "log", "mode": "append"}}),
    )
    .await;
    let epoch = app.epoch("ap").await;
    let checkpoint = app.checkpoint("ap", epoch).await;
    app.ack_ok("ap", checkpoint, "t0", epoch, json!({"0": 1}))
        .await;
    problem(
        app.post(
            "/v1/jobs/ap/attempts",
            json!({"from_checkpoint": checkpoint}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    app.stop().await;
}
