//! Sending one request to one backend over that backend's client (its `BackendLink`: its
//! connections, driven by ureq's protocol engine in `exchange.rs`), and what a failure means for
//! a retry. Knows nothing of which backend to choose.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ureq::http;
use ureq::http::uri::Authority;
use ureq::unversioned::transport::Connector;
use ureq::{Agent, Timeout};

use crate::config::Scheme;
use crate::stats::TryFailure;

use super::answer_framing::MalformedAnswer;
use super::backend::Backend;
use super::exchange::{exchange, AnswerBody, ExchangeLimits};
use super::link::{BackendLink, OpenSockets};
use super::pinned::PinnedResolver;
use super::pool::{is_answer_before_request, IdleConnections, IdleLimits, PooledConnector};
use super::tls::{HandshakeError, TlsConnector, UpstreamTls};
use super::transport::BackendConnector;

/// Why a try failed, in the terms that decide what happens next.
#[derive(Debug)]
pub enum ForwardError {
    /// The request never left (connect refused or failed): any method may go to another backend.
    NotSent(String),
    /// Connecting took longer than the connect timeout: not sent either.
    ConnectTimeout,
    /// Sent (perhaps partly) but no response came: reset, or closed before the status line.
    NoResponse(String),
    /// The backend did not answer within the request timeout.
    Timeout,
    /// The backend answered something that is not HTTP, or the request could not be built.
    BadResponse(String),
    /// The TLS handshake with an HTTPS backend failed (its certificate was refused, it does
    /// not speak TLS...): nothing was sent.
    Tls(String),
}

impl ForwardError {
    /// Whether the request certainly did not reach the backend.
    pub fn never_sent(&self) -> bool {
        matches!(self, ForwardError::NotSent(_) | ForwardError::ConnectTimeout | ForwardError::Tls(_))
    }

    /// The reason as counted in the statistics.
    pub fn reason(&self) -> TryFailure {
        match self {
            ForwardError::NotSent(_) => TryFailure::Refused,
            ForwardError::ConnectTimeout => TryFailure::ConnectTimeout,
            ForwardError::NoResponse(_) => TryFailure::NoResponse,
            ForwardError::Timeout => TryFailure::Timeout,
            ForwardError::BadResponse(_) => TryFailure::BadResponse,
            ForwardError::Tls(_) => TryFailure::Tls,
        }
    }

    /// Whether the failure was a timeout (answered `504` rather than `502`).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ForwardError::Timeout | ForwardError::ConnectTimeout)
    }

    fn from_ureq(error: ureq::Error) -> ForwardError {
        if let Some(handshake) = HandshakeError::find(&error) {
            // A handshake that timed out is part of connecting (nginx's proxy_connect_timeout).
            return if handshake.timed_out {
                ForwardError::ConnectTimeout
            } else {
                ForwardError::Tls(handshake.why.clone())
            };
        }
        if let ureq::Error::Io(e) = &error {
            if e.get_ref().is_some_and(|inner| inner.is::<MalformedAnswer>()) {
                return ForwardError::BadResponse(e.to_string());
            }
            if is_answer_before_request(&error) {
                return ForwardError::NotSent(e.to_string());
            }
        }
        match error {
            ureq::Error::Timeout(Timeout::Connect) => ForwardError::ConnectTimeout,
            ureq::Error::Timeout(_) => ForwardError::Timeout,
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => ForwardError::NotSent(error.to_string()),
            ureq::Error::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused | io::ErrorKind::AddrNotAvailable => {
                    ForwardError::NotSent(e.to_string())
                }
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ForwardError::Timeout,
                _ => ForwardError::NoResponse(e.to_string()),
            },
            ureq::Error::Protocol(_) | ureq::Error::Http(_) | ureq::Error::BadUri(_) => {
                ForwardError::BadResponse(error.to_string())
            }
            other => ForwardError::NoResponse(other.to_string()),
        }
    }
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::NotSent(why) => write!(f, "not sent: {why}"),
            ForwardError::ConnectTimeout => f.write_str("connect timed out"),
            ForwardError::NoResponse(why) => write!(f, "no response: {why}"),
            ForwardError::Timeout => f.write_str("timed out waiting for the backend"),
            ForwardError::BadResponse(why) => write!(f, "bad response: {why}"),
            ForwardError::Tls(why) => write!(f, "TLS handshake failed: {why}"),
        }
    }
}

