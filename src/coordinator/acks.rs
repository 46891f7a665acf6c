//! Acks and declines, and the decision that the last ack makes.

use std::collections::BTreeMap;

use sqlx::types::Json;
use sqlx::PgConnection;

use super::checkpoints::{abort_timed_out, get};
use super::commit::{commit_decided, CommitOutcome};
use super::{load_job, lock_task, require_name, JobLock, JobRow, Limits};
use crate::error::{Error, Result};
use crate::metrics::AbortReason;
use crate::model::{
    AbortRequest, AckRequest, AckResult, Checkpoint, CheckpointStatus, DeclineRequest, StateHandle,
};

/// Whether a JSON value has the NUL character in a string or a key.
fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields
            .iter()
            .any(|(key, value)| key.contains('\0') || holds_nul(value)),
        _ => false,
    }
}

pub fn validate_ack(request: &AckRequest, limits: &Limits) -> Result<()> {
    require_name("task_id", &request.task_id, 200)?;
    for (partition, offset) in &request.offsets {
        require_name("offsets", partition, 200)?;
        if *offset < 0 {
            return Err(Error::validation(
                format!("offsets.{partition}"),
                format!("offset {offset} of partition {partition:?} is negative"),
            ));
        }
    }
    if let Some(state) = &request.state {
        if let Some(inline) = &state.inline {
            let text = serde_json::to_string(inline).unwrap_or_default();
            // PostgreSQL's jsonb cannot hold the NUL character.
            if holds_nul(inline) {
                return Err(Error::validation(
                    "state.inline",
                    "inline state contains the NUL character (\\u0000), which PostgreSQL's jsonb cannot store",
                ));
            }
            let size = text.len();
            if size > limits.max_inline_state_bytes {
                return Err(Error::validation(
                    "state.inline",
                    format!(
                        "inline state is {size} bytes; the limit is {} (store larger state externally)",
                        limits.max_inline_state_bytes
                    ),
                ));
            }
        }
        if let Some(external) = &state.external {
            require_name("state.external.uri", &external.uri, 4096)?;
            require_name("state.external.checksum", &external.checksum, 512)?;
        }
        for (index, object) in state.objects.iter().enumerate() {
            require_name(
                &format!("state.objects[{index}].uri"),
                &object.uri,
                super::state::MAX_URI_BYTES,
            )?;
            require_name(
                &format!("state.objects[{index}].checksum"),
                &object.checksum,
                512,
            )?;
        }
    }
    Ok(())
}

/// What the database holds that decides an ack's fate, loaded (and
/// locked) in one round trip by [`record_ack`].
struct AckContext {
    epoch: i64,
    epoch_timeline: i64,
    server_timeline: i64,
    last_acked_id: Option<i64>,
    status: CheckpointStatus,
    failure_reason: Option<String>,
    task_count: i32,
    /// Pending but past its timeout (the scheduler has not marked it yet).
    expired: bool,
    /// The committed offset per partition (from earlier epochs too);
    /// `[partition, offset]` pairs. Offsets acked in this epoch are checked
    /// by the `ack_floors` upsert that records the ack.
    floors: Json<Vec<(String, i64)>>,
}

impl AckContext {
    /// A retry, or an ack after the checkpoint's fate: answered from this
    /// task's stored ack of it, read in a statement after the locks (a
    /// copy of this ack racing it may have committed while this one
    /// waited for the task row, and the locking statement would not see it).
    fn late_or_again(&self, checkpoint_id: i64) -> bool {
        self.last_acked_id >= Some(checkpoint_id)
            || self.status != CheckpointStatus::Pending
            || self.expired
    }
}

/// This task's stored ack of the checkpoint.
struct StoredAck {
    epoch: i64,
    offsets: Json<BTreeMap<String, i64>>,
    state: Option<Json<StateHandle>>,
}

/// What to do with an ack that [`admit`] lets in.
#[derive(Debug, PartialEq, Eq)]
enum Admitted {
    /// Record it.
    New,
    /// The same ack again (its answer was lost): answer as before.
    Again,
}

