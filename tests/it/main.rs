//! Integration tests: one binary, real servers on 127.0.0.1:0, real SSE parsing.

#[path = "../common/moto.rs"]
mod moto;
mod support;
mod tansu;

mod auth;
mod h2;
mod input;
mod kafka;
mod kafka_log;
mod lean;
mod limits;
mod memory;
mod ops;
mod push;
mod reports_script;
mod slow;
mod store_faults;
mod v1;
mod v4;
