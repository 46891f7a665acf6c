//! The `sinkgate` command: serve, migrate, print the OpenAPI document, and
//! the command-line client for operators (`jobs`, `checkpoints`, `recovery`,
//! `tokens`).

use clap::{Parser, Subcommand};
use sinkgate::cli::{
    CheckpointsCommand, Connection, JobsCommand, SavepointsCommand, TokensCommand,
};
use sinkgate::config::{Config, DatabaseConfig, LogFormat};

#[derive(Parser)]
#[command(
    name = "sinkgate",
    version,
    about = "Exactly-once sink and checkpoint coordinator for PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (applies migrations first).
    Serve(Config),
    /// Apply the database migrations and exit.
    Migrate(DatabaseConfig),
    /// Print the OpenAPI document.
    Openapi,
    /// Manage jobs of a running service.
    Jobs {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Inspect and abort checkpoints.
    Checkpoints {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: CheckpointsCommand,
    },
    /// Where a job's processors resume: offsets and state handles.
    Recovery {
        #[command(flatten)]
        connection: Connection,
        job: String,
    },
    /// Rows a promotion kept out of the sink (policy `dead_letter`).
    DeadLetters {
        #[command(flatten)]
        connection: Connection,
        job: String,
        /// Only dead letters with a larger id (paging).
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Promote a job's decided checkpoint now, after fixing what blocked it.
    Promote {
        #[command(flatten)]
        connection: Connection,
        job: String,
    },
    /// Take, list, delete and restart from savepoints.
    Savepoints {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: SavepointsCommand,
    },
    /// Issue, list and revoke processor tokens.
    Tokens {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: TokensCommand,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => {
            init_tracing(config.log_format);
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            sinkgate::serve(config, listener, shutdown_signal()).await
        }
        Command::Migrate(database) => {
            init_tracing(LogFormat::Human);
            let pool = sinkgate::db::connect(&database).await?;
            sinkgate::db::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Openapi => {
            println!("{}", sinkgate::http::openapi().to_pretty_json()?);
            Ok(())
        }
        Command::Jobs {
            connection,
            command,
        } => sinkgate::cli::jobs(&connection, command).await,
        Command::Checkpoints {
            connection,
            command,
        } => sinkgate::cli::checkpoints(&connection, command).await,
        Command::Recovery { connection, job } => sinkgate::cli::recovery(&connection, &job).await,
        Command::DeadLetters {
            connection,
            job,
            after,
            limit,
        } => sinkgate::cli::dead_letters(&connection, &job, after, limit).await,
        Command::Promote { connection, job } => sinkgate::cli::promote(&connection, &job).await,
        Command::Savepoints {
            connection,
            command,
        } => sinkgate::cli::savepoints(&connection, command).await,
        Command::Tokens {
            connection,
            command,
        } => sinkgate::cli::tokens(&connection, command).await,
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "sinkgate=info,tower_http=info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
