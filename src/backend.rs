//! The backend table (design card): an `RwLock`ed membership snapshot plus per-backend atomics.
//!
//! Who writes what:
//! - the membership (which backends exist, which are enabled, their weights) and the algorithm
//!   built over it change only under the write lock, by the management API; each change builds a
//!   new immutable [`Membership`] and swaps it in, so a pick holds the read lock only long enough
//!   to clone an `Arc`;
//! - health (the health thread) and the counters (the workers) are atomics on each [`Backend`],
//!   read and written without any lock.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::balance::{Algorithm, AlgorithmKind, Member, PickContext};
use crate::breaker::{BreakerConfig, CircuitBreaker};
use crate::config::BackendConfig;
use crate::health::CheckResult;
use crate::slow_start::SlowStart;

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

/// Consecutive good and failed health probes (rise/fall), written by the prober threads.
#[derive(Debug, Default)]
pub struct HealthRuns {
    ok: AtomicU32,
    failed: AtomicU32,
}

impl HealthRuns {
    /// Counts one probe; returns the runs of good and failed probes after it.
    pub fn record(&self, ok: bool) -> (u32, u32) {
        if ok {
            self.failed.store(0, Ordering::Relaxed);
            (self.ok.fetch_add(1, Ordering::Relaxed) + 1, 0)
        } else {
            self.ok.store(0, Ordering::Relaxed);
            (0, self.failed.fetch_add(1, Ordering::Relaxed) + 1)
        }
    }
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
    /// `ADDR` as a URL authority (`127.0.0.1:8001`, `[::1]:8001`).
    pub authority: String,
    enabled: AtomicBool,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    breaker: CircuitBreaker,
    slow_start: SlowStart,
    health_runs: HealthRuns,
    last_check: Mutex<Option<CheckResult>>,
}

impl Backend {
    /// A backend from its configuration; fails when the host does not resolve.
    pub fn new(id: String, config: &BackendConfig, policy: &BackendPolicy) -> Result<Backend, String> {
        let addrs: Vec<SocketAddr> = (config.host.as_str(), config.port)
            .to_socket_addrs()
            .map_err(|e| format!("backend {id}: cannot resolve {}: {e}", config.host))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or(format!("backend {id}: {} has no address", config.host))?;
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
            health_runs: HealthRuns::default(),
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
    pub fn health_runs(&self) -> &HealthRuns {
        &self.health_runs
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

    /// Whether health checks consider it up (true until proven otherwise).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a health verdict; returns the previous one.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
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

/// One in-flight request to a backend; dropping it decrements the backend's count.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
}

impl InFlight {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An immutable view of the table: every backend, and the algorithm built over the enabled ones.
pub struct Membership {
    /// All backends, in configured order.
    pub backends: Vec<Arc<Backend>>,
    /// `members[i]` is the index in `backends` of the algorithm's member `i`.
    members: Vec<usize>,
    algorithm: Box<dyn Algorithm>,
    panic_mode: bool,
}

/// How a pick was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickKind {
    /// A usable backend: its breaker must still admit the request.
    Usable,
    /// Only open breakers stood in the way: they are ignored rather than refuse everyone
    /// (nginx never marks its last server failed).
    BreakersIgnored,
    /// Nothing was usable and panic mode is on: any enabled backend.
    Panic,
}

impl Membership {
    fn build(kind: AlgorithmKind, backends: Vec<Arc<Backend>>, panic_mode: bool) -> Membership {
        let members: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].is_enabled()).collect();
        let algorithm_members: Vec<Member> =
            members.iter().map(|&i| Member::new(backends[i].id.clone(), backends[i].weight)).collect();
        Membership { algorithm: kind.build(&algorithm_members), members, backends, panic_mode }
    }

    fn select(&self, hash_key: &[u8], usable: &mut dyn FnMut(&Backend) -> bool) -> Option<&Arc<Backend>> {
        let in_flight = |i: usize| self.backends[self.members[i]].in_flight();
        let ctx = PickContext { hash_key, in_flight: &in_flight };
        let chosen = self.algorithm.select(&ctx, &mut |i| usable(&self.backends[self.members[i]]))?;
        Some(&self.backends[self.members[chosen]])
    }

    /// The algorithm's choice among the backends that are usable and accepted by `accept`
    /// (retries pass one that refuses the backends already tried). When only open breakers
    /// leave nothing, they are ignored; when nothing healthy is left and panic mode is on, any
    /// enabled backend is tried.
    pub fn pick(&self, hash_key: &[u8], mut accept: impl FnMut(&Backend) -> bool) -> Option<(&Arc<Backend>, PickKind)> {
        let ramping_ok = |b: &Backend| b.is_usable() && b.slow_start.admit();
        if let Some(b) = self.select(hash_key, &mut |b| ramping_ok(b) && accept(b)) {
            return Some((b, PickKind::Usable));
        }
        if let Some(b) = self.select(hash_key, &mut |b| b.is_usable() && accept(b)) {
            // Slow start declined every offer; a ramping backend still beats none.
            return Some((b, PickKind::Usable));
        }
        if let Some(b) = self.select(hash_key, &mut |b| b.is_enabled() && b.is_healthy() && accept(b)) {
            return Some((b, PickKind::BreakersIgnored));
        }
        if self.panic_mode {
            return self.select(hash_key, &mut |b| accept(b)).map(|b| (b, PickKind::Panic));
        }
        None
    }

