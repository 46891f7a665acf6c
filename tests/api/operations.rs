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
            }
        }
    }
    assert!(operations >= 13, "{operations} operations");
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
    let given = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
    app.stop().await;
}

#[sqlx::test]
async fn overload_is_shed_with_503_and_the_service_stays_up(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let options = sinkgate::ServiceOptions {
        max_in_flight: 2,
        ..crate::helpers::options()
    };
    let app = TestApp::spawn_with(&connect, options).await;
    crate::helpers::word_count_job(&app, "wc", &["t0"]).await;
    // Two long-polls hold both slots...
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (
                app.http.clone(),
                app.url("/v1/jobs/wc/checkpoints/pending?wait_ms=1500"),
            );
            tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // ...so a third request is refused at once, not queued.
    let shed = app.get("/v1/jobs").await;
    assert_eq!(shed.headers()["retry-after"], "1");
    crate::helpers::problem(shed, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
    for poll in polls {
        assert_eq!(poll.await.unwrap(), StatusCode::NO_CONTENT);
    }
    assert_eq!(
        app.get("/v1/jobs").await.status(),
        StatusCode::OK,
        "back to normal"
    );
    app.stop().await;
}
