//! Incremental SSE client decoding: an HTTP/1.1 response head check (`200`,
//! `text/event-stream`), the body framing (chunked, content-length or until close) and a
//! WHATWG-style `text/event-stream` parser (data/id/event fields, comments ignored, CRLF, LF and
//! CR line endings), all fed with arbitrary splits of the byte stream.
//!
//! Per-connection state is a few small `Vec`s that stay empty until used, so tens of thousands of
//! connections fit in one process.

use crate::http::{self, ChunkDecoder, HttpError};
use std::fmt;

/// Longest SSE line accepted, in bytes.
pub const MAX_LINE: usize = 1 << 20;

/// One dispatched event. Slices borrow the parser's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// Event type (`event:` field); empty means the default `message`.
    pub event: &'a [u8],
    /// Data lines joined by `\n`.
    pub data: &'a [u8],
    /// Last event id seen on this stream (`id:` field), empty when none.
    pub id: &'a [u8],
}

/// Why a stream was rejected or abandoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The HTTP layer failed.
    Http(HttpError),
    /// The status code was not 200.
    Status(u16),
    /// The `Content-Type` was not `text/event-stream`.
    NotEventStream,
    /// An SSE line exceeded [`MAX_LINE`].
    LineTooLong,
}

impl StreamError {
    /// Short stable name, used as a key when errors are counted.
    pub fn kind(&self) -> String {
        match self {
            StreamError::Http(e) => e.kind().to_string(),
            StreamError::Status(s) => format!("status_{s}"),
            StreamError::NotEventStream => "not_event_stream".to_string(),
            StreamError::LineTooLong => "line_too_long".to_string(),
        }
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind())
    }
}

impl From<HttpError> for StreamError {
    fn from(e: HttpError) -> Self {
        StreamError::Http(e)
    }
}

/// Incremental `text/event-stream` parser.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    event: Vec<u8>,
    id: Vec<u8>,
    after_cr: bool,
    past_first_line: bool,
}

impl SseParser {
    /// An empty parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream; calls `on_event` for every complete event.
    pub fn feed<F: FnMut(SseEvent<'_>)>(
        &mut self,
        mut input: &[u8],
        on_event: &mut F,
    ) -> Result<(), StreamError> {
        while !input.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if input[0] == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            match input.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    if self.line.len() + input.len() > MAX_LINE {
                        return Err(StreamError::LineTooLong);
                    }
                    self.line.extend_from_slice(input);
                    return Ok(());
                }
                Some(pos) => {
                    self.after_cr = input[pos] == b'\r';
                    if self.line.is_empty() {
                        self.line_done(&input[..pos], on_event);
                    } else {
                        if self.line.len() + pos > MAX_LINE {
                            return Err(StreamError::LineTooLong);
                        }
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(&input[..pos]);
                        self.line_done(&line, on_event);
                        line.clear();
                        if line.capacity() <= 4096 {
                            self.line = line;
                        }
                    }
                    input = &input[pos + 1..];
                }
            }
        }
        Ok(())
    }

    fn line_done<F: FnMut(SseEvent<'_>)>(&mut self, mut line: &[u8], on_event: &mut F) {
        if !self.past_first_line {
            self.past_first_line = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            if !self.data.is_empty() {
                let data = &self.data[..self.data.len() - 1];
                on_event(SseEvent {
                    event: &self.event,
                    data,
                    id: &self.id,
                });
                self.data.clear();
                if self.data.capacity() > 64 * 1024 {
                    self.data = Vec::new();
                }
            }
            self.event.clear();
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"id" if !value.contains(&0) => {
                self.id.clear();
                self.id.extend_from_slice(value);
            }
            _ => {}
        }
    }
}

#[derive(Debug)]
enum Body {
    Chunked(ChunkDecoder),
    Length(u64),
    UntilClose,
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Body(Body),
    Ended,
}

