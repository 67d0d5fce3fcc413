//! The watcher thread: read everything (seeding an empty prefix), then follow the watch from the
//! next revision, applying each change to the table; on a broken stream, back off and read
//! everything again.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::BackendConfig;
use crate::upstream::{BackendState, Put, TableError, Wanted};

use super::etcd::{Compare, EtcdError, Event, Op, Range, WatchEnd, WatchMessage};
use super::intent::{show, Intent};
use super::{lock, Registry};

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

    /// Reads the whole prefix (seeding it first when it was never seeded) and makes the table
    /// what it says; then the registry counts as connected.
    pub(super) fn sync(&self) -> Result<(), EtcdError> {
        let (start, end) = (self.layout.backends(), self.layout.backends_end());
        let mut range = self.etcd.range(&start, &end)?;
        if range.kvs.is_empty() && self.etcd.get(&self.layout.numbered())?.1.is_none() {
            self.seed(range.revision)?;
            range = self.etcd.range(&start, &end)?;
        }
        self.apply_all(&range);
        self.connected();
        Ok(())
    }

    /// Writes the configured backends, unless another instance did first.
    fn seed(&self, read_at: i64) -> Result<(), EtcdError> {
        let mut ops: Vec<Op> = self
            .seed
            .iter()
            .map(|(id, config)| {
                let config = BackendConfig { id: Some(id.clone()), ..config.clone() };
                Op::Put(self.layout.backend(id), Intent { config, state: BackendState::Enabled }.value())
            })
            .collect();
        ops.push(Op::Put(self.layout.numbered(), self.seed.len().to_string().into_bytes()));
        let unseeded = [
            Compare::ModRevision(self.layout.numbered(), 0),
            Compare::Unchanged {
                key: self.layout.backends(),
                range_end: self.layout.backends_end(),
                revision: read_at,
            },
        ];
        if self.etcd.txn(&unseeded, &ops)?.succeeded {
            log::info!("registry {}: empty: seeded with the {} configured backend(s)", self.url, self.seed.len());
        }
        Ok(())
    }

    /// Makes the table what a full read says, in one swap: backends not listed are removed,
    /// the others put (in the order they were created); a refused value leaves its backend as
    /// it was.
    fn apply_all(&self, range: &Range) {
        let mut listed = HashSet::new();
        let mut intents = Vec::new();
        let mut rejected = BTreeMap::new();
        for kv in &range.kvs {
            let key = show(&kv.key);
            let parsed = self.layout.id_of(&kv.key).and_then(|id| {
                listed.insert(id.clone());
                Intent::parse(&id, &kv.value).map(|intent| (id, intent))
            });
            match parsed {
                Ok((id, intent)) => intents.push((kv.create_revision, id, intent, key)),
                Err(why) => {
                    rejected.insert(key, why);
                }
            }
        }
        intents.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut batch: Vec<(Option<String>, Wanted)> = self
            .table
            .snapshot()
            .backends
            .iter()
            .filter(|b| !listed.contains(&b.id))
            .map(|b| (None, Wanted::Remove(b.id.clone())))
            .collect();
        batch.extend(intents.into_iter().map(|(_, id, intent, key)| (Some(key), wanted(id, intent))));
        for (key, why) in self.apply(batch) {
            rejected.insert(key, why);
        }
        let previous = std::mem::take(&mut lock(&self.connection).rejected);
        for (key, why) in rejected {
            if previous.get(&key) == Some(&why) {
                lock(&self.connection).rejected.insert(key, why);
            } else {
                self.reject(&key, why);
            }
        }
        self.set_applied(range.revision);
    }

    /// Follows the watch from `from` until it ends.
    fn follow(&self, from: i64) -> End {
        let mut stream = match self.etcd.watch(&self.layout.backends(), &self.layout.backends_end(), from) {
            Ok(stream) => stream,
            Err(e) => return End::Broken(e),
        };
        loop {
            match stream.next() {
                Ok(WatchMessage::Created) => {}
                Ok(WatchMessage::Events(events)) => self.apply_events(&events),
                Ok(WatchMessage::Compacted(at)) => return End::Compacted(at),
                Ok(WatchMessage::Canceled(why)) => {
                    return End::Broken(EtcdError::NoAnswer(format!("etcd canceled the watch: {why}")))
                }
                Err(WatchEnd::Idle) => return End::Idle,
                Err(WatchEnd::Broken(e)) => return End::Broken(e),
            }
        }
    }

    /// Applies one watch message's events in one swap.
    fn apply_events(&self, events: &[Event]) {
        let revision = events.iter().map(|e| e.kv.mod_revision).max().unwrap_or(0);
        let mut batch = Vec::new();
        // Only the last event of a key counts (a put then a delete in one message is a delete).
        let last = |i: usize, event: &Event| !events[i + 1..].iter().any(|later| later.kv.key == event.kv.key);
        for event in events.iter().enumerate().filter(|(i, e)| last(*i, e)).map(|(_, e)| e) {
            let key = show(&event.kv.key);
            match self.layout.id_of(&event.kv.key) {
                Err(why) if !event.deleted => self.reject(&key, why),
                Err(_) => self.accept(&key),
                Ok(id) if event.deleted => {
                    self.accept(&key);
                    batch.push((None, Wanted::Remove(id)));
                }
                Ok(id) => match Intent::parse(&id, &event.kv.value) {
                    Ok(intent) => batch.push((Some(key), wanted(id, intent))),
                    Err(why) => self.reject(&key, why),
                },
            }
        }
        for (key, why) in self.apply(batch) {
            self.reject(&key, why);
        }
        self.set_applied(revision);
    }

    /// Applies a batch to the table and logs what it did; the keys refused, with why (the
    /// others are accepted).
    fn apply(&self, batch: Vec<(Option<String>, Wanted)>) -> Vec<(String, String)> {
        let (keys, batch): (Vec<Option<String>>, Vec<Wanted>) = batch.into_iter().unzip();
        let results = self.table.apply(&batch);
        let mut refused = Vec::new();
        for ((key, wanted), result) in keys.into_iter().zip(&batch).zip(results) {
            match (wanted, result) {
                (_, Ok(Put::Unchanged)) | (Wanted::Remove(_), Err(TableError::UnknownId(_))) => {}
                (Wanted::Remove(id), Ok(_)) => log::info!("registry: backend {id} removed (requests in flight finish)"),
                (Wanted::Put { id, config, state }, Ok(put)) => {
                    let what = match put {
                        Put::Added => "added",
                        Put::Replaced => "moved (a fresh backend)",
                        _ => "updated",
                    };
                    let (host, port, weight, state) = (&config.host, config.port, config.weight, state.as_str());
                    log::info!("registry: backend {id} {what}: {host}:{port} weight {weight} {state}");
                }
                (wanted, Err(e)) => {
                    match key {
                        Some(key) => refused.push((key, e.to_string())),
                        None => log::warn!("registry: {wanted:?} failed: {e}"),
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

fn wanted(id: String, intent: Intent) -> Wanted {
    Wanted::Put { id, config: intent.config, state: intent.state }
}
