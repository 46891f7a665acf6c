//! Connection pool and the embedded migrations of sinkgate's metadata tables.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::config::DatabaseConfig;

/// The service's own migrations, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens the pool. Connections fail fast rather than queue forever; while
/// the database is down, each acquire keeps reconnecting until its timeout.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = config.database_url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(Duration::from_millis(config.db_acquire_timeout_ms))
        .after_connect(|conn, _| Box::pin(async move { durable_commits(conn).await }))
        .connect_with(session_options(options, &SessionLimits::from(config)))
        .await?;
    Ok(pool)
}

/// A commit sinkgate reports must survive a crash of the server: a session
/// whose `synchronous_commit` is `off` (set for the server, database or
/// role, for speed) gets `on`. Any other setting is kept: `local` is
/// durable on the server, the remote ones wait for standbys too.
async fn durable_commits(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT set_config('synchronous_commit', 'on', false) AS set
         WHERE current_setting('synchronous_commit') = 'off'"
    )
    .fetch_optional(conn)
    .await?;
    Ok(())
}

/// What PostgreSQL enforces on every sinkgate session, so that neither a
/// bug nor a slow or locked database can hold a connection for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// A transaction left idle this long (a bug, a request cancelled
    /// half-way) is ended, releasing its locks, instead of blocking the
    /// job's fence and the sink's VACUUM.
    pub idle_in_transaction: Duration,
    /// A statement running this long is cancelled. Promotions and upload
    /// `COPY`s lift it for their own transaction.
    pub statement: Duration,
    /// A lock waited for this long is given up.
    pub lock: Duration,
}

impl From<&DatabaseConfig> for SessionLimits {
    fn from(config: &DatabaseConfig) -> Self {
        SessionLimits {
            idle_in_transaction: Duration::from_millis(config.idle_in_transaction_timeout_ms),
            statement: Duration::from_millis(config.db_statement_timeout_ms),
            lock: Duration::from_millis(config.db_lock_timeout_ms),
        }
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        use crate::config::defaults;
        SessionLimits {
            idle_in_transaction: Duration::from_millis(defaults::IDLE_IN_TRANSACTION_TIMEOUT_MS),
            statement: Duration::from_millis(defaults::DB_STATEMENT_TIMEOUT_MS),
            lock: Duration::from_millis(defaults::DB_LOCK_TIMEOUT_MS),
        }
    }
}

/// How sinkgate's sessions present themselves (`application_name`
/// `sinkgate`, for `pg_stat_activity`) and the [`SessionLimits`] the server
/// enforces on them; a zero duration turns that limit off.
///
/// sinkgate never waits on a client inside a transaction between
/// statements: an upload streams into a `COPY`, which is not idle.
pub fn session_options(options: PgConnectOptions, limits: &SessionLimits) -> PgConnectOptions {
    let ms = |limit: Duration| format!("{}ms", limit.as_millis());
    options.application_name("sinkgate").options([
        (
            "idle_in_transaction_session_timeout",
            ms(limits.idle_in_transaction),
        ),
        ("statement_timeout", ms(limits.statement)),
        ("lock_timeout", ms(limits.lock)),
    ])
}

/// Applies pending migrations; a no-op when all are applied. They run
/// without the sessions' statement and lock limits (a migration may rewrite
/// a large table, or wait for the tables it alters), on a connection that
/// is closed afterwards rather than returned to the pool with them lifted.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::Executor::execute(&mut conn, "SET statement_timeout = 0; SET lock_timeout = 0").await?;
    MIGRATOR.run(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// Whether the database answers as a primary: a standby (reached through
/// a failover address before it moves on) can take no write.
pub async fn is_primary(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT NOT pg_is_in_recovery() AS "primary!""#)
        .fetch_one(pool)
        .await
}

/// Whether every embedded migration is applied (for `/readyz`).
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<i64> =
        sqlx::query_scalar!("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?;
    Ok(MIGRATOR
        .iter()
        .all(|migration| applied.contains(&migration.version)))
}

/// Quotes an SQL identifier (`"` doubled), for the per-job tables whose names
/// are only known at run time.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (`'` doubled; `standard_conforming_strings`
/// is on, so backslashes are plain characters).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A schema-qualified, quoted table name.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}