    /// The backend named `id`.
    pub fn find(&self, id: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.id == id)
    }
}

/// Why a change to the table was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TableError {
    /// No backend has this id.
    UnknownId(String),
    /// A backend with this id exists already.
    DuplicateId(String),
    /// The backend's address could not be resolved.
    Unresolvable(String),
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableError::UnknownId(id) => write!(f, "no backend with id '{id}'"),
            TableError::DuplicateId(id) => write!(f, "a backend with id '{id}' exists already"),
            TableError::Unresolvable(why) => f.write_str(why),
        }
    }
}

/// The backend table shared by the workers, the health thread and the management API.
///
/// ```
/// use lb_sync::backend::BackendTable;
/// use lb_sync::balance::AlgorithmKind;
/// use lb_sync::config::BackendConfig;
///
/// let table = BackendTable::new(AlgorithmKind::RoundRobin, &[
///     ("a".into(), BackendConfig::new("127.0.0.1", 9001, 1)),
///     ("b".into(), BackendConfig::new("127.0.0.1", 9002, 1)),
/// ], Default::default()).unwrap();
/// let snapshot = table.snapshot();
/// let first = snapshot.pick(&[], |_| true).unwrap().0.id.clone();
/// let second = snapshot.pick(&[], |_| true).unwrap().0.id.clone();
/// assert_eq!((first.as_str(), second.as_str()), ("a", "b"));
/// ```
pub struct BackendTable {
    kind: AlgorithmKind,
    policy: BackendPolicy,
    current: RwLock<Arc<Membership>>,
    added: AtomicUsize,
}

impl BackendTable {
    /// A table of the given backends (id, config), in order.
    pub fn new(
        kind: AlgorithmKind,
        backends: &[(String, BackendConfig)],
        policy: BackendPolicy,
    ) -> Result<BackendTable, String> {
        let backends = backends
            .iter()
            .map(|(id, config)| Backend::new(id.clone(), config, &policy).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let added = AtomicUsize::new(backends.len());
        let membership = Membership::build(kind, backends, policy.panic_mode);
        Ok(BackendTable { kind, policy, current: RwLock::new(Arc::new(membership)), added })
    }

    /// The algorithm in use.
    pub fn algorithm(&self) -> AlgorithmKind {
        self.kind
    }

    /// The current membership; cheap (an `Arc` clone under the read lock).
    pub fn snapshot(&self) -> Arc<Membership> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Applies `change` to the backend list under the write lock and swaps in the rebuilt view.
    fn change<T>(&self, change: impl FnOnce(&mut Vec<Arc<Backend>>) -> Result<T, TableError>) -> Result<T, TableError> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let mut backends = current.backends.clone();
        let result = change(&mut backends)?;
        *current = Arc::new(Membership::build(self.kind, backends, self.policy.panic_mode));
        Ok(result)
    }

    /// Adds a backend; its id defaults to `backend<N>` (N counting every backend ever added).
    pub fn add(&self, config: &BackendConfig) -> Result<Arc<Backend>, TableError> {
        self.change(|backends| {
            let id = match &config.id {
                Some(id) => id.clone(),
                None => loop {
                    let n = self.added.fetch_add(1, Ordering::Relaxed) + 1;
                    let id = format!("backend{n}");
                    if !backends.iter().any(|b| b.id == id) {
                        break id;
                    }
                },
            };
            if backends.iter().any(|b| b.id == id) {
                return Err(TableError::DuplicateId(id));
            }
            let backend = Arc::new(Backend::new(id, config, &self.policy).map_err(TableError::Unresolvable)?);
            backends.push(Arc::clone(&backend));
            Ok(backend)
        })
    }

    /// Enables or disables a backend (a disabled one leaves the algorithm's membership).
    pub fn set_enabled(&self, id: &str, enabled: bool) -> Result<Arc<Backend>, TableError> {
        self.change(|backends| {
            let backend = backends.iter().find(|b| b.id == id).ok_or(TableError::UnknownId(id.to_string()))?;
            backend.enabled.store(enabled, Ordering::Relaxed);
            Ok(Arc::clone(backend))
        })
    }

    /// Removes a backend. Requests already forwarded to it finish: they hold their own `Arc`.
    pub fn remove(&self, id: &str) -> Result<Arc<Backend>, TableError> {
        self.change(|backends| {
            let index = backends.iter().position(|b| b.id == id).ok_or(TableError::UnknownId(id.to_string()))?;
            Ok(backends.remove(index))
        })
    }
}
