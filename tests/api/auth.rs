//! Each kind of token can do exactly what it should: a matrix over the endpoints.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sinkgate::auth::AuthMode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{options, problem, TestApp};

const ADMIN: &str = "admin-secret-for-tests";

/// A service with authentication on (admin token [`ADMIN`]) and `limits`.
async fn spawn_with_auth(
    connect: &PgConnectOptions,
    limits: sinkgate::coordinator::Limits,
) -> TestApp {
    TestApp::spawn_with(
        connect,
        sinkgate::ServiceOptions {
            auth: AuthMode::Enabled {
                admin_token: ADMIN.into(),
                protect_operations: false,
            },
            limits,
            ..options()
        },
    )
    .await
}

/// Jobs `own` and `other` (append sinks), and a processor token issued to
/// `holder`, one of them (the answer of `POST …/tokens`).
async fn own_and_other(app: &TestApp, holder: &str) -> Value {
    app.sql("CREATE TABLE own_sink (id bigint); CREATE TABLE other_sink (id bigint)")
        .await;
    for job in ["own", "other"] {
        let response = app
            .http
            .put(app.url(&format!("/v1/jobs/{job}")))
            .bearer_auth(ADMIN)
            .json(&json!({"tasks": ["t0"], "sink": {"table": format!("{job}_sink"), "mode": "append"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    app.http
        .post(app.url(&format!("/v1/jobs/{holder}/tokens")))
        .bearer_auth(ADMIN)
        .json(&json!({"label": format!("processor of {holder}")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Authorized (whatever the endpoint then answers).
    Pass,
    Unauthenticated,
    Forbidden,
}

#[sqlx::test]
async fn each_token_kind_can_do_exactly_what_it_should(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut limits = options().limits;
    // The matrix sends a wrong token on every row.
    limits.wrong_tokens_per_minute = 10_000;
    let app = spawn_with_auth(&connect, limits).await;
    let http = &app.http;
    let issued = own_and_other(&app, "own").await;
    let processor = issued["token"].as_str().unwrap().to_owned();
    let token_id = issued["token_id"].as_str().unwrap().to_owned();
    assert!(processor.starts_with("sgt_"));
    let listed: Value = http
        .get(app.url("/v1/jobs/own/tokens"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["token_id"], token_id.as_str());
    assert!(listed[0].get("token").is_none(), "secrets are never listed");

    use Expect::*;
    let body = json!({});
    // (method, path, as admin, as processor of `own`, with no token)
    let matrix: Vec<(&str, String, Expect, Expect, Expect)> = vec![
        ("GET", "/v1/jobs".into(), Pass, Forbidden, Unauthenticated),
        (
            "PUT",
            "/v1/jobs/own".into(),
            Pass,
            Forbidden,
            Unauthenticated,
        ),
        (
            "DELETE",
            "/v1/jobs/nothing".into(),
            Pass,
            Forbidden,
            Unauthenticated,
        ),
        ("GET", "/v1/jobs/own".into(), Pass, Pass, Unauthenticated),
        (
            "GET",
            "/v1/jobs/other".into(),
            Pass,
            Forbidden,
            Unauthenticated,
        ),
        (
            "POST",
            "/v1/jobs/own/attempts".into(),
            Pass,
            Pass,
            Unauthenticated,
        ),
        (
            "POST",
            "/v1/jobs/other/attempts".into(),
            Pass,
            Forbidden,
            Unauthenticated,
        ),
        (
            "GET",
            "/v1/jobs/own/recovery".into(),
            Pass,
            Pass,
            Unauthenticated,
        ),
        (
            "GET",
            "/v1/jobs/other/recovery".into(),
            Pass,
            Forbidden,
            Unauthenticated,
        ),
        (
            "POST",
            "/v1/jobs/own/writes".into(),
            Pass,
            Pass,
            Unauthenticated,
        ),
        (
            "POST",
            "/v1/jobs/other/writes".into(),
            Pass,
            Forbidden,
            Unauthenticated,
        ),
        (
            "POST",
            "/v1/jobs/own/checkpoints".into(),
            Pass,
            Pass,
            Unauthenticated,
        ),
        (
            "GET",
            "/v1/jobs/own/checkpoints".into(),
            Pass,
            Pass,
            Unauthenticated,
        ),
        (
            "GET",
            "/v1/jobs/own/checkpoints/pending".into(),
            Pass,
            Pass,
            Unauthenticated,
        ),
        (
            "GET",
            "/v1/jobs/own/checkpoints/1".into(),
            Pass,
            Pass,
            Unauthenticated,
        ),
        (
            "POST",
            "/v1/jobs/own/checkpoints/1/acks".into(),
            Pass,
            Pass,
            Unauthenticated,
        ),
        (
            "POST",
            "/v1/jobs/other/checkpoints/1/acks".into(),
            Pass,
            Forbidden,
            Unauthenticated,
        ),
        (
            "POST",
            "/v1/jobs/own/checkpoints/1/declines".into(),
            Pass,
            Pass,
            Unauthenticated,
        ),
        (
            "POST",
            "/v1/jobs/own/checkpoints/1/abort".into(),
            Pass,
            Forbidden,
            Unauthenticated,
        ),
        (
            "POST",
            "/v1/jobs/own/tokens".into(),
            Pass,
            Forbidden,
            Unauthenticated,
        ),
        (
            "GET",
            "/v1/jobs/own/tokens".into(),
            Pass,
            Forbidden,
            Unauthenticated,
        ),
        (
            "DELETE",
            "/v1/jobs/own/tokens/nothing".into(),
            Pass,
            Forbidden,
            Unauthenticated,
        ),
        ("GET", "/healthz".into(), Pass, Pass, Pass),
        ("GET", "/readyz".into(), Pass, Pass, Pass),
        ("GET", "/metrics".into(), Pass, Pass, Pass),
    ];
    for (method, path, admin, as_processor, anonymous) in matrix {
        for (token, expected) in [
            (Some(ADMIN), admin),
            (Some(processor.as_str()), as_processor),
            (None, anonymous),
            (
                Some("sgt_bogus_x"),
                if anonymous == Pass {
                    Pass
                } else {
                    Unauthenticated
                },
            ),
        ] {
            let mut request = http
                .request(method.parse().unwrap(), app.url(&path))
                .json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let actual = match status {
                StatusCode::UNAUTHORIZED => {
                    assert_eq!(response.headers()["www-authenticate"], "Bearer");
                    Unauthenticated
                }
                StatusCode::FORBIDDEN => Forbidden,
                _ => Pass,
            };
            assert_eq!(actual, expected, "{method} {path} with {token:?}: {status}");
        }
    }

    // Revoked: the processor token stops working at once.
    let revoked = http
        .delete(app.url(&format!("/v1/jobs/own/tokens/{token_id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let after = http
        .get(app.url("/v1/jobs/own/recovery"))
        .bearer_auth(&processor)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    // A wrong secret for a real token id is as unknown as a made-up token.
    let (prefix, _) = processor.rsplit_once('_').unwrap();
    let forged = http
        .get(app.url("/v1/jobs/own/recovery"))
        .bearer_auth(format!("{prefix}_wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

// Issue "hardening", 3: guessing tokens is slowed down per client address.
#[sqlx::test]
async fn wrong_tokens_from_one_address_are_refused_for_a_while(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_with_auth(&connect, options().limits).await;
    let guess = |token: String| app.http.get(app.url("/v1/jobs")).bearer_auth(token).send();
    for n in 0..options().limits.wrong_tokens_per_minute {
        assert_eq!(
            guess(format!("guess-{n}")).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let refused = guess("guess-more".into()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    // The whole address waits, a right guess included.
    assert_eq!(
        guess(ADMIN.into()).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Requests without a token guess nothing and are not counted.
    let anonymous = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::OK);
    app.stop().await;
}

// Issue "hardening", 8: revoking a token stops its upload in progress.
#[sqlx::test]
async fn a_token_revoked_mid_upload_stages_nothing(_: PgPoolOptions, connect: PgConnectOptions) {
    let app = spawn_with_auth(&connect, options().limits).await;
    let http = &app.http;
    app.sql("CREATE TABLE ev_sink (id bigint PRIMARY KEY, payload text NOT NULL)")
        .await;
    let created = http
        .put(app.url("/v1/jobs/ev"))
        .bearer_auth(ADMIN)
        .json(&json!({"tasks": ["t0"], "sink": {"table": "ev_sink", "mode": "append"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let issued: Value = http
        .post(app.url("/v1/jobs/ev/tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({"label": "processor"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = issued["token"].as_str().unwrap().to_owned();
    let token_id = issued["token_id"].as_str().unwrap().to_owned();
    let attempt: Value = http
        .post(app.url("/v1/jobs/ev/attempts"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let epoch = attempt["epoch"].as_i64().unwrap();

    let (sender, body) = crate::helpers::held_body();
    let upload = {
        let request = app
            .ndjson_request("ev", "t0", epoch, "b", body)
            .bearer_auth(&token);
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    sender
        .send(Ok(b"{\"id\": 1, \"payload\": \"before\"}\n".to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let revoked = http
        .delete(app.url(&format!("/v1/jobs/ev/tokens/{token_id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    sender
        .send(Ok(b"{\"id\": 2, \"payload\": \"after\"}\n".to_vec()))
        .await
        .unwrap();
    drop(sender);
    let answer = upload.await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.staged("ev").await,
        0,
        "nothing of the upload was staged"
    );
    app.stop().await;
}

// Every route of the OpenAPI document says who may call it: with no token a
// `/v1` route is 401, and with a processor token of another job it is 403
// (whether it needs the admin or the job named in its path). A handler that
// forgot its `Admin` or `JobCaller` extractor would let that token through.
#[sqlx::test]
async fn every_route_declares_who_may_call_it(_: PgPoolOptions, connect: PgConnectOptions) {
    let mut limits = options().limits;
    limits.wrong_tokens_per_minute = 0;
    let app = spawn_with_auth(&connect, limits).await;
    let issued = own_and_other(&app, "other").await;
    let other = issued["token"].as_str().unwrap().to_owned();
    let document = serde_json::to_value(sinkgate::http::openapi()).unwrap();
    let mut checked = 0;
    for (template, operations) in document["paths"].as_object().unwrap() {
        if !template.starts_with("/v1") {
            continue;
        }
        let path = template
            .replace("{job}", "own")
            .replace("{id}", "1")
            .replace("{token_id}", "x")
            .replace("{sha256}", &"0".repeat(64));
        for method in operations.as_object().unwrap().keys() {
            for (token, expected) in [
                (None, StatusCode::UNAUTHORIZED),
                (Some(other.as_str()), StatusCode::FORBIDDEN),
            ] {
                let mut request = app
                    .http
                    .request(method.to_uppercase().parse().unwrap(), app.url(&path))
                    .json(&json!({}));
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                let status = request.send().await.unwrap().status();
                assert_eq!(
                    status, expected,
                    "{method} {template} with {token:?}: no declared permission?"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 38,
        "only {checked} requests: routes missing from the document?"
    );
    // The scheme is case-insensitive (RFC 9110).
    let lower = app
        .http
        .get(app.url("/v1/jobs"))
        .header("authorization", format!("bearer {ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), StatusCode::OK);
    app.stop().await;
}

// Rewinding a job to an older checkpoint is an operator's decision: a
// processor token may start attempts, not restarts from a savepoint.
#[sqlx::test]
async fn only_the_admin_restarts_a_job_from_an_older_checkpoint(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_with_auth(&connect, options().limits).await;
    let issued = own_and_other(&app, "own").await;
    let token = issued["token"].as_str().unwrap();
    let attempt = |token: &str, body: Value| {
        app.http
            .post(app.url("/v1/jobs/own/attempts"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    assert_eq!(
        attempt(token, json!({})).await.unwrap().status(),
        StatusCode::OK
    );
    let refused = problem(
        attempt(token, json!({"from_checkpoint": 1})).await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert!(refused["detail"].as_str().unwrap().contains("admin"));
    // The admin gets past the permission (to the job's own check: an
    // append output cannot be rewound).
    problem(
        attempt(ADMIN, json!({"from_checkpoint": 1})).await.unwrap(),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    app.stop().await;
}
