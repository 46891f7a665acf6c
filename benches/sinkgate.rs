//! The benchmark harness: sinkgate's exactly-once path next to a baseline
//! that writes to PostgreSQL directly, measured in the same run.
//!
//! ```sh
//! DATABASE_URL=$(scripts/postgres.sh) cargo bench --bench sinkgate -- --rows 1000000
//! ```
//!
//! The service runs in this process (release build) on a random port and is
//! driven over HTTP; the baselines use one connection of the same database.
//! Each scenario runs in a fresh database schema state (tables recreated).

use std::time::{Duration, Instant};

use clap::Parser;
use futures::future::try_join_all;
use serde_json::{json, Value};
use sinkgate::coordinator::Limits;
use sinkgate::ServiceOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

#[derive(Parser, Debug)]
struct Args {
    /// Rows per ingest run.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Rows per /writes request.
    #[arg(long, default_value_t = 10_000)]
    batch_rows: i64,
    /// A checkpoint every this many rows.
    #[arg(long, default_value_t = 100_000)]
    checkpoint_rows: i64,
    /// Writer tasks (concurrent requests).
    #[arg(long, default_value_t = 2)]
    tasks: usize,
    /// Scenarios to run: ingest.
    #[arg(long, value_delimiter = ',', default_value = "ingest")]
    scenarios: Vec<String>,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://sinkgate:sinkgate@127.0.0.1:5432/sinkgate"
    )]
    database_url: String,
    /// `cargo bench` passes --bench; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One measured line of the report.
struct Figure {
    scenario: String,
    variant: String,
    baseline: String,
    sinkgate_rows_per_s: f64,
    baseline_rows_per_s: f64,
}

fn row_json(id: i64) -> String {
    format!(
        "{{\"id\":{id},\"word\":\"word-{:07}\",\"n\":{}}}",
        id % 1_000_000,
        id % 97
    )
}

fn row_copy(id: i64) -> String {
    format!("{id}\tword-{:07}\t{}\n", id % 1_000_000, id % 97)
}

