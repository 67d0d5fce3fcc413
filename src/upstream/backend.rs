//! One backend server and its live state: configured identity, resolved address, and the
//! atomics that workers, the prober threads and the management API read and write without a
//! lock.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::balance::{peak_ewma, ResponseTime};
use crate::config::{display_address, BackendConfig, Scheme};
use crate::health::{BreakerConfig, CheckResult, CircuitBreaker, RiseFall, SlowStart};
use crate::metrics::Histogram;
use crate::stats::{class_index, TunnelCounter};

use super::link::BackendLink;
use super::pool::ConnectionCounts;

/// What the active checks know of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// Not probed yet (or checks are off): used, as nginx and HAProxy use a new server, and the
    /// first probe decides.
    Unknown,
    /// The last verdict was good.
    Up,
    /// The last verdict was bad: no requests (unless panic mode).
    Down,
}

impl HealthState {
    /// `unknown`, `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

/// What the management API left a backend in: the intent the state file keeps and the registry
/// shares (health is each instance's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Taking requests.
    Enabled,
    /// Disabled.
    Disabled,
    /// Being drained (no new requests).
    Draining,
}

impl BackendState {
    /// The state of a live backend.
    pub fn of(backend: &Backend) -> BackendState {
        if backend.is_draining() {
            BackendState::Draining
        } else if backend.is_enabled() {
            BackendState::Enabled
        } else {
            BackendState::Disabled
        }
    }

    /// `enabled`, `disabled` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Enabled => "enabled",
            BackendState::Disabled => "disabled",
            BackendState::Draining => "draining",
        }
    }
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// How every backend of a table behaves when things go wrong.
#[derive(Clone, Debug)]
pub struct BackendPolicy {
    /// Circuit-breaker settings.
    pub breaker: BreakerConfig,
    /// Slow-start window after a recovery (zero: off).
    pub slow_start: Duration,
    /// When nothing is usable, try every enabled backend anyway (Envoy's panic mode).
    pub panic_mode: bool,
    /// Most requests one backend is sent at once (HAProxy's per-server `maxconn`); 0: no cap.
    /// A request that finds every candidate at its cap waits in the [`SlotQueue`].
    pub max_connections: usize,
    /// The window over which a backend's response-time estimate decays (peak_ewma).
    pub peak_ewma_window: Duration,
}

impl Default for BackendPolicy {
    fn default() -> BackendPolicy {
        BackendPolicy {
            breaker: BreakerConfig::default(),
            slow_start: Duration::ZERO,
            panic_mode: false,
            max_connections: 0,
            peak_ewma_window: peak_ewma::DEFAULT_WINDOW,
        }
    }
}

/// Requests waiting for any backend's connection slot (HAProxy's queue), woken when one frees.
#[derive(Debug, Default)]
pub struct SlotQueue {
    waiting: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
}

impl SlotQueue {
    /// Waits until a slot frees somewhere or `until` passes (at most 50 ms at a time, so a
    /// wake-up missed between the caller's check and this wait costs little).
    pub fn wait(&self, until: Instant) {
        let left = until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50));
        if left.is_zero() {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        // A worker waiting here runs nothing: another may wake for the jobs queued meanwhile.
        crate::server::while_blocked(|| {
            let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            let _ = self.freed.wait_timeout(guard, left);
        });
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn notify(&self) {
        // Only when someone waits: a request's end costs no lock otherwise.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.freed.notify_all();
        }
    }
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
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Resolved once when the backend is added (IPv4 first), so no request waits on DNS.
    pub addr: SocketAddr,
    /// The URL authority requests are sent to: `addr` for HTTP (`127.0.0.1:8001`,
    /// `[::1]:8001`); for HTTPS the configured `host:port`, the name its certificate must
    /// have (SNI). Connections go to `addr` either way.
    pub authority: String,
    weight: AtomicU32,
    enabled: AtomicBool,
    draining: AtomicBool,
    health: AtomicU8,
    in_flight: AtomicUsize,
    /// Requests sent and not answered yet: what holds a worker, so what the cap counts.
    awaiting_answer: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Tries its client broke off (a streamed body cut short): neither answered nor failed.
    client_aborts: AtomicU64,
    answers: [AtomicU64; 5],
    /// Time from sending a request to its response head, for answered tries.
    latency: Histogram,
    /// The same times as a peak-sensitive moving average: what peak_ewma picks by.
    response_time: ResponseTime,
    breaker: CircuitBreaker,
    slow_start: SlowStart,
    rise_fall: RiseFall,
    /// Traffic saw a connect failure since the last probe began: probe it soon.
    probe_wanted: AtomicBool,
    last_check: Mutex<Option<CheckResult>>,
    max_connections: AtomicUsize,
    slots: Arc<SlotQueue>,
    /// Tunnels to it (WebSockets): each also holds an [`InFlight`] while open.
    tunnels: TunnelCounter,
    /// Its HTTP client and idle connections, made by the forwarder on the first request.
    link: ArcSwapOption<BackendLink>,
    /// Connections opened to it and reused, whichever client made them.
    connection_counts: Arc<ConnectionCounts>,
}

