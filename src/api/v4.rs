//! `/v4`: the report status dashboard API. Reports live in the [`ReportStore`] (the source of
//! truth); each successful write is then announced to the user's streams through the Bus.
//!
//! - `GET /sse?user_id=UUID`: the user's event stream (`report_created`, `report_status_update`);
//! - `POST /new/report?user_id=UUID`: `201` with a new `pending` report;
//! - `GET /reports?user_id=UUID`: `200` with the user's reports, oldest first;
//! - `GET /report/{reportId}?user_id=UUID`: `200` with one report, `404` when not the user's;
//! - `PUT /report?user_id=UUID`, `{"id","status"}`: `200` with the moved report, `409` when the
//!   state machine forbids the move.
//!
//! Writes take an optional `Idempotency-Key` (kept by the store with the write, see
//! [`crate::reports::idempotency`]): a retry gets the first answer and changes nothing.
//!
//! Every store read is bounded by `--store-timeout` plus a second and every write by twice
//! that (room to settle a write whose answer was lost), so a store that hangs still gets a
//! `503` in bounded time. Each write records its event in the store's outbox in the
//! same transaction, and the request then relays it ([`crate::bus::relay`]). A write and its
//! relay run on a task of their own, which shutdown waits for: a client that hangs up cannot
//! leave a stored change unannounced.
//!
//! [`ReportStore`]: crate::reports::ReportStore

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::auth::Caller;
use super::error::{AppError, Result};
use super::input::{Query, idempotency_key, text_body};
use super::push::{last_event_id, open_stream};
use super::{AppState, Client, ConnectionKill};
use crate::domain::{Channel, ReportId, UserId};
use crate::reports::{Idempotency, Outcome, Report, ReportStatus, StoreError, TransitionError};

/// Added to `--store-timeout` for the outer bound on a store call: the store's own timeouts
/// should fire first, this one only catches a store that ignores them.
const STORE_GRACE: Duration = Duration::from_secs(1);

/// Routes under `/v4`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sse", get(subscribe))
        .route("/new/report", post(create))
        .route("/reports", get(list))
        .route("/report", put(update))
        .route("/report/{report_id}", get(get_one))
}

/// The `user_id` parameter; 400 when missing, empty, repeated or not a UUID.
fn user_id(query: &Query) -> Result<UserId> {
    query
        .required("user_id")?
        .parse()
        .map_err(|_| AppError::BadRequest("query parameter 'user_id' must be a UUID".to_owned()))
}

async fn subscribe(
    caller: Caller,
    State(state): State<AppState>,
    client: Client,
    query: Query,
    headers: HeaderMap,
    kill: Option<Extension<ConnectionKill>>,
) -> Result<Response> {
    let user = user_id(&query)?;
    caller.act_as_user(user)?;
    let last = last_event_id(&headers, &query)?;
    let user = user.to_string();
    let expires = caller.0.expires;
    open_stream(&state, &client, Channel::V4, &user, last, kill, expires).await
}

/// Creating and changing reports count as publishes (`--publish-rate`): each sends an event.
async fn create(
    caller: Caller,
    State(state): State<AppState>,
    client: Client,
    query: Query,
    headers: HeaderMap,
) -> Result<Response> {
    let user = user_id(&query)?;
    caller.act_as_user(user)?;
    let key = keyed(&headers, || "POST /v4/new/report".to_owned())?;
    state.spend_publish(&client)?;
    let writes = state.writes.clone();
    detached(&writes, async move {
        let outcome = bounded_write(&state, state.store.create_keyed(user, key))
            .await?
            .map_err(store_error)?;
        answer(&state, outcome, StatusCode::CREATED).await
    })
    .await
}

/// The `Idempotency-Key` of a write, with `request` describing what it asks for.
fn keyed(headers: &HeaderMap, request: impl FnOnce() -> String) -> Result<Option<Idempotency>> {
    Ok(idempotency_key(headers)?.map(|key| Idempotency {
        key,
        request: request(),
    }))
}

/// The response to a write's outcome: `done` with the report when it was written (after
/// announcing it), 200 with the first answer's report for a replayed key, 422 for a key used
/// for another request, 409 for a key whose first request is still being written.
async fn answer(state: &AppState, outcome: Outcome, done: StatusCode) -> Result<Response> {
    match outcome {
        Outcome::Written(written) => {
            state.relay.announce(&written.event).await;
            Ok(json_response(done, report_json(&written.report)?))
        }
        Outcome::Replayed(report) => Ok(json_response(StatusCode::OK, report_json(&report)?)),
        Outcome::KeyReused { first } => Err(AppError::Unprocessable(format!(
            "this Idempotency-Key was already used for another request ({first}); \
             use a new key for a new request"
        ))),
        Outcome::KeyInProgress => Err(AppError::Conflict {
            message: "a request with this Idempotency-Key is still in progress; retry later"
                .to_owned(),
            details: Map::new(),
        }),
    }
}

async fn list(
    caller: Caller,
    State(state): State<AppState>,
    query: Query,
) -> Result<Json<Vec<Report>>> {
    let user = user_id(&query)?;
    caller.act_as_user(user)?;
    let reports = bounded(&state, state.store.list(user))
        .await?
        .map_err(store_error)?;
    Ok(Json(reports))
}

