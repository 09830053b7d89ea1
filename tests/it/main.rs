//! Integration tests: one binary, real servers on 127.0.0.1:0, real SSE parsing.

mod support;

mod input;
mod ops;
mod push;
mod slow;
mod v1;
