//! Minimal HTTP/1.1 response parsing: the status line and the few headers the load generator
//! needs, plus an incremental decoder for `Transfer-Encoding: chunked` bodies.
//!
//! Everything here is byte-driven and never panics on malformed input: bad responses become
//! [`HttpError`] values that callers count as errors.

use std::fmt;

/// Largest response head accepted, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;

/// A malformed or unwanted HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The head is larger than [`MAX_HEAD`].
    HeadTooLarge,
    /// The status line or a header is malformed.
    BadHead,
    /// A chunk-size line is malformed.
    BadChunk,
}

impl HttpError {
    /// Short stable name, used as a key when errors are counted.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::HeadTooLarge => "head_too_large",
            HttpError::BadHead => "bad_head",
            HttpError::BadChunk => "bad_chunk",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// The parts of a response head the tool looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Content-Type` contains `text/event-stream`.
    pub event_stream: bool,
    /// `Transfer-Encoding` ends with `chunked`.
    pub chunked: bool,
    /// `Content-Length`, when present and valid.
    pub content_length: Option<u64>,
    /// The server will close the connection after this response.
    pub close: bool,
}

impl Head {
    /// True when the response carries no body whatever its headers say.
    pub fn bodyless(&self) -> bool {
        self.status < 200 || self.status == 204 || self.status == 304
    }
}

/// Returns the length of the head (including its terminating blank line) once `buf` holds it.
/// Accepts both `\r\n\r\n` and bare `\n\n`.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let next = nl + 1;
        if buf.get(next) == Some(&b'\n') {
            return Some(next + 1);
        }
        if buf.get(next) == Some(&b'\r') && buf.get(next + 1) == Some(&b'\n') {
            return Some(next + 2);
        }
        i = next;
    }
    None
}

/// Parses a complete head (as delimited by [`find_head_end`]).
pub fn parse_head(head: &[u8]) -> Result<Head, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::BadHead)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().ok_or(HttpError::BadHead)?;
    let mut words = status_line.split(' ');
    let version = words.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::BadHead);
    }
    let code = words.next().unwrap_or("");
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadHead);
    }
    let status: u16 = code.parse().map_err(|_| HttpError::BadHead)?;
    let mut h = Head {
        status,
        event_stream: false,
        chunked: false,
        content_length: None,
        close: version == "HTTP/1.0",
    };
    for line in lines {
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or(HttpError::BadHead)?;
        let name = name.trim();
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            h.event_stream = value.to_ascii_lowercase().contains("text/event-stream");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            h.content_length = Some(value.parse().map_err(|_| HttpError::BadHead)?);
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                h.close = true;
            } else if v.contains("keep-alive") {
                h.close = false;
            }
        }
    }
    Ok(h)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size; `bool` = at least one digit seen.
    Size(bool),
    /// Skipping a chunk extension up to the end of the line.
    Ext,
    /// Saw CR after the size, expecting LF.
    SizeLf,
    /// Inside chunk data with this many bytes left.
    Data(u64),
    /// After chunk data, expecting CR or LF.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// In the trailer section; `bool` = at the start of a line.
    Trailer(bool),
    /// The last chunk and trailers have been read.
    Done,
}

