//! Backend host names re-resolved periodically, off the request path (HAProxy's `resolvers`,
//! nginx's `server ... resolve`): one thread looks up every backend whose host is a name, in
//! every pool, each `dns_refresh_interval`. An address that changed is applied to the table like any change of
//! it ([`BackendTable::readdress`]: a fresh backend at the new address, weight and state kept);
//! a failed lookup keeps the last address and is reported (a log line when a host starts
//! failing, one when it recovers, and [`DnsStatus`] for `/lb/stats` and `/lb/metrics`).
//!
//! A name that resolves to several addresses keeps its backend where it is as long as its
//! address is still among them, so a resolver that rotates its answers moves nothing.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

use super::backend::{Backend, ResolveError};
use super::table::BackendTable;
use crate::config::DEFAULT_POOL;

/// How a host name becomes addresses: the system resolver by default ([`system_lookup`]); a
/// test, or an embedder with its own service discovery, may plug in another
/// ([`DnsRefresher::set_resolver`]).
pub type Resolver = dyn Fn(&str, u16) -> Lookup + Send + Sync;

/// What a lookup gives: every address of a host, or why none.
pub type Lookup = Result<Vec<SocketAddr>, ResolveError>;

/// The tables to refresh, read again each round (a reload adds and removes pools): each pool's
/// name and table, `default` first.
///
/// ```
/// use std::sync::Arc;
/// use lb_sync::upstream::{BackendTable, PoolTables};
/// let table = Arc::new(BackendTable::new("round_robin".parse().unwrap(), &[], Default::default()).unwrap());
/// let tables: Box<PoolTables> = Box::new(move || vec![("default".to_string(), Arc::clone(&table))]);
/// assert_eq!(tables().len(), 1);
/// ```
pub type PoolTables = dyn Fn() -> Vec<(String, Arc<BackendTable>)> + Send + Sync;

/// Every address the system resolver gives for `host:port`.
///
/// ```
/// let addrs = lb_sync::upstream::system_lookup("127.0.0.1", 80).unwrap();
/// assert_eq!(addrs, vec!["127.0.0.1:80".parse().unwrap()]);
/// ```
pub fn system_lookup(host: &str, port: u16) -> Lookup {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|error| ResolveError::Lookup { host: host.to_string(), error })?
        .collect();
    if addrs.is_empty() {
        return Err(ResolveError::NoAddress { host: host.to_string() });
    }
    Ok(addrs)
}

/// What the re-resolutions did so far, for `/lb/stats` and `/lb/metrics`.
#[derive(Debug, Default)]
pub struct DnsStatus {
    lookups: AtomicU64,
    failures: AtomicU64,
    changes: AtomicU64,
    /// [`failing_key`] → why its last lookup failed (and which address it keeps).
    failing: Mutex<BTreeMap<String, String>>,
}

impl DnsStatus {
    /// Lookups made.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Lookups that failed (the backend kept its address).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Addresses that changed and were applied.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// The backends whose last lookup failed, with why: the default pool's by id, a named
    /// pool's as `POOL/ID`.
    pub fn failing(&self) -> BTreeMap<String, String> {
        self.failing_lock().clone()
    }

    fn failing_lock(&self) -> MutexGuard<'_, BTreeMap<String, String>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Command {
    Interval(Duration),
    Resolver(Arc<Resolver>),
}

/// The re-resolution thread. Stops when [`stop`](Self::stop)ped or dropped.
pub struct DnsRefresher {
    commands: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsRefresher {
    /// Starts re-resolving the names of the backends of every table `tables` gives every
    /// `interval` (zero: never, until [`set_interval`](Self::set_interval) says otherwise), with
    /// the system resolver.
    pub fn start(tables: Box<PoolTables>, interval: Duration, status: Arc<DnsStatus>) -> io::Result<DnsRefresher> {
        let (commands, received) = crossbeam_channel::unbounded::<Command>();
        let thread = std::thread::Builder::new().name("dns-refresh".into()).spawn(move || {
            let mut interval = interval;
            let mut resolver: Arc<Resolver> = Arc::new(system_lookup);
            loop {
                let command = if interval.is_zero() {
                    received.recv().map_err(|_| RecvTimeoutError::Disconnected)
                } else {
                    received.recv_timeout(interval)
                };
                match command {
                    Ok(Command::Interval(new)) => interval = new,
                    Ok(Command::Resolver(new)) => resolver = new,
                    Err(RecvTimeoutError::Timeout) => refresh_all(&tables(), &*resolver, &status),
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
        Ok(DnsRefresher { commands: Some(commands), thread: Some(thread) })
    }

    /// A new interval (a reload), counted from now.
    pub fn set_interval(&self, interval: Duration) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Interval(interval));
        }
    }

    /// Looks names up with `resolver` from the next round on.
    pub fn set_resolver(&self, resolver: Arc<Resolver>) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Resolver(resolver));
        }
    }

    /// Stops the thread (a lookup under way finishes first).
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DnsRefresher {
    fn drop(&mut self) {
        self.shut();
    }
}

