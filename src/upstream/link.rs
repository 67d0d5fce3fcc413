//! One backend's HTTP client: how its connections are made (our TCP connector, then ureq's
//! rustls connector for an HTTPS backend), the backend's [`IdleConnections`], and every socket
//! opened to it, so that a stop can break them all. Made by the
//! [`Forwarder`](super::Forwarder) when it first sends to the backend and kept in the backend;
//! nothing in it is shared with another backend, so no lock on the request path is either.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ureq::http::uri::Authority;
use ureq::http::Uri;
use ureq::unversioned::resolver::Resolver;
use ureq::unversioned::transport::time::{Duration as Wait, Instant as UreqInstant};
use ureq::unversioned::transport::{ChainedConnector, ConnectionDetails, Connector, NextTimeout};

use super::pinned::PinnedResolver;
use super::pool::{IdleConnections, PooledConnector, PooledTransport};
use super::tls::TlsConnector;
use super::transport::BackendConnector;

/// TCP, then TLS when the backend's scheme is HTTPS (a plain connection passes through).
pub(crate) type ConnectorChain = ChainedConnector<(), BackendConnector, TlsConnector>;

/// A backend's client, as one forwarder made it.
pub(crate) struct BackendLink {
    /// The forwarder that made it (a reload with new client settings makes a new one).
    pub forwarder: u64,
    pub connector: PooledConnector<ConnectorChain>,
    /// ureq's settings that its connectors read (buffer sizes, the TLS trust).
    pub config: ureq::config::Config,
    pub resolver: PinnedResolver,
    pub connect_timeout: Duration,
    /// Where requests go: parsed once, not for every request.
    pub authority: Authority,
    pub idle: Arc<IdleConnections>,
    pub sockets: Arc<OpenSockets>,
}

impl BackendLink {
    /// A connection for one exchange to `uri` (this backend): an idle one, unless
    /// `own_connection` or none is good, else a new one.
    pub fn lend(&self, uri: &Uri, own_connection: bool) -> Result<PooledTransport, ureq::Error> {
        self.connector.lend(own_connection, |chain| {
            // A stop broke this client: no new connection is opened (nor refused once made).
            if self.sockets.is_closed() {
                return Err(ureq::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the balancer is stopping",
                )));
            }
            let details = ConnectionDetails {
                uri,
                addrs: self.resolver.resolve(uri, &self.config, self.connect_deadline())?,
                config: &self.config,
                request_level: false,
                resolver: &self.resolver,
                now: UreqInstant::now(),
                timeout: self.connect_deadline(),
                current_time: Arc::new(UreqInstant::now),
                // For a CONNECT proxy's own connection: none here.
                run_connector: Arc::new(|_: &ConnectionDetails| Err(ureq::Error::ConnectionFailed)),
                // Our TCP connector notes each socket in `sockets` for a stop instead.
                register_shutdown: Arc::new(|_| Ok(())),
            };
            chain.connect(&details, None)
        })
    }

    fn connect_deadline(&self) -> NextTimeout {
        NextTimeout {
            after: Wait::Exact(self.connect_timeout),
            reason: ureq::Timeout::Connect,
            per_read: None,
            per_write: None,
        }
    }

    /// Closes the idle connections, breaks the ones in use (a worker blocked on one gets an
    /// error at once) and refuses new ones.
    pub fn shutdown(&self) {
        self.idle.close();
        self.sockets.shutdown();
    }
}

/// The sockets of a backend's connections, idle or in use, until they are closed: weak, so a
/// dropped connection closes as usual. Written only when a connection is opened.
#[derive(Debug, Default)]
pub(crate) struct OpenSockets {
    sockets: Mutex<Vec<Weak<TcpStream>>>,
    closed: AtomicBool,
}

impl OpenSockets {
    /// Notes a new connection's socket; refused after [`OpenSockets::shutdown`].
    pub fn register(&self, socket: &Arc<TcpStream>) -> std::io::Result<()> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock shutdown takes: a connection made while it runs cannot escape it.
        if self.closed.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "the balancer is stopping"));
        }
        // Closed ones are forgotten when the list has doubled since the last pass: amortized
        // O(1) per connection opened, and the list stays within twice the open ones.
        if sockets.len() >= 16 && sockets.len().is_power_of_two() {
            sockets.retain(|s| s.strong_count() > 0);
        }
        sockets.push(Arc::downgrade(socket));
        Ok(())
    }

    /// Whether [`OpenSockets::shutdown`] ran: no connection is noted any more.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Whether a connection it noted is still open.
    pub fn any_open(&self) -> bool {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|s| s.strong_count() > 0)
    }

    /// Shuts every open socket down (reads and writes blocked on them return at once).
    pub fn shutdown(&self) {
        let sockets = {
            let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
            self.closed.store(true, Ordering::Relaxed);
            std::mem::take(&mut *sockets)
        };
        for socket in sockets.iter().filter_map(Weak::upgrade) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl std::fmt::Debug for BackendLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendLink").field("forwarder", &self.forwarder).field("idle", &self.idle).finish()
    }
}
