//! A test app on a random port against a fresh, migrated database, and one
//! typed helper per endpoint.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sinkgate::coordinator::Limits;
use sinkgate::ServiceOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Test logs only when `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("sinkgate=debug,tower_http=debug")
            .with_test_writer()
            .try_init();
    }
}

pub fn options() -> ServiceOptions {
    ServiceOptions {
        limits: Limits {
            max_inline_state_bytes: 4096,
            max_ndjson_body_bytes: 1 << 30,
            ..Limits::default()
        },
        http: sinkgate::http::HttpLimits {
            max_json_body_bytes: 1 << 20,
            max_json_bytes_in_flight: 64 << 20,
            ..Default::default()
        },
        connections: sinkgate::http::serve::ConnectionLimits {
            max_connections_per_address: 2048,
            ..Default::default()
        },
        auth: sinkgate::auth::AuthMode::Disabled,
        tick: Duration::from_millis(50),
        state_grace: Duration::from_secs(3600),
    }
}

/// As [`options`], with a scheduler that does not tick during a test:
/// decisions, timeouts and promotion retries happen only where the test
/// makes them (acks, `/attempts`, `/promotions`, start-up).
pub fn quiet_options() -> ServiceOptions {
    ServiceOptions {
        tick: Duration::from_secs(3600),
        ..options()
    }
}

/// A pool of the test database, larger than the one `#[sqlx::test]` offers.
pub async fn pool(connect: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(16)
        .connect_with(sinkgate::db::session_options(
            connect.clone(),
            &sinkgate::db::SessionLimits::default(),
        ))
        .await
        .expect("connect to the test database")
}

