//! Publisher: a small pool of keep-alive HTTP/1.1 connections that POST tagged message bodies
//! at a fixed schedule (message `seq` is due at `start + seq * period`) and accept any 2xx.
//!
//! Requests and responses are raw HTTP/1.1 over tokio `TcpStream`: the head is parsed with
//! [`crate::http`], bodies are skipped by `Content-Length`, chunked framing, or until close.

use crate::client::{Shared, io_kind};
use crate::http::{self, ChunkDecoder};
use crate::payload;
use crate::target::UrlTemplate;
use crate::tls::Conn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// One keep-alive publishing connection.
pub struct PubConn {
    tpl: Arc<UrlTemplate>,
    /// The `Authorization` header line, when publishing with a bearer token.
    auth: String,
    stream: Option<Conn>,
    buf: Vec<u8>,
    reused: bool,
}

/// Result of one POST.
#[derive(Debug)]
pub enum PostError {
    /// A non-2xx status.
    Status(u16),
    /// Any transport or framing failure, by kind.
    Io(String),
}

impl PostError {
    /// Short stable name for error counts.
    pub fn kind(&self) -> String {
        match self {
            PostError::Status(s) => format!("publish_status_{s}"),
            PostError::Io(k) => format!("publish_{k}"),
        }
    }
}

impl PubConn {
    /// A connection to the template's target, opened on first use.
    pub fn new(tpl: Arc<UrlTemplate>, bearer: Option<&str>) -> Self {
        PubConn {
            tpl,
            auth: bearer.map_or_else(String::new, |b| format!("Authorization: Bearer {b}\r\n")),
            stream: None,
            buf: Vec::with_capacity(4096),
            reused: false,
        }
    }

    /// POSTs `body` to `path`. Retries once on a fresh connection when a reused keep-alive
    /// connection turns out closed before any response byte arrived.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> Result<u16, PostError> {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: text/plain\r\nContent-Length: {}\r\nUser-Agent: sse-load\r\n\r\n",
            self.tpl.host_header,
            self.auth,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        for attempt in 0..2 {
            match self.try_post(&req).await {
                Ok(status) => return Ok(status),
                Err((e, retryable)) => {
                    self.stream = None;
                    if !(retryable && attempt == 0) {
                        return Err(e);
                    }
                }
            }
        }
        Err(PostError::Io("retry_exhausted".into()))
    }

    async fn try_post(&mut self, req: &[u8]) -> Result<u16, (PostError, bool)> {
        if self.stream.is_none() {
            let s = crate::tls::open(&self.tpl, None, false)
                .await
                .map_err(|k| (PostError::Io(k), false))?;
            self.stream = Some(s);
            self.reused = false;
            self.buf.clear();
        }
        let reused = self.reused;
        let Some(stream) = self.stream.as_mut() else {
            return Err((PostError::Io("no_stream".into()), false));
        };
        stream
            .write_all(req)
            .await
            .map_err(|e| (PostError::Io(io_kind("write", &e)), reused))?;
        // Read the head.
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = http::find_head_end(&self.buf) {
                break end;
            }
            if self.buf.len() > http::MAX_HEAD {
                return Err((PostError::Io("head_too_large".into()), false));
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| (PostError::Io(io_kind("read", &e)), false))?;
            if n == 0 {
                let retry = reused && self.buf.is_empty();
                return Err((PostError::Io("closed_by_server".into()), retry));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = http::parse_head(&self.buf[..head_end])
            .map_err(|e| (PostError::Io(e.kind().into()), false))?;
        let mut close = head.close;
        // Skip the body.
        let mut pending = self.buf.split_off(head_end);
        if head.bodyless() {
            // Nothing to read.
        } else if head.chunked {
            let mut dec = ChunkDecoder::new();
            loop {
                let mut input: &[u8] = &pending;
                while dec
                    .next(&mut input)
                    .map_err(|e| (PostError::Io(e.kind().into()), false))?
                    .is_some()
                {}
                if dec.is_done() {
                    break;
                }
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| (PostError::Io(io_kind("read", &e)), false))?;
                if n == 0 {
                    return Err((PostError::Io("closed_in_body".into()), false));
                }
                pending.clear();
                pending.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(len) = head.content_length {
            let mut have = pending.len() as u64;
            while have < len {
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| (PostError::Io(io_kind("read", &e)), false))?;
                if n == 0 {
                    return Err((PostError::Io("closed_in_body".into()), false));
                }
                have += n as u64;
            }
        } else {
            // Body delimited by close.
            loop {
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| (PostError::Io(io_kind("read", &e)), false))?;
                if n == 0 {
                    break;
                }
            }
            close = true;
        }
        if close {
            self.stream = None;
        } else {
            self.reused = true;
        }
        if (200..300).contains(&head.status) {
            Ok(head.status)
        } else {
            Err((PostError::Status(head.status), false))
        }
    }
}

