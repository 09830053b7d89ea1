//! SSE frame encoding: the only place where untrusted text becomes `text/event-stream` bytes.
//!
//! Frames are written by hand instead of through `axum::response::sse::Event`, whose setters
//! panic on CR/LF in several fields. Every frame is encoded once into [`Bytes`] and shared by all
//! connections that receive it.
//!
//! The rules that make hostile text harmless:
//! - a body is split at every line break (CRLF, lone CR, lone LF) and each line becomes its own
//!   `data:` line, so a WHATWG parser hands the client the body with each break as `\n`, and no
//!   line of a body can ever start a field of its own (`event:`, `id:`, `retry:`);
//! - event names are an allow-listed [`EventName`], ids are produced by the server ([`EventId`]);
//!   both live in [`crate::domain`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::domain::{EventId, EventName};

/// The keep-alive comment the original demo sent, kept byte for byte.
pub const KEEP_ALIVE: &[u8] = b": keep-alive-text\n\n";

/// Event type of the frame that tells a resuming client its history could not be replayed.
pub const RESET_EVENT: &str = "reset";

/// Encodes one event: optional `id:`, optional `event:`, then one `data:` line per line of
/// `data`, then the blank line that dispatches it.
///
/// `data` may hold any text at all; see the module docs for why that is safe.
pub fn encode_event(id: Option<&EventId>, event: Option<&EventName>, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(data.len() + 32);
    if let Some(id) = id {
        put_field(&mut buf, "id", id.as_str());
    }
    if let Some(event) = event {
        put_field(&mut buf, "event", event.as_str());
    }
    put_data(&mut buf, data);
    buf.put_u8(b'\n');
    buf.freeze()
}

/// Event type of the last frame of a stream whose token expired.
pub const AUTH_EXPIRED_EVENT: &str = "auth_expired";

/// The frame that ends a stream whose authorisation ended: `event: auth_expired` with
/// `{"reason":"token expired"}` (no id: the client resumes from its last real event).
pub fn auth_expired_frame() -> Bytes {
    Bytes::from(format!(
        "event: {AUTH_EXPIRED_EVENT}\ndata: {{\"reason\":\"token expired\"}}\n\n"
    ))
}

/// The first bytes of every stream: a `retry:` hint and a comment, so proxies and clients see
/// the stream is open before the first event.
pub fn preamble(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n: connected\n\n"))
}

fn put_field(buf: &mut BytesMut, name: &str, value: &str) {
    buf.put_slice(name.as_bytes());
    buf.put_slice(b": ");
    buf.put_slice(value.as_bytes());
    buf.put_u8(b'\n');
}

/// Writes `data: <line>\n` for every line of `data`, treating CRLF, CR and LF each as one break.
/// A trailing break yields a trailing empty line, so the client receives the text unchanged
/// except that every break is `\n`.
fn put_data(buf: &mut BytesMut, data: &str) {
    let bytes = data.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                put_field(buf, "data", &data[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                put_field(buf, "data", &data[start..i]);
                i += if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    put_field(buf, "data", &data[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn plain_event() {
        let id = EventId::pair(7, 42);
        let ev = EventName::parse("update").unwrap();
        assert_eq!(
            text(encode_event(Some(&id), Some(&ev), "hello")),
            "id: 7-42\nevent: update\ndata: hello\n\n"
        );
        assert_eq!(text(encode_event(None, None, "hi!")), "data: hi!\n\n");
    }

    #[test]
    fn every_line_break_becomes_its_own_data_line() {
        assert_eq!(
            text(encode_event(None, None, "x\r\n\r\ndata: injected")),
            "data: x\ndata: \ndata: data: injected\n\n"
        );
        assert_eq!(
            text(encode_event(None, None, "a\r\nb")),
            "data: a\ndata: b\n\n"
        );
        assert_eq!(
            text(encode_event(None, None, "a\rb\nc")),
            "data: a\ndata: b\ndata: c\n\n"
        );
        assert_eq!(text(encode_event(None, None, "a\n")), "data: a\ndata: \n\n");
        assert_eq!(
            text(encode_event(None, None, "\nid: 1\nevent: x\nretry: 1")),
            "data: \ndata: id: 1\ndata: event: x\ndata: retry: 1\n\n"
        );
    }

    #[test]
    fn nul_bom_and_emoji_pass_verbatim() {
        let body = "\u{feff}a\0b 🦋";
        assert_eq!(
            text(encode_event(None, None, body)),
            format!("data: {body}\n\n")
        );
    }
}
