//! TLS to `https://` backends: the trust their certificates are verified against (the built-in
//! system roots, or the CAs of `upstream_ca`), handed both to ureq's rustls connector and, as a
//! rustls client config, to the health probes; and the connector that chains ureq's rustls
//! connector behind our TCP one, so that the handshake runs under the connect timeout and its
//! failure is a try that sent nothing (another backend may get the request, as after a refused
//! connection).

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::transport::{ConnectionDetails, Connector, RustlsConnector};

use super::transport::BackendTransport;

/// Why the trust for HTTPS backends could not be set up (a start or a reload fails with it).
#[derive(Debug)]
pub enum TlsSetupError {
    /// The `upstream_ca` file could not be read.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// It is not PEM, or holds no certificate.
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said, if it failed.
        why: Option<String>,
    },
    /// A certificate in it cannot be a trust anchor.
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Its position in the file, from 1.
        index: usize,
        /// What rustls said.
        why: String,
    },
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::Unreadable { path, error } => {
                write!(f, "cannot read upstream_ca {}: {error}", path.display())
            }
            TlsSetupError::NoCertificate { path, why } => {
                write!(f, "upstream_ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display())?;
                match why {
                    Some(why) => write!(f, ": {why}"),
                    None => Ok(()),
                }
            }
            TlsSetupError::BadCertificate { path, index, why } => {
                write!(f, "upstream_ca {}: certificate {index} cannot be used: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for TlsSetupError {}

/// What HTTPS backends' certificates are verified against: Mozilla's roots (built in, through
/// webpki-roots) or the certificates of a PEM file. Two are equal when they trust the same
/// certificates, so a reload that changes nothing keeps the HTTP client and its connections.
///
/// ```
/// use lb_sync::upstream::UpstreamTls;
/// let system = UpstreamTls::load(None).unwrap();
/// assert_eq!(system.ca_file(), None);
/// let missing = UpstreamTls::load(Some("/nonexistent/ca.pem".as_ref())).unwrap_err();
/// assert!(missing.to_string().starts_with("cannot read upstream_ca /nonexistent/ca.pem: "));
/// ```
pub struct UpstreamTls {
    ca_file: Option<PathBuf>,
    /// The file's certificates; empty for the built-in roots.
    cas: Vec<CertificateDer<'static>>,
    client: Arc<ClientConfig>,
}

impl UpstreamTls {
    /// The trust of `upstream_ca`: the file's certificates, or the built-in roots when `None`.
    pub fn load(ca_file: Option<&Path>) -> Result<UpstreamTls, TlsSetupError> {
        let Some(path) = ca_file else {
            return Ok(UpstreamTls::default());
        };
        let pem = std::fs::read(path).map_err(|error| TlsSetupError::Unreadable { path: path.to_path_buf(), error })?;
        let cas = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsSetupError::NoCertificate { path: path.to_path_buf(), why: Some(e.to_string()) })?;
        if cas.is_empty() {
            return Err(TlsSetupError::NoCertificate { path: path.to_path_buf(), why: None });
        }
        let mut roots = RootCertStore::empty();
        for (i, cert) in cas.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| TlsSetupError::BadCertificate {
                path: path.to_path_buf(),
                index: i + 1,
                why: e.to_string(),
            })?;
        }
        Ok(UpstreamTls { ca_file: Some(path.to_path_buf()), cas, client: client_config(roots) })
    }

    /// The `upstream_ca` file it was loaded from; `None` for the built-in roots.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// A rustls client configuration with this trust (what the health probes use).
    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.client
    }

    /// The same trust for ureq's rustls connector, with the same provider (ring).
    pub(crate) fn ureq_config(&self) -> TlsConfig {
        let roots = if self.cas.is_empty() {
            RootCerts::WebPki
        } else {
            RootCerts::from(self.cas.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()))
        };
        TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots)
            .unversioned_rustls_crypto_provider(provider())
            .build()
    }
}

impl Default for UpstreamTls {
    /// The built-in roots (Mozilla's, from webpki-roots).
    fn default() -> UpstreamTls {
        let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        UpstreamTls { ca_file: None, cas: Vec::new(), client: client_config(roots) }
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &UpstreamTls) -> bool {
        self.cas == other.cas
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ca_file {
            Some(path) => write!(f, "UpstreamTls({}: {} CA(s))", path.display(), self.cas.len()),
            None => f.write_str("UpstreamTls(system roots)"),
        }
    }
}

/// ring: the provider ureq's `rustls` feature builds (aws-lc-rs needs cmake).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.2 and 1.3, no client certificate: what ureq's connector builds from the same trust.
fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        // Fails only for a provider without suites for these versions; ring has them all, so
        // this holds whatever the input (ureq's connector relies on the same).
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS handshake with a backend that failed or timed out: the request was never sent.
#[derive(Debug)]
pub(crate) struct HandshakeError {
    /// The backend did not complete it within the connect timeout.
    pub timed_out: bool,
    /// What went wrong (rustls's words: `invalid peer certificate: UnknownIssuer`...).
    pub why: String,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for HandshakeError {}

impl HandshakeError {
    /// The handshake failure inside a ureq error, if it is one.
    pub(crate) fn find(error: &ureq::Error) -> Option<&HandshakeError> {
        match error {
            ureq::Error::Io(e) => e.get_ref().and_then(|inner| inner.downcast_ref::<HandshakeError>()),
            _ => None,
        }
    }
}

/// ureq's rustls connector behind our TCP connector. A plain HTTP connection passes through
/// untouched (and this runs only for new connections, never for pooled ones). For HTTPS, the
/// socket's timeouts are the connect timeout during the handshake (as nginx's
/// `proxy_connect_timeout` covers it), the per-operation timeout after it.
#[derive(Debug)]
pub(crate) struct TlsConnector {
    inner: RustlsConnector,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl TlsConnector {
    pub(crate) fn new(connect_timeout: Duration, io_timeout: Duration) -> TlsConnector {
        TlsConnector { inner: RustlsConnector::default(), connect_timeout, io_timeout }
    }
}

impl Connector<BackendTransport> for TlsConnector {
    type Out = <RustlsConnector as Connector<BackendTransport>>::Out;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<BackendTransport>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(mut transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() {
            return self.inner.connect(details, Some(transport));
        }
        transport.carry_tls();
        let socket = transport.socket();
        set_timeouts(&socket, self.connect_timeout)?;
        match self.inner.connect(details, Some(transport)) {
            Ok(tls) => {
                set_timeouts(&socket, self.io_timeout)?;
                Ok(tls)
            }
            Err(error) => Err(handshake_failed(error)),
        }
    }
}

fn set_timeouts(socket: &TcpStream, timeout: Duration) -> Result<(), ureq::Error> {
    socket.set_read_timeout(Some(timeout)).map_err(ureq::Error::Io)?;
    socket.set_write_timeout(Some(timeout)).map_err(ureq::Error::Io)
}

/// Whatever stopped the handshake (a certificate rustls refused, a peer that is not TLS, a
/// reset, a timeout), as a [`HandshakeError`] in a ureq error.
fn handshake_failed(error: ureq::Error) -> ureq::Error {
    let (timed_out, why) = match error {
        ureq::Error::Io(e) => (matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock), e.to_string()),
        ureq::Error::Timeout(_) => (true, error.to_string()),
        other => (false, other.to_string()),
    };
    let kind = if timed_out { io::ErrorKind::TimedOut } else { io::ErrorKind::Other };
    ureq::Error::Io(io::Error::new(kind, HandshakeError { timed_out, why }))
}
