//! One connection's bounded queue and the response body that drains it ([`Subscription`]).
//!
//! Policy: a push never waits. A connection whose queue is full is closed at once (its TCP
//! connection too, through its kill token) and its frames are freed; the client resumes with
//! `Last-Event-ID`. Dropping the [`Subscription`] asks the Hub to unregister exactly this
//! connection (the registry itself is only touched in `hub/mod.rs`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::CancellationToken;

use super::{Inner, lock};
use crate::domain::Channel;

/// One open SSE response.
pub(super) struct Conn {
    pub(super) channel: Channel,
    /// A std `Mutex`: pushed to by publishers (sync), popped by the response body (sync poll).
    state: Mutex<ConnState>,
    /// Closes the whole TCP connection, so a client that stopped reading is really let go.
    kill: Option<CancellationToken>,
}

struct ConnState {
    items: VecDeque<Bytes>,
    /// Bytes in `items`.
    bytes: usize,
    /// How many of the first `items` are the stream's start (preamble, reset, replay): they
    /// count against `queue_max_bytes` but not against the frame limit for live messages.
    start: usize,
    waker: Option<Waker>,
    closed: bool,
    /// Whether anything was queued since the last keep-alive tick.
    active: bool,
}

/// What a push did.
pub(super) enum Push {
    Queued,
    /// The queue was full: the connection is closed now.
    Overflow,
    /// The connection was already closed.
    Closed,
}

impl Conn {
    pub(super) fn new(channel: Channel, kill: Option<CancellationToken>) -> Self {
        Self {
            channel,
            state: Mutex::new(ConnState {
                items: VecDeque::new(),
                bytes: 0,
                start: 0,
                waker: None,
                closed: false,
                active: true,
            }),
            kill,
        }
    }

    /// Queues the stream's first frames (preamble, reset, replayed history frames); `closed`
    /// when the Hub is shutting down, so the stream ends right after them.
    pub(super) fn start(&self, first: Vec<Bytes>, closed: bool) {
        let mut st = lock(&self.state);
        st.start = first.len();
        st.bytes = first.iter().map(Bytes::len).sum();
        st.items = first.into();
        st.closed = closed;
    }

    /// Appends `frame` unless the queue already holds `cap` live frames or `max_bytes` bytes
    /// with it (then the connection is closed: see the module docs). `activity` marks the
    /// stream as not idle.
    pub(super) fn push(&self, frame: Bytes, cap: usize, max_bytes: usize, activity: bool) -> Push {
        let waker = {
            let mut st = lock(&self.state);
            if st.closed {
                return Push::Closed;
            }
            if st.items.len() - st.start >= cap || st.bytes + frame.len() > max_bytes {
                st.closed = true;
                st.items = VecDeque::new();
                st.bytes = 0;
                st.start = 0;
                let waker = st.waker.take();
                drop(st);
                if let Some(kill) = &self.kill {
                    kill.cancel();
                }
                if let Some(w) = waker {
                    w.wake();
                }
                return Push::Overflow;
            }
            st.bytes += frame.len();
            st.items.push_back(frame);
            st.active |= activity;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Push::Queued
    }

    /// Whether anything was queued since the last call (and resets that); `None` when closed.
    pub(super) fn take_activity(&self) -> Option<bool> {
        let mut st = lock(&self.state);
        if st.closed {
            return None;
        }
        Some(std::mem::replace(&mut st.active, false))
    }

    /// Ends the stream once its queued frames are written.
    pub(super) fn close(&self) {
        let waker = {
            let mut st = lock(&self.state);
            st.closed = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// One open stream, used as the HTTP response body. Dropping it (client gone, shutdown,
/// overflow) unregisters exactly this connection.
pub struct Subscription {
    hub: Arc<Inner>,
    conn: Arc<Conn>,
    user: Box<str>,
    shard: usize,
}

impl Subscription {
    pub(super) fn new(hub: Arc<Inner>, conn: Arc<Conn>, user: Box<str>, shard: usize) -> Self {
        Self {
            hub,
            conn,
            user,
            shard,
        }
    }
}

impl Body for Subscription {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut st = lock(&self.conn.state);
        if let Some(frame) = st.items.pop_front() {
            st.bytes -= frame.len();
            st.start = st.start.saturating_sub(1);
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unregister(self.shard, &self.user, &self.conn);
    }
}
