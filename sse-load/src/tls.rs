//! TLS for `https://` templates: one client configuration per run, trusting the certificates
//! of `--ca` (the servers measured here use self-signed ones), and a connection type that is a
//! plain socket or a TLS stream over one.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::target::UrlTemplate;

/// ALPN `http/1.1` (the streams and publishers here) and `h2` (the HTTP/2 hold).
static HTTP1: OnceLock<TlsConnector> = OnceLock::new();
static HTTP2: OnceLock<TlsConnector> = OnceLock::new();

/// Makes the client configurations, trusting the PEM certificates in `ca`.
pub fn configure(ca: &Path) -> Result<(), String> {
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read --ca {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("--ca {} holds no certificate", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let make = |alpn: &[u8]| -> Result<TlsConnector, String> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    };
    let _ = HTTP1.set(make(b"http/1.1")?);
    let _ = HTTP2.set(make(b"h2")?);
    Ok(())
}

/// A connection of a template: a socket, or TLS over one.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to `tpl` (from `source`), with the TLS handshake for `https://` (ALPN `h2` when
/// `h2`, else `http/1.1`).
pub async fn open(tpl: &UrlTemplate, source: Option<IpAddr>, h2: bool) -> Result<Conn, String> {
    let tcp = crate::client::connect(tpl.addr, source).await?;
    if !tpl.tls {
        return Ok(Conn::Plain(tcp));
    }
    let connector = if h2 { HTTP2.get() } else { HTTP1.get() }.ok_or("https_without_ca")?;
    let name = ServerName::IpAddress(tpl.addr.ip().into());
    connector
        .connect(name, tcp)
        .await
        .map(|tls| Conn::Tls(Box::new(tls)))
        .map_err(|e| crate::client::io_kind("tls", &e))
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
