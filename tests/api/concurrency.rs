use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{events, TestApp};

/// An append sink without a unique key, so a second promotion would show as duplicates.
async fn keyless_job(app: &TestApp, job: &str, tasks: &[String]) -> i64 {
    app.sql(&format!(
        "CREATE TABLE {job}_sink (id bigint NOT NULL, payload text NOT NULL)"
    ))
    .await;
    let response = app
        .put_job(
            job,
            json!({"tasks": tasks, "sink": {"table": format!("{job}_sink"), "mode": "append"},
                             "checkpointing": {"max_concurrent": 5}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    app.epoch(job).await
}

#[sqlx::test]
async fn parallel_acks_on_two_replicas_decide_and_promote_exactly_once(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let replicas = [
        TestApp::spawn(&connect).await,
        TestApp::spawn(&connect).await,
    ];
    let tasks: Vec<String> = (0..40).map(|i| format!("task-{i}")).collect();
    let epoch = keyless_job(&replicas[0], "ev", &tasks).await;

    for round in 0..3i64 {
        for (i, task) in tasks.iter().enumerate() {
            let id = round * 1000 + i as i64;
            let response = replicas[i % 2]
                .write("ev", task, epoch, &format!("b{round}"), events(id, 1))
                .await;
            assert_eq!(response.status(), StatusCode::CREATED);
        }
        let checkpoint = replicas[0].checkpoint("ev", epoch).await;
        // Every task acks, half through each replica; in round 2 each task acks
        // twice at once (a client retry racing its original).
        let copies = if round == 2 { 2 } else { 1 };
        let replicas = &replicas;
        let acks = tasks.iter().enumerate().flat_map(|(i, task)| {
            (0..copies).map(move |copy| async move {
                replicas[(i + copy) % 2]
                    .ack(
                        "ev",
                        checkpoint,
                        task,
                        epoch,
                        json!({ task.clone(): round }),
                    )
                    .await
            })
        });
        let mut statuses = Vec::new();
        for response in join_all(acks).await {
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "every ack gets a consistent answer"
            );
            let body: Value = response.json().await.unwrap();
            statuses.push(body["status"].as_str().unwrap().to_owned());
        }
        let committed = statuses
            .iter()
            .filter(|status| *status == "committed")
            .count();
        assert!(statuses
            .iter()
            .all(|status| status == "pending" || status == "committed"));
        // The ack(s) that saw the set complete answer `committed`; every
        // other answer is `pending`. Decided and promoted exactly once:
        assert!(committed >= 1, "{statuses:?}");
        let details = replicas[1].checkpoint_details("ev", checkpoint).await;
        assert_eq!(details["status"], "committed");
        assert_eq!(details["acked_tasks"], 40);
        assert_eq!(details["promoted_rows"], 40);
        let in_sink = replicas[0].count("ev_sink").await;
        assert_eq!(
            in_sink,
            40 * (round + 1),
            "round {round}: promoted exactly once"
        );
    }
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT id) FROM ev_sink")
        .fetch_one(&replicas[0].db)
        .await
        .unwrap();
    assert_eq!(distinct, 120);
    for app in replicas {
        app.stop().await;
    }
}

#[sqlx::test]
async fn acks_racing_an_attempt_are_either_before_the_fence_or_fenced(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let tasks: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    for round in 0..5 {
        let job = format!("race{round}");
        let epoch = keyless_job(&app, &job, &tasks).await;
        for task in &tasks {
            app.write(&job, task, epoch, "b", events(0, 1)).await;
        }
        let checkpoint = app.checkpoint(&job, epoch).await;
        let acks = tasks
            .iter()
            .map(|task| app.ack(&job, checkpoint, task, epoch, json!({})));
        let attempt_path = format!("/v1/jobs/{job}/attempts");
        let attempt = app.post(&attempt_path, json!({}));
        let (responses, attempt) = tokio::join!(join_all(acks), attempt);
        assert_eq!(attempt.status(), StatusCode::OK);
        let attempt: Value = attempt.json().await.unwrap();

        let mut accepted = 0;
        for response in responses {
            match response.status() {
                StatusCode::OK => accepted += 1,
                StatusCode::CONFLICT => {
                    let body: Value = response.json().await.unwrap();
                    assert_eq!(body["type"], "urn:sinkgate:problem:fenced");
                }
                other => panic!("unexpected {other}"),
            }
        }
        let details = app.checkpoint_details(&job, checkpoint).await;
        assert_eq!(
            details["acked_tasks"], accepted,
            "recorded acks are exactly the accepted ones"
        );
        let sink = app.count(&format!("{job}_sink")).await;
        if accepted == tasks.len() {
            // All acks won the race: decided before the fence, so committed.
            assert_eq!(details["status"], "committed");
            assert_eq!(sink, 12);
            assert_eq!(attempt["recovery"]["checkpoint_id"], checkpoint);
        } else {
            assert_eq!(details["status"], "aborted");
            assert_eq!(sink, 0, "nothing of the fenced epoch reached the sink");
            assert_eq!(attempt["aborted_checkpoints"], json!([checkpoint]));
        }
        assert_eq!(app.staged(&job).await, 0);
    }
    app.stop().await;
}

#[sqlx::test]
async fn writes_racing_an_attempt_are_aborted_with_their_epoch_or_fenced(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let tasks: Vec<String> = (0..4).map(|i| format!("t{i}")).collect();
    let old = keyless_job(&app, "ev", &tasks).await;
    let (shared_app, shared_tasks) = (&app, &tasks);
    let writes = (0..40).map(|i| async move {
        shared_app
            .write(
                "ev",
                &shared_tasks[i % 4],
                old,
                &format!("b{i}"),
                events(i as i64 * 100, 100),
            )
            .await
    });
    let attempt = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        app.post("/v1/jobs/ev/attempts", json!({})).await
    };
    let (responses, attempt) = tokio::join!(join_all(writes), attempt);
    assert_eq!(attempt.status(), StatusCode::OK);
    for response in responses {
        assert!(
            matches!(
                response.status(),
                StatusCode::CREATED | StatusCode::CONFLICT
            ),
            "{}",
            response.status()
        );
    }
    assert_eq!(
        app.staged("ev").await,
        0,
        "whatever was staged before the fence was aborted"
    );

    // The new epoch commits only its own rows.
    let new = old + 1;
    for task in &tasks {
        app.write("ev", task, new, "fresh", events(1_000_000, 1))
            .await;
    }
    let checkpoint = app.checkpoint("ev", new).await;
    for task in &tasks {
        app.ack_ok("ev", checkpoint, task, new, json!({})).await;
    }
    assert_eq!(app.count("ev_sink").await, 4);
    app.stop().await;
}

