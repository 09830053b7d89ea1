//! Subscriber connections: one small tokio task per connection that connects (bound to one of
//! several loopback source addresses), sends a raw HTTP/1.1 GET, checks the head and parses SSE
//! events incrementally, recording every delivery into shared counters and histograms.
//!
//! Socket reads go into one thread-local buffer (`readable()` + `try_read`), so an idle
//! connection owns no read buffer (over TLS, rustls reads into one of the connection's own): only its socket, its parser and a lazily grown bitmap of the
//! message numbers it has received (for duplicate detection).

use crate::payload;
use crate::sse::{SseEvent, SseStream};
use crate::target::UrlTemplate;
use crate::tls::Conn;
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};

const READ_BUF: usize = 64 * 1024;

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF]);
}

/// State shared by all connections, publishers and the driver.
pub struct Shared {
    /// Epoch of every timestamp (nanoseconds since this instant).
    pub epoch: Instant,
    /// Number of users messages are spread over (message `seq` goes to user `seq % users`).
    pub users: usize,
    /// Added to internal user indexes when rendering `{user}` (fanout's `--user`).
    pub user_base: usize,
    /// Number of messages that will be published.
    pub messages: usize,
    /// Run tag searched in event data.
    pub tag: Vec<u8>,
    /// Bearer token sent with every publish (`--bearer`).
    pub bearer: Option<String>,
    /// Bearer token each subscriber trades for a stream ticket first (`--ticket-bearer`).
    pub ticket_bearer: Option<String>,
    /// Ready streams that end early reconnect with `Last-Event-ID` (`--reconnect`).
    pub reconnect: bool,
    /// Reconnections made after a ready stream ended.
    pub reconnects: AtomicU64,
    /// Per reconnection: microseconds from the drop to the new stream's head.
    pub recover_us: Mutex<Histogram<u64>>,
    /// Set at `--rebalance-after`: streams away from their first template move back to it.
    pub rebalance: AtomicBool,
    /// Streams moved back to their first template.
    pub moved: AtomicU64,
    /// TCP connections established.
    pub connected: AtomicUsize,
    /// Connections that got a `200 text/event-stream` head.
    pub ready: AtomicUsize,
    /// Connections that failed before becoming ready.
    pub failed: AtomicUsize,
    /// Ready connections that ended (server close or error) before the stop signal.
    pub dropped: AtomicUsize,
    /// Latest connect completion (ns since epoch).
    pub last_connect_ns: AtomicU64,
    /// Latest head arrival (ns since epoch).
    pub last_ready_ns: AtomicU64,
    /// Ready connections per user.
    pub ready_per_user: Vec<AtomicU32>,
    /// Events parsed (all of them).
    pub events: AtomicU64,
    /// Events without this run's tag (server hellos, pings, other runs).
    pub foreign: AtomicU64,
    /// Tagged events for a message this connection's user should not get, or out of range.
    pub unexpected: AtomicU64,
    /// First receipts of a message on a connection.
    pub deliveries: AtomicU64,
    /// Repeated receipts of a message on a connection.
    pub duplicated: AtomicU64,
    /// Latest first-receipt time (ns since epoch).
    pub last_delivery_ns: AtomicU64,
    /// Per message: connections that received it.
    pub msg_count: Vec<AtomicU32>,
    /// Per message: latest receipt time (ns since epoch).
    pub msg_last_ns: Vec<AtomicU64>,
    /// Per message: send time (ns since epoch), 0 = not sent.
    pub msg_sent_ns: Vec<AtomicU64>,
    /// Per message: the publish got a 2xx.
    pub msg_acked: Vec<AtomicBool>,
    /// Per-delivery latency in microseconds.
    pub latency_us: Mutex<Histogram<u64>>,
    /// Error counts by kind.
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    /// Creates the shared state for `users` users and `messages` messages.
    pub fn new(users: usize, messages: usize, tag: Vec<u8>) -> Self {
        let hist = new_histogram();
        Shared {
            epoch: Instant::now(),
            users: users.max(1),
            user_base: 0,
            messages,
            tag,
            bearer: None,
            ticket_bearer: None,
            reconnect: false,
            reconnects: AtomicU64::new(0),
            recover_us: Mutex::new(new_histogram()),
            rebalance: AtomicBool::new(false),
            moved: AtomicU64::new(0),
            connected: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            last_connect_ns: AtomicU64::new(0),
            last_ready_ns: AtomicU64::new(0),
            ready_per_user: (0..users.max(1)).map(|_| AtomicU32::new(0)).collect(),
            events: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            msg_count: (0..messages).map(|_| AtomicU32::new(0)).collect(),
            msg_last_ns: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            msg_sent_ns: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            msg_acked: (0..messages).map(|_| AtomicBool::new(false)).collect(),
            latency_us: Mutex::new(hist),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: &str) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(kind.to_string()).or_insert(0) += 1;
        }
    }

    /// Snapshot of the error counts.
    pub fn errors_snapshot(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Total deliveries still missing for acknowledged messages, and the number expected.
    pub fn missing_and_expected(&self) -> (u64, u64) {
        let mut missing = 0u64;
        let mut expected = 0u64;
        for seq in 0..self.messages {
            if !self.msg_acked[seq].load(Relaxed) {
                continue;
            }
            let want = u64::from(self.ready_per_user[seq % self.users].load(Relaxed));
            let got = u64::from(self.msg_count[seq].load(Relaxed));
            expected += want;
            missing += want.saturating_sub(got);
        }
        (missing, expected)
    }
}