/// Decides an ack from what is stored, without I/O: admitted as new or as a
/// retry, or refused with the reason the processor can act on. The epoch is
/// checked before.
fn admit(
    context: &AckContext,
    previous: Option<&StoredAck>,
    checkpoint_id: i64,
    request: &AckRequest,
) -> Result<Admitted> {
    let status = context.status;
    let aborted = || Error::CheckpointAborted {
        checkpoint_id,
        reason: if context.expired {
            "timeout".into()
        } else {
            context.failure_reason.clone().unwrap_or_default()
        },
    };
    if context.late_or_again(checkpoint_id) {
        // A retry of an ack whose answer was lost, or a late ack. A retry
        // is answered by what happened to the checkpoint, never by the
        // clock: if every task acked in time it is (or will be) decided.
        let same = |previous: &StoredAck| {
            previous.epoch == request.epoch
                && previous.offsets.0 == request.offsets
                && previous.state.as_ref().map(|state| &state.0) == request.state.as_ref()
        };
        return match previous {
            Some(previous) if same(previous) && status == CheckpointStatus::Aborted => {
                Err(aborted())
            }
            Some(previous) if same(previous) => Ok(Admitted::Again),
            Some(_) => Err(Error::conflict(format!(
                "task {:?} already acked checkpoint {checkpoint_id} with different offsets or state",
                request.task_id
            ))),
            None if status == CheckpointStatus::Aborted || context.expired => Err(aborted()),
            None if context.last_acked_id > Some(checkpoint_id) => Err(Error::conflict(format!(
                "task {:?} already acked checkpoint {}; acks must go to increasing checkpoints",
                request.task_id,
                context.last_acked_id.unwrap_or_default()
            ))),
            None => Err(Error::conflict(format!(
                "checkpoint {checkpoint_id} is already {status}"
            ))),
        };
    }
    for (partition, floor) in &context.floors.0 {
        // Floors are loaded for the request's partitions only.
        let Some(&offset) = request.offsets.get(partition) else {
            continue;
        };
        if offset < *floor {
            return Err(Error::OffsetRegression {
                partition: partition.clone(),
                offset,
                committed: *floor,
            });
        }
    }
    Ok(Admitted::New)
}

