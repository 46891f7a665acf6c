//! The command-line client: `sinkgate jobs|checkpoints|recovery|dead-letters|promote|tokens …`.
//!
//! An operator's view of a running service, built on `sinkgate-client` (so it
//! speaks the same API as processors, with the same types). Every command
//! prints a readable table by default and the API's own JSON with `--json`,
//! for scripts. A refusal prints the problem document's title and detail to
//! stderr and exits with status 1.

use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use comfy_table::{presets, Table};
use serde::Serialize;
use sinkgate_client::model::{
    Checkpoint, CheckpointDetails, CheckpointStatus, Job, JobSpec, OnPromotionError, Recovery,
    TokenInfo,
};
use sinkgate_client::Client;

/// Where the service is and who is asking.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Base URL of the service.
    #[arg(
        long,
        env = "SINKGATE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Bearer token: the admin token, or a processor token for its own job.
    #[arg(long, env = "SINKGATE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Every job, with its epoch and checkpoint progress.
    List,
    /// One job: sink, checkpointing settings, tasks, columns.
    Show { job: String },
    /// Create or update a job from a JSON file (`-` reads stdin): the body of
    /// `PUT /v1/jobs/{job}` plus a `job_id` field.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// Delete a job, its checkpoints and staged rows (the sink table stays).
    Delete { job: String },
}

#[derive(Subcommand, Debug)]
pub enum CheckpointsCommand {
    /// A job's checkpoints, newest first.
    List {
        job: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only this status: pending, completed, committed, aborted.
        #[arg(long, value_parser = parse_status)]
        status: Option<CheckpointStatus>,
    },
    /// One checkpoint, with every task's ack.
    Show { job: String, checkpoint: i64 },
    /// Abort a pending checkpoint, or every pending one of the job when no id
    /// is given. Staged rows stay staged for the next checkpoint.
    Abort {
        job: String,
        checkpoint: Option<i64>,
        /// Recorded as the checkpoint's failure reason.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SavepointsCommand {
    /// A job's savepoints, newest first.
    List { job: String },
    /// Keep a decided checkpoint (default: the last one) until deleted.
    Create {
        job: String,
        /// A name for it, unique in the job.
        #[arg(long)]
        label: String,
        /// The checkpoint (one of the `retained` newest decided ones).
        #[arg(long)]
        checkpoint: Option<i64>,
    },
    /// Delete a savepoint; its checkpoint is retained like any other again.
    Delete { job: String, checkpoint: i64 },
    /// Restart the job from a savepoint or retained checkpoint (a new
    /// attempt; jobs whose every output is upsert). Running processors are
    /// fenced and resume from it.
    Restore { job: String, checkpoint: i64 },
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// A job's processor tokens (never their secrets).
    List { job: String },
    /// Issue a processor token for a job; its secret is shown only now.
    Create {
        job: String,
        /// Who holds it.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a token; requests with it get 401 from now on.
    Revoke { job: String, token_id: String },
}

fn parse_status(text: &str) -> Result<CheckpointStatus, String> {
    CheckpointStatus::parse(text)
        .ok_or_else(|| format!("{text:?} is not one of pending, completed, committed, aborted"))
}

/// A client for `job` (or none in particular), failing fast: an operator
/// wants an answer, not two minutes of retries against a service that is down.
fn client(connection: &Connection, job: &str) -> Client {
    let mut client = Client::new(&[connection.url.as_str()], job);
    if let Some(token) = &connection.token {
        client = client.with_token(token);
    }
    client.retry_for = Duration::from_secs(3);
    client
}

/// Prints `value` as JSON when asked, else the table `render` makes of it.
fn output<T: Serialize>(connection: &Connection, value: &T, render: impl FnOnce(&T) -> String) {
    if connection.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("API types serialize")
        );
    } else {
        println!("{}", printable(&render(value)));
    }
}