/// Publishing summary.
#[derive(Debug, Default, Clone)]
pub struct PubStats {
    /// Messages acknowledged with a 2xx.
    pub acked: u64,
    /// Messages whose POST failed.
    pub failed: u64,
    /// Messages not sent because the phase deadline passed.
    pub skipped: u64,
    /// Largest delay of a send behind its schedule, in microseconds.
    pub max_behind_us: u64,
    /// Time from the first send to the last acknowledgement.
    pub elapsed: Duration,
}

/// Publishes `shared.messages` messages over `pool` connections (connection i to template
/// i mod their number), message `seq` to user `seq % users`, due at `start + seq * period`;
/// nothing is sent after `deadline`.
pub async fn publish_all(
    tpls: Vec<Arc<UrlTemplate>>,
    shared: Arc<Shared>,
    pool: usize,
    period: Duration,
    size: usize,
    deadline: Instant,
) -> PubStats {
    if tpls.is_empty() {
        return PubStats::default();
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(5);
    let mut handles = Vec::new();
    for worker in 0..pool.max(1) {
        let tpl = tpls[worker % tpls.len().max(1)].clone();
        let shared = shared.clone();
        let next = next.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = PubConn::new(tpl.clone(), shared.bearer.as_deref());
            let mut st = PubStats::default();
            loop {
                let seq = next.fetch_add(1, Relaxed);
                if seq >= shared.messages {
                    break;
                }
                let due = start + period.saturating_mul(u32::try_from(seq).unwrap_or(u32::MAX));
                if due > deadline {
                    // Claim the rest so other workers stop too; they count as skipped.
                    next.store(shared.messages, Relaxed);
                    break;
                }
                tokio::time::sleep_until(due).await;
                let now = Instant::now();
                if now > deadline {
                    break;
                }
                st.max_behind_us = st
                    .max_behind_us
                    .max(u64::try_from(now.duration_since(due).as_micros()).unwrap_or(u64::MAX));
                let user = seq % shared.users;
                let path = tpl.render(shared.user_base + user, worker);
                let sent_ns = shared.now_ns();
                let body = payload::make_body(&shared.tag, seq as u64, sent_ns, size);
                shared.msg_sent_ns[seq].store(sent_ns, Relaxed);
                let res = tokio::time::timeout_at(deadline, conn.post(&path, &body)).await;
                match res {
                    Ok(Ok(_)) => {
                        shared.msg_acked[seq].store(true, Relaxed);
                        st.acked += 1;
                    }
                    Ok(Err(e)) => {
                        shared.error(&e.kind());
                        st.failed += 1;
                    }
                    Err(_) => {
                        shared.error("publish_timeout");
                        st.failed += 1;
                        conn = PubConn::new(tpl.clone(), shared.bearer.as_deref());
                    }
                }
            }
            st
        }));
    }
    let mut total = PubStats::default();
    for h in handles {
        if let Ok(st) = h.await {
            total.acked += st.acked;
            total.failed += st.failed;
            total.max_behind_us = total.max_behind_us.max(st.max_behind_us);
        }
    }
    total.skipped = (shared.messages as u64).saturating_sub(total.acked + total.failed);
    total.elapsed = Instant::now().saturating_duration_since(start);
    total
}