impl Backend {
    /// A backend from its configuration; fails when the host does not resolve. Requests that
    /// find it at its connection cap wait in `slots`, shared by every backend of a table.
    pub fn new(
        id: String,
        config: &BackendConfig,
        policy: &BackendPolicy,
        slots: Arc<SlotQueue>,
    ) -> Result<Backend, ResolveError> {
        let addr = resolve(&config.host, config.port)?;
        Ok(Backend::resolved(id, config, addr, policy, slots))
    }

    /// A backend whose address was resolved already (a table change resolves before it takes
    /// its writer lock, so no change waits on DNS while holding it).
    pub fn resolved(
        id: String,
        config: &BackendConfig,
        addr: SocketAddr,
        policy: &BackendPolicy,
        slots: Arc<SlotQueue>,
    ) -> Backend {
        Backend {
            id: id.clone(),
            host: config.host.clone(),
            port: config.port,
            weight: AtomicU32::new(config.weight.max(1)),
            scheme: config.scheme,
            addr,
            authority: match config.scheme {
                Scheme::Http => addr.to_string(),
                Scheme::Https => display_address(Scheme::Http, &config.host, config.port),
            },
            enabled: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            health: AtomicU8::new(UNKNOWN),
            in_flight: AtomicUsize::new(0),
            awaiting_answer: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            client_aborts: AtomicU64::new(0),
            answers: Default::default(),
            latency: Histogram::new(),
            response_time: ResponseTime::new(policy.peak_ewma_window),
            breaker: CircuitBreaker::named(policy.breaker, format!("backend {id}")),
            slow_start: SlowStart::new(policy.slow_start),
            rise_fall: RiseFall::default(),
            probe_wanted: AtomicBool::new(false),
            last_check: Mutex::new(None),
            max_connections: AtomicUsize::new(policy.max_connections),
            slots,
            tunnels: TunnelCounter::default(),
            link: ArcSwapOption::empty(),
            connection_counts: Arc::default(),
        }
    }

    /// Its HTTP client, once a request was sent to it.
    pub(crate) fn link(&self) -> &ArcSwapOption<BackendLink> {
        &self.link
    }

    /// Connections opened to it, and reused.
    pub fn connection_counts(&self) -> &Arc<ConnectionCounts> {
        &self.connection_counts
    }

    /// Connections to it kept idle for the next request now.
    pub fn idle_connections(&self) -> usize {
        self.link.load().as_ref().map_or(0, |link| link.idle.len())
    }

    /// Its configuration now (its id, and its weight as it is now).
    ///
    /// ```
    /// use lb_sync::config::BackendConfig;
    /// use lb_sync::upstream::{Backend, BackendPolicy};
    /// let config = BackendConfig::parse("https://127.0.0.1:8443:2").unwrap();
    /// let backend = Backend::new("api".into(), &config, &BackendPolicy::default(), Default::default()).unwrap();
    /// assert_eq!(backend.config(), BackendConfig { id: Some("api".into()), ..config });
    /// assert_eq!(backend.authority, "127.0.0.1:8443");
    /// ```
    pub fn config(&self) -> BackendConfig {
        BackendConfig {
            id: Some(self.id.clone()),
            scheme: self.scheme,
            ..BackendConfig::new(&self.host, self.port, self.weight())
        }
    }