async fn get_one(
    caller: Caller,
    State(state): State<AppState>,
    query: Query,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<Report>> {
    let user = user_id(&query)?;
    caller.act_as_user(user)?;
    let Path(raw) = path.map_err(|e| AppError::BadRequest(e.body_text()))?;
    // A path that is not a UUID names no report at all.
    let report: ReportId = raw
        .parse()
        .map_err(|_| AppError::NotFound("no such report (report ids are UUIDs)".to_owned()))?;
    bounded(&state, state.store.get(user, report))
        .await?
        .map_err(store_error)?
        .map(Json)
        .ok_or_else(|| not_found(report))
}

/// The body of `PUT /v4/report`, before validation.
#[derive(Debug, Deserialize)]
struct StatusChange {
    id: String,
    status: String,
}

async fn update(
    caller: Caller,
    State(state): State<AppState>,
    client: Client,
    query: Query,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let user = user_id(&query)?;
    caller.act_as_user(user)?;
    state.spend_publish(&client)?;
    let (report, to) = status_change(&headers, body, state.config.max_body_bytes).await?;
    let key = keyed(&headers, || format!("PUT /v4/report {report} {to}"))?;
    let writes = state.writes.clone();
    detached(&writes, async move {
        let call = state.store.transition_keyed(user, report, to, key);
        let outcome = match bounded_write(&state, call).await? {
            Ok(outcome) => outcome,
            Err(TransitionError::NotFound) => return Err(not_found(report)),
            Err(TransitionError::Invalid { current, allowed }) => {
                return Err(invalid_transition(current, to, &allowed));
            }
            Err(TransitionError::Store(e)) => return Err(store_error(e)),
        };
        answer(&state, outcome, StatusCode::OK).await
    })
    .await
}

/// Reads and validates a status change: 415 unless `Content-Type: application/json`, 413 over
/// `limit`, 400 for an empty or malformed body, 422 for a well-formed body with wrong fields,
/// a report id that is not a UUID or an unknown status.
async fn status_change(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<(ReportId, ReportStatus)> {
    if !is_json(headers) {
        return Err(AppError::UnsupportedMediaType(
            "Content-Type must be application/json".to_owned(),
        ));
    }
    let text = text_body(headers, body, limit).await?;
    let change: StatusChange = serde_json::from_str(&text).map_err(|e| {
        if e.is_data() {
            AppError::Unprocessable(format!(
                "expected {{\"id\": \"<report id>\", \"status\": \"<status>\"}}: {e}"
            ))
        } else {
            AppError::BadRequest(format!("request body is not valid JSON: {e}"))
        }
    })?;
    let report = change.id.parse().map_err(|_| {
        AppError::Unprocessable(format!("id {:?} is not a report id (a UUID)", change.id))
    })?;
    let status = change
        .status
        .parse()
        .map_err(|e: crate::reports::UnknownStatus| AppError::Unprocessable(e.to_string()))?;
    Ok((report, status))
}

/// Whether the media type is `application/json` (parameters such as `charset` allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Runs a write and its announcement on a task of its own (tracked by `writes`, which shutdown
/// waits for), so a client that hangs up mid-request cannot cancel the request between a
/// successful write and its event.
async fn detached<T: Send + 'static>(
    writes: &tokio_util::task::TaskTracker,
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    writes
        .spawn(work)
        .await
        .map_err(|e| AppError::Internal(format!("request task failed: {e}")))?
}

/// Runs one store read, answering 503 if it has not finished within the store timeout plus
/// [`STORE_GRACE`] (dropping a store future leaves the store consistent).
async fn bounded<F: Future>(state: &AppState, call: F) -> Result<F::Output> {
    within(state.config.store_timeout + STORE_GRACE, call).await
}

/// Runs one store write: as [`bounded`], with room for a second store timeout, in which a
/// write whose answer was lost is settled (see the DynamoDB store), so that its answer is the
/// truth.
async fn bounded_write<F: Future>(state: &AppState, call: F) -> Result<F::Output> {
    within(2 * state.config.store_timeout + STORE_GRACE, call).await
}

async fn within<F: Future>(limit: Duration, call: F) -> Result<F::Output> {
    tokio::time::timeout(limit, call).await.map_err(|_| {
        AppError::Unavailable(format!(
            "the report store did not answer within {}",
            humantime::format_duration(limit)
        ))
    })
}

/// 503 for a store that is down (details logged, not sent), 500 for a corrupt record.
fn store_error(e: StoreError) -> AppError {
    match e {
        StoreError::Unavailable(detail) => {
            tracing::warn!(%detail, "report store unavailable");
            AppError::Unavailable("the report store is unavailable; try again later".to_owned())
        }
        corrupt @ StoreError::Corrupt(_) => AppError::Internal(corrupt.to_string()),
    }
}

fn not_found(report: ReportId) -> AppError {
    AppError::NotFound(format!("report {report} not found"))
}

/// 409 `{"error","currentStatus","allowed"}`.
fn invalid_transition(
    current: ReportStatus,
    to: ReportStatus,
    allowed: &[ReportStatus],
) -> AppError {
    let mut details = Map::new();
    details.insert("currentStatus".to_owned(), Value::from(current.as_str()));
    details.insert(
        "allowed".to_owned(),
        Value::from(allowed.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
    );
    AppError::Conflict {
        message: format!("cannot change report status from {current} to {to}"),
        details,
    }
}

fn report_json(report: &Report) -> Result<String> {
    serde_json::to_string(report).map_err(|e| AppError::Internal(format!("report to JSON: {e}")))
}

/// A response whose body is already-serialized JSON.
fn json_response(status: StatusCode, json: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}
