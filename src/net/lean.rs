//! The lean path for SSE subscriptions: `GET /v2/sse`, `/v3/sse` and `/v4/sse` served without
//! hyper's per-connection buffers.
//!
//! Why: an idle SSE connection otherwise keeps hyper's read buffer (8 KiB reserved, its first
//! page touched) and its header write buffer for as long as the stream is open, which made up
//! most of the memory per connection. Here the request head is *peeked* (not consumed) into a
//! stack buffer; only a complete, body-less, unpipelined HTTP/1.1 `GET` of one of those paths
//! takes this path. Everything else, including anything odd, is served by hyper on the
//! untouched socket, so no byte has to be replayed.
//!
//! Behaviour stays that of the router: the request is still answered by the same axum
//! [`Router`] (validation, JSON errors, CORS, metrics, the [`ConnectionKill`] extension); this
//! module only writes the response (status line, headers, `date`, chunked or sized body) and
//! streams the body. Several queued frames are written with one `writev`, framed as one
//! chunk, and every frame's bytes are the shared [`Bytes`] of the Hub: nothing is copied per
//! connection. While streaming, the socket is watched for the client going away.
//!
//! The socket is also handed to the Hub as a [`WriteThrough`] ([`Socket`]): while the stream
//! is parked, a publisher writes its frames to the socket itself, and the stream's task is not
//! woken at all (the rules are in `hub::queue`). What the socket did not take at once is kept
//! in the [`Socket`], and the task writes it before anything else.
//!
//! [`ConnectionKill`]: crate::api::ConnectionKill

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{Method, Request, Response, Uri, Version};
use bytes::Bytes;
use http_body::Body as _;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, PollSemaphore};
use tower::ServiceExt;

use super::{Connection, Shared};
use crate::api::{ConnectionKill, PeerAddr};
use crate::hub::WriteThrough;

/// Largest request head taken by the lean path; a longer one (say, many cookies) goes to hyper.
/// Peeked into a stack buffer, so it costs nothing per connection.
const MAX_HEAD: usize = 8 * 1024;
/// Most header lines taken by the lean path; more go to hyper.
const MAX_HEADERS: usize = 48;
/// Most frames written by one `writev` (each frame is one `iovec`, far below `IOV_MAX`).
const MAX_BATCH: usize = 32;
/// Most bytes one connection hands to the kernel per turn on the worker: one `writev` takes at
/// most this much, and after this much the connection yields to the other tasks. Without it a
/// large broadcast let every connection copy up to its whole send buffer (MBs) in one go, and
/// a request arriving meanwhile waited for all of them.
const TURN_BYTES: usize = 64 * 1024;
/// Bytes a connection writes per wake-up without a bulk slot: enough for the messages of
/// ordinary traffic, which therefore never touch the slots. A wake-up with more to write
/// writes none of it before it holds a slot: a large broadcast to 10,000 streams then wakes
/// them for a cheap poll each, not for 10,000 copies of 4 KiB ahead of every other request.
const FREE_BYTES: usize = 4 * 1024;
/// Connections that may write a backlog (more than [`FREE_BYTES`] per wake-up) at once; the
/// others wait their turn, in order, outside the run queue. A 458 KB broadcast to 10,000 idle
/// clients had 10,000 connections each copying 64 KiB per turn ahead of any request that
/// arrived; with the slots, a request waits behind at most this many turns.
pub(crate) const BULK_SLOTS: usize = 32;
/// The paths served here. Anything else, even a near miss, is hyper's (and the router's).
const SSE_PATHS: [&str; 3] = ["/v2/sse", "/v3/sse", "/v4/sse"];

/// What the first bytes waiting on a connection are.
pub enum Peeked {
    /// The client closed the connection (or it failed) before sending a request.
    Closed,
    /// Not a request this path takes: serve the connection with hyper, from the first byte.
    Hyper,
    /// A complete SSE `GET` of `head_len` bytes, and nothing after it.
    Sse(Box<SseRequest>),
}

/// A request head the lean path serves.
pub struct SseRequest {
    head_len: usize,
    request: Request<Body>,
}

/// What to do with the connection after a lean response.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// The response is complete: wait for the next request on the connection.
    KeepAlive,
    /// Close the connection (client gone, killed, write failed, or shutting down).
    Close,
}