    /// `host:port` as configured, `https://host:port` for HTTPS: how logs name it.
    pub fn address(&self) -> String {
        display_address(self.scheme, &self.host, self.port)
    }

    /// Puts it in `state` (enabled, disabled or draining).
    pub(crate) fn set_state(&self, state: BackendState) {
        match state {
            BackendState::Enabled => self.set_enabled(true),
            BackendState::Disabled => self.set_enabled(false),
            BackendState::Draining => self.set_draining(),
        }
    }

    /// Applies new settings (a reload) to this backend in place: its live state (health,
    /// breaker state, counters) stays.
    pub fn apply_policy(&self, policy: &BackendPolicy) {
        self.breaker.set_config(policy.breaker);
        self.slow_start.set_window(policy.slow_start);
        self.max_connections.store(policy.max_connections, Ordering::Relaxed);
        self.response_time.set_window(policy.peak_ewma_window);
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

    /// Marks it as wanting a probe (traffic could not connect to it); true when it did not
    /// want one already, so only the first of a burst of failures wakes the health checks.
    /// A failure that finds the mark set costs one atomic load.
    pub fn want_probe(&self) -> bool {
        !self.probe_wanted.load(Ordering::Relaxed) && !self.probe_wanted.swap(true, Ordering::AcqRel)
    }

    /// Whether traffic asked for a probe that has not begun yet.
    pub fn probe_wanted(&self) -> bool {
        self.probe_wanted.load(Ordering::Relaxed)
    }

    /// Takes the request for a probe (a probe begins now): whether there was one.
    pub fn take_probe_wanted(&self) -> bool {
        self.probe_wanted.swap(false, Ordering::AcqRel)
    }

    /// The latest health probe's outcome, if any probe ran.
    pub fn last_check(&self) -> Option<CheckResult> {
        self.last_check.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a health probe's outcome.
    pub fn set_last_check(&self, result: CheckResult) {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
    }

    /// Its weight now (the management API or a reload may change it).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// Whether the management API has it enabled (neither disabled nor draining).
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Enables it, or disables it; either ends a drain.
    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.draining.store(false, Ordering::Relaxed);
    }

    /// Whether it is being drained: no new requests, those in flight finish.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining it: it leaves the membership like a disabled backend, and says so.
    pub(crate) fn set_draining(&self) {
        self.enabled.store(false, Ordering::Relaxed);
        self.draining.store(true, Ordering::Relaxed);
    }

    /// What the active checks know of it.
    pub fn health(&self) -> HealthState {
        match self.health.load(Ordering::Relaxed) {
            UP => HealthState::Up,
            DOWN => HealthState::Down,
            _ => HealthState::Unknown,
        }
    }

    /// Whether requests may go to it as far as health checks know: not marked down (a backend
    /// not probed yet counts, until proven otherwise).
    pub fn is_healthy(&self) -> bool {
        self.health() != HealthState::Down
    }

    /// Records a health verdict; returns whether it brought the backend back from down (the
    /// caller then calls [`Backend::recovered`]).
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let before = self.health.swap(if healthy { UP } else { DOWN }, Ordering::Relaxed);
        healthy && before == DOWN
    }

    /// It gets traffic again after a spell without: its health checks brought it back up, its
    /// circuit closed again, or the checks were turned off while it was down. Whichever way
    /// that was noticed, it ramps up over its slow start (HAProxy's `slowstart`, nginx's
    /// `slow_start`), and its response-time estimate, which decayed toward zero while no answer
    /// came, starts over at the table's median (else peak_ewma would send it nearly everything).
    pub fn recovered(&self) {
        self.slow_start.begin();
        self.response_time.forget();
    }

    /// Whether a request may be sent to it now: enabled, healthy and its breaker not open.
    /// The one definition of usable: picks, `/lb/health` and `/lb/stats` all use it.
    pub fn is_usable(&self) -> bool {
        self.is_enabled() && self.is_healthy() && self.breaker.allows()
    }

