//! Backend host names re-resolved periodically, off the request path (HAProxy's `resolvers`,
//! nginx's `server ... resolve`): one thread looks up every backend whose host is a name, each
//! `dns_refresh_interval`. An address that changed is applied to the table like any change of
//! it ([`BackendTable::readdress`]: a fresh backend at the new address, weight and state kept);
//! a failed lookup keeps the last address and is reported (a log line when a host starts
//! failing, one when it recovers, and [`DnsStatus`] for `/lb/stats` and `/lb/metrics`).
//!
//! A name that resolves to several addresses keeps its backend where it is as long as its
//! address is still among them, so a resolver that rotates its answers moves nothing.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

use super::backend::ResolveError;
use super::table::BackendTable;

/// How a host name becomes addresses: the system resolver by default ([`system_lookup`]); a
/// test, or an embedder with its own service discovery, may plug in another
/// ([`DnsRefresher::set_resolver`]).
pub type Resolver = dyn Fn(&str, u16) -> Lookup + Send + Sync;

/// What a lookup gives: every address of a host, or why none.
pub type Lookup = Result<Vec<SocketAddr>, ResolveError>;

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
    /// Backend id → why its last lookup failed (and which address it keeps).
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

    /// The backends whose last lookup failed, with why.
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
    /// Starts re-resolving the names of `table`'s backends every `interval` (zero: never, until
    /// [`set_interval`](Self::set_interval) says otherwise), with the system resolver.
    pub fn start(table: Arc<BackendTable>, interval: Duration, status: Arc<DnsStatus>) -> io::Result<DnsRefresher> {
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
                    Err(RecvTimeoutError::Timeout) => refresh(&table, &*resolver, &status),
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

/// One round: every backend whose host is a name, looked up once.
pub(crate) fn refresh(table: &BackendTable, resolver: &dyn Fn(&str, u16) -> Lookup, status: &DnsStatus) {
    let snapshot = table.snapshot();
    status.failing_lock().retain(|id, _| snapshot.backends.iter().any(|b| &b.id == id));
    for backend in &snapshot.backends {
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
                            "backend {}: {} now resolves to {to} (was {}): a fresh backend there, weight and state kept",
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
        let mut failing = status.failing_lock();
        match failure {
            Some(why) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                // Once per new reason, not once per round.
                if failing.get(&backend.id) != Some(&why) {
                    log::warn!("backend {}: DNS refresh failed: {why}", backend.id);
                    failing.insert(backend.id.clone(), why);
                }
            }
            None => {
                if failing.remove(&backend.id).is_some() {
                    log::info!("backend {}: {} resolves again", backend.id, backend.host);
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
        let table = BackendTable::new(
            AlgorithmKind::RoundRobin,
            &[
                ("named".into(), BackendConfig::new("localhost", 9001, 3)),
                ("literal".into(), BackendConfig::new("127.0.0.1", 9002, 1)),
            ],
            Default::default(),
        )
        .unwrap();
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
        refresh(&table, &resolver, &status);
        let moved = table.snapshot().backends[0].clone();
        assert_eq!((moved.id.as_str(), moved.addr), ("named", addr("127.0.0.7:9001")));
        assert_eq!((moved.weight(), BackendState::of(&moved)), (3, BackendState::Disabled));
        assert_eq!(*asked.lock().unwrap(), ["localhost:9001"], "an address literal is not looked up");
        assert_eq!((status.lookups(), status.changes(), status.failures()), (1, 1, 0));

        *answer.lock().unwrap() = Err(());
        refresh(&table, &resolver, &status);
        assert_eq!(table.snapshot().backends[0].addr, addr("127.0.0.7:9001"), "the last address is kept");
        let failing = status.failing();
        assert!(failing["named"].contains("has no address; keeping 127.0.0.7:9001"), "{failing:?}");
        assert_eq!(status.failures(), 1);

        *answer.lock().unwrap() = Ok(vec![addr("127.0.0.1:9002")]);
        refresh(&table, &resolver, &status);
        assert_eq!(table.snapshot().backends[0].addr, addr("127.0.0.7:9001"), "never onto another backend's address");
        assert!(status.failing()["named"].contains("backend 'literal' already has the address 127.0.0.1:9002"));

        *answer.lock().unwrap() = Ok(vec![addr("127.0.0.7:9001")]);
        refresh(&table, &resolver, &status);
        assert!(status.failing().is_empty(), "a good lookup clears the report");
    }
}
