//! Per-user push routes of `/v2` and `/v3`: `GET /sse?username=`,
//! `POST /message?username=[&event=]`, and on v2 only `POST /broadcast[?event=]`.
//!
//! Publishes go through the Bus: in-process for v2 (and v3 without Kafka), through the Kafka
//! topic for v3 when Kafka is on, so the message reaches the user on every instance.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::auth::Caller;
use super::error::{AppError, Result};
use super::input::{Query, idempotency_key, text_body};
use super::{AppState, Client, ConnectionKill};
use crate::bus::keys::{self, Answer, Begin, MessageKeys};
use crate::bus::{Delivery, Message};
use crate::domain::{Channel, EventName};
use crate::hub::Subscription;
use crate::limits::{Refusal, StreamPermit};

/// Routes of a push channel. Only v2 has `/broadcast`: it reaches this instance's users, which
/// on v3 (whose messages go through Kafka to every instance) would be a silent half-delivery.
pub fn router(channel: Channel) -> Router<AppState> {
    let router = Router::new()
        .route(
            "/sse",
            get(move |caller, state, client, query, headers, kill| {
                subscribe(caller, state, client, query, headers, kill, channel)
            }),
        )
        .route(
            "/message",
            post(move |caller, state, client, query, headers, body| {
                message(caller, state, client, query, headers, body, channel)
            }),
        );
    if channel != Channel::V2 {
        return router;
    }
    router.route(
        "/broadcast",
        post(move |caller, state, client, query, headers, body| {
            broadcast(caller, state, client, query, headers, body, channel)
        }),
    )
}

/// A `200 text/event-stream` response around `body`, uncompressed and unbuffered.
pub fn event_stream_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The id a client last saw: the `Last-Event-ID` header, else the `lastEventId` parameter (for
/// clients that cannot set headers). A header that is not text can match nothing, so it is
/// passed on as an unknown id (the stream then starts with `event: reset`).
pub fn last_event_id<'a>(headers: &'a HeaderMap, query: &'a Query) -> Result<Option<&'a str>> {
    match headers.get("last-event-id") {
        Some(value) => Ok(Some(value.to_str().unwrap_or("\u{fffd}"))),
        None => query.single("lastEventId"),
    }
}

/// Longest a stream resuming with `Last-Event-ID` waits for the bus to catch up with its log
/// (an instance just started, reading back what clients may have missed, or behind the
/// instance the client came from); after it the stream opens anyway, with `event: reset` if
/// what it missed is not there.
const RESUME_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens `user`'s stream on `channel` within the limits: the global and per-address ones
/// (`client`), then the per-user one (in the Hub). A refusal registers nothing.
pub async fn open_stream(
    state: &AppState,
    client: &Client,
    channel: Channel,
    user: &str,
    last_event_id: Option<&str>,
    kill: Option<Extension<ConnectionKill>>,
    expires: Option<std::time::SystemTime>,
) -> Result<Response> {
    let permit = state.open_stream(client)?;
    if let Some(last) = last_event_id
        && !state.bus.wait_caught_up(channel, last, RESUME_WAIT).await
    {
        tracing::debug!(
            channel = channel.as_str(),
            "resuming before the bus caught up with its log"
        );
    }
    let (kill, socket) = match kill {
        Some(Extension(ConnectionKill { token, socket })) => (Some(token), socket),
        None => (None, None),
    };
    let subscription = state
        .hub
        .subscribe(channel, user, last_event_id, kill)
        .map_err(|full| state.refuse(Refusal::PerUser { limit: full.limit }))?;
    if let Some(socket) = socket {
        subscription.write_through(socket);
    }
    tracing::debug!(channel = channel.as_str(), user, "stream opened");
    // A stream authorised by a token ends with it: at `expires` it sends `event: auth_expired`
    // and ends, and the client resumes with a new ticket and `Last-Event-ID`.
    let expiry = expires.map(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        Box::pin(tokio::time::sleep(left))
    });
    Ok(event_stream_response(Body::new(Permitted {
        subscription,
        _permit: permit,
        expiry,
        expired: false,
    })))
}

/// A stream's body together with its place in the limits, given back when the body is
/// dropped, and the end of its authorisation, if it has one.
struct Permitted {
    subscription: Subscription,
    _permit: StreamPermit,
    expiry: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
}

