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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::balance::AlgorithmKind;
use crate::config::{is_valid_id, BackendConfig};

use super::backend::{resolve, Backend, BackendPolicy, BackendState, ResolveError, SlotQueue};
use super::membership::Membership;
use super::probe_requests::ProbeRequests;

/// Why a change to the table was refused.
#[derive(Debug)]
pub enum TableError {
    /// No backend has this id.
    UnknownId(String),
    /// A backend with this id exists already.
    DuplicateId(String),
    /// A backend would have the address another has already, once resolved (`127.0.0.1:8001`
    /// and `localhost:8001`): the same server twice would get twice its share.
    DuplicateAddress {
        /// The refused backend, when a list of them was refused (a configuration: the message
        /// names which entry); `None` for a change to one backend, whose request names it.
        id: Option<String>,
        /// The backend already at this address (in a list, the earlier one).
        existing: String,
        /// The address both would have.
        addr: SocketAddr,
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
            TableError::DuplicateAddress { id, existing, addr } => {
                // The management API's wording (its 409), said of an entry when it is one of a list.
                if let Some(id) = id {
                    write!(f, "backend {id}: ")?;
                }
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

/// Refuses a list of backends (id, resolved address) where two share an address, as the
/// management API refuses adding the second: the same backend twice would get twice its share
/// and be counted as two.
///
/// ```
/// use lb_sync::upstream::distinct_addresses;
/// let addr = "127.0.0.1:8001".parse().unwrap();
/// let one = [("a".to_string(), addr), ("b".to_string(), "127.0.0.1:8002".parse().unwrap())];
/// assert!(distinct_addresses(&one).is_ok());
/// let twice = [("a".to_string(), addr), ("b".to_string(), addr)];
/// assert_eq!(
///     distinct_addresses(&twice).unwrap_err().to_string(),
///     "backend b: backend 'a' already has the address 127.0.0.1:8001"
/// );
/// ```
pub fn distinct_addresses(backends: &[(String, SocketAddr)]) -> Result<(), TableError> {
    // A map, not a scan of the earlier entries: 20,000 backends took 0.35 s that way.
    let mut seen: HashMap<SocketAddr, &str> = HashMap::with_capacity(backends.len());
    for (id, addr) in backends {
        if let Some(existing) = seen.insert(*addr, id) {
            return Err(TableError::DuplicateAddress {
                id: Some(id.clone()),
                existing: existing.to_string(),
                addr: *addr,
            });
        }
    }
    Ok(())
}

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
    probe_requests: ProbeRequests,
}

/// One entry of a [`BackendTable::apply`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Backend `id` as `config` (its id aside) and `state` say.
    Put {
        /// Its id.
        id: String,
        /// Host, port, weight.
        config: BackendConfig,
        /// Enabled, disabled or draining.
        state: BackendState,
    },
    /// No backend `id` (its requests in flight finish).
    Remove(String),
}

/// What a [`BackendTable::put`] (or one entry of a [`BackendTable::apply`]) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// The backend was not there: added.
    Added,
    /// Same address: weight and state set in place.
    Updated,
    /// A new host or port: a fresh backend in its place.
    Replaced,
    /// Removed (a [`Wanted::Remove`]).
    Removed,
    /// It was already so.
    Unchanged,
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

/// Whether `backend` is where `config` says (host, port and anything else of its address; the
/// weight aside), so that a change of it keeps its live state.
fn same_address(backend: &Backend, config: &BackendConfig) -> bool {
    let now = backend.config();
    BackendConfig { id: None, weight: 0, ..now } == BackendConfig { id: None, weight: 0, ..config.clone() }
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
        distinct_addresses(&backends.iter().map(|b| (b.id.clone(), b.addr)).collect::<Vec<_>>())?;
        let added = AtomicUsize::new(backends.len());
        let membership = Membership::build(kind, backends, policy.panic_mode);
        Ok(BackendTable {
            current: ArcSwap::from_pointee(membership),
            writer: Mutex::new(policy),
            added,
            slots,
            probe_requests: ProbeRequests::default(),
        })
    }

    /// Where requests wait when every candidate backend is at its connection cap.
    pub fn slots(&self) -> &SlotQueue {
        &self.slots
    }

