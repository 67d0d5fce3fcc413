//! One active health probe: `GET path` on a fresh connection (over TLS for an HTTPS backend),
//! judged by its status line within a deadline. Raw TCP (and rustls) rather than the shared HTTP
//! client, so a probe never takes a pooled connection from a request, and a blackholed backend
//! costs exactly one timeout.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// Why a probe failed.
#[derive(Debug)]
pub enum ProbeError {
    /// The connection could not be opened.
    Connect(io::Error),
    /// The request could not be sent.
    Send(io::Error),
    /// The answer could not be read.
    Receive(io::Error),
    /// No status line before the deadline.
    TimedOut,
    /// The backend closed before a status line.
    Closed,
    /// The answer did not start with an HTTP/1.x status line.
    NotHttp,
    /// A status outside the expected range.
    Status(u16),
    /// The TLS handshake failed (a certificate refused, a peer that is not TLS...).
    Tls(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Connect(e) => write!(f, "connect: {e}"),
            ProbeError::Send(e) => write!(f, "send: {e}"),
            ProbeError::Receive(e) => write!(f, "receive: {e}"),
            ProbeError::TimedOut => f.write_str("timed out"),
            ProbeError::Closed => f.write_str("closed without a status line"),
            ProbeError::NotHttp => f.write_str("not an HTTP response"),
            ProbeError::Status(status) => write!(f, "status {status}"),
            ProbeError::Tls(why) => write!(f, "TLS: {why}"),
        }
    }
}

impl std::error::Error for ProbeError {}

/// The outcome of the latest probe, shown by `/lb/backends`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Whether the probe passed.
    pub ok: bool,
    /// The status, or why there was none.
    pub detail: String,
    /// When it finished (seconds since the Unix epoch).
    pub at_unix: u64,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
}

/// Probes `addr` once: `GET path` with `Host: host` and a deadline; Ok(status) when the status is
/// in `expected`.
///
/// ```no_run
/// # use lb_sync::health::probe;
/// # use std::time::Duration;
/// let status = probe("127.0.0.1:8001".parse().unwrap(), "localhost:8001", "/health", Duration::from_secs(2), &(200..=399));
/// ```
pub fn probe(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    expected: &RangeInclusive<u16>,
) -> Result<u16, ProbeError> {
    let deadline = Instant::now() + timeout;
    let socket = TcpStream::connect_timeout(&addr, timeout).map_err(ProbeError::Connect)?;
    exchange(&mut &socket, &socket, host, path, deadline, expected)
}

/// [`probe`] over TLS: the handshake (within the same deadline) verifies the backend's
/// certificate for `server_name` (also sent as SNI) with `tls`.
///
/// ```no_run
/// # use lb_sync::health::probe_tls;
/// # use std::time::Duration;
/// let tls = lb_sync::upstream::UpstreamTls::default();
/// let status = probe_tls(
///     "127.0.0.1:8443".parse().unwrap(),
///     tls.client_config(),
///     "localhost",
///     "localhost:8443",
///     "/health",
///     Duration::from_secs(2),
///     &(200..=399),
/// );
/// ```
pub fn probe_tls(
    addr: SocketAddr,
    tls: &Arc<ClientConfig>,
    server_name: &str,
    host: &str,
    path: &str,
    timeout: Duration,
    expected: &RangeInclusive<u16>,
) -> Result<u16, ProbeError> {
    let deadline = Instant::now() + timeout;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| ProbeError::Tls(format!("'{server_name}' is not a server name: {e}")))?;
    let mut connection = ClientConnection::new(Arc::clone(tls), name).map_err(|e| ProbeError::Tls(e.to_string()))?;
    let socket = TcpStream::connect_timeout(&addr, timeout).map_err(ProbeError::Connect)?;
    let mut io = &socket;
    // The handshake happens within the first write (and its reads), under the socket timeouts
    // `exchange` sets from the deadline.
    let mut stream = rustls::Stream::new(&mut connection, &mut io);
    exchange(&mut stream, &socket, host, path, deadline, expected)
}

/// Sends the probe's request on `stream` (plain, or TLS over `socket`) and reads its status line
/// before `deadline`.
fn exchange(
    stream: &mut impl ReadWrite,
    socket: &TcpStream,
    host: &str,
    path: &str,
    deadline: Instant,
    expected: &RangeInclusive<u16>,
) -> Result<u16, ProbeError> {
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    // Both ways before the first write: a TLS handshake reads within it.
    socket.set_write_timeout(Some(left())).map_err(ProbeError::Send)?;
    socket.set_read_timeout(Some(left())).map_err(ProbeError::Send)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-sync-health\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).and_then(|()| stream.flush()).map_err(|e| failed(e, ProbeError::Send))?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        if Instant::now() >= deadline {
            return Err(ProbeError::TimedOut);
        }
        socket.set_read_timeout(Some(left())).map_err(ProbeError::Receive)?;
        match stream.read(&mut buf) {
            Ok(0) => return Err(ProbeError::Closed),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(failed(e, ProbeError::Receive)),
        }
        if head.len() > 1024 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or(ProbeError::NotHttp)?;
    if expected.contains(&status) {
        Ok(status)
    } else {
        Err(ProbeError::Status(status))
    }
}

/// A byte stream both ways: a socket, or TLS over one.
trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}

/// An I/O error of the probe: a timeout, a TLS failure (rustls's error inside), or `other`.
fn failed(error: io::Error, other: fn(io::Error) -> ProbeError) -> ProbeError {
    if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
        return ProbeError::TimedOut;
    }
    match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => ProbeError::Tls(tls.to_string()),
        None => other(error),
    }
}
