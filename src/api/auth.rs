//! Access control over HTTP: the [`Caller`] of every request (bearer token or stream ticket),
//! `POST /auth/ticket`, `GET /auth/config`, and the `Host` check of the open mode.

use std::net::IpAddr;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use super::error::AppError;
use crate::auth::{AuthError, Mode, Principal};

/// Routes under `/auth`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ticket", post(ticket))
        .route("/config", get(config))
}

/// Who sent a request and what they may do, checked before the handler runs: a request that
/// is refused here changed nothing and learned nothing.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if state.auth.mode() == Mode::None {
            return Ok(Caller(Principal::open()));
        }
        let mut ticket = None;
        for (name, value) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
            match name.as_ref() {
                "access_token" | "token" | "jwt" => {
                    return Err(AuthError::Invalid(
                        "tokens are never accepted in a URL: send Authorization: Bearer, or \
                         open streams with a ticket from POST /auth/ticket"
                            .to_owned(),
                    )
                    .into());
                }
                "ticket" if ticket.is_some() => {
                    return Err(AppError::BadRequest(
                        "query parameter 'ticket' must be given only once".to_owned(),
                    ));
                }
                "ticket" => ticket = Some(value.into_owned()),
                _ => {}
            }
        }
        let stream = parts.method == Method::GET && parts.uri.path().ends_with("/sse");
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        state
            .auth
            .authenticate(authorization, ticket.as_deref(), stream)
            .await
            .map(Caller)
            .map_err(AppError::from)
    }
}

impl Caller {
    /// 403 unless the caller may act as `owner` (its own streams and reports, or admin).
    pub fn act_as(&self, owner: &str) -> Result<(), AppError> {
        if self.0.may_act_as(owner) {
            return Ok(());
        }
        Err(AuthError::Forbidden(
            "this token may use only its own streams and reports (its sub); another user's \
             need the admin scope"
                .to_owned(),
        )
        .into())
    }

    /// 403 unless the caller may act as the user `owner` of `/v4`: `sub` is compared as a
    /// UUID, in canonical form.
    pub fn act_as_user(&self, owner: crate::domain::UserId) -> Result<(), AppError> {
        let same = self.0.sub.parse::<crate::domain::UserId>().ok() == Some(owner);
        if same || self.0.admin {
            return Ok(());
        }
        self.act_as(&owner.to_string())
    }

    /// 403 unless the caller may publish.
    pub fn publish(&self) -> Result<(), AppError> {
        if self.0.may_publish() {
            return Ok(());
        }
        Err(
            AuthError::Forbidden("publishing needs a token with the publish scope".to_owned())
                .into(),
        )
    }

    /// 403 unless the caller is an admin.
    pub fn admin(&self) -> Result<(), AppError> {
        if self.0.admin {
            return Ok(());
        }
        Err(AuthError::Forbidden("this needs a token with the admin scope".to_owned()).into())
    }
}

/// `POST /auth/ticket` with a bearer token: `200 {"ticket","expiresIn"}`.
async fn ticket(State(state): State<AppState>, caller: Caller) -> Result<Response, AppError> {
    if state.auth.mode() == Mode::None {
        return Err(AppError::NotFound(
            "tickets exist only with --auth jwt (this server is open)".to_owned(),
        ));
    }
    let (ticket, lifetime) = state.auth.issue_ticket(&caller.0)?;
    Ok(Json(json!({ "ticket": ticket, "expiresIn": lifetime.as_secs() })).into_response())
}

/// `GET /auth/config`: `{"mode":"none"|"jwt"}`, for the dashboard.
async fn config(State(state): State<AppState>) -> Json<serde_json::Value> {
    let mode = match state.auth.mode() {
        Mode::None => "none",
        Mode::Jwt => "jwt",
    };
    Json(json!({ "mode": mode }))
}

/// In the open mode on loopback, refuses requests whose `Host` is not a loopback name or
/// address, so a web page cannot reach the open server through a rebinding domain.
pub async fn host_guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let guarded = state.auth.mode() == Mode::None && state.config.bind.ip().is_loopback();
    if guarded
        && let Some(host) = request.headers().get(header::HOST)
        && !host.to_str().is_ok_and(loopback_host)
    {
        return AppError::Forbidden(
            "the server has no access control, so it answers only requests addressed to a \
             loopback host (localhost, 127.0.0.1, [::1]); turn on --auth jwt to serve others"
                .to_owned(),
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether a `Host` value names this machine's loopback: `localhost`, an address in
/// 127.0.0.0/8 or `[::1]`, with any port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inner, port)) if port.is_empty() || port.starts_with(':') => inner,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "LOCALHOST:3000",
            "127.0.0.1",
            "127.8.9.1:80",
            "[::1]",
            "[::1]:3000",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:3000",
            "10.0.0.1",
            "[::2]",
            "localhost.evil.example",
            "[::1]x",
            "",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
