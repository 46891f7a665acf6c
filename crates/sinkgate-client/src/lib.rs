//! A Rust client for sinkgate.
//!
//! [`Client`] is one typed method per endpoint, using the server's own
//! request and response types ([`sinkgate_api`], re-exported as [`model`]). Transient failures
//! (connection refused while a replica restarts, 429, 502, 503, 504) are retried with
//! exponential backoff; every call is safe to retry because the protocol
//! makes it so (batch ids, identical re-acks). A `fenced` answer becomes
//! [`Error::Zombie`]: this instance's epoch is over and it must stop.
//!
//! [`Processor`] is the loop every processor runs: attempt, resume from the
//! recovery offsets, stage batches, and checkpoint (trigger, ack from every
//! task, wait until committed).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use sinkgate_api as model;
use sinkgate_api::{
    AbortRequest, AckBatchRequest, AckRequest, AckResult, Attempt, Checkpoint, CheckpointDetails,
    CheckpointList, CheckpointStatus, DeadLetterList, IssuedToken, Job, JobList, JobSpec,
    PendingCheckpoint, PromotionResult, Recovery, StateHandle, TokenInfo, TokenRequest,
    TriggerRequest, WriteResult,
};
use sinkgate_api::{
    ChunkList, Savepoint, SavepointList, SavepointRequest, StoredChunk, StoredState,
};

pub mod state;
pub use sinkgate_api::{Problem, ProblemKind, MAX_BATCH_ACKS};

/// What can go wrong when calling sinkgate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job has a newer epoch: another instance took over. Stop now.
    #[error("this instance is a zombie: its epoch is fenced (the job's current epoch is {current_epoch:?}); stop")]
    Zombie { current_epoch: Option<i64> },
    /// The service refused the request (4xx), or failed it for good (a 500:
    /// a bug, or a corrupted state chunk); the problem document says why.
    #[error("{} ({}): {}", .0.title, .0.problem_type, .0.detail)]
    Refused(Box<Problem>),
    /// Transient failures went on past the retry budget.
    #[error("gave up after retries: {0}")]
    Unavailable(String),
    /// An answer that does not parse.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// A local file (of a state saved or restored) could not be read or written.
    #[error("{0}")]
    Io(String),
}

