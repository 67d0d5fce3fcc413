//! Sending one request to one backend with the shared ureq agent, and what a failure means for
//! a retry. Knows nothing of which backend to choose.

use std::io::{self, Read};
use std::time::Duration;

use ureq::http;
use ureq::{Agent, SendBody, Timeout};

use crate::backend::Backend;

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
}

impl ForwardError {
    /// Whether the request certainly did not reach the backend.
    pub fn never_sent(&self) -> bool {
        matches!(self, ForwardError::NotSent(_) | ForwardError::ConnectTimeout)
    }

    /// The reason as counted in the statistics.
    pub fn reason(&self) -> crate::stats::TryFailure {
        use crate::stats::TryFailure;
        match self {
            ForwardError::NotSent(_) => TryFailure::Refused,
            ForwardError::ConnectTimeout => TryFailure::ConnectTimeout,
            ForwardError::NoResponse(_) => TryFailure::NoResponse,
            ForwardError::Timeout => TryFailure::Timeout,
            ForwardError::BadResponse(_) => TryFailure::BadResponse,
        }
    }

    /// Whether the failure was a timeout (answered `504` rather than `502`).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ForwardError::Timeout | ForwardError::ConnectTimeout)
    }

    fn from_ureq(error: ureq::Error) -> ForwardError {
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
        }
    }
}

/// Timeouts of the backend side.
#[derive(Clone, Copy, Debug)]
pub struct ForwardTimeouts {
    /// Connecting to a backend.
    pub connect: Duration,
    /// Sending the head, sending each part of the body, waiting for the response head, and
    /// between reads of the response body.
    pub request: Duration,
}

/// The shared ureq agent, configured for proxying (see DEVELOPERS.md for why each setting).
pub struct Forwarder {
    agent: Agent,
}

impl Forwarder {
    /// An agent whose idle pool holds `pool_size` connections (workers × backends at least, or
    /// connections churn).
    pub fn new(timeouts: ForwardTimeouts, pool_size: usize) -> Forwarder {
        let config = Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .allow_non_standard_methods(true)
            .user_agent("")
            .accept("")
            .accept_encoding("")
            .max_idle_connections(pool_size)
            .max_idle_connections_per_host(pool_size)
            // Under the 5 s keep-alive of common backends (Node), so a pooled connection is not
            // reused just as the backend closes it.
            .max_idle_age(Duration::from_secs(4))
            // timeout_global/per_call/resolve would each spawn a thread per request.
            .timeout_connect(Some(timeouts.connect))
            .timeout_send_request(Some(timeouts.request))
            .timeout_send_body(Some(timeouts.request))
            .timeout_recv_response(Some(timeouts.request))
            .timeout_recv_body(Some(timeouts.request))
            .build();
        Forwarder { agent: Agent::new_with_config(config) }
    }

    /// Sends one request to `backend`: `target` is the origin-form path and query, `headers`
    /// are already filtered, `body` is streamed (its length, when known, is in `headers`).
    pub fn send(
        &self,
        backend: &Backend,
        method: &str,
        target: &str,
        headers: &[(String, Vec<u8>)],
        body: Option<&mut dyn Read>,
    ) -> Result<http::Response<ureq::Body>, ForwardError> {
        let mut builder = http::Request::builder().method(method).uri(format!("{}{}", backend.base_url, target));
        for (name, value) in headers {
            builder = builder.header(name.as_str(), value.as_slice());
        }
        let bad = |e: http::Error| ForwardError::BadResponse(format!("cannot build request: {e}"));
        // Two calls because SendBody's lifetime is invariant: `()` sends no body and no
        // Content-Length, as a GET should.
        let result = match body {
            Some(reader) => self.agent.run(builder.body(SendBody::from_reader(reader)).map_err(bad)?),
            None => self.agent.run(builder.body(()).map_err(bad)?),
        };
        result.map_err(ForwardError::from_ureq)
    }
}
