//! Sending one request to one backend with the shared ureq agent, and what a failure means for
//! a retry. Knows nothing of which backend to choose.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use ureq::http;
use ureq::unversioned::transport::Connector;
use ureq::{Agent, SendBody, Timeout};

use crate::config::Scheme;
use crate::stats::TryFailure;

use super::backend::Backend;
use super::pinned::{pin, PinnedResolver};
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
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::Method(method) => write!(f, "method '{method}' cannot be forwarded"),
            PrepareError::Target => f.write_str("request target cannot be forwarded"),
            PrepareError::HeaderName(name) => write!(f, "header name '{name}' cannot be forwarded"),
            PrepareError::HeaderValue(name) => write!(f, "value of '{name}' cannot be forwarded"),
        }
    }
}

impl std::error::Error for PrepareError {}

/// Timeouts of the backend side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardTimeouts {
    /// Connecting to a backend.
    pub connect: Duration,
    /// Sending the head, sending each part of the body, waiting for the response head, and
    /// between reads of the response body.
    pub request: Duration,
}

/// The shared ureq agent, configured for proxying: no proxy from the environment, statuses and
/// redirects passed through untouched, any method, no headers of its own, a pool large enough
/// for every worker to keep a connection to every backend.
pub struct Forwarder {
    agent: Agent,
    timeouts: ForwardTimeouts,
    pool_size: usize,
    tls: Arc<UpstreamTls>,
}

impl Forwarder {
    /// An agent whose idle pool holds `pool_size` connections (workers × backends at least, or
    /// connections churn); HTTPS backends' certificates are verified against `tls`.
    pub fn new(timeouts: ForwardTimeouts, pool_size: usize, tls: Arc<UpstreamTls>) -> Forwarder {
        let config = Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .allow_non_standard_methods(true)
            .user_agent("")
            .accept("")
            .accept_encoding("")
            // Per connection, pooled ones included (ureq's default is 128 KiB each way). The
            // input buffer must hold a whole response head: a larger head is a bad response
            // (nginx's proxy_buffer_size is 4-8 KiB).
            .input_buffer_size(32 * 1024)
            .output_buffer_size(16 * 1024)
            .max_idle_connections(pool_size)
            .max_idle_connections_per_host(pool_size)
            // Under the 5 s keep-alive of common backends (Node), so a pooled connection is not
            // reused just as the backend closes it.
            .max_idle_age(Duration::from_secs(4))
            // timeout_global/per_call/resolve would each spawn a thread per request. The body
            // phases get per-read/per-write limits, not ureq's send_body/recv_body: those are
            // totals and would cut any transfer longer than request_timeout.
            .timeout_connect(Some(timeouts.connect))
            .timeout_send_request(Some(timeouts.request))
            .timeout_recv_response(Some(timeouts.request))
            .timeout_per_read(Some(timeouts.request))
            .timeout_per_write(Some(timeouts.request))
            .tls_config(tls.ureq_config())
            .build();
        let connector = BackendConnector { connect_timeout: timeouts.connect, io_timeout: timeouts.request }
            .chain(TlsConnector::new(timeouts.connect, timeouts.request));
        let agent = Agent::with_parts(config, connector, PinnedResolver::default());
        Forwarder { agent, timeouts, pool_size, tls }
    }

    /// The timeouts and idle pool size it was made with.
    pub fn settings(&self) -> (ForwardTimeouts, usize) {
        (self.timeouts, self.pool_size)
    }

    /// What it verifies HTTPS backends' certificates against.
    pub fn tls(&self) -> &Arc<UpstreamTls> {
        &self.tls
    }

    /// Breaks every backend connection it holds, idle or in use: a worker blocked reading
    /// from or writing to a backend gets an error at once instead of at its timeout (the end of
    /// a stop's grace period). Requests sent through it afterwards fail. ureq's
    /// `Agent::shutdown` reaches our transport's sockets because the connector registers each
    /// one with it.
    pub fn shutdown(&self) {
        self.agent.clone().shutdown();
    }

    /// Checks once, before any backend is tried, that the request can be expressed upstream:
    /// the method, target and every header must be acceptable to ureq's `http` types. A request
    /// that cannot be is the client's fault (`400`), never a backend failure.
    pub fn prepare<'h>(
        &self,
        method: &str,
        target: &str,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    ) -> Result<Prepared, PrepareError> {
        let method =
            http::Method::from_bytes(method.as_bytes()).map_err(|_| PrepareError::Method(method.to_string()))?;
        let path = http::uri::PathAndQuery::try_from(target).map_err(|_| PrepareError::Target)?;
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| PrepareError::HeaderName(name.to_string()))?;
            let value =
                http::HeaderValue::from_bytes(value).map_err(|_| PrepareError::HeaderValue(name.to_string()))?;
            // ureq refuses a Host that is not plain visible ASCII.
            if name == http::header::HOST && !value.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
                return Err(PrepareError::HeaderValue("host".into()));
            }
            map.append(name, value);
        }
        Ok(Prepared { method, path, headers: map })
    }

    /// Sends one prepared request to `backend`; `body` is streamed (its length, when known, is in
    /// the headers).
    pub fn send(
        &self,
        backend: &Backend,
        prepared: &Prepared,
        body: Option<&mut dyn Read>,
    ) -> Result<http::Response<ureq::Body>, ForwardError> {
        let scheme = match backend.scheme {
            Scheme::Http => http::uri::Scheme::HTTP,
            Scheme::Https => http::uri::Scheme::HTTPS,
        };
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(backend.authority.as_str())
            .path_and_query(prepared.path.clone())
            .build()
            .map_err(|e| ForwardError::BadResponse(format!("backend address: {e}")))?;
        // The address the backend was resolved to when added, whatever the URL names.
        let _pinned = pin(backend.addr);
        super::transport::forget_sending();
        // Two calls because SendBody's lifetime is invariant: `()` sends no body and no
        // Content-Length, as a GET should.
        let result = match body {
            Some(reader) => self.agent.run(prepared.request(uri, SendBody::from_reader(reader))),
            None => self.agent.run(prepared.request(uri, ())),
        };
        result.map_err(ForwardError::from_ureq)
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

    fn request<B>(&self, uri: http::Uri, body: B) -> http::Request<B> {
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers.clone();
        request
    }
}
