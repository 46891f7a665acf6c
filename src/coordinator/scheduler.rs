//! Periodic work: interval triggers, timeouts, promotion retries.
//!
//! Every replica runs the loop, but only the one holding a PostgreSQL
//! advisory lock acts; if it dies, its session ends, the lock is released,
//! and another replica takes over on its next tick. Even so, every action is
//! an ordinary protocol transaction under the job's row lock, so a second
//! actor could only be redundant, never wrong.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Result;

/// Key of the advisory lock that elects the scheduling replica.
pub const SCHEDULER_LOCK_KEY: i64 = 0x5349_4e4b_4741_5445; // "SINKGATE"

/// Failed promotions are retried at most this often per job.
const PROMOTION_RETRY: Duration = Duration::from_secs(2);

/// Unreferenced state chunks are looked for at most this often (or every
/// grace period, when that is shorter).
const COLLECT_EVERY: Duration = Duration::from_secs(60);

/// Runs until `shutdown` turns true; releases the lock on the way out.
/// `state_grace`: how long an unreferenced state chunk is kept.
pub async fn run(
    pool: PgPool,
    tick: Duration,
    state_grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut leader: Option<PoolConnection<Postgres>> = None;
    let mut last_retry: HashMap<String, Instant> = HashMap::new();
    let mut last_collected: Option<Instant> = None;
    loop {
        // The lock lives as long as its session: if that ended (a database
        // restart, a failover, a killed backend), another replica may hold
        // it now, so this one stops acting until it wins an election again.
        if let Some(conn) = leader.as_mut() {
            if sqlx::query_scalar!("SELECT 1 AS alive")
                .fetch_one(&mut **conn)
                .await
                .is_err()
            {
                tracing::warn!("the scheduler's lock session ended; electing again");
                leader = None;
            }
        }
        if leader.is_none() {
            leader = try_lead(&pool).await;
        }
        if leader.is_some() {
            if let Err(error) = tick_once(&pool, &mut last_retry).await {
                tracing::warn!(%error, "scheduler tick failed");
                // The lock connection may be broken; re-elect next time.
                if let Some(mut conn) = leader.take() {
                    let _ = release(&mut conn).await;
                }
            }
            if last_collected.is_none_or(|last| last.elapsed() >= COLLECT_EVERY.min(state_grace)) {
                last_collected = Some(Instant::now());
                if let Err(error) = super::state::collect_chunks(&pool, state_grace).await {
                    // An ack that referenced a chunk meanwhile: next time.
                    tracing::warn!(%error, "collecting state chunks failed");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    if let Some(mut conn) = leader {
        let _ = release(&mut conn).await;
    }
}

async fn try_lead(pool: &PgPool) -> Option<PoolConnection<Postgres>> {
    let mut conn = pool.acquire().await.ok()?;
    let locked: bool = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_lock($1) AS "locked!""#,
        SCHEDULER_LOCK_KEY
    )
    .fetch_one(&mut *conn)
    .await
    .ok()?;
    if locked {
        tracing::info!("this replica runs the checkpoint scheduler");
        Some(conn)
    } else {
        None
    }
}

async fn release(conn: &mut PgConnection) -> Result<()> {
    sqlx::query_scalar!("SELECT pg_advisory_unlock($1)", SCHEDULER_LOCK_KEY)
        .fetch_one(conn)
        .await?;
    Ok(())
}

/// One pass over the jobs.
pub async fn tick_once(pool: &PgPool, last_retry: &mut HashMap<String, Instant>) -> Result<()> {
    // Only jobs with something to do: an interval, pending checkpoints, or an
    // unpromoted decision.
    let jobs: Vec<String> = sqlx::query_scalar!("SELECT j.job_id FROM jobs j WHERE j.epoch > 0 AND (
             j.interval_ms IS NOT NULL
             OR j.last_decided_id > coalesce(j.last_committed_id, 0)
             OR EXISTS (SELECT 1 FROM checkpoints c WHERE c.job_id = j.job_id AND c.status = 'pending'))")
    .fetch_all(pool)
    .await?;
    for job_id in jobs {
        // One job's failure (a broken sink, a lock timeout) must not stop
        // triggers, timeouts and retries of every other job.
        if let Err(error) = tick_job(pool, &job_id, last_retry).await {
            tracing::warn!(job = %job_id, %error, "scheduler skipped a job");
            crate::metrics::scheduler_job_failed(&job_id);
        }
    }
    Ok(())
}

/// The scheduler's work on one job: one [`super::sweep`], with a blocked
/// promotion retried at most every [`PROMOTION_RETRY`].
async fn tick_job(
    pool: &PgPool,
    job_id: &str,
    last_retry: &mut HashMap<String, Instant>,
) -> Result<()> {
    let retry_due = last_retry
        .get(job_id)
        .is_none_or(|last| last.elapsed() >= PROMOTION_RETRY);
    let swept = super::sweep(pool, job_id, retry_due).await;
    // A promotion tried, or a pass that failed (it may have been the
    // promotion): the next try waits its turn.
    if retry_due && !matches!(swept, Ok(false)) {
        last_retry.insert(job_id.to_owned(), Instant::now());
    }
    swept.map(|_| ())
}

/// Promotes every decided-but-unpromoted checkpoint (start-up roll forward).
pub async fn roll_forward_all(pool: &PgPool) -> Result<()> {
    let jobs: Vec<String> = sqlx::query_scalar!(
        "SELECT job_id FROM jobs WHERE last_decided_id > coalesce(last_committed_id, 0)"
    )
    .fetch_all(pool)
    .await?;
    for job_id in jobs {
        match super::promote(pool, &job_id).await {
            Ok(promoted) => tracing::info!(job = %job_id, ?promoted, "start-up roll forward"),
            // A lock held elsewhere, the database gone for a moment: the
            // scheduler retries; start-up goes on.
            Err(error) => {
                tracing::warn!(job = %job_id, %error, "start-up roll forward failed; the scheduler retries")
            }
        }
    }
    Ok(())
}