/// One running service.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    /// The service's own pool (closed by `stop`).
    pub db: PgPool,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(connect: &PgConnectOptions) -> TestApp {
        Self::spawn_with(connect, options()).await
    }

    pub async fn spawn_with(connect: &PgConnectOptions, options: ServiceOptions) -> TestApp {
        init_logs();
        let db = pool(connect).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(sinkgate::run(db.clone(), options, listener, async {
            let _ = stopped.await;
        }));
        let app = TestApp {
            base,
            http: reqwest::Client::new(),
            db,
            stop: Some(stop),
            server: Some(server),
        };
        // The service is up once it answers.
        for _ in 0..100 {
            if app.http.get(app.url("/healthz")).send().await.is_ok() {
                return app;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the test app did not start");
    }

    /// Graceful stop: in-flight requests finish, connections close.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        self.db.close().await;
    }

    /// Crash: the server task is dropped mid-flight and its connections cut.
    pub async fn kill(mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
        self.db.close().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn put_job(&self, job: &str, spec: Value) -> Response {
        self.http
            .put(self.url(&format!("/v1/jobs/{job}")))
            .json(&spec)
            .send()
            .await
            .unwrap()
    }

    /// Starts an attempt and returns the whole answer.
    pub async fn attempt(&self, job: &str) -> Value {
        let response = self
            .post(&format!("/v1/jobs/{job}/attempts"), json!({}))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "attempt failed");
        response.json().await.unwrap()
    }

    /// Starts an attempt and returns the new epoch.
    pub async fn epoch(&self, job: &str) -> i64 {
        self.attempt(job).await["epoch"].as_i64().unwrap()
    }

    pub async fn write(
        &self,
        job: &str,
        task: &str,
        epoch: i64,
        batch: &str,
        rows: Value,
    ) -> Response {
        self.post(
            &format!("/v1/jobs/{job}/writes"),
            json!({"task_id": task, "epoch": epoch, "batch_id": batch, "rows": rows}),
        )
        .await
    }

    /// A JSON write naming an output.
    pub async fn write_to(
        &self,
        job: &str,
        output: &str,
        task: &str,
        epoch: i64,
        batch: &str,
        rows: Value,
    ) -> Response {
        self.post(
            &format!("/v1/jobs/{job}/writes"),
            json!({"task_id": task, "epoch": epoch, "batch_id": batch, "output": output, "rows": rows}),
        )
        .await
    }

    /// Triggers a checkpoint and acks it from every task; returns its id
    /// and the status the last ack reports.
    pub async fn commit(&self, job: &str, epoch: i64, tasks: &[&str]) -> (i64, String) {
        let checkpoint = self.checkpoint(job, epoch).await;
        let mut status = String::new();
        for task in tasks {
            status = self.ack_ok(job, checkpoint, task, epoch, json!({})).await;
        }
        (checkpoint, status)
    }

    pub async fn write_ndjson(
        &self,
        job: &str,
        task: &str,
        epoch: i64,
        batch: &str,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        self.ndjson_request(job, task, epoch, batch, body)
            .send()
            .await
            .unwrap()
    }

    /// An NDJSON upload not yet sent (to spawn, or to add a token to).
    pub fn ndjson_request(
        &self,
        job: &str,
        task: &str,
        epoch: i64,
        batch: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(&format!("/v1/jobs/{job}/writes")))
            .query(&[
                ("task_id", task),
                ("epoch", &epoch.to_string()),
                ("batch_id", batch),
            ])
            .header("content-type", "application/x-ndjson")
            .body(body)
    }

    pub async fn trigger(&self, job: &str, epoch: i64) -> Response {
        self.post(
            &format!("/v1/jobs/{job}/checkpoints"),
            json!({"epoch": epoch}),
        )
        .await
    }

    /// Triggers and returns the checkpoint id.
    pub async fn checkpoint(&self, job: &str, epoch: i64) -> i64 {
        let response = self.trigger(job, epoch).await;
        assert_eq!(response.status(), StatusCode::CREATED, "trigger failed");
        let body: Value = response.json().await.unwrap();
        body["checkpoint_id"].as_i64().unwrap()
    }

    pub async fn ack(
        &self,
        job: &str,
        checkpoint: i64,
        task: &str,
        epoch: i64,
        offsets: Value,
    ) -> Response {
        self.post(
            &format!("/v1/jobs/{job}/checkpoints/{checkpoint}/acks"),
            json!({"task_id": task, "epoch": epoch, "offsets": offsets}),
        )
        .await
    }

    /// Acks and returns the checkpoint status the answer reports.
    pub async fn ack_ok(
        &self,
        job: &str,
        checkpoint: i64,
        task: &str,
        epoch: i64,
        offsets: Value,
    ) -> String {
        let response = self.ack(job, checkpoint, task, epoch, offsets).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "ack failed: {body}");
        body["status"].as_str().unwrap().to_owned()
    }

    pub async fn decline(&self, job: &str, checkpoint: i64, task: &str, epoch: i64) -> Response {
        self.post(
            &format!("/v1/jobs/{job}/checkpoints/{checkpoint}/declines"),
            json!({"task_id": task, "epoch": epoch, "reason": "test"}),
        )
        .await
    }

    pub async fn checkpoint_details(&self, job: &str, checkpoint: i64) -> Value {
        let response = self
            .get(&format!("/v1/jobs/{job}/checkpoints/{checkpoint}"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    pub async fn recovery(&self, job: &str) -> Value {
        let response = self.get(&format!("/v1/jobs/{job}/recovery")).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Runs SQL against the test database (sink tables, fixtures).
    pub async fn sql(&self, statement: &str) {
        sqlx::raw_sql(statement).execute(&self.db).await.unwrap();
    }

    /// `(word, n)` rows of a word-count sink, sorted.
    pub async fn word_counts(&self, table: &str) -> Vec<(String, i64)> {
        sqlx::query_as(&format!("SELECT word, n FROM {table} ORDER BY word"))
            .fetch_all(&self.db)
            .await
            .unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Rows currently staged for a job: tuples, and the lines of chunks.
    pub async fn staged(&self, job: &str) -> i64 {
        let table = self.staging_table(job).await;
        sqlx::query_scalar(&format!(
            "SELECT (count(*) FILTER (WHERE _sinkgate_chunk IS NULL)
                   + coalesce(sum(length(convert_from(_sinkgate_chunk, 'UTF8'))
                                  - length(replace(convert_from(_sinkgate_chunk, 'UTF8'), E'\\n', ''))), 0))::bigint
             FROM {table}"
        ))
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    /// Staging rows of a job that hold chunks of COPY text.
    pub async fn staged_chunks(&self, job: &str) -> i64 {
        let table = self.staging_table(job).await;
        self.count(&format!("{table} WHERE _sinkgate_chunk IS NOT NULL"))
            .await
    }

    /// The qualified name of a job's (first output's) staging table.
    pub async fn staging_table(&self, job: &str) -> String {
        let id: i64 = sqlx::query_scalar(
            "SELECT staging_id FROM job_outputs WHERE job_id = $1 ORDER BY ordinal LIMIT 1",
        )
        .bind(job)
        .fetch_one(&self.db)
        .await
        .unwrap();
        format!("sinkgate_staging.job_{id}")
    }
}

/// Asserts a problem document of the given status and kind; returns it.
pub async fn problem(response: Response, status: StatusCode, kind: &str) -> Value {
    let actual = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap();
    assert_eq!(actual, status, "unexpected status; body: {body}");
    assert_eq!(content_type, "application/problem+json", "body: {body}");
    assert_eq!(
        body["type"],
        format!("urn:sinkgate:problem:{kind}"),
        "body: {body}"
    );
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"]
        .as_str()
        .is_some_and(|detail| !detail.is_empty()));
    body
}

/// A word-count job (upsert on `word`) with the given tasks; returns the epoch
/// of its first attempt.
pub async fn word_count_job(app: &TestApp, job: &str, tasks: &[&str]) -> i64 {
    app.sql(&format!(
        "CREATE TABLE IF NOT EXISTS {job}_sink (word text PRIMARY KEY, n bigint NOT NULL)"
    ))
    .await;
    let response = app
        .put_job(job, json!({"tasks": tasks, "sink": {"table": format!("{job}_sink"), "mode": "upsert", "key": ["word"]}}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    app.epoch(job).await
}

/// An event-copy job (append) with the given tasks; returns the epoch.
pub async fn event_job(app: &TestApp, job: &str, tasks: &[&str]) -> i64 {
    app.sql(&format!(
        "CREATE TABLE IF NOT EXISTS {job}_sink (id bigint PRIMARY KEY, payload text NOT NULL, at timestamptz DEFAULT now())"
    ))
    .await;
    let response = app
        .put_job(
            job,
            json!({"tasks": tasks, "sink": {"table": format!("{job}_sink"), "mode": "append"}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    app.epoch(job).await
}

/// `n` event rows with ids from `first`.
pub fn events(first: i64, n: i64) -> Value {
    Value::Array(
        (first..first + n)
            .map(|id| json!({"id": id, "payload": format!("event {id}")}))
            .collect(),
    )
}

/// A request body that arrives only as the test sends it: each chunk sent
/// on the returned sender goes out at once; dropping the sender ends the
/// body. For uploads that stall, trickle, or outlive something.
pub fn held_body() -> (
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    reqwest::Body,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    (sender, reqwest::Body::wrap_stream(stream))
}
