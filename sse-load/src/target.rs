//! URL templates for the subscribe and publish endpoints, and the loopback-only target check.
//!
//! A template is an `http://HOST:PORT/path?query` (or `https://`) URL whose path and query may contain the
//! placeholders `{user}` (user index) and `{conn}` (connection index). The host must be an IP
//! literal in `127.0.0.0/8`, `[::1]`, or `localhost` (taken as `127.0.0.1`, never resolved):
//! the tool refuses every other target so that it can never load a machine other than this one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// One piece of a parsed path template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    User,
    Conn,
}

/// A parsed, loopback-checked URL template.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    /// Socket address of the target.
    pub addr: SocketAddr,
    /// Value of the `Host` header (`127.0.0.1:3000`, `[::1]:3000`).
    pub host_header: String,
    /// `https://`: connections start with a TLS handshake (see `tls`).
    pub tls: bool,
    parts: Vec<Part>,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateError {
    /// Not an `http://` or `https://` URL.
    NotHttp(String),
    /// The host is not an IP literal (or `localhost`), or the authority is malformed.
    BadHost(String),
    /// The host is an IP outside `127.0.0.0/8` and `::1`.
    NotLoopback(String),
    /// The port is not a number in 1..=65535.
    BadPort(String),
    /// An unknown or unterminated `{...}` placeholder, or one in the authority.
    BadPlaceholder(String),
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::NotHttp(u) => {
                write!(f, "only http:// and https:// URLs are supported: {u}")
            }
            TemplateError::BadHost(h) => write!(
                f,
                "host must be an IP literal in 127.0.0.0/8, [::1] or localhost: {h}"
            ),
            TemplateError::NotLoopback(h) => write!(
                f,
                "refusing non-loopback target {h}: only 127.0.0.0/8 and ::1 are allowed"
            ),
            TemplateError::BadPort(p) => write!(f, "bad port: {p}"),
            TemplateError::BadPlaceholder(p) => write!(
                f,
                "bad placeholder {p}: only {{user}} and {{conn}} in the path or query"
            ),
        }
    }
}

impl std::error::Error for TemplateError {}

/// True when `ip` is in `127.0.0.0/8` or is `::1`.
pub fn is_allowed_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

impl UrlTemplate {
    /// Parses and checks a template such as `http://127.0.0.1:3000/v2/sse?username=u{user}`.
    pub fn parse(url: &str) -> Result<Self, TemplateError> {
        let (tls, rest) = match (url.get(..7), url.get(..8)) {
            (Some(s), _) if s.eq_ignore_ascii_case("http://") => (false, &url[7..]),
            (_, Some(s)) if s.eq_ignore_ascii_case("https://") => (true, &url[8..]),
            _ => return Err(TemplateError::NotHttp(url.to_string())),
        };
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains(['{', '}']) {
            return Err(TemplateError::BadPlaceholder(authority.to_string()));
        }
        if authority.is_empty() || authority.contains('@') {
            return Err(TemplateError::BadHost(authority.to_string()));
        }
        let (host, port) = split_host_port(authority)?;
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse()
                .map_err(|_| TemplateError::BadHost(host.to_string()))?
        };
        if !is_allowed_ip(ip) {
            return Err(TemplateError::NotLoopback(ip.to_string()));
        }
        let port: u16 = match port {
            None if tls => 443,
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(TemplateError::BadPort(p.to_string())),
            },
        };
        let addr = SocketAddr::new(ip, port);
        let host_header = addr.to_string();
        // Drop any fragment; it is never sent.
        let path = path.split('#').next().unwrap_or("");
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        let parts = parse_parts(&path)?;
        Ok(UrlTemplate {
            addr,
            host_header,
            tls,
            parts,
        })
    }

    /// Renders the request target (path and query) for one user and connection index.
    pub fn render(&self, user: usize, conn: usize) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::User => out.push_str(&user.to_string()),
                Part::Conn => out.push_str(&conn.to_string()),
            }
        }
        out
    }

    /// True when the template uses `{user}`.
    pub fn uses_user(&self) -> bool {
        self.parts.contains(&Part::User)
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), TemplateError> {
    if let Some(inner) = authority.strip_prefix('[') {
        let end = inner
            .find(']')
            .ok_or_else(|| TemplateError::BadHost(authority.to_string()))?;
        let host = &inner[..end];
        let after = &inner[end + 1..];
        if after.is_empty() {
            Ok((host, None))
        } else if let Some(p) = after.strip_prefix(':') {
            Ok((host, Some(p)))
        } else {
            Err(TemplateError::BadHost(authority.to_string()))
        }
    } else if authority.matches(':').count() > 1 {
        // A bare IPv6 address without brackets is ambiguous.
        Err(TemplateError::BadHost(authority.to_string()))
    } else if let Some((h, p)) = authority.split_once(':') {
        Ok((h, Some(p)))
    } else {
        Ok((authority, None))
    }
}

