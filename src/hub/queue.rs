//! One connection's bounded queue and the response body that drains it ([`Subscription`]).
//!
//! Policy: a push never waits. A connection whose queue is full is closed at once (its TCP
//! connection too, through its kill token) and its frames are freed; the client resumes with
//! `Last-Event-ID`. Dropping the [`Subscription`] asks the Hub to unregister exactly this
//! connection (the registry itself is only touched in `hub/mod.rs`).
//!
//! **Write-through.** A stream served on a plain socket (the lean HTTP/1.1 path) hands the Hub
//! a [`WriteThrough`]. While such a stream is *parked* (its task wrote everything and waits
//! for frames), a publisher writes small frames to the socket itself, on its own thread, after
//! it let go of the registry's lock: no task is woken and nothing crosses threads. Who writes
//! is decided under the connection's lock: the publisher only while the stream is parked, the
//! task only after taking a frame (which unparks it), so the two never write at once and the
//! order of the queue is the order on the wire. Whatever the socket does not take at once stays
//! with the transport, and the task, woken, writes it first.

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

/// A socket a publisher may write a parked stream's frames to itself (see the module docs).
pub trait WriteThrough: Send + Sync {
    /// Writes `frames`, in order, as one piece of the response body, without waiting. `true`
    /// when all of it went out; otherwise the transport keeps what did not (to write it
    /// before anything else when the stream's task next runs) and the caller wakes the task.
    fn write_frames(&self, frames: &[Bytes]) -> bool;
    /// Whether bytes of an earlier partial write are still kept: until the stream's task took
    /// them, it may not park.
    fn holds_rest(&self) -> bool;
}

/// Most bytes a publisher writes to a parked stream's socket at once; a larger batch (a big
/// message, a backlog) is left to the stream's task, which writes in bounded turns.
pub(super) const WRITE_THROUGH_BYTES: usize = 4 * 1024;
/// Most frames a publisher writes to a parked stream's socket at once.
const WRITE_THROUGH_FRAMES: usize = 32;

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
    /// The socket publishers may write to while the stream is parked (see the module docs).
    direct: Option<Arc<dyn WriteThrough>>,
    /// The task wrote everything it took and waits for frames: a publisher may write.
    parked: bool,
    /// A frame was taken since the body last answered `Pending`: the task still has it to
    /// write, so that `Pending` does not park the stream.
    taken: bool,
}

impl ConnState {
    /// Hands the stream back to its task: the waker to call once the lock is released.
    fn unpark(&mut self) -> Option<Waker> {
        self.parked = false;
        self.waker.take()
    }
}

/// What a push did.
pub(super) enum Push {
    Queued,
    /// Queued to a parked stream that is not woken: the caller must call [`Conn::flush`]
    /// once it let go of the registry's lock.
    Deferred,
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
                direct: None,
                parked: false,
                taken: false,
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
    /// stream as not idle. A parked write-through stream is not woken ([`Push::Deferred`]).
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
                let waker = st.unpark();
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
            if st.parked {
                return Push::Deferred;
            }
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Push::Queued
    }

    /// Writes what is queued to a parked stream's socket, on the caller's thread (see the
    /// module docs); hands the stream to its task when that is more than
    /// [`WRITE_THROUGH_BYTES`] or the socket did not take all of it. Nothing to do when the
    /// stream is not parked: its task is running, or woken, and takes the frames itself.
    pub(super) fn flush(&self) {
        let waker = {
            let mut st = lock(&self.state);
            if !st.parked || st.items.is_empty() {
                return;
            }
            let Some(direct) = st.direct.clone() else {
                return;
            };
            let mut count = 0;
            let mut bytes = 0;
            for frame in st.items.iter().take(WRITE_THROUGH_FRAMES) {
                if bytes + frame.len() > WRITE_THROUGH_BYTES {
                    break;
                }
                bytes += frame.len();
                count += 1;
            }
            let all = count > 0 && {
                let frames = &st.items.make_contiguous()[..count];
                direct.write_frames(frames)
            };
            // Written or kept by the transport: either way no longer queued here.
            st.items.drain(..count);
            st.bytes -= bytes;
            st.start = st.start.saturating_sub(count);
            if all && st.items.is_empty() {
                return;
            }
            st.unpark()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Hands a parked stream with queued frames to its task (a fan-out too large to write
    /// through).
    pub(super) fn wake(&self) {
        self.hand_back(|st| st.parked && !st.items.is_empty());
    }

    /// Runs `change` under the lock; when it says so, hands the stream to its task (unparked,
    /// and woken once the lock is released).
    fn hand_back(&self, change: impl FnOnce(&mut ConnState) -> bool) {
        let waker = {
            let mut st = lock(&self.state);
            if !change(&mut st) {
                return;
            }
            st.unpark()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Lets publishers write to `direct` while the stream is parked.
    pub(super) fn write_through(&self, direct: Arc<dyn WriteThrough>) {
        lock(&self.state).direct = Some(direct);
    }

    /// Queues `frame` as the stream's last (after what is queued) and ends it.
    pub(super) fn end_with(&self, frame: Bytes) {
        self.hand_back(|st| {
            if st.closed {
                return false;
            }
            st.bytes += frame.len();
            st.items.push_back(frame);
            st.closed = true;
            true
        });
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
        self.hand_back(|st| {
            st.closed = true;
            true
        });
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
    /// Lets publishers write this stream's frames to `socket` themselves while the stream's
    /// task is parked (see the module docs). Only for a body every frame of which comes from
    /// this subscription, written to `socket` by a task that takes the transport's kept bytes
    /// first.
    pub fn write_through(&self, socket: Arc<dyn WriteThrough>) {
        self.conn.write_through(socket);
    }

    /// Ends the stream with `frame`, after the frames queued before it.
    pub fn end_with(&self, frame: Bytes) {
        self.conn.end_with(frame);
    }

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
            st.parked = false;
            st.taken = true;
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if st.closed {
            st.parked = false;
            return Poll::Ready(None);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        // Parked only when the task has nothing of ours left to write: it took no frame since
        // it last heard `Pending`, and the transport keeps no rest of a write-through.
        let idle = !std::mem::take(&mut st.taken);
        st.parked = idle && st.direct.as_ref().is_some_and(|d| !d.holds_rest());
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
        {
            // From here on no publisher writes to the socket, which may be closed next.
            let mut st = lock(&self.conn.state);
            st.direct = None;
            st.parked = false;
        }
        self.hub.unregister(self.shard, &self.user, &self.conn);
    }
}