/// `POST /checkpoints/{id}/acks`, first transaction: records the ack and
/// answers with the checkpoint as this transaction sees it.
///
/// Acks of different tasks do not wait for each other: the job row is only
/// key-share-locked (against `/attempts`), the task row locked (against the
/// task's own writes), the checkpoint row share-locked (against an abort or
/// decision changing its status), and partition claims are a unique key.
/// Whoever commits the last ack sees the full set afterwards and decides in
/// a second, short transaction ([`settle`]); if the service dies
/// in between, the scheduler, a retried ack, or the next `/attempts` decides.
pub async fn record_ack(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
    request: &AckRequest,
    limits: &Limits,
) -> Result<RecordedAck> {
    validate_ack(request, limits)?;
    // Job, task and checkpoint, locked in that order, and the offset
    // floors, in one round trip.
    let partitions: Vec<String> = request.offsets.keys().cloned().collect();
    let context = sqlx::query_as!(
        AckContext,
        r#"SELECT j.epoch, j.epoch_timeline, sinkgate_timeline() AS "server_timeline!", t.last_acked_id, c.status AS "status: CheckpointStatus",
                c.failure_reason, c.task_count,
                c.status = 'pending'
                  AND c.triggered_at + make_interval(secs => j.timeout_ms::double precision / 1000) < now()
                  AS "expired!",
                (SELECT coalesce(jsonb_agg(jsonb_build_array(f.source_partition, f.next_offset)), '[]')
                 FROM committed_offsets f
                 WHERE f.job_id = $1 AND f.source_partition = ANY ($4)) AS "floors!: Json<Vec<(String, i64)>>"
         FROM jobs j
         JOIN tasks t ON t.job_id = j.job_id AND t.task_id = $3
         JOIN checkpoints c ON c.job_id = j.job_id AND c.checkpoint_id = $2
         WHERE j.job_id = $1
         FOR KEY SHARE OF j FOR UPDATE OF t FOR SHARE OF c"#,
        job_id,
        checkpoint_id,
        request.task_id,
        &partitions
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(context) = context else {
        // Say precisely what is missing (and fence a zombie first).
        let job = load_job(&mut *conn, job_id, JobLock::None).await?;
        job.check_epoch(request.epoch)?;
        lock_task(&mut *conn, job_id, &request.task_id, false).await?;
        return Err(Error::not_found(format!(
            "checkpoint {checkpoint_id} of job {job_id:?} does not exist"
        )));
    };
    let timelines = super::Timelines {
        epoch: context.epoch_timeline,
        server: context.server_timeline,
    };
    super::check_epoch(job_id, context.epoch, timelines, request.epoch)?;
    let answer = |acked_tasks| AckResult {
        checkpoint_id,
        status: context.status,
        acked_tasks,
        total_tasks: context.task_count,
    };
    let previous: Option<StoredAck> = if context.late_or_again(checkpoint_id) {
        sqlx::query_as!(
            StoredAck,
            r#"SELECT epoch, offsets AS "offsets: Json<BTreeMap<String, i64>>",
                      state AS "state: Json<StateHandle>"
               FROM acks WHERE job_id = $1 AND checkpoint_id = $2 AND task_id = $3"#,
            job_id,
            checkpoint_id,
            request.task_id
        )
        .fetch_optional(&mut *conn)
        .await?
    } else {
        None
    };
    if admit(&context, previous.as_ref(), checkpoint_id, request)? == Admitted::Again {
        return Ok(RecordedAck {
            result: answer(count_acks(&mut *conn, job_id, checkpoint_id).await?),
            expired: context.expired,
        });
    }

    // Claims, floors and the ack, in one statement (see `insert_acks`).
    let Inserted {
        claimed,
        regression,
    } = insert_acks(&mut *conn, job_id, checkpoint_id, request.epoch, &[request]).await?;
    if let Some((partition, floor)) = regression {
        // Rolled back by the caller.
        return Err(Error::OffsetRegression {
            offset: request.offsets[&partition],
            partition,
            committed: floor,
        });
    }
    if (claimed as usize) < partitions.len() {
        // Rolled back by the caller; say who holds the partition.
        let holder = sqlx::query!(
            "SELECT source_partition, task_id FROM ack_partitions
             WHERE job_id = $1 AND checkpoint_id = $2 AND source_partition = ANY ($3) AND task_id <> $4
             ORDER BY source_partition LIMIT 1",
            job_id,
            checkpoint_id,
            &partitions,
            request.task_id
        )
        .fetch_one(&mut *conn)
        .await?;
        let (partition, task) = (holder.source_partition, holder.task_id);
        return Err(Error::validation(
            format!("offsets.{partition}"),
            format!("partition {partition:?} is already claimed by task {task:?} in checkpoint {checkpoint_id}"),
        ));
    }
    if let Some(state) = &request.state {
        super::state::record_references(&mut *conn, job_id, checkpoint_id, &request.task_id, state)
            .await?;
    }
    crate::metrics::ack_recorded(job_id);
    // Acked tasks as far as this transaction sees; the caller counts again
    // after its commit.
    Ok(RecordedAck {
        result: answer(0),
        expired: false,
    })
}

/// What [`record_new_acks`] did.
pub enum NewAcks {
    /// Every ack is recorded.
    Recorded(AckResult),
    /// Not the common case; nothing was written (locks may be held).
    Unsuited,
    /// A regression or a claimed partition: something was written, and the
    /// transaction must be rolled back before anything else.
    Refused,
}

/// The common case of one or several acks, in two statements whatever
/// their number: every ack valid ([`validate_ack`], checked before), every
/// task known, every ack of the job's current epoch, new, and in order (the
/// checkpoint pending and in time, no task past it, no offset below a
/// committed one, no partition twice, no stored state or objects to
/// reference). `requests` are in task order (the order their task rows are
/// locked). Anything else is left to [`record_ack`], one ack at a time,
/// which gives each its exact answer.
pub async fn record_new_acks(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
    requests: &[&AckRequest],
) -> Result<NewAcks> {
    let references = |request: &&AckRequest| {
        request
            .state
            .as_ref()
            .is_some_and(|state| state.stored.is_some() || !state.objects.is_empty())
    };
    if requests.iter().any(references) {
        return Ok(NewAcks::Unsuited);
    }
    let tasks: Vec<String> = requests.iter().map(|r| r.task_id.clone()).collect();
    let mut partitions: Vec<String> = Vec::new();
    for request in requests {
        partitions.extend(request.offsets.keys().cloned());
    }
    let mut distinct = partitions.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < partitions.len() {
        return Ok(NewAcks::Unsuited);
    }
    // Job, tasks (in task order) and checkpoint locked as `record_ack`
    // locks them, with the offset floors, in one round trip.
    let rows = sqlx::query!(
        r#"SELECT j.epoch, j.epoch_timeline, sinkgate_timeline() AS "server_timeline!", t.task_id,
                t.last_acked_id, c.status AS "status: CheckpointStatus", c.task_count,
                c.status = 'pending'
                  AND c.triggered_at + make_interval(secs => j.timeout_ms::double precision / 1000) < now()
                  AS "expired!",
                (SELECT coalesce(jsonb_agg(jsonb_build_array(f.source_partition, f.next_offset)), '[]')
                 FROM committed_offsets f
                 WHERE f.job_id = $1 AND f.source_partition = ANY ($4)) AS "floors!: Json<Vec<(String, i64)>>"
         FROM jobs j
         JOIN tasks t ON t.job_id = j.job_id AND t.task_id = ANY ($3)
         JOIN checkpoints c ON c.job_id = j.job_id AND c.checkpoint_id = $2
         WHERE j.job_id = $1
         ORDER BY t.task_id COLLATE "C"
         FOR KEY SHARE OF j FOR UPDATE OF t FOR SHARE OF c"#,
        job_id,
        checkpoint_id,
        &tasks,
        &partitions
    )
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != requests.len() {
        return Ok(NewAcks::Unsuited);
    }
    let in_order = rows.iter().zip(requests).all(|(row, request)| {
        row.task_id == request.task_id
            && row.epoch != 0
            && row.epoch == request.epoch
            && row.epoch_timeline == row.server_timeline
            && row.status == CheckpointStatus::Pending
            && !row.expired
            && row.last_acked_id.is_none_or(|last| last < checkpoint_id)
    });
    let floors_hold = rows.first().is_some_and(|row| {
        row.floors.0.iter().all(|(partition, floor)| {
            requests
                .iter()
                .filter_map(|request| request.offsets.get(partition))
                .all(|offset| offset >= floor)
        })
    });
    if !in_order || !floors_hold {
        return Ok(NewAcks::Unsuited);
    }
    let epoch = rows[0].epoch;
    let total_tasks = rows[0].task_count;
    let inserted = insert_acks(&mut *conn, job_id, checkpoint_id, epoch, requests).await?;
    if inserted.regression.is_some() || (inserted.claimed as usize) < partitions.len() {
        return Ok(NewAcks::Refused);
    }
    for _ in requests {
        crate::metrics::ack_recorded(job_id);
    }
    Ok(NewAcks::Recorded(AckResult {
        checkpoint_id,
        status: CheckpointStatus::Pending,
        acked_tasks: 0,
        total_tasks,
    }))
}

/// What [`insert_acks`] did.
struct Inserted {
    /// Partitions claimed (fewer than acked: another task holds one).
    claimed: i64,
    /// The first partition whose floor, set in this epoch, is above its
    /// acked offset, with that floor.
    regression: Option<(String, i64)>,
}

/// The acks' one recording statement (one ack, or many at once). Claims
/// the partitions (one task per partition per checkpoint: a unique key, so
/// concurrent acks cannot both claim one), raises each partition's floor
/// for this epoch (in partition order; the row lock of the upsert orders
/// concurrent acks of one partition, and `previous_offset` says what the
/// floor was), and, only if every claim held, records the acks and moves
/// their tasks. A regression or a missing claim is in the answer; the
/// caller then rolls it all back.
async fn insert_acks(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
    epoch: i64,
    requests: &[&AckRequest],
) -> Result<Inserted> {
    let tasks: Vec<&str> = requests.iter().map(|r| r.task_id.as_str()).collect();
    let offsets: Vec<Json<&BTreeMap<String, i64>>> = requests
        .iter()
        .map(|request| Json(&request.offsets))
        .collect();
    let states: Vec<Option<Json<&StateHandle>>> = requests
        .iter()
        .map(|request| request.state.as_ref().map(Json))
        .collect();
    let inserted = sqlx::query!(
        r#"WITH input AS (
             SELECT * FROM unnest($3::text[], $5::jsonb[], $6::jsonb[]) AS i(task_id, offsets, state)
         ), offsets AS (
             SELECT i.task_id, o.key AS partition, o.value::bigint AS next_offset
             FROM input i, jsonb_each_text(i.offsets) AS o
         ), floors AS (
             INSERT INTO ack_floors AS f (job_id, source_partition, epoch, next_offset)
             SELECT $1, partition, $4, next_offset FROM offsets ORDER BY partition
             ON CONFLICT (job_id, source_partition) DO UPDATE SET
                 previous_offset = CASE WHEN f.epoch = EXCLUDED.epoch THEN f.next_offset END,
                 next_offset = CASE WHEN f.epoch = EXCLUDED.epoch
                                    THEN greatest(f.next_offset, EXCLUDED.next_offset)
                                    ELSE EXCLUDED.next_offset END,
                 epoch = EXCLUDED.epoch
             RETURNING source_partition, previous_offset
         ), claimed AS (
             INSERT INTO ack_partitions (job_id, checkpoint_id, source_partition, task_id)
             SELECT $1, $2, partition, task_id FROM offsets
             ON CONFLICT DO NOTHING RETURNING 1
         ), complete AS (
             SELECT count(*) = (SELECT count(*) FROM offsets) AS ok FROM claimed
         ), recorded AS (
             INSERT INTO acks (job_id, checkpoint_id, task_id, epoch, offsets, state)
             SELECT $1, $2, i.task_id, $4, i.offsets, i.state FROM input i, complete WHERE ok
         ), moved AS (
             UPDATE tasks SET last_acked_id = $2
             WHERE job_id = $1 AND task_id = ANY ($3) AND (SELECT ok FROM complete)
         )
         SELECT (SELECT count(*) FROM claimed) AS "claimed!",
                (SELECT jsonb_build_array(f.source_partition, f.previous_offset)
                 FROM floors f JOIN offsets o ON o.partition = f.source_partition
                 WHERE f.previous_offset > o.next_offset
                 ORDER BY f.source_partition LIMIT 1) AS "regression: Json<(String, i64)>""#,
        job_id,
        checkpoint_id,
        &tasks as _,
        epoch,
        &offsets as _,
        &states as _
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Inserted {
        claimed: inserted.claimed,
        regression: inserted.regression.map(|Json(found)| found),
    })
}