/// Why a request cannot be expressed upstream: the client's fault, never a backend's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareError {
    /// The method is not a valid token.
    Method(String),
    /// The target is not a valid path and query.
    Target,
    /// A header name is not a valid token.
    HeaderName(String),
    /// A header's value (named) has bytes a request may not carry.
    HeaderValue(String),
    /// A line of the head (the request line or one header field) is longer than the upstream
    /// write buffer holds. The buffer is sized for every head the front end accepts, so only a
    /// front end with a larger head limit than the forwarder was made for gets this (`431`).
    LineTooLong {
        /// The line's length upstream, CRLF included.
        length: usize,
        /// The longest line the forwarder can send.
        limit: usize,
    },
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::Method(method) => write!(f, "method '{method}' cannot be forwarded"),
            PrepareError::Target => f.write_str("request target cannot be forwarded"),
            PrepareError::HeaderName(name) => write!(f, "header name '{name}' cannot be forwarded"),
            PrepareError::HeaderValue(name) => write!(f, "value of '{name}' cannot be forwarded"),
            PrepareError::LineTooLong { length, limit } => {
                write!(f, "a request head line of {length} bytes cannot be forwarded (at most {limit})")
            }
        }
    }
}

impl std::error::Error for PrepareError {}

/// What the proxy may add to one line of a client's head on its way up: `X-Forwarded-For`
/// extended by `, ` and the peer's address (at most 39 characters), and the blank line that ends
/// the head, which ureq writes into the buffer with the last header. Other lines the proxy sets
/// (`X-Real-IP`, `X-Request-Id`, `Content-Length`...) are short, or copy a value of the client's
/// head (`X-Forwarded-Host`); merging several `X-Forwarded-For` lines into one never makes it
/// longer than they were (each had its name and CRLF, the merge adds `, `). Rounded up.
const PROXY_LINE_GROWTH: usize = 1024;

/// The upstream write buffer: ureq writes a request head into it a line at a time (as many
/// lines as fit, sent, then the next ones), and a line that does not fit an empty buffer is an
/// error (`OutputOverflow`). So the buffer holds the longest line the front end can accept (its
/// whole head limit, `max_head_bytes`) plus what the proxy adds to a line: every head the front
/// end accepts can be sent. Request bodies go through it too, in pieces of its size.
fn upstream_line_limit() -> usize {
    crate::server::Limits::default().max_head_bytes + PROXY_LINE_GROWTH
}

/// Connections one try may take for its request when idle ones turn out to hold bytes nobody
/// asked for before the request was written on them.
const MAX_CONNECTIONS_PER_TRY: usize = 3;

/// Timeouts of the backend side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardTimeouts {
    /// Connecting to a backend.
    pub connect: Duration,
    /// Sending the head, sending each part of the body, waiting for the response head, and
    /// between reads of the response body.
    pub request: Duration,
}

/// Sends requests to backends: ureq's `Call` driven for proxying (statuses and redirects
/// passed through untouched, any method, no headers of its own but the body's framing), each
/// over its backend's own idle connections (`pool.rs`). A backend's client is made on its first request and kept in the backend
/// ([`BackendLink`]); a reload with new client settings makes a new forwarder, whose first
/// request to each backend replaces it.
pub struct Forwarder {
    /// Tells its links from an earlier forwarder's.
    id: u64,
    config: ureq::config::Config,
    timeouts: ForwardTimeouts,
    idle_limits: IdleLimits,
    tls: Arc<UpstreamTls>,
    /// The longest line of a request head it can send (its write buffer's size).
    max_line: usize,
    /// The longest answer head it accepts (ureq's default) and the phases' time limits.
    exchange_limits: ExchangeLimits,
    /// Every link it made, for a stop and for closing expired idle connections.
    links: Arc<Mutex<Vec<MadeLink>>>,
    closed: AtomicBool,
}

/// A link a forwarder made, and its socket registry, kept while a connection is open even
/// after the link is gone: a link replaced after a reload is dropped while a worker may still
/// read an answer's body from one of its connections, and a stop must still break that read.
struct MadeLink {
    link: Weak<BackendLink>,
    sockets: Arc<OpenSockets>,
}

impl MadeLink {
    fn in_use(&self) -> bool {
        self.link.strong_count() > 0 || self.sockets.any_open()
    }
}