impl Error {
    /// The problem kind of a refusal (`None` for a kind this client does
    /// not know, and for failures that are not refusals).
    pub fn kind(&self) -> Option<ProblemKind> {
        match self {
            Error::Refused(problem) => problem.kind(),
            Error::Zombie { .. } => Some(ProblemKind::Fenced),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The answers that say "not now" (overloaded, a timeout, the database
/// unavailable, a proxy without a backend): retried. Any other error answer
/// is final, a 500 included (a bug, or a stored state chunk that is
/// corrupted: the same again on every try). The Python client retries the same.
const RETRIED_STATUSES: [u16; 4] = [429, 502, 503, 504];

/// How one try of a request failed: for good, or worth another try (after
/// at least `retry_after`, when the server said so).
enum Failure {
    Final(Error),
    Transient {
        failure: String,
        retry_after: Option<Duration>,
    },
}

/// A client for one job, over one or more replicas (requests are spread
/// over them; a failing one is skipped by the retry).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_urls: Vec<String>,
    job: String,
    /// Bearer token (a processor token of this job, or the admin token).
    token: Option<String>,
    /// Give up retrying transient failures after this long.
    pub retry_for: Duration,
}

/// Never prints the token (a client ends up in logs and panic messages).
impl std::fmt::Debug for Client {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Client")
            .field("base_urls", &self.base_urls)
            .field("job", &self.job)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("retry_for", &self.retry_for)
            .finish()
    }
}

impl Client {
    pub fn new(base_urls: &[&str], job: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base_urls: base_urls
                .iter()
                .map(|url| url.trim_end_matches('/').to_owned())
                .collect(),
            job: job.to_owned(),
            token: None,
            retry_for: Duration::from_secs(120),
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(token.to_owned());
        self
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    /// Sends a request, retrying transient failures (connection errors,
    /// 429, 502, 503, 504) for up to `retry_for`: exponential backoff with jitter from
    /// 20 ms to 1 s, but never sooner than the server's `Retry-After`. Each
    /// try goes to the next replica. Refusals (other 4xx) are final.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Option<T>> {
        self.retrying(path, |url| {
            let mut request = self.http.request(method.clone(), url);
            if let Some(body) = body {
                request = request.json(body);
            }
            async move {
                let response = self.send_once(request).await?;
                if response.status() == StatusCode::NO_CONTENT {
                    return Ok(None);
                }
                response
                    .json()
                    .await
                    .map(Some)
                    .map_err(|error| Failure::Final(Error::Decode(error.to_string())))
            }
        })
        .await
    }

    /// [`Client::call`] with raw bytes each way (`application/octet-stream`).
    async fn call_bytes(&self, method: Method, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
        self.retrying(path, |url| {
            let mut request = self.http.request(method.clone(), url);
            if let Some(body) = body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(body.to_vec());
            }
            async move {
                let response = self.send_once(request).await?;
                response
                    .bytes()
                    .await
                    .map(|bytes| bytes.to_vec())
                    .map_err(|error| Failure::Transient {
                        failure: with_causes(&error),
                        retry_after: None,
                    })
            }
        })
        .await
    }

    /// Tries `once(<replica>{path})` until it succeeds, fails for good, or
    /// `retry_for` has passed (see [`Client::call`]).
    async fn retrying<T, F, Fut>(&self, path: &str, once: F) -> Result<T>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Failure>>,
    {
        use backon::Retryable;
        let started = std::time::Instant::now();
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times();
        let attempt = || {
            let try_number = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let base = &self.base_urls[try_number % self.base_urls.len()];
            once(format!("{base}{path}"))
        };
        attempt
            .retry(backoff)
            .when(|failure| {
                matches!(failure, Failure::Transient { .. }) && started.elapsed() <= self.retry_for
            })
            .adjust(|failure, delay| match failure {
                Failure::Transient {
                    retry_after: Some(wait),
                    ..
                } => delay.map(|delay| delay.max(*wait)),
                _ => delay,
            })
            .notify(|failure, delay| {
                if let Failure::Transient { failure, .. } = failure {
                    tracing::debug!(%failure, ?delay, "transient failure; retrying");
                }
            })
            .await
            .map_err(|failure| match failure {
                Failure::Final(error) => error,
                Failure::Transient { failure, .. } => Error::Unavailable(failure),
            })
    }

    /// Sends one try; a success comes back to be read, anything else is a
    /// [`Failure`]: transient (no answer, [`RETRIED_STATUSES`]) or final.
    async fn send_once(
        &self,
        mut request: reqwest::RequestBuilder,
    ) -> std::result::Result<reqwest::Response, Failure> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|error| Failure::Transient {
            failure: with_causes(&error),
            retry_after: None,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        if RETRIED_STATUSES.contains(&status.as_u16()) {
            return Err(Failure::Transient {
                failure: format!("{status}: {text}"),
                retry_after,
            });
        }
        let problem: Problem =
            serde_json::from_str(&text).map_err(|_| Failure::Final(Error::Decode(text.clone())))?;
        if problem.kind() == Some(ProblemKind::Fenced) {
            return Err(Failure::Final(Error::Zombie {
                current_epoch: problem.current_epoch,
            }));
        }
        Err(Failure::Final(Error::Refused(Box::new(problem))))
    }

    async fn expect<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T> {
        self.call(method, path, body)
            .await?
            .ok_or_else(|| Error::Decode("empty answer".into()))
    }

    /// `PUT /v1/jobs/{job}`.
    pub async fn put_job(&self, spec: &JobSpec) -> Result<Job> {
        self.expect(Method::PUT, &self.job_path(""), Some(spec))
            .await
    }

    /// `POST /attempts`: a new epoch and where to resume.
    pub async fn start_attempt(&self) -> Result<Attempt> {
        self.expect(
            Method::POST,
            &self.job_path("/attempts"),
            Some(&serde_json::json!({})),
        )
        .await
    }

    /// `GET /recovery`.
    pub async fn recovery(&self) -> Result<Recovery> {
        self.expect(Method::GET, &self.job_path("/recovery"), None::<&()>)
            .await
    }

    /// `POST /writes` (JSON body), to a job's only output.
    pub async fn write(
        &self,
        task_id: &str,
        epoch: i64,
        batch_id: &str,
        rows: &[Value],
    ) -> Result<WriteResult> {
        self.write_to(None, task_id, epoch, batch_id, rows).await
    }

    /// `POST /writes` (JSON body) to a named output (`None`: the job's only
    /// one). In an upsert output, a row `{"_sinkgate_op": "delete", <key>}`
    /// deletes its key.
    pub async fn write_to(
        &self,
        output: Option<&str>,
        task_id: &str,
        epoch: i64,
        batch_id: &str,
        rows: &[Value],
    ) -> Result<WriteResult> {
        let mut body = serde_json::json!({"task_id": task_id, "epoch": epoch, "batch_id": batch_id, "rows": rows});
        if let Some(output) = output {
            body["output"] = Value::from(output);
        }
        self.expect(Method::POST, &self.job_path("/writes"), Some(&body))
            .await
    }

    /// `POST /checkpoints`.
    pub async fn trigger(&self, epoch: i64) -> Result<Checkpoint> {
        self.expect(
            Method::POST,
            &self.job_path("/checkpoints"),
            Some(&TriggerRequest { epoch }),
        )
        .await
    }

    /// `GET /checkpoints/pending`: long-poll for a checkpoint above `after`.
    pub async fn pending(&self, after: i64, wait: Duration) -> Result<Option<PendingCheckpoint>> {
        let path = self.job_path(&format!(
            "/checkpoints/pending?after={after}&wait_ms={}",
            wait.as_millis()
        ));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /checkpoints/{id}/acks`.
    pub async fn ack(&self, checkpoint_id: i64, ack: &AckRequest) -> Result<AckResult> {
        self.expect(
            Method::POST,
            &self.job_path(&format!("/checkpoints/{checkpoint_id}/acks")),
            Some(ack),
        )
        .await
    }

    /// `POST /checkpoints/{id}/acks?promote=background`: answers once the
    /// ack is recorded; when it completes the set, the promotion follows in
    /// the background, so the task may write the next checkpoint's rows at
    /// once.
    pub async fn ack_in_background(
        &self,
        checkpoint_id: i64,
        ack: &AckRequest,
    ) -> Result<AckResult> {
        self.expect(
            Method::POST,
            &self.job_path(&format!(
                "/checkpoints/{checkpoint_id}/acks?promote=background"
            )),
            Some(ack),
        )
        .await
    }

    /// `POST /checkpoints/{id}/acks/batch`: the acks of several tasks of
    /// this process in one request (at most [`MAX_BATCH_ACKS`]), recorded
    /// all or none.
    pub async fn ack_batch(&self, checkpoint_id: i64, acks: &[AckRequest]) -> Result<AckResult> {
        self.expect(
            Method::POST,
            &self.job_path(&format!("/checkpoints/{checkpoint_id}/acks/batch")),
            Some(&AckBatchRequest {
                acks: acks.to_vec(),
            }),
        )
        .await
    }

    /// `GET /checkpoints/{id}`.
    pub async fn checkpoint(&self, checkpoint_id: i64) -> Result<CheckpointDetails> {
        self.expect(
            Method::GET,
            &self.job_path(&format!("/checkpoints/{checkpoint_id}")),
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/jobs/{job}`.
    pub async fn get_job(&self) -> Result<Job> {
        self.expect(Method::GET, &self.job_path(""), None::<&()>)
            .await
    }

    /// `DELETE /v1/jobs/{job}` (admin).
    pub async fn delete_job(&self) -> Result<()> {
        self.call::<Value>(Method::DELETE, &self.job_path(""), None::<&()>)
            .await
            .map(|_| ())
    }

    /// `GET /v1/jobs` (admin): every job, whichever this client is for.
    pub async fn list_jobs(&self) -> Result<JobList> {
        self.expect(Method::GET, "/v1/jobs", None::<&()>).await
    }

    /// `GET /checkpoints`: history, newest first, at most `limit`, optionally
    /// of one status.
    pub async fn checkpoints(
        &self,
        limit: u32,
        status: Option<CheckpointStatus>,
    ) -> Result<CheckpointList> {
        let mut path = self.job_path(&format!("/checkpoints?limit={limit}"));
        if let Some(status) = status {
            path.push_str(&format!("&status={}", status.as_str()));
        }
        self.expect(Method::GET, &path, None::<&()>).await
    }

    /// `POST /checkpoints/{id}/abort` (admin).
    pub async fn abort_checkpoint(&self, checkpoint_id: i64, reason: &str) -> Result<Checkpoint> {
        self.expect(
            Method::POST,
            &self.job_path(&format!("/checkpoints/{checkpoint_id}/abort")),
            Some(&AbortRequest {
                reason: reason.to_owned(),
            }),
        )
        .await
    }

    /// `POST /promotions` (admin): promote the decided checkpoint now, after
    /// the sink was fixed.
    pub async fn retry_promotion(&self) -> Result<PromotionResult> {
        self.expect(Method::POST, &self.job_path("/promotions"), None::<&()>)
            .await
    }

    /// `GET /dead-letters` (admin): rows a promotion kept out of the sink,
    /// oldest first, with ids above `after`.
    pub async fn dead_letters(&self, after: i64, limit: u32) -> Result<DeadLetterList> {
        self.expect(
            Method::GET,
            &self.job_path(&format!("/dead-letters?after={after}&limit={limit}")),
            None::<&()>,
        )
        .await
    }

    /// `GET /tokens` (admin).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.expect(Method::GET, &self.job_path("/tokens"), None::<&()>)
            .await
    }

    /// `POST /tokens` (admin): a processor token for this job, shown once.
    pub async fn issue_token(&self, label: &str) -> Result<IssuedToken> {
        self.expect(
            Method::POST,
            &self.job_path("/tokens"),
            Some(&TokenRequest {
                label: label.to_owned(),
            }),
        )
        .await
    }

    /// `DELETE /tokens/{id}` (admin).
    pub async fn revoke_token(&self, token_id: &str) -> Result<()> {
        self.call::<Value>(
            Method::DELETE,
            &self.job_path(&format!("/tokens/{token_id}")),
            None::<&()>,
        )
        .await
        .map(|_| ())
    }

    /// `POST /state/chunks/missing`: which of these chunks the store lacks.
    pub async fn missing_chunks(&self, chunks: &[String]) -> Result<Vec<String>> {
        let asked = ChunkList {
            chunks: chunks.to_vec(),
        };
        let answer: ChunkList = self
            .expect(
                Method::POST,
                &self.job_path("/state/chunks/missing"),
                Some(&asked),
            )
            .await?;
        Ok(answer.chunks)
    }

    /// `PUT /state/chunks/{sha256}`.
    pub async fn put_chunk(&self, sha256: &str, content: &[u8]) -> Result<StoredChunk> {
        let path = self.job_path(&format!("/state/chunks/{sha256}"));
        let answer = self.call_bytes(Method::PUT, &path, Some(content)).await?;
        serde_json::from_slice(&answer).map_err(|error| Error::Decode(error.to_string()))
    }

    /// `GET /state/chunks/{sha256}`, checked against its SHA-256 here too.
    pub async fn get_chunk(&self, sha256: &str) -> Result<Vec<u8>> {
        let path = self.job_path(&format!("/state/chunks/{sha256}"));
        let content = self.call_bytes(Method::GET, &path, None).await?;
        if state::sha256_hex(&content) != sha256 {
            return Err(Error::Decode(format!(
                "state chunk {sha256} arrived with other content"
            )));
        }
        Ok(content)
    }

    /// Saves `state` in the state store, incrementally: cut into chunks by
    /// content, only the chunks the store lacks are uploaded. Put the
    /// answer's `stored` in the ack (`StateHandle::stored`).
    pub async fn save_state(&self, state: &[u8]) -> Result<state::Saved> {
        state::save(self, state::chunks_of(state)).await
    }

    /// Saves a file in the state store, as [`Client::save_state`], reading
    /// it a chunk at a time.
    pub async fn save_state_file(&self, path: &std::path::Path) -> Result<state::Saved> {
        let file = std::fs::File::open(path).map_err(|error| Error::Io(error.to_string()))?;
        state::save(self, state::chunks_of_reader(file)).await
    }

    /// The state `stored` describes, downloaded and checked chunk by chunk.
    pub async fn restore_state(&self, stored: &StoredState) -> Result<Vec<u8>> {
        let mut state = Vec::with_capacity(stored.size_bytes as usize);
        state::restore(self, stored, |chunk| {
            state.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(state)
    }

    /// Restores into a file, a chunk at a time: written beside it first and
    /// renamed over it once whole, so a failed restore leaves `path` as it was.
    pub async fn restore_state_file(
        &self,
        stored: &StoredState,
        path: &std::path::Path,
    ) -> Result<()> {
        use std::io::Write;
        let io = |error: std::io::Error| Error::Io(error.to_string());
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&partial).map_err(io)?);
        let restored =
            state::restore(self, stored, |chunk| file.write_all(chunk).map_err(io)).await;
        let finished = restored.and_then(|()| file.flush().map_err(io));
        drop(file);
        match finished {
            Ok(()) => std::fs::rename(&partial, path).map_err(io),
            Err(error) => {
                let _ = std::fs::remove_file(&partial);
                Err(error)
            }
        }
    }

    /// `POST /attempts` with `from_checkpoint`: restarts the job from a
    /// savepoint or retained checkpoint (jobs whose every output is upsert).
    pub async fn start_attempt_from(&self, checkpoint_id: i64) -> Result<Attempt> {
        self.expect(
            Method::POST,
            &self.job_path("/attempts"),
            Some(&serde_json::json!({"from_checkpoint": checkpoint_id})),
        )
        .await
    }

    /// `POST /savepoints` (admin): keeps a decided checkpoint (default: the
    /// last one) until deleted.
    pub async fn create_savepoint(
        &self,
        label: &str,
        checkpoint_id: Option<i64>,
    ) -> Result<Savepoint> {
        let request = SavepointRequest {
            label: label.to_owned(),
            checkpoint_id,
        };
        self.expect(Method::POST, &self.job_path("/savepoints"), Some(&request))
            .await
    }

    /// `GET /savepoints`, newest first.
    pub async fn savepoints(&self) -> Result<Vec<Savepoint>> {
        let list: SavepointList = self
            .expect(Method::GET, &self.job_path("/savepoints"), None::<&()>)
            .await?;
        Ok(list.savepoints)
    }

    /// `DELETE /savepoints/{id}` (admin).
    pub async fn delete_savepoint(&self, checkpoint_id: i64) -> Result<()> {
        self.call::<Value>(
            Method::DELETE,
            &self.job_path(&format!("/savepoints/{checkpoint_id}")),
            None::<&()>,
        )
        .await
        .map(|_| ())
    }

    fn job_path(&self, suffix: &str) -> String {
        format!("/v1/jobs/{}{suffix}", self.job)
    }
}

/// An error and its causes ("error sending request …: … Connection refused").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// One running instance of a job: all its tasks, in one epoch.
pub struct Processor {
    client: Client,
    tasks: Vec<String>,
    epoch: i64,
    recovery: Recovery,
}

impl Processor {
    /// Starts an attempt: fences any older instance, and learns where to resume.
    pub async fn start(client: Client, tasks: Vec<String>) -> Result<Processor> {
        let attempt = client.start_attempt().await?;
        Ok(Processor {
            client,
            tasks,
            epoch: attempt.epoch,
            recovery: attempt.recovery,
        })
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The next offset to read per source partition (0 where nothing was committed).
    pub fn resume_offset(&self, partition: &str) -> i64 {
        self.recovery.offsets.get(partition).copied().unwrap_or(0)
    }

    /// The state handle `task` acked with at the recovery point, if any.
    pub fn resume_state(&self, task: &str) -> Option<&StateHandle> {
        self.recovery
            .tasks
            .get(task)
            .and_then(|task| task.state.as_ref())
    }

    /// Stages a batch. `batch_key` must identify the batch's content within
    /// the epoch (e.g. the first source offset it covers): a retry with the
    /// same key is staged once.
    pub async fn write(&self, task: &str, batch_key: &str, rows: &[Value]) -> Result<WriteResult> {
        self.client
            .write(task, self.epoch, &format!("{task}-{batch_key}"), rows)
            .await
    }

    /// Stages a batch for one output of a job with several; `batch_key` as
    /// in [`Processor::write`], unique per output.
    pub async fn write_to(
        &self,
        output: &str,
        task: &str,
        batch_key: &str,
        rows: &[Value],
    ) -> Result<WriteResult> {
        // Output names have no ':', so no two (output, key) pairs share an id.
        self.client
            .write_to(
                Some(output),
                task,
                self.epoch,
                &format!("{task}:{output}:{batch_key}"),
                rows,
            )
            .await
    }

    /// Triggers a checkpoint, acks it from every task with what
    /// `barrier(task)` returns (its offsets and state handle; all tasks in
    /// one request), and waits
    /// until it is committed. A checkpoint aborted on the way (timeout) is
    /// retried with a new one; nothing staged is lost.
    pub async fn checkpoint(
        &self,
        barrier: impl Fn(&str) -> (BTreeMap<String, i64>, Option<StateHandle>),
    ) -> Result<i64> {
        loop {
            let checkpoint_id = match self.client.trigger(self.epoch).await {
                Ok(checkpoint) => checkpoint.checkpoint_id,
                // One is pending already (our trigger's answer was lost): take it.
                Err(error) if error.kind() == Some(ProblemKind::Conflict) => {
                    match self.client.pending(0, Duration::ZERO).await? {
                        Some(pending) => pending.checkpoint_id,
                        None => continue,
                    }
                }
                Err(error) => return Err(error),
            };
            // The process's tasks in as few requests as the service takes,
            // each all or none.
            let mut status = CheckpointStatus::Pending;
            let mut aborted = false;
            for group in self.tasks.chunks(MAX_BATCH_ACKS) {
                let acks: Vec<AckRequest> = group
                    .iter()
                    .map(|task| {
                        let (offsets, state) = barrier(task);
                        AckRequest {
                            task_id: task.clone(),
                            epoch: self.epoch,
                            offsets,
                            state,
                        }
                    })
                    .collect();
                let acked = match acks.as_slice() {
                    [one] => self.client.ack(checkpoint_id, one).await,
                    _ => self.client.ack_batch(checkpoint_id, &acks).await,
                };
                match acked {
                    Ok(result) => status = result.status,
                    Err(error) if error.kind() == Some(ProblemKind::CheckpointAborted) => {
                        aborted = true;
                        break;
                    }
                    Err(error) => return Err(error),
                }
            }
            if aborted {
                continue;
            }
            while matches!(
                status,
                CheckpointStatus::Pending | CheckpointStatus::Completed
            ) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                status = self
                    .client
                    .checkpoint(checkpoint_id)
                    .await?
                    .checkpoint
                    .status;
            }
            if status == CheckpointStatus::Committed {
                return Ok(checkpoint_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_token() {
        let client = Client::new(&["http://127.0.0.1:1"], "job").with_token("sgt_id_secret-value");
        let printed = format!("{client:?}");
        assert!(!printed.contains("secret-value"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