/// A whole SSE response: head check, body framing and event parsing.
#[derive(Debug)]
pub struct SseStream {
    state: State,
    parser: SseParser,
}

impl Default for SseStream {
    fn default() -> Self {
        Self::new()
    }
}

impl SseStream {
    /// A stream waiting for the response head.
    pub fn new() -> Self {
        SseStream {
            state: State::Head(Vec::new()),
            parser: SseParser::new(),
        }
    }

    /// True once a `200 text/event-stream` head has been accepted.
    pub fn is_ready(&self) -> bool {
        !matches!(self.state, State::Head(_))
    }

    /// True once the body has ended (last chunk or content length reached).
    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    /// Feeds bytes read from the socket.
    pub fn feed<F: FnMut(SseEvent<'_>)>(
        &mut self,
        input: &[u8],
        on_event: &mut F,
    ) -> Result<(), StreamError> {
        let mut input = input;
        if let State::Head(buf) = &mut self.state {
            let old = buf.len();
            // Look for the terminator only in what could complete it.
            let take = input
                .len()
                .min(http::MAX_HEAD + 4 - old.min(http::MAX_HEAD));
            buf.extend_from_slice(&input[..take]);
            let scan_from = old.saturating_sub(3);
            let end = http::find_head_end(&buf[scan_from..]).map(|e| e + scan_from);
            let Some(end) = end else {
                if buf.len() > http::MAX_HEAD {
                    return Err(HttpError::HeadTooLarge.into());
                }
                return Ok(());
            };
            if end > http::MAX_HEAD {
                return Err(HttpError::HeadTooLarge.into());
            }
            let head = http::parse_head(&buf[..end])?;
            if head.status != 200 {
                return Err(StreamError::Status(head.status));
            }
            if !head.event_stream {
                return Err(StreamError::NotEventStream);
            }
            // Bytes of `input` that belong to the body.
            let consumed_from_input = end - old;
            input = &input[consumed_from_input..];
            self.state = if head.chunked {
                State::Body(Body::Chunked(ChunkDecoder::new()))
            } else if let Some(n) = head.content_length {
                if n == 0 {
                    State::Ended
                } else {
                    State::Body(Body::Length(n))
                }
            } else {
                State::Body(Body::UntilClose)
            };
        }
        match &mut self.state {
            State::Head(_) | State::Ended => Ok(()),
            State::Body(Body::UntilClose) => self.parser.feed(input, on_event),
            State::Body(Body::Length(left)) => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                *left -= take as u64;
                let ended = *left == 0;
                self.parser.feed(&input[..take], on_event)?;
                if ended {
                    self.state = State::Ended;
                }
                Ok(())
            }
            State::Body(Body::Chunked(dec)) => {
                while let Some(data) = dec.next(&mut input)? {
                    self.parser.feed(data, on_event)?;
                }
                if dec.is_done() {
                    self.state = State::Ended;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Ev {
        event: String,
        data: String,
        id: String,
    }

    fn collect(parts: &[&[u8]]) -> (Vec<Ev>, Result<(), StreamError>, SseStream) {
        let mut s = SseStream::new();
        let mut evs = Vec::new();
        let mut res = Ok(());
        for p in parts {
            res = s.feed(p, &mut |e: SseEvent<'_>| {
                evs.push(Ev {
                    event: String::from_utf8_lossy(e.event).into(),
                    data: String::from_utf8_lossy(e.data).into(),
                    id: String::from_utf8_lossy(e.id).into(),
                })
            });
            if res.is_err() {
                break;
            }
        }
        (evs, res, s)
    }

    fn ev(event: &str, data: &str, id: &str) -> Ev {
        Ev {
            event: event.into(),
            data: data.into(),
            id: id.into(),
        }
    }

    fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in body.chunks(chunk) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    const SSE_BODY: &[u8] = b"\xEF\xBB\xBF: hi\n\nid: 1\r\ndata: one\r\n\r\n: comment\nevent: upd\ndata:two\ndata: lines\n\nretry: 5\nid: 2\rdata\r\r:x\ndata: a:b\n\ndata: no dispatch yet";

    fn expected() -> Vec<Ev> {
        vec![
            ev("", "one", "1"),
            ev("upd", "two\nlines", "1"),
            ev("", "", "2"),
            ev("", "a:b", "2"),
        ]
    }

    #[test]
    fn parser_every_split() {
        let want = expected();
        for i in 0..=SSE_BODY.len() {
            for j in i..=SSE_BODY.len() {
                let mut p = SseParser::new();
                let mut got = Vec::new();
                let mut push = |e: SseEvent<'_>| {
                    got.push(ev(
                        std::str::from_utf8(e.event).unwrap(),
                        std::str::from_utf8(e.data).unwrap(),
                        std::str::from_utf8(e.id).unwrap(),
                    ))
                };
                p.feed(&SSE_BODY[..i], &mut push).unwrap();
                p.feed(&SSE_BODY[i..j], &mut push).unwrap();
                p.feed(&SSE_BODY[j..], &mut push).unwrap();
                assert_eq!(got, want, "split at {i} {j}");
            }
        }
    }

    #[test]
    fn full_stream_chunked_every_split() {
        for chunk in [1, 3, 7, 1000] {
            let mut raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n".to_vec();
            raw.extend_from_slice(&chunked(SSE_BODY, chunk));
            for i in 0..=raw.len() {
                let (evs, res, s) = collect(&[&raw[..i], &raw[i..]]);
                res.unwrap();
                assert_eq!(evs, expected(), "chunk {chunk} split {i}");
                assert!(s.is_ready() && s.is_ended());
            }
            // Byte by byte.
            let parts: Vec<&[u8]> = raw.chunks(1).collect();
            let (evs, res, s) = collect(&parts);
            res.unwrap();
            assert_eq!(evs, expected());
            assert!(s.is_ended());
        }
    }

    #[test]
    fn lf_only_head_and_content_length_and_until_close() {
        let mut raw = format!(
            "HTTP/1.1 200 OK\nContent-Type: text/event-stream\nContent-Length: {}\n\n",
            SSE_BODY.len()
        )
        .into_bytes();
        raw.extend_from_slice(SSE_BODY);
        raw.extend_from_slice(b"JUNK AFTER");
        let (evs, res, s) = collect(&[&raw]);
        res.unwrap();
        assert_eq!(evs, expected());
        assert!(s.is_ended());

        let mut raw = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n".to_vec();
        raw.extend_from_slice(SSE_BODY);
        let (evs, res, s) = collect(&[&raw]);
        res.unwrap();
        assert_eq!(evs, expected());
        assert!(s.is_ready() && !s.is_ended());
    }

    #[test]
    fn rejects_bad_responses_without_panicking() {
        let (_, res, s) = collect(&[b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]);
        assert_eq!(res, Err(StreamError::Status(404)));
        assert!(!s.is_ready());
        let (_, res, _) = collect(&[b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"]);
        assert_eq!(res, Err(StreamError::NotEventStream));
        let (_, res, _) = collect(&[b"SSH-2.0-OpenSSH\r\n\r\n"]);
        assert_eq!(res, Err(StreamError::Http(HttpError::BadHead)));
        let big = vec![b'a'; http::MAX_HEAD + 10];
        let (_, res, _) = collect(&[b"HTTP/1.1 200 OK\r\nX: ", &big]);
        assert_eq!(res, Err(StreamError::Http(HttpError::HeadTooLarge)));
        let (_, res, _) = collect(&[
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
        ]);
        assert_eq!(res, Err(StreamError::Http(HttpError::BadChunk)));
        let mut p = SseParser::new();
        let long = vec![b'x'; MAX_LINE + 1];
        assert_eq!(p.feed(&long, &mut |_| {}), Err(StreamError::LineTooLong));
        assert_eq!(StreamError::Status(502).kind(), "status_502");
    }
}