impl http_body::Body for Permitted {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if !self.expired
            && let Some(expiry) = &mut self.expiry
            && expiry.as_mut().poll(cx).is_ready()
        {
            // Through the subscription's queue, after what is queued, like every frame of a
            // stream that publishers may write to themselves.
            self.expired = true;
            self.subscription.end_with(crate::sse::auth_expired_frame());
        }
        std::pin::Pin::new(&mut self.subscription).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.subscription.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.subscription.size_hint()
    }
}

async fn subscribe(
    caller: Caller,
    State(state): State<AppState>,
    client: Client,
    query: Query,
    headers: HeaderMap,
    kill: Option<Extension<ConnectionKill>>,
    channel: Channel,
) -> Result<Response> {
    let user = query.username()?;
    caller.act_as(user.as_str())?;
    let last = last_event_id(&headers, &query)?;
    let expires = caller.0.expires;
    open_stream(&state, &client, channel, user.as_str(), last, kill, expires).await
}

fn event_name(query: &Query) -> Result<Option<EventName>> {
    query
        .single("event")?
        .map(|name| EventName::parse(name).map_err(AppError::BadRequest))
        .transpose()
}

async fn message(
    caller: Caller,
    State(state): State<AppState>,
    client: Client,
    query: Query,
    headers: HeaderMap,
    body: Body,
    channel: Channel,
) -> Result<Response> {
    caller.publish()?;
    let user = query.username()?;
    let event = event_name(&query)?;
    let key = idempotency_key(&headers)?;
    state.spend_publish(&client)?;
    let text = text_body(&headers, body, state.config.max_body_bytes).await?;
    let reservation = match &key {
        None => None,
        Some(key) => {
            let fingerprint = MessageKeys::fingerprint(channel, event.as_ref(), &text);
            match state.message_keys.begin(user.as_str(), key, fingerprint) {
                Begin::New(reservation) => Some(reservation),
                Begin::Replay(answer) => return Ok(respond(answer)),
                Begin::Reused => {
                    return Err(AppError::Unprocessable(
                        "this Idempotency-Key was already used for another message; \
                         use a new key for a new message"
                            .to_owned(),
                    ));
                }
                Begin::InProgress => {
                    return Err(AppError::Conflict {
                        message: "a request with this Idempotency-Key is still in progress; \
                                  retry later"
                            .to_owned(),
                        details: serde_json::Map::new(),
                    });
                }
            }
        }
    };
    let message = Message {
        channel,
        user: user.as_str().to_owned(),
        event,
        data: text,
        id: None,
        key: key.clone(),
    };
    // On failure the reservation is dropped: the key is free for the client's retry.
    let delivery = state
        .bus
        .publish(message)
        .await
        .map_err(|e| AppError::Unavailable(e.to_string()))?;
    let answer = match delivery {
        Delivery::Local { delivered, id } => {
            let id = id.as_ref().map(|id| id.as_str());
            Answer {
                status: 200,
                body: json!({ "delivered": delivered, "id": id }),
            }
        }
        // Acknowledged by the broker: every instance delivers it to the user's streams. A
        // keyed record is delivered once per key: answer with the id it was delivered with
        // (another instance's earlier record of the same key, if there was one).
        Delivery::Cluster { id } => {
            let delivered = match &key {
                Some(key) => {
                    let wait = state.config.kafka_timeout;
                    state
                        .message_keys
                        .delivered_id(user.as_str(), key, wait)
                        .await
                }
                None => None,
            };
            keys::accepted(&delivered.unwrap_or(id))
        }
    };
    if let Some(reservation) = reservation {
        reservation.finish(answer.clone());
    }
    Ok(respond(answer))
}

/// The response of an [`Answer`].
fn respond(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    (status, Json(answer.body)).into_response()
}

async fn broadcast(
    caller: Caller,
    State(state): State<AppState>,
    client: Client,
    query: Query,
    headers: HeaderMap,
    body: Body,
    channel: Channel,
) -> Result<Response> {
    caller.publish()?;
    let event = event_name(&query)?;
    state.spend_publish(&client)?;
    let text = text_body(&headers, body, state.config.max_body_bytes).await?;
    let (delivered, id) = state.hub.broadcast(channel, event.as_ref(), &text).await;
    Ok((
        StatusCode::OK,
        Json(json!({ "delivered": delivered, "id": id.as_str() })),
    )
        .into_response())
}
