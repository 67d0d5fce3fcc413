//! The backend table: a membership snapshot swapped in whole, plus per-backend atomics.
//!
//! Who writes what:
//! - the membership (which backends exist, which are enabled, their weights, the algorithm) is
//!   an immutable [`Membership`] behind an atomic pointer (`arc-swap`): a request loads the
//!   current one without any lock, so it never waits for a change. A change (management API,
//!   reload) resolves host names first, with no lock held, then builds the new membership and
//!   swaps it in; changes are one at a time (a writers' mutex that readers never take);
//! - health (the prober threads) and the counters (the workers) are atomics on each
//!   [`Backend`], read and written without any lock.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::balance::AlgorithmKind;
use crate::config::{is_valid_id, BackendConfig};

use super::backend::{resolve, Backend, BackendPolicy, ResolveError, SlotQueue};
use super::membership::Membership;

/// Why a change to the table was refused.
#[derive(Debug)]
pub enum TableError {
    /// No backend has this id.
    UnknownId(String),
    /// A backend with this id exists already.
    DuplicateId(String),
    /// A backend at this address exists already (the id of that one, and the address).
    DuplicateAddress {
        /// The backend already there.
        existing: String,
        /// The address both would have.
        addr: std::net::SocketAddr,
    },
    /// An id outside `[A-Za-z0-9._~-]{1,64}`.
    InvalidId(String),
    /// The backend's address could not be resolved.
    Unresolvable {
        /// The backend's id.
        id: String,
        /// Why.
        error: ResolveError,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::UnknownId(id) => write!(f, "no backend with id '{id}'"),
            TableError::DuplicateId(id) => write!(f, "a backend with id '{id}' exists already"),
            TableError::DuplicateAddress { existing, addr } => {
                write!(f, "backend '{existing}' already has the address {addr}")
            }
            TableError::InvalidId(id) => write!(
                f,
                "backend id '{id}' is not allowed: use 1-64 of the characters A-Z a-z 0-9 . _ ~ - (it goes in URLs)"
            ),
            TableError::Unresolvable { id, error } => write!(f, "backend {id}: {error}"),
        }
    }
}

impl std::error::Error for TableError {}

/// The backend table shared by the workers, the health checker and the management API.
///
/// ```
/// use lb_sync::upstream::BackendTable;
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
    current: ArcSwap<Membership>,
    /// Held by a change from its look at the current membership to its swap; the policy in
    /// force with it.
    writer: Mutex<BackendPolicy>,
    added: AtomicUsize,
    slots: Arc<SlotQueue>,
}

/// What a [`BackendTable::reconcile`] did, by backend id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Backends that were not in the table.
    pub added: Vec<String>,
    /// Backends no longer configured (requests in flight to them finish).
    pub removed: Vec<String>,
    /// Backends whose address changed: new state (health, breaker, counters).
    pub replaced: Vec<String>,
    /// Backends whose weight changed (their live state kept).
    pub reweighted: Vec<String>,
    /// Whether the algorithm changed.
    pub algorithm_changed: bool,
}

impl Reconciled {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        *self == Reconciled::default()
    }
}