/// What [`record_ack`] found.
pub struct RecordedAck {
    pub result: AckResult,
    /// A retry of an ack recorded earlier, for a checkpoint that is still
    /// pending past its deadline: [`settle`] says what became of it.
    pub expired: bool,
}

pub async fn count_acks(conn: &mut PgConnection, job_id: &str, checkpoint_id: i64) -> Result<i32> {
    let count: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM acks WHERE job_id = $1 AND checkpoint_id = $2"#,
        job_id,
        checkpoint_id
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(count as i32)
}

/// Second transaction of the ack that completed the set (and of the
/// scheduler's sweep): under the job row lock, decides the checkpoint if
/// every task has acked and it is still pending, and commits it; aborts it
/// if it is pending past its deadline with acks missing. Idempotent: a
/// checkpoint already decided or aborted is reported as it is.
///
/// The checkpoint row is locked before the acks are counted, in a
/// statement of its own: its snapshot then holds every ack that had the row
/// share-locked, so a complete checkpoint is never taken for an incomplete one.
pub async fn settle(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
) -> Result<AckResult> {
    let mut job = load_job(&mut *conn, job_id, JobLock::NoKeyUpdate).await?;
    // The checkpoint and every older pending one, locked in id order (as
    // the timeout sweep locks them): a decision may complete the older
    // ones too (see `decide`).
    let locked = sqlx::query!(
        r#"SELECT c.checkpoint_id, c.status AS "status: CheckpointStatus", c.task_count,
                c.triggered_at + make_interval(secs => $3::double precision / 1000) < now() AS "expired!"
         FROM checkpoints c
         WHERE c.job_id = $1 AND (c.checkpoint_id = $2 OR (c.status = 'pending' AND c.checkpoint_id < $2))
         ORDER BY c.checkpoint_id FOR UPDATE"#,
        job_id,
        checkpoint_id,
        job.timeout_ms as f64
    )
    .fetch_all(&mut *conn)
    .await?;
    let (mut status, task_count, expired) = locked
        .into_iter()
        .find(|row| row.checkpoint_id == checkpoint_id)
        .map(|row| (row.status, row.task_count, row.expired))
        .ok_or_else(|| {
            Error::not_found(format!(
                "checkpoint {checkpoint_id} of job {job_id:?} does not exist"
            ))
        })?;
    let acked = count_acks(&mut *conn, job_id, checkpoint_id).await?;
    if status == CheckpointStatus::Pending && acked >= task_count {
        // Every ack was accepted before the deadline, so a complete
        // checkpoint is decided even if its decision comes late.
        decide(&mut *conn, &mut job, checkpoint_id).await?;
        status = match commit_decided(&mut *conn, &mut job).await? {
            CommitOutcome::Committed { .. } => CheckpointStatus::Committed,
            _ => CheckpointStatus::Completed,
        };
    } else if status == CheckpointStatus::Pending
        && expired
        && abort_timed_out(&mut *conn, &job)
            .await?
            .contains(&checkpoint_id)
    {
        status = CheckpointStatus::Aborted;
    }
    Ok(AckResult {
        checkpoint_id,
        status,
        acked_tasks: acked,
        total_tasks: task_count,
    })
}

