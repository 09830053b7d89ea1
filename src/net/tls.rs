//! HTTPS: the certificate chain and key of `--tls-cert` / `--tls-key`, and the rustls
//! configuration that offers HTTP/2 and HTTP/1.1 by ALPN.
//!
//! Certificates are renewed while streams stay open: [`Tls::watch`] reads both files again on
//! SIGHUP and whenever their size or modification time changes. Handshakes that follow get the
//! new pair; connections already open keep theirs. A pair that does not load (a half-written
//! file, a key of another certificate) is logged and the current one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the files' size and modification time are looked at.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What the files looked like when they were last read: size and modification time of each.
type Stamp = [(u64, Option<SystemTime>); 2];

/// The TLS side of the listener.
pub struct Tls {
    acceptor: TlsAcceptor,
    certs: Arc<Certs>,
}

/// The pair handshakes use now, and where it comes from.
#[derive(Debug)]
struct Certs {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as last read (successfully or not), so a change is tried once.
    seen: Mutex<Stamp>,
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        )
    }
}

impl Tls {
    /// Reads `cert` and `key`; a clear message when either cannot be read or parsed or they
    /// are not a pair.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let seen = stamp(cert, key);
        let pair = load_pair(cert, key, &provider)?;
        let certs = Arc::new(Certs {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider: provider.clone(),
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(seen),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certs,
        })
    }

    /// The acceptor of new connections, with the current pair.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again when `force`d or when they changed since they were last read.
    /// `Ok(true)` when a new pair is in use; an error (the current pair stays) when they do
    /// not load.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let certs = &self.certs;
        let now = stamp(&certs.cert, &certs.key);
        {
            let mut seen = certs.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let pair = load_pair(&certs.cert, &certs.key, &certs.provider)?;
        *certs.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
        Ok(true)
    }

    /// Reloads on SIGHUP and when the files change, until `stop`. File reads run off the
    /// connection threads.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates are reloaded when their files change");
                None
            }
        };
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => false,
                Some(()) = async {
                    match &mut hangup {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            let tls = self.clone();
            match tokio::task::spawn_blocking(move || tls.reload(force)).await {
                Ok(Ok(true)) => tracing::info!(
                    cert = %self.certs.cert.display(),
                    "TLS certificate reloaded; new connections use it"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; keeping the current one")
                }
                Err(e) => tracing::error!(error = %e, "TLS certificate reload failed"),
            }
        }
    }
}

/// Size and modification time of both files (`(0, None)` for one that cannot be read).
fn stamp(cert: &Path, key: &Path) -> Stamp {
    let of =
        |path: &Path| std::fs::metadata(path).map_or((0, None), |m| (m.len(), m.modified().ok()));
    [of(cert), of(key)]
}

/// Reads and checks one certificate chain and its key.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| format!("cannot read --tls-cert {}: {e}", cert.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "--tls-cert {} is not a PEM certificate chain: {e}",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {} holds no certificate (expected PEM blocks `BEGIN CERTIFICATE`)",
            cert.display()
        ));
    }
    let key_pem =
        std::fs::read(key).map_err(|e| format!("cannot read --tls-key {}: {e}", key.display()))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "--tls-key {} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            key.display()
        )
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        format!(
            "--tls-cert {} and --tls-key {} are not a usable pair: {e}",
            cert.display(),
            key.display()
        )
    })
}
