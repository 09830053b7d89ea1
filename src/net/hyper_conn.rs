//! Connections served by hyper: HTTP/1.1 requests the [`lean`](super::lean) path does not take
//! (from the connection's first unconsumed byte on), HTTP/2 (cleartext with prior knowledge, or
//! chosen by ALPN over TLS) and HTTPS.
//!
//! Things added around hyper. The socket is wrapped in [`TimedIo`], which fails a write the
//! client has taken no byte of for the write timeout (hyper has no such timeout of its own).
//! When hyper is done with an HTTP/1.1 connection it hands the socket back instead of closing
//! it: the server's side is shut down and what the client still sends is read and dropped for
//! a bounded time ([`linger`]), as nginx's lingering close does. Otherwise a client still
//! uploading a body that was refused early (413, 429) gets a reset and never reads the answer.
//! And on HTTP/2 each request gets a kill token of its own ([`StreamExec`]): a slow consumer
//! is reset alone (`RST_STREAM`), its siblings on the connection go on.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{Connection, HEADER_READ_TIMEOUT};
use crate::api::{ConnectionKill, PeerAddr};

/// Longest a lingering close lasts.
const LINGER_TIME: Duration = Duration::from_secs(5);
/// A lingering close ends when the client sends nothing for this long.
const LINGER_IDLE: Duration = Duration::from_secs(2);
/// Most bytes read and dropped by a lingering close.
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// Streams one HTTP/2 connection may have open at once (nginx: 128).
const H2_MAX_STREAMS: u32 = 128;
/// What a client may send on one HTTP/2 stream, and on the whole connection, before the server
/// reads it: bounds the request bodies buffered per connection.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONN_WINDOW: u32 = 1024 * 1024;
/// Bytes of a response hyper takes from a stream's body ahead of the client's flow-control
/// window. The rest waits in the Hub's queue, bounded by `--queue-max-bytes`.
const H2_SEND_BUFFER: usize = 64 * 1024;
/// HTTP/2 pings: a peer that answers none within the timeout is gone, and its connection
/// is closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves a plain TCP connection with HTTP/1.1 keep-alive until the client closes it, its kill
/// fires, or it is stopped (then gracefully: the response in flight completes first); then
/// lingers.
pub(crate) async fn serve(stream: TcpStream, app: Router, conn: Connection) {
    let io = TimedIo::new(stream, conn.shared.settings.write_timeout);
    if let Some(io) = serve_h1(io, app, &conn).await {
        tokio::select! {
            () = linger(io.stream) => {}
            _ = conn.kill.cancelled() => {}
        }
    }
}

/// Serves a cleartext HTTP/2 connection (the client sent the HTTP/2 preface: prior knowledge,
/// as proxies and ingresses speak to upstreams).
pub(crate) async fn serve_h2c(stream: TcpStream, app: Router, conn: Connection) {
    let io = TimedIo::new(stream, conn.shared.settings.write_timeout);
    serve_h2(io, app, &conn).await;
}

/// Serves an HTTPS connection: the TLS handshake (within the header timeout), then HTTP/2 or
/// HTTP/1.1 as ALPN chose.
pub(crate) async fn serve_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    conn: Connection,
) {
    let io = TimedIo::new(stream, conn.shared.settings.write_timeout);
    let handshake = tokio::select! {
        done = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(io)) => done,
        _ = conn.kill.cancelled() => return,
        _ = conn.stop.cancelled() => return,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
            return;
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_h2(tls, app, &conn).await;
        return;
    }
    if let Some(mut tls) = serve_h1(tls, app, &conn).await {
        // close_notify and our side's FIN, then the lingering close on the socket.
        let shut = tokio::select! {
            shut = tokio::time::timeout(LINGER_IDLE, tls.shutdown()) => matches!(shut, Ok(Ok(()))),
            _ = conn.kill.cancelled() => false,
        };
        if shut {
            let stream = tls.into_inner().0.stream;
            tokio::select! {
                () = drain(stream) => {}
                _ = conn.kill.cancelled() => {}
            }
        }
    }
}

