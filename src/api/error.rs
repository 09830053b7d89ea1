//! One error type for every handler: 4xx carry a message for the client, 5xx are logged and
//! answered without internals. Always JSON: `{"error": "..."}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::limits::Refusal;

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
    /// No credentials (`invalid_token: false`) or bad ones (401, RFC 6750).
    #[error("{message}")]
    Unauthorized {
        /// What is wrong, without token text or key material.
        message: String,
        /// Whether a token (or ticket) was sent and refused.
        invalid_token: bool,
    },
    /// Valid credentials that do not allow this (403).
    #[error("{0}")]
    Forbidden(String),
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
    /// Over a connection or rate limit: `503` when the server is full, `429` when one client
    /// is over its share; always with `Retry-After`, and the connection is closed after it.
    #[error("{0}")]
    Refused(Refusal),
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
            AppError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Conflict { .. } => StatusCode::CONFLICT,
            AppError::Refused(r) if r.is_overload() => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Refused(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match self {
            AppError::Refused(refusal) => return refused(status, &refusal),
            AppError::Unauthorized {
                message,
                invalid_token,
            } => return unauthorized(&message, invalid_token),
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

impl From<crate::auth::AuthError> for AppError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match e {
            AuthError::Missing(message) => AppError::Unauthorized {
                message,
                invalid_token: false,
            },
            AuthError::Invalid(message) => AppError::Unauthorized {
                message,
                invalid_token: true,
            },
            AuthError::Forbidden(message) => AppError::Forbidden(message),
        }
    }
}

/// 401 with `WWW-Authenticate: Bearer` (RFC 6750), with `error="invalid_token"` and a
/// description when a token was sent, and `{"error": message}`.
fn unauthorized(message: &str, invalid_token: bool) -> Response {
    let challenge = if invalid_token {
        let description: String = message
            .chars()
            .filter(|c| *c != '"' && *c != '\\' && (' '..='~').contains(c))
            .collect();
        format!(r#"Bearer error="invalid_token", error_description="{description}""#)
    } else {
        "Bearer".to_owned()
    };
    let mut response =
        (StatusCode::UNAUTHORIZED, Json(json!({ "error": message }))).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// A refusal: the status, `Retry-After`, `Connection: close` (a refused client should not keep
/// holding a connection) and `{"error","reason","retryAfter"}`.
fn refused(status: StatusCode, refusal: &Refusal) -> Response {
    let wait = refusal.retry_after_secs();
    let body = json!({
        "error": refusal.to_string(),
        "reason": refusal.reason(),
        "retryAfter": wait,
    });
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
