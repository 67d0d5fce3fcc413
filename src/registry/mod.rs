//! Several lb-sync instances that behave as one, through etcd (`--registry
//! etcd://HOST:PORT/PREFIX`): every pool's backends, their weights and their enabled / draining
//! state live under the prefix ([`intent`] has the layout: the `default` pool's keys as before
//! pools, each named pool's under `PREFIX/pools/POOL/`), so every instance routes over the same
//! membership, and ip_hash and the sticky cookie, which depend on nothing else, give the same
//! backend on every instance. Health stays each instance's own.
//!
//! How a change travels:
//! - **Start**: the prefix is read; a pool with no keys (never seeded) gets this instance's
//!   configured backends for it, in one transaction that only the first of several instances
//!   starting together wins. The tables are what etcd says before the listener opens. An etcd
//!   that cannot be reached leaves the configured backends in place, reported `disconnected`,
//!   until it can.
//! - **Following**: one watcher thread keeps a watch on the whole prefix (etcd's JSON gateway
//!   streams it, one JSON message a line) from the revision after the last one applied, and
//!   applies each change to its pool's table with [`BackendTable::apply`].
//! - **Pools the configuration does not define**: their keys are ignored, with one warning per
//!   pool (and `ignored_pools` in the status): a pool is never made from the registry, since
//!   its settings and routes come from the configuration. A reload that defines it reads its
//!   keys then ([`Registry::set_pools`]).
//! - **Writing**: a management API change ([`Change`]) to a pool is written to etcd under the
//!   pool's keys, never to the table:
//!   read, check as the table would (unknown id, duplicate id or address), then a transaction
//!   that holds only if what was read is unchanged (mod revisions); a lost race reads again and
//!   retries, so two instances writing at once both land. The API answers once the watch has
//!   brought the change back and it is applied here ([`APPLY_TIMEOUT`] at most), so a client
//!   that writes then reads sees its change.
//! - **Losing etcd**: requests go on with the last known table; the status says
//!   `disconnected` with the error; the watcher reconnects with back-off (0.1 s doubling to
//!   5 s) and reads everything again, so nothing is missed, a compaction included.
//! - **A corrupt value** (not JSON, a bad field, an address another backend has) is refused
//!   and reported by key with the reason; the backend keeps its last good state and nothing
//!   else is disturbed.

mod base64;
mod etcd;
mod intent;
mod watcher;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{BackendConfig, RegistryUrl};
use crate::upstream::BackendTable;

use etcd::Etcd;

pub use etcd::EtcdError;
pub use intent::{Intent, Key, Layout};
pub use write::{Change, RegistryError};

/// How long a management API write waits for its change to come back through the watch and be
/// applied here before it answers `202 Accepted` instead.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection as last seen.
#[derive(Debug, Default)]
struct Connection {
    connected: bool,
    last_error: Option<String>,
    /// Unix seconds of the last change between connected and disconnected.
    since: f64,
    /// Keys whose values were refused, with why.
    rejected: BTreeMap<String, String>,
    /// Pools the registry has keys for that the configuration does not define.
    ignored_pools: BTreeSet<String>,
}

/// What `/lb/health`, `/lb/stats` and `/lb/metrics` say of the registry.
#[derive(Clone, Debug, Serialize)]
pub struct RegistryStatus {
    /// `etcd://HOST:PORT/PREFIX`.
    pub url: String,
    /// `connected` or `disconnected`.
    pub status: &'static str,
    /// Unix seconds since when it is so.
    pub since: f64,
    /// Why the last attempt failed (kept after a reconnect, until the next failure).
    pub last_error: Option<String>,
    /// The etcd revision the table reflects.
    pub revision: i64,
    /// Keys whose values are refused, with why (the backend keeps its last good state).
    pub rejected: BTreeMap<String, String>,
    /// Pools the registry has keys for that the configuration does not define: their keys are
    /// ignored (a pool is never made from the registry).
    pub ignored_pools: Vec<String>,
    /// Reconnections after a loss.
    pub reconnects: u64,
    /// Writes that lost a race to another writer and were retried on a fresh read.
    pub write_conflicts: u64,
}

