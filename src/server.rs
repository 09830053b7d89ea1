//! Builds the application state, runs background tasks and serves HTTP/1.1 connections until
//! shutdown, then ends open streams and closes connections within `--shutdown-timeout`.
//!
//! The accept loop is our own (hyper-util) rather than `axum::serve` so that each connection
//! carries a [`ConnectionKill`] token: the Hub fires it to drop a client that stopped reading,
//! and shutdown fires all of them when the grace period is over. It also lets SSE
//! subscriptions take the [`lean`] path, which keeps an idle stream's memory small.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::api::{self, AppState, ConnectionKill};
use crate::bus::kafka::{KafkaBus, KafkaConfig};
use crate::bus::{Bus, LocalBus};
use crate::config::{Config, StoreKind};
use crate::hub::{Hub, HubConfig};
use crate::lean;
use crate::metrics::Metrics;
use crate::reports::{DynamoConfig, DynamoStore, ReportStore, SqliteStore, StoreError};

/// Serves `config` on `listener` until `shutdown` completes, then shuts down gracefully.
///
/// Fails when the report store cannot be opened (e.g. an unwritable SQLite path).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(
        HubConfig {
            queue_size: config.queue_size as usize,
            history_size: config.history_size as usize,
            history_max_bytes: config.history_max_bytes,
            history_ttl: config.history_ttl,
            retry: config.retry,
        },
        metrics.clone(),
    );
    let store = open_store(&config)
        .await
        .map_err(|e| std::io::Error::other(format!("cannot open the report store: {e}")))?;
    tracing::info!(store = store.name(), "report store ready");
    let stop = CancellationToken::new();
    let background = TaskTracker::new();
    let bus: Arc<dyn Bus> = match &config.kafka_brokers {
        Some(brokers) => {
            let kafka = KafkaConfig {
                brokers: brokers.clone(),
                topic_v3: config.kafka_topic_v3.clone(),
                topic_v4: config.kafka_topic_v4.clone(),
                timeout: config.kafka_timeout,
                max_message_bytes: config.max_body_bytes as usize,
            };
            tracing::info!(%brokers, topic_v3 = %kafka.topic_v3, topic_v4 = %kafka.topic_v4, "kafka on");
            KafkaBus::start(
                kafka,
                hub.clone(),
                metrics.clone(),
                stop.clone(),
                &background,
            )
            .map_err(|e| std::io::Error::other(format!("invalid kafka configuration: {e}")))?
        }
        None => Arc::new(LocalBus::new(hub.clone())),
    };
    let state = AppState {
        hub: hub.clone(),
        metrics,
        config: Arc::new(config.clone()),
        shutdown: stop.clone(),
        bus,
        store,
    };
    background.spawn(hub.clone().run_maintenance(config.keep_alive, stop.clone()));

    let app = api::app(state);
    let connections = TaskTracker::new();
    // Cancelled when the grace period is over: every connection still open is dropped.
    let hard_stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, app.clone(), stop.clone(), hard_stop.child_token()));
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    tracing::info!(
        open = connections.len(),
        "shutting down: ending streams and closing connections"
    );
    stop.cancel();
    hub.close_all();
    connections.close();
    if tokio::time::timeout(config.shutdown_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "grace period over, closing remaining connections"
        );
        hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
    }
    background.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), background.wait()).await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Listen backlog: deep enough for bursts of thousands of connects (the kernel caps it at
/// `net.core.somaxconn`). Tokio's default of 1024 overflowed under such bursts, and each
/// dropped SYN costs the client a one-second retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as std does).
///
/// Fails when the address cannot be bound (in use, not local, no permission).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Opens the report store the configuration asks for. SQLite creates its file; DynamoDB only
/// builds a client here (`/readyz` shows whether it answers).
pub async fn open_store(config: &Config) -> Result<Arc<dyn ReportStore>, StoreError> {
    Ok(match config.store_kind() {
        StoreKind::Dynamodb => Arc::new(DynamoStore::connect(dynamo_config(config)).await?),
        _ => {
            let path = config.database.clone();
            Arc::new(
                tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))??,
            )
        }
    })
}

/// The DynamoDB settings of `config`.
pub fn dynamo_config(config: &Config) -> DynamoConfig {
    DynamoConfig {
        endpoint: config.dynamodb_endpoint.clone(),
        table: config.dynamodb_table.clone(),
        region: config.dynamodb_region.clone(),
        operation_timeout: config.store_timeout,
        attempt_timeout: config.store_timeout.min(Duration::from_secs(1)),
    }
}

/// Serves one TCP connection: SSE subscriptions on the [`lean`] path while the requests are
/// plain SSE GETs, then (for anything else) hyper on the same, unconsumed socket.
async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    app: Router,
    stop: CancellationToken,
    kill: CancellationToken,
) {
    loop {
        let peeked = tokio::select! {
            peeked = tokio::time::timeout(HEADER_READ_TIMEOUT, lean::peek(&stream)) => match peeked {
                Ok(peeked) => peeked,
                Err(_) => return,
            },
            _ = kill.cancelled() => return,
            // Idle at shutdown (no request yet): close, as hyper's graceful shutdown would.
            _ = stop.cancelled() => return,
        };
        match peeked {
            lean::Peeked::Closed => return,
            lean::Peeked::Hyper => break,
            lean::Peeked::Sse(request) => {
                if lean::serve(&mut stream, request, &app, &stop, &kill).await == lean::After::Close
                {
                    return;
                }
            }
        }
    }
    serve_with_hyper(stream, app, stop, kill).await;
}

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

async fn serve_with_hyper(
    stream: tokio::net::TcpStream,
    app: Router,
    stop: CancellationToken,
    kill: CancellationToken,
) {
    let token = ConnectionKill(kill.clone());
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(token.clone());
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = kill.cancelled() => return,
        _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = kill.cancelled() => {}
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