/// Text from the service as a terminal may show it: every control
/// character but the table's own newlines is escaped, so a stored value
/// cannot move the cursor, set the title, or forge rows.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A borderless table, columns two spaces apart (`kubectl` style).
fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_header(header.to_vec());
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// A table's text without the padding at the end of each line.
fn text(table: &Table) -> String {
    let lines: Vec<String> = table
        .to_string()
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect();
    lines.join("\n")
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

fn time(at: Option<DateTime<Utc>>) -> String {
    or_dash(at.map(|at| at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()))
}

pub async fn jobs(connection: &Connection, command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::List => {
            let list = client(connection, "").list_jobs().await?;
            output(connection, &list, |list| {
                let mut rows = table(&[
                    "JOB",
                    "TASKS",
                    "SINK",
                    "MODE",
                    "EPOCH",
                    "COMMITTED",
                    "PENDING",
                ]);
                for job in &list.jobs {
                    rows.add_row(vec![
                        job.job_id.clone(),
                        job.tasks.len().to_string(),
                        job.outputs
                            .iter()
                            .map(|output| output.table.clone())
                            .collect::<Vec<_>>()
                            .join(", "),
                        job.outputs
                            .iter()
                            .map(|output| output.mode.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        job.epoch.to_string(),
                        or_dash(job.last_committed_checkpoint),
                        pending(job),
                    ]);
                }
                text(&rows)
            });
        }
        JobsCommand::Show { job } => {
            let job = client(connection, &job).get_job().await?;
            output(connection, &job, render_job);
        }
        JobsCommand::Apply { file } => {
            let (job_id, spec) = read_job_file(&file)?;
            let job = client(connection, &job_id).put_job(&spec).await?;
            output(connection, &job, |job| {
                format!("job {} applied\n\n{}", job.job_id, render_job(job))
            });
        }
        JobsCommand::Delete { job } => {
            client(connection, &job).delete_job().await?;
            if !connection.json {
                println!("job {job} deleted");
            }
        }
    }
    Ok(())
}

fn pending(job: &Job) -> String {
    if job.pending_checkpoints.is_empty() {
        "-".to_owned()
    } else {
        let ids: Vec<String> = job.pending_checkpoints.iter().map(i64::to_string).collect();
        ids.join(",")
    }
}

fn render_job(job: &Job) -> String {
    let settings = &job.checkpointing;
    let mut facts = table(&["JOB", &job.job_id]);
    for output in &job.outputs {
        let mut how = output.mode.as_str().to_owned();
        if !output.key.is_empty() {
            how.push_str(&format!(", key {}", output.key.join(", ")));
        }
        if output.partial_updates {
            how.push_str(", partial updates");
        }
        if output.on_promotion_error == OnPromotionError::DeadLetter {
            how.push_str(", dead letters");
        }
        let label = if job.sink.is_some() {
            "sink".to_owned()
        } else {
            format!("output {}", output.name)
        };
        facts.add_row(vec![label, format!("{} ({how})", output.table)]);
    }
    facts.add_row(vec!["tasks".to_owned(), job.tasks.join(", ")]);
    facts.add_row(vec!["epoch".to_owned(), job.epoch.to_string()]);
    facts.add_row(vec![
        "last decided".to_owned(),
        or_dash(job.last_decided_checkpoint),
    ]);
    facts.add_row(vec![
        "last committed".to_owned(),
        or_dash(job.last_committed_checkpoint),
    ]);
    facts.add_row(vec!["pending".to_owned(), pending(job)]);
    facts.add_row(vec![
        "checkpointing".to_owned(),
        format!(
            "interval {}, timeout {} ms, min pause {} ms, max concurrent {}, retained {}",
            settings
                .interval_ms
                .map_or_else(|| "manual".to_owned(), |ms| format!("{ms} ms")),
            settings.timeout_ms,
            settings.min_pause_ms,
            settings.max_concurrent,
            settings.retained
        ),
    ]);
    facts.add_row(vec!["created".to_owned(), time(Some(job.created_at))]);
    facts.add_row(vec!["updated".to_owned(), time(Some(job.updated_at))]);
    let mut columns = table(&["OUTPUT", "COLUMN", "TYPE", "NULLABLE", "DEFAULT"]);
    for (output, column) in job
        .outputs
        .iter()
        .flat_map(|output| output.columns.iter().map(move |column| (output, column)))
    {
        columns.add_row(vec![
            output.name.clone(),
            column.name.clone(),
            column.data_type.clone(),
            yes_no(column.nullable),
            yes_no(column.has_default),
        ]);
    }
    format!("{}\n\n{}", text(&facts), text(&columns))
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// A job file: `PUT /v1/jobs/{job}`'s body plus the job's id in `job_id`.
fn read_job_file(file: &str) -> anyhow::Result<(String, JobSpec)> {
    let text = if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
    };
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{file} is not JSON"))?;
    let Some(job_id) = value
        .as_object_mut()
        .and_then(|object| object.remove("job_id"))
    else {
        bail!(
            "{file} has no \"job_id\" field (the job's id, next to tasks, sink and checkpointing)"
        );
    };
    let Some(job_id) = job_id.as_str().map(str::to_owned) else {
        bail!("\"job_id\" in {file} is not a string");
    };
    let spec = serde_json::from_value(value).with_context(|| format!("{file} is not a job"))?;
    Ok((job_id, spec))
}

pub async fn checkpoints(
    connection: &Connection,
    command: CheckpointsCommand,
) -> anyhow::Result<()> {
    match command {
        CheckpointsCommand::List { job, limit, status } => {
            let list = client(connection, &job).checkpoints(limit, status).await?;
            output(connection, &list, |list| {
                render_checkpoints(list.checkpoints.iter())
            });
        }
        CheckpointsCommand::Show { job, checkpoint } => {
            let details = client(connection, &job).checkpoint(checkpoint).await?;
            output(connection, &details, render_details);
        }
        CheckpointsCommand::Abort {
            job,
            checkpoint,
            reason,
        } => {
            let client = client(connection, &job);
            let ids = match checkpoint {
                Some(id) => vec![id],
                None => client.get_job().await?.pending_checkpoints,
            };
            let mut aborted = Vec::with_capacity(ids.len());
            for id in ids {
                aborted.push(client.abort_checkpoint(id, &reason).await?);
            }
            output(connection, &aborted, |aborted| {
                if aborted.is_empty() {
                    format!("job {job} has no pending checkpoint")
                } else {
                    render_checkpoints(aborted.iter())
                }
            });
        }
    }
    Ok(())
}

fn render_checkpoints<'a>(checkpoints: impl Iterator<Item = &'a Checkpoint>) -> String {
    let mut rows = table(&[
        "ID",
        "EPOCH",
        "STATUS",
        "TRIGGER",
        "ACKS",
        "TRIGGERED",
        "DECIDE MS",
        "ROWS",
        "REASON",
    ]);
    for checkpoint in checkpoints {
        rows.add_row(vec![
            checkpoint.checkpoint_id.to_string(),
            checkpoint.epoch.to_string(),
            checkpoint.status.as_str().to_owned(),
            checkpoint.trigger.to_string(),
            format!("{}/{}", checkpoint.acked_tasks, checkpoint.total_tasks),
            time(Some(checkpoint.triggered_at)),
            or_dash(checkpoint.decide_ms.map(|ms| format!("{ms:.1}"))),
            checkpoint.staged_rows.to_string(),
            checkpoint
                .failure_reason
                .clone()
                .or_else(|| checkpoint.promotion_error.clone())
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    text(&rows)
}

fn render_details(details: &CheckpointDetails) -> String {
    let mut acks = table(&["TASK", "ACKED", "AT", "OFFSETS", "ROWS", "BYTES"]);
    for ack in &details.acks {
        acks.add_row(vec![
            ack.task_id.clone(),
            yes_no(ack.acked),
            time(ack.acked_at),
            or_dash(ack.offsets.as_ref().map(offsets)),
            ack.staged_rows.to_string(),
            ack.staged_bytes.to_string(),
        ]);
    }
    format!(
        "{}\n\n{}",
        render_checkpoints(std::iter::once(&details.checkpoint)),
        text(&acks)
    )
}

fn offsets(offsets: &std::collections::BTreeMap<String, i64>) -> String {
    let parts: Vec<String> = offsets
        .iter()
        .map(|(partition, offset)| format!("{partition}={offset}"))
        .collect();
    parts.join(" ")
}

pub async fn recovery(connection: &Connection, job: &str) -> anyhow::Result<()> {
    let recovery = client(connection, job).recovery().await?;
    output(connection, &recovery, render_recovery);
    Ok(())
}

fn render_recovery(recovery: &Recovery) -> String {
    let Some(checkpoint) = recovery.checkpoint_id else {
        return "no checkpoint decided yet: processors start from the beginning".to_owned();
    };
    let mut tasks = table(&["TASK", "OFFSETS", "STATE"]);
    for (task, part) in &recovery.tasks {
        tasks.add_row(vec![
            task.clone(),
            offsets(&part.offsets),
            or_dash(
                part.state
                    .as_ref()
                    .map(|state| serde_json::to_string(state).unwrap_or_default()),
            ),
        ]);
    }
    let mut partitions = table(&["PARTITION", "NEXT OFFSET"]);
    for (partition, offset) in &recovery.offsets {
        partitions.add_row(vec![partition.clone(), offset.to_string()]);
    }
    format!(
        "resume from checkpoint {checkpoint} (epoch {}, {})\n\n{}\n\n{}",
        or_dash(recovery.epoch),
        or_dash(recovery.status.map(CheckpointStatus::as_str)),
        text(&tasks),
        text(&partitions),
    )
}

pub async fn dead_letters(
    connection: &Connection,
    job: &str,
    after: i64,
    limit: u32,
) -> anyhow::Result<()> {
    let letters = client(connection, job).dead_letters(after, limit).await?;
    output(connection, &letters, |letters| {
        let mut rows = table(&["ID", "CHECKPOINT", "TASK", "SQLSTATE", "ERROR", "ROW"]);
        for letter in &letters.dead_letters {
            rows.add_row(vec![
                letter.dead_letter_id.to_string(),
                letter.checkpoint_id.to_string(),
                letter.task_id.clone(),
                or_dash(letter.sqlstate.clone()),
                letter.error.clone(),
                letter.row.to_string(),
            ]);
        }
        text(&rows)
    });
    Ok(())
}

pub async fn promote(connection: &Connection, job: &str) -> anyhow::Result<()> {
    let promoted = client(connection, job).retry_promotion().await?;
    output(connection, &promoted, |promoted| {
        format!(
            "checkpoint {} committed: {} rows promoted, {} dead-lettered",
            or_dash(promoted.checkpoint_id),
            promoted.promoted_rows,
            promoted.dead_lettered_rows
        )
    });
    Ok(())
}

pub async fn savepoints(connection: &Connection, command: SavepointsCommand) -> anyhow::Result<()> {
    match command {
        SavepointsCommand::List { job } => {
            let savepoints = client(connection, &job).savepoints().await?;
            output(connection, &savepoints, |savepoints| {
                let mut rows = table(&["CHECKPOINT", "LABEL", "CREATED"]);
                for savepoint in savepoints {
                    rows.add_row(vec![
                        savepoint.checkpoint_id.to_string(),
                        savepoint.label.clone(),
                        time(Some(savepoint.created_at)),
                    ]);
                }
                text(&rows)
            });
        }
        SavepointsCommand::Create {
            job,
            label,
            checkpoint,
        } => {
            let savepoint = client(connection, &job)
                .create_savepoint(&label, checkpoint)
                .await?;
            output(connection, &savepoint, |savepoint| {
                format!(
                    "savepoint {:?} keeps checkpoint {} of job {job}",
                    savepoint.label, savepoint.checkpoint_id
                )
            });
        }
        SavepointsCommand::Delete { job, checkpoint } => {
            client(connection, &job)
                .delete_savepoint(checkpoint)
                .await?;
            if !connection.json {
                println!("savepoint of checkpoint {checkpoint} of job {job} deleted");
            }
        }
        SavepointsCommand::Restore { job, checkpoint } => {
            let attempt = client(connection, &job)
                .start_attempt_from(checkpoint)
                .await?;
            output(connection, &attempt, |attempt| {
                format!(
                    "job {job} restarted from checkpoint {checkpoint}: epoch {}, offsets {}",
                    attempt.epoch,
                    offsets(&attempt.recovery.offsets)
                )
            });
        }
    }
    Ok(())
}

pub async fn tokens(connection: &Connection, command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::List { job } => {
            let tokens = client(connection, &job).tokens().await?;
            output(connection, &tokens, |tokens| render_tokens(tokens));
        }
        TokensCommand::Create { job, label } => {
            let issued = client(connection, &job).issue_token(&label).await?;
            output(connection, &issued, |issued| {
                format!(
                    "token {} for job {} (shown once; keep it secret):\n{}",
                    issued.token_id, issued.job_id, issued.token
                )
            });
        }
        TokensCommand::Revoke { job, token_id } => {
            client(connection, &job).revoke_token(&token_id).await?;
            if !connection.json {
                println!("token {token_id} of job {job} revoked");
            }
        }
    }
    Ok(())
}

fn render_tokens(tokens: &[TokenInfo]) -> String {
    let mut rows = table(&["TOKEN", "LABEL", "CREATED", "REVOKED"]);
    for token in tokens {
        rows.add_row(vec![
            token.token_id.clone(),
            token.label.clone(),
            time(Some(token.created_at)),
            time(token.revoked_at),
        ]);
    }
    text(&rows)
}