/// Decides the newest pending checkpoint of the job whose acks are all in
/// (a decision lost to a crash between an ack's two transactions); the
/// decision subsumes the older pending ones.
pub async fn decide_newest_complete(conn: &mut PgConnection, job_id: &str) -> Result<()> {
    let complete: Option<i64> = sqlx::query_scalar!("SELECT c.checkpoint_id FROM checkpoints c
         WHERE c.job_id = $1 AND c.status = 'pending'
           AND (SELECT count(*) FROM acks a WHERE a.job_id = c.job_id AND a.checkpoint_id = c.checkpoint_id) >= c.task_count
         ORDER BY c.checkpoint_id DESC LIMIT 1", job_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(checkpoint_id) = complete {
        settle(&mut *conn, job_id, checkpoint_id).await?;
    }
    Ok(())
}

/// The checkpoint's status and task count, with its row locked for an update.
async fn lock_checkpoint(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
) -> Result<(CheckpointStatus, i32)> {
    sqlx::query!(
        r#"SELECT status AS "status: CheckpointStatus", task_count
           FROM checkpoints WHERE job_id = $1 AND checkpoint_id = $2 FOR UPDATE"#,
        job_id,
        checkpoint_id
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| (row.status, row.task_count))
    .ok_or_else(|| {
        Error::not_found(format!(
            "checkpoint {checkpoint_id} of job {job_id:?} does not exist"
        ))
    })
}