    /// Where traffic asks the health checks for a probe of a backend it could not connect to.
    pub fn probe_requests(&self) -> &ProbeRequests {
        &self.probe_requests
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
        self.change_if(|backends| change(backends).map(|result| (result, true)))
    }

    /// [`change`](Self::change) for a change that may turn out to be none (`false`): then the
    /// membership is not rebuilt, so the algorithms keep their state (cursors, schedules).
    fn change_if<T>(
        &self,
        change: impl FnOnce(&mut Vec<Arc<Backend>>) -> Result<(T, bool), TableError>,
    ) -> Result<T, TableError> {
        let policy = self.writer();
        let current = self.current.load_full();
        let mut backends = current.backends.clone();
        let (result, changed) = change(&mut backends)?;
        if changed {
            self.current.store(Arc::new(Membership::build(current.algorithm(), backends, policy.panic_mode)));
        }
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
                return Err(TableError::DuplicateAddress { id: None, existing: existing.id.clone(), addr });
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

    /// Makes backend `id` what `config` and `state` say: see [`apply`](Self::apply).
    pub fn put(&self, id: &str, config: &BackendConfig, state: BackendState) -> Result<Put, TableError> {
        let wanted = Wanted::Put { id: id.to_string(), config: config.clone(), state };
        self.apply(std::slice::from_ref(&wanted)).pop().unwrap_or(Ok(Put::Unchanged))
    }

    /// Makes the table what `batch` says, in one swap, each entry's outcome in order (what the
    /// registry applies: one watch message, or a whole read). A put adds a backend that is
    /// absent (at the end), sets weight and state in place when its address is unchanged (its
    /// health, breaker and counters kept), and puts a fresh backend in its place when its host
    /// or port changed. Addresses are checked against the table as the whole batch leaves it,
    /// so two backends that swap addresses in one batch are fine; a put that would share an
    /// address is refused (the earlier one in the batch wins) and its backend stays as it was.
    /// Hosts are resolved, where they must be, before the change begins. A batch that changes
    /// nothing rebuilds nothing.
    pub fn apply(&self, batch: &[Wanted]) -> Vec<Result<Put, TableError>> {
        // Resolve every address that is new, with no lock held.
        let before = self.snapshot();
        let before_by_id = by_id(&before.backends);
        let mut resolved: Vec<Option<Result<SocketAddr, ResolveError>>> = batch
            .iter()
            .map(|wanted| match wanted {
                Wanted::Put { id, config, .. }
                    if !before_by_id.get(id.as_str()).is_some_and(|b| same_address(b, config)) =>
                {
                    Some(resolve(&config.host, config.port))
                }
                _ => None,
            })
            .collect();
        let policy = self.writer().clone();
        let outcome = self.change_if(move |backends| {
            let mut results = Vec::with_capacity(batch.len());
            let mut fresh: Vec<(usize, Arc<Backend>)> = Vec::new();
            let mut changed = false;
            let mut position = Positions::of(backends, batch.len());
            // Removed ones leave the list after the loop, so that positions stay valid in it.
            let mut gone = vec![false; backends.len()];
            for (i, wanted) in batch.iter().enumerate() {
                results.push(match wanted {
                    Wanted::Remove(id) => match position.take(backends, &gone, id) {
                        Some(index) => {
                            gone[index] = true;
                            changed = true;
                            Ok(Put::Removed)
                        }
                        None => Err(TableError::UnknownId(id.clone())),
                    },
                    Wanted::Put { id, .. } if !is_valid_id(id) => Err(TableError::InvalidId(id.clone())),
                    Wanted::Put { id, config, state } => {
                        let weight = config.weight.max(1);
                        match position
                            .find(backends, &gone, id)
                            .map(|p| &backends[p])
                            .filter(|b| same_address(b, config))
                        {
                            Some(b) if b.weight() == weight && BackendState::of(b) == *state => Ok(Put::Unchanged),
                            Some(b) => {
                                b.set_weight(weight);
                                b.set_state(*state);
                                changed = true;
                                Ok(Put::Updated)
                            }
                            // Resolved above, unless it moved since: then now.
                            None => match resolved[i].take().unwrap_or_else(|| resolve(&config.host, config.port)) {
                                Err(error) => Err(TableError::Unresolvable { id: id.clone(), error }),
                                Ok(addr) => {
                                    let config = BackendConfig { id: Some(id.clone()), weight, ..config.clone() };
                                    let backend =
                                        Backend::resolved(id.clone(), &config, addr, &policy, Arc::clone(&self.slots));
                                    backend.set_state(*state);
                                    fresh.push((i, Arc::new(backend)));
                                    Ok(Put::Added)
                                }
                            },
                        }
                    }
                });
            }
            // Addresses as the batch leaves the table: a fresh backend on an address that another
            // keeps is refused (the later one of two), and the backend it would replace stays.
            if gone.contains(&true) {
                let mut k = 0;
                backends.retain(|_| {
                    k += 1;
                    !gone[k - 1]
                });
                position = Positions::of(backends, batch.len());
            }
            let mut accepted = vec![true; fresh.len()];
            while let Some((k, existing)) = last_conflict(backends, &fresh, &accepted) {
                accepted[k] = false;
                let (i, addr) = (fresh[k].0, fresh[k].1.addr);
                results[i] = Err(TableError::DuplicateAddress { id: None, existing, addr });
            }
            for ((i, backend), ok) in fresh.into_iter().zip(accepted) {
                if !ok {
                    continue;
                }
                results[i] = Ok(match position.find(backends, &[], &backend.id) {
                    Some(index) => {
                        backends[index] = backend;
                        Put::Replaced
                    }
                    None => {
                        position.pushed(&backend.id, backends.len());
                        backends.push(backend);
                        Put::Added
                    }
                });
                changed = true;
            }
            Ok((results, changed))
        });
        outcome.unwrap_or_else(|e| vec![Err(e)])
    }

    /// Points backend `id` at `to`, a new address of its host (DNS re-resolution), if it is
    /// still at `from`: a fresh backend (a new server: health, breaker and counters start
    /// afresh) with its weight and state kept. `Ok(None)` when it is gone or was moved
    /// meanwhile; refused when another backend has that address.
    pub fn readdress(&self, id: &str, from: SocketAddr, to: SocketAddr) -> Result<Option<Arc<Backend>>, TableError> {
        let policy = self.writer().clone();
        self.change_if(|backends| {
            let Some(index) = backends.iter().position(|b| b.id == id && b.addr == from) else {
                return Ok((None, false));
            };
            if let Some(other) = backends.iter().find(|b| b.id != id && b.addr == to) {
                return Err(TableError::DuplicateAddress { id: None, existing: other.id.clone(), addr: to });
            }
            let old = &backends[index];
            let fresh = Backend::resolved(id.to_string(), &old.config(), to, &policy, Arc::clone(&self.slots));
            fresh.set_state(BackendState::of(old));
            let fresh = Arc::new(fresh);
            backends[index] = Arc::clone(&fresh);
            Ok((Some(fresh), true))
        })
    }

    /// Applies a reload's algorithm and policy to the backends the table has, keeping them all
    /// (when something else owns the list: the state file, the registry). One swap under the
    /// writers' lock, so a backend added meanwhile is kept too.
    pub fn reapply(&self, kind: AlgorithmKind, policy: BackendPolicy) -> Reconciled {
        let mut guard = self.writer();
        let current = self.current.load_full();
        for backend in &current.backends {
            backend.apply_policy(&policy);
        }
        let report = Reconciled { algorithm_changed: current.algorithm() != kind, ..Reconciled::default() };
        self.current.store(Arc::new(Membership::build(kind, current.backends.clone(), policy.panic_mode)));
        *guard = policy;
        report
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
        // Ids are unique in a table: a list that names one twice is refused before anything
        // (a configuration's checks refuse it earlier; this is for a caller that has none).
        let mut wanted_ids: HashSet<&str> = HashSet::with_capacity(wanted.len());
        if let Some((id, _)) = wanted.iter().find(|(id, _)| !wanted_ids.insert(id.as_str())) {
            return Err(TableError::DuplicateId(id.clone()));
        }
        let before = self.snapshot();
        // Lookups by id through maps: a scan per wanted backend made a reload of 20,000
        // backends take 9 s (ids are unique in a table and in a valid list).
        let before_by_id = by_id(&before.backends);
        // Resolve what is new, with no lock held.
        let mut resolved: HashMap<&str, SocketAddr> = HashMap::new();
        for (id, config) in wanted {
            if !before_by_id.get(id.as_str()).is_some_and(|b| is_server(b, config)) {
                let addr = resolve(&config.host, config.port)
                    .map_err(|error| TableError::Unresolvable { id: id.clone(), error })?;
                resolved.insert(id, addr);
            }
        }
        let mut guard = self.writer();
        let current = self.current.load_full();
        let current_by_id = by_id(&current.backends);
        let mut report = Reconciled { algorithm_changed: current.algorithm() != kind, ..Reconciled::default() };
        // Each wanted backend's namesake in the table, looked up once: kept when it is the same
        // server, else replaced. Two at one address refuse the change before anything changes.
        let mut namesakes = Vec::with_capacity(wanted.len());
        let mut addresses = Vec::with_capacity(wanted.len());
        for (id, config) in wanted {
            let namesake = current_by_id.get(id.as_str()).copied();
            let addr = match namesake.filter(|b| is_server(b, config)) {
                Some(kept) => kept.addr,
                None => match resolved.get(id.as_str()) {
                    Some(addr) => *addr,
                    None => resolve(&config.host, config.port)
                        .map_err(|error| TableError::Unresolvable { id: id.clone(), error })?,
                },
            };
            namesakes.push(namesake);
            addresses.push((id.clone(), addr));
        }
        distinct_addresses(&addresses)?;
        let mut next = Vec::with_capacity(wanted.len());
        for (((id, config), &(_, addr)), namesake) in wanted.iter().zip(&addresses).zip(namesakes) {
            let backend = match namesake {
                Some(kept) if is_server(kept, config) => {
                    if kept.weight() != config.weight.max(1) {
                        kept.set_weight(config.weight);
                        report.reweighted.push(id.clone());
                    }
                    kept.apply_policy(&policy);
                    Arc::clone(kept)
                }
                _ => {
                    let fresh = Backend::resolved(id.clone(), config, addr, &policy, Arc::clone(&self.slots));
                    if namesake.is_some() {
                        report.replaced.push(id.clone());
                    } else {
                        report.added.push(id.clone());
                    }
                    Arc::new(fresh)
                }
            };
            next.push(backend);
        }
        report.removed =
            current.backends.iter().filter(|b| !wanted_ids.contains(b.id.as_str())).map(|b| b.id.clone()).collect();
        self.added.fetch_max(wanted.len(), Ordering::Relaxed);
        self.current.store(Arc::new(Membership::build(kind, next, policy.panic_mode)));
        *guard = policy;
        Ok(report)
    }
}

/// Where each id is in the list a batch changes. A batch of a few entries scans for each (a
/// map of a large table would cost more than the scans: one put into 20,000 backends took
/// 13 ms that way against 0.4 ms scanning); a larger one uses a map (a scan per entry made
/// batches of thousands take seconds).
struct Positions {
    map: Option<HashMap<String, usize>>,
}

impl Positions {
    /// Entries up to this many scan.
    const SCAN_UP_TO: usize = 16;

