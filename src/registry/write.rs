//! Management API changes written to the registry, under the changed pool's keys: read, check
//! as the pool's table would, write in a transaction that holds only if what was read is
//! unchanged, retry on a fresh read when another writer came first; then wait until the watch
//! brought the change back and it is applied here.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{is_valid_id, BackendConfig};
use crate::upstream::{resolve, Backend, BackendState, BackendTable, TableError};

use super::etcd::{Compare, EtcdError, Op};
use super::intent::{show, Intent};
use super::{Registry, APPLY_TIMEOUT};

/// Tries of one change before it gives up to the writers it keeps losing to.
const MAX_ATTEMPTS: u32 = 20;

/// A change the management API asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Adds a backend (its id, when unset, is the next `backend<N>`).
    Add(BackendConfig),
    /// Enables a backend (ending a drain).
    Enable(String),
    /// Disables a backend.
    Disable(String),
    /// Drains a backend.
    Drain(String),
    /// Sets a backend's weight.
    Weight(String, u32),
    /// Removes a backend.
    Remove(String),
}

/// Why a change through the registry was not made (or not seen here yet).
#[derive(Debug)]
pub enum RegistryError {
    /// The pool is not one this instance keeps (a reload removed it meanwhile): nothing was
    /// written.
    UnknownPool(String),
    /// Refused as the table would refuse it (unknown id, duplicate id or address, bad id,
    /// unresolvable host): nothing was written.
    Refused(TableError),
    /// The backend's stored value is corrupt: it can be removed, not changed.
    Corrupt {
        /// The key.
        key: String,
        /// Why the value is refused.
        why: String,
    },
    /// etcd could not be reached or did not answer.
    Unavailable(EtcdError),
    /// Other writers kept changing the same keys: nothing was written.
    Contended(u32),
    /// Removed from the registry; this instance never had the backend (its value was refused
    /// here). Not a failure: the removal was made.
    RemovedNotHere {
        /// The backend's id.
        id: String,
        /// The revision of the removal.
        revision: i64,
    },
    /// Written to the registry, but not applied here within [`APPLY_TIMEOUT`] (or refused here:
    /// `why`). Other instances apply it on their own.
    NotApplied {
        /// The revision of the write.
        revision: i64,
        /// Why this instance refused it, when it did.
        why: Option<String>,
    },
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::UnknownPool(pool) => write!(f, "no pool '{pool}'"),
            RegistryError::Refused(e) => e.fmt(f),
            RegistryError::Corrupt { key, why } => {
                write!(f, "the registry's value of {key} is refused ({why}): fix it in etcd, or remove the backend")
            }
            RegistryError::Unavailable(e) if e.nothing_changed() => {
                write!(f, "registry unavailable ({e}): nothing was changed")
            }
            RegistryError::Unavailable(e) => {
                write!(
                    f,
                    "registry unavailable ({e}): the change may or may not have been made; GET the backends to see"
                )
            }
            RegistryError::Contended(tries) => {
                write!(
                    f,
                    "other writers changed the same backends {tries} times in a row: nothing was changed, try again"
                )
            }
            RegistryError::RemovedNotHere { id, revision } => write!(
                f,
                "backend {id} removed from the registry (revision {revision}); this instance never had it (its value was refused here)"
            ),
            RegistryError::NotApplied { revision, why: None } => write!(
                f,
                "written to the registry (revision {revision}) but not applied here within {} s; it will be",
                APPLY_TIMEOUT.as_secs()
            ),
            RegistryError::NotApplied { revision, why: Some(why) } => {
                write!(f, "written to the registry (revision {revision}) but refused here: {why}")
            }
        }
    }
}

impl std::error::Error for RegistryError {}

impl From<EtcdError> for RegistryError {
    fn from(e: EtcdError) -> RegistryError {
        RegistryError::Unavailable(e)
    }
}