/// Waits until the client sent something, then decides, without consuming any byte, who
/// serves the request.
pub async fn peek(stream: &TcpStream) -> Peeked {
    poll_fn(|cx| poll_peek(stream, cx)).await
}

fn poll_peek(stream: &TcpStream, cx: &mut Context<'_>) -> Poll<Peeked> {
    // On the stack of this poll only: never part of the connection's future. Left
    // uninitialised (ReadBuf tracks what was filled): zeroing 8 KiB per peek showed in profiles.
    let mut buf = [MaybeUninit::<u8>::uninit(); MAX_HEAD];
    let mut read = ReadBuf::uninit(&mut buf);
    match stream.poll_peek(cx, &mut read) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(_)) | Poll::Ready(Ok(0)) => Poll::Ready(Peeked::Closed),
        Poll::Ready(Ok(_)) => Poll::Ready(classify(read.filled())),
    }
}

/// Decides on a peeked prefix of the connection's bytes. Only a head that is complete and is
/// all there is (no body, nothing pipelined) can take the lean path.
fn classify(bytes: &[u8]) -> Peeked {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) if len == bytes.len() => len,
        _ => return Peeked::Hyper,
    };
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return Peeked::Hyper;
    }
    let Some(target) = parsed.path else {
        return Peeked::Hyper;
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if !SSE_PATHS.contains(&path) {
        return Peeked::Hyper;
    }
    let Ok(uri) = Uri::try_from(target) else {
        return Peeked::Hyper;
    };
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let map = request.headers_mut();
    for h in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Peeked::Hyper;
        };
        if !plain_header(&name, &value) {
            return Peeked::Hyper;
        }
        map.append(name, value);
    }
    Peeked::Sse(Box::new(SseRequest { head_len, request }))
}

/// Whether a request header leaves the request a plain body-less keep-alive GET. A body
/// (`content-length`, even 0, or `transfer-encoding`), `expect`, `upgrade` or a `connection`
/// header asking for anything but keep-alive sends the request to hyper.
fn plain_header(name: &HeaderName, value: &HeaderValue) -> bool {
    match *name {
        header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::EXPECT | header::UPGRADE => {
            false
        }
        header::CONNECTION => value.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|token| token.trim().eq_ignore_ascii_case("keep-alive"))
        }),
        _ => true,
    }
}

/// Serves one lean request: consumes its head, asks the router for the response and writes
/// it. Ends early when the connection's kill fires, the client goes away or accepts no byte
/// for the write timeout.
pub(crate) async fn serve(
    stream: &mut TcpStream,
    sse: Box<SseRequest>,
    app: &Router,
    conn: &Connection,
) -> After {
    let SseRequest {
        head_len,
        mut request,
    } = *sse;
    if consume(stream, head_len).await.is_err() {
        return After::Close;
    }
    let socket = Socket::new(stream.as_raw_fd());
    // Whatever ends this response (its end, the client, a kill, the task dropped), publishers
    // stop writing to the descriptor before the stream, which outlives this call, closes it.
    let _detach = Detach(socket.clone());
    request.extensions_mut().insert(ConnectionKill {
        token: conn.kill.clone(),
        socket: Some(socket.clone()),
    });
    request.extensions_mut().insert(PeerAddr(conn.peer));
    let response = match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let close = asks_to_close(&response);
    let (head, body, chunked) = encode_head(response);
    let written = write_response(
        stream,
        head,
        body,
        chunked,
        socket,
        &conn.kill,
        &conn.shared,
    );
    let after = match written.await {
        Written::Done(after) => after,
        Written::TimedOut => {
            conn.write_timed_out();
            After::Close
        }
    };
    if close {
        return After::Close;
    }
    if after == After::KeepAlive && conn.stop.is_cancelled() {
        // Shutting down: like hyper's graceful shutdown, close once the response is complete.
        return After::Close;
    }
    after
}

