//! The transport: the accept loop, serving each TCP connection (the [`lean`] HTTP/1.1 SSE path
//! first, [`hyper_conn`] for everything else: other HTTP/1.1 requests, cleartext HTTP/2 with
//! prior knowledge, and HTTPS with HTTP/2 or HTTP/1.1 when [`tls`] is configured) and closing
//! connections at shutdown.
//!
//! The accept loop is our own (hyper-util) rather than `axum::serve` so that each connection
//! carries a [`ConnectionKill`] token: the Hub fires it to drop a client that stopped reading,
//! and shutdown fires all of them when the grace period is over. It also lets SSE
//! subscriptions take the [`lean`] path, which keeps an idle stream's memory small.
//!
//! Connections are served on [`cores`]: the runtime that accepts them and one more
//! single-threaded runtime per extra worker thread, each on its own thread and parked in its own
//! `epoll`. A connection stays on the core it was handed to (the least loaded at accept), so no
//! worker ever steals, wakes or waits for another; what crosses cores is the publish itself,
//! written straight to a parked stream's socket by its publisher (see `hub::queue`).
//!
//! [`ConnectionKill`]: crate::api::ConnectionKill

pub mod cores;
pub mod hyper_conn;
pub mod lean;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Listen backlog: deep enough for bursts of thousands of connects (the kernel caps it at
/// `net.core.somaxconn`). Tokio's default of 1024 overflowed under such bursts, and each
/// dropped SYN costs the client a one-second retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// How long a client may take to send a request head.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What every connection needs to know besides the router.
pub struct Settings {
    /// How long shutdown lets responses in flight finish before closing connections.
    pub grace: Duration,
    /// A connection whose client accepts no byte for this long while data waits is closed.
    pub write_timeout: Duration,
    /// Connections (of any kind) open at once; beyond it a new connection is answered `503`
    /// and closed at once, so the process never runs out of file descriptors. `None`: no
    /// budget (the open-file limit is unknown).
    pub max_open: Option<usize>,
    /// Counters for write timeouts and connections refused at accept.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Serve HTTPS (`--tls-cert`): every connection starts with a TLS handshake.
    pub tls: Option<Arc<tls::Tls>>,
    /// Threads serving connections (`--worker-threads`), this one included: 1 serves every
    /// connection on the runtime that accepts them.
    pub cores: usize,
}

/// File descriptors left to the store, the Kafka client and logs when every other one is a
/// connection: [`Settings::max_open`] is the open-file limit minus this.
pub const FD_RESERVE: u64 = 32;

/// The answer to a connection accepted beyond [`Settings::max_open`], written without reading.
const FULL_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 87\r\n\r\n{\"error\":\"the server holds its maximum of connections; try again later\",\"retryAfter\":5}";

/// Least time between two "accept failed" log lines.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Lets one event through per interval and counts the ones it holds back.
struct LogLimit {
    interval: Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl LogLimit {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(events held back since the last one let through)` when this one may be logged.
    fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

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

/// Accepts connections on `listener` and serves them with `app` until `stop` is cancelled.
/// Then it stops accepting, lets responses in flight complete (connections close once they
/// are idle) and, after `grace`, closes whatever is still open.
///
/// Whoever cancels `stop` also ends the open streams (the Hub's `close_all`); this loop only
/// handles connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    settings: Settings,
) {
    let shared = Arc::new(Shared {
        settings,
        slots: Arc::new(tokio::sync::Semaphore::new(lean::BULK_SLOTS)),
    });
    let settings = &shared.settings;
    let grace = settings.grace;
    let cores = match cores::Cores::start(settings.cores) {
        Ok(cores) => cores,
        Err(e) => {
            // Fewer threads than configured, not none: say so and serve on this one.
            tracing::error!(error = %e, "cannot start the worker threads; serving on one");
            cores::Cores::single()
        }
    };
    // One listener per server: the first one's threads are the ones `/metrics` shows.
    let _ = settings.metrics.worker_connections.set(cores.trackers());
    let mut accept_log = LogLimit::new(ACCEPT_LOG_INTERVAL);
    // Cancelled when the grace period is over: every connection still open is dropped.
    let hard_stop = CancellationToken::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if settings.max_open.is_some_and(|max| cores.len() >= max) {
                        // At the descriptor budget: say so and let go at once.
                        settings.metrics.accept_refused.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.try_write(FULL_RESPONSE);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let conn = Connection {
                        peer,
                        shared: shared.clone(),
                        stop: stop.clone(),
                        kill: hard_stop.child_token(),
                    };
                    cores.spawn(stream, |stream| serve_connection(stream, app.clone(), conn));
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning, and log at most
                    // once per ACCEPT_LOG_INTERVAL (with how many were not logged).
                    if let Some(suppressed) = accept_log.allow(std::time::Instant::now()) {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    tracing::info!(
        open = cores.len(),
        "shutting down: ending streams and closing connections"
    );
    if tokio::time::timeout(grace, cores.wait()).await.is_err() {
        tracing::warn!(
            open = cores.len(),
            "grace period over, closing remaining connections"
        );
        hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), cores.wait()).await;
    }
    cores.stop().await;
}

/// One accepted connection's context.
/// The listener's settings and the bulk write slots of its connections (see [`lean`]).
pub(crate) struct Shared {
    pub settings: Settings,
    pub slots: Arc<tokio::sync::Semaphore>,
}

pub(crate) struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// What every connection of the listener shares (one reference per connection).
    pub shared: Arc<Shared>,
    /// Cancelled at shutdown: finish the response in flight, then close.
    pub stop: CancellationToken,
    /// Closes the connection now (slow consumer, end of the grace period).
    pub kill: CancellationToken,
}

impl Connection {
    /// Counts and logs a connection closed because its client took no byte for the write
    /// timeout.
    pub fn write_timed_out(&self) {
        self.shared
            .settings
            .metrics
            .write_timeouts
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %self.peer, "client accepted no byte within the write timeout; closing");
    }
}

/// The first bytes of every HTTP/2 connection (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one TCP connection. HTTPS: hyper after the handshake. Cleartext: SSE subscriptions
/// on the [`lean`] path while the requests are plain SSE GETs, then (for anything else) hyper
/// on the same, unconsumed socket, with HTTP/2 when the client opens with its preface.
async fn serve_connection(mut stream: TcpStream, app: Router, conn: Connection) {
    if let Some(tls) = &conn.shared.settings.tls {
        let acceptor = tls.acceptor().clone();
        Box::pin(hyper_conn::serve_tls(stream, acceptor, app, conn)).await;
        return;
    }
    let (stop, kill) = (&conn.stop, &conn.kill);
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
                if lean::serve(&mut stream, request, &app, &conn).await == lean::After::Close {
                    return;
                }
            }
        }
    }
    // Boxed: inline, hyper's connection state would be part of every lean stream's task.
    if opens_with_h2_preface(&stream).await {
        Box::pin(hyper_conn::serve_h2c(stream, app, conn)).await;
    } else {
        Box::pin(hyper_conn::serve(stream, app, conn)).await;
    }
}

/// Whether the client's first bytes are the HTTP/2 preface. Waits (within the header timeout)
/// only while what arrived is a proper beginning of it.
async fn opens_with_h2_preface(stream: &TcpStream) -> bool {
    let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
    loop {
        let mut buf = [0u8; H2_PREFACE.len()];
        let n = match stream.peek(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => return false,
        };
        if !H2_PREFACE.starts_with(&buf[..n]) {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // Part of the preface so far; peeking again at once would spin on the same bytes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_answer_is_well_formed() {
        let text = std::str::from_utf8(FULL_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["retryAfter"], 5);
    }

    #[test]
    fn accept_errors_are_logged_at_most_once_per_interval() {
        let start = std::time::Instant::now();
        let mut limit = LogLimit::new(Duration::from_secs(1));
        assert_eq!(limit.allow(start), Some(0));
        // 20 failures a second, as seen under an fd flood: one line, then the count.
        let logged: Vec<_> = (1..=20)
            .filter_map(|i| limit.allow(start + Duration::from_millis(50 * i)))
            .collect();
        assert_eq!(logged, [19]);
        assert_eq!(limit.allow(start + Duration::from_millis(1500)), None);
        assert_eq!(limit.allow(start + Duration::from_millis(2100)), Some(1));
    }
}