/// Records the last ack as the service's first transaction would, then
/// "crashes" before the second (the decision).
pub async fn record_last_ack_without_deciding(
    app: &TestApp,
    job: &str,
    checkpoint: i64,
    task: &str,
    epoch: i64,
) {
    let request = sinkgate::model::AckRequest {
        task_id: task.into(),
        epoch,
        offsets: [("p".to_owned(), 7)].into(),
        state: None,
    };
    let mut tx = app.db.begin().await.unwrap();
    sinkgate::coordinator::acks::record_ack(
        &mut tx,
        job,
        checkpoint,
        &request,
        &Default::default(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[sqlx::test]
async fn a_decision_lost_between_the_ack_transactions_is_made_by_the_scheduler(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let tasks = vec!["t0".to_owned(), "t1".to_owned()];
    let epoch = keyless_job(&app, "ev", &tasks).await;
    app.write("ev", "t1", epoch, "b", events(0, 3)).await;
    let checkpoint = app.checkpoint("ev", epoch).await;
    app.ack_ok("ev", checkpoint, "t0", epoch, json!({})).await;
    record_last_ack_without_deciding(&app, "ev", checkpoint, "t1", epoch).await;
    let mut status = Value::Null;
    for _ in 0..100 {
        status = app.checkpoint_details("ev", checkpoint).await["status"].clone();
        if status == "committed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "committed");
    assert_eq!(app.count("ev_sink").await, 3);
    app.stop().await;
}

#[sqlx::test]
async fn a_decision_lost_between_the_ack_transactions_is_made_by_a_retry_or_an_attempt(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let quiet = crate::helpers::quiet_options();
    let app = TestApp::spawn_with(&connect, quiet).await;
    let tasks = vec!["t0".to_owned()];
    let epoch = keyless_job(&app, "ev", &tasks).await;
    app.write("ev", "t0", epoch, "b", events(0, 3)).await;
    let first = app.checkpoint("ev", epoch).await;
    record_last_ack_without_deciding(&app, "ev", first, "t0", epoch).await;
    assert_eq!(
        app.checkpoint_details("ev", first).await["status"],
        "pending"
    );
    // The processor retries the ack whose answer it never got.
    assert_eq!(
        app.ack_ok("ev", first, "t0", epoch, json!({"p": 7})).await,
        "committed"
    );
    assert_eq!(app.count("ev_sink").await, 3);

    app.write("ev", "t0", epoch, "c", events(3, 2)).await;
    let second = app.checkpoint("ev", epoch).await;
    record_last_ack_without_deciding(&app, "ev", second, "t0", epoch).await;
    assert_eq!(
        app.checkpoint_details("ev", second).await["status"],
        "pending"
    );
    // Or the processor died too: the next attempt decides what every task acked.
    let attempt = app.attempt("ev").await;
    assert_eq!(attempt["recovery"]["checkpoint_id"], second);
    assert_eq!(attempt["aborted_checkpoints"], json!([]));
    assert_eq!(app.count("ev_sink").await, 5);
    app.stop().await;
}

/// Clients that give up mid-request (a processor killed, a client timeout)
/// must not leave the service's connections broken: the original bug left a
/// pooled connection inside a transaction or out of step with the server,
/// and later requests got "job does not exist" for a live job.
#[sqlx::test]
async fn requests_abandoned_by_their_clients_leave_no_broken_connection(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    let tasks = ["t0".to_string(), "t1".to_string()];
    let epoch = keyless_job(&app, "gone", &tasks).await;

    // Eight clients, each sending requests one after another and hanging up
    // after 0.5–12 ms: some finish, the others are cut at every stage of the
    // handlers (in `begin`, in queries, in `commit`).
    let epoch_now = AtomicI64::new(epoch);
    let clients = (0..8u64).map(|client| {
        let (app, epoch_now) = (&app, &epoch_now);
        async move {
            let http = reqwest::Client::new();
            for i in 0..150u64 {
                let epoch = epoch_now.load(Ordering::Relaxed);
                let patience = Duration::from_micros(500 + (client * 150 + i) * 7919 % 11_500);
                let request = match (client + i) % 5 {
                    0 => http.post(app.url("/v1/jobs/gone/attempts")).json(&json!({})),
                    1 | 2 => http.post(app.url("/v1/jobs/gone/writes")).json(
                        &json!({"task_id": "t0", "epoch": epoch, "batch_id": format!("c{client}-{i}"),
                                "rows": events((client * 1000 + i) as i64, 20)}),
                    ),
                    3 => http.post(app.url("/v1/jobs/gone/checkpoints")).json(&json!({"epoch": epoch})),
                    _ => http.get(app.url("/v1/jobs/gone")),
                };
                if let Ok(response) = request.timeout(patience).send().await {
                    if let Ok(job) = response.json::<Value>().await {
                        if let Some(epoch) = job["epoch"].as_i64() {
                            epoch_now.fetch_max(epoch, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    });
    join_all(clients).await;

    // Every pooled connection answers correctly: the job is there, every time.
    for _ in 0..64 {
        let response = app.get("/v1/jobs/gone").await;
        let status = response.status();
        assert_eq!(status, StatusCode::OK, "{}", response.text().await.unwrap());
    }
    // And the protocol still works end to end, exactly once.
    let epoch = app.epoch("gone").await;
    let before = app.count("gone_sink").await;
    for task in &tasks {
        let response = app
            .write("gone", task, epoch, "final", events(900_000, 10))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let checkpoint = app.checkpoint("gone", epoch).await;
    for task in &tasks {
        app.ack_ok("gone", checkpoint, task, epoch, json!({})).await;
    }
    assert_eq!(app.count("gone_sink").await, before + 20);
    // No connection of the service sits in a transaction nobody owns (the
    // scheduler's own transactions are short, so the count must reach 0).
    let mut stuck: i64 = -1;
    for _ in 0..40 {
        stuck = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if stuck == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stuck, 0, "connections left inside a transaction");
    app.stop().await;
}
