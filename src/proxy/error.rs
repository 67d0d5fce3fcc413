//! Why a proxied request got no backend's answer, and the one place where each reason gets its
//! status (the front end's own refusals get theirs in `server::RequestError::status`).

use std::fmt;

use crate::server::Response;
use crate::upstream::{ForwardError, PrepareError};

/// A proxied request that ends with our answer instead of a backend's.
#[derive(Debug)]
pub enum ProxyError {
    /// The target is neither origin form (`/path`) nor absolute form (`http://host/path`).
    UnsupportedTarget,
    /// The request cannot be expressed upstream (a method or header the client library refuses).
    Unforwardable(PrepareError),
    /// No backend is usable (and panic mode is off).
    NoBackend,
    /// Every candidate stayed at its connection cap for the whole queue timeout.
    QueueTimeout,
    /// Every try failed; this is the last failure.
    BackendFailed(ForwardError),
}

impl ProxyError {
    /// The status answered.
    ///
    /// ```
    /// use lb_sync::proxy::ProxyError;
    /// use lb_sync::upstream::ForwardError;
    /// assert_eq!(ProxyError::NoBackend.status(), 503);
    /// assert_eq!(ProxyError::BackendFailed(ForwardError::Timeout).status(), 504);
    /// assert_eq!(ProxyError::BackendFailed(ForwardError::NoResponse("reset".into())).status(), 502);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::UnsupportedTarget | ProxyError::Unforwardable(_) => 400,
            ProxyError::NoBackend | ProxyError::QueueTimeout => 503,
            ProxyError::BackendFailed(e) if e.is_timeout() => 504,
            ProxyError::BackendFailed(_) => 502,
        }
    }

    /// The response sent to the client.
    pub fn response(&self) -> Response {
        let response = Response::text(self.status(), self.to_string());
        match self {
            ProxyError::NoBackend | ProxyError::QueueTimeout => response.with_header("Retry-After", "1"),
            _ => response,
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::UnsupportedTarget => f.write_str("unsupported request target"),
            ProxyError::Unforwardable(why) => write!(f, "{why}"),
            ProxyError::NoBackend => f.write_str("no backend available"),
            ProxyError::QueueTimeout => f.write_str("every backend is at its connection limit, retry later"),
            ProxyError::BackendFailed(e) if e.is_timeout() => f.write_str("backend timed out"),
            ProxyError::BackendFailed(_) => f.write_str("backend failed"),
        }
    }
}

impl std::error::Error for ProxyError {}
