//! Message bodies: each published body carries a run tag, its sequence number and its send
//! time, so a receiver can compute latency and detect loss and duplication.
//!
//! Format: `sl<RUN>:<SEQ>:<NANOS>;` padded with `x` up to the requested size, where `RUN` is a
//! per-process hex tag (so messages from an earlier run still buffered by the server are not
//! mistaken for this run's), `SEQ` the message number and `NANOS` the send time in nanoseconds
//! since the process-wide epoch. The tag is searched anywhere in the event data, so a server that
//! wraps the body (for example in JSON) is still measured, as long as it does not escape digits,
//! letters, `:` or `;`.

/// Builds the tag prefix `sl<RUN>:` for a run id.
pub fn run_tag(run: u32) -> Vec<u8> {
    format!("sl{run:08x}:").into_bytes()
}

/// Builds one message body, padded with `x` to at least `size` bytes.
pub fn make_body(tag: &[u8], seq: u64, sent_ns: u64, size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size.max(48));
    body.extend_from_slice(tag);
    body.extend_from_slice(format!("{seq}:{sent_ns};").as_bytes());
    if body.len() < size {
        body.resize(size, b'x');
    }
    body
}

/// Finds this run's tag in `data` and returns `(seq, sent_ns)`.
pub fn parse_body(tag: &[u8], data: &[u8]) -> Option<(u64, u64)> {
    if tag.is_empty() || data.len() < tag.len() {
        return None;
    }
    let start = data.windows(tag.len()).position(|w| w == tag)? + tag.len();
    let rest = &data[start..];
    let (seq, rest) = parse_u64(rest)?;
    let rest = rest.strip_prefix(b":")?;
    let (ns, rest) = parse_u64(rest)?;
    rest.strip_prefix(b";")?;
    Some((seq, ns))
}

fn parse_u64(s: &[u8]) -> Option<(u64, &[u8])> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in &s[..n] {
        v = v * 10 + u64::from(b - b'0');
    }
    Some((v, &s[n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let tag = run_tag(0xabc);
        assert_eq!(tag, b"sl00000abc:");
        let b = make_body(&tag, 42, 123_456_789, 64);
        assert_eq!(b.len(), 64);
        assert!(b.starts_with(b"sl00000abc:42:123456789;xxx"));
        assert_eq!(parse_body(&tag, &b), Some((42, 123_456_789)));
        let short = make_body(&tag, 1, 2, 0);
        assert_eq!(short, b"sl00000abc:1:2;");
    }

    #[test]
    fn finds_tag_inside_wrapping() {
        let tag = run_tag(7);
        let data = br#"{"user":"u12","id":99,"message":"sl00000007:5:1000;xxxx"}"#;
        assert_eq!(parse_body(&tag, data), Some((5, 1000)));
    }

    #[test]
    fn ignores_other_runs_and_garbage() {
        let tag = run_tag(7);
        assert_eq!(parse_body(&tag, b"sl00000008:5:1000;"), None);
        assert_eq!(parse_body(&tag, b"hello"), None);
        assert_eq!(parse_body(&tag, b""), None);
        assert_eq!(parse_body(&tag, b"sl00000007:5:;"), None);
        assert_eq!(parse_body(&tag, b"sl00000007:5:10"), None);
        assert_eq!(
            parse_body(&tag, b"sl00000007:99999999999999999999:1;"),
            None
        );
    }
}