impl RegistryStatus {
    /// Whether the watch is up.
    pub fn connected(&self) -> bool {
        self.status == "connected"
    }
}

/// One pool as the registry keeps it: its name, the table its keys are applied to, and its
/// configured backends, written when its keys were never seeded.
#[derive(Clone)]
pub struct RegistryPool {
    /// The pool's name (`default` for the top level).
    pub name: String,
    /// Its table.
    pub table: Arc<BackendTable>,
    /// Its configured backends.
    pub seed: Vec<(String, BackendConfig)>,
}

/// An instance's link to the shared registry: the etcd client, the watcher thread, the
/// writes of the management API. Lives as long as the balancer (a reload changes only which
/// pools it keeps: [`Registry::set_pools`]).
pub struct Registry {
    url: RegistryUrl,
    layout: Layout,
    etcd: Etcd,
    /// The pools in force, `default` first.
    pools: Mutex<Vec<RegistryPool>>,
    /// Held while a read or a watch message is applied, so that a whole read made for a reload
    /// and the watcher's messages apply one at a time, in revision order.
    applying: Mutex<()>,
    /// A whole read is owed (a reload's own could not be made): the watcher makes it.
    resync: AtomicBool,
    connection: Mutex<Connection>,
    /// The revision applied to the table so far; waiters are woken as it grows.
    applied: Mutex<i64>,
    applied_grew: Condvar,
    reconnects: AtomicU64,
    conflicts: AtomicU64,
    stopping: Mutex<bool>,
    wake: Condvar,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("url", &self.url.to_string()).finish_non_exhaustive()
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Registry {
    /// Connects to the registry at `url`, seeds each pool of `pools` that was never seeded with
    /// its configured backends, makes each pool's table what the registry says, and starts
    /// following it. When etcd cannot be reached the tables are left as they are and the
    /// watcher keeps trying: the balancer starts either way (`Err` only when the thread cannot
    /// be started).
    pub fn start(url: &RegistryUrl, pools: Vec<RegistryPool>) -> io::Result<Arc<Registry>> {
        let registry = Arc::new(Registry {
            url: url.clone(),
            layout: Layout::new(&url.prefix),
            etcd: Etcd::new(&url.gateway()),
            pools: Mutex::new(pools),
            applying: Mutex::new(()),
            resync: AtomicBool::new(false),
            connection: Mutex::new(Connection { since: unix_now(), ..Connection::default() }),
            applied: Mutex::new(0),
            applied_grew: Condvar::new(),
            reconnects: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            stopping: Mutex::new(false),
            wake: Condvar::new(),
            watcher: Mutex::new(None),
        });
        let synced = match registry.sync() {
            Ok(()) => true,
            Err(e) => {
                registry.disconnected(&e);
                false
            }
        };
        let running = Arc::clone(&registry);
        let thread = std::thread::Builder::new().name("registry".into()).spawn(move || running.run(synced))?;
        *lock(&registry.watcher) = Some(thread);
        Ok(registry)
    }

    /// Where it is.
    pub fn url(&self) -> &RegistryUrl {
        &self.url
    }

    /// Connected or not, why not, what was refused.
    pub fn status(&self) -> RegistryStatus {
        let connection = lock(&self.connection);
        RegistryStatus {
            url: self.url.to_string(),
            status: if connection.connected { "connected" } else { "disconnected" },
            since: connection.since,
            last_error: connection.last_error.clone(),
            revision: self.applied(),
            rejected: connection.rejected.clone(),
            ignored_pools: connection.ignored_pools.iter().cloned().collect(),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            write_conflicts: self.conflicts.load(Ordering::Relaxed),
        }
    }

    /// The pools now kept: after a reload, `pools` (`default` first), each pool's table made
    /// what the registry says before this returns, a pool never seeded seeded first. When etcd
    /// cannot be read now the watcher reads everything once it can.
    pub fn set_pools(&self, pools: Vec<RegistryPool>) {
        let same = |a: &[RegistryPool], b: &[RegistryPool]| {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.name == b.name && Arc::ptr_eq(&a.table, &b.table))
        };
        {
            let mut kept = lock(&self.pools);
            if same(&kept, &pools) {
                return;
            }
            *kept = pools;
        }
        if let Err(e) = self.sync() {
            log::warn!("registry {}: cannot read the pools after a reload ({e}); the watcher will", self.url);
            self.resync.store(true, Ordering::Relaxed);
        }
    }

