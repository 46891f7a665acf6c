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
    /// Scenarios to run: ingest, acks, commit, recovery, memory, state.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,acks,commit,recovery,memory,state"
    )]
    scenarios: Vec<String>,
    /// Sink modes of the ingest scenario: append, upsert.
    #[arg(long, value_delimiter = ',', default_value = "append,upsert")]
    ingest_modes: Vec<String>,
    /// Task counts for the acks scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    ack_tasks: Vec<usize>,
    /// Tasks per ack request in the acks scenario: 1 is one request per
    /// task; more is a batch ack per process running that many tasks.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    ack_batch: Vec<usize>,
    /// Acks per task count (at least).
    #[arg(long, default_value_t = 3000)]
    acks: usize,
    /// Checkpoint sizes (rows) for the commit-latency scenario.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    commit_sizes: Vec<i64>,
    /// Orphaned staged volumes (rows) for the recovery scenario.
    #[arg(long, value_delimiter = ',', default_value = "0,100000,1000000")]
    orphans: Vec<i64>,
    /// Size of the NDJSON body streamed in the memory scenario, in MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mib: u64,
    /// Size of the state saved and restored in the state scenario, in MiB.
    #[arg(long, default_value_t = 1024)]
    state_mib: u64,
    /// Write the report to this Markdown file (and the chart next to it).
    #[arg(long)]
    report: Option<std::path::PathBuf>,
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
            http: sinkgate::http::HttpLimits {
                max_json_body_bytes: 256 << 20,
                max_json_bytes_in_flight: 1 << 30,
                ..Default::default()
            },
            connections: sinkgate::http::serve::ConnectionLimits {
                max_connections: 4096,
                max_connections_per_address: 4096,
                ..Default::default()
            },
            auth: sinkgate::auth::AuthMode::Disabled,
            tick: Duration::from_millis(200),
            state_grace: Duration::from_secs(3600),
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

    /// Triggers a checkpoint of the `bench` job; returns its id.
    async fn trigger(&self, epoch: i64) -> anyhow::Result<i64> {
        let checkpoint = self
            .call(
                reqwest::Method::POST,
                "/v1/jobs/bench/checkpoints",
                Some(json!({"epoch": epoch})),
            )
            .await?;
        checkpoint["checkpoint_id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no checkpoint id in {checkpoint}"))
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
///
/// `overlap`: the tasks ack with `promote=background` and go on writing the
/// next checkpoint's rows while this one is promoted, as a processor that
/// does not wait for visibility does; only the last checkpoint's acks wait.
/// Otherwise every commit is awaited before the next rows are written.
async fn sinkgate_ingest(
    service: &Service,
    pool: &PgPool,
    args: &Args,
    upsert: bool,
    ndjson: bool,
    overlap: bool,
) -> anyhow::Result<Duration> {
    let tasks: Vec<String> = (0..args.tasks).map(|i| format!("task-{i}")).collect();
    let epoch = fresh_job(service, pool, &tasks, upsert).await?;

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
        let id = service.trigger(epoch).await?;
        let background = overlap && segment_end < args.rows;
        let query = if background {
            "?promote=background"
        } else {
            ""
        };
        let mut last_status = String::new();
        for task in &tasks {
            let ack = service
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/jobs/bench/checkpoints/{id}/acks{query}"),
                    Some(json!({"task_id": task, "epoch": epoch, "offsets": {task.clone(): segment_end}})),
                )
                .await?;
            last_status = ack["status"].as_str().unwrap_or_default().to_owned();
        }
        let expected = if background { "pending" } else { "committed" };
        anyhow::ensure!(
            last_status == expected,
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
        let mode = if upsert { "upsert" } else { "append" };
        if !args.ingest_modes.iter().any(|wanted| wanted == mode) {
            continue;
        }
        let baseline = baseline_copy(pool, args.rows, upsert).await?;
        // Each variant with promotion overlapping the next checkpoint's
        // staging; NDJSON also with every commit awaited, for reference.
        for (ndjson, overlap) in [(true, true), (false, true), (true, false)] {
            let ours = sinkgate_ingest(service, pool, args, upsert, ndjson, overlap).await?;
            let variant = format!(
                "{}, {}{}",
                if upsert { "upsert" } else { "append" },
                if ndjson { "NDJSON" } else { "JSON" },
                if overlap { "" } else { ", each commit awaited" }
            );
            eprintln!("ingest {variant}: sinkgate {ours:?}, baseline {baseline:?}");
            figures.push(Figure {
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

/// Percentile of sorted durations, in ms.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

/// A job `bench` with `tasks` tasks on a fresh append sink; returns the epoch.
async fn fresh_job(
    service: &Service,
    pool: &PgPool,
    tasks: &[String],
    upsert: bool,
) -> anyhow::Result<i64> {
    reset_sink(pool).await?;
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
            Some(json!({"tasks": tasks, "sink": sink, "checkpointing": {"max_concurrent": 4}})),
        )
        .await?;
    let attempt = service
        .call(
            reqwest::Method::POST,
            "/v1/jobs/bench/attempts",
            Some(json!({})),
        )
        .await?;
    Ok(attempt["epoch"].as_i64().unwrap())
}

/// Stages rows `first..first + rows` as one NDJSON batch of `task`.
async fn stage_ndjson(
    service: &Service,
    task: &str,
    epoch: i64,
    batch: &str,
    first: i64,
    rows: i64,
) -> anyhow::Result<()> {
    let chunks = (first..first + rows).step_by(10_000).map(move |start| {
        let end = (start + 10_000).min(first + rows);
        Ok::<_, std::io::Error>((start..end).map(|i| row_json(i) + "\n").collect::<String>())
    });
    let response = service
        .http
        .post(format!("{}/v1/jobs/bench/writes", service.base))
        .query(&[
            ("task_id", task),
            ("epoch", &epoch.to_string()),
            ("batch_id", batch),
        ])
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "write: {}",
        response.text().await?
    );
    Ok(())
}

/// Acks: K tasks ack checkpoints in a loop, all K acks of a checkpoint at
/// once. Baseline: the same number of single-row INSERT transactions from K
/// concurrent workers (at most 64 connections: PostgreSQL's default
/// max_connections is 100).
async fn acks(
    service: &Service,
    pool: &PgPool,
    args: &Args,
    connection_budget: ConnectionBudget,
    report: &mut String,
) -> anyhow::Result<()> {
    report.push_str(&format!("\n## Acks\n\nK tasks ack checkpoint after checkpoint (all acks of one checkpoint sent at once; the last one commits it), either one request per task or, with B tasks per request, one batch ack (`/acks/batch`) per process running B of them. Latencies are per request. Baseline: the same number of single-row `INSERT` transactions from K concurrent workers on one pool of min(K, {baseline_connections}) connections (sized from the server's `max_connections`).\n\n", baseline_connections = connection_budget.baseline));
    report.push_str("| tasks | tasks per request | acks | sinkgate acks/s | p50 ms | p99 ms | baseline tx/s | baseline p50 ms | baseline p99 ms | ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for &k in &args.ack_tasks {
        for &per_request in &args.ack_batch {
            if per_request > k || (per_request > 1 && k % per_request != 0) {
                continue;
            }
            ack_round(
                service,
                pool,
                args,
                connection_budget,
                report,
                k,
                per_request,
            )
            .await?;
        }
    }
    sqlx::raw_sql("DROP TABLE IF EXISTS bench_acks")
        .execute(pool)
        .await?;
    Ok(())
}

/// One line of the acks scenario: `k` tasks, `per_request` of them per ack
/// request.
async fn ack_round(
    service: &Service,
    pool: &PgPool,
    args: &Args,
    connection_budget: ConnectionBudget,
    report: &mut String,
    k: usize,
    per_request: usize,
) -> anyhow::Result<()> {
    {
        let tasks: Vec<String> = (0..k).map(|i| format!("task-{i}")).collect();
        let epoch = fresh_job(service, pool, &tasks, false).await?;
        let rounds = args.acks.div_ceil(k).max(3);
        let mut latencies = Vec::with_capacity(rounds * k);
        let mut busy = Duration::ZERO;
        for _ in 0..rounds {
            let id = service.trigger(epoch).await?;
            let started = Instant::now();
            let requests = tasks.chunks(per_request).map(|group| async move {
                let acks: Vec<Value> = group
                    .iter()
                    .map(|task| json!({"task_id": task, "epoch": epoch, "offsets": {task.clone(): id}}))
                    .collect();
                let (path, body) = if per_request == 1 {
                    (format!("/v1/jobs/bench/checkpoints/{id}/acks"), acks[0].clone())
                } else {
                    (format!("/v1/jobs/bench/checkpoints/{id}/acks/batch"), json!({ "acks": acks }))
                };
                let started = Instant::now();
                service.call(reqwest::Method::POST, &path, Some(body)).await?;
                anyhow::Ok(started.elapsed())
            });
            latencies.extend(try_join_all(requests).await?);
            busy += started.elapsed();
        }
        latencies.sort();
        let total = rounds * k;

        sqlx::raw_sql("DROP TABLE IF EXISTS bench_acks; CREATE TABLE bench_acks (id bigserial PRIMARY KEY, task int, at timestamptz DEFAULT now())")
            .execute(pool)
            .await?;
        let baseline_pool = PgPoolOptions::new()
            .max_connections(k.min(connection_budget.baseline) as u32)
            .connect(&args.database_url)
            .await?;
        let per_worker = total.div_ceil(k);
        let total_requests = latencies.len();
        let started = Instant::now();
        let workers = (0..k).map(|worker| {
            let pool = baseline_pool.clone();
            async move {
                let mut latencies = Vec::with_capacity(per_worker);
                for _ in 0..per_worker {
                    let started = Instant::now();
                    sqlx::query("INSERT INTO bench_acks (task) VALUES ($1)")
                        .bind(worker as i32)
                        .execute(&pool)
                        .await?;
                    latencies.push(started.elapsed());
                }
                anyhow::Ok(latencies)
            }
        });
        let mut baseline: Vec<Duration> =
            try_join_all(workers).await?.into_iter().flatten().collect();
        let baseline_elapsed = started.elapsed();
        baseline_pool.close().await;
        baseline.sort();
        let ours = total as f64 / busy.as_secs_f64();
        let theirs = baseline.len() as f64 / baseline_elapsed.as_secs_f64();
        eprintln!(
            "acks K={k} B={per_request}: {ours:.0}/s vs {theirs:.0}/s ({total_requests} requests)"
        );
        report.push_str(&format!(
            "| {k} | {per_request} | {total} | {ours:.0} | {:.1} | {:.1} | {theirs:.0} | {:.1} | {:.1} | {:.2} |\n",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            percentile(&baseline, 0.5),
            percentile(&baseline, 0.99),
            ours / theirs
        ));
    }
    Ok(())
}

/// One point of the commit-latency scenario, for the chart.
struct CommitPoint {
    rows: i64,
    commit_p50_ms: f64,
    baseline_p50_ms: f64,
    throughput: f64,
}

/// Commit latency: time from the last ack to the rows being visible, for
/// checkpoints of several sizes, against `INSERT … SELECT` of the same rows
/// from a plain table.
async fn commit_latency(
    service: &Service,
    pool: &PgPool,
    args: &Args,
    report: &mut String,
    points: &mut Vec<CommitPoint>,
) -> anyhow::Result<()> {
    report.push_str("\n## Commit latency\n\nOne task stages a checkpoint's rows (NDJSON), then acks: the ack's answer comes after promotion, so its latency is the time from the last ack to the rows being visible. Baseline: `INSERT INTO sink SELECT … FROM` a plain table holding the same rows. Throughput: rows / (staging + commit).\n\n");
    report.push_str("| rows per checkpoint | runs | commit p50 ms | commit p99 ms | baseline p50 ms | baseline p99 ms | ratio (p50) | staging + commit rows/s |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let tasks = vec!["task-0".to_owned()];
    for &size in &args.commit_sizes {
        let runs = if size <= 10_000 {
            30
        } else if size <= 100_000 {
            5
        } else {
            2
        };
        let epoch = fresh_job(service, pool, &tasks, false).await?;
        let mut commits = Vec::new();
        let mut staging = Duration::ZERO;
        for run in 0..runs {
            let started = Instant::now();
            stage_ndjson(
                service,
                "task-0",
                epoch,
                &format!("b{run}"),
                run as i64 * size,
                size,
            )
            .await?;
            staging += started.elapsed();
            let id = service.trigger(epoch).await?;
            let started = Instant::now();
            let ack = service
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/jobs/bench/checkpoints/{id}/acks"),
                    Some(json!({"task_id": "task-0", "epoch": epoch, "offsets": {"0": id}})),
                )
                .await?;
            commits.push(started.elapsed());
            anyhow::ensure!(ack["status"] == "committed", "checkpoint {id}: {ack}");
        }
        let mut baseline = Vec::new();
        sqlx::raw_sql("DROP TABLE IF EXISTS bench_source; CREATE TABLE bench_source (id bigint, word text, n bigint)")
            .execute(pool)
            .await?;
        sqlx::query("INSERT INTO bench_source SELECT i, 'word-' || lpad((i % 1000000)::text, 7, '0'), i % 97 FROM generate_series(0, $1 - 1) i")
            .bind(size)
            .execute(pool)
            .await?;
        for _ in 0..runs {
            reset_sink(pool).await?;
            let started = Instant::now();
            sqlx::query("INSERT INTO bench_sink SELECT * FROM bench_source")
                .execute(pool)
                .await?;
            baseline.push(started.elapsed());
        }
        sqlx::raw_sql("DROP TABLE bench_source")
            .execute(pool)
            .await?;
        commits.sort();
        baseline.sort();
        let commit_total: Duration = commits.iter().sum();
        let throughput = (size * runs as i64) as f64 / (staging + commit_total).as_secs_f64();
        let point = CommitPoint {
            rows: size,
            commit_p50_ms: percentile(&commits, 0.5),
            baseline_p50_ms: percentile(&baseline, 0.5),
            throughput,
        };
        eprintln!(
            "commit {size} rows: p50 {:.1} ms vs {:.1} ms",
            point.commit_p50_ms, point.baseline_p50_ms
        );
        report.push_str(&format!(
            "| {size} | {runs} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {throughput:.0} |\n",
            point.commit_p50_ms,
            percentile(&commits, 0.99),
            point.baseline_p50_ms,
            percentile(&baseline, 0.99),
            point.commit_p50_ms / point.baseline_p50_ms,
        ));
        points.push(point);
    }
    Ok(())
}

/// Recovery: `/attempts` latency with a given volume of orphaned staged rows.
async fn recovery(
    service: &Service,
    pool: &PgPool,
    args: &Args,
    report: &mut String,
) -> anyhow::Result<()> {
    report.push_str("\n## Recovery\n\n`POST /attempts` (new epoch: abort the old epoch's checkpoints and throw away its staged rows) with that many rows staged and never committed.\n\n| orphaned rows | runs | p50 ms | max ms |\n|---:|---:|---:|---:|\n");
    let tasks = vec!["task-0".to_owned()];
    for &orphans in &args.orphans {
        let mut epoch = fresh_job(service, pool, &tasks, false).await?;
        let mut latencies = Vec::new();
        for run in 0..3 {
            if orphans > 0 {
                stage_ndjson(service, "task-0", epoch, &format!("o{run}"), 0, orphans).await?;
            }
            let started = Instant::now();
            let attempt = service
                .call(
                    reqwest::Method::POST,
                    "/v1/jobs/bench/attempts",
                    Some(json!({})),
                )
                .await?;
            latencies.push(started.elapsed());
            epoch = attempt["epoch"].as_i64().unwrap();
        }
        latencies.sort();
        eprintln!(
            "recovery with {orphans} orphans: {:.1} ms",
            percentile(&latencies, 0.5)
        );
        report.push_str(&format!(
            "| {orphans} | 3 | {:.1} | {:.1} |\n",
            percentile(&latencies, 0.5),
            percentile(&latencies, 1.0)
        ));
    }
    Ok(())
}

/// Memory: peak RSS of a separate `sinkgate serve` process (the release
/// binary) while one client streams a large NDJSON body.
async fn memory(pool: &PgPool, args: &Args, report: &mut String) -> anyhow::Result<()> {
    let (mut child, service, pid) = service_process(args).await?;
    let epoch = fresh_job(&service, pool, &["task-0".to_owned()], false).await?;
    let idle = peak_rss_kib(pid)?;
    // Rows of ~1 KiB, generated on the fly.
    let padding = "x".repeat(1000);
    let total_rows = (args.memory_mib * 1024 * 1024 / 1024) as i64;
    let chunks = (0..total_rows).step_by(1000).map(move |start| {
        let mut text = String::with_capacity(1000 * 1030);
        for id in start..(start + 1000).min(total_rows) {
            text.push_str(&format!("{{\"id\":{id},\"word\":\"{padding}\",\"n\":1}}\n"));
        }
        Ok::<_, std::io::Error>(text)
    });
    let started = Instant::now();
    let response = service
        .http
        .post(format!("{}/v1/jobs/bench/writes", service.base))
        .query(&[
            ("task_id", "task-0"),
            ("epoch", &epoch.to_string()),
            ("batch_id", "big"),
        ])
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    anyhow::ensure!(status.is_success(), "memory write: {body}");
    let elapsed = started.elapsed();
    let peak = peak_rss_kib(pid)?;
    let staged_mib = body["staged_bytes"].as_f64().unwrap_or(0.0) / 1048576.0;
    let flood = json_flood(&service, pid, epoch).await?;
    service
        .call(
            reqwest::Method::POST,
            "/v1/jobs/bench/attempts",
            Some(json!({})),
        )
        .await?;
    let _ = service
        .call(reqwest::Method::DELETE, "/v1/jobs/bench", None)
        .await;
    child.kill().await?;
    eprintln!("memory: peak RSS {peak} KiB (idle {idle} KiB) while staging {staged_mib:.0} MiB in {elapsed:?}");
    report.push_str(&format!(
        "\n## Memory\n\nA separate `sinkgate serve` process (release build); one client streams an NDJSON body of {} MiB (~1 KiB rows) to `/writes`.\n\n| body | rows staged | staged COPY text | time | service peak RSS (VmHWM) | RSS before the body |\n|---:|---:|---:|---:|---:|---:|\n| {} MiB | {} | {staged_mib:.0} MiB | {:.1} s | {:.1} MiB | {:.1} MiB |\n",
        args.memory_mib,
        args.memory_mib,
        body["staged_rows"],
        elapsed.as_secs_f64(),
        peak as f64 / 1024.0,
        idle as f64 / 1024.0,
    ));
    report.push_str(&flood);
    Ok(())
}

/// A separate `sinkgate serve` process (the release binary), ready: its
/// memory is measured apart from the benchmark's.
async fn service_process(args: &Args) -> anyhow::Result<(tokio::process::Child, Service, u32)> {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sinkgate"))
        .args([
            "serve",
            "--insecure-no-auth",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("DATABASE_URL", &args.database_url)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap();
    let service = Service {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
    };
    for _ in 0..100 {
        if service
            .http
            .get(format!("{}/readyz", service.base))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, service, pid))
}

/// Forgets a process's peak RSS so far (Linux resets VmHWM); whether it could.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Writes `mib` MiB of incompressible, deterministic bytes (xorshift).
fn random_file(path: &std::path::Path, mib: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for word in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        file.write_all(&block)?;
    }
    file.flush()?;
    Ok(())
}

/// The baseline of the state scenario: the file's bytes by a plain binary
/// `COPY` into a table of 1 MiB `bytea` rows stored like the chunks (no
/// compression), then out again into a file. Answers both times.
async fn copy_file_through_postgres(
    pool: &PgPool,
    path: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<(Duration, Duration)> {
    use futures::TryStreamExt;
    use std::io::{Read, Write};
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_state_copy;
         CREATE TABLE bench_state_copy (part int, content bytea);
         ALTER TABLE bench_state_copy ALTER COLUMN content SET STORAGE EXTERNAL",
    )
    .execute(pool)
    .await?;
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw("COPY bench_state_copy (part, content) FROM STDIN (FORMAT binary)")
        .await?;
    let mut header = b"PGCOPY\n\xff\r\n\0".to_vec();
    header.extend_from_slice(&[0u8; 8]);
    copy.send(header).await?;
    let mut file = std::fs::File::open(path)?;
    let mut block = vec![0u8; 1 << 20];
    let mut part: i32 = 0;
    loop {
        let read = file.read(&mut block)?;
        if read == 0 {
            break;
        }
        let mut tuple = Vec::with_capacity(read + 16);
        tuple.extend_from_slice(&2i16.to_be_bytes());
        tuple.extend_from_slice(&4i32.to_be_bytes());
        tuple.extend_from_slice(&part.to_be_bytes());
        tuple.extend_from_slice(&(read as i32).to_be_bytes());
        tuple.extend_from_slice(&block[..read]);
        copy.send(tuple).await?;
        part += 1;
    }
    copy.send((-1i16).to_be_bytes().to_vec()).await?;
    copy.finish().await?;
    let copy_in = started.elapsed();

    let started = Instant::now();
    let mut stream = conn
        .copy_out_raw(
            "COPY (SELECT content FROM bench_state_copy ORDER BY part) TO STDOUT (FORMAT binary)",
        )
        .await?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    while let Some(chunk) = stream.try_next().await? {
        file.write_all(&chunk)?;
    }
    file.flush()?;
    drop(stream);
    let copy_out = started.elapsed();
    sqlx::raw_sql("DROP TABLE bench_state_copy")
        .execute(&mut *conn)
        .await?;
    Ok((copy_in, copy_out))
}

/// The state store: a state of `--state-mib` MiB saved through a separate
/// service process (the Rust client's `save_state_file`: content-defined
/// chunks, only the missing ones uploaded), saved again unchanged, then
/// restored to a file; against a plain binary `COPY` of the same bytes.
/// The service's peak RSS is taken per phase.
async fn state_store(pool: &PgPool, args: &Args, report: &mut String) -> anyhow::Result<()> {
    let (mut child, service, pid) = service_process(args).await?;
    fresh_job(&service, pool, &["task-0".to_owned()], true).await?;
    let dir = tempfile::tempdir()?;
    let state_path = dir.path().join("state");
    random_file(&state_path, args.state_mib)?;
    let client = sinkgate_client::Client::new(&[service.base.as_str()], "bench");
    let idle = peak_rss_kib(pid)?;

    reset_peak_rss(pid);
    let started = Instant::now();
    let saved = client.save_state_file(&state_path).await?;
    let save_time = started.elapsed();
    let save_peak = peak_rss_kib(pid)?;

    let started = Instant::now();
    let again = client.save_state_file(&state_path).await?;
    let unchanged_time = started.elapsed();
    anyhow::ensure!(
        again.uploaded_chunks == 0,
        "an unchanged state uploaded chunks"
    );

    reset_peak_rss(pid);
    let restored_path = dir.path().join("restored");
    let started = Instant::now();
    client
        .restore_state_file(&saved.stored, &restored_path)
        .await?;
    let restore_time = started.elapsed();
    let restore_peak = peak_rss_kib(pid)?;
    anyhow::ensure!(
        std::fs::metadata(&restored_path)?.len() == args.state_mib * 1024 * 1024,
        "the restored state has another size"
    );
    std::fs::remove_file(&restored_path)?;
    let _ = service
        .call(reqwest::Method::DELETE, "/v1/jobs/bench", None)
        .await;
    child.kill().await?;

    let (copy_in, copy_out) =
        copy_file_through_postgres(pool, &state_path, &dir.path().join("copied")).await?;

    let mib = args.state_mib as f64;
    let rate = |elapsed: Duration| mib / elapsed.as_secs_f64();
    eprintln!(
        "state: saved {mib} MiB in {save_time:?} ({} chunks), again in {unchanged_time:?}, restored in {restore_time:?}; COPY in {copy_in:?}, out {copy_out:?}; peak RSS {save_peak} / {restore_peak} KiB",
        saved.stored.chunks.len()
    );
    report.push_str(&format!(
        "\n## State store\n\nA state of {mib:.0} MiB (incompressible bytes) saved through a separate `sinkgate serve` process with the Rust client (`save_state_file`: content-defined chunks of about 1 MiB, {chunks} of them, each checked against its SHA-256), saved again unchanged, and restored to a file (`restore_state_file`, each chunk checked again). Baseline: the same bytes by a plain binary `COPY` into a table of 1 MiB `bytea` rows, and out again.\n\n| step | sinkgate | MiB/s | baseline | MiB/s | ratio | service peak RSS |\n|---|---:|---:|---|---:|---:|---:|\n| save | {:.1} s | {:.0} | `COPY … FROM STDIN` | {:.0} | {:.2} | {:.1} MiB |\n| save again, unchanged | {:.2} s | — | — | — | — | — |\n| restore | {:.1} s | {:.0} | `COPY … TO STDOUT` | {:.0} | {:.2} | {:.1} MiB |\n\nService RSS before: {:.1} MiB.\n",
        save_time.as_secs_f64(),
        rate(save_time),
        rate(copy_in),
        rate(save_time) / rate(copy_in),
        save_peak as f64 / 1024.0,
        unchanged_time.as_secs_f64(),
        restore_time.as_secs_f64(),
        rate(restore_time),
        rate(copy_out),
        rate(restore_time) / rate(copy_out),
        restore_peak as f64 / 1024.0,
        idle as f64 / 1024.0,
        chunks = saved.stored.chunks.len(),
    ));
    Ok(())
}

/// Peak RSS while three clients at once send a 64 MiB JSON `/writes` body
/// of empty rows (`{}`), the shape that multiplies a body's size in memory
/// when every row is parsed. Each is refused (422, too many rows); the
/// figure is what the refusals cost.
async fn json_flood(service: &Service, pid: u32, epoch: i64) -> anyhow::Result<String> {
    const CLIENTS: usize = 3;
    const BODY_MIB: usize = 64;
    // Forget the peak so far (the NDJSON upload's).
    let reset = reset_peak_rss(pid);
    let before = peak_rss_kib(pid)?;
    let started = Instant::now();
    let sends = (0..CLIENTS).map(|client| {
        let head = format!(
            r#"{{"task_id": "task-0", "epoch": {epoch}, "batch_id": "flood-{client}", "rows": ["#
        );
        let rows = (BODY_MIB * 1024 * 1024 - head.len() - 2) / 3;
        let mut body = String::with_capacity(BODY_MIB * 1024 * 1024);
        body.push_str(&head);
        body.push_str("{}");
        for _ in 1..rows {
            body.push_str(",{}");
        }
        body.push_str("]}");
        service
            .http
            .post(format!("{}/v1/jobs/bench/writes", service.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
    });
    let statuses: Vec<u16> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|response| response.map(|response| response.status().as_u16()))
        .collect::<Result<_, _>>()?;
    let elapsed = started.elapsed();
    let peak = peak_rss_kib(pid)?;
    eprintln!("memory: {CLIENTS} x {BODY_MIB} MiB JSON of empty rows: {statuses:?}, peak RSS {peak} KiB (before {before} KiB)");
    Ok(format!(
        "\n{CLIENTS} clients at once each send a {BODY_MIB} MiB JSON body of empty rows (`{{}}`): answered {statuses:?} in {:.1} s; service peak RSS {:.1} MiB (RSS before {:.1} MiB{}).\n",
        elapsed.as_secs_f64(),
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
        if reset { "" } else { "; the peak could not be reset, so it may be the NDJSON upload's" },
    ))
}

fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// One panel of the chart: title, sinkgate's series, the baseline's, and
/// whether the y axis is logarithmic.
type Panel<'a> = (&'a str, Vec<f64>, Option<Vec<f64>>, bool);

/// An SVG chart: commit latency (ms, log scale) and staging + commit
/// throughput against checkpoint size (log scale), sinkgate vs baseline.
fn chart(points: &[CommitPoint]) -> String {
    let (width, height, margin) = (720.0, 360.0, 60.0);
    let plot_w = (width - 2.0 * margin) / 2.0 - 20.0;
    let plot_h = height - 2.0 * margin;
    let log = |v: f64| v.max(1e-3).log10();
    let xs: Vec<f64> = points.iter().map(|p| log(p.rows as f64)).collect();
    let (x_min, x_max) = (
        xs.iter().cloned().fold(f64::MAX, f64::min),
        xs.iter().cloned().fold(f64::MIN, f64::max).max(xs[0] + 1.0),
    );
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let panels: [Panel; 2] = [
        (
            "commit latency, ms (log)",
            points.iter().map(|p| p.commit_p50_ms).collect(),
            Some(points.iter().map(|p| p.baseline_p50_ms).collect()),
            true,
        ),
        (
            "staging + commit, rows/s",
            points.iter().map(|p| p.throughput).collect(),
            None,
            false,
        ),
    ];
    for (panel, (title, ours, baseline, log_y)) in panels.iter().enumerate() {
        let left = margin + panel as f64 * (plot_w + 80.0);
        let all: Vec<f64> = ours
            .iter()
            .chain(baseline.iter().flatten())
            .map(|v| if *log_y { log(*v) } else { *v })
            .collect();
        let y_min = if *log_y {
            all.iter().cloned().fold(f64::MAX, f64::min).floor()
        } else {
            0.0
        };
        let y_max = all.iter().cloned().fold(f64::MIN, f64::max) * if *log_y { 1.0 } else { 1.1 };
        let y_max = if *log_y {
            y_max.ceil().max(y_min + 1.0)
        } else {
            y_max
        };
        let px = |x: f64| left + (x - x_min) / (x_max - x_min) * plot_w;
        let py = |y: f64| margin + plot_h - (y - y_min) / (y_max - y_min) * plot_h;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{title}</text>\n<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{margin}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
            left, margin - 15.0, margin + plot_h, left + plot_w, margin + plot_h, margin + plot_h
        ));
        for (point, x) in points.iter().zip(&xs) {
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{} rows</text>\n",
                px(*x),
                margin + plot_h + 15.0,
                point.rows
            ));
        }
        for tick in 0..=4 {
            let y = y_min + (y_max - y_min) * tick as f64 / 4.0;
            let label = if *log_y {
                format!("{:.3}", 10f64.powf(y))
            } else {
                format!("{y:.0}")
            };
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>\n",
                left - 4.0,
                py(y) + 4.0
            ));
        }
        let series: Vec<(&Vec<f64>, &str, &str)> = std::iter::once((ours, "#d62728", "sinkgate"))
            .chain(baseline.as_ref().map(|b| (b, "#1f77b4", "INSERT … SELECT")))
            .collect();
        for (index, (values, color, name)) in series.into_iter().enumerate() {
            let path: Vec<String> = xs
                .iter()
                .zip(values)
                .map(|(x, v)| format!("{:.1},{:.1}", px(*x), py(if *log_y { log(*v) } else { *v })))
                .collect();
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                path.join(" ")
            ));
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>\n",
                left + 10.0,
                margin + 12.0 + index as f64 * 14.0
            ));
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines().next().map(|line| {
                line.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {:.0} GiB RAM",
        memory as f64 / 1048576.0
    )
}

