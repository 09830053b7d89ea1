//! Builds the application state (Hub, Bus, report store), runs the background tasks and hands
//! the router to the transport ([`crate::net`]) until shutdown; then ends open streams, lets
//! the transport close connections within `--shutdown-timeout`, and stops the tasks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::auth::Auth;
use crate::bus::kafka::{KafkaBus, KafkaConfig};
use crate::bus::keys::MessageKeys;
use crate::bus::relay::Relay;
use crate::bus::{Bus, LocalBus};
use crate::config::{Config, StoreKind};
use crate::hub::{Hub, HubConfig};
use crate::limits::{self, Limits};
use crate::metrics::Metrics;
use crate::net;
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
            queue_max_bytes: config.queue_max_bytes as usize,
            history_size: config.history_size as usize,
            history_max_bytes: config.history_max_bytes,
            history_ttl: config.history_ttl,
            retry: config.retry,
            max_per_user: config.max_connections_per_user.map(|n| n as usize),
        },
        metrics.clone(),
    );
    let open_files = limits::open_file_limit();
    let limits = Limits::new(config.limits(open_files));
    let max_streams = limits.config().max_streams;
    let max_open = open_files.map(|n| n.saturating_sub(net::FD_RESERVE).max(1) as usize);
    if let Some(files) = open_files
        && max_streams as u64 > files.saturating_sub(net::FD_RESERVE)
    {
        tracing::warn!(
            max_connections = max_streams,
            open_files = files,
            "--max-connections is above the open-file limit: the process will run out of file descriptors before it refuses streams"
        );
    }
    tracing::info!(
        max_connections = max_streams,
        open_files,
        "connection limits"
    );
    let store = open_store(&config)
        .await
        .map_err(|e| std::io::Error::other(format!("cannot open the report store: {e}")))?;
    tracing::info!(store = store.name(), "report store ready");
    let auth = config
        .auth_config()
        .and_then(|c| Auth::new(&c))
        .map(Arc::new)
        .map_err(std::io::Error::other)?;
    tracing::info!(auth = ?auth.mode(), "access control");
    let stop = CancellationToken::new();
    let background = TaskTracker::new();
    let message_keys = MessageKeys::new(
        config.idempotency_window,
        config.idempotency_max_keys as usize,
    );
    let bus: Arc<dyn Bus> = match &config.kafka_brokers {
        Some(brokers) => {
            let kafka = KafkaConfig {
                brokers: brokers.clone(),
                topic_v3: config.kafka_topic_v3.clone(),
                topic_v4: config.kafka_topic_v4.clone(),
                timeout: config.kafka_timeout,
                max_message_bytes: config.max_body_bytes as usize,
                history_ttl: config.history_ttl,
                history_records: config.kafka_history_records,
                ready_lag: config.kafka_ready_lag,
                metadata_refresh: config.kafka_metadata_refresh,
                fetch_wait: config.kafka_fetch_wait,
                start_ms: crate::bus::partitions::now_ms(),
            };
            tracing::info!(%brokers, topic_v3 = %kafka.topic_v3, topic_v4 = %kafka.topic_v4, "kafka on");
            KafkaBus::start(
                kafka,
                hub.clone(),
                message_keys.clone(),
                metrics.clone(),
                stop.clone(),
                &background,
            )
            .map_err(|e| std::io::Error::other(format!("invalid kafka configuration: {e}")))?
        }
        None => Arc::new(LocalBus::new(hub.clone())),
    };
    // A request relays its own event within the Kafka timeout after its write, which takes
    // at most two store timeouts (a DynamoDB write whose answer was lost is then settled by a
    // fence); the loop leaves events that young alone.
    let settle = config.kafka_timeout + 2 * config.store_timeout + Duration::from_secs(3);
    let relay = Arc::new(Relay::new(
        store.clone(),
        bus.clone(),
        hub.clone(),
        metrics.clone(),
        settle,
    ));
    let writes = TaskTracker::new();
    let state = AppState {
        hub: hub.clone(),
        metrics,
        config: Arc::new(config.clone()),
        shutdown: stop.clone(),
        bus,
        store,
        limits,
        relay: relay.clone(),
        writes: writes.clone(),
        message_keys,
        auth,
    };
    background.spawn(hub.clone().run_maintenance(config.keep_alive, stop.clone()));
    background.spawn(relay.clone().run(stop.clone()));

    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = Arc::new(net::tls::Tls::load(cert, key).map_err(std::io::Error::other)?);
            background.spawn(tls.clone().watch(stop.clone()));
            tracing::info!(cert = %cert.display(), "HTTPS on (HTTP/2 and HTTP/1.1)");
            Some(tls)
        }
        _ => None,
    };
    let net_settings = net::Settings {
        grace: config.shutdown_timeout,
        write_timeout: config.write_timeout,
        max_open,
        metrics: state.metrics.clone(),
        tls,
        cores: config.worker_threads(),
    };
    let app = api::app(state);
    let trigger = async {
        shutdown.await;
        // Streams end at once; the transport then closes connections within the grace period.
        stop.cancel();
        hub.close_all();
    };
    tokio::join!(
        net::serve(listener, app, stop.clone(), net_settings),
        trigger
    );
    // Writes still in flight finish (each is bounded by the store timeout and its relay by the
    // Kafka timeout), then whatever the outbox holds is relayed one last time.
    writes.close();
    let in_flight = config.store_timeout + config.kafka_timeout + Duration::from_secs(2);
    if tokio::time::timeout(in_flight, writes.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: store writes still running after {in_flight:?}");
    }
    match tokio::time::timeout(in_flight, relay.drain()).await {
        Ok(Ok(relayed)) if relayed > 0 => tracing::info!(relayed, "shutdown: outbox relayed"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "shutdown: outbox not relayed (kept for the next start)")
        }
        Err(_) => tracing::warn!("shutdown: outbox relay timed out (kept for the next start)"),
    }
    background.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), background.wait()).await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Opens the report store the configuration asks for. SQLite creates its file; DynamoDB only
/// builds a client here (`/readyz` shows whether it answers).
pub async fn open_store(config: &Config) -> Result<Arc<dyn ReportStore>, StoreError> {
    Ok(match config.store_kind() {
        StoreKind::Dynamodb => Arc::new(DynamoStore::connect(dynamo_config(config)).await?),
        _ => {
            let path = config.database.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            Arc::new(store.with_timeout(config.store_timeout))
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