async fn reset_sink(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_sink; DROP TABLE IF EXISTS bench_copy_stage;
         CREATE TABLE bench_sink (id bigint PRIMARY KEY, word text NOT NULL, n bigint NOT NULL);",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Baseline: rows straight into the sink, no exactly-once. Append is one
/// `COPY`; upsert is `COPY` into a temporary table, then one
/// `INSERT … SELECT … ON CONFLICT DO UPDATE`.
async fn baseline_copy(pool: &PgPool, rows: i64, upsert: bool) -> anyhow::Result<Duration> {
    reset_sink(pool).await?;
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let target = if upsert {
        sqlx::query("CREATE TEMP TABLE bench_copy_stage (LIKE bench_sink)")
            .execute(&mut *conn)
            .await?;
        "bench_copy_stage"
    } else {
        "bench_sink"
    };
    let mut copy = conn
        .copy_in_raw(&format!("COPY {target} (id, word, n) FROM STDIN"))
        .await?;
    let mut buffer = String::with_capacity(1 << 20);
    for id in 0..rows {
        buffer.push_str(&row_copy(id));
        if buffer.len() >= 1 << 20 {
            copy.send(std::mem::take(&mut buffer).into_bytes()).await?;
        }
    }
    copy.send(buffer.into_bytes()).await?;
    copy.finish().await?;
    if upsert {
        sqlx::query(
            "INSERT INTO bench_sink SELECT DISTINCT ON (id) * FROM bench_copy_stage ORDER BY id
             ON CONFLICT (id) DO UPDATE SET word = EXCLUDED.word, n = EXCLUDED.n",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query("DROP TABLE bench_copy_stage")
            .execute(&mut *conn)
            .await?;
    }
    let elapsed = started.elapsed();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_sink")
        .fetch_one(&mut *conn)
        .await?;
    anyhow::ensure!(
        count == rows,
        "baseline wrote {count} rows, expected {rows}"
    );
    Ok(elapsed)
}

struct Service {
    base: String,
    http: reqwest::Client,
}

impl Service {
    async fn start(pool: PgPool) -> anyhow::Result<Service> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let options = ServiceOptions {
            limits: Limits::default(),
            max_json_body_bytes: 256 << 20,
            tick: Duration::from_millis(200),
        };
        tokio::spawn(sinkgate::run(
            pool,
            options,
            listener,
            std::future::pending(),
        ));
        Ok(Service {
            base,
            http: reqwest::Client::new(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status.is_success(), "{path}: {status} {text}");
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }
}

/// sinkgate: `tasks` writers stage `rows` rows in batches; every
/// `checkpoint_rows` rows a checkpoint is triggered and acked by every task,
/// which commits it. Timed until the last commit answered (rows visible).
async fn sinkgate_ingest(
    service: &Service,
    pool: &PgPool,
    args: &Args,
    upsert: bool,
    ndjson: bool,
) -> anyhow::Result<Duration> {
    reset_sink(pool).await?;
    let tasks: Vec<String> = (0..args.tasks).map(|i| format!("task-{i}")).collect();
    let sink = if upsert {
        json!({"table": "bench_sink", "mode": "upsert", "key": ["id"]})
    } else {
        json!({"table": "bench_sink", "mode": "append"})
    };
    let _ = service
        .call(reqwest::Method::DELETE, "/v1/jobs/bench", None)
        .await;
    service
        .call(
            reqwest::Method::PUT,
            "/v1/jobs/bench",
            Some(json!({"tasks": tasks, "sink": sink})),
        )
        .await?;
    let attempt = service
        .call(
            reqwest::Method::POST,
            "/v1/jobs/bench/attempts",
            Some(json!({})),
        )
        .await?;
    let epoch = attempt["epoch"].as_i64().unwrap();

    let started = Instant::now();
    let mut writing = Duration::ZERO;
    let mut committing = Duration::ZERO;
    let mut next_id = 0;
    while next_id < args.rows {
        let phase = Instant::now();
        let segment_end = (next_id + args.checkpoint_rows).min(args.rows);
        // Each task writes an equal share of the segment, concurrently.
        let share = (segment_end - next_id + args.tasks as i64 - 1) / args.tasks as i64;
        let writers = tasks.iter().enumerate().map(|(index, task)| {
            let first = next_id + index as i64 * share;
            let last = (first + share).min(segment_end);
            async move {
                let mut id = first;
                while id < last {
                    let end = (id + args.batch_rows).min(last);
                    let batch_id = format!("{task}-{id}");
                    let request = if ndjson {
                        let body: String = (id..end).map(|i| row_json(i) + "\n").collect();
                        service
                            .http
                            .post(format!("{}/v1/jobs/bench/writes", service.base))
                            .query(&[("task_id", task.as_str()), ("epoch", &epoch.to_string()), ("batch_id", &batch_id)])
                            .header("content-type", "application/x-ndjson")
                            .body(body)
                    } else {
                        let rows: String = (id..end).map(row_json).collect::<Vec<_>>().join(",");
                        let body = format!(
                            "{{\"task_id\":\"{task}\",\"epoch\":{epoch},\"batch_id\":\"{batch_id}\",\"rows\":[{rows}]}}"
                        );
                        service
                            .http
                            .post(format!("{}/v1/jobs/bench/writes", service.base))
                            .header("content-type", "application/json")
                            .body(body)
                    };
                    let response = request.send().await?;
                    anyhow::ensure!(response.status().is_success(), "write: {}", response.text().await?);
                    id = end;
                }
                anyhow::Ok(())
            }
        });
        try_join_all(writers).await?;
        writing += phase.elapsed();
        let phase = Instant::now();
        let checkpoint = service
            .call(
                reqwest::Method::POST,
                "/v1/jobs/bench/checkpoints",
                Some(json!({"epoch": epoch})),
            )
            .await?;
        let id = checkpoint["checkpoint_id"].as_i64().unwrap();
        let mut last_status = String::new();
        for task in &tasks {
            let ack = service
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/jobs/bench/checkpoints/{id}/acks"),
                    Some(json!({"task_id": task, "epoch": epoch, "offsets": {task.clone(): segment_end}})),
                )
                .await?;
            last_status = ack["status"].as_str().unwrap_or_default().to_owned();
        }
        anyhow::ensure!(
            last_status == "committed",
            "checkpoint {id} ended {last_status}"
        );
        committing += phase.elapsed();
        next_id = segment_end;
    }
    let elapsed = started.elapsed();
    let history = service
        .call(
            reqwest::Method::GET,
            "/v1/jobs/bench/checkpoints?limit=1000",
            None,
        )
        .await?;
    let promotion_ms: f64 = history["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|checkpoint| checkpoint["promotion_ms"].as_f64())
        .sum();
    eprintln!(
        "  where the time went: staging (writes) {writing:?}, checkpoints (trigger + acks) {committing:?}, of which promotion {promotion_ms:.0} ms"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_sink")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        count == args.rows,
        "sinkgate committed {count} rows, expected {}",
        args.rows
    );
    Ok(elapsed)
}

fn rate(rows: i64, elapsed: Duration) -> f64 {
    rows as f64 / elapsed.as_secs_f64()
}

async fn ingest(
    service: &Service,
    pool: &PgPool,
    args: &Args,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    for upsert in [false, true] {
        let baseline = baseline_copy(pool, args.rows, upsert).await?;
        for ndjson in [true, false] {
            let ours = sinkgate_ingest(service, pool, args, upsert, ndjson).await?;
            let variant = format!(
                "{}, {}",
                if upsert { "upsert" } else { "append" },
                if ndjson { "NDJSON" } else { "JSON" }
            );
            eprintln!("ingest {variant}: sinkgate {ours:?}, baseline {baseline:?}");
            figures.push(Figure {
                scenario: "ingest".into(),
                variant,
                baseline: if upsert {
                    "COPY + INSERT … ON CONFLICT"
                } else {
                    "COPY into the sink"
                }
                .into(),
                sinkgate_rows_per_s: rate(args.rows, ours),
                baseline_rows_per_s: rate(args.rows, baseline),
            });
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(32)
        .connect(&args.database_url)
        .await?;
    sinkgate::db::migrate(&pool).await?;
    let service = Service::start(pool.clone()).await?;
    let mut figures = Vec::new();
    for scenario in &args.scenarios {
        match scenario.as_str() {
            "ingest" => ingest(&service, &pool, &args, &mut figures).await?,
            other => anyhow::bail!("unknown scenario {other}"),
        }
    }
    let _ = service
        .call(reqwest::Method::DELETE, "/v1/jobs/bench", None)
        .await;
    sqlx::raw_sql("DROP TABLE IF EXISTS bench_sink")
        .execute(&pool)
        .await?;

    println!(
        "rows: {}, batch: {} rows, checkpoint every {} rows, {} writer tasks\n",
        args.rows, args.batch_rows, args.checkpoint_rows, args.tasks
    );
    println!("| scenario | variant | sinkgate rows/s | baseline | baseline rows/s | ratio |");
    println!("|---|---|---:|---|---:|---:|");
    for figure in &figures {
        println!(
            "| {} | {} | {:.0} | {} | {:.0} | {:.2} |",
            figure.scenario,
            figure.variant,
            figure.sinkgate_rows_per_s,
            figure.baseline,
            figure.baseline_rows_per_s,
            figure.sinkgate_rows_per_s / figure.baseline_rows_per_s
        );
    }
    Ok(())
}