/// Makes checkpoint `checkpoint_id` decided: every task acked it. Older
/// pending checkpoints are subsumed; its offsets become the recovery point.
/// One statement (it runs on every checkpoint's critical path).
async fn decide(conn: &mut PgConnection, job: &mut JobRow, checkpoint_id: i64) -> Result<()> {
    // Older pending checkpoints were locked by the caller (`settle`) before
    // their acks are counted here: one whose acks are all in is decided
    // with this one, never reported aborted.
    let decided = sqlx::query!(
        r#"WITH merged AS (
             -- The recovery point's offsets after this decision (what
             -- `offsets` below makes of committed_offsets), kept with the
             -- checkpoint for a restart from it.
             SELECT jsonb_object_agg(p, o) AS snapshot FROM (
                 SELECT p, max(o) AS o FROM (
                     SELECT source_partition AS p, next_offset AS o FROM committed_offsets WHERE job_id = $1
                     UNION ALL
                     SELECT k.key, k.value::bigint FROM acks a, jsonb_each_text(a.offsets) AS k
                     WHERE a.job_id = $1 AND a.epoch = $3 AND a.checkpoint_id > $4 AND a.checkpoint_id <= $2
                 ) every_offset GROUP BY p
             ) per_partition
         ), decided AS (
             UPDATE checkpoints c SET status = 'completed', decided_at = clock_timestamp(), acked_count = c.task_count,
                    staged_rows = COALESCE(b.rows, 0), staged_bytes = COALESCE(b.bytes, 0), carried_after = $4,
                    offsets_snapshot = coalesce((SELECT snapshot FROM merged), '{}')
             -- Every batch its promotion carries: those tagged for aborted
             -- checkpoints since the last decision too.
             FROM (SELECT sum(staged_rows) AS rows, sum(staged_bytes) AS bytes FROM batches
                   WHERE job_id = $1 AND epoch = $3 AND checkpoint_tag > $4 AND checkpoint_tag <= $2) b
             WHERE c.job_id = $1 AND c.checkpoint_id = $2
             RETURNING extract(epoch FROM c.decided_at - c.triggered_at)::float8 AS seconds
         ), subsumed AS (
             UPDATE checkpoints c SET
                 status = CASE WHEN complete THEN 'completed' ELSE 'aborted' END,
                 decided_at = CASE WHEN complete THEN clock_timestamp() END,
                 aborted_at = CASE WHEN complete THEN NULL ELSE now() END,
                 failure_reason = CASE WHEN complete THEN NULL ELSE 'subsumed by ' || $2::bigint END,
                 -- Completed with it: its batches are the decided one's.
                 staged_rows = CASE WHEN complete THEN 0 END,
                 staged_bytes = CASE WHEN complete THEN 0 END,
                 carried_after = CASE WHEN complete THEN c.checkpoint_id END
             FROM (SELECT p.checkpoint_id AS id,
                          (SELECT count(*) FROM acks a WHERE a.job_id = p.job_id AND a.checkpoint_id = p.checkpoint_id) >= p.task_count AS complete
                   FROM checkpoints p WHERE p.job_id = $1 AND p.status = 'pending' AND p.checkpoint_id < $2) older
             WHERE c.job_id = $1 AND c.checkpoint_id = older.id
             RETURNING c.status
         ), offsets AS (
             -- Every ack since the last decision counts, not only this
             -- checkpoint's: the rows a task staged before acking an older
             -- (aborted or subsumed) checkpoint are promoted now too.
             INSERT INTO committed_offsets (job_id, source_partition, next_offset, checkpoint_id)
             SELECT $1, o.key, max(o.value::bigint), $2
             FROM acks a, jsonb_each_text(a.offsets) AS o
             WHERE a.job_id = $1 AND a.epoch = $3 AND a.checkpoint_id > $4 AND a.checkpoint_id <= $2
             GROUP BY o.key
             ON CONFLICT (job_id, source_partition) DO UPDATE
             SET next_offset = greatest(committed_offsets.next_offset, EXCLUDED.next_offset),
                 checkpoint_id = EXCLUDED.checkpoint_id
         ), moved AS (
             UPDATE jobs SET last_decided_id = $2, restored_from = NULL WHERE job_id = $1
         )
         SELECT (SELECT seconds FROM decided) AS "seconds!",
                (SELECT count(*) FROM subsumed WHERE status = 'aborted') AS "subsumed!""#,
        job.job_id,
        checkpoint_id,
        job.epoch,
        job.last_decided_id.unwrap_or(0)
    )
    .fetch_one(&mut *conn)
    .await?;
    let (decide_seconds, subsumed) = (decided.seconds, decided.subsumed);
    crate::metrics::checkpoint_completed(
        &job.job_id,
        std::time::Duration::from_secs_f64(decide_seconds.max(0.0)),
    );
    crate::metrics::checkpoints_aborted(&job.job_id, AbortReason::Subsumed, subsumed as u64);
    job.last_decided_id = Some(checkpoint_id);
    Ok(())
}