impl Forwarder {
    /// A forwarder whose backends each keep idle connections within `idle_limits`; HTTPS
    /// backends' certificates are verified against `tls`. A thread closes idle connections
    /// that outlive the idle timeout while no request comes to take or return one.
    pub fn new(timeouts: ForwardTimeouts, idle_limits: IdleLimits, tls: Arc<UpstreamTls>) -> Forwarder {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let max_line = upstream_line_limit();
        // What the connectors read (ureq's `Config`): buffer sizes and the TLS trust. The
        // exchange itself (exchange.rs) follows no redirects and adds no header of its own.
        let config = Agent::config_builder()
            // Per connection, allocated on its first request and kept while it is pooled
            // (ureq's default is 128 KiB each way). The input buffer must hold a whole response
            // head: a larger head is a bad response (nginx's proxy_buffer_size is 4-8 KiB). The
            // output buffer must hold the longest line of any request head the front end
            // accepts (see upstream_line_limit): 33 KiB, 65 KiB a connection in all.
            .input_buffer_size(32 * 1024)
            .output_buffer_size(max_line)
            .tls_config(tls.ureq_config())
            .build();
        let links = Arc::new(Mutex::new(Vec::new()));
        close_expired_idle(Arc::downgrade(&links), idle_limits.timeout);
        Forwarder {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            exchange_limits: ExchangeLimits { max_head: config.max_response_header_size(), phase: timeouts.request },
            config,
            timeouts,
            idle_limits,
            tls,
            max_line,
            links,
            closed: AtomicBool::new(false),
        }
    }

    /// The timeouts and idle-connection limits it was made with.
    pub fn settings(&self) -> (ForwardTimeouts, IdleLimits) {
        (self.timeouts, self.idle_limits)
    }

    /// What it verifies HTTPS backends' certificates against.
    pub fn tls(&self) -> &Arc<UpstreamTls> {
        &self.tls
    }

