//! Operations: `/healthz` (the process is alive), `/readyz` (its dependencies are usable),
//! `/metrics` (Prometheus text format).

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

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

async fn readyz(State(state): State<AppState>) -> Response {
    let shutting_down = state.shutdown.is_cancelled();
    let checks = json!({
        "hub": if shutting_down { "shutting down" } else { "ok" },
        "kafka": "disabled",
        "store": "not configured",
    });
    let status = if shutting_down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let ready = if shutting_down {
        "unavailable"
    } else {
        "ready"
    };
    (status, Json(json!({ "status": ready, "checks": checks }))).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.render();
    let (conns, topics) = state.hub.registry_size();
    text.push_str(&format!(
        "# HELP sse_hub_registered_connections Connections registered in the Hub.\n# TYPE sse_hub_registered_connections gauge\nsse_hub_registered_connections {conns}\n# HELP sse_hub_users Users (per channel) with a connection or a live history.\n# TYPE sse_hub_users gauge\nsse_hub_users {topics}\n"
    ));
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
