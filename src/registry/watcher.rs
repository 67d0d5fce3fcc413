//! The watcher thread: read everything (seeding each pool never seeded), then follow the watch
//! from the next revision, applying each change to its pool's table; on a broken stream, back
//! off and read everything again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{BackendConfig, DEFAULT_POOL};
use crate::upstream::{BackendState, Put, TableError, Wanted};

use super::etcd::{Compare, EtcdError, Event, Op, Range, WatchEnd, WatchMessage};
use super::intent::{show, Intent, Key};
use super::{lock, Registry, RegistryPool};

/// The first pause after a failure; it doubles after each one.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why following the watch stopped.
enum End {
    /// Quiet for a while: watch again from where it was.
    Idle,
    /// The next revision is compacted away: read everything again.
    Compacted(i64),
    /// etcd is gone (or the stop broke the stream).
    Broken(EtcdError),
}

/// `pause` ± 20 %, so instances that lost etcd together do not all come back at the same instant.
fn jittered(pause: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    pause.mul_f64(0.8 + f64::from(nanos % 1000) / 2500.0)
}

impl Registry {
    /// The watcher's loop, until [`Registry::stop`]. `synced`: the start read everything already.
    pub(super) fn run(&self, mut synced: bool) {
        let mut backoff = MIN_BACKOFF;
        while !self.is_stopping() {
            if self.resync.swap(false, Ordering::Relaxed) {
                synced = false;
            }
            if !synced {
                if let Err(e) = self.sync() {
                    self.disconnected(&e);
                    if self.sleep(jittered(backoff)) {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                synced = true;
                backoff = MIN_BACKOFF;
            }
            match self.follow(self.applied() + 1) {
                End::Idle => {}
                End::Compacted(at) => {
                    log::warn!(
                        "registry {}: the watch fell behind a compaction (revision {at}): reading everything again",
                        self.url
                    );
                    synced = false;
                }
                End::Broken(e) => {
                    if self.is_stopping() {
                        return;
                    }
                    self.disconnected(&e);
                    synced = false;
                    if self.sleep(jittered(backoff)) {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Reads the whole prefix (seeding first each pool that was never seeded) and makes every
    /// pool's table what it says; then the registry counts as connected.
    pub(super) fn sync(&self) -> Result<(), EtcdError> {
        let _one_at_a_time = lock(&self.applying);
        let pools = self.pools();
        let (start, end) = (self.layout.all(), self.layout.all_end());
        let mut range = self.etcd.range(&start, &end)?;
        // Read again after any attempt: an instance that seeded first wrote what to apply.
        let mut attempted = false;
        for pool in &pools {
            let (backends, numbered) = (self.layout.backends(&pool.name), self.layout.numbered(&pool.name));
            if !range.kvs.iter().any(|kv| kv.key.starts_with(&backends) || kv.key == numbered) {
                self.seed(pool, range.revision)?;
                attempted = true;
            }
        }
        if attempted {
            range = self.etcd.range(&start, &end)?;
        }
        self.apply_all(&pools, &range);
        self.connected();
        Ok(())
    }

    /// Writes `pool`'s configured backends, unless another instance did first.
    fn seed(&self, pool: &RegistryPool, read_at: i64) -> Result<(), EtcdError> {
        let name = &pool.name;
        let mut ops: Vec<Op> = pool
            .seed
            .iter()
            .map(|(id, config)| {
                let config = BackendConfig { id: Some(id.clone()), ..config.clone() };
                Op::Put(self.layout.backend(name, id), Intent { config, state: BackendState::Enabled }.value())
            })
            .collect();
        ops.push(Op::Put(self.layout.numbered(name), pool.seed.len().to_string().into_bytes()));
        let unseeded = [
            Compare::ModRevision(self.layout.numbered(name), 0),
            Compare::Unchanged {
                key: self.layout.backends(name),
                range_end: self.layout.backends_end(name),
                revision: read_at,
            },
        ];
        if self.etcd.txn(&unseeded, &ops)?.succeeded {
            log::info!(
                "registry {}: {}empty: seeded with the {} configured backend(s)",
                self.url,
                in_pool(name),
                pool.seed.len()
            );
        }
        Ok(())
    }

    /// Makes each pool's table what a full read says, each in one swap: backends not listed
    /// are removed, the others put (in the order they were created); a refused value leaves
    /// its backend as it was.
    fn apply_all(&self, pools: &[RegistryPool], range: &Range) {
        let mut listed: HashMap<&str, HashSet<String>> = HashMap::new();
        let mut intents: HashMap<&str, Vec<(i64, String, Intent, String)>> = HashMap::new();
        let mut rejected = BTreeMap::new();
        let mut unknown = BTreeSet::new();
        for kv in &range.kvs {
            let key = show(&kv.key);
            let (pool, id) = match self.layout.key(&kv.key) {
                Ok(Key::Backend { pool, id }) => (pool, id),
                Ok(_) => continue,
                Err(why) => {
                    rejected.insert(key, why);
                    continue;
                }
            };
            let Some(pool) = pools.iter().find(|p| p.name == pool) else {
                unknown.insert(pool);
                continue;
            };
            listed.entry(&pool.name).or_default().insert(id.clone());
            match Intent::parse(&id, &kv.value) {
                Ok(intent) => intents.entry(&pool.name).or_default().push((kv.create_revision, id, intent, key)),
                Err(why) => {
                    rejected.insert(key, why);
                }
            }
        }
        for pool in pools {
            let listed = listed.remove(pool.name.as_str()).unwrap_or_default();
            let mut intents = intents.remove(pool.name.as_str()).unwrap_or_default();
            intents.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let mut batch: Vec<(Option<String>, Wanted)> = pool
                .table
                .snapshot()
                .backends
                .iter()
                .filter(|b| !listed.contains(&b.id))
                .map(|b| (None, Wanted::Remove(b.id.clone())))
                .collect();
            batch.extend(intents.into_iter().map(|(_, id, intent, key)| (Some(key), wanted(id, intent))));
            for (key, why) in self.apply(pool, batch) {
                rejected.insert(key, why);
            }
        }
        let previous = std::mem::take(&mut lock(&self.connection).rejected);
        for (key, why) in rejected {
            if previous.get(&key) == Some(&why) {
                lock(&self.connection).rejected.insert(key, why);
            } else {
                self.reject(&key, why);
            }
        }
        self.ignore_pools(unknown, true);
        self.set_applied(range.revision);
    }

    /// Follows the watch from `from` until it ends.
    fn follow(&self, from: i64) -> End {
        let mut stream = match self.etcd.watch(&self.layout.all(), &self.layout.all_end(), from) {
            Ok(stream) => stream,
            Err(e) => return End::Broken(e),
        };
        loop {
            match stream.next() {
                Ok(WatchMessage::Created) => {}
                Ok(WatchMessage::Events(events)) => {
                    self.apply_events(&events);
                    // A reload's whole read failed: make it now rather than at the next quiet spell.
                    if self.resync.load(Ordering::Relaxed) {
                        return End::Idle;
                    }
                }
                Ok(WatchMessage::Compacted(at)) => return End::Compacted(at),
                Ok(WatchMessage::Canceled(why)) => {
                    return End::Broken(EtcdError::NoAnswer(format!("etcd canceled the watch: {why}")))
                }
                Err(WatchEnd::Idle) => return End::Idle,
                Err(WatchEnd::Broken(e)) => return End::Broken(e),
            }
        }
    }

    /// Applies one watch message's events, each pool's in one swap. Events a whole read
    /// made meanwhile already reflects are skipped.
    fn apply_events(&self, events: &[Event]) {
        let _one_at_a_time = lock(&self.applying);
        let applied = self.applied();
        let revision = events.iter().map(|e| e.kv.mod_revision).max().unwrap_or(0);
        let pools = self.pools();
        let mut batches: BTreeMap<&str, Vec<(Option<String>, Wanted)>> = BTreeMap::new();
        let mut unknown = BTreeSet::new();
        // Only the last event of a key counts (a put then a delete in one message is a delete).
        let last = |i: usize, event: &Event| !events[i + 1..].iter().any(|later| later.kv.key == event.kv.key);
        for event in events.iter().enumerate().filter(|(i, e)| last(*i, e)).map(|(_, e)| e) {
            if event.kv.mod_revision <= applied {
                continue;
            }
            let key = show(&event.kv.key);
            let (pool, id) = match self.layout.key(&event.kv.key) {
                Err(why) if !event.deleted => {
                    self.reject(&key, why);
                    continue;
                }
                Err(_) => {
                    self.accept(&key);
                    continue;
                }
                Ok(Key::Backend { pool, id }) => (pool, id),
                Ok(_) => continue,
            };
            let Some(pool) = pools.iter().find(|p| p.name == pool) else {
                unknown.insert(pool);
                continue;
            };
            let batch = batches.entry(&pool.name).or_default();
            if event.deleted {
                self.accept(&key);
                batch.push((None, Wanted::Remove(id)));
                continue;
            }
            match Intent::parse(&id, &event.kv.value) {
                Ok(intent) => batch.push((Some(key), wanted(id, intent))),
                Err(why) => self.reject(&key, why),
            }
        }
        for (name, batch) in batches {
            let Some(pool) = pools.iter().find(|p| p.name == name) else { continue };
            for (key, why) in self.apply(pool, batch) {
                self.reject(&key, why);
            }
        }
        self.ignore_pools(unknown, false);
        self.set_applied(revision);
    }

    /// Applies a batch to `pool`'s table and logs what it did; the keys refused, with why (the
    /// others are accepted).
    fn apply(&self, pool: &RegistryPool, batch: Vec<(Option<String>, Wanted)>) -> Vec<(String, String)> {
        if batch.is_empty() {
            return Vec::new();
        }
        let named = in_pool(&pool.name);
        let (keys, batch): (Vec<Option<String>>, Vec<Wanted>) = batch.into_iter().unzip();
        let results = pool.table.apply(&batch);
        let mut refused = Vec::new();
        for ((key, wanted), result) in keys.into_iter().zip(&batch).zip(results) {
            match (wanted, result) {
                (_, Ok(Put::Unchanged)) | (Wanted::Remove(_), Err(TableError::UnknownId(_))) => {}
                (Wanted::Remove(id), Ok(_)) => {
                    log::info!("registry: {named}backend {id} removed (requests in flight finish)")
                }
                (Wanted::Put { id, config, state }, Ok(put)) => {
                    let what = match put {
                        Put::Added => "added",
                        Put::Replaced => "moved (a fresh backend)",
                        _ => "updated",
                    };
                    let (host, port, weight, state) = (&config.host, config.port, config.weight, state.as_str());
                    log::info!("registry: {named}backend {id} {what}: {host}:{port} weight {weight} {state}");
                }
                (wanted, Err(e)) => {
                    match key {
                        Some(key) => refused.push((key, e.to_string())),
                        None => log::warn!("registry: {named}{wanted:?} failed: {e}"),
                    }
                    continue;
                }
            }
            if let Some(key) = key {
                self.accept(&key);
            }
        }
        refused
    }
}

/// `pool api: ` before what a log line says of a named pool; nothing for `default`, whose
/// lines read as they did before pools.
fn in_pool(pool: &str) -> String {
    if pool == DEFAULT_POOL {
        String::new()
    } else {
        format!("pool {pool}: ")
    }
}

fn wanted(id: String, intent: Intent) -> Wanted {
    Wanted::Put { id, config: intent.config, state: intent.state }
}