/// A short pause after a lost race, longer with each, so that writers do not collide again in
/// step.
fn after_conflict(attempt: u32) -> Duration {
    Duration::from_millis(u64::from(attempt % 5) * 3 + 1)
}

impl Registry {
    /// Makes `change` to pool `pool` in the registry, under the pool's keys, and answers with
    /// the backend once the change is applied here (for a removal, the backend as it was).
    pub fn submit(&self, pool: &str, change: Change) -> Result<Arc<Backend>, RegistryError> {
        let table = self.table(pool).ok_or_else(|| RegistryError::UnknownPool(pool.to_string()))?;
        let removal = matches!(change, Change::Remove(_));
        let before = match &change {
            Change::Remove(id) => table.snapshot().backends.iter().find(|b| b.id == *id).cloned(),
            _ => None,
        };
        let (revision, id) = match change {
            Change::Add(config) => self.write_add(pool, &table, &config)?,
            Change::Remove(id) => (self.write_remove(pool, &id)?, id),
            Change::Enable(id) => (self.write_update(pool, &id, |i| i.state = BackendState::Enabled)?, id),
            Change::Disable(id) => (self.write_update(pool, &id, |i| i.state = BackendState::Disabled)?, id),
            Change::Drain(id) => (self.write_update(pool, &id, |i| i.state = BackendState::Draining)?, id),
            Change::Weight(id, weight) => (self.write_update(pool, &id, |i| i.config.weight = weight)?, id),
        };
        if !self.wait_applied(revision, APPLY_TIMEOUT) {
            return Err(RegistryError::NotApplied { revision, why: None });
        }
        let now = table.snapshot().backends.iter().find(|b| b.id == id).cloned();
        let why = self.rejected(&show(&self.layout.backend(pool, &id))).filter(|_| !removal);
        match (before, now, why) {
            (_, _, Some(why)) => Err(RegistryError::NotApplied { revision, why: Some(why) }),
            (Some(removed), None, None) => Ok(removed),
            (None, Some(backend), None) => Ok(backend),
            (None, None, None) if removal => Err(RegistryError::RemovedNotHere { id, revision }),
            (None, None, None) => {
                let why = Some("this instance does not have the backend".to_string());
                Err(RegistryError::NotApplied { revision, why })
            }
            (Some(_), Some(_), None) => {
                let why = Some("the backend is still here (added again meanwhile?)".to_string());
                Err(RegistryError::NotApplied { revision, why })
            }
        }
    }

    /// The address a stored backend of `table` has: this instance's, when it has it at that
    /// host and port; else resolved now (`None` when it does not resolve).
    fn address_of(table: &BackendTable, id: &str, config: &BackendConfig) -> Option<SocketAddr> {
        let snapshot = table.snapshot();
        match snapshot.backends.iter().find(|b| b.id == id && b.host == config.host && b.port == config.port) {
            Some(backend) => Some(backend.addr),
            None => resolve(&config.host, config.port).ok(),
        }
    }

