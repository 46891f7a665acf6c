use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::TestApp;

#[sqlx::test]
async fn health_readiness_spec_and_docs_are_served(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"database": true, "migrations": true})
    );
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(spec["info"]["title"], "sinkgate");
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));

    // Readiness follows the database: with migrations missing it is 503.
    sqlx::query("UPDATE _sqlx_migrations SET version = -version")
        .execute(&app.db)
        .await
        .unwrap();
    let unready = app.get("/readyz").await;
    assert_eq!(unready.status(), StatusCode::SERVICE_UNAVAILABLE);
    sqlx::query("UPDATE _sqlx_migrations SET version = -version")
        .execute(&app.db)
        .await
        .unwrap();
    app.stop().await;
}

/// `openapi/openapi.json` is generated from the code; regenerate it with
/// `UPDATE_OPENAPI=1 cargo test --test api openapi`.
#[test]
fn committed_openapi_document_is_current() {
    let generated = sinkgate::http::openapi().to_pretty_json().unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: run UPDATE_OPENAPI=1 cargo test --test api openapi"
    );
}

/// Every `$ref` of the document names a schema it defines (a generator
/// stops at the first that does not).
#[test]
fn every_reference_in_the_openapi_document_resolves() {
    fn references<'v>(value: &'v Value, found: &mut Vec<&'v str>) {
        match value {
            Value::Object(fields) => {
                if let Some(Value::String(target)) = fields.get("$ref") {
                    found.push(target);
                }
                fields.values().for_each(|field| references(field, found));
            }
            Value::Array(items) => items.iter().for_each(|item| references(item, found)),
            _ => {}
        }
    }
    let spec: Value = serde_json::from_str(&sinkgate::http::openapi().to_json().unwrap()).unwrap();
    let mut found = Vec::new();
    references(&spec, &mut found);
    assert!(!found.is_empty());
    for target in found {
        let pointer = target.strip_prefix('#').expect("a local reference");
        assert!(spec.pointer(pointer).is_some(), "{target} does not resolve");
    }
}

#[test]
fn every_operation_documents_its_errors() {
    let spec: Value = serde_json::from_str(&sinkgate::http::openapi().to_json().unwrap()).unwrap();
    let mut operations = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                operation["summary"].is_string(),
                "{method} {path} has no summary"
            );
            if path.starts_with("/v1/jobs/") {
                assert!(
                    responses.keys().any(|status| status.starts_with('4')),
                    "{method} {path} lists no error response"
                );
                for (status, response) in responses
                    .iter()
                    .filter(|(status, _)| status.starts_with('4'))
                {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status} is not a problem document"
                    );
                }
                // Every error answer has an example, of its own status.
                for (status, response) in responses
                    .iter()
                    .filter(|(status, _)| status.starts_with('4') || status.starts_with('5'))
                {
                    let example = &response["content"]["application/problem+json"]["example"];
                    assert_eq!(
                        example["status"].to_string(),
                        *status,
                        "{method} {path} {status}: example {example}"
                    );
                }
            }
        }
    }
    assert!(operations >= 13, "{operations} operations");
}