/// Serves HTTP/1.1 on `io` until the client closes it, its kill fires, or it is stopped; hands
/// `io` back when hyper ended the connection cleanly (for a lingering close).
async fn serve_h1<I>(io: I, app: Router, conn: &Connection) -> Option<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let token = ConnectionKill::new(conn.kill.clone());
    let peer = PeerAddr(conn.peer);
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(token.clone());
        req.extensions_mut().insert(peer);
        // Boxed so the connection is `Unpin` and can hand its socket back (see `into_parts`).
        Box::pin(app.clone().oneshot(req))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let mut http = builder.serve_connection(TokioIo::new(io), service);
    let (kill, stop) = (&conn.kill, &conn.stop);
    let done = tokio::select! {
        done = poll_fn(|cx| http.poll_without_shutdown(cx)) => done,
        _ = kill.cancelled() => return None,
        _ = stop.cancelled() => {
            Pin::new(&mut http).graceful_shutdown();
            tokio::select! {
                done = poll_fn(|cx| http.poll_without_shutdown(cx)) => done,
                _ = kill.cancelled() => return None,
            }
        }
    };
    match done {
        Ok(()) => Some(http.into_parts().io.into_inner()),
        Err(e) => {
            log_error(conn, &e);
            None
        }
    }
}

/// Serves HTTP/2 on `io` until the client closes it or its kill fires; when stopped, sends
/// GOAWAY and lets the streams in flight end (the Hub ends the event streams at shutdown).
async fn serve_h2<I>(io: I, app: Router, conn: &Connection)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exec = StreamExec::default();
    let handoff = exec.next.clone();
    let connection_kill = conn.kill.clone();
    let peer = PeerAddr(conn.peer);
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // Killing this token resets this stream only; the connection's kill ends them all.
        let kill = connection_kill.child_token();
        *handoff.lock().unwrap_or_else(|p| p.into_inner()) = Some(kill.clone());
        req.extensions_mut().insert(ConnectionKill::new(kill));
        req.extensions_mut().insert(peer);
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http2::Builder::new(exec);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let mut http = builder.serve_connection(TokioIo::new(io), service);
    let (kill, stop) = (&conn.kill, &conn.stop);
    let done = tokio::select! {
        done = &mut http => done,
        _ = kill.cancelled() => return,
        _ = stop.cancelled() => {
            Pin::new(&mut http).graceful_shutdown();
            tokio::select! {
                done = &mut http => done,
                _ = kill.cancelled() => return,
            }
        }
    };
    if let Err(e) = done {
        log_error(conn, &e);
    }
}

fn log_error(conn: &Connection, e: &hyper::Error) {
    if is_write_timeout(e) {
        conn.write_timed_out();
    } else {
        tracing::debug!(peer = %conn.peer, error = %e, "connection error");
    }
}

/// Runs each HTTP/2 stream of a connection as a task of its own that ends, resetting the stream
/// (`RST_STREAM`, CANCEL), when the stream's kill token fires: the Hub fires it for a slow
/// consumer, whose body hyper would not poll again while the client's flow-control window is
/// shut. hyper calls the service for a stream and hands the stream to the executor right
/// after, on the connection's task, so the token set by the one is the one taken by the other.
#[derive(Clone, Default)]
struct StreamExec {
    next: Arc<Mutex<Option<CancellationToken>>>,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let kill = self.next.lock().unwrap_or_else(|p| p.into_inner()).take();
        tokio::spawn(async move {
            match kill {
                Some(kill) => {
                    tokio::select! {
                        () = stream => {}
                        () = kill.cancelled() => {}
                    }
                }
                None => stream.await,
            }
        });
    }
}

fn is_write_timeout(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        source = err.source();
    }
    false
}

/// Ends our side of the connection, then [`drain`]s it.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_ok() {
        drain(stream).await;
    }
}

/// Reads and drops what the client still sends after our side ended, until it closes its
/// side, is idle for [`LINGER_IDLE`], sent [`LINGER_BYTES`] or [`LINGER_TIME`] passed; then the
/// socket is closed without unread bytes, so no reset destroys the answer the client has not
/// read yet.
async fn drain(stream: TcpStream) {
    let end = Instant::now() + LINGER_TIME;
    let mut dropped = 0usize;
    while dropped < LINGER_BYTES {
        let idle_end = (Instant::now() + LINGER_IDLE).min(end);
        match tokio::time::timeout_at(idle_end, stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        // In a block of its own: a buffer alive across the `.await` would be part of the
        // connection's future.
        let read = {
            let mut buf = [0u8; 8192];
            stream.try_read(&mut buf)
        };
        match read {
            Ok(0) => return,
            Ok(n) => dropped += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        tokio::task::consume_budget().await;
    }
}

/// A socket whose writes fail with `TimedOut` once the client has accepted no byte for
/// `timeout` while something waited to be written. The timer exists only while stalled.
struct TimedIo<S> {
    stream: S,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> TimedIo<S> {
    fn new(stream: S, timeout: Duration) -> Self {
        Self {
            stream,
            timeout,
            stalled: None,
        }
    }

    /// Turns a write's outcome into the timeout's when it is still pending after `timeout`.
    fn watch(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