/// Whether the router's response says the connection ends with it (`Connection: close`, as a
/// refusal by a limit does).
fn asks_to_close(response: &Response<Body>) -> bool {
    response
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

/// Reads (drops) exactly the `len` bytes of the head that [`peek`] saw.
async fn consume(stream: &mut TcpStream, mut len: usize) -> io::Result<()> {
    while len > 0 {
        let n = poll_fn(|cx| {
            // On the stack of this poll only, like the peek buffer.
            let mut buf = [MaybeUninit::<u8>::uninit(); MAX_HEAD];
            let mut read = ReadBuf::uninit(&mut buf[..len.min(MAX_HEAD)]);
            Pin::new(&mut *stream)
                .poll_read(cx, &mut read)
                .map_ok(|()| read.filled().len())
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len -= n;
    }
    Ok(())
}

/// The response head as hyper would write it: status line, the router's headers, `date`, and
/// `content-length` for a body of known size or `transfer-encoding: chunked` otherwise.
/// Returns the head, the body and whether the body is chunked.
fn encode_head(response: Response<Body>) -> (Vec<u8>, Body, bool) {
    let (parts, body) = response.into_parts();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let size = body.size_hint().exact();
    let chunked = match size {
        Some(len) => {
            if !parts.headers.contains_key(header::CONTENT_LENGTH) {
                head.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
            }
            false
        }
        None => {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
    };
    if !parts.headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    (head, body, chunked)
}

/// How writing a response ended.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    /// Complete, or ended early (client gone, killed, failed): what to do next.
    Done(After),
    /// The client accepted no byte for the write timeout while data waited.
    TimedOut,
}

/// Writes the head, then the body until it ends, the client goes away, `kill` fires or the
/// socket takes no byte for `write_timeout`.
async fn write_response(
    stream: &TcpStream,
    head: Vec<u8>,
    body: Body,
    chunked: bool,
    socket: Arc<Socket>,
    kill: &CancellationToken,
    shared: &Shared,
) -> Written {
    let mut pump = Pump {
        stream,
        body,
        chunked,
        socket,
        unwritten: vec![Bytes::from(head)],
        ending: false,
        shared,
        backlog: None,
    };
    // Only a streamed body (an SSE stream) watches the socket for the client going away: that
    // reads, and drops, what the client sends. A sized body (an error answer) is short, and the
    // bytes behind it are the next request of the connection, answered after it.
    let discarded = AtomicBool::new(false);
    let done = if chunked {
        tokio::select! {
            done = poll_fn(|cx| pump.poll(cx)) => done,
            () = client_gone(stream, &discarded) => return Written::Done(After::Close),
            () = kill.cancelled() => return Written::Done(After::Close),
        }
    } else {
        tokio::select! {
            done = poll_fn(|cx| pump.poll(cx)) => done,
            () = kill.cancelled() => return Written::Done(After::Close),
        }
    };
    match done {
        // Bytes were dropped while streaming: what follows cannot be parsed as a request.
        Ok(()) if discarded.load(Ordering::Relaxed) => Written::Done(After::Close),
        Ok(()) => Written::Done(After::KeepAlive),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Written::TimedOut,
        Err(_) => Written::Done(After::Close),
    }
}

/// Moves body frames to the socket. Each wake takes every frame ready (up to [`MAX_BATCH`])
/// and writes them, framed as one chunk, with one `writev` from the stack. Only bytes the
/// socket does not take at once are kept, as [`Bytes`] handles, until it is writable again:
/// a stream that keeps up allocates nothing per frame.
struct Pump<'a> {
    stream: &'a TcpStream,
    body: Body,
    chunked: bool,
    /// What publishers wrote to the socket themselves and it did not take: written first.
    socket: Arc<Socket>,
    /// Bytes not yet written, in order: the response head at first, then only what the socket
    /// did not take at once (empty, without allocation, while it keeps up).
    unwritten: Vec<Bytes>,
    /// The body ended: done once `unwritten` (holding the terminating chunk) is written.
    ending: bool,
    /// The write timeout and the [`BULK_SLOTS`], shared by every connection.
    shared: &'a Shared,
    /// What only a connection with a backlog needs, allocated the first time it has one: a
    /// stream that keeps up never pays for it.
    backlog: Option<Box<Backlog>>,
}

/// The state of a connection that had more to write than the socket or its turn took.
struct Backlog {
    /// Armed when the socket stopped taking bytes; disarmed by progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Its place in the queue for a bulk slot.
    queue: PollSemaphore,
    /// The slot, while it holds one.
    held: Option<OwnedSemaphorePermit>,
}

/// Writes at most `room` bytes of `slices` once, without waiting; `WouldBlock` counts as 0
/// bytes written.
fn try_write(stream: &TcpStream, slices: &[IoSlice<'_>], mut room: usize) -> io::Result<usize> {
    let mut capped = [IoSlice::new(&[]); MAX_BATCH + 3];
    let mut count = 0;
    for (slot, slice) in capped.iter_mut().zip(slices) {
        if room == 0 {
            break;
        }
        let take = slice.len().min(room);
        *slot = IoSlice::new(&slice[..take]);
        room -= take;
        count += 1;
    }
    let slices = &capped[..count];
    match stream.try_write_vectored(slices) {
        Ok(0) if slices.iter().any(|s| !s.is_empty()) => Err(io::ErrorKind::WriteZero.into()),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// Drops the first `n` bytes of `pieces`.
fn advance(pieces: &mut Vec<Bytes>, mut n: usize) {
    let whole = pieces
        .iter()
        .take_while(|p| {
            if n >= p.len() {
                n -= p.len();
                true
            } else {
                false
            }
        })
        .count();
    pieces.drain(..whole);
    if let Some(first) = pieces.first_mut() {
        bytes::Buf::advance(first, n);
    }
}

impl Pump<'_> {
    /// The socket takes nothing now: pending until it does (its readiness is registered), or
    /// the write timeout's error once it has taken nothing for that long.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let timeout = self.shared.settings.write_timeout;
        let timer = self
            .backlog()
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
    }

    fn backlog(&mut self) -> &mut Backlog {
        let slots = &self.shared.slots;
        self.backlog.get_or_insert_with(|| {
            Box::new(Backlog {
                stalled: None,
                queue: PollSemaphore::new(slots.clone()),
                held: None,
            })
        })
    }

    /// Progress was made: the write timeout starts again when the socket next fills up.
    fn progressed(&mut self) {
        if let Some(backlog) = &mut self.backlog {
            backlog.stalled = None;
        }
    }

    fn holds_slot(&self) -> bool {
        self.backlog.as_ref().is_some_and(|b| b.held.is_some())
    }

    /// Ready once this connection holds a bulk slot; pending (in the queue for one) until then.
    fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let backlog = self.backlog();
        if backlog.held.is_none() {
            // `None` (the semaphore closed) cannot happen: it is never closed.
            backlog.held = ready!(backlog.queue.poll_acquire(cx));
        }
        Poll::Ready(())
    }

    /// Gives the bulk slot back (at the end of a backlog, or while the socket is full).
    fn release_slot(&mut self) {
        if let Some(backlog) = &mut self.backlog {
            backlog.held = None;
        }
    }

    /// Pending, with the slot given back: the task is woken by the socket or the body.
    fn idle<T>(&mut self) -> Poll<T> {
        self.release_slot();
        Poll::Pending
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes written in this wake-up: FREE_BYTES without a bulk slot, TURN_BYTES with one;
        // then the task yields (and wakes itself).
        let mut turn = 0;
        loop {
            let budget = if self.holds_slot() {
                TURN_BYTES
            } else {
                FREE_BYTES
            };
            if turn >= budget {
                if budget == FREE_BYTES {
                    ready!(self.poll_slot(cx));
                    continue;
                }
                // A bulk turn is over. Others may be waiting for a slot: then queue again.
                if self.shared.slots.available_permits() == 0 {
                    self.release_slot();
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let room = budget - turn;
            // First whatever the socket did not take last time.
            if !self.unwritten.is_empty() {
                if !self.holds_slot() && self.unwritten.iter().map(Bytes::len).sum::<usize>() > room
                {
                    // A backlog: none of it before a bulk slot (see `BULK_SLOTS`).
                    ready!(self.poll_slot(cx));
                    continue;
                }
                if self.stream.poll_write_ready(cx)?.is_pending() {
                    self.release_slot();
                    return self.poll_stalled(cx);
                }
                let mut slices = [IoSlice::new(&[]); MAX_BATCH + 3];
                let count = self.unwritten.len().min(slices.len());
                for (slice, piece) in slices.iter_mut().zip(&self.unwritten) {
                    *slice = IoSlice::new(piece);
                }
                let n = try_write(self.stream, &slices[..count], room)?;
                if n > 0 {
                    self.progressed();
                }
                turn += n;
                advance(&mut self.unwritten, n);
                if self.unwritten.is_empty() {
                    self.unwritten = Vec::new();
                }
                continue;
            }
            if let Some(rest) = self.socket.take_rest() {
                self.unwritten = rest;
                continue;
            }
            if self.ending {
                return Poll::Ready(Ok(()));
            }
            // `None`s are cheap to set up and drop; the poll itself leaves nothing behind.
            let mut frames: [Option<Bytes>; MAX_BATCH] = [const { None }; MAX_BATCH];
            let mut count = 0;
            let mut drained = false;
            while count < MAX_BATCH {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers cannot occur on these routes; anything but data is skipped.
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            frames[count] = Some(data);
                            count += 1;
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e))),
                    Poll::Ready(None) => {
                        self.ending = true;
                        break;
                    }
                    Poll::Pending => {
                        // The waker is registered: nothing more to take until it fires.
                        drained = true;
                        break;
                    }
                }
            }
            let frames = &frames[..count];
            let size = ChunkSize::new(frames.iter().flatten().map(Bytes::len).sum());
            if let Some(mut rest) = self.socket.take_rest() {
                // A publisher's write the socket did not finish, kept before this poll took
                // the stream back: it goes out first (rare, so these pieces are allocated).
                rest.extend(
                    pieces(&size, frames, self.chunked, self.ending).map(Bytes::copy_from_slice),
                );
                self.unwritten = rest;
                continue;
            }
            let mut slices = [IoSlice::new(&[]); MAX_BATCH + 3];
            let mut used = 0;
            for (slice, piece) in
                slices
                    .iter_mut()
                    .zip(pieces(&size, frames, self.chunked, self.ending))
            {
                *slice = IoSlice::new(piece);
                used += 1;
            }
            if used == 0 {
                // Nothing to write: a sized body that ended, or no frame yet (waker registered).
                return if self.ending {
                    Poll::Ready(Ok(()))
                } else {
                    self.idle()
                };
            }
            let total: usize = slices[..used].iter().map(|s| s.len()).sum();
            // More than this turn allows without a bulk slot (a large message, a replay): kept
            // whole, to be written once a slot is held, so that a broadcast of a large frame
            // to thousands of streams puts at most `BULK_SLOTS` of them to writing at a time.
            let written = if !self.holds_slot() && total > room {
                0
            } else {
                try_write(self.stream, &slices[..used], room)?
            };
            if written > 0 {
                self.progressed();
            }
            turn += written;
            if written < total {
                // Keep what the socket did not take (rare: a client reading slower than we
                // write). Frames stay shared handles; only framing bytes are copied.
                let mut rest: Vec<Bytes> = Vec::with_capacity(used);
                // Piece `first + k` is frame `k` (after the size line, if any).
                let first = usize::from(self.chunked && count > 0);
                for (i, piece) in pieces(&size, frames, self.chunked, self.ending).enumerate() {
                    let frame = i
                        .checked_sub(first)
                        .and_then(|k| frames.get(k))
                        .and_then(Option::as_ref);
                    rest.push(match frame {
                        Some(frame) => frame.clone(),
                        None => Bytes::copy_from_slice(piece),
                    });
                }
                advance(&mut rest, written);
                self.unwritten = rest;
                continue;
            }
            if self.ending {
                return Poll::Ready(Ok(()));
            }
            if drained {
                // Polled once more, with everything written: that `Pending` parks the stream,
                // so the next message is written by its publisher without waking this task.
                continue;
            }
        }
    }
}