/// Every success answer has an example (inline or on its schema), and every
/// schema example is a value of its Rust type.
#[test]
fn success_examples_exist_and_parse_as_their_types() {
    use sinkgate::model::*;
    let spec: Value = serde_json::from_str(&sinkgate::http::openapi().to_json().unwrap()).unwrap();
    let schemas = &spec["components"]["schemas"];
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let Some(body) = response["content"]["application/json"].as_object() else {
                    continue;
                };
                let schema = &body["schema"];
                let reference = schema["$ref"].as_str().or(schema["items"]["$ref"].as_str());
                let on_schema = reference
                    .and_then(|reference| reference.rsplit('/').next())
                    .is_some_and(|name| !schemas[name]["example"].is_null());
                assert!(
                    body.contains_key("example") || on_schema,
                    "{method} {path} {status} has no example"
                );
            }
        }
    }
    fn parses<T: serde::de::DeserializeOwned>(schemas: &Value, name: &str) {
        let example = schemas[name]["example"].clone();
        assert!(!example.is_null(), "{name} has no example");
        if let Err(error) = serde_json::from_value::<T>(example) {
            panic!("the example of {name} is not a {name}: {error}");
        }
    }
    parses::<Job>(schemas, "Job");
    parses::<JobList>(schemas, "JobList");
    parses::<Attempt>(schemas, "Attempt");
    parses::<Recovery>(schemas, "Recovery");
    parses::<Checkpoint>(schemas, "Checkpoint");
    parses::<CheckpointList>(schemas, "CheckpointList");
    parses::<CheckpointDetails>(schemas, "CheckpointDetails");
    parses::<PendingCheckpoint>(schemas, "PendingCheckpoint");
    parses::<Readiness>(schemas, "Readiness");
    parses::<IssuedToken>(schemas, "IssuedToken");
    parses::<TokenInfo>(schemas, "TokenInfo");
    parses::<Problem>(schemas, "Problem");
}

