//! TLS termination with rustls: what an HTTPS listener serves ([`Certificates`], loaded and
//! checked by [`Certificate`]) and the configuration every TLS connection starts from
//! ([`TlsAcceptor`]: TLS 1.2 and 1.3, ALPN `http/1.1`, certificates that a reload replaces for
//! the next handshake). The records themselves are read and written by
//! [`ClientStream`](super::stream::ClientStream), on the poller thread and, for responses, on
//! workers, always without blocking.

mod certificate;
mod x509;

pub use certificate::Certificate;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConnection;

/// ring's algorithms, the only provider built in (no process-wide default is installed, so a
/// library user's own choice is left alone).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a TLS listener: the first is served by default, the others when a
/// client's SNI names one of their DNS names (exact names before wildcards, then in order), as
/// HAProxy picks among the certificates of a `crt` list.
///
/// ```no_run
/// use lb_sync::server::Certificates;
/// let pairs = [("/etc/lb/site.pem".into(), "/etc/lb/site.key".into())];
/// let certificates = Certificates::load(&pairs).unwrap();
/// assert_eq!(certificates.list().len(), 1);
/// ```
#[derive(Debug)]
pub struct Certificates {
    list: Vec<Certificate>,
}

impl Certificates {
    /// Loads every (certificate, key) pair: all or nothing, the first error (naming its file)
    /// wins.
    pub fn load(pairs: &[(PathBuf, PathBuf)]) -> Result<Certificates, String> {
        let list = pairs.iter().map(|(cert, key)| Certificate::load(cert, key)).collect::<Result<Vec<_>, _>>()?;
        Certificates::new(list).ok_or_else(|| "no TLS certificate given".to_string())
    }

    /// A set from loaded certificates; `None` when empty.
    pub fn new(list: Vec<Certificate>) -> Option<Certificates> {
        (!list.is_empty()).then_some(Certificates { list })
    }

    /// The certificates, the default first.
    pub fn list(&self) -> &[Certificate] {
        &self.list
    }

    /// The certificate for a client that asked for `server_name` (or sent no SNI).
    pub fn pick(&self, server_name: Option<&str>) -> &Certificate {
        let name = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let found = name.as_deref().and_then(|name| {
            let exact = self.list.iter().find(|c| c.matches(name, true));
            exact.or_else(|| self.list.iter().find(|c| c.matches(name, false)))
        });
        found.unwrap_or(&self.list[0])
    }

    /// One line per certificate, for the log.
    pub fn describe(&self) -> String {
        self.list.iter().map(Certificate::describe).collect::<Vec<_>>().join("; ")
    }
}

/// Chooses the certificate of each handshake from the set in force.
struct Picker(Arc<ArcSwap<Certificates>>);

impl fmt::Debug for Picker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Picker")
    }
}

impl ResolvesServerCert for Picker {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.0.load().pick(hello.server_name()).certified_key()))
    }
}

/// What a TLS listener starts each connection from: the rustls configuration and the
/// certificates in force. Cheap to clone; [`replace`](Self::replace) reaches every clone, from
/// the next handshake on (connections already up keep the certificate they were given).
///
/// ```no_run
/// use lb_sync::server::{Certificates, TlsAcceptor};
/// let load = || Certificates::load(&[("cert.pem".into(), "key.pem".into())]).unwrap();
/// let acceptor = TlsAcceptor::new(load());
/// acceptor.replace(load()); // a renewed certificate, for the next handshake
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<rustls::ServerConfig>,
    certificates: Arc<ArcSwap<Certificates>>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor").field("certificates", &self.certificates.load()).finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// TLS 1.3 and 1.2 with ring's cipher suites, no client certificates, ALPN `http/1.1` (and
    /// `http/1.0`, which curl's `--http1.0` asks for; nginx accepts both too). A client that
    /// offers only protocols we do not speak (`h2`) is refused in the handshake (RFC 7301 3.2).
    pub fn new(certificates: Certificates) -> TlsAcceptor {
        let certificates = Arc::new(ArcSwap::from_pointee(certificates));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring's provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Picker(Arc::clone(&certificates))));
        config.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        TlsAcceptor { config: Arc::new(config), certificates }
    }

    /// Serves `certificates` from the next handshake on.
    pub fn replace(&self, certificates: Certificates) {
        self.certificates.store(Arc::new(certificates));
    }

    /// The certificates in force.
    pub fn certificates(&self) -> Arc<Certificates> {
        self.certificates.load_full()
    }

    /// A new server-side TLS session, for a connection just accepted.
    pub(crate) fn session(&self) -> Result<ServerConnection, rustls::Error> {
        ServerConnection::new(Arc::clone(&self.config))
    }
}