/// The address a backend should move to, if any: none while its address is still one of the
/// host's; else the first IPv4 one (as at start), else the first.
fn moved_to(current: SocketAddr, addrs: &[SocketAddr]) -> Option<SocketAddr> {
    if addrs.contains(&current) {
        return None;
    }
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied()
}

/// How `failing` names a backend: the default pool's by its id (as before pools), a named
/// pool's as `POOL/ID` (neither a pool name nor an id holds a `/`).
fn failing_key(pool: &str, id: &str) -> String {
    if pool == DEFAULT_POOL {
        id.to_string()
    } else {
        format!("{pool}/{id}")
    }
}

/// One round over every pool: each backend whose host is a name, looked up once (a name two
/// pools share is looked up for each: their backends move independently).
pub(crate) fn refresh_all(
    tables: &[(String, Arc<BackendTable>)],
    resolver: &dyn Fn(&str, u16) -> Lookup,
    status: &DnsStatus,
) {
    let snapshots: Vec<_> = tables.iter().map(|(pool, table)| (pool, table, table.snapshot())).collect();
    // Reports of backends (or pools) gone since are dropped.
    let live: HashSet<String> = snapshots
        .iter()
        .flat_map(|(pool, _, snapshot)| snapshot.backends.iter().map(|b| failing_key(pool, &b.id)))
        .collect();
    status.failing_lock().retain(|key, _| live.contains(key));
    for (pool, table, snapshot) in snapshots {
        refresh(pool, table, &snapshot.backends, resolver, status);
    }
}

