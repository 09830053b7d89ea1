//! `/v1/sse`: the original demo's stream: `data: hi!` at once and every `--v1-interval`, and a
//! `: keep-alive-text` comment after every `--v1-keep-alive` without an event.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures_util::stream;
use tokio::time::{Instant, sleep_until};

use super::auth::Caller;
use super::error::Result;
use super::input::Query;
use super::push::event_stream_response;
use super::{AppState, Client};
use crate::domain::Channel;
use crate::limits::StreamPermit;
use crate::metrics::Metrics;
use crate::sse;

/// Routes under `/v1`.
pub fn router() -> Router<AppState> {
    Router::new().route("/sse", get(stream_hi))
}

/// Counts the stream as open on `v1` while it lives.
struct OpenGuard(Arc<Metrics>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connection_closed(Channel::V1);
    }
}

struct Timers {
    next_hi: Instant,
    next_keep_alive: Instant,
    /// When the caller's token expires (the stream then ends with `auth_expired`).
    expires: Option<Instant>,
    expired: bool,
    _open: OpenGuard,
    _permit: StreamPermit,
}

async fn stream_hi(
    caller: Caller,
    State(state): State<AppState>,
    client: Client,
    query: Query,
) -> Result<Response> {
    let user = query.username()?;
    caller.act_as(user.as_str())?;
    let permit = state.open_stream(&client)?;
    tracing::info!(user = user.as_str(), "v1 stream opened");
    let (interval, keep_alive) = (state.config.v1_interval, state.config.v1_keep_alive);
    state.metrics.connection_opened(Channel::V1);
    let now = Instant::now();
    let expires = caller.0.expires.map(|at| {
        now + at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
    });
    let timers = Timers {
        next_hi: now,
        next_keep_alive: now + keep_alive,
        expires,
        expired: false,
        _open: OpenGuard(state.metrics.clone()),
        _permit: permit,
    };
    let shutdown = state.shutdown.clone();
    let frames = stream::unfold(timers, move |mut t| {
        let shutdown = shutdown.clone();
        async move {
            if t.expired {
                return None;
            }
            let hi = t.next_hi <= t.next_keep_alive;
            let due = if hi { t.next_hi } else { t.next_keep_alive };
            let expires = t.expires;
            tokio::select! {
                _ = shutdown.cancelled() => None,
                _ = sleep_until(expires.unwrap_or(due)), if expires.is_some_and(|e| e <= due) => {
                    t.expired = true;
                    Some((Ok::<_, Infallible>(sse::auth_expired_frame()), t))
                }
                _ = sleep_until(due) => {
                    let frame = if hi {
                        t.next_hi += interval;
                        t.next_keep_alive = Instant::now() + keep_alive;
                        sse::encode_event(None, None, "hi!")
                    } else {
                        t.next_keep_alive += keep_alive;
                        Bytes::from_static(sse::KEEP_ALIVE)
                    };
                    Some((Ok::<_, Infallible>(frame), t))
                }
            }
        }
    });
    Ok(event_stream_response(Body::from_stream(frames)))
}