/// `POST /checkpoints/{id}/declines`: a task cannot take this checkpoint, so
/// it is aborted. Its staged rows stay staged for the next checkpoint.
/// Declining an aborted checkpoint again is a no-op.
pub async fn decline(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
    request: &DeclineRequest,
) -> Result<Checkpoint> {
    require_name("task_id", &request.task_id, 200)?;
    require_reason(&request.reason)?;
    let job = load_job(&mut *conn, job_id, JobLock::NoKeyUpdate).await?;
    job.check_epoch(request.epoch)?;
    lock_task(&mut *conn, job_id, &request.task_id, false).await?;
    let reason = if request.reason.is_empty() {
        format!("declined by {}", request.task_id)
    } else {
        format!("declined by {}: {}", request.task_id, request.reason)
    };
    abort_pending(conn, &job, checkpoint_id, &reason, AbortReason::Declined).await
}

/// `POST /checkpoints/{id}/abort`: an operator gives up on a pending
/// checkpoint (a task is stuck, say). Like a decline, staged rows stay staged
/// for the next checkpoint; aborting an aborted checkpoint is a no-op.
pub async fn abort(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
    request: &AbortRequest,
) -> Result<Checkpoint> {
    require_reason(&request.reason)?;
    let job = load_job(&mut *conn, job_id, JobLock::NoKeyUpdate).await?;
    let reason = if request.reason.is_empty() {
        "aborted by an operator".to_owned()
    } else {
        format!("aborted by an operator: {}", request.reason)
    };
    abort_pending(conn, &job, checkpoint_id, &reason, AbortReason::Operator).await
}

fn require_reason(reason: &str) -> Result<()> {
    if reason.len() > 2000 {
        return Err(Error::validation(
            "reason",
            "reason is longer than 2000 bytes",
        ));
    }
    // Reasons are shown to operators, in terminals too: no escape
    // sequences, no forged lines.
    if reason.chars().any(char::is_control) {
        return Err(Error::validation(
            "reason",
            "reason contains control characters (escape sequences, newlines, tabs)",
        ));
    }
    Ok(())
}

