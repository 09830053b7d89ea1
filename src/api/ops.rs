//! Operations: `/healthz` (the process is alive), `/readyz` (its dependencies are usable),
//! `/metrics` (Prometheus text format).

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::error::AppError;
use crate::bus::BusHealth;

/// Routes at the root.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Longest `/readyz` waits for the store to answer a ping.
const READY_PING_LIMIT: Duration = Duration::from_secs(2);

/// `200` when the Hub runs and the store and the bus are usable, `503` otherwise, with one entry
/// per dependency under `checks`.
async fn readyz(State(state): State<AppState>) -> Response {
    let shutting_down = state.shutdown.is_cancelled();
    let (store_ok, store) = store_check(&state).await;
    let (bus_ok, kafka) = match state.bus.readiness() {
        BusHealth::Disabled => (true, json!("disabled")),
        BusHealth::Ok => (true, json!("ok")),
        BusHealth::Down(error) => (false, down(&state, error)),
        BusHealth::CatchingUp { remaining, lag } => (
            false,
            json!({ "status": "catching up", "readBackRemaining": remaining, "lag": lag }),
        ),
    };
    let checks = json!({
        "hub": if shutting_down { "shutting down" } else { "ok" },
        "kafka": kafka,
        "store": store,
    });
    let ready = !shutting_down && store_ok && bus_ok;
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (status, Json(json!({ "status": word, "checks": checks }))).into_response()
}

/// Pings the store within `min(--store-timeout, 2 s)`: whether it answered, and its check entry
/// `{"backend","status"[,"error"]}`.
async fn store_check(state: &AppState) -> (bool, Value) {
    let backend = state.store.name();
    let limit = state.config.store_timeout.min(READY_PING_LIMIT);
    let error = match tokio::time::timeout(limit, state.store.ping()).await {
        Ok(Ok(())) => return (true, json!({ "backend": backend, "status": "ok" })),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {}", humantime::format_duration(limit)),
    };
    let mut entry = down(state, error);
    entry["backend"] = json!(backend);
    (false, entry)
}

/// A dependency's `down` entry: with its error text in the open mode; with access control,
/// only in the log (`/readyz` is open to anyone, and internal errors name hosts and files).
fn down(state: &AppState, error: String) -> Value {
    if state.auth.mode() == crate::auth::Mode::None {
        return json!({ "status": "down", "error": error });
    }
    tracing::warn!(%error, "readiness: dependency down");
    json!({ "status": "down" })
}

async fn metrics(caller: Caller, State(state): State<AppState>) -> Result<Response, AppError> {
    caller.admin()?;
    let mut text = state.metrics.render();
    text.push_str(&state.bus.metrics_text());
    let (conns, topics) = state.hub.registry_size();
    text.push_str(&format!(
        "# HELP sse_hub_registered_connections Connections registered in the Hub.\n# TYPE sse_hub_registered_connections gauge\nsse_hub_registered_connections {conns}\n# HELP sse_hub_users Users (per channel) with a connection or a live history.\n# TYPE sse_hub_users gauge\nsse_hub_users {topics}\n"
    ));
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}