/// A lean response's socket as publishers see it ([`WriteThrough`]): they write a parked
/// stream's frames to it, framed as one chunk, with one `sendmsg`; what it does not take at
/// once stays here until the stream's [`Pump`] takes it.
pub(crate) struct Socket {
    state: Mutex<SocketState>,
    /// `state.rest` is not empty (read without the lock on every poll).
    has_rest: AtomicBool,
}

struct SocketState {
    /// The connection's descriptor, open for as long as this is `Some`: [`Detach`] clears it
    /// before the stream can be closed.
    fd: Option<RawFd>,
    /// Bytes of a write the socket did not finish, in order.
    rest: Vec<Bytes>,
}

impl Socket {
    fn new(fd: RawFd) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SocketState {
                fd: Some(fd),
                rest: Vec::new(),
            }),
            has_rest: AtomicBool::new(false),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SocketState> {
        // Nothing panics while holding it; recover the data if anything ever did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bytes a publisher's write left, if any.
    fn take_rest(&self) -> Option<Vec<Bytes>> {
        if !self.has_rest.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.state();
        self.has_rest.store(false, Ordering::Release);
        Some(std::mem::take(&mut state.rest))
    }
}

impl WriteThrough for Socket {
    fn write_frames(&self, frames: &[Bytes]) -> bool {
        let mut state = self.state();
        let Some(fd) = state.fd else {
            return false;
        };
        let size = ChunkSize::new(frames.iter().map(Bytes::len).sum());
        let mut slices = [IoSlice::new(&[]); MAX_BATCH + 2];
        let mut used = 0;
        for (slice, piece) in slices.iter_mut().zip(pieces(&size, frames, true, false)) {
            *slice = IoSlice::new(piece);
            used += 1;
        }
        // More frames than one `sendmsg` takes (the Hub sends fewer) are all kept, none sent.
        let fits = frames.len() + 2 <= slices.len();
        let total: usize = slices[..used].iter().map(|s| s.len()).sum();
        let written = if fits { send(fd, &slices[..used]) } else { 0 };
        if fits && written == total {
            return true;
        }
        // Kept for the pump, which this call's caller wakes. A failed write keeps everything:
        // the pump's own write then meets the error and ends the connection.
        let mut rest: Vec<Bytes> = std::iter::once(Bytes::copy_from_slice(size.as_bytes()))
            .chain(frames.iter().cloned())
            .chain(std::iter::once(Bytes::from_static(b"\r\n")))
            .collect();
        advance(&mut rest, written);
        state.rest = rest;
        self.has_rest.store(true, Ordering::Release);
        false
    }

