//! Connections served by hyper: every request the [`lean`](super::lean) path does not take,
//! from the connection's first unconsumed byte on.
//!
//! Two things are added around hyper. The socket is wrapped in [`TimedIo`], which fails a
//! write the client has taken no byte of for the write timeout (hyper has no such timeout of
//! its own). And when hyper is done with a connection it hands the socket back instead of
//! closing it: the server's side is shut down and what the client still sends is read and
//! dropped for a bounded time ([`linger`]), as nginx's lingering close does. Otherwise a client
//! still uploading a body that was refused early (413, 429) gets a reset and never reads the
//! answer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use super::{Connection, HEADER_READ_TIMEOUT};
use crate::api::{ConnectionKill, PeerAddr};

/// Longest a lingering close lasts.
const LINGER_TIME: Duration = Duration::from_secs(5);
/// A lingering close ends when the client sends nothing for this long.
const LINGER_IDLE: Duration = Duration::from_secs(2);
/// Most bytes read and dropped by a lingering close.
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// Serves the connection with HTTP/1.1 keep-alive until the client closes it, its kill fires,
/// or it is stopped (then gracefully: the response in flight completes first); then lingers.
pub(crate) async fn serve(stream: TcpStream, app: Router, conn: Connection) {
    let token = ConnectionKill(conn.kill.clone());
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
    let io = TimedIo {
        stream,
        timeout: conn.shared.settings.write_timeout,
        stalled: None,
    };
    let mut http = builder.serve_connection(TokioIo::new(io), service);
    let (kill, stop) = (&conn.kill, &conn.stop);
    let done = tokio::select! {
        done = poll_fn(|cx| http.poll_without_shutdown(cx)) => done,
        _ = kill.cancelled() => return,
        _ = stop.cancelled() => {
            Pin::new(&mut http).graceful_shutdown();
            tokio::select! {
                done = poll_fn(|cx| http.poll_without_shutdown(cx)) => done,
                _ = kill.cancelled() => return,
            }
        }
    };
    match done {
        Ok(()) => {
            let stream = http.into_parts().io.into_inner().stream;
            tokio::select! {
                () = linger(stream) => {}
                _ = kill.cancelled() => {}
            }
        }
        Err(e) if is_write_timeout(&e) => {
            conn.write_timed_out();
        }
        Err(e) => tracing::debug!(peer = %conn.peer, error = %e, "connection error"),
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

/// Ends our side of the connection, then reads and drops what the client still sends, until
/// it closes its side, is idle for [`LINGER_IDLE`], sent [`LINGER_BYTES`] or [`LINGER_TIME`]
/// passed; then the socket is closed without unread bytes, so no reset destroys the answer
/// the client has not read yet.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
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
struct TimedIo {
    stream: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl TimedIo {
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

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedIo {
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
