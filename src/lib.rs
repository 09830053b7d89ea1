//! `server_sent_events`: a Server-Sent Events push server.
//!
//! Layout, top-down: each layer imports only the ones below it (no circles, no arrow up).
//! - [`server`]: builds the state (Hub, Bus, store), runs background tasks, shuts down;
//! - [`net`]: the transport: accept loop, the lean HTTP/1.1 SSE path, hyper for the rest;
//! - [`api`]: thin HTTP handlers, one module per route family, one error type, input checks;
//! - [`auth`]: access control: tokens, tickets, who may do what (imports nothing of ours);
//! - [`bus`]: how a published message reaches the Hub of every instance (in-process or Kafka);
//! - [`hub`]: the per-(channel, user) connection registry, its queues and replay histories;
//! - [`reports`]: the report state machine and its stores (SQLite, DynamoDB);
//! - [`sse`]: the encoder, the only place where untrusted text becomes SSE bytes;
//! - [`metrics`]: counters and gauges for `/metrics`;
//! - [`config`]: the typed configuration (flags and environment variables);
//! - [`domain`]: the validated types every layer uses (`Channel`, `Username`, `UserId`,
//!   `ReportId`, `EventName`, `EventId`); imports nothing of ours.

pub mod api;
pub mod auth;
pub mod bus;
pub mod config;
pub mod domain;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod reports;
pub mod server;
pub mod sse;

pub use api::{AppState, app};