    /// Breaks every backend connection it holds, idle or in use: a worker blocked reading
    /// from or writing to a backend gets an error at once instead of at its timeout (the end of
    /// a stop's grace period). Requests sent through it afterwards fail.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let made: Vec<_> = lock(&self.links).iter().map(|m| (m.link.upgrade(), Arc::clone(&m.sockets))).collect();
        for (link, sockets) in made {
            match link {
                Some(link) => link.shutdown(),
                // Gone, but a connection of it may still be open.
                None => sockets.shutdown(),
            }
        }
    }

    /// Whether anything it made is still in use: a link some backend keeps, or a connection
    /// still open. A forwarder replaced by a reload is kept (for a stop, and for closing its
    /// links' expired idle connections) until it is not.
    pub fn in_use(&self) -> bool {
        lock(&self.links).iter().any(MadeLink::in_use)
    }

    /// The backend's client as this forwarder makes it: the one the backend keeps, or a new one
    /// (its first request, or the first since a reload changed the client settings).
    fn link(&self, backend: &Backend) -> Result<Arc<BackendLink>, ForwardError> {
        let current = backend.link().load_full();
        if let Some(link) = current.as_ref().filter(|l| l.forwarder == self.id) {
            return Ok(Arc::clone(link));
        }
        let link = Arc::new(self.make_link(backend)?);
        // A newer forwarder's link stays: a request begun before a reload uses its own once
        // rather than swap an older client back in (ids only grow).
        if current.as_ref().is_none_or(|l| l.forwarder < self.id) {
            // Two first requests at once: one link wins, the other request uses its own once.
            let previous = backend.link().compare_and_swap(&current, Some(Arc::clone(&link)));
            if !ptr_eq(&previous, &current) {
                if let Some(winner) = previous.as_ref().filter(|l| l.forwarder == self.id) {
                    return Ok(Arc::clone(winner));
                }
            }
        }
        let mut links = lock(&self.links);
        links.retain(MadeLink::in_use);
        links.push(MadeLink { link: Arc::downgrade(&link), sockets: Arc::clone(&link.sockets) });
        drop(links);
        // A stop that ran before the link was listed did not reach it.
        if self.closed.load(Ordering::SeqCst) {
            link.shutdown();
        }
        Ok(link)
    }

    fn make_link(&self, backend: &Backend) -> Result<BackendLink, ForwardError> {
        let authority = Authority::try_from(backend.authority.as_str())
            .map_err(|e| ForwardError::BadResponse(format!("backend address: {e}")))?;
        let counts = Arc::clone(backend.connection_counts());
        let idle = Arc::new(IdleConnections::new(self.idle_limits, counts, backend.addr));
        let sockets = Arc::new(OpenSockets::default());
        let tcp = BackendConnector {
            connect_timeout: self.timeouts.connect,
            io_timeout: self.timeouts.request,
            sockets: Arc::clone(&sockets),
            idle: Arc::downgrade(&idle),
        };
        let connector = PooledConnector {
            inner: tcp.chain(TlsConnector::new(self.timeouts.connect, self.timeouts.request)),
            idle: Arc::clone(&idle),
        };
        Ok(BackendLink {
            forwarder: self.id,
            connector,
            config: self.config.clone(),
            resolver: PinnedResolver(backend.addr),
            connect_timeout: self.timeouts.connect,
            authority,
            idle,
            sockets,
        })
    }

    /// Checks once, before any backend is tried, that the request can be expressed upstream:
    /// the method, target and every header must be acceptable to ureq's `http` types and to
    /// ureq's own checks of a request (it refuses a `Host` or `Authorization` value that is not
    /// visible ASCII), and every line must fit the write buffer. A request that fails is the
    /// client's fault (`400`, `431` for a line too long), never a backend failure: ureq would
    /// report it as a failed try of each backend in turn.
    ///
    /// ```
    /// use lb_sync::upstream::{ForwardTimeouts, Forwarder, IdleLimits, PrepareError, UpstreamTls};
    /// use std::{sync::Arc, time::Duration};
    /// let timeouts = ForwardTimeouts { connect: Duration::from_secs(1), request: Duration::from_secs(1) };
    /// let idle = IdleLimits { max: 1, timeout: Duration::from_secs(1) };
    /// let forwarder = Forwarder::new(timeouts, idle, Arc::new(UpstreamTls::load(None).unwrap()));
    /// let cookie = vec![b'a'; 32 * 1024];
    /// assert!(forwarder.prepare("GET", "/", [("Cookie", &cookie[..])]).is_ok());
    /// let too_long = vec![b'a'; 40 * 1024];
    /// let refused = forwarder.prepare("GET", "/", [("Cookie", &too_long[..])]).unwrap_err();
    /// assert!(matches!(refused, PrepareError::LineTooLong { length: 40972, .. }));
    /// let token = "Bearer \u{e9}t\u{e9}".as_bytes();
    /// let refused = forwarder.prepare("GET", "/", [("Authorization", token)]).unwrap_err();
    /// assert_eq!(refused, PrepareError::HeaderValue("authorization".into()));
    /// ```
    pub fn prepare<'h, I>(&self, method: &str, target: &str, headers: I) -> Result<Prepared, PrepareError>
    where
        I: IntoIterator<Item = (&'h str, &'h [u8])>,
        I::IntoIter: Clone,
    {
        let headers = headers.into_iter();
        let method =
            http::Method::from_bytes(method.as_bytes()).map_err(|_| PrepareError::Method(method.to_string()))?;
        // The target and every value copied once, into one buffer the path and the values share:
        // cloning them for each try then copies nothing.
        let mut text = Vec::with_capacity(target.len() + headers.clone().map(|(_, value)| value.len()).sum::<usize>());
        text.extend_from_slice(target.as_bytes());
        headers.clone().for_each(|(_, value)| text.extend_from_slice(value));
        let text = Bytes::from(text);
        let path =
            http::uri::PathAndQuery::from_maybe_shared(text.slice(..target.len())).map_err(|_| PrepareError::Target)?;
        // "METHOD TARGET HTTP/1.1\r\n"
        let mut longest = method.as_str().len() + path.as_str().len() + 12;
        let mut map = http::HeaderMap::with_capacity(headers.clone().count());
        let mut at = target.len();
        for (name, value) in headers {
            let name = header_name(name).map_err(|_| PrepareError::HeaderName(name.to_string()))?;
            let value = http::HeaderValue::from_maybe_shared(text.slice(at..at + value.len()))
                .map_err(|_| PrepareError::HeaderValue(name.to_string()))?;
            at += value.len();
            // ureq refuses these unless they are visible ASCII (tabs allowed in Authorization).
            let visible = |b: &u8| b.is_ascii_graphic() || *b == b' ' || *b == b'\t';
            let refused = (name == http::header::HOST && !value.as_bytes().iter().all(u8::is_ascii_graphic))
                || (name == http::header::AUTHORIZATION && !value.as_bytes().iter().all(visible));
            if refused {
                return Err(PrepareError::HeaderValue(name.as_str().into()));
            }
            // "Name: value\r\n", and the blank line after the last one.
            longest = longest.max(name.as_str().len() + value.len() + 6);
            map.append(name, value);
        }
        if longest > self.max_line {
            return Err(PrepareError::LineTooLong { length: longest, limit: self.max_line });
        }
        Ok(Prepared { method, path, headers: map })
    }

    /// Sends one prepared request to `backend`; `body` is streamed (its length, when known, is in
    /// the headers). A request whose idle connection turned out to hold bytes before the request
    /// was written on it (a backend out of step) was not sent, and goes on another connection. An
    /// answer that switches protocols (`101`) to a request that asked for no upgrade is a bad
    /// answer. With `own_connection` no idle connection is taken: a new one is opened (and kept
    /// for later requests after its answer).
    pub fn send(
        &self,
        backend: &Backend,
        prepared: &Prepared,
        mut body: Option<&mut dyn Read>,
        own_connection: bool,
    ) -> Result<http::Response<AnswerBody>, ForwardError> {
        let link = self.link(backend)?;
        let scheme = match backend.scheme {
            Scheme::Http => http::uri::Scheme::HTTP,
            Scheme::Https => http::uri::Scheme::HTTPS,
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme);
        parts.authority = Some(link.authority.clone());
        parts.path_and_query = Some(prepared.path.clone());
        let uri =
            http::Uri::from_parts(parts).map_err(|e| ForwardError::BadResponse(format!("backend address: {e}")))?;
        let mut connections_tried = 0;
        // A write whose answer was never read (an error, a panic) leaves no phase open.
        struct EndPhase;
        impl Drop for EndPhase {
            fn drop(&mut self) {
                crate::server::end_blocked_phase();
            }
        }
        let _end_phase = EndPhase;
        let response = loop {
            super::transport::forget_sending();
            connections_tried += 1;
            let result = link.lend(&uri, own_connection).and_then(|connection| {
                exchange(connection, prepared.request(uri.clone()), body.as_deref_mut(), self.exchange_limits)
            });
            match result {
                // Nothing of the request was written (nor read of its body): the next idle
                // connection (probed) or a new one. Bounded: a backend that answers every
                // connection unasked fails the try.
                Err(e) if is_answer_before_request(&e) && connections_tried < MAX_CONNECTIONS_PER_TRY => {}
                other => break other.map_err(ForwardError::from_ureq)?,
            }
        };
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // ureq closes the connection after a 101; the client gets a 502, not a switch.
            return Err(ForwardError::BadResponse(
                "101 Switching Protocols to a request that asked for no upgrade".into(),
            ));
        }
        Ok(response)
    }
}

