//! One backend server and its live state: configured identity, resolved address, and the
//! atomics that workers, the prober threads and the management API read and write without a
//! lock.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::BackendConfig;
use crate::health::{BreakerConfig, CheckResult, CircuitBreaker, RiseFall, SlowStart};

/// How every backend of a table behaves when things go wrong.
#[derive(Clone, Debug, Default)]
pub struct BackendPolicy {
    /// Circuit-breaker settings.
    pub breaker: BreakerConfig,
    /// Slow-start window after a recovery (zero: off).
    pub slow_start: Duration,
    /// When nothing is usable, try every enabled backend anyway (Envoy's panic mode).
    pub panic_mode: bool,
}

/// Why a backend's host gave no address.
#[derive(Debug)]
pub enum ResolveError {
    /// The resolver failed.
    Lookup {
        /// The host as configured.
        host: String,
        /// What the resolver said.
        error: io::Error,
    },
    /// The resolver answered with no address.
    NoAddress {
        /// The host as configured.
        host: String,
    },
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Lookup { host, error } => write!(f, "cannot resolve {host}: {error}"),
            ResolveError::NoAddress { host } => write!(f, "{host} has no address"),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Resolves `host:port`, IPv4 first (a backend on `localhost` usually listens on 127.0.0.1).
///
/// ```
/// let addr = lb_sync::upstream::resolve("127.0.0.1", 8001).unwrap();
/// assert_eq!(addr.to_string(), "127.0.0.1:8001");
/// ```
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, ResolveError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|error| ResolveError::Lookup { host: host.to_string(), error })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| ResolveError::NoAddress { host: host.to_string() })
}

/// One backend server and its live state.
#[derive(Debug)]
pub struct Backend {
    /// Stable name, e.g. `backend1`.
    pub id: String,
    /// Host as configured.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Configured weight.
    pub weight: u32,
    /// Resolved once when the backend is added (IPv4 first), so no request waits on DNS.
    pub addr: SocketAddr,
    /// `addr` as a URL authority (`127.0.0.1:8001`, `[::1]:8001`).
    pub authority: String,
    enabled: AtomicBool,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    breaker: CircuitBreaker,
    slow_start: SlowStart,
    rise_fall: RiseFall,
    last_check: Mutex<Option<CheckResult>>,
}

impl Backend {
    /// A backend from its configuration; fails when the host does not resolve.
    pub fn new(id: String, config: &BackendConfig, policy: &BackendPolicy) -> Result<Backend, ResolveError> {
        let addr = resolve(&config.host, config.port)?;
        Ok(Backend {
            id,
            host: config.host.clone(),
            port: config.port,
            weight: config.weight.max(1),
            addr,
            authority: addr.to_string(),
            enabled: AtomicBool::new(true),
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            breaker: CircuitBreaker::new(policy.breaker),
            slow_start: SlowStart::new(policy.slow_start),
            rise_fall: RiseFall::default(),
            last_check: Mutex::new(None),
        })
    }

    /// The passive-health circuit breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The slow-start ramp.
    pub fn slow_start(&self) -> &SlowStart {
        &self.slow_start
    }

    /// Rise/fall counters of the active checks.
    pub fn rise_fall(&self) -> &RiseFall {
        &self.rise_fall
    }

    /// The latest health probe's outcome, if any probe ran.
    pub fn last_check(&self) -> Option<CheckResult> {
        self.last_check.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a health probe's outcome.
    pub fn set_last_check(&self, result: CheckResult) {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
    }

    /// Whether the management API has it enabled.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether health checks consider it up (true until proven otherwise).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a health verdict.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Whether a request may be sent to it now: enabled, healthy and its breaker not open.
    pub fn is_usable(&self) -> bool {
        self.is_enabled() && self.is_healthy() && self.breaker.allows()
    }

    /// Requests being forwarded to it right now (the seed's `active_connections`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to it, and how many of those failed (no usable response).
    pub fn counts(&self) -> (u64, u64) {
        (self.requests.load(Ordering::Relaxed), self.failures.load(Ordering::Relaxed))
    }

    /// Marks a request as started; the guard ends it when dropped (after the body is streamed).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight { backend: Arc::clone(self) }
    }

    /// Counts a failed try.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// One in-flight request to a backend; dropping it decrements the backend's count, so
/// least_connections counts whole transfers, body included.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