    fn write_add(
        &self,
        pool: &str,
        table: &BackendTable,
        config: &BackendConfig,
    ) -> Result<(i64, String), RegistryError> {
        let addr = resolve(&config.host, config.port).map_err(|error| {
            let id = config.id.clone().unwrap_or_else(|| format!("{}:{}", config.host, config.port));
            RegistryError::Refused(TableError::Unresolvable { id, error })
        })?;
        if let Some(id) = config.id.as_ref().filter(|id| !is_valid_id(id)) {
            return Err(RegistryError::Refused(TableError::InvalidId(id.clone())));
        }
        let (start, end, numbered_key) =
            (self.layout.backends(pool), self.layout.backends_end(pool), self.layout.numbered(pool));
        for attempt in 1..=MAX_ATTEMPTS {
            let range = self.etcd.range(&start, &end)?;
            let (_, numbered) = self.etcd.get(&numbered_key)?;
            let stored: Vec<(String, Option<Intent>)> = range
                .kvs
                .iter()
                .filter_map(|kv| {
                    let id = self.layout.id_of(pool, &kv.key).ok()?;
                    let intent = Intent::parse(&id, &kv.value).ok();
                    Some((id, intent))
                })
                .collect();
            let taken = |id: &str| stored.iter().any(|(s, _)| s == id);
            let mut count: usize =
                numbered.as_ref().and_then(|kv| std::str::from_utf8(&kv.value).ok()?.trim().parse().ok()).unwrap_or(0);
            let id = match &config.id {
                Some(id) => id.clone(),
                None => loop {
                    count += 1;
                    let id = format!("backend{count}");
                    if !taken(&id) {
                        break id;
                    }
                },
            };
            if taken(&id) {
                return Err(RegistryError::Refused(TableError::DuplicateId(id)));
            }
            for (other, intent) in &stored {
                if let Some(intent) = intent {
                    if Self::address_of(table, other, &intent.config) == Some(addr) {
                        return Err(RegistryError::Refused(TableError::DuplicateAddress {
                            id: None,
                            existing: other.clone(),
                            addr,
                        }));
                    }
                }
            }
            let intent = Intent {
                config: BackendConfig { id: Some(id.clone()), weight: config.weight.max(1), ..config.clone() },
                state: BackendState::Enabled,
            };
            // Nothing in the backends' range changed since the read: no id or address taken meanwhile.
            let mut compare =
                vec![Compare::Unchanged { key: start.clone(), range_end: end.clone(), revision: range.revision }];
            let mut ops = vec![Op::Put(self.layout.backend(pool, &id), intent.value())];
            if config.id.is_none() {
                let read = numbered.as_ref().map_or(0, |kv| kv.mod_revision);
                compare.push(Compare::ModRevision(numbered_key.clone(), read));
                ops.push(Op::Put(numbered_key.clone(), count.to_string().into_bytes()));
            }
            let txn = self.etcd.txn(&compare, &ops)?;
            if txn.succeeded {
                return Ok((txn.revision, id));
            }
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(after_conflict(attempt));
        }
        Err(RegistryError::Contended(MAX_ATTEMPTS))
    }

    fn write_update(&self, pool: &str, id: &str, change: impl Fn(&mut Intent)) -> Result<i64, RegistryError> {
        let key = self.layout.backend(pool, id);
        for attempt in 1..=MAX_ATTEMPTS {
            let (_, stored) = self.etcd.get(&key)?;
            let stored = stored.ok_or_else(|| RegistryError::Refused(TableError::UnknownId(id.to_string())))?;
            let mut intent =
                Intent::parse(id, &stored.value).map_err(|why| RegistryError::Corrupt { key: show(&key), why })?;
            change(&mut intent);
            let txn = self.etcd.txn(
                &[Compare::ModRevision(key.clone(), stored.mod_revision)],
                &[Op::Put(key.clone(), intent.value())],
            )?;
            if txn.succeeded {
                return Ok(txn.revision);
            }
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(after_conflict(attempt));
        }
        Err(RegistryError::Contended(MAX_ATTEMPTS))
    }

    fn write_remove(&self, pool: &str, id: &str) -> Result<i64, RegistryError> {
        let key = self.layout.backend(pool, id);
        for attempt in 1..=MAX_ATTEMPTS {
            let (_, stored) = self.etcd.get(&key)?;
            let stored = stored.ok_or_else(|| RegistryError::Refused(TableError::UnknownId(id.to_string())))?;
            let txn =
                self.etcd.txn(&[Compare::ModRevision(key.clone(), stored.mod_revision)], &[Op::Delete(key.clone())])?;
            if txn.succeeded {
                return Ok(txn.revision);
            }
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(after_conflict(attempt));
        }
        Err(RegistryError::Contended(MAX_ATTEMPTS))
    }
}