/// One pool's round: `backends` (its table's as the round began) looked up, changes applied to
/// `table`.
fn refresh(
    pool: &str,
    table: &BackendTable,
    backends: &[Arc<Backend>],
    resolver: &dyn Fn(&str, u16) -> Lookup,
    status: &DnsStatus,
) {
    // Log lines name a named pool as the management API's do.
    let named = if pool == DEFAULT_POOL { String::new() } else { format!("pool {pool}: ") };
    for backend in backends {
        if backend.host.parse::<IpAddr>().is_ok() {
            continue;
        }
        status.lookups.fetch_add(1, Ordering::Relaxed);
        let failure = match resolver(&backend.host, backend.port) {
            Err(e) => Some(format!("{e}; keeping {}", backend.addr)),
            Ok(addrs) => match moved_to(backend.addr, &addrs) {
                None if addrs.is_empty() => Some(format!("{} has no address; keeping {}", backend.host, backend.addr)),
                None => None,
                Some(to) => match table.readdress(&backend.id, backend.addr, to) {
                    Ok(Some(_)) => {
                        status.changes.fetch_add(1, Ordering::Relaxed);
                        log::info!(
                            "{named}backend {}: {} now resolves to {to} (was {}): a fresh backend there, weight and state kept",
                            backend.id,
                            backend.host,
                            backend.addr
                        );
                        None
                    }
                    Ok(None) => None,
                    Err(e) => Some(format!("{} now resolves to {to}, not applied: {e}", backend.host)),
                },
            },
        };
        let key = failing_key(pool, &backend.id);
        let mut failing = status.failing_lock();
        match failure {
            Some(why) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                // Once per new reason, not once per round.
                if failing.get(&key) != Some(&why) {
                    log::warn!("{named}backend {}: DNS refresh failed: {why}", backend.id);
                    failing.insert(key, why);
                }
            }
            None => {
                if failing.remove(&key).is_some() {
                    log::info!("{named}backend {}: {} resolves again", backend.id, backend.host);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::AlgorithmKind;
    use crate::config::BackendConfig;
    use crate::upstream::BackendState;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_rotating_answer_moves_nothing_and_a_new_one_prefers_ipv4() {
        let current = addr("10.0.0.1:80");
        assert_eq!(moved_to(current, &[addr("10.0.0.2:80"), current]), None);
        assert_eq!(moved_to(current, &[addr("[::2]:80"), addr("10.0.0.3:80")]), Some(addr("10.0.0.3:80")));
        assert_eq!(moved_to(current, &[addr("[::2]:80")]), Some(addr("[::2]:80")));
    }

    #[test]
    fn a_round_applies_a_change_keeps_weight_and_state_and_reports_a_failure() {
        let table = Arc::new(
            BackendTable::new(
                AlgorithmKind::RoundRobin,
                &[
                    ("named".into(), BackendConfig::new("localhost", 9001, 3)),
                    ("literal".into(), BackendConfig::new("127.0.0.1", 9002, 1)),
                ],
                Default::default(),
            )
            .unwrap(),
        );
        let tables = [(DEFAULT_POOL.to_string(), Arc::clone(&table))];
        table.set_enabled("named", false).unwrap();
        let status = DnsStatus::default();
        let asked = Mutex::new(Vec::new());
        let answer = Mutex::new(Ok(vec![addr("127.0.0.7:9001")]));
        let resolver = |host: &str, port: u16| {
            asked.lock().unwrap().push(format!("{host}:{port}"));
            match &*answer.lock().unwrap() {
                Ok(addrs) => Ok(addrs.clone()),
                Err(()) => Err(ResolveError::NoAddress { host: host.to_string() }),
            }
        };
        refresh_all(&tables, &resolver, &status);
        let moved = table.snapshot().backends[0].clone();
        assert_eq!((moved.id.as_str(), moved.addr), ("named", addr("127.0.0.7:9001")));
        assert_eq!((moved.weight(), BackendState::of(&moved)), (3, BackendState::Disabled));
        assert_eq!(*asked.lock().unwrap(), ["localhost:9001"], "an address literal is not looked up");
        assert_eq!((status.lookups(), status.changes(), status.failures()), (1, 1, 0));

        *answer.lock().unwrap() = Err(());
        refresh_all(&tables, &resolver, &status);
        assert_eq!(table.snapshot().backends[0].addr, addr("127.0.0.7:9001"), "the last address is kept");
        let failing = status.failing();
        assert!(failing["named"].contains("has no address; keeping 127.0.0.7:9001"), "{failing:?}");
        assert_eq!(status.failures(), 1);

        *answer.lock().unwrap() = Ok(vec![addr("127.0.0.1:9002")]);
        refresh_all(&tables, &resolver, &status);
        assert_eq!(table.snapshot().backends[0].addr, addr("127.0.0.7:9001"), "never onto another backend's address");
        assert!(status.failing()["named"].contains("backend 'literal' already has the address 127.0.0.1:9002"));

        *answer.lock().unwrap() = Ok(vec![addr("127.0.0.7:9001")]);
        refresh_all(&tables, &resolver, &status);
        assert!(status.failing().is_empty(), "a good lookup clears the report");
    }

    #[test]
    fn every_pool_is_refreshed_and_reported_under_its_name() {
        let pool = |port: u16| {
            let backends = [("named".to_string(), BackendConfig::new("localhost", port, 1))];
            Arc::new(BackendTable::new(AlgorithmKind::RoundRobin, &backends, Default::default()).unwrap())
        };
        let (default, api) = (pool(9001), pool(9002));
        let tables = [(DEFAULT_POOL.to_string(), Arc::clone(&default)), ("api".to_string(), Arc::clone(&api))];
        let status = DnsStatus::default();
        let moved = |_: &str, port: u16| Ok(vec![SocketAddr::from(([127, 0, 0, 9], port))]);
        refresh_all(&tables, &moved, &status);
        assert_eq!(default.snapshot().backends[0].addr, addr("127.0.0.9:9001"));
        assert_eq!(api.snapshot().backends[0].addr, addr("127.0.0.9:9002"), "a named pool's name moves too");
        assert_eq!((status.lookups(), status.changes()), (2, 2));
        let failed = |host: &str, _: u16| Err(ResolveError::NoAddress { host: host.to_string() });
        refresh_all(&tables, &failed, &status);
        let keys: Vec<String> = status.failing().into_keys().collect();
        assert_eq!(keys, ["api/named", "named"], "the same id in two pools is reported twice");
        refresh_all(&tables[..1], &failed, &status);
        assert_eq!(status.failing().into_keys().collect::<Vec<_>>(), ["named"], "a pool gone is no longer reported");
    }
}
