//! The `server_sent_events` binary: parse the configuration, bind, serve until SIGINT/SIGTERM.

use clap::Parser;
use server_sent_events::config::{Cli, Command};
use server_sent_events::reports::{DynamoStore, InitOutcome};
use server_sent_events::server;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    one_malloc_arena();
    // One worker: it accepts connections, serves its share of them and runs the background
    // tasks; the other `--worker-threads` are single-threaded runtimes of their own
    // (`net::cores`), not workers of this one.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve(cli)),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own arena. An idle stream's allocations are
/// made on its worker thread, and with a second arena an idle stream cost about 300 B more
/// (3,131–3,145 B per idle connection with two worker threads, 2,828–2,873 B with one arena).
/// One arena costs some CPU when threads allocate at once (about a tenth more per delivery at
/// 2,000 msgs/s with two threads: BENCHMARKS.md, "Every core"); memory per stream is what this
/// server keeps small, so one it is. An operator's `MALLOC_ARENA_MAX` is left alone.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: `mallopt` only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

async fn serve(cli: Cli) -> std::process::ExitCode {
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
        Command::InitDynamodb => {
            let cfg = server::dynamo_config(&config);
            let table = cfg.table.clone();
            let outcome = match DynamoStore::connect(cfg).await {
                Ok(store) => store.init_table().await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(InitOutcome::Created) => {
                    println!("created table {table} with index UserIdIndex")
                }
                Ok(InitOutcome::AlreadyExists) => println!("table {table} already exists"),
                Err(e) => {
                    eprintln!("cannot create table {table}: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Command::Token { sub, scope, ttl } => {
            let Some(secret) = &config.jwt_secret else {
                eprintln!(
                    "server_sent_events token: needs --jwt-secret (SSE_JWT_SECRET) to sign with"
                );
                return std::process::ExitCode::from(2);
            };
            match server_sent_events::auth::mint(&secret.0, &sub, &scope, ttl) {
                Ok(token) => {
                    println!("{token}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("server_sent_events token: {e}");
                    std::process::ExitCode::from(2)
                }
            }
        }
        Command::Serve => {
            let checked = config.check_exposure().and_then(|()| {
                let auth = config.auth_config()?;
                server_sent_events::auth::Auth::new(&auth)?;
                if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
                    server_sent_events::net::tls::Tls::load(cert, key)?;
                }
                Ok(())
            });
            if let Err(message) = checked {
                eprintln!("server_sent_events: {message}");
                return std::process::ExitCode::from(2);
            }
            let listener = match server_sent_events::net::bind(config.bind) {
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
