//! The Rust client against the real service: how it retries.
//!
//! A file of its own: it counts the service's answers in `/metrics`, which
//! the process shares with every test in it.

use std::time::{Duration, Instant};

use helpers::TestApp;
use serde_json::json;
use sinkgate_client::Client;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

/// 429 answers of the trigger route so far, from `/metrics`.
async fn refused_triggers(app: &TestApp) -> u64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("sinkgate_http_requests_total{")
                && line.contains("route=\"/v1/jobs/{job}/checkpoints\"")
                && line.contains("method=\"POST\"")
                && line.contains("status=\"429\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

// A 429 with Retry-After is retried once, after the wait the service asked
// for: not hammered at the backoff's pace.
#[sqlx::test]
async fn the_client_waits_as_long_as_retry_after_says(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    app.sql("CREATE TABLE paced (id bigint)").await;
    let response = app
        .put_job(
            "paced",
            json!({"tasks": ["t0"], "sink": {"table": "paced", "mode": "append"},
                   "checkpointing": {"min_pause_ms": 2500}}),
        )
        .await;
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let epoch = app.epoch("paced").await;
    let first = app.checkpoint("paced", epoch).await;
    assert_eq!(
        app.ack_ok("paced", first, "t0", epoch, json!({"0": 1}))
            .await,
        "committed"
    );
    let before = refused_triggers(&app).await;
    let client = Client::new(&[app.base.as_str()], "paced");
    let started = Instant::now();
    let second = client
        .trigger(epoch)
        .await
        .expect("triggered after the pause");
    let waited = started.elapsed();
    assert_eq!(second.checkpoint_id, first + 1);
    let refused = refused_triggers(&app).await - before;
    assert_eq!(
        refused, 1,
        "the client tried {refused} times within the pause instead of waiting for Retry-After"
    );
    assert!(waited >= Duration::from_millis(2400), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    app.stop().await;
}