    fn holds_rest(&self) -> bool {
        self.has_rest.load(Ordering::Acquire)
    }
}

/// Ends publishers' writes to a [`Socket`] when dropped.
struct Detach(Arc<Socket>);

impl Drop for Detach {
    fn drop(&mut self) {
        self.0.state().fd = None;
    }
}

/// One `sendmsg` of `slices` on `fd` without waiting (and without `SIGPIPE`); the bytes
/// written, 0 when it would block or failed.
fn send(fd: RawFd, slices: &[IoSlice<'_>]) -> usize {
    // SAFETY: an all-zero `msghdr` is valid (no name, no control data); `IoSlice` is
    // guaranteed to be ABI compatible with `iovec` on Unix, and `slices` outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = slices.as_ptr().cast_mut().cast();
    msg.msg_iovlen = slices.len() as _;
    // SAFETY: `fd` is the open descriptor of the response's socket: the caller holds the
    // socket's state lock, and the descriptor stays open while it is recorded there.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    usize::try_from(n).unwrap_or(0)
}

/// The bytes one write sends, in order: for a chunked body `"{len:x}\r\n"`, the frames and
/// `"\r\n"` (when there are frames), then `"0\r\n\r\n"` when the body ended; for a sized
/// body just the frames.
fn pieces<'a, F: Piece>(
    size: &'a ChunkSize,
    frames: &'a [F],
    chunked: bool,
    ending: bool,
) -> impl Iterator<Item = &'a [u8]> {
    let framed = chunked && !frames.is_empty();
    let open = framed.then(|| size.as_bytes());
    let close = framed.then_some(&b"\r\n"[..]);
    let end = (chunked && ending).then_some(&b"0\r\n\r\n"[..]);
    open.into_iter()
        .chain(frames.iter().filter_map(Piece::bytes))
        .chain(close)
        .chain(end)
}