impl BackendTable {
    /// A table of the given backends (id, config), in order.
    pub fn new(
        kind: AlgorithmKind,
        backends: &[(String, BackendConfig)],
        policy: BackendPolicy,
    ) -> Result<BackendTable, TableError> {
        let slots = Arc::new(SlotQueue::default());
        if let Some((id, _)) = backends.iter().find(|(id, _)| !is_valid_id(id)) {
            return Err(TableError::InvalidId(id.clone()));
        }
        let backends = backends
            .iter()
            .map(|(id, config)| {
                Backend::new(id.clone(), config, &policy, Arc::clone(&slots))
                    .map(Arc::new)
                    .map_err(|error| TableError::Unresolvable { id: id.clone(), error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let added = AtomicUsize::new(backends.len());
        let membership = Membership::build(kind, backends, policy.panic_mode);
        Ok(BackendTable { current: ArcSwap::from_pointee(membership), writer: Mutex::new(policy), added, slots })
    }

    /// Where requests wait when every candidate backend is at its connection cap.
    pub fn slots(&self) -> &SlotQueue {
        &self.slots
    }

    /// The algorithm in use.
    pub fn algorithm(&self) -> AlgorithmKind {
        self.current.load().algorithm()
    }

    /// The current membership: an atomic load, never a wait.
    pub fn snapshot(&self) -> Arc<Membership> {
        self.current.load_full()
    }

    fn writer(&self) -> MutexGuard<'_, BackendPolicy> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to a copy of the backend list and swaps in the rebuilt view. Anything
    /// slow (resolving a host) is done by the caller before; readers never wait for this.
    fn change<T>(&self, change: impl FnOnce(&mut Vec<Arc<Backend>>) -> Result<T, TableError>) -> Result<T, TableError> {
        let policy = self.writer();
        let current = self.current.load_full();
        let mut backends = current.backends.clone();
        let result = change(&mut backends)?;
        self.current.store(Arc::new(Membership::build(current.algorithm(), backends, policy.panic_mode)));
        Ok(result)
    }

    /// Adds a backend; its id defaults to `backend<N>` (N counting every backend ever added).
    /// A backend whose id or address is taken is refused, and a refused add changes nothing:
    /// no id is used up. The host is resolved before the change begins.
    pub fn add(&self, config: &BackendConfig) -> Result<Arc<Backend>, TableError> {
        let addr = resolve(&config.host, config.port).map_err(|error| TableError::Unresolvable {
            id: config.id.clone().unwrap_or_else(|| format!("{}:{}", config.host, config.port)),
            error,
        })?;
        let policy = self.writer().clone();
        self.change(|backends| {
            let mut number = self.added.load(Ordering::Relaxed);
            let id = match &config.id {
                Some(id) => id.clone(),
                None => loop {
                    number += 1;
                    let id = format!("backend{number}");
                    if !backends.iter().any(|b| b.id == id) {
                        break id;
                    }
                },
            };
            if !is_valid_id(&id) {
                return Err(TableError::InvalidId(id));
            }
            if backends.iter().any(|b| b.id == id) {
                return Err(TableError::DuplicateId(id));
            }
            if let Some(existing) = backends.iter().find(|b| b.addr == addr) {
                return Err(TableError::DuplicateAddress { existing: existing.id.clone(), addr });
            }
            let backend = Arc::new(Backend::resolved(id, config, addr, &policy, Arc::clone(&self.slots)));
            backends.push(Arc::clone(&backend));
            self.added.store(number, Ordering::Relaxed);
            Ok(backend)
        })
    }

    /// How many backends were numbered so far (`backend<N>` ids), for the state file.
    pub fn numbered(&self) -> usize {
        self.added.load(Ordering::Relaxed)
    }

    /// Raises the count of numbered backends (restoring a state file), so ids are never reused.
    pub fn set_numbered_at_least(&self, n: usize) {
        self.added.fetch_max(n, Ordering::Relaxed);
    }

    fn find<'a>(backends: &'a [Arc<Backend>], id: &str) -> Result<&'a Arc<Backend>, TableError> {
        backends.iter().find(|b| b.id == id).ok_or(TableError::UnknownId(id.to_string()))
    }

    /// Enables or disables a backend (a disabled one leaves the algorithm's membership); either
    /// ends a drain.
    pub fn set_enabled(&self, id: &str, enabled: bool) -> Result<Arc<Backend>, TableError> {
        self.change(|backends| {
            let backend = Self::find(backends, id)?;
            backend.set_enabled(enabled);
            Ok(Arc::clone(backend))
        })
    }

    /// Drains a backend: no new requests (it leaves the membership), those in flight finish.
    pub fn drain(&self, id: &str) -> Result<Arc<Backend>, TableError> {
        self.change(|backends| {
            let backend = Self::find(backends, id)?;
            backend.set_draining();
            Ok(Arc::clone(backend))
        })
    }

    /// Sets a backend's weight; the algorithm is rebuilt over the new weights.
    pub fn set_weight(&self, id: &str, weight: u32) -> Result<Arc<Backend>, TableError> {
        self.change(|backends| {
            let backend = Self::find(backends, id)?;
            backend.set_weight(weight);
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

    /// Makes the table what a (reloaded) configuration says: these backends, in this order,
    /// with this algorithm and policy. A backend whose id, host and port are unchanged keeps
    /// its live state (health, breaker, counters, enabled or not) and takes the new weight
    /// and policy in place; one whose address changed starts afresh; one no longer listed is
    /// removed (its requests in flight finish). Every new address is resolved before anything
    /// changes: one that does not resolve refuses the whole change.
    pub fn reconcile(
        &self,
        kind: AlgorithmKind,
        wanted: &[(String, BackendConfig)],
        policy: BackendPolicy,
    ) -> Result<Reconciled, TableError> {
        let before = self.snapshot();
        let find = |backends: &[Arc<Backend>], id: &str, config: &BackendConfig| {
            let same = |b: &&Arc<Backend>| {
                b.id == id && b.host == config.host && b.port == config.port && b.scheme == config.scheme
            };
            backends.iter().find(same).cloned()
        };
        // Resolve what is new, with no lock held.
        let mut resolved = Vec::new();
        for (id, config) in wanted {
            if find(&before.backends, id, config).is_none() {
                let addr = resolve(&config.host, config.port)
                    .map_err(|error| TableError::Unresolvable { id: id.clone(), error })?;
                resolved.push((id.clone(), addr));
            }
        }
        let mut guard = self.writer();
        let current = self.current.load_full();
        let mut report = Reconciled { algorithm_changed: current.algorithm() != kind, ..Reconciled::default() };
        let mut next = Vec::with_capacity(wanted.len());
        for (id, config) in wanted {
            let backend = match find(&current.backends, id, config) {
                Some(kept) => {
                    if kept.weight() != config.weight.max(1) {
                        kept.set_weight(config.weight);
                        report.reweighted.push(id.clone());
                    }
                    kept.apply_policy(&policy);
                    kept
                }
                None => {
                    let addr = match resolved.iter().find(|(r, _)| r == id) {
                        Some((_, addr)) => *addr,
                        // Added by the management API meanwhile under this id: resolve now.
                        None => resolve(&config.host, config.port)
                            .map_err(|error| TableError::Unresolvable { id: id.clone(), error })?,
                    };
                    let fresh = Backend::resolved(id.clone(), config, addr, &policy, Arc::clone(&self.slots));
                    if current.backends.iter().any(|b| b.id == *id) {
                        report.replaced.push(id.clone());
                    } else {
                        report.added.push(id.clone());
                    }
                    Arc::new(fresh)
                }
            };
            next.push(backend);
        }
        report.removed = current
            .backends
            .iter()
            .filter(|b| !wanted.iter().any(|(id, _)| *id == b.id))
            .map(|b| b.id.clone())
            .collect();
        self.added.fetch_max(wanted.len(), Ordering::Relaxed);
        self.current.store(Arc::new(Membership::build(kind, next, policy.panic_mode)));
        *guard = policy;
        Ok(report)
    }
}
