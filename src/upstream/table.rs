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
use crate::config::BackendConfig;

use super::backend::{Backend, BackendPolicy, ResolveError, SlotQueue};
use super::membership::Membership;

/// Why a change to the table was refused.
#[derive(Debug)]
pub enum TableError {
    /// No backend has this id.
    UnknownId(String),
    /// A backend with this id exists already.
    DuplicateId(String),
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
            let backend = Backend::new(id.clone(), config, &self.policy, Arc::clone(&self.slots))
                .map_err(|error| TableError::Unresolvable { id, error })?;
            let backend = Arc::new(backend);
            backends.push(Arc::clone(&backend));
            Ok(backend)
        })
    }

    /// Enables or disables a backend (a disabled one leaves the algorithm's membership).
    pub fn set_enabled(&self, id: &str, enabled: bool) -> Result<Arc<Backend>, TableError> {
        self.change(|backends| {
            let backend = backends.iter().find(|b| b.id == id).ok_or(TableError::UnknownId(id.to_string()))?;
            backend.set_enabled(enabled);
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
