//! `server_sent_events`: a Server-Sent Events push server.
//!
//! Layout:
//! - [`config`]: the typed configuration (flags and environment variables);
//! - [`server`]: state, background tasks, accept loop, graceful shutdown;
//! - [`hub`]: the per-(channel, user) connection registry, queues and replay history;
//! - [`sse`]: the encoder, the only place where untrusted text becomes SSE bytes;
//! - [`api`]: thin HTTP handlers, one module per route family, one error type;
//! - [`metrics`]: counters and gauges for `/metrics`.

pub mod api;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod sse;

pub use api::{AppState, app};
