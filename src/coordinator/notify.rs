//! Barrier discovery without polling the database in a loop.
//!
//! Triggers `pg_notify` on [`NOTIFY_CHANNEL`]; each replica keeps one
//! `LISTEN` connection and fans notifications out to its long-polls, so a
//! checkpoint triggered on any replica wakes waiters on all of them. Waiters
//! also re-check once a second, so a lost notification (the listener
//! reconnecting) delays them by at most that.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::checkpoints::{first_pending, NOTIFY_CHANNEL};
use crate::error::Result;
use crate::model::PendingCheckpoint;

/// Fan-out of checkpoint notifications within one process.
#[derive(Clone)]
pub struct Notifier {
    sender: broadcast::Sender<String>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new()
    }
}

impl Notifier {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(1024);
        Notifier { sender }
    }

    /// Listens on the database until the process ends, reconnecting on errors.
    pub fn spawn_listener(&self, pool: PgPool) -> tokio::task::JoinHandle<()> {
        let sender = self.sender.clone();
        tokio::spawn(async move {
            loop {
                match PgListener::connect_with(&pool).await {
                    Ok(mut listener) => {
                        if let Err(error) = listener.listen(NOTIFY_CHANNEL).await {
                            tracing::warn!(%error, "LISTEN failed");
                        } else {
                            loop {
                                match listener.recv().await {
                                    Ok(notification) => {
                                        let _ = sender.send(notification.payload().to_owned());
                                    }
                                    Err(error) => {
                                        tracing::warn!(%error, "checkpoint listener lost its connection");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot open the checkpoint listener"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// Waits up to `wait` for a pending checkpoint of `job_id` above `after`;
    /// stops at once (with none) when `gone` is cancelled: the client left.
    /// Cancellation is only looked at between database reads.
    pub async fn wait_for_pending(
        &self,
        pool: &PgPool,
        job_id: &str,
        after: i64,
        wait: Duration,
        gone: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<PendingCheckpoint>> {
        let deadline = Instant::now() + wait;
        let mut receiver = self.sender.subscribe();
        loop {
            let found = {
                let mut conn = pool.acquire().await?;
                first_pending(&mut conn, job_id, after).await?
            };
            if found.is_some() {
                return Ok(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let recheck = (deadline - now).min(Duration::from_secs(1));
            let notified = tokio::time::timeout(recheck, async {
                loop {
                    match receiver.recv().await {
                        Ok(job) if job == job_id => return,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            });
            tokio::select! {
                _ = notified => {}
                () = gone.cancelled() => return Ok(None),
            }
        }
    }
}