/// A latency histogram in microseconds, 1 µs .. 1 h, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// What one subscriber connection needs.
pub struct SubSpec {
    /// User index.
    pub user: usize,
    /// Connection index.
    pub conn: usize,
    /// The subscribe templates: the first stream goes to `conn % len`, each reconnection to
    /// the next one.
    pub targets: Arc<[Arc<UrlTemplate>]>,
    /// `--source-addrs`.
    pub source_addrs: u8,
}

/// Local source address for connection `conn` spread over `127.0.0.1..=127.0.0.N`.
pub fn source_for(conn: usize, source_addrs: u8, target: SocketAddr) -> Option<IpAddr> {
    if source_addrs == 0 || !target.is_ipv4() {
        return None;
    }
    let last = 1 + (conn % usize::from(source_addrs)) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

/// Builds the GET request for one subscriber, resuming after `last_id` when not empty.
pub fn sub_request(host: &str, path: &str, last_id: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nUser-Agent: sse-load\r\n"
    )
    .into_bytes();
    if !last_id.is_empty() {
        req.extend_from_slice(b"Last-Event-ID: ");
        req.extend_from_slice(last_id);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// Connects `target`, binding `source` first when given.
pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let sock = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io_kind("socket", &e))?;
    if let Some(src) = source {
        sock.bind(SocketAddr::new(src, 0))
            .map_err(|e| io_kind("bind", &e))?;
    }
    let stream = sock
        .connect(target)
        .await
        .map_err(|e| io_kind("connect", &e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Error kind name for an I/O error in a step.
pub fn io_kind(step: &str, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => format!("{step}_too_many_open_files"),
        Some(libc::EADDRNOTAVAIL) => format!("{step}_addr_not_available"),
        Some(libc::EADDRINUSE) => format!("{step}_addr_in_use"),
        _ => format!("{step}_{:?}", e.kind()).to_lowercase(),
    }
}

/// Per-connection delivery bookkeeping.
struct Track {
    user: usize,
    seen: Vec<u64>,
    /// The last event id received (kept with `--reconnect` only).
    last_id: Vec<u8>,
    /// While reconnecting: when the stream dropped (ns since the epoch).
    recovering: Option<u64>,
    /// A stream of this subscriber was ready once (later ones are reconnections).
    was_ready: bool,
}

impl Track {
    fn on_event(&mut self, ev: SseEvent<'_>, shared: &Shared, now_ns: u64) {
        shared.events.fetch_add(1, Relaxed);
        if shared.reconnect && !ev.id.is_empty() {
            self.last_id.clear();
            self.last_id.extend_from_slice(ev.id);
        }
        let Some((seq, sent_ns)) = payload::parse_body(&shared.tag, ev.data) else {
            shared.foreign.fetch_add(1, Relaxed);
            return;
        };
        let Ok(seq) = usize::try_from(seq) else {
            shared.unexpected.fetch_add(1, Relaxed);
            return;
        };
        if seq >= shared.messages || seq % shared.users != self.user {
            shared.unexpected.fetch_add(1, Relaxed);
            return;
        }
        let local = seq / shared.users;
        let (word, bit) = (local / 64, 1u64 << (local % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            shared.duplicated.fetch_add(1, Relaxed);
            return;
        }
        self.seen[word] |= bit;
        shared.msg_count[seq].fetch_add(1, Relaxed);
        shared.msg_last_ns[seq].fetch_max(now_ns, Relaxed);
        shared.deliveries.fetch_add(1, Relaxed);
        shared.last_delivery_ns.fetch_max(now_ns, Relaxed);
        let lat_us = now_ns.saturating_sub(sent_ns) / 1000;
        if let Ok(mut h) = shared.latency_us.lock() {
            h.saturating_record(lat_us.max(1));
        }
    }
}

enum ReadOutcome {
    Continue,
    Closed,
    Ended,
    Failed(String),
}

/// Parses `bytes` of a stream, recording every event.
fn feed(sse: &mut SseStream, track: &mut Track, shared: &Shared, bytes: &[u8]) -> ReadOutcome {
    let now = shared.now_ns();
    let mut on_event = |ev: SseEvent<'_>| track.on_event(ev, shared, now);
    match sse.feed(bytes, &mut on_event) {
        Ok(()) if sse.is_ended() => ReadOutcome::Ended,
        Ok(()) => ReadOutcome::Continue,
        Err(e) => ReadOutcome::Failed(e.kind()),
    }
}

/// How one stream (one connection) of a subscriber ended.
enum StreamEnd {
    /// The run is over.
    Stopped,
    /// It never became ready, for this reason.
    NotReady(String),
    /// It was ready and then ended, for this reason.
    Dropped(String),
    /// It was closed to move back to its first template (`--rebalance-after`).
    Moved,
}

/// Runs one subscriber until `stop` flips, or its stream ends (with `--reconnect`: until the
/// run ends, reconnecting after every drop). Connecting and receiving the head must finish
/// before `ready_deadline`; a reconnection must within `--timeout` of its drop.
pub async fn run_sub(
    spec: SubSpec,
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    ready_deadline: tokio::time::Instant,
    stop: watch::Receiver<bool>,
    timeout: std::time::Duration,
) {
    let mut track = Track {
        user: spec.user,
        seen: Vec::new(),
        last_id: Vec::new(),
        recovering: None,
        was_ready: false,
    };
    let n = spec.targets.len().max(1);
    let mut attempt = 0;
    // Set while reconnecting: the deadline of the reconnection.
    let mut dropped: Option<tokio::time::Instant> = None;
    loop {
        let tpl = &spec.targets[(spec.conn + attempt) % n];
        let deadline = dropped.unwrap_or(ready_deadline);
        let home = (spec.conn + attempt) % n == spec.conn % n;
        let end = one_stream(
            &spec,
            tpl,
            home,
            &shared,
            &sem,
            deadline,
            stop.clone(),
            &mut track,
        )
        .await;
        let kind = match end {
            StreamEnd::Stopped => return,
            StreamEnd::Moved => {
                shared.moved.fetch_add(1, Relaxed);
                dropped = Some(tokio::time::Instant::now() + timeout);
                attempt = (attempt / n + 1) * n;
                continue;
            }
            StreamEnd::NotReady(kind) if dropped.is_none() => {
                shared.failed.fetch_add(1, Relaxed);
                shared.error(&kind);
                return;
            }
            StreamEnd::NotReady(kind) => {
                // Reconnecting: try the next instance, until the deadline.
                if tokio::time::Instant::now() >= deadline {
                    shared.dropped.fetch_add(1, Relaxed);
                    shared.error(&format!("reconnect_{kind}"));
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                attempt += 1;
                continue;
            }
            StreamEnd::Dropped(kind) => kind,
        };
        if !shared.reconnect || *stop.borrow() {
            shared.dropped.fetch_add(1, Relaxed);
            shared.error(&kind);
            return;
        }
        shared.reconnects.fetch_add(1, Relaxed);
        shared.error(&format!("reconnected_after_{kind}"));
        dropped = Some(tokio::time::Instant::now() + timeout);
        track.recovering = Some(shared.now_ns());
        attempt += 1;
    }
}

/// Opens one stream of `spec` on `tpl` and reads it until it ends.
#[allow(clippy::too_many_arguments)]
async fn one_stream(
    spec: &SubSpec,
    tpl: &UrlTemplate,
    home: bool,
    shared: &Arc<Shared>,
    sem: &Semaphore,
    ready_deadline: tokio::time::Instant,
    mut stop: watch::Receiver<bool>,
    track: &mut Track,
) -> StreamEnd {
    if *stop.borrow() {
        return StreamEnd::Stopped;
    }
    let not_ready = |kind: &str| StreamEnd::NotReady(kind.to_string());
    let permit = tokio::select! {
        biased;
        _ = stop.changed() => return StreamEnd::Stopped,
        _ = tokio::time::sleep_until(ready_deadline) => return not_ready("connect_timeout"),
        p = sem.acquire() => match p { Ok(p) => p, Err(_) => return StreamEnd::Stopped },
    };
    let source = source_for(spec.conn, spec.source_addrs, tpl.addr);
    let mut path = tpl.render(shared.user_base + spec.user, spec.conn);
    if let Some(bearer) = &shared.ticket_bearer {
        let fetched = tokio::select! {
            biased;
            _ = stop.changed() => return StreamEnd::Stopped,
            _ = tokio::time::sleep_until(ready_deadline) => return not_ready("ticket_timeout"),
            t = crate::ticket::fetch(tpl, source, bearer) => t,
        };
        match fetched {
            Ok(ticket) => path = crate::ticket::with_ticket(&path, &ticket),
            Err(kind) => return StreamEnd::NotReady(kind),
        }
    }
    let request = sub_request(&tpl.host_header, &path, &track.last_id);
    drop(path);
    let connected = tokio::select! {
        biased;
        _ = stop.changed() => return StreamEnd::Stopped,
        _ = tokio::time::sleep_until(ready_deadline) => return not_ready("connect_timeout"),
        c = crate::tls::open(tpl, source, false) => c,
    };
    let mut stream = match connected {
        Ok(s) => s,
        Err(kind) => return StreamEnd::NotReady(kind),
    };
    shared.connected.fetch_add(1, Relaxed);
    shared.last_connect_ns.fetch_max(shared.now_ns(), Relaxed);
    if let Err(e) = stream.write_all(&request).await {
        return StreamEnd::NotReady(io_kind("write", &e));
    }
    drop(request);

    let mut permit = Some(permit);
    let mut sse = SseStream::new();
    let mut ready = false;
    // TLS records are read through rustls, which needs a buffer of the connection's own.
    let mut tls_buf: Vec<u8> = Vec::new();
    loop {
        let outcome = match &mut stream {
            Conn::Plain(socket) => {
                tokio::select! {
                    biased;
                    _ = stop.changed() => return StreamEnd::Stopped,
                    _ = tokio::time::sleep_until(ready_deadline), if !ready => return not_ready("head_timeout"),
                    r = socket.readable() => {
                        if let Err(e) = r {
                            let kind = io_kind("read", &e);
                            return if ready { StreamEnd::Dropped(kind) } else { StreamEnd::NotReady(kind) };
                        }
                    }
                }
                BUF.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    match socket.try_read(&mut buf[..]) {
                        Ok(0) => ReadOutcome::Closed,
                        Ok(n) => feed(&mut sse, track, shared, &buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => ReadOutcome::Continue,
                        Err(e) => ReadOutcome::Failed(io_kind("read", &e)),
                    }
                })
            }
            Conn::Tls(tls) => {
                if tls_buf.is_empty() {
                    tls_buf = vec![0; 16 * 1024];
                }
                let read = tokio::select! {
                    biased;
                    _ = stop.changed() => return StreamEnd::Stopped,
                    _ = tokio::time::sleep_until(ready_deadline), if !ready => return not_ready("head_timeout"),
                    r = tls.read(&mut tls_buf[..]) => r,
                };
                match read {
                    Ok(0) => ReadOutcome::Closed,
                    Ok(n) => feed(&mut sse, track, shared, &tls_buf[..n]),
                    Err(e) => ReadOutcome::Failed(io_kind("read", &e)),
                }
            }
        };
        if !ready && sse.is_ready() {
            ready = true;
            permit.take();
            if let Some(dropped_ns) = track.recovering.take() {
                let us = shared.now_ns().saturating_sub(dropped_ns) / 1000;
                if let Ok(mut h) = shared.recover_us.lock() {
                    h.saturating_record(us.max(1));
                }
            }
            if !track.was_ready {
                track.was_ready = true;
                shared.ready.fetch_add(1, Relaxed);
                shared.ready_per_user[spec.user % shared.users].fetch_add(1, Relaxed);
                shared.last_ready_ns.fetch_max(shared.now_ns(), Relaxed);
            }
        }
        if ready && !home && shared.rebalance.load(Relaxed) {
            return StreamEnd::Moved;
        }
        let kind = match outcome {
            ReadOutcome::Continue => continue,
            ReadOutcome::Closed => "closed_by_server".to_string(),
            ReadOutcome::Ended => "stream_ended_by_server".to_string(),
            ReadOutcome::Failed(k) => k,
        };
        return if ready {
            StreamEnd::Dropped(kind)
        } else {
            StreamEnd::NotReady(kind)
        };
    }
}