    /// The pools now kept.
    fn pools(&self) -> Vec<RegistryPool> {
        lock(&self.pools).clone()
    }

    /// Pool `name`'s table, when the pool is kept.
    fn table(&self, name: &str) -> Option<Arc<BackendTable>> {
        lock(&self.pools).iter().find(|p| p.name == name).map(|p| Arc::clone(&p.table))
    }

    /// Stops following: the watch is broken, the thread joined. The tables stay as they are.
    pub fn stop(&self) {
        *lock(&self.stopping) = true;
        self.wake.notify_all();
        self.etcd.shutdown();
        if let Some(thread) = lock(&self.watcher).take() {
            let _ = thread.join();
        }
    }

    fn is_stopping(&self) -> bool {
        *lock(&self.stopping)
    }

    /// Sleeps `pause` unless stopped meanwhile; `true` when stopping.
    fn sleep(&self, pause: Duration) -> bool {
        let end = Instant::now() + pause;
        let mut stopping = lock(&self.stopping);
        while !*stopping {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stopping = self.wake.wait_timeout(stopping, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    fn applied(&self) -> i64 {
        *lock(&self.applied)
    }

    fn set_applied(&self, revision: i64) {
        let mut applied = lock(&self.applied);
        if revision > *applied {
            *applied = revision;
            self.applied_grew.notify_all();
        }
    }

    /// Waits until the table reflects `revision`, up to `limit`.
    fn wait_applied(&self, revision: i64, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut applied = lock(&self.applied);
        while *applied < revision {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            applied = self.applied_grew.wait_timeout(applied, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    fn connected(&self) {
        let mut connection = lock(&self.connection);
        if !connection.connected {
            if connection.last_error.is_some() {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            connection.connected = true;
            connection.since = unix_now();
            log::info!("registry {}: connected, the table is at revision {}", self.url, self.applied());
        }
    }

    fn disconnected(&self, error: &EtcdError) {
        let mut connection = lock(&self.connection);
        let why = error.to_string();
        if connection.connected || connection.last_error.as_deref() != Some(why.as_str()) {
            log::warn!(
                "registry {}: disconnected ({why}); serving with the last known table, reconnecting with back-off",
                self.url
            );
        }
        if connection.connected {
            connection.since = unix_now();
        }
        connection.connected = false;
        connection.last_error = Some(why);
    }

    /// Records that `key`'s value is refused (logged once per reason).
    fn reject(&self, key: &str, why: String) {
        let mut connection = lock(&self.connection);
        if connection.rejected.get(key) != Some(&why) {
            log::warn!("registry {}: {key} refused: {why}; everything else applies", self.url);
            connection.rejected.insert(key.to_string(), why);
        }
    }

    /// `key`'s value is good again, or gone.
    fn accept(&self, key: &str) {
        if lock(&self.connection).rejected.remove(key).is_some() {
            log::info!("registry {}: {key} is accepted again", self.url);
        }
    }

    fn rejected(&self, key: &str) -> Option<String> {
        lock(&self.connection).rejected.get(key).cloned()
    }

    /// Records that the registry has keys for `pools`, which the configuration does not define
    /// (each logged once); `whole`: they are all there are (a whole read), so the others no
    /// longer are.
    fn ignore_pools(&self, pools: BTreeSet<String>, whole: bool) {
        let mut connection = lock(&self.connection);
        for pool in &pools {
            if !connection.ignored_pools.contains(pool) {
                log::warn!(
                    "registry {}: keys of pool '{pool}', which the configuration does not define, are ignored \
                     (a pool is never made from the registry: define it in the configuration to use them)",
                    self.url
                );
            }
        }
        if whole {
            connection.ignored_pools = pools;
        } else {
            connection.ignored_pools.extend(pools);
        }
    }
}