/// Incremental decoder of a chunked body; feed it any split of the byte stream.
#[derive(Debug, Clone)]
pub struct ChunkDecoder {
    state: ChunkState,
    size: u64,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkDecoder {
    /// A decoder positioned at the first chunk-size line.
    pub fn new() -> Self {
        ChunkDecoder {
            state: ChunkState::Size(false),
            size: 0,
        }
    }

    /// True once the terminating zero-size chunk and the trailers have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes framing bytes from `input` and returns the next run of body data, advancing
    /// `input` past it. Returns `Ok(None)` when `input` is exhausted or the body has ended
    /// (bytes after the end are left in `input`).
    pub fn next<'a>(&mut self, input: &mut &'a [u8]) -> Result<Option<&'a [u8]>, HttpError> {
        while let Some((&b, rest)) = input.split_first() {
            match self.state {
                ChunkState::Data(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    let (data, rest) = input.split_at(take);
                    *input = rest;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Some(data));
                }
                ChunkState::Done => return Ok(None),
                state => {
                    *input = rest;
                    self.step(state, b)?;
                }
            }
        }
        Ok(None)
    }

    fn step(&mut self, state: ChunkState, b: u8) -> Result<(), HttpError> {
        self.state = match state {
            ChunkState::Size(seen) => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if self.size > (u64::MAX >> 4) {
                        return Err(HttpError::BadChunk);
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = (self.size << 4) | d;
                    ChunkState::Size(true)
                }
                b';' | b' ' | b'\t' if seen => ChunkState::Ext,
                b'\r' if seen => ChunkState::SizeLf,
                b'\n' if seen => self.size_line_done(),
                _ => return Err(HttpError::BadChunk),
            },
            ChunkState::Ext => {
                if b == b'\n' {
                    self.size_line_done()
                } else {
                    ChunkState::Ext
                }
            }
            ChunkState::SizeLf => {
                if b == b'\n' {
                    self.size_line_done()
                } else {
                    return Err(HttpError::BadChunk);
                }
            }
            ChunkState::DataCr => match b {
                b'\r' => ChunkState::DataLf,
                b'\n' => ChunkState::Size(false),
                _ => return Err(HttpError::BadChunk),
            },
            ChunkState::DataLf => {
                if b == b'\n' {
                    ChunkState::Size(false)
                } else {
                    return Err(HttpError::BadChunk);
                }
            }
            ChunkState::Trailer(at_start) => match b {
                b'\r' => ChunkState::Trailer(at_start),
                b'\n' if at_start => ChunkState::Done,
                b'\n' => ChunkState::Trailer(true),
                _ => ChunkState::Trailer(false),
            },
            s @ (ChunkState::Data(_) | ChunkState::Done) => s,
        };
        Ok(())
    }

    fn size_line_done(&mut self) -> ChunkState {
        let size = std::mem::take(&mut self.size);
        if size == 0 {
            ChunkState::Trailer(true)
        } else {
            ChunkState::Data(size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(parts: &[&[u8]]) -> Result<(Vec<u8>, bool), HttpError> {
        let mut d = ChunkDecoder::new();
        let mut out = Vec::new();
        for p in parts {
            let mut input: &[u8] = p;
            while let Some(data) = d.next(&mut input)? {
                out.extend_from_slice(data);
            }
        }
        Ok((out, d.is_done()))
    }

    #[test]
    fn head_parsing() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        let end = find_head_end(raw).unwrap();
        assert_eq!(&raw[end..], b"rest");
        let h = parse_head(&raw[..end]).unwrap();
        assert_eq!(h.status, 200);
        assert!(h.event_stream && h.chunked && !h.close);
        assert_eq!(h.content_length, None);

        let raw = b"HTTP/1.0 404 Not Found\nContent-Length: 9\nconnection: close\n\n";
        let end = find_head_end(raw).unwrap();
        assert_eq!(end, raw.len());
        let h = parse_head(&raw[..end]).unwrap();
        assert_eq!(h.status, 404);
        assert_eq!(h.content_length, Some(9));
        assert!(h.close && !h.event_stream && !h.chunked);

        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\nX: y\r\n"), None);
        assert_eq!(parse_head(b"garbage\r\n\r\n"), Err(HttpError::BadHead));
        assert_eq!(
            parse_head(b"HTTP/1.1 2000 OK\r\n\r\n"),
            Err(HttpError::BadHead)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"),
            Err(HttpError::BadHead)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(HttpError::BadHead)
        );
    }

    #[test]
    fn chunked_whole_and_split_everywhere() {
        let body: &[u8] = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-T: 1\r\n\r\nAFTER";
        let (out, done) = decode_all(&[body]).unwrap();
        assert_eq!(out, b"hello world!");
        assert!(done);
        for i in 0..body.len() {
            for j in i..body.len() {
                let (out, done) = decode_all(&[&body[..i], &body[i..j], &body[j..]]).unwrap();
                assert_eq!(out, b"hello world!", "split {i} {j}");
                assert!(done);
            }
        }
    }

    #[test]
    fn chunked_leaves_bytes_after_end_and_tolerates_bare_lf() {
        let mut d = ChunkDecoder::new();
        let mut input: &[u8] = b"3\nabc\n0\n\nNEXT";
        let mut out = Vec::new();
        while let Some(x) = d.next(&mut input).unwrap() {
            out.extend_from_slice(x);
        }
        assert_eq!(out, b"abc");
        assert!(d.is_done());
        assert_eq!(input, b"NEXT");
    }

    #[test]
    fn chunked_rejects_garbage() {
        assert_eq!(decode_all(&[b"zz\r\n"]), Err(HttpError::BadChunk));
        assert_eq!(decode_all(&[b"\r\n"]), Err(HttpError::BadChunk));
        assert_eq!(decode_all(&[b"2\r\nabX"]), Err(HttpError::BadChunk));
        assert_eq!(
            decode_all(&[b"fffffffffffffffff\r\n"]),
            Err(HttpError::BadChunk)
        );
    }
}