    /// Why a pick would pass it over now, or `None` when it may be picked (for `--debug`).
    pub fn unusable_reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining")
        } else if !self.is_enabled() {
            Some("disabled")
        } else if !self.is_healthy() {
            Some("down (health checks)")
        } else if !self.breaker.allows() {
            Some("circuit open")
        } else if !self.has_room() {
            Some("at its connection cap")
        } else {
            None
        }
    }

    /// Requests being forwarded to it right now (the seed's `active_connections`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to it, and how many of those failed (no usable response).
    pub fn counts(&self) -> (u64, u64) {
        (self.requests.load(Ordering::Relaxed), self.failures.load(Ordering::Relaxed))
    }

    /// Requests sent to it that have no answer yet (each holds a worker).
    pub fn awaiting_answer(&self) -> usize {
        self.awaiting_answer.load(Ordering::Relaxed)
    }

    /// Whether it is below its connection cap.
    pub fn has_room(&self) -> bool {
        let cap = self.max_connections.load(Ordering::Relaxed);
        cap == 0 || self.awaiting_answer() < cap
    }

    /// Takes one of its connection slots, unless it is at its cap. The slot counts against the
    /// cap until [`InFlight::answered`] (a response head arrived: the worker is free again), and
    /// in `in_flight` until the guard is dropped (the body delivered).
    pub fn try_begin(self: &Arc<Self>) -> Option<InFlight> {
        let cap = match self.max_connections.load(Ordering::Relaxed) {
            0 => usize::MAX,
            cap => cap,
        };
        self.awaiting_answer.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < cap).then_some(n + 1)).ok()?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight { backend: Arc::clone(self), awaiting: true })
    }

    /// Counts a request sent to it.
    pub fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed try.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a try that ended on the request's side: its client broke off a streamed body (or,
    /// rarely, its body could not be read back from its temp file). Not the backend's failure.
    pub fn record_client_abort(&self) {
        self.client_aborts.fetch_add(1, Ordering::Relaxed);
    }

    /// Tries its clients broke off: with failures and answers, they add up to its requests.
    pub fn client_aborts(&self) -> u64 {
        self.client_aborts.load(Ordering::Relaxed)
    }

    /// Counts an answered try: its status class and its time to the response head (in the
    /// histogram and in the response-time estimate peak_ewma reads).
    pub fn record_answer(&self, status: u16, elapsed: Duration) {
        self.record_answer_at(status, elapsed, Instant::now());
    }

    /// [`record_answer`](Self::record_answer) for an answer that came at `now` (a clock reading
    /// the caller has).
    pub fn record_answer_at(&self, status: u16, elapsed: Duration, now: Instant) {
        self.answers[class_index(status)].fetch_add(1, Ordering::Relaxed);
        self.latency.record(elapsed);
        self.response_time.observe(elapsed, peak_ewma::at(now));
    }

    /// Answered tries by status class, in the order of [`crate::stats::CLASSES`].
    pub fn answers(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.answers[i].load(Ordering::Relaxed))
    }

    /// Time from request sent to response head of its answered tries.
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// Its response-time estimate (peak-sensitive, decaying), on [`peak_ewma::now`]'s clock.
    pub fn response_time(&self) -> &ResponseTime {
        &self.response_time
    }

    /// Tunnels (upgraded connections) to it: open now and in all.
    pub fn tunnels(&self) -> &TunnelCounter {
        &self.tunnels
    }
}

/// One in-flight request to a backend; dropping it decrements the backend's count, so
/// least_connections counts whole transfers, body included.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    /// Still counted against the connection cap.
    awaiting: bool,
}

impl InFlight {
    /// The backend the request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The backend answered: its slot under the connection cap is free for the next request
    /// (the body may still take a while to reach a slow client; no worker waits for that).
    pub fn answered(&mut self) {
        if std::mem::replace(&mut self.awaiting, false) {
            self.backend.awaiting_answer.fetch_sub(1, Ordering::AcqRel);
            self.backend.slots.notify();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.answered();
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
