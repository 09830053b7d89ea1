//! HTTP routes: one module per API version, each with `router()`, nested at the root.

pub mod auth;
pub mod error;
pub mod input;
pub mod ops;
pub mod push;
pub mod v1;
pub mod v4;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::handler::HandlerWithoutStateExt;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

use crate::auth::Auth;
use crate::bus::Bus;
use crate::bus::keys::MessageKeys;
use crate::bus::relay::Relay;
use crate::config::Config;
use crate::domain::Channel;
use crate::hub::Hub;
use crate::limits::{Limits, Refusal, StreamPermit};
use crate::metrics::Metrics;
use crate::reports::ReportStore;
use error::AppError;

/// Everything a handler may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The connection registry.
    pub hub: Hub,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// Server settings.
    pub config: Arc<Config>,
    /// Cancelled when the server shuts down; long-lived responses end on it.
    pub shutdown: CancellationToken,
    /// Carries v3 messages and v4 events to the Hub of every instance.
    pub bus: Arc<dyn Bus>,
    /// Where reports live (the source of truth for `/v4`).
    pub store: Arc<dyn ReportStore>,
    /// Connection and publish budgets.
    pub limits: Arc<Limits>,
    /// Takes the events the store records with each write to the Bus.
    pub relay: Arc<Relay>,
    /// Store writes and their announcements in flight: shutdown waits for them.
    pub writes: TaskTracker,
    /// Recent `Idempotency-Key`s of `/v2` and `/v3` messages.
    pub message_keys: Arc<MessageKeys>,
    /// Access control.
    pub auth: Arc<Auth>,
}

impl AppState {
    /// Counts `refusal` and turns it into its error answer.
    pub fn refuse(&self, refusal: Refusal) -> AppError {
        self.metrics.refused(refusal.reason());
        tracing::debug!(reason = refusal.reason(), "request refused by a limit");
        AppError::Refused(refusal)
    }

    /// Takes a place for a stream from `client`, or the answer that refuses it.
    pub fn open_stream(&self, client: &Client) -> Result<StreamPermit, AppError> {
        self.limits
            .open_stream(client.ip)
            .map_err(|r| self.refuse(r))
    }

    /// Spends one publish of `client`'s budget (`--publish-rate`), or the answer that
    /// refuses it.
    pub fn spend_publish(&self, client: &Client) -> Result<(), AppError> {
        self.limits
            .publish(client.ip, std::time::Instant::now())
            .map_err(|r| self.refuse(r))
    }
}

/// The address of the TCP peer a request came from; inserted by the transport.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Who sent a request, as far as limits are concerned: the peer's address, or the client's
/// address from `X-Forwarded-For` when the peer is a `--trusted-proxy`.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    /// `None` only for requests that did not come through the transport (tests).
    pub ip: Option<IpAddr>,
}

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0);
        Ok(Client {
            ip: state.limits.client_ip(peer, &parts.headers),
        })
    }
}

/// The transport's handles on the connection a request arrived on, inserted by the server's
/// accept loop: `token` closes it, so the Hub can really let go of a client that stopped
/// reading; `socket` (the lean HTTP/1.1 path only) lets publishers write a parked stream's
/// frames to it themselves ([`crate::hub::WriteThrough`]).
#[derive(Clone)]
pub struct ConnectionKill {
    /// Closes the connection.
    pub token: CancellationToken,
    /// The socket a stream's frames may be written to by publishers.
    pub socket: Option<std::sync::Arc<dyn crate::hub::WriteThrough>>,
}

impl ConnectionKill {
    /// A handle that can only close the connection.
    pub fn new(token: CancellationToken) -> Self {
        Self {
            token,
            socket: None,
        }
    }
}

/// The whole application: every route, CORS, JSON 404/405, the rejection counter.
pub fn app(state: AppState) -> Router {
    let cors = cors(&state.config.cors_origin);
    let router = Router::new()
        .nest("/v1", v1::router())
        .nest("/v2", push::router(Channel::V2))
        .nest("/v3", push::router(Channel::V3))
        .nest("/v4", v4::router())
        .nest("/auth", auth::router())
        .merge(ops::router());
    // The dashboard, when built: its files at `/`; anything else stays a JSON 404.
    let static_dir = &state.config.static_dir;
    let router = if static_dir.is_dir() {
        router.fallback_service(
            ServeDir::new(static_dir)
                .call_fallback_on_method_not_allowed(true)
                .not_found_service(not_found.into_service()),
        )
    } else {
        router.fallback(not_found)
    };
    router
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::host_guard,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_rejections,
        ))
        .layer(cors)
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::NotFound("no such route".to_owned())
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

async fn count_rejections(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if response.status().is_client_error() {
        state.metrics.rejected(response.status().as_u16());
    }
    response
}

/// The CORS layer for `origins` (validated by `config::parse_origin`): `*` among them allows
/// any origin (never with credentials, which this layer does not enable).
fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("idempotency-key"),
        ])
}
