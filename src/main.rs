//! The `sinkgate` command: serve, migrate, print the OpenAPI document.

use clap::{Parser, Subcommand};
use sinkgate::config::{Config, DatabaseConfig};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            init_tracing(&config.log_format);
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            sinkgate::serve(config, listener, shutdown_signal()).await
        }
        Command::Migrate(database) => {
            init_tracing("human");
            let pool = sinkgate::db::connect(&database).await?;
            sinkgate::db::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Openapi => {
            println!("{}", sinkgate::http::openapi().to_pretty_json()?);
            Ok(())
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "sinkgate=info,tower_http=info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
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
