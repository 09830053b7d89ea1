//! The `server_sent_events` binary: parse the configuration, bind, serve until SIGINT/SIGTERM.

use clap::Parser;
use server_sent_events::config::{Cli, Command};
use server_sent_events::server;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|e| {
        eprintln!("invalid log filter {:?} ({e}); using 'info'", config.log);
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = match tokio::net::TcpListener::bind(config.bind).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(bind = %config.bind, error = %e, "cannot listen");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match listener.local_addr() {
                Ok(address) => tracing::info!(%address, "listening"),
                Err(e) => tracing::warn!(error = %e, "listening on an unknown address"),
            }
            match server::run(listener, config, server::shutdown_signal()).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "server failed");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
