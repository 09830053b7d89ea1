//! Connections served by hyper: every request the [`lean`](super::lean) path does not take,
//! from the connection's first unconsumed byte on.

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::HEADER_READ_TIMEOUT;
use crate::api::ConnectionKill;

/// Serves `stream` with HTTP/1.1 keep-alive until the client closes it, `kill` fires, or
/// `stop` is cancelled (then gracefully: the response in flight completes first).
pub async fn serve(
    stream: TcpStream,
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