/// The names the proxy sets on every request, which `http` does not know: made from static
/// text, so that neither making nor cloning them copies anything.
const PROXY_HEADER_NAMES: [&str; 5] =
    ["x-forwarded-for", "x-real-ip", "x-forwarded-proto", "x-forwarded-host", "x-request-id"];

/// A header name as `http` reads it (lowercase); the proxy's own names without a copy.
fn header_name(name: &str) -> Result<http::HeaderName, http::header::InvalidHeaderName> {
    match PROXY_HEADER_NAMES.iter().find(|known| known.eq_ignore_ascii_case(name)) {
        Some(known) => Ok(http::HeaderName::from_static(known)),
        None => http::HeaderName::from_bytes(name.as_bytes()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn ptr_eq(a: &Option<Arc<BackendLink>>, b: &Option<Arc<BackendLink>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Closes idle connections older than `timeout` about every half timeout (at most every
/// second), for backends that no request reaches any more (a request's take or return closes
/// the expired ones of its backend). Ends once the forwarder is gone.
fn close_expired_idle(links: Weak<Mutex<Vec<MadeLink>>>, timeout: Duration) {
    let every = (timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let run = move || loop {
        std::thread::sleep(every);
        let Some(links) = links.upgrade() else { return };
        let live: Vec<_> = lock(&links).iter().filter_map(|m| m.link.upgrade()).collect();
        drop(links);
        let now = Instant::now();
        for link in live {
            link.idle.close_expired(now);
        }
    };
    if let Err(e) = std::thread::Builder::new().name("upstream-idle".into()).spawn(run) {
        log::warn!("cannot start the thread that closes expired idle backend connections: {e}");
    }
}

/// A request validated for forwarding, sent to as many backends as tries need.
#[derive(Debug)]
pub struct Prepared {
    pub(super) method: http::Method,
    pub(super) path: http::uri::PathAndQuery,
    pub(super) headers: http::HeaderMap,
}

impl Prepared {
    /// Sets `Content-Length` (a chunked body kept whole goes upstream with its length).
    pub fn set_content_length(&mut self, length: u64) {
        self.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(length));
    }

    fn request(&self, uri: http::Uri) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers.clone();
        request
    }
}
