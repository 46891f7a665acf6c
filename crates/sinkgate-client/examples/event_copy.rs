//! Event copy through sinkgate, exactly once, with the Rust client: the
//! same processor as `examples/python/event_copy.py`.
//!
//! Reads the partitioned log that `examples/python/make_log.py` writes and
//! appends every event to
//! `events (id bigint, "partition" int, "offset" bigint, payload text)`.
//! Tasks own partitions; on restart each resumes at the committed offsets.
//!
//! ```sh
//! python3 examples/python/make_log.py --log-dir /tmp/log
//! psql "$DATABASE_URL" -c 'CREATE TABLE events (id bigint, "partition" int, "offset" bigint, payload text)'
//! cargo run -p sinkgate-client --example event_copy -- --log-dir /tmp/log
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use serde_json::{json, Value};
use sinkgate_client::model::{JobSpec, SinkMode, SinkSpec};
use sinkgate_client::{Client, Error, Processor};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value = "events")]
    job: String,
    #[arg(long)]
    log_dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    tasks: usize,
    #[arg(long, default_value_t = 4)]
    partitions: usize,
    #[arg(long, default_value_t = 100)]
    batch_rows: usize,
    /// A checkpoint every this many batches.
    #[arg(long, default_value_t = 8)]
    checkpoint_batches: usize,
}

async fn run(args: &Args) -> Result<(), Error> {
    let client = Client::new(&[&args.url], &args.job);
    let tasks: Vec<String> = (0..args.tasks).map(|t| format!("task-{t}")).collect();
    client
        .put_job(&JobSpec {
            tasks: tasks.clone(),
            sink: Some(SinkSpec {
                table: "events".into(),
                mode: SinkMode::Append,
                key: vec![],
                on_promotion_error: Default::default(),
                partial_updates: false,
            }),
            outputs: None,
            checkpointing: None,
        })
        .await?;
    let processor = Processor::start(client, tasks.clone()).await?;
    let logs: Vec<Vec<Value>> = (0..args.partitions)
        .map(|p| {
            std::fs::read_to_string(args.log_dir.join(format!("partition-{p}.ndjson")))
                .expect("read the log")
                .lines()
                .map(|line| serde_json::from_str(line).expect("a JSON event"))
                .collect()
        })
        .collect();
    let mut offsets: Vec<usize> = (0..args.partitions)
        .map(|p| processor.resume_offset(&p.to_string()) as usize)
        .collect();
    println!("epoch {}: resuming at {offsets:?}", processor.epoch());

    let mut batches = 0;
    loop {
        for (p, log) in logs.iter().enumerate() {
            let (start, end) = (offsets[p], (offsets[p] + args.batch_rows).min(log.len()));
            if start == end {
                continue;
            }
            let rows: Vec<Value> = (start..end)
                .map(|offset| {
                    let event = &log[offset];
                    json!({"id": event["id"], "partition": p, "offset": offset, "payload": event["payload"]})
                })
                .collect();
            processor
                .write(&tasks[p % args.tasks], &format!("{p}-{start}"), &rows)
                .await?;
            offsets[p] = end;
            batches += 1;
        }
        let done = logs
            .iter()
            .enumerate()
            .all(|(p, log)| offsets[p] >= log.len());
        if done || batches >= args.checkpoint_batches {
            let barrier = |task: &str| {
                let index: usize = task.trim_start_matches("task-").parse().unwrap();
                let owned: BTreeMap<String, i64> = (0..args.partitions)
                    .filter(|p| p % args.tasks == index)
                    .map(|p| (p.to_string(), offsets[p] as i64))
                    .collect();
                (owned, None)
            };
            let checkpoint = processor.checkpoint(barrier).await?;
            println!("checkpoint {checkpoint} committed at {offsets:?}");
            batches = 0;
        }
        if done {
            return Ok(());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match run(&args).await {
        Err(Error::Zombie { .. }) => {
            eprintln!("fenced: a newer instance runs this job; stopping");
            std::process::exit(3);
        }
        other => Ok(other?),
    }
}