    fn of(backends: &[Arc<Backend>], batch: usize) -> Positions {
        let map = (batch > Positions::SCAN_UP_TO)
            .then(|| backends.iter().enumerate().map(|(p, b)| (b.id.clone(), p)).collect());
        Positions { map }
    }

    /// The position of `id`, not counting the ones marked `gone` (a shorter `gone` marks none
    /// past its end).
    fn find(&self, backends: &[Arc<Backend>], gone: &[bool], id: &str) -> Option<usize> {
        match &self.map {
            Some(map) => map.get(id).copied(),
            None => backends.iter().enumerate().position(|(p, b)| b.id == id && !gone.get(p).copied().unwrap_or(false)),
        }
    }

    /// [`find`](Self::find), and forgets it (the caller marks it gone).
    fn take(&mut self, backends: &[Arc<Backend>], gone: &[bool], id: &str) -> Option<usize> {
        match &mut self.map {
            Some(map) => map.remove(id),
            None => self.find(backends, gone, id),
        }
    }

    /// `id` was put at the end, at `position`.
    fn pushed(&mut self, id: &str, position: usize) {
        if let Some(map) = &mut self.map {
            map.insert(id.to_string(), position);
        }
    }
}

/// The latest accepted fresh backend of a batch (its index in `fresh`) whose address another
/// backend has as the batch leaves the table, and that other backend's id (the first in table
/// order, then batch order). An id's address as the batch leaves the table is that of its
/// first accepted fresh backend, else the table's. One pass with maps: the batch is applied
/// with one pass per refusal, not a scan per backend per backend (a registry's first read of
/// 1,000 backends took 1.5 s that way, 10,000 would have taken most of an hour).
fn last_conflict(
    backends: &[Arc<Backend>],
    fresh: &[(usize, Arc<Backend>)],
    accepted: &[bool],
) -> Option<(usize, String)> {
    if !accepted.contains(&true) {
        return None; // only a fresh backend can be refused: no maps for a batch without one
    }
    let placed: Vec<&Arc<Backend>> = fresh.iter().zip(accepted).filter(|(_, ok)| **ok).map(|((_, f), _)| f).collect();
    let mut final_addr: HashMap<&str, SocketAddr> = HashMap::with_capacity(backends.len() + placed.len());
    for f in placed.iter().rev() {
        // Reversed, so that the first accepted one of an id is the one kept.
        final_addr.insert(f.id.as_str(), f.addr);
    }
    for b in backends {
        final_addr.entry(b.id.as_str()).or_insert(b.addr);
    }
    // Each address's first two holders, in table order then batch order: enough to name one
    // that is not the fresh backend's own id.
    let mut holders: HashMap<SocketAddr, (&str, Option<&str>)> = HashMap::with_capacity(final_addr.len());
    for id in backends.iter().map(|b| b.id.as_str()).chain(placed.iter().map(|f| f.id.as_str())) {
        let addr = final_addr[id];
        match holders.get_mut(&addr) {
            None => {
                holders.insert(addr, (id, None));
            }
            Some((first, second @ None)) if *first != id => *second = Some(id),
            Some(_) => {}
        }
    }
    fresh.iter().enumerate().rev().filter(|(k, _)| accepted[*k]).find_map(|(k, (_, f))| {
        let (first, second) = holders.get(&f.addr)?;
        let other = if *first != f.id { Some(*first) } else { *second }?;
        Some((k, other.to_string()))
    })
}

/// The backends by id.
fn by_id(backends: &[Arc<Backend>]) -> HashMap<&str, &Arc<Backend>> {
    backends.iter().map(|b| (b.id.as_str(), b)).collect()
}

/// Whether `backend` is the server `config` describes (same host, port and scheme): a reload
/// keeps it, live state and all; under the same id, another server starts afresh.
fn is_server(backend: &Backend, config: &BackendConfig) -> bool {
    backend.host == config.host && backend.port == config.port && backend.scheme == config.scheme
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(id: &str, port: u16, weight: u32, state: BackendState) -> Wanted {
        Wanted::Put { id: id.into(), config: BackendConfig::new("127.0.0.1", port, weight), state }
    }

    fn table() -> BackendTable {
        let backends = [
            ("a".into(), BackendConfig::new("127.0.0.1", 9001, 1)),
            ("b".into(), BackendConfig::new("127.0.0.1", 9002, 1)),
        ];
        BackendTable::new(AlgorithmKind::RoundRobin, &backends, BackendPolicy::default()).unwrap()
    }

    fn ports(table: &BackendTable) -> Vec<(String, u16)> {
        table.snapshot().backends.iter().map(|b| (b.id.clone(), b.addr.port())).collect()
    }

    #[test]
    fn a_batch_applies_in_one_swap_and_keeps_live_state_where_the_address_stays() {
        let table = table();
        let a = Arc::clone(&table.snapshot().backends[0]);
        a.record_request();
        let results = table.apply(&[
            put("a", 9001, 3, BackendState::Draining),
            Wanted::Remove("b".into()),
            put("c", 9003, 1, BackendState::Disabled),
        ]);
        assert_eq!(
            results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [Put::Updated, Put::Removed, Put::Added]
        );
        assert_eq!(ports(&table), [("a".to_string(), 9001), ("c".to_string(), 9003)]);
        let now = table.snapshot();
        assert!(Arc::ptr_eq(&now.backends[0], &a), "same address: the same backend, counters and all");
        assert_eq!(
            (a.weight(), BackendState::of(&a), BackendState::of(&now.backends[1])),
            (3, BackendState::Draining, BackendState::Disabled)
        );
        // Nothing to do: nothing rebuilt.
        assert_eq!(
            table.put("a", &BackendConfig::new("127.0.0.1", 9001, 3), BackendState::Draining).unwrap(),
            Put::Unchanged
        );
        assert!(Arc::ptr_eq(&now, &table.snapshot()));
        // A new port: a fresh backend in its place.
        assert_eq!(
            table.put("a", &BackendConfig::new("127.0.0.1", 9005, 3), BackendState::Enabled).unwrap(),
            Put::Replaced
        );
        let moved = Arc::clone(&table.snapshot().backends[0]);
        assert_eq!((moved.addr.port(), moved.counts().0, moved.weight()), (9005, 0, 3));
    }

    #[test]
    fn addresses_are_checked_as_the_batch_leaves_the_table() {
        let table = table();
        // a and b swap addresses in one batch: fine.
        let results =
            table.apply(&[put("a", 9002, 1, BackendState::Enabled), put("b", 9001, 1, BackendState::Enabled)]);
        assert!(results.iter().all(|r| matches!(r, Ok(Put::Replaced))), "{results:?}");
        assert_eq!(ports(&table), [("a".to_string(), 9002), ("b".to_string(), 9001)]);
        // Two new ones on one address: the later is refused; one onto a kept address too.
        let results = table.apply(&[
            put("c", 9003, 1, BackendState::Enabled),
            put("d", 9003, 1, BackendState::Enabled),
            put("e", 9001, 1, BackendState::Enabled),
        ]);
        assert!(matches!(results[0], Ok(Put::Added)));
        assert_eq!(results[1].as_ref().unwrap_err().to_string(), "backend 'c' already has the address 127.0.0.1:9003");
        assert_eq!(results[2].as_ref().unwrap_err().to_string(), "backend 'b' already has the address 127.0.0.1:9001");
        assert_eq!(ports(&table).len(), 3);
        // A refused move leaves the backend where it was.
        let results = table.apply(&[put("a", 9003, 1, BackendState::Enabled)]);
        assert!(results[0].is_err());
        assert_eq!(ports(&table)[0], ("a".to_string(), 9002));
        assert!(matches!(table.apply(&[Wanted::Remove("zz".into())])[0], Err(TableError::UnknownId(_))));
        assert!(matches!(table.apply(&[put("a/b", 9009, 1, BackendState::Enabled)])[0], Err(TableError::InvalidId(_))));
    }

    #[test]
    fn a_refusal_that_leaves_a_backend_where_it_was_can_refuse_another() {
        let table = table(); // a on 9001, b on 9002
                             // a moves to b's 9002 while b moves to 9003, where c comes too: as the batch leaves the
                             // table only c clashes (with b), and c, the later, is refused.
        let results = table.apply(&[
            put("a", 9002, 1, BackendState::Enabled),
            put("b", 9003, 1, BackendState::Enabled),
            put("c", 9003, 1, BackendState::Enabled),
        ]);
        assert!(matches!(results[0], Ok(Put::Replaced)) && matches!(results[1], Ok(Put::Replaced)), "{results:?}");
        assert_eq!(results[2].as_ref().unwrap_err().to_string(), "backend 'b' already has the address 127.0.0.1:9003");
        assert_eq!(ports(&table), [("a".to_string(), 9002), ("b".to_string(), 9003)]);
        // d comes on 9003 and b moves onto a's 9002: b, the later, is refused, so it stays on
        // 9003, where it now clashes with d: d is refused too, naming b.
        let results =
            table.apply(&[put("d", 9003, 1, BackendState::Enabled), put("b", 9002, 1, BackendState::Enabled)]);
        assert_eq!(results[1].as_ref().unwrap_err().to_string(), "backend 'a' already has the address 127.0.0.1:9002");
        assert_eq!(results[0].as_ref().unwrap_err().to_string(), "backend 'b' already has the address 127.0.0.1:9003");
        assert_eq!(ports(&table), [("a".to_string(), 9002), ("b".to_string(), 9003)]);
    }

    #[test]
    fn a_large_batch_removes_re_adds_and_moves_as_a_small_one_does() {
        // Past Positions::SCAN_UP_TO entries, ids are found by map: a re-read's shape (every
        // backend removed, then the wanted ones put), with a move and a clash among them.
        let table = table(); // a on 9001, b on 9002
        let mut batch = vec![Wanted::Remove("a".into()), Wanted::Remove("b".into())];
        batch.push(put("b", 9002, 3, BackendState::Enabled)); // back at its address: a fresh one
        batch.push(put("a", 9009, 1, BackendState::Enabled));
        batch.extend((0..20).map(|k| put(&format!("n{k}"), 9100 + k, 1, BackendState::Enabled)));
        batch.push(put("x", 9009, 1, BackendState::Enabled)); // a's new address: refused
        batch.push(Wanted::Remove("n3".into())); // put earlier in this batch: not in the table yet
        assert!(batch.len() > Positions::SCAN_UP_TO);
        let results = table.apply(&batch);
        assert!(matches!(results[0], Ok(Put::Removed)) && matches!(results[1], Ok(Put::Removed)));
        assert!(matches!(results[2], Ok(Put::Added)) && matches!(results[3], Ok(Put::Added)), "{results:?}");
        assert_eq!(results[24].as_ref().unwrap_err().to_string(), "backend 'a' already has the address 127.0.0.1:9009");
        assert!(matches!(results[25], Err(TableError::UnknownId(_))), "{:?}", results[25]);
        let ports = ports(&table);
        assert_eq!(ports.len(), 22);
        assert_eq!(ports[..3], [("b".to_string(), 9002), ("a".to_string(), 9009), ("n0".to_string(), 9100)]);
        assert_eq!(table.snapshot().backends[0].weight(), 3);
    }

    #[test]
    fn a_reconcile_that_names_an_id_twice_is_refused_and_changes_nothing() {
        let table = table();
        let twice = [
            ("c".to_string(), BackendConfig::new("127.0.0.1", 9003, 1)),
            ("c".to_string(), BackendConfig::new("127.0.0.1", 9004, 1)),
        ];
        let refused = table.reconcile(AlgorithmKind::RoundRobin, &twice, BackendPolicy::default());
        assert!(matches!(refused, Err(TableError::DuplicateId(ref id)) if id == "c"), "{refused:?}");
        assert_eq!(ports(&table), [("a".to_string(), 9001), ("b".to_string(), 9002)]);
    }

    #[test]
    fn a_reapply_keeps_every_backend_and_takes_the_new_algorithm() {
        let table = table();
        table.set_enabled("b", false).unwrap();
        let report = table.reapply(AlgorithmKind::IpHash, BackendPolicy::default());
        assert!(report.algorithm_changed && report.added.is_empty() && report.removed.is_empty());
        assert_eq!((table.algorithm(), ports(&table).len()), (AlgorithmKind::IpHash, 2));
        assert!(!table.snapshot().backends[1].is_enabled(), "state kept");
    }

    #[test]
    fn a_readdress_moves_only_a_backend_still_at_the_old_address() {
        let table = table();
        table.set_weight("a", 4).unwrap();
        let (from, to) = ("127.0.0.1:9001".parse().unwrap(), "127.0.0.1:9011".parse().unwrap());
        let moved = table.readdress("a", from, to).unwrap().unwrap();
        assert_eq!((moved.addr, moved.weight(), moved.host.as_str()), (to, 4, "127.0.0.1"));
        assert!(table.readdress("a", from, to).unwrap().is_none(), "moved already");
        assert!(table.readdress("b", "127.0.0.1:9002".parse().unwrap(), to).is_err(), "a's address");
    }
}