fn parse_parts(path: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = path;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(TemplateError::BadPlaceholder(rest.to_string()));
        }
        lit.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| TemplateError::BadPlaceholder(rest[open..].to_string()))?;
        let name = &after[..close];
        let part = match name {
            "user" => Part::User,
            "conn" => Part::Conn,
            other => return Err(TemplateError::BadPlaceholder(format!("{{{other}}}"))),
        };
        if !lit.is_empty() {
            parts.push(Part::Lit(std::mem::take(&mut lit)));
        }
        parts.push(part);
        rest = &after[close + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_user_and_conn() {
        let t =
            UrlTemplate::parse("http://127.0.0.1:3000/v2/sse?username=u{user}&c={conn}").unwrap();
        assert_eq!(t.addr, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(t.host_header, "127.0.0.1:3000");
        assert_eq!(t.render(7, 42), "/v2/sse?username=u7&c=42");
        assert!(t.uses_user());
        let t = UrlTemplate::parse("http://127.0.0.1:8090/sub/{user}{user}").unwrap();
        assert_eq!(t.render(3, 0), "/sub/33");
    }

    #[test]
    fn defaults_path_and_port() {
        let t = UrlTemplate::parse("http://127.0.0.1").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.render(0, 0), "/");
        let t = UrlTemplate::parse("HTTP://127.0.0.1:81?x=1#frag").unwrap();
        assert_eq!(t.render(0, 0), "/?x=1");
        assert!(!t.uses_user());
    }

    #[test]
    fn accepts_loopback_forms() {
        for ok in [
            "http://127.0.0.1:1/",
            "http://127.255.255.254:1/",
            "http://127.0.0.2:8090/sub/u{user}",
            "http://[::1]:3000/x",
            "http://localhost:3000/x",
        ] {
            assert!(UrlTemplate::parse(ok).is_ok(), "{ok}");
        }
        let t = UrlTemplate::parse("http://[::1]:3000/x").unwrap();
        assert_eq!(t.host_header, "[::1]:3000");
    }

    #[test]
    fn refuses_non_loopback() {
        for bad in [
            "http://10.0.0.1:3000/",
            "http://0.0.0.0:3000/",
            "http://128.0.0.1/",
            "http://[::2]:80/",
            "http://[::ffff:127.0.0.1]:80/",
            "http://192.168.1.1/",
        ] {
            assert!(
                matches!(UrlTemplate::parse(bad), Err(TemplateError::NotLoopback(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_names_schemes_and_bad_templates() {
        assert!(matches!(
            UrlTemplate::parse("http://example.com/"),
            Err(TemplateError::BadHost(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http://127.0.0.1.nip.io/"),
            Err(TemplateError::BadHost(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http://user@127.0.0.1/"),
            Err(TemplateError::BadHost(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("ftp://127.0.0.1/"),
            Err(TemplateError::NotHttp(_))
        ));
        let tls = UrlTemplate::parse("https://localhost/v2/sse").unwrap();
        assert!(tls.tls);
        assert_eq!(tls.addr.port(), 443);
        assert!(matches!(
            UrlTemplate::parse("https://10.0.0.1/"),
            Err(TemplateError::NotLoopback(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("127.0.0.1:3000/"),
            Err(TemplateError::NotHttp(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http://127.0.0.{user}/"),
            Err(TemplateError::BadPlaceholder(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http://127.0.0.1/{nope}"),
            Err(TemplateError::BadPlaceholder(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http://127.0.0.1/{user"),
            Err(TemplateError::BadPlaceholder(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http://127.0.0.1:0/"),
            Err(TemplateError::BadPort(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http://127.0.0.1:99999/"),
            Err(TemplateError::BadPort(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http://::1:80/"),
            Err(TemplateError::BadHost(_))
        ));
    }
}