/// A frame as [`pieces`] takes it: the pump's batch slots (`Option<Bytes>`, filled from the
/// front) or a publisher's frames.
trait Piece {
    fn bytes(&self) -> Option<&[u8]>;
}

impl Piece for Bytes {
    fn bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl Piece for Option<Bytes> {
    fn bytes(&self) -> Option<&[u8]> {
        self.as_deref()
    }
}

/// The chunk size line `"{len:x}\r\n"`, formatted on the stack.
struct ChunkSize {
    buf: [u8; 18],
    start: usize,
}

impl ChunkSize {
    fn new(mut len: usize) -> Self {
        let mut buf = [0u8; 18];
        buf[16] = b'\r';
        buf[17] = b'\n';
        let mut start = 16;
        loop {
            start -= 1;
            buf[start] = b"0123456789abcdef"[len & 0xf];
            len >>= 4;
            if len == 0 {
                break;
            }
        }
        ChunkSize { buf, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Most bytes a client may send on an open stream (it cannot expect an answer before the
/// stream ends); beyond this the client is treated as gone and the connection is closed.
const MAX_STREAM_INPUT: usize = 64 * 1024;

/// Completes when the client closed its side, the connection failed, or the client sent more
/// than [`MAX_STREAM_INPUT`] bytes while its stream is open (those bytes are dropped, and
/// `discarded` says so). Every
/// read spends cooperative budget, so a client blasting bytes cannot keep this loop spinning
/// without yielding to other tasks.
async fn client_gone(stream: &TcpStream, discarded: &AtomicBool) {
    let mut received = 0usize;
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        // Not alive across the `.await` below, so not part of the connection's future.
        let read = {
            let mut buf = [0u8; 256];
            stream.try_read(&mut buf)
        };
        match read {
            Ok(0) => return,
            Ok(n) => {
                discarded.store(true, Ordering::Relaxed);
                received += n;
                if received > MAX_STREAM_INPUT {
                    tracing::debug!(received, "stream client sent too much; closing");
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        tokio::task::consume_budget().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lean(bytes: &[u8]) -> Option<Request<Body>> {
        match classify(bytes) {
            Peeked::Sse(sse) => {
                assert_eq!(sse.head_len, bytes.len());
                Some(sse.request)
            }
            _ => None,
        }
    }

    #[test]
    fn plain_sse_gets_take_the_lean_path() {
        let req = lean(
            b"GET /v2/sse?username=a&lastEventId=1-2 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 3-4\r\nConnection: keep-alive\r\n\r\n",
        )
        .unwrap();
        assert_eq!(req.uri(), "/v2/sse?username=a&lastEventId=1-2");
        assert_eq!(req.headers()["last-event-id"], "3-4");
        for path in ["/v3/sse", "/v4/sse?user_id=x", "/v2/sse"] {
            let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(lean(head.as_bytes()).is_some(), "{path}");
        }
    }

    #[test]
    fn anything_else_goes_to_hyper() {
        for head in [
            // other methods, versions, paths
            &b"POST /v2/sse?username=a HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"HEAD /v2/sse?username=a HTTP/1.1\r\n\r\n",
            b"OPTIONS /v2/sse HTTP/1.1\r\n\r\n",
            b"GET /v2/sse?username=a HTTP/1.0\r\n\r\n",
            b"GET /v1/sse?username=a HTTP/1.1\r\n\r\n",
            b"GET /v2/sse/ HTTP/1.1\r\n\r\n",
            b"GET /v2/ss%65 HTTP/1.1\r\n\r\n",
            b"GET /v2/message HTTP/1.1\r\n\r\n",
            b"GET http://x/v2/sse HTTP/1.1\r\n\r\n",
            // incomplete, pipelined, with a body
            b"GET /v2/sse?username=a HTTP/1.1\r\nHost: x\r\n",
            b"GET /v2/sse?username=a HTTP/1.1\r\n\r\nGET /v2/sse?username=b HTTP/1.1\r\n\r\n",
            b"GET /v2/sse?username=a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /v2/sse?username=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // connection semantics hyper must handle
            b"GET /v2/sse?username=a HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /v2/sse?username=a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET /v2/sse?username=a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            // malformed
            b"GET /v2/sse?username=a HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00",
            b"GARBAGE\r\n\r\n",
        ] {
            assert!(
                lean(head).is_none(),
                "{:?} took the lean path",
                String::from_utf8_lossy(head)
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: y\r\n"))
            .collect();
        let head = format!("GET /v2/sse HTTP/1.1\r\n{many}\r\n");
        assert!(lean(head.as_bytes()).is_none());
    }

    #[test]
    fn pieces_frame_a_batch_and_advance_keeps_the_rest() {
        let frames = [
            Some(Bytes::from_static(b"ab")),
            Some(Bytes::from_static(b"cde")),
        ];
        let size = ChunkSize::new(5);
        let bytes = |chunked, ending| -> Vec<u8> {
            pieces(&size, &frames, chunked, ending)
                .flatten()
                .copied()
                .collect()
        };
        assert_eq!(bytes(true, false), b"5\r\nabcde\r\n");
        assert_eq!(bytes(true, true), b"5\r\nabcde\r\n0\r\n\r\n");
        assert_eq!(bytes(false, true), b"abcde");
        assert_eq!(pieces::<Bytes>(&size, &[], true, true).count(), 1);
        let mut rest = vec![
            Bytes::from_static(b"5\r\n"),
            Bytes::from_static(b"ab"),
            Bytes::from_static(b"cde"),
        ];
        advance(&mut rest, 4);
        assert_eq!(rest, [&b"b"[..], &b"cde"[..]]);
        advance(&mut rest, 3);
        assert_eq!(rest, [&b"e"[..]]);
    }

    #[test]
    fn head_of_a_sized_and_a_streamed_body() {
        let response = Response::builder()
            .status(400)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let (head, _, chunked) = encode_head(response);
        let head = String::from_utf8(head).unwrap();
        assert!(!chunked);
        assert!(
            head.starts_with(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\ndate: "
            ),
            "{head}"
        );
        assert!(head.ends_with(" GMT\r\n\r\n"), "{head}");
        let stream = Body::from_stream(futures_util::stream::empty::<io::Result<Bytes>>());
        let (head, _, chunked) = encode_head(Response::new(stream));
        assert!(chunked);
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.contains("\r\ntransfer-encoding: chunked\r\ndate: "),
            "{head}"
        );
        assert_eq!(ChunkSize::new(4096).as_bytes(), b"1000\r\n");
        assert_eq!(ChunkSize::new(0).as_bytes(), b"0\r\n");
        assert_eq!(ChunkSize::new(0x1a2b).as_bytes(), b"1a2b\r\n");
    }

    /// What a listener's connections share, with these bulk slots.
    fn shared_with(slots: std::sync::Arc<tokio::sync::Semaphore>) -> Shared {
        Shared {
            settings: super::super::Settings {
                grace: std::time::Duration::from_secs(1),
                write_timeout: std::time::Duration::from_secs(30),
                max_open: None,
                metrics: Default::default(),
                tls: None,
                cores: 1,
            },
            slots,
        }
    }

    #[tokio::test]
    async fn bytes_behind_a_sized_answer_stay_for_the_next_request() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let kill = CancellationToken::new();
        let shared = shared_with(std::sync::Arc::new(tokio::sync::Semaphore::new(BULK_SLOTS)));
        // select! polls its branches in random order: 20 rounds make a lucky pass of a reader
        // racing the write (which dropped the next request) vanishingly unlikely.
        for _ in 0..20 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client
                .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            server.readable().await.unwrap();
            let response = Response::builder()
                .status(400)
                .body(Body::from("{}"))
                .unwrap();
            let (head, body, chunked) = encode_head(response);
            let socket = Socket::new(server.as_raw_fd());
            let after = write_response(&server, head, body, chunked, socket, &kill, &shared);
            let after = after.await;
            assert_eq!(after, Written::Done(After::KeepAlive));
            let mut buf = [0u8; 64];
            let n = server.try_read(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"GET /healthz HTTP/1.1\r\n\r\n");
        }
    }

    #[tokio::test]
    async fn a_message_larger_than_a_free_turn_waits_whole_for_a_bulk_slot() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let kill = CancellationToken::new();
        // Every bulk slot is taken (by other backlogged connections, say).
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let shared = std::sync::Arc::new(shared_with(slots.clone()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let large = Bytes::from(vec![b'x'; 8 * 1024]);
        let body = Body::from_stream(futures_util::stream::iter([Ok::<_, io::Error>(large)]));
        let (head, body, chunked) = encode_head(Response::new(body));
        let writer = tokio::spawn(async move {
            let socket = Socket::new(server.as_raw_fd());
            let done = write_response(&server, head, body, chunked, socket, &kill, &shared);
            done.await
        });
        // The head goes out at once; none of the large frame without a slot.
        let mut got = Vec::new();
        let read = async {
            loop {
                let mut buf = [0u8; 16 * 1024];
                let n = client.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_millis(300), read).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            !text.contains('x'),
            "wrote {} bytes of the large frame without a slot",
            text.matches('x').count()
        );
        // A slot frees: all of it follows, then the end of the body.
        slots.add_permits(1);
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut rest),
        )
        .await;
        let x = rest.iter().filter(|&&b| b == b'x').count();
        assert_eq!(x, 8 * 1024);
        assert!(rest.ends_with(b"0\r\n\r\n"));
        assert_eq!(writer.await.unwrap(), Written::Done(After::KeepAlive));
    }
}
