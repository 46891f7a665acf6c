//! Service configuration: command-line flags with environment fallbacks.
//!
//! Every setting has a default that works against the local PostgreSQL that
//! `scripts/postgres.sh` prepares, so `sinkgate serve` runs with no flags.

use std::net::SocketAddr;

/// Every default, in one place: the flags below, the embedding options
/// (`ServiceOptions` and its parts) and the tests start from these.
pub mod defaults {
    pub const MAX_JSON_BODY_BYTES: usize = 64 << 20;
    pub const MAX_JSON_BYTES_IN_FLIGHT: usize = 256 << 20;
    pub const MAX_NDJSON_BODY_BYTES: u64 = 16 << 30;
    pub const BODY_IDLE_TIMEOUT_MS: u64 = 30_000;
    pub const MIN_BODY_RATE: u64 = 1024;
    pub const MAX_WRITES_PER_JOB: usize = 8;
    pub const WRONG_TOKENS_PER_MINUTE: u32 = 20;
    pub const MAX_INLINE_STATE_BYTES: usize = 64 << 10;
    pub const MAX_IN_FLIGHT: usize = 1024;
    pub const MAX_LONG_POLLS: usize = 256;
    pub const MAX_LONG_POLLS_PER_JOB: usize = 64;
    pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
    pub const MAX_CONNECTIONS: usize = 2048;
    pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
    pub const HEADER_READ_TIMEOUT_MS: u64 = 15_000;
    pub const TICK_MS: u64 = 200;
    /// An unreferenced state chunk younger than this is kept (an upload
    /// whose ack has not come yet).
    pub const STATE_GRACE_MS: u64 = 3_600_000;
    pub const POOL_SIZE: u32 = 32;
    pub const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 60_000;
    pub const DB_ACQUIRE_TIMEOUT_MS: u64 = 5_000;
    pub const DB_STATEMENT_TIMEOUT_MS: u64 = 60_000;
    pub const DB_LOCK_TIMEOUT_MS: u64 = 10_000;
}

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Settings of a running service (`sinkgate serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(long, env = "SINKGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Log format.
    #[arg(long, env = "SINKGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Largest JSON request body, in bytes (`POST /writes` with a JSON body included).
    #[arg(long, env = "SINKGATE_MAX_JSON_BODY", default_value_t = defaults::MAX_JSON_BODY_BYTES)]
    pub max_json_body_bytes: usize,

    /// Request bodies held in memory at once, in bytes, over all requests,
    /// counted as they arrive (the first 64 KiB of each is not counted: the
    /// in-flight limit bounds those). A body that would overrun it is
    /// answered 503 `overloaded`. At least `--max-json-body`. Streamed NDJSON
    /// uploads hold no body in memory.
    #[arg(long, env = "SINKGATE_MAX_JSON_BYTES_IN_FLIGHT", default_value_t = defaults::MAX_JSON_BYTES_IN_FLIGHT)]
    pub max_json_bytes_in_flight: usize,

    /// Largest NDJSON `/writes` body, in bytes. It is streamed, never held whole.
    #[arg(long, env = "SINKGATE_MAX_NDJSON_BODY", default_value_t = defaults::MAX_NDJSON_BODY_BYTES)]
    pub max_ndjson_body_bytes: u64,

    /// An NDJSON upload that sends no bytes for this many ms is abandoned
    /// (408 `body-timeout`) and nothing of it is staged.
    #[arg(long, env = "SINKGATE_BODY_IDLE_TIMEOUT_MS", default_value_t = defaults::BODY_IDLE_TIMEOUT_MS)]
    pub body_idle_timeout_ms: u64,

    /// Slowest rate, in bytes per second, at which a request body may
    /// arrive: every `--body-idle-timeout-ms` spent waiting for it must
    /// bring at least this rate's worth, or it is abandoned (408
    /// `body-timeout`). An upload holds a database connection and a buffered
    /// body holds memory while they last, so a trickle must not hold them for
    /// ever. 0 turns it off (then only the idle limit applies).
    #[arg(long, env = "SINKGATE_MIN_BODY_RATE", default_value_t = defaults::MIN_BODY_RATE)]
    pub min_body_rate: u64,

    /// Writes of one job staged at once by this replica (each holds a
    /// database connection, so one job cannot take the whole pool); more
    /// wait up to 5 s, then get 503 `overloaded`.
    #[arg(long, env = "SINKGATE_MAX_WRITES_PER_JOB", default_value_t = defaults::MAX_WRITES_PER_JOB)]
    pub max_writes_per_job: usize,

    /// Wrong bearer tokens one client address may send a minute; beyond,
    /// it gets 429 `too-early` for the rest of the minute, right tokens
    /// included. Behind a proxy every client has the proxy's address: raise
    /// it there, or turn it off with 0.
    #[arg(
        long,
        env = "SINKGATE_MAX_WRONG_TOKENS_PER_MINUTE",
        default_value_t = defaults::WRONG_TOKENS_PER_MINUTE
    )]
    pub max_wrong_tokens_per_minute: u32,

    /// Largest inline state handle in an ack, in bytes of JSON.
    #[arg(long, env = "SINKGATE_MAX_INLINE_STATE", default_value_t = defaults::MAX_INLINE_STATE_BYTES)]
    pub max_inline_state_bytes: usize,

    /// The admin token: may do everything, including issuing processor
    /// tokens. At least 16 characters. Prefer `--admin-token-file`: a flag
    /// is visible to every local user in the process list.
    #[arg(long, env = "SINKGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// A file holding the admin token (one line; surrounding whitespace is
    /// ignored), instead of `--admin-token`.
    #[arg(
        long,
        env = "SINKGATE_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// Run without authentication (local development only; logs a warning).
    #[arg(long, env = "SINKGATE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Require the admin token for /healthz, /readyz, /metrics and the API docs too.
    #[arg(long, env = "SINKGATE_PROTECT_OPERATIONS")]
    pub protect_operations: bool,

    /// Requests handled at once; more are answered 503 (`overloaded`) at once.
    #[arg(long, env = "SINKGATE_MAX_IN_FLIGHT", default_value_t = defaults::MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// Long-polls (`GET …/checkpoints/pending`) waiting at once; they do
    /// not take request slots. More get 503 `overloaded`.
    #[arg(long, env = "SINKGATE_MAX_LONG_POLLS", default_value_t = defaults::MAX_LONG_POLLS)]
    pub max_long_polls: usize,

    /// Long-polls of one job waiting at once.
    #[arg(long, env = "SINKGATE_MAX_LONG_POLLS_PER_JOB", default_value_t = defaults::MAX_LONG_POLLS_PER_JOB)]
    pub max_long_polls_per_job: usize,

    /// Longest wait for an answer, in ms; then 503 `timeout`. The work itself
    /// is not cut off: it finishes (or rolls back) on its own. NDJSON uploads
    /// are exempt, and long-polls get their `wait_ms` on top.
    #[arg(long, env = "SINKGATE_REQUEST_TIMEOUT_MS", default_value_t = defaults::REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,

    /// Connections open at once; more are answered 503 and closed. Keep it
    /// below the process's file-descriptor limit (`ulimit -n`).
    #[arg(long, env = "SINKGATE_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Connections from one client address open at once; more are answered
    /// 503 and closed. Behind a proxy every client has the proxy's address:
    /// raise it there.
    #[arg(
        long,
        env = "SINKGATE_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = defaults::MAX_CONNECTIONS_PER_ADDRESS
    )]
    pub max_connections_per_address: usize,

    /// A connection must send a request's headers within this many ms, and
    /// an idle keep-alive connection is closed after as long.
    #[arg(
        long,
        env = "SINKGATE_HEADER_READ_TIMEOUT_MS",
        default_value_t = defaults::HEADER_READ_TIMEOUT_MS
    )]
    pub header_read_timeout_ms: u64,

    /// How often the scheduler (interval triggers, timeouts, promotion retries) runs.
    #[arg(long, env = "SINKGATE_TICK_MS", default_value_t = defaults::TICK_MS)]
    pub tick_ms: u64,

    /// State chunks that no ack references are deleted once no task has
    /// uploaded or asked for them for this long (a checkpoint's upload
    /// must reach its ack within it).
    #[arg(long, env = "SINKGATE_STATE_GRACE_MS", default_value_t = defaults::STATE_GRACE_MS)]
    pub state_grace_ms: u64,
}

/// Where the metadata lives. Shared by `serve` and `migrate`.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://sinkgate:sinkgate@127.0.0.1:5432/sinkgate"
    )]
    pub database_url: String,

    /// Maximum connections in the pool.
    #[arg(long, env = "SINKGATE_POOL_SIZE", default_value_t = defaults::POOL_SIZE)]
    pub pool_size: u32,

    /// A request waits at most this many ms for a database connection
    /// (the pool full, or the database down or restarting: sinkgate keeps
    /// trying to reconnect meanwhile), then is answered 503 `unavailable`
    /// with Retry-After.
    #[arg(
        long,
        env = "SINKGATE_DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = defaults::DB_ACQUIRE_TIMEOUT_MS
    )]
    pub db_acquire_timeout_ms: u64,

    /// PostgreSQL ends a sinkgate session that sits idle inside a
    /// transaction for this many ms (`idle_in_transaction_session_timeout`),
    /// releasing its locks. 0 turns it off.
    #[arg(
        long,
        env = "SINKGATE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = defaults::IDLE_IN_TRANSACTION_TIMEOUT_MS
    )]
    pub idle_in_transaction_timeout_ms: u64,

    /// PostgreSQL cancels a sinkgate statement that runs longer
    /// (`statement_timeout`); the request is answered 503 and its
    /// transaction rolled back. Promotions and the `COPY` of an upload are
    /// exempt: they last as long as their data. 0 turns it off.
    #[arg(
        long,
        env = "SINKGATE_DB_STATEMENT_TIMEOUT_MS",
        default_value_t = defaults::DB_STATEMENT_TIMEOUT_MS
    )]
    pub db_statement_timeout_ms: u64,

    /// A sinkgate statement waits at most this long for a lock
    /// (`lock_timeout`): a job or sink table locked by someone else (a long
    /// transaction, an `ALTER TABLE`) gets its requests answered 503 and its
    /// promotion retried, instead of holding connections until it ends.
    /// 0 turns it off.
    #[arg(
        long,
        env = "SINKGATE_DB_LOCK_TIMEOUT_MS",
        default_value_t = defaults::DB_LOCK_TIMEOUT_MS
    )]
    pub db_lock_timeout_ms: u64,
}

/// Shortest admin token accepted: a short one falls to guessing.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

impl Config {
    /// Reads `--admin-token-file` into `admin_token` and refuses a token
    /// too short to resist guessing (or an empty one).
    pub fn resolve_admin_token(&mut self) -> anyhow::Result<()> {
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                anyhow::anyhow!(
                    "cannot read the admin token file {}: {error}",
                    path.display()
                )
            })?;
            self.admin_token = Some(text.trim().to_owned());
        }
        if let Some(token) = &self.admin_token {
            anyhow::ensure!(
                token.chars().count() >= MIN_ADMIN_TOKEN_CHARS,
                "the admin token is {} characters long; use at least {MIN_ADMIN_TOKEN_CHARS} random characters (e.g. `openssl rand -hex 32`)",
                token.chars().count()
            );
        }
        Ok(())
    }
}
