//! Graceful shutdown of the real binary: SIGTERM while a commit is running
//! lets the commit finish, answers the request, and exits 0.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[sqlx::test]
async fn sigterm_during_a_commit_finishes_the_commit_and_exits_cleanly(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let base = std::env::var("DATABASE_URL").unwrap();
    let database_url = format!(
        "{}/{}",
        base.rsplit_once('/').unwrap().0,
        connect.get_database().unwrap()
    );
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(connect)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut service = tokio::process::Command::new(env!("CARGO_BIN_EXE_sinkgate"))
        .args([
            "serve",
            "--insecure-no-auth",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("DATABASE_URL", &database_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{url}/readyz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let put = http
        .put(format!("{url}/v1/jobs/big"))
        .json(&json!({"tasks": ["t0"], "sink": {"table": "big", "mode": "append"}}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let attempt: Value = http
        .post(format!("{url}/v1/jobs/big/attempts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let epoch = attempt["epoch"].as_i64().unwrap();
    // Enough rows that promotion takes a while.
    let rows = 300_000;
    let body: String = (0..rows)
        .map(|id| format!("{{\"id\": {id}, \"payload\": \"row {id}\"}}\n"))
        .collect();
    let staged = http
        .post(format!(
            "{url}/v1/jobs/big/writes?task_id=t0&epoch={epoch}&batch_id=b"
        ))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(staged.status().is_success());
    let checkpoint: Value = http
        .post(format!("{url}/v1/jobs/big/checkpoints"))
        .json(&json!({"epoch": epoch}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = checkpoint["checkpoint_id"].as_i64().unwrap();

    let ack = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(format!("{url}/v1/jobs/big/checkpoints/{id}/acks"))
                .json(&json!({"task_id": "t0", "epoch": epoch, "offsets": {"0": rows}}))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = service.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    let answer: Value = ack
        .await
        .unwrap()
        .expect("the in-flight ack is answered")
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "committed");
    let exit = tokio::time::timeout(Duration::from_secs(30), service.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM big")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, rows);
    pool.close().await;
}
