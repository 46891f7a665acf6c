//! Word count through sinkgate, exactly once, with the Rust client.
//!
//! Reads the partitioned log that `examples/python/make_log.py` writes
//! (`partition-<p>.ndjson`, the line number is the offset). Each event
//! counts one occurrence of the word `p<partition>-w<offset % 13>`; tasks own
//! partitions (and so their words). Counts are upserted into
//! `word_counts (word text PRIMARY KEY, n bigint NOT NULL)`, and each task's
//! counts are its checkpoint state, saved in sinkgate's state store
//! (`Client::save_state`: only the chunks the store lacks are uploaded), so
//! a restart restores them exactly.
//!
//! ```sh
//! python3 examples/python/make_log.py --log-dir /tmp/log
//! psql "$DATABASE_URL" -c 'CREATE TABLE word_counts (word text PRIMARY KEY, n bigint NOT NULL)'
//! cargo run -p sinkgate-client --example word_count -- --log-dir /tmp/log
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use clap::Parser;
use serde_json::{json, Value};
use sinkgate_client::model::{JobSpec, SinkMode, SinkSpec, StateHandle};
use sinkgate_client::{Client, Error, Processor};

#[derive(Parser, Debug, Clone)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, default_value = "wordcount")]
    pub job: String,
    #[arg(long)]
    pub log_dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub tasks: usize,
    #[arg(long, default_value_t = 4)]
    pub partitions: usize,
    #[arg(long, default_value_t = 50)]
    pub batch_rows: usize,
    /// A checkpoint every this many batches.
    #[arg(long, default_value_t = 4)]
    pub checkpoint_batches: usize,
}

/// The word an event at `offset` of `partition` counts.
pub fn word(partition: usize, offset: usize) -> String {
    format!("p{partition}-w{}", offset % 13)
}

/// Registers the job (the sink table must exist).
pub async fn register(args: &Args) -> Result<(), Error> {
    let client = Client::new(&[&args.url], &args.job);
    let spec = JobSpec {
        tasks: (0..args.tasks).map(|t| format!("task-{t}")).collect(),
        sink: Some(SinkSpec {
            table: "word_counts".into(),
            mode: SinkMode::Upsert,
            key: vec!["word".into()],
            on_promotion_error: Default::default(),
            partial_updates: false,
        }),
        outputs: None,
        checkpointing: None,
    };
    client.put_job(&spec).await.map(|_| ())
}

/// Runs the job to the end of the log. `Err(Error::Zombie)` when a newer
/// instance took over.
pub async fn run(args: &Args) -> Result<(), Error> {
    let client = Client::new(&[&args.url], &args.job);
    let tasks: Vec<String> = (0..args.tasks).map(|t| format!("task-{t}")).collect();
    let processor = Processor::start(client.clone(), tasks.clone()).await?;
    let owner = |partition: usize| partition % args.tasks;
    let logs: Vec<Vec<String>> = (0..args.partitions)
        .map(|p| {
            std::fs::read_to_string(args.log_dir.join(format!("partition-{p}.ndjson")))
                .expect("read the log")
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .collect();

    // Resume: offsets from the recovery point, counts from each task's state.
    let offsets = Mutex::new(
        (0..args.partitions)
            .map(|p| processor.resume_offset(&p.to_string()) as usize)
            .collect::<Vec<_>>(),
    );
    let mut resumed = Vec::with_capacity(tasks.len());
    for task in &tasks {
        let counts = match processor
            .resume_state(task)
            .and_then(|state| state.stored.as_ref())
        {
            Some(stored) => serde_json::from_slice(&client.restore_state(stored).await?)
                .map_err(|error| Error::Decode(error.to_string()))?,
            None => BTreeMap::new(),
        };
        resumed.push(counts);
    }
    let counts: Mutex<Vec<BTreeMap<String, i64>>> = Mutex::new(resumed);

    let mut batches = 0;
    loop {
        for (p, log) in logs.iter().enumerate() {
            let start = offsets.lock().unwrap()[p];
            let end = (start + args.batch_rows).min(log.len());
            if start == end {
                continue;
            }
            let task = owner(p);
            let rows: Vec<Value> = {
                let mut counts = counts.lock().unwrap();
                let mut touched = BTreeMap::new();
                for offset in start..end {
                    let word = word(p, offset);
                    let n = counts[task].entry(word.clone()).or_insert(0);
                    *n += 1;
                    touched.insert(word, *n);
                }
                touched
                    .into_iter()
                    .map(|(word, n)| json!({"word": word, "n": n}))
                    .collect()
            };
            processor
                .write(&tasks[task], &format!("{p}-{start}"), &rows)
                .await?;
            offsets.lock().unwrap()[p] = end;
            batches += 1;
        }
        let done = {
            let offsets = offsets.lock().unwrap();
            (0..args.partitions).all(|p| offsets[p] >= logs[p].len())
        };
        if done || batches >= args.checkpoint_batches {
            // Each task's counts into the state store (one JSON line per
            // word, so a changed count changes the chunk around it), then
            // the checkpoint, acked with the offsets and the saved state.
            let mut saved = Vec::with_capacity(tasks.len());
            for index in 0..tasks.len() {
                let text = {
                    let counts = counts.lock().unwrap();
                    let mut text =
                        serde_json::to_vec_pretty(&counts[index]).expect("counts as JSON");
                    text.push(b'\n');
                    text
                };
                saved.push(client.save_state(&text).await?.stored);
            }
            let barrier = |task: &str| {
                let index: usize = task.trim_start_matches("task-").parse().unwrap();
                let offsets = offsets.lock().unwrap();
                let owned: BTreeMap<String, i64> = (0..args.partitions)
                    .filter(|p| owner(*p) == index)
                    .map(|p| (p.to_string(), offsets[p] as i64))
                    .collect();
                let state = StateHandle {
                    stored: Some(saved[index].clone()),
                    ..StateHandle::default()
                };
                (owned, Some(state))
            };
            processor.checkpoint(barrier).await?;
            batches = 0;
        }
        if done {
            return Ok(());
        }
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    register(&args).await?;
    match run(&args).await {
        Err(Error::Zombie { .. }) => {
            eprintln!("fenced: a newer instance runs this job; stopping");
            std::process::exit(3);
        }
        other => Ok(other?),
    }
}
