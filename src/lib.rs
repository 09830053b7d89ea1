//! `server_sent_events`: a Server-Sent Events push server.
//!
//! Layout:
//! - [`config`]: the typed configuration (flags and environment variables);
//! - [`server`]: state, background tasks, accept loop, graceful shutdown;
//! - [`lean`]: SSE subscriptions served straight to the socket, without hyper's buffers;
//! - [`hub`]: the per-(channel, user) connection registry, queues and replay history;
//! - [`sse`]: the encoder, the only place where untrusted text becomes SSE bytes;
//! - [`bus`]: how a published message reaches the Hub of every instance (in-process or Kafka);
//! - [`reports`]: the report state machine and its stores (SQLite, DynamoDB);
//! - [`api`]: thin HTTP handlers, one module per route family, one error type;
//! - [`metrics`]: counters and gauges for `/metrics`.

pub mod api;
pub mod bus;
pub mod config;
pub mod hub;
pub mod lean;
pub mod metrics;
pub mod reports;
pub mod server;
pub mod sse;

pub use api::{AppState, app};
