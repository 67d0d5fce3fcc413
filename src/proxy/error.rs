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
    /// The client broke off a body that was streaming to the backend (request buffering off):
    /// it closed, sent bad framing or was slower than the minimum rate (nginx answers `400`
    /// when a client's body is cut short, too).
    ClientBodyCutShort,
    /// The request body, kept in a temp file, could not be read back (a disk error): our
    /// failure, not the backend's (nginx answers `500` then).
    BodyUnreadable,
    /// An upgrade request (a WebSocket) whose backend is an `https://` one: tunnels to HTTPS
    /// backends are not supported yet. Nothing was sent.
    UpgradeUnsupported,
    /// Over a rate limit: the request was not sent anywhere.
    RateLimited {
        /// The burst of the limit that refused it (`X-RateLimit-Limit`).
        limit: u32,
        /// Whole seconds until a token is due, at least 1 (`Retry-After`).
        retry_after_secs: u64,
    },
}

impl ProxyError {
    /// The status answered.
    ///
    /// ```
    /// use lb_sync::proxy::ProxyError;
    /// use lb_sync::upstream::{ForwardError, PrepareError};
    /// assert_eq!(ProxyError::NoBackend.status(), 503);
    /// assert_eq!(ProxyError::BackendFailed(ForwardError::Timeout).status(), 504);
    /// assert_eq!(ProxyError::BackendFailed(ForwardError::NoResponse("reset".into())).status(), 502);
    /// assert_eq!(ProxyError::RateLimited { limit: 5, retry_after_secs: 1 }.status(), 429);
    /// let line = PrepareError::LineTooLong { length: 40_000, limit: 33_792 };
    /// assert_eq!(ProxyError::Unforwardable(line).status(), 431);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            // As the front end answers a head over its limit (nginx answers 400 for a header
            // line over large_client_header_buffers; 431 says which part was too large).
            ProxyError::Unforwardable(PrepareError::LineTooLong { .. }) => 431,
            ProxyError::UnsupportedTarget | ProxyError::Unforwardable(_) | ProxyError::ClientBodyCutShort => 400,
            ProxyError::NoBackend | ProxyError::QueueTimeout => 503,
            ProxyError::BackendFailed(e) if e.is_timeout() => 504,
            ProxyError::BackendFailed(_) => 502,
            ProxyError::RateLimited { .. } => 429,
            ProxyError::UpgradeUnsupported => 501,
            ProxyError::BodyUnreadable => 500,
        }
    }

    /// The response sent to the client.
    ///
    /// ```
    /// use lb_sync::proxy::ProxyError;
    /// let response = ProxyError::RateLimited { limit: 5, retry_after_secs: 2 }.response();
    /// let header = |name: &str| response.headers.iter().find(|h| h.is(name)).map(|h| h.value.clone());
    /// assert_eq!(header("retry-after"), Some(b"2".to_vec()));
    /// assert_eq!(header("x-ratelimit-limit"), Some(b"5".to_vec()));
    /// assert_eq!(header("x-ratelimit-remaining"), Some(b"0".to_vec()));
    /// ```
    pub fn response(&self) -> Response {
        let response = Response::text(self.status(), self.to_string());
        match self {
            ProxyError::NoBackend | ProxyError::QueueTimeout => response.with_header("Retry-After", "1"),
            ProxyError::RateLimited { limit, retry_after_secs } => response
                .with_header("Retry-After", retry_after_secs.to_string())
                .with_header("X-RateLimit-Limit", limit.to_string())
                .with_header("X-RateLimit-Remaining", "0"),
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
            ProxyError::RateLimited { .. } => f.write_str("too many requests"),
            ProxyError::ClientBodyCutShort => f.write_str("the request body was cut short"),
            ProxyError::BodyUnreadable => f.write_str("the request body could not be read back"),
            ProxyError::UpgradeUnsupported => {
                f.write_str("an upgrade (WebSocket) to an https:// backend is not supported yet")
            }
        }
    }
}

impl std::error::Error for ProxyError {}
