//! The backend table: an `RwLock`ed membership snapshot plus per-backend atomics.
//!
//! Who writes what:
//! - the membership (which backends exist, which are enabled, their weights) and the algorithm
//!   built over it change only under the write lock, by the management API; each change builds a
//!   new immutable [`Membership`] and swaps it in, so a pick holds the read lock only long enough
//!   to clone an `Arc`;
//! - health (the prober threads) and the counters (the workers) are atomics on each
//!   [`Backend`], read and written without any lock.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::balance::AlgorithmKind;
use crate::config::{is_valid_id, BackendConfig};

use super::backend::{Backend, BackendPolicy, ResolveError, SlotQueue};
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
    kind: AlgorithmKind,
    policy: BackendPolicy,
    current: RwLock<Arc<Membership>>,
    added: AtomicUsize,
    slots: Arc<SlotQueue>,
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
        Ok(BackendTable { kind, policy, current: RwLock::new(Arc::new(membership)), added, slots })
    }

    /// Where requests wait when every candidate backend is at its connection cap.
    pub fn slots(&self) -> &SlotQueue {
        &self.slots
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
    /// A backend whose id or address is taken is refused, and a refused add changes nothing:
    /// no id is used up.
    pub fn add(&self, config: &BackendConfig) -> Result<Arc<Backend>, TableError> {
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
            let backend = Backend::new(id.clone(), config, &self.policy, Arc::clone(&self.slots))
                .map_err(|error| TableError::Unresolvable { id, error })?;
            if let Some(existing) = backends.iter().find(|b| b.addr == backend.addr) {
                return Err(TableError::DuplicateAddress { existing: existing.id.clone(), addr: backend.addr });
            }
            let backend = Arc::new(backend);
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
}
