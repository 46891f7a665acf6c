//! Connection pool and the embedded migrations of sinkgate's metadata tables.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

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
        .connect_with(session_options(
            options,
            Duration::from_millis(config.idle_in_transaction_timeout_ms),
        ))
        .await?;
    Ok(pool)
}

/// How sinkgate's sessions present themselves and what the server enforces
/// on them: named `sinkgate` (for `pg_stat_activity`), and a transaction
/// left idle for `idle_in_transaction` (a bug, a request cancelled half-way)
/// is ended by PostgreSQL, releasing its locks, instead of blocking the
/// job's fence and the sink's VACUUM for ever. 0 turns that off.
///
/// sinkgate never waits on a client inside a transaction between
/// statements: an upload streams into a `COPY`, which is not idle.
pub fn session_options(
    options: PgConnectOptions,
    idle_in_transaction: Duration,
) -> PgConnectOptions {
    options.application_name("sinkgate").options([(
        "idle_in_transaction_session_timeout",
        format!("{}ms", idle_in_transaction.as_millis()),
    )])
}

/// Applies pending migrations; a no-op when all are applied.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
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