/// Aborts a pending checkpoint of a job whose row the caller has locked.
async fn abort_pending(
    conn: &mut PgConnection,
    job: &JobRow,
    checkpoint_id: i64,
    reason: &str,
    metric_reason: AbortReason,
) -> Result<Checkpoint> {
    let job_id = job.job_id.as_str();
    abort_timed_out(&mut *conn, job).await?;
    let (status, task_count) = lock_checkpoint(&mut *conn, job_id, checkpoint_id).await?;
    // Counted after the lock (see `settle`): a checkpoint every task acked
    // is never aborted; it is decided instead, and answered as it is.
    let complete = count_acks(&mut *conn, job_id, checkpoint_id).await? >= task_count;
    match status {
        CheckpointStatus::Pending if complete => {
            settle(&mut *conn, job_id, checkpoint_id).await?;
        }
        CheckpointStatus::Pending => {
            sqlx::query!(
                "UPDATE checkpoints SET status = 'aborted', aborted_at = now(), failure_reason = $3
                 WHERE job_id = $1 AND checkpoint_id = $2",
                job_id,
                checkpoint_id,
                reason
            )
            .execute(&mut *conn)
            .await?;
            crate::metrics::checkpoints_aborted(job_id, metric_reason, 1);
        }
        CheckpointStatus::Aborted => {}
        CheckpointStatus::Completed | CheckpointStatus::Committed => {
            return Err(Error::conflict(format!(
                "checkpoint {checkpoint_id} is {status}; a decided checkpoint cannot be aborted"
            )))
        }
    }
    get(&mut *conn, job_id, checkpoint_id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(offsets: &[(&str, i64)]) -> AckRequest {
        AckRequest {
            task_id: "t0".into(),
            epoch: 3,
            offsets: offsets
                .iter()
                .map(|(partition, offset)| ((*partition).to_owned(), *offset))
                .collect(),
            state: None,
        }
    }

    /// Checkpoint 5, pending, in time; task t0 acked up to 4; partition 0
    /// committed at 100.
    fn pending() -> AckContext {
        AckContext {
            epoch: 3,
            epoch_timeline: 1,
            server_timeline: 1,
            last_acked_id: Some(4),
            status: CheckpointStatus::Pending,
            failure_reason: None,
            task_count: 2,
            expired: false,
            floors: Json(vec![("0".into(), 100)]),
        }
    }

    /// As `pending`, with t0's ack of 5 recorded ([`stored`]).
    fn acked() -> AckContext {
        AckContext {
            last_acked_id: Some(5),
            ..pending()
        }
    }

    /// t0's ack of 5: partition 0 at 120.
    fn stored() -> StoredAck {
        StoredAck {
            epoch: 3,
            offsets: Json([("0".to_owned(), 120)].into()),
            state: None,
        }
    }

    /// `admit` as `record_ack` calls it, for checkpoint 5: with t0's stored
    /// ack when there is one (`acked`).
    fn admit_checkpoint_5(context: &AckContext, request: &AckRequest) -> Result<Admitted> {
        let previous = (context.last_acked_id == Some(5)).then(stored);
        admit(context, previous.as_ref(), 5, request)
    }

    fn kind(result: Result<Admitted>) -> &'static str {
        match result {
            Ok(Admitted::New) => "new",
            Ok(Admitted::Again) => "again",
            Err(error) => error.kind().as_str(),
        }
    }

    #[test]
    fn a_first_ack_at_or_above_the_floor_is_new() {
        assert_eq!(
            kind(admit_checkpoint_5(&pending(), &request(&[("0", 100)]))),
            "new"
        );
        assert_eq!(
            kind(admit_checkpoint_5(&pending(), &request(&[("1", 0)]))),
            "new"
        );
    }

    #[test]
    fn an_ack_below_the_committed_offset_is_a_regression() {
        let refused = admit_checkpoint_5(&pending(), &request(&[("0", 99)]));
        assert!(matches!(
            refused,
            Err(Error::OffsetRegression {
                committed: 100,
                offset: 99,
                ..
            })
        ));
    }

    #[test]
    fn the_same_ack_again_is_answered_again_and_a_different_one_conflicts() {
        assert_eq!(
            kind(admit_checkpoint_5(&acked(), &request(&[("0", 120)]))),
            "again"
        );
        assert_eq!(
            kind(admit_checkpoint_5(&acked(), &request(&[("0", 121)]))),
            "conflict"
        );
        let other_epoch = AckRequest {
            epoch: 4,
            ..request(&[("0", 120)])
        };
        assert_eq!(kind(admit_checkpoint_5(&acked(), &other_epoch)), "conflict");
    }

    #[test]
    fn a_retry_of_a_complete_checkpoint_is_never_told_aborted() {
        // Decided, or past its deadline: a recorded ack is answered again.
        for context in [
            AckContext {
                status: CheckpointStatus::Committed,
                ..acked()
            },
            AckContext {
                expired: true,
                ..acked()
            },
        ] {
            assert_eq!(
                kind(admit_checkpoint_5(&context, &request(&[("0", 120)]))),
                "again"
            );
        }
    }

    #[test]
    fn late_acks_are_refused_with_the_checkpoint_fate() {
        let timed_out = AckContext {
            expired: true,
            ..pending()
        };
        let refused = admit_checkpoint_5(&timed_out, &request(&[("0", 120)]));
        assert!(
            matches!(&refused, Err(Error::CheckpointAborted { reason, .. }) if reason == "timeout")
        );
        let declined = AckContext {
            status: CheckpointStatus::Aborted,
            failure_reason: Some("declined by t1: disk full".into()),
            ..pending()
        };
        let refused = admit_checkpoint_5(&declined, &request(&[("0", 120)]));
        assert!(
            matches!(&refused, Err(Error::CheckpointAborted { reason, .. }) if reason.starts_with("declined"))
        );
        // A recorded ack of an aborted checkpoint is refused too.
        let aborted_after = AckContext {
            status: CheckpointStatus::Aborted,
            ..acked()
        };
        assert_eq!(
            kind(admit_checkpoint_5(&aborted_after, &request(&[("0", 120)]))),
            "checkpoint-aborted"
        );
        let committed = AckContext {
            status: CheckpointStatus::Committed,
            ..pending()
        };
        assert_eq!(
            kind(admit_checkpoint_5(&committed, &request(&[("0", 120)]))),
            "conflict"
        );
    }

    #[test]
    fn acks_go_to_increasing_checkpoints() {
        let ahead = AckContext {
            last_acked_id: Some(6),
            ..pending()
        };
        let refused = admit_checkpoint_5(&ahead, &request(&[("0", 120)]));
        assert!(matches!(&refused, Err(Error::Conflict(detail)) if detail.contains("increasing")));
    }
}
