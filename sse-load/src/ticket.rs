//! Stream tickets (`--ticket-bearer`): before a subscriber opens its stream it asks the server
//! for a one-use ticket with `POST /auth/ticket` and a bearer token, on a connection of its own
//! (so the stream's connection starts with its `GET`, as a browser's EventSource does), and
//! appends `ticket=<ticket>` to the stream's URL.

use crate::client::io_kind;
use crate::http::{self, ChunkDecoder};
use crate::target::UrlTemplate;
use std::net::IpAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest ticket response read, head and body.
const MAX_RESPONSE: usize = 64 * 1024;

/// Fetches one ticket; errors are short kinds for the error counts.
pub async fn fetch(
    tpl: &UrlTemplate,
    source: Option<IpAddr>,
    bearer: &str,
) -> Result<String, String> {
    let host = &tpl.host_header;
    let mut stream = crate::tls::open(tpl, source, false).await?;
    let req = format!(
        "POST /auth/ticket HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {bearer}\r\nContent-Length: 0\r\nConnection: close\r\nUser-Agent: sse-load\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| io_kind("ticket_write", &e))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| io_kind("ticket_read", &e))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err("ticket_response_too_large".into());
        }
    }
    parse_response(&buf)
}

/// The ticket in a complete `200` response (closed by the server after it).
fn parse_response(buf: &[u8]) -> Result<String, String> {
    let end = http::find_head_end(buf).ok_or("ticket_incomplete_head")?;
    let head = http::parse_head(&buf[..end]).map_err(|e| format!("ticket_{}", e.kind()))?;
    if head.status != 200 {
        return Err(format!("ticket_status_{}", head.status));
    }
    let raw = &buf[end..];
    let body = if head.chunked {
        let mut dec = ChunkDecoder::new();
        let mut input = raw;
        let mut body = Vec::new();
        while let Some(part) = dec
            .next(&mut input)
            .map_err(|e| format!("ticket_{}", e.kind()))?
        {
            body.extend_from_slice(part);
        }
        body
    } else {
        let len = head
            .content_length
            .map_or(raw.len(), |l| usize::try_from(l).unwrap_or(usize::MAX));
        raw.get(..len).ok_or("ticket_short_body")?.to_vec()
    };
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| "ticket_bad_json")?;
    v.get("ticket")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| "ticket_missing".into())
}

/// `path` with `ticket=<ticket>` appended to its query, percent-encoded.
pub fn with_ticket(path: &str, ticket: &str) -> String {
    let mut out = String::with_capacity(path.len() + ticket.len() + 8);
    out.push_str(path);
    out.push(if path.contains('?') { '&' } else { '?' });
    out.push_str("ticket=");
    for b in ticket.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_from_sized_and_chunked_bodies() {
        let sized =
            b"HTTP/1.1 200 OK\r\ncontent-length: 31\r\n\r\n{\"ticket\":\"a.b-c\",\"expiresIn\":30}";
        assert_eq!(parse_response(sized), Err("ticket_bad_json".into()));
        let sized =
            b"HTTP/1.1 200 OK\r\ncontent-length: 33\r\n\r\n{\"ticket\":\"a.b-c\",\"expiresIn\":30}";
        assert_eq!(parse_response(sized).as_deref(), Ok("a.b-c"));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"tic\r\n10\r\nket\":\"xyz\"}     \r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).as_deref(), Ok("xyz"));
        let refused = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(refused), Err("ticket_status_401".into()));
        assert_eq!(
            parse_response(b"HTTP/1.1 200"),
            Err("ticket_incomplete_head".into())
        );
    }

    #[test]
    fn the_ticket_joins_the_query() {
        assert_eq!(
            with_ticket("/v2/sse?username=u1", "a+b"),
            "/v2/sse?username=u1&ticket=a%2Bb"
        );
        assert_eq!(with_ticket("/v4/sse", "t_1"), "/v4/sse?ticket=t_1");
    }
}
