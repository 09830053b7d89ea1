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
                waker: None,
                closed: false,
                active: true,
            }),
            kill,
        }
    }

    /// Queues the stream's first bytes (preamble, replay or reset); `closed` when the Hub is
    /// shutting down, so the stream ends right after them.
    pub(super) fn start(&self, first: Bytes, closed: bool) {
        let mut st = lock(&self.state);
        st.items.push_back(first);
        st.closed = closed;
    }

    /// Appends `frame` unless the queue already holds `cap` frames (then the connection is
    /// closed: see the module docs). `activity` marks the stream as not idle.
    pub(super) fn push(&self, frame: Bytes, cap: usize, activity: bool) -> Push {
        let waker = {
            let mut st = lock(&self.state);
            if st.closed {
                return Push::Closed;
            }
            if st.items.len() >= cap {
                st.closed = true;
                st.items = VecDeque::new();
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
