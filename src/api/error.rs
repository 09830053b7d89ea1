//! One error type for every handler: 4xx carry a message for the client, 5xx are logged and
//! answered without internals. Always JSON: `{"error": "..."}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Result of a handler.
pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed or invalid input (400).
    #[error("{0}")]
    BadRequest(String),
    /// Body over the configured limit (413).
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// No such route or resource (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Wrong `Content-Type` (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed but unusable JSON (422).
    #[error("{0}")]
    Unprocessable(String),
    /// The request conflicts with the current state (409); `details` are merged into the body.
    #[error("{message}")]
    Conflict {
        /// Human-readable reason.
        message: String,
        /// Extra fields for the client, e.g. the current state.
        details: Map<String, Value>,
    },
    /// A dependency is down or too slow (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure (500); the message is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Conflict { .. } => StatusCode::CONFLICT,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match self {
            AppError::Internal(message) => {
                tracing::error!(%message, "internal error");
                json!({ "error": "internal server error" })
            }
            AppError::Unavailable(ref message) => {
                tracing::warn!(%message, "dependency unavailable");
                json!({ "error": message })
            }
            AppError::Conflict { message, details } => {
                let mut body = details;
                body.insert("error".to_owned(), Value::String(message));
                Value::Object(body)
            }
            other => json!({ "error": other.to_string() }),
        };
        (status, Json(body)).into_response()
    }
}