/// How many connections the harness takes: the service's pool and the
/// acks baseline's, sized from what the server has free (its
/// `max_connections`, less the superuser reserve and the sessions already
/// open), so the run does not exhaust the server.
#[derive(Debug, Clone, Copy)]
struct ConnectionBudget {
    service: usize,
    baseline: usize,
}

impl ConnectionBudget {
    /// What the run needs at least: a service pool of 8 and a baseline of 8.
    const MINIMUM: usize = 16;

    async fn measure(database_url: &str) -> anyhow::Result<ConnectionBudget> {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(database_url).await?;
        let free: i64 = sqlx::query_scalar(
            "SELECT current_setting('max_connections')::int
                    - current_setting('superuser_reserved_connections')::int
                    - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
        )
        .fetch_one(&mut conn)
        .await?;
        // Two left for the rest of the harness and whoever else connects.
        let free = (free.max(0) as usize).saturating_sub(2);
        anyhow::ensure!(
            free >= Self::MINIMUM,
            "the server has {free} connections free; the benchmark needs at least {} (raise max_connections or close other sessions)",
            Self::MINIMUM
        );
        let service = (free / 3).clamp(8, 32);
        let baseline = (free - service).min(64);
        eprintln!(
            "connections: {free} free; service pool {service}, acks baseline up to {baseline}"
        );
        Ok(ConnectionBudget { service, baseline })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let connection_budget = ConnectionBudget::measure(&args.database_url).await?;
    let pool = PgPoolOptions::new()
        .max_connections(connection_budget.service as u32)
        .connect(&args.database_url)
        .await?;
    sinkgate::db::migrate(&pool).await?;
    let service = Service::start(pool.clone()).await?;
    let postgres: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await?;
    let command: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();

    let mut figures = Vec::new();
    let mut sections = String::new();
    let mut points = Vec::new();
    for scenario in &args.scenarios {
        match scenario.as_str() {
            "ingest" => ingest(&service, &pool, &args, &mut figures).await?,
            "acks" => acks(&service, &pool, &args, connection_budget, &mut sections).await?,
            "commit" => commit_latency(&service, &pool, &args, &mut sections, &mut points).await?,
            "recovery" => recovery(&service, &pool, &args, &mut sections).await?,
            "memory" => memory(&pool, &args, &mut sections).await?,
            "state" => state_store(&pool, &args, &mut sections).await?,
            other => anyhow::bail!("unknown scenario {other}"),
        }
    }
    let _ = service
        .call(reqwest::Method::DELETE, "/v1/jobs/bench", None)
        .await;
    sqlx::raw_sql("DROP TABLE IF EXISTS bench_sink")
        .execute(&pool)
        .await?;

    let mut report = format!(
        "# Benchmarks\n\nMachine: {}. {}.\nDate: {} (UTC).\nCommand: `DATABASE_URL=$(scripts/postgres.sh) cargo bench --bench sinkgate -- {}`\n\nThe service runs in the benchmark process (release build) and is driven over HTTP on loopback; client, service and PostgreSQL share the machine. Baselines run in the same run against the same database. What these figures say against the targets, and where the time goes: [bench/README.md](bench/README.md).\n",
        machine(),
        postgres.split(" on ").next().unwrap_or(&postgres),
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        command.join(" "),
    );
    if !figures.is_empty() {
        report.push_str(&format!(
            "\n## Ingest\n\n{} rows (~40 bytes) through `/writes` in batches of {} rows from {} concurrent tasks, a checkpoint every {} rows, timed until the last checkpoint is committed and visible. Baseline: the same rows straight into the same table (no exactly-once).\n\n| variant | sinkgate rows/s | baseline | baseline rows/s | ratio |\n|---|---:|---|---:|---:|\n",
            args.rows, args.batch_rows, args.tasks, args.checkpoint_rows
        ));
        for figure in &figures {
            report.push_str(&format!(
                "| {} | {:.0} | {} | {:.0} | {:.2} |\n",
                figure.variant,
                figure.sinkgate_rows_per_s,
                figure.baseline,
                figure.baseline_rows_per_s,
                figure.sinkgate_rows_per_s / figure.baseline_rows_per_s
            ));
        }
    }
    report.push_str(&sections);
    if points.len() >= 2 {
        report.push_str(
            "\n![commit latency and throughput against checkpoint size](bench/commit.svg)\n",
        );
    }
    println!("{report}");
    if let Some(path) = &args.report {
        std::fs::write(path, &report)?;
        if points.len() >= 2 {
            let chart_path = path
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("bench/commit.svg");
            std::fs::create_dir_all(chart_path.parent().unwrap())?;
            std::fs::write(chart_path, chart(&points))?;
        }
    }
    Ok(())
}