#[sqlx::test]
async fn every_response_carries_a_request_id(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let generated = app.get("/v1/jobs/nope").await;
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let problem: Value = generated.json().await.unwrap();
    assert_eq!(
        problem["request_id"],
        id.as_str(),
        "and in the problem document"
    );
    let given = app
        .http
        .get(app.url("/v1/jobs/nope"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
    let problem: Value = given.json().await.unwrap();
    assert_eq!(problem["request_id"], "trace-me-42");
    assert_eq!(problem["type"], "urn:sinkgate:problem:not-found");
    app.stop().await;
}

#[sqlx::test]
async fn a_slow_request_is_answered_503_timeout_and_still_takes_effect(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut options = crate::helpers::options();
    options.http.request_timeout = Duration::from_millis(300);
    let app = TestApp::spawn_with(&connect, options).await;
    let epoch = crate::helpers::event_job(&app, "ev", &["t0"]).await;

    // Hold the job's row as /attempts would, so a write has to wait for it.
    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobs WHERE job_id = 'ev' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        app.write("ev", "t0", epoch, "slow", crate::helpers::events(1, 2)),
    )
    .await
    .expect("answered at the deadline, not when the lock goes");
    let waited = started.elapsed();
    assert_eq!(response.headers()["retry-after"], "1");
    let body = crate::helpers::problem(response, StatusCode::SERVICE_UNAVAILABLE, "timeout").await;
    assert!(body["detail"].as_str().unwrap().contains("retry"), "{body}");
    assert!(
        waited < Duration::from_secs(5),
        "answered at the deadline, not after the lock: {waited:?}"
    );

    // The write was not cut off: once the lock goes it lands on its own,
    // and the client's retry finds it.
    blocker.rollback().await.unwrap();
    let mut staged = 0;
    for _ in 0..100 {
        staged = app.staged("ev").await;
        if staged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(staged, 2, "the timed-out write was staged");
    let retried = app
        .write("ev", "t0", epoch, "slow", crate::helpers::events(1, 2))
        .await;
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["duplicate"], true, "{retried}");
    assert_eq!(app.staged("ev").await, 2);
    app.stop().await;
}

#[sqlx::test]
async fn overload_is_shed_with_503_and_the_service_stays_up(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut options = crate::helpers::options();
    options.http.max_in_flight = 2;
    let app = TestApp::spawn_with(&connect, options).await;
    crate::helpers::word_count_job(&app, "wc", &["t0"]).await;
    // Two uploads whose bodies are slow to come hold both slots (long-polls
    // no longer do: they have a budget of their own)...
    let mut senders = Vec::new();
    let uploads: Vec<_> = (0..2)
        .map(|_| {
            let (sender, body) = crate::helpers::held_body();
            senders.push(sender);
            let request = app
                .http
                .post(app.url("/v1/jobs/wc/writes"))
                .header("content-type", "application/json")
                .body(body);
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // ...so a third request is refused at once, not queued.
    let shed = app.get("/v1/jobs").await;
    assert_eq!(shed.headers()["retry-after"], "1");
    crate::helpers::problem(shed, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
    drop(senders);
    for upload in uploads {
        assert_eq!(upload.await.unwrap(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(
        app.get("/v1/jobs").await.status(),
        StatusCode::OK,
        "back to normal"
    );
    app.stop().await;
}

/// The value of one sample line of `/metrics`, 0 when absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|line| {
            line.starts_with(name_and_labels) && line[name_and_labels.len()..].starts_with(' ')
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[sqlx::test]
async fn metrics_follow_a_checkpoints_life(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    // Job ids unique to this test: the recorder is shared by every app in the process.
    let epoch = crate::helpers::event_job(&app, "metricsjob", &["t0", "t1"]).await;
    let scrape = || async { app.get("/metrics").await.text().await.unwrap() };

    app.write("metricsjob", "t0", epoch, "b", crate::helpers::events(0, 7))
        .await;
    let checkpoint = app.checkpoint("metricsjob", epoch).await;
    let text = scrape().await;
    assert_eq!(
        sample(
            &text,
            r#"sinkgate_checkpoints_triggered_total{job_id="metricsjob",trigger="manual"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, r#"sinkgate_staged_rows_total{job_id="metricsjob"}"#),
        7.0
    );
    assert_eq!(
        sample(
            &text,
            r#"sinkgate_pending_checkpoints{job_id="metricsjob"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"sinkgate_checkpoints_committed_total{job_id="metricsjob"}"#
        ),
        0.0
    );

    app.ack_ok("metricsjob", checkpoint, "t0", epoch, serde_json::json!({}))
        .await;
    app.ack_ok("metricsjob", checkpoint, "t1", epoch, serde_json::json!({}))
        .await;
    let text = scrape().await;
    assert_eq!(
        sample(&text, r#"sinkgate_acks_total{job_id="metricsjob"}"#),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"sinkgate_checkpoints_completed_total{job_id="metricsjob"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"sinkgate_checkpoints_committed_total{job_id="metricsjob"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"sinkgate_promoted_rows_total{job_id="metricsjob"}"#
        ),
        7.0
    );
    assert_eq!(
        sample(
            &text,
            r#"sinkgate_commit_duration_seconds_count{job_id="metricsjob"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"sinkgate_pending_checkpoints{job_id="metricsjob"}"#
        ),
        0.0
    );

    let stale = app.checkpoint("metricsjob", epoch).await;
    app.epoch("metricsjob").await;
    app.trigger("metricsjob", epoch).await; // fenced
    let text = scrape().await;
    assert_eq!(
        sample(
            &text,
            r#"sinkgate_checkpoints_aborted_total{job_id="metricsjob",reason="fenced"}"#
        ),
        1.0,
        "{stale}"
    );
    assert_eq!(
        sample(
            &text,
            r#"sinkgate_fenced_requests_total{job_id="metricsjob"}"#
        ),
        1.0
    );
    assert!(
        sample(
            &text,
            r#"sinkgate_http_requests_total{method="POST",route="/v1/jobs/{job}/checkpoints/{id}/acks",status="200"}"#
        ) >= 2.0
    );
    assert!(text.contains("sinkgate_db_pool_connections{state=\"idle\"}"));

    // A job deleted with a checkpoint pending does not look stuck for ever.
    let current = app.epoch("metricsjob").await;
    app.checkpoint("metricsjob", current).await;
    let pending = r#"sinkgate_pending_checkpoints{job_id="metricsjob"}"#;
    assert_eq!(sample(&scrape().await, pending), 1.0);
    let deleted = app
        .http
        .delete(app.url("/v1/jobs/metricsjob"))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    assert_eq!(sample(&scrape().await, pending), 0.0);
    app.stop().await;
}

/// The backend holding the scheduler's advisory lock in this database.
async fn scheduler_lock_holder(app: &TestApp) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_optional(&app.db)
    .await
    .unwrap()
}

// When the scheduler's lock session ends (a killed backend, a restarted or
// failed-over database), the scheduler notices and wins the lock again
// instead of acting without it beside a replica that took it.
#[sqlx::test]
async fn the_scheduler_takes_its_lock_again_when_its_session_ends(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let mut first = None;
    for _ in 0..100 {
        first = scheduler_lock_holder(&app).await;
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = first.expect("the scheduler took its lock");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first)
        .execute(&app.db)
        .await
        .unwrap();
    let mut again = None;
    for _ in 0..150 {
        again = scheduler_lock_holder(&app)
            .await
            .filter(|pid| *pid != first);
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        again.is_some(),
        "the lock was not taken again after its session ended"
    );
    app.stop().await;
}

// Issue "database failures": a commit sinkgate reports must survive a crash
// of the server, also where `synchronous_commit` is off for speed (a crash
// would then lose decisions a processor was told about, on the same
// timeline, where no failover fence can see it).
#[sqlx::test]
async fn commits_are_durable_even_where_synchronous_commit_is_off(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let database = connect.get_database().unwrap().to_owned();
    let admin = crate::helpers::pool(&connect).await;
    sqlx::query(&format!(
        "ALTER DATABASE \"{database}\" SET synchronous_commit = off"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let base = std::env::var("DATABASE_URL").unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    let config = sinkgate::config::DatabaseConfig {
        database_url: format!("{server}/{database}"),
        pool_size: 2,
        db_acquire_timeout_ms: 5000,
        idle_in_transaction_timeout_ms: 60_000,
        db_statement_timeout_ms: 60_000,
        db_lock_timeout_ms: 10_000,
    };
    let pool = sinkgate::db::connect(&config).await.unwrap();
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        setting, "on",
        "a sinkgate session commits without waiting for its WAL"
    );
    // Any other choice is the operator's and stays.
    sqlx::query(&format!(
        "ALTER DATABASE \"{database}\" SET synchronous_commit = local"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let pool = sinkgate::db::connect(&config).await.unwrap();
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(setting, "local");
}

// Issue "where users live": the document's links follow the protocol (job →
// attempt → trigger → ack), and each names an operation that exists, with
// parameters that operation has.
#[test]
fn openapi_links_name_real_operations_and_parameters() {
    let document = serde_json::to_value(sinkgate::http::openapi()).unwrap();
    let mut operations = std::collections::HashMap::new();
    for (_, item) in document["paths"].as_object().unwrap() {
        for (_, operation) in item.as_object().unwrap() {
            if let Some(id) = operation["operationId"].as_str() {
                operations.insert(id.to_owned(), operation.clone());
            }
        }
    }
    let mut followed = Vec::new();
    for (source, operation) in &operations {
        for (_, response) in operation["responses"].as_object().unwrap() {
            for (name, link) in response["links"].as_object().into_iter().flatten() {
                let target = link["operationId"].as_str().expect("operationId");
                let target_operation = operations
                    .get(target)
                    .unwrap_or_else(|| panic!("{source}: link {name} to unknown {target}"));
                for (parameter, _) in link["parameters"].as_object().into_iter().flatten() {
                    let known = target_operation["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["name"] == parameter.as_str());
                    assert!(
                        known,
                        "{source}: link {name}: {target} has no parameter {parameter}"
                    );
                }
                followed.push(format!("{source}->{target}"));
            }
        }
    }
    for step in [
        "put_job->start_attempt",
        "start_attempt->trigger_checkpoint",
        "trigger_checkpoint->ack_checkpoint",
    ] {
        assert!(followed.contains(&step.to_owned()), "no link {step}");
    }
}
