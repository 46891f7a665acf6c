//! A table of hostile inputs: each is answered with a 4xx problem document
//! and changes nothing.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{word_count_job, TestApp};

/// What a test can observe of the job's state.
async fn snapshot(app: &TestApp) -> (Value, Value, i64, i64) {
    let job: Value = app.get("/v1/jobs/wc").await.json().await.unwrap();
    let history: Value = app
        .get("/v1/jobs/wc/checkpoints")
        .await
        .json()
        .await
        .unwrap();
    (
        json!({"epoch": job["epoch"], "tasks": job["tasks"], "sink": job["sink"]}),
        history,
        app.staged("wc").await,
        app.count("wc_sink").await,
    )
}

#[sqlx::test]
async fn hostile_inputs_get_a_4xx_and_change_nothing(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0", "t1"]).await;
    let checkpoint = app.checkpoint("wc", epoch).await;
    let before = snapshot(&app).await;

    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let big_row = json!([{"word": "x".repeat(2 << 20), "n": 1}]);
    let cases: Vec<(&str, String, &str, String)> = vec![
        // Huge numbers.
        ("POST", "/v1/jobs/wc/checkpoints".into(), "application/json", r#"{"epoch": 1e400}"#.into()),
        ("POST", "/v1/jobs/wc/checkpoints".into(), "application/json", r#"{"epoch": 99999999999999999999}"#.into()),
        ("POST", format!("/v1/jobs/wc/checkpoints/{checkpoint}/acks"), "application/json",
            format!(r#"{{"task_id": "t0", "epoch": {epoch}, "offsets": {{"0": 99999999999999999999}}}}"#)),
        ("POST", "/v1/jobs/wc/writes".into(), "application/json",
            format!(r#"{{"task_id": "t0", "epoch": {epoch}, "batch_id": "h1", "rows": [{{"word": "a", "n": 1e400}}]}}"#)),
        ("GET", "/v1/jobs/wc/checkpoints/99999999999999999999".into(), "", String::new()),
        // Deep JSON.
        ("POST", "/v1/jobs/wc/writes".into(), "application/json",
            format!(r#"{{"task_id": "t0", "epoch": {epoch}, "batch_id": "h2", "rows": [{{"word": {deep}, "n": 1}}]}}"#)),
        ("PUT", "/v1/jobs/deep".into(), "application/json", format!(r#"{{"tasks": {deep}}}"#)),
        // NUL bytes.
        ("POST", "/v1/jobs/wc/writes".into(), "application/json",
            format!(r#"{{"task_id": "t\u0000", "epoch": {epoch}, "batch_id": "h3", "rows": []}}"#)),
        ("POST", "/v1/jobs/wc/writes".into(), "application/json",
            format!(r#"{{"task_id": "t0", "epoch": {epoch}, "batch_id": "h4", "rows": [{{"word": "a\u0000b", "n": 1}}]}}"#)),
        ("PUT", "/v1/jobs/nul%00job".into(), "application/json",
            r#"{"tasks": ["t"], "sink": {"table": "wc_sink", "mode": "append"}}"#.into()),
        // SQL in identifiers.
        ("PUT", "/v1/jobs/x%3B%20DROP%20TABLE%20jobs".into(), "application/json",
            r#"{"tasks": ["t"], "sink": {"table": "wc_sink", "mode": "append"}}"#.into()),
        ("PUT", "/v1/jobs/inj".into(), "application/json",
            r#"{"tasks": ["t"], "sink": {"table": "wc_sink; DROP TABLE jobs", "mode": "append"}}"#.into()),
        ("PUT", "/v1/jobs/inj".into(), "application/json",
            r#"{"tasks": ["t"], "sink": {"table": "wc_sink", "mode": "upsert", "key": ["word\"; DROP TABLE jobs; --"]}}"#.into()),
        ("POST", "/v1/jobs/wc/writes".into(), "application/json",
            format!(r#"{{"task_id": "t0", "epoch": {epoch}, "batch_id": "h5", "rows": [{{"word\"); DROP TABLE jobs; --": 1}}]}}"#)),
        // Unicode job ids.
        ("PUT", "/v1/jobs/%E3%82%B8%E3%83%A7%E3%83%96".into(), "application/json",
            r#"{"tasks": ["t"], "sink": {"table": "wc_sink", "mode": "append"}}"#.into()),
        ("POST", "/v1/jobs/%E3%82%B8%E3%83%A7%E3%83%96/attempts".into(), "application/json", "{}".into()),
        // Negative offsets.
        ("POST", format!("/v1/jobs/wc/checkpoints/{checkpoint}/acks"), "application/json",
            format!(r#"{{"task_id": "t0", "epoch": {epoch}, "offsets": {{"0": -5}}}}"#)),
        // 2 MiB+ rows against the test service's 1 MiB JSON limit.
        ("POST", "/v1/jobs/wc/writes".into(), "application/json",
            json!({"task_id": "t0", "epoch": epoch, "batch_id": "h6", "rows": big_row}).to_string()),
        // Wrong media types and framing.
        ("POST", "/v1/jobs/wc/writes".into(), "text/csv", "word,n\na,1\n".into()),
        ("POST", "/v1/jobs/wc/writes?task_id=t0&epoch=x&batch_id=h7".into(), "application/x-ndjson", "{}\n".into()),
        ("POST", format!("/v1/jobs/wc/writes?task_id=t0&epoch={epoch}&batch_id=h8"), "application/x-ndjson",
            "{\"word\": \"a\", \"n\": 1}\n{\"word\": \"b\", \"n\": \n".into()),
    ];
    for (method, path, content_type, body) in cases {
        let mut request = app.http.request(method.parse().unwrap(), app.url(&path));
        if !content_type.is_empty() {
            request = request
                .header("content-type", content_type)
                .body(body.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let kind = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        assert!(status.is_client_error(), "{method} {path}: {status} {text}");
        assert_eq!(
            kind.as_deref(),
            Some("application/problem+json"),
            "{method} {path}: {text}"
        );
        let problem: Value = serde_json::from_str(&text).unwrap();
        assert!(problem["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:sinkgate:problem:"));
        assert_eq!(
            snapshot(&app).await,
            before,
            "{method} {path} changed something"
        );
    }

    // SQL in values is data: stored verbatim, nothing else happens.
    let sneaky = "'); DROP TABLE jobs; --\\\t\"";
    let response = app
        .write("wc", "t0", epoch, "sql", json!([{"word": sneaky, "n": 1}]))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    app.ack_ok("wc", checkpoint, "t0", epoch, json!({})).await;
    app.ack_ok("wc", checkpoint, "t1", epoch, json!({})).await;
    assert_eq!(
        app.word_counts("wc_sink").await,
        vec![(sneaky.to_owned(), 1)]
    );
    app.stop().await;
}

/// Sends raw bytes on a fresh connection and returns what came back.
async fn raw_request(app: &TestApp, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    answer
}

// Issue "hardening", 1: made-up methods cannot grow `/metrics`.
#[sqlx::test]
async fn made_up_methods_do_not_grow_the_metrics(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let before = app.get("/metrics").await.text().await.unwrap().len();
    for n in 0..20 {
        let method = format!("{}{n}", "X".repeat(10_000));
        raw_request(
            &app,
            format!("{method} /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics.contains("XXXXXXXX"),
        "a made-up method became a label"
    );
    assert!(
        metrics.len() < before + 20_000,
        "/metrics grew from {before} to {} bytes",
        metrics.len()
    );
    app.stop().await;
}

// Issue "hardening", 9: a client's request id is kept only if plain and bounded.
#[sqlx::test]
async fn unfit_request_ids_are_replaced(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    for (sent, kept) in [
        ("abc-123.X_y".to_owned(), true),
        ("a".repeat(300_000), false),
        (r#"{"forged": "field"}"#.to_owned(), false),
    ] {
        let response = app
            .http
            .get(app.url("/v1/jobs/none"))
            .header("x-request-id", &sent)
            .send()
            .await
            .unwrap();
        let echoed = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["request_id"], echoed.as_str());
        if kept {
            assert_eq!(echoed, sent);
        } else {
            assert!(echoed.len() <= 128 && echoed != sent, "{echoed}");
        }
    }
    app.stop().await;
}

// Issue "hardening", 7: free text shown to operators carries no control characters.
#[sqlx::test]
async fn reasons_with_control_characters_are_refused(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    let epoch = word_count_job(&app, "wc", &["t0"]).await;
    let checkpoint = app.checkpoint("wc", epoch).await;
    let body = crate::helpers::problem(
        app.post(
            &format!("/v1/jobs/wc/checkpoints/{checkpoint}/declines"),
            json!({"task_id": "t0", "epoch": epoch, "reason": "ok\u{1b}]0;owned\u{7}\nforged row"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(body["field"], "reason");
    assert_eq!(
        app.checkpoint_details("wc", checkpoint).await["status"],
        "pending"
    );
    app.stop().await;
}

// Issue "hardening", 10: sinkgate's own tables are never a sink.
#[sqlx::test]
async fn sinkgates_own_tables_cannot_be_a_sink(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    for table in [
        "job_tokens",
        "public.jobs",
        "_sqlx_migrations",
        "dead_letters",
    ] {
        let body = crate::helpers::problem(
            app.put_job(
                "j",
                json!({"tasks": ["t0"], "sink": {"table": table, "mode": "append"}}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        )
        .await;
        assert_eq!(body["field"], "sink.table", "{table}: {body}");
    }
    app.stop().await;
}

/// Options with a short header-read timeout and few connections.
fn tight_connections(max_connections: usize) -> sinkgate::ServiceOptions {
    sinkgate::ServiceOptions {
        connections: sinkgate::http::serve::ConnectionLimits {
            max_connections,
            max_connections_per_address: max_connections,
            header_read_timeout: std::time::Duration::from_secs(1),
        },
        ..crate::helpers::options()
    }
}

/// Waits until the server closes `stream`; returns how long that took.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    outcome.is_ok()
}

// Issue "hardening", 2: a slowloris client is dropped while others are served.
#[sqlx::test]
async fn a_slowloris_client_is_dropped_while_others_are_served(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn_with(&connect, tight_connections(64)).await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            if slow.write_all(b"x").await.is_err() {
                return (slow, true);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        (slow, false)
    });
    let normal = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(normal.status(), StatusCode::OK);
    let (mut slow, refused_early) = trickle.await.unwrap();
    assert!(
        refused_early || closed_within(&mut slow, std::time::Duration::from_secs(1)).await,
        "the trickling connection is still open after 4 s"
    );
    app.stop().await;
}

// Issue "hardening", 2: silent connections cannot take every socket.
#[sqlx::test]
async fn silent_connections_are_closed_and_cannot_starve_others(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn_with(&connect, tight_connections(4)).await;
    let address = app.base.trim_start_matches("http://").to_owned();
    // TestApp::spawn's own readiness probe may hold a pooled connection:
    // a fresh client for the check below.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    // Over the cap, a connection is answered 503 at once, not queued...
    let fresh = reqwest::Client::new();
    let refused = fresh.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    // ...and served once the silent ones are dropped.
    let started = std::time::Instant::now();
    loop {
        let answer = reqwest::Client::new()
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap();
        if answer.status() == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(6),
            "still refused after the silent connections' header timeout"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for stream in &mut silent {
        assert!(
            closed_within(stream, std::time::Duration::from_secs(5)).await,
            "a silent connection stayed open"
        );
    }
    app.stop().await;
}

/// A service whose bodies must keep arriving: silent at most `idle_ms`,
/// and at least `rate` bytes/s over each such window.
async fn paced_app(connect: &PgConnectOptions, idle_ms: u64, rate: u64) -> TestApp {
    let mut options = crate::helpers::options();
    options.limits.body_idle_timeout = std::time::Duration::from_millis(idle_ms);
    options.limits.min_body_bytes_per_second = rate;
    TestApp::spawn_with(connect, options).await
}

/// Options with few request slots and few long-polls.
fn few_slots(in_flight: usize, long_polls: usize) -> sinkgate::ServiceOptions {
    let options = crate::helpers::options();
    sinkgate::ServiceOptions {
        http: sinkgate::http::HttpLimits {
            max_in_flight: in_flight,
            max_long_polls: long_polls,
            max_long_polls_per_job: long_polls,
            ..options.http.clone()
        },
        ..options
    }
}

// Issue "hardening", 4: long-polls have a budget of their own and cannot
// pin the slots health checks and administration need.
#[sqlx::test]
async fn long_polls_cannot_starve_health_checks_or_administration(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn_with(&connect, few_slots(4, 8)).await;
    word_count_job(&app, "wc", &["t0"]).await;
    let mut polls = Vec::new();
    for _ in 0..8 {
        let request = app
            .http
            .get(app.url("/v1/jobs/wc/checkpoints/pending?after=1000&wait_ms=20000"));
        polls.push(tokio::spawn(request.send()));
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for path in ["/healthz", "/v1/jobs", "/v1/jobs/wc"] {
        assert_eq!(app.get(path).await.status(), StatusCode::OK, "{path}");
    }
    let over = app
        .get("/v1/jobs/wc/checkpoints/pending?after=1000&wait_ms=20000")
        .await;
    crate::helpers::problem(over, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
    for poll in polls {
        poll.abort();
    }
    app.kill().await;
}

// Issue "hardening", 4: a long-poll whose client left stops waiting.
#[sqlx::test]
async fn a_long_poll_whose_client_left_frees_its_slot(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn_with(&connect, few_slots(2, 2)).await;
    word_count_job(&app, "wc", &["t0"]).await;
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..2 {
        let gave_up = impatient
            .get(app.url("/v1/jobs/wc/checkpoints/pending?after=1000&wait_ms=30000"))
            .send()
            .await;
        assert!(gave_up.is_err(), "the client gives up first");
    }
    // Let the service notice (it looks between its once-a-second rechecks).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let fresh = reqwest::Client::new();
    let answer = fresh
        .get(app.url("/v1/jobs/wc/checkpoints/pending?after=1000&wait_ms=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        StatusCode::NO_CONTENT,
        "the slots were freed"
    );
    app.kill().await;
}

// Issue "hardening", 5: an upload that has not started holds no transaction.
#[sqlx::test]
async fn an_upload_holds_no_transaction_before_its_body_arrives(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let epoch = crate::helpers::event_job(&app, "ev", &["t0"]).await;
    let (sender, body) = crate::helpers::held_body();
    let upload = {
        let request = app.ndjson_request("ev", "t0", epoch, "b", body);
        tokio::spawn(async move { request.send().await.unwrap().status() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let writers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'sinkgate write%' AND datname = current_database()",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(writers, 0, "a transaction was opened before any body byte");
    sender
        .send(Ok(b"{\"id\": 1, \"payload\": \"late\"}\n".to_vec()))
        .await
        .unwrap();
    drop(sender);
    assert_eq!(upload.await.unwrap(), StatusCode::CREATED);
    app.stop().await;
}

// Issue "hardening", 6: a JSON batch of many tiny rows cannot multiply its
// size in memory.
#[sqlx::test]
async fn a_json_batch_has_a_row_cap(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn_with(
        &connect,
        sinkgate::ServiceOptions {
            http: sinkgate::http::HttpLimits {
                max_json_body_bytes: 4 << 20,
                ..crate::helpers::options().http
            },
            ..crate::helpers::options()
        },
    )
    .await;
    app.sql("CREATE TABLE loose (note text)").await;
    let response = app
        .put_job(
            "l",
            json!({"tasks": ["t0"], "sink": {"table": "loose", "mode": "append"}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let epoch = app.epoch("l").await;
    let rows = vec!["{}"; sinkgate::http::writes::MAX_JSON_ROWS + 1].join(",");
    let body =
        format!(r#"{{"task_id": "t0", "epoch": {epoch}, "batch_id": "b", "rows": [{rows}]}}"#);
    let refused = crate::helpers::problem(
        app.http
            .post(app.url("/v1/jobs/l/writes"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(refused["field"], "rows");
    assert_eq!(app.staged("l").await, 0);
    app.stop().await;
}

// Shutdown does not wait out long-polls: they end (204) at once.
#[sqlx::test]
async fn shutdown_ends_long_polls_at_once(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn(&connect).await;
    word_count_job(&app, "wc", &["t0"]).await;
    let poll = {
        let request = app
            .http
            .get(app.url("/v1/jobs/wc/checkpoints/pending?after=1000&wait_ms=30000"));
        tokio::spawn(async move { request.send().await.unwrap().status() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "shutdown waited {:?}",
        started.elapsed()
    );
    assert_eq!(poll.await.unwrap(), StatusCode::NO_CONTENT);
}

// Issue "hardening", 5: an upload that trickles (a few bytes just inside
// the idle limit, for ever) is cut off at the minimum rate, stages nothing,
// and another upload of the same job is served meanwhile.
#[sqlx::test]
async fn a_trickling_upload_is_cut_off_at_the_minimum_rate(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = paced_app(&connect, 1500, 1000).await;
    let epoch = crate::helpers::event_job(&app, "ev", &["t0"]).await;
    let upload = |batch: &str, body: reqwest::Body| {
        let request = app.ndjson_request("ev", "t0", epoch, batch, body);
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    let (sender, body) = crate::helpers::held_body();
    let trickle = upload("slow", body);
    let trickler = tokio::spawn(async move {
        // One row every 400 ms: never idle for 1.5 s, but ~80 bytes/s.
        for id in 0.. {
            let row = format!("{{\"id\": {id}, \"payload\": \"drip\"}}\n");
            if sender.send(Ok(row.into_bytes())).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        }
    });
    let normal = upload(
        "fast",
        reqwest::Body::from("{\"id\": 1000, \"payload\": \"quick\"}\n"),
    );
    assert_eq!(normal.await.unwrap().status(), StatusCode::CREATED);
    let cut = tokio::time::timeout(std::time::Duration::from_secs(20), trickle)
        .await
        .expect("a trickling upload was never cut off")
        .unwrap();
    let problem = crate::helpers::problem(cut, StatusCode::REQUEST_TIMEOUT, "body-timeout").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("slower than 1000 bytes/s"),
        "{problem}"
    );
    trickler.abort();
    // Only the normal upload's row is staged.
    assert_eq!(app.staged("ev").await, 1);
    app.stop().await;
}

// Issue "hardening", 5: PostgreSQL ends a sinkgate session left idle in a
// transaction, so its locks cannot outlive a bug or a cancelled request; the
// pool goes on with fresh sessions.
#[sqlx::test]
async fn a_session_idle_in_a_transaction_is_ended_by_the_server(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(sinkgate::db::session_options(
            connect.clone(),
            &sinkgate::db::SessionLimits {
                idle_in_transaction: std::time::Duration::from_millis(500),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("CREATE TABLE held (id int)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        sqlx::query("SELECT 1").execute(&mut *tx).await.is_err(),
        "the idle transaction was left open"
    );
    drop(tx);
    // Its lock on the new table is gone, and the pool still works.
    let visible: Option<String> = sqlx::query_scalar("SELECT to_regclass('held')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(visible, None);
}

// Issue "hardening", 6: buffered bodies are bounded over all requests, by
// the bytes that have arrived; a body that would overrun the budget is
// refused (503) while small requests (acks, administration) go on. A body
// sent as NDJSON to another route than /writes is buffered, so it counts.
#[sqlx::test]
async fn buffered_bodies_share_one_budget(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = TestApp::spawn_with(
        &connect,
        sinkgate::ServiceOptions {
            http: sinkgate::http::HttpLimits {
                max_json_body_bytes: 1 << 20,
                max_json_bytes_in_flight: 1 << 20,
                ..crate::helpers::options().http
            },
            ..crate::helpers::options()
        },
    )
    .await;
    let epoch = crate::helpers::event_job(&app, "ev", &["t0"]).await;
    let rows: Vec<Value> = (0..6000)
        .map(|id| json!({"id": id, "payload": "x".repeat(40)}))
        .collect();
    let write = json!({"task_id": "t0", "epoch": epoch, "batch_id": "b", "rows": rows});
    let size = write.to_string().len();
    assert!((300 << 10..900 << 10).contains(&size), "{size}");
    for content_type in ["application/json", "application/x-ndjson"] {
        // 800 KiB of a body that then stalls: held in memory meanwhile.
        let (sender, body) = crate::helpers::held_body();
        let held = {
            let request = app
                .http
                .post(app.url("/v1/jobs/ev/attempts"))
                .header("content-type", content_type)
                .body(body);
            tokio::spawn(async move { request.send().await.unwrap().status() })
        };
        // (Not JSON: once it ends, the attempt is refused, 400.)
        sender.send(Ok(vec![b'x'; 800 << 10])).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let refused = crate::helpers::problem(
            app.post("/v1/jobs/ev/writes", write.clone()).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
        )
        .await;
        assert!(refused["detail"].is_string());
        // Small requests are not held back.
        assert_eq!(
            app.http
                .get(app.url("/v1/jobs/ev"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK,
            "{content_type}"
        );
        drop(sender);
        assert!(held.await.unwrap().is_client_error(), "{content_type}");
    }
    assert_eq!(app.staged("ev").await, 0);
    // Once the held bodies are gone, the same write is taken.
    assert_eq!(
        app.post("/v1/jobs/ev/writes", write.clone()).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.staged("ev").await, 6000);
    app.stop().await;
}

// Issue "hardening", 6: a declared length over the limit is refused before
// a byte of the body is read.
#[sqlx::test]
async fn a_declared_length_over_the_limit_is_refused_at_once(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let started = std::time::Instant::now();
    let answer = raw_request(
        &app,
        b"POST /v1/jobs/x/attempts HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n{",
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    app.stop().await;
}

// Issue "hardening", 5: a buffered (JSON) body that stops arriving is
// abandoned like a streamed one: 408, nothing staged.
#[sqlx::test]
async fn a_stalled_json_body_is_abandoned(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = paced_app(&connect, 800, sinkgate::config::defaults::MIN_BODY_RATE).await;
    let epoch = crate::helpers::event_job(&app, "ev", &["t0"]).await;
    let (sender, body) = crate::helpers::held_body();
    let stalled = {
        let request = app
            .http
            .post(app.url("/v1/jobs/ev/writes"))
            .header("content-type", "application/json")
            .body(body);
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    let head = format!(
        r#"{{"task_id": "t0", "epoch": {epoch}, "batch_id": "b", "rows": [{{"id": 1, "payload": "a"}}"#
    );
    sender.send(Ok(head.into_bytes())).await.unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), stalled)
        .await
        .expect("a stalled JSON body was never abandoned")
        .unwrap();
    crate::helpers::problem(answer, StatusCode::REQUEST_TIMEOUT, "body-timeout").await;
    drop(sender);
    assert_eq!(app.staged("ev").await, 0);
    app.stop().await;
}

// A job's long-poll cap holds however its id is spelled in the path (the
// handler decodes `%65v` to `ev`, so must the cap).
#[sqlx::test]
async fn the_long_poll_cap_of_a_job_holds_for_every_spelling_of_its_id(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn_with(&connect, {
        let mut options = few_slots(16, 8);
        options.http.max_long_polls_per_job = 1;
        options
    })
    .await;
    word_count_job(&app, "wc", &["t0"]).await;
    let waiting = tokio::spawn(
        app.http
            .get(app.url("/v1/jobs/wc/checkpoints/pending?after=1000&wait_ms=20000"))
            .send(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for spelling in ["%77c", "w%63", "%77%63", "%77%43"] {
        let answer = app
            .get(&format!(
                "/v1/jobs/{spelling}/checkpoints/pending?after=1000&wait_ms=20000"
            ))
            .await;
        let status = answer.status();
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::NOT_FOUND,
            "{spelling}: {status}"
        );
    }
    waiting.abort();
    app.kill().await;
}

// A body that arrives fast, then trickles, is cut off in the first slow
// window: a fast start banks no credit for hours of trickling (a buffered
// body holds memory of the shared budget meanwhile).
#[sqlx::test]
async fn a_fast_start_banks_nothing_for_a_trickle(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = paced_app(&connect, 1000, 1000).await;
    crate::helpers::event_job(&app, "ev", &["t0"]).await;
    let (sender, body) = crate::helpers::held_body();
    let held = {
        let request = app
            .http
            .post(app.url("/v1/jobs/ev/checkpoints"))
            .header("content-type", "application/json")
            .body(body);
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    sender.send(Ok(vec![b' '; 200 << 10])).await.unwrap();
    let trickler = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            if sender.send(Ok(b" ".to_vec())).await.is_err() {
                break;
            }
        }
    });
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), held)
        .await
        .expect("a trickle after a fast start was never cut off")
        .unwrap();
    let problem =
        crate::helpers::problem(answer, StatusCode::REQUEST_TIMEOUT, "body-timeout").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("slower than 1000 bytes/s"),
        "{problem}"
    );
    trickler.abort();
    app.stop().await;
}
