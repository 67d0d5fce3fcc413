//! The last 15 minutes, one second at a time, for `GET /lb/history` and the dashboard's
//! charts: requests, 5xx answers, failed tries and p50/p99 latency, for the whole balancer,
//! for each pool and for each backend of each pool.
//!
//! The data path writes nothing here. Requests already count themselves in atomics
//! ([`Stats`], each [`Backend`]'s counters, the latency [`Histogram`]s, a pool's own); once a
//! second the [`Sampler`] thread reads those totals and [`History::sample`] stores the
//! difference from the previous reading as that second's [`Second`]. Percentiles of a second
//! come from the difference of two histogram snapshots, so they are those of that second's
//! requests alone.
//!
//! Memory is fixed per series: [`WINDOW_SECONDS`] slots of [`SLOT_BYTES`] bytes, plus the
//! previous reading (a histogram's 1216 counters), about [`SERIES_BYTES`] in all (31 KiB).
//! There is one series for the whole, one per pool and one per backend of each pool; a backend
//! removed from its table (or a pool removed by a reload) keeps its series until its last
//! second leaves the window (so the chart still shows what it did), and at most
//! [`MAX_RETIRED_BACKENDS`] backends' and [`MAX_RETIRED_POOLS`] pools' such series are kept (the
//! ones removed longest ago go first), so churn cannot grow it without bound: at most
//! `SERIES_BYTES × (1 + pools + backends + MAX_RETIRED_POOLS + MAX_RETIRED_BACKENDS)`.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use lb_sync::metrics::Histogram;
//! use lb_sync::ops::history::{History, PoolSource};
//! use lb_sync::stats::Stats;
//!
//! let (history, stats, latency) = (History::new(), Stats::default(), Histogram::new());
//! let (api_stats, api_latency) = (Arc::new(Stats::default()), Arc::new(Histogram::new()));
//! let api = PoolSource { name: "api", stats: &api_stats, latency: &api_latency, backends: &[] };
//! history.sample(1_000, &stats, &latency, &[api]); // the first reading: the baseline
//! for s in [&stats, &*api_stats] {
//!     s.record(200);
//!     s.record(503);
//! }
//! latency.record(Duration::from_millis(4));
//! latency.record(Duration::from_millis(8));
//! history.sample(1_001, &stats, &latency, &[api]); // second 1000 is complete
//! let window = history.window(900);
//! assert_eq!((window.start, window.total.len()), (1_000, 1));
//! let second = window.total[0].unwrap();
//! assert_eq!((second.requests, second.status_5xx), (2, 1));
//! assert!(second.p99().unwrap() > Duration::from_millis(7));
//! assert_eq!((window.pools[0].name.as_str(), window.pools[0].seconds[0].unwrap().requests), ("api", 2));
//! ```

mod ring;
mod sampler;

pub use ring::SecondRing;
pub use sampler::Sampler;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::DEFAULT_POOL;
use crate::metrics::histogram::BUCKETS;
use crate::metrics::{Histogram, HistogramSnapshot};
use crate::stats::Stats;
use crate::upstream::Backend;

/// Seconds kept: 15 minutes.
pub const WINDOW_SECONDS: usize = 900;

/// Series of backends no longer in their table kept at most, over every pool (each until its
/// last second leaves the window).
pub const MAX_RETIRED_BACKENDS: usize = 64;

/// Series of pools no longer in the config kept at most (each until its last second leaves the
/// window).
pub const MAX_RETIRED_POOLS: usize = 16;

/// Bytes of one second of one series.
pub const SLOT_BYTES: usize = std::mem::size_of::<Option<Second>>();

/// Bytes of one series: its slots and its previous reading (rounded up for the small rest).
pub const SERIES_BYTES: usize = WINDOW_SECONDS * SLOT_BYTES + BUCKETS * 8 + 256;

/// `p50_us`/`p99_us` of a second without answers.
const NO_LATENCY: u32 = u32::MAX;

/// One second of one series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Second {
    /// The whole: answers given on the data port (as `total_requests` counts them). A pool:
    /// answers to the requests sent to it. A backend: tries sent to it.
    pub requests: u32,
    /// Of those, answered with a 5xx (the whole and a pool: ours too, 502/503/504).
    pub status_5xx: u32,
    /// Tries that got no answer (refused, reset, timed out...): per backend, per pool, and in
    /// all.
    pub failures: u32,
    p50_us: u32,
    p99_us: u32,
}

impl Second {
    fn micros(d: Option<Duration>) -> u32 {
        d.map_or(NO_LATENCY, |d| u32::try_from(d.as_micros()).unwrap_or(NO_LATENCY - 1).min(NO_LATENCY - 1))
    }

    fn duration(micros: u32) -> Option<Duration> {
        (micros != NO_LATENCY).then(|| Duration::from_micros(u64::from(micros)))
    }

    /// What happened between two readings.
    fn between(earlier: &Reading, now: &Reading) -> Second {
        let latency = now.latency.since(&earlier.latency);
        Second {
            requests: count_between(earlier.requests, now.requests),
            status_5xx: count_between(earlier.status_5xx, now.status_5xx),
            failures: count_between(earlier.failures, now.failures),
            p50_us: Second::micros(latency.percentile(0.5)),
            p99_us: Second::micros(latency.percentile(0.99)),
        }
    }

    /// The median latency of the second's answers (to the response head), to the
    /// microsecond; `None` without answers.
    pub fn p50(&self) -> Option<Duration> {
        Second::duration(self.p50_us)
    }

    /// The 99th percentile, as [`p50`](Self::p50).
    pub fn p99(&self) -> Option<Duration> {
        Second::duration(self.p99_us)
    }
}

/// The running totals of one series at one moment.
#[derive(Clone, Debug, Default)]
struct Reading {
    requests: u64,
    status_5xx: u64,
    failures: u64,
    latency: HistogramSnapshot,
}

impl Reading {
    /// The whole balancer's, or a pool's: its answers, failed tries and latency.
    fn of_balancer(stats: &Stats, latency: &Histogram) -> Reading {
        let s = stats.snapshot();
        Reading {
            requests: s.total,
            status_5xx: s.failed,
            failures: stats.tries().failures.iter().map(|(_, n)| n).sum(),
            latency: latency.snapshot(),
        }
    }

    fn of_backend(backend: &Backend) -> Reading {
        let (requests, failures) = backend.counts();
        Reading { requests, status_5xx: backend.answers()[4], failures, latency: backend.latency().snapshot() }
    }

    /// This reading plus what `other` counted since `other_earlier`: a series that moved to
    /// fresh counters (a backend or pool of the same name) adds the old ones' last stretch.
    fn plus_since(&self, other: &Reading, other_earlier: &Reading) -> Reading {
        let mut latency = self.latency.clone();
        latency.merge(&other.latency.since(&other_earlier.latency));
        Reading {
            requests: self.requests + other.requests.saturating_sub(other_earlier.requests),
            status_5xx: self.status_5xx + other.status_5xx.saturating_sub(other_earlier.status_5xx),
            failures: self.failures + other.failures.saturating_sub(other_earlier.failures),
            latency,
        }
    }
}

/// One series: its seconds and the reading the next second is counted from.
#[derive(Debug)]
struct Series {
    seconds: SecondRing<Second>,
    last: Reading,
}

impl Series {
    fn new(last: Reading) -> Series {
        Series { seconds: SecondRing::new(WINDOW_SECONDS), last }
    }

    /// Stores what happened between the last reading and `now` as `second`.
    fn record(&mut self, second: u64, now: Reading) {
        self.seconds.put(second, Second::between(&self.last, &now));
        self.last = now;
    }

    /// Stores `now`, a reading of fresh counters, as `second`: counted from 0, plus what the
    /// counters it replaces (`old`, read now) did since the last reading.
    fn restart(&mut self, second: u64, now: Reading, old: Option<Reading>) {
        let this_second = match old {
            Some(old) => now.plus_since(&old, &self.last),
            None => now.clone(),
        };
        self.seconds.put(second, Second::between(&Reading::default(), &this_second));
        self.last = now;
    }

    /// Stores what `backend` did since the last reading as `second`. Its latency histogram
    /// (1,216 counters) is copied only when it answered something since: a second without
    /// answers has no latency to tell, and copying every backend's each second made the
    /// history of 20,000 idle backends cost a tenth of a core. Every answer adds to the
    /// histogram after its count, so an unchanged count means the snapshot held is current
    /// (an answer caught between the two is in the next second's difference, not lost).
    fn record_backend(&mut self, second: u64, backend: &Backend) {
        let answers = backend.answers();
        if answers.iter().sum::<u64>() != self.last.latency.count() {
            self.record(second, Reading::of_backend(backend));
            return;
        }
        let (requests, failures) = backend.counts();
        let last = &mut self.last;
        self.seconds.put(
            second,
            Second {
                requests: count_between(last.requests, requests),
                status_5xx: count_between(last.status_5xx, answers[4]),
                failures: count_between(last.failures, failures),
                p50_us: NO_LATENCY,
                p99_us: NO_LATENCY,
            },
        );
        (last.requests, last.status_5xx, last.failures) = (requests, answers[4], failures);
    }

    /// Whether it has a value in `stretch`.
    fn has_value_in(&self, stretch: &Range<u64>) -> bool {
        stretch.clone().any(|s| self.seconds.get(s).is_some())
    }
}

/// A counter's growth from `then` to `now`, saturated to the slot's width.
fn count_between(then: u64, now: u64) -> u32 {
    u32::try_from(now.saturating_sub(then)).unwrap_or(u32::MAX)
}

/// Where a series' source stands: in force (and where), or removed (and when).
#[derive(Debug, Default)]
struct Presence {
    /// Its index at the last sample (in the table, or among the pools); `None` once removed.
    position: Option<usize>,
    /// The last second it was in force.
    seen: u64,
    /// The second it was removed (retired series are dropped oldest first).
    left_at: u64,
    /// The newest second with a value: once out of the window, a retired series goes.
    last_value: u64,
}

impl Presence {
    /// Seen in force at `position` in `second`.
    fn seen(&mut self, second: u64, position: usize) {
        (self.position, self.seen, self.last_value) = (Some(position), second, second);
    }

    /// Not seen in `second`: removed then, if it was in force until now.
    fn missed(&mut self, second: u64) {
        if self.position.take().is_some() {
            self.left_at = second;
        }
    }

    /// Whether it is kept at `second`: in force, or its last value still in the window.
    fn kept(&self, second: u64) -> bool {
        self.position.is_some() || self.last_value + WINDOW_SECONDS as u64 > second
    }
}

/// A backend's series and whom it reads.
#[derive(Debug)]
struct BackendSeries {
    series: Series,
    /// The backend it reads. Once removed from the table, it is held until a sample after its
    /// last request in flight finished (so that request's answer is counted), then let go.
    source: Option<Arc<Backend>>,
    /// The removed backend had nothing in flight at the last sample: the next one is its last.
    idle: bool,
    presence: Presence,
}

impl BackendSeries {
    fn new(last: Reading) -> BackendSeries {
        BackendSeries { series: Series::new(last), source: None, idle: false, presence: Presence::default() }
    }
}

/// What the history reads of one pool each second.
#[derive(Clone, Copy)]
pub struct PoolSource<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its answers and tries (a pool kept by a reload keeps them: the same `Arc`).
    pub stats: &'a Arc<Stats>,
    /// Its requests' time to the response head.
    pub latency: &'a Arc<Histogram>,
    /// Its table's backends, in order.
    pub backends: &'a [Arc<Backend>],
}

/// A pool's counters, held to be read.
type PoolCounters = (Arc<Stats>, Arc<Histogram>);

/// A pool's series: its own total, and each of its backends'.
#[derive(Debug)]
struct PoolSeries {
    total: Series,
    /// The counters it reads. Once the pool is removed, held until a sample after its last
    /// backend's series let go of its backend (its requests in flight are then counted), then
    /// let go.
    source: Option<PoolCounters>,
    /// The removed pool's backends were all let go at the last sample: the next one is its last.
    idle: bool,
    presence: Presence,
    backends: BTreeMap<String, BackendSeries>,
}

impl PoolSeries {
    fn new(last: Reading) -> PoolSeries {
        PoolSeries {
            total: Series::new(last),
            source: None,
            idle: false,
            presence: Presence::default(),
            backends: BTreeMap::new(),
        }
    }

    /// The baseline of `pool`: what it counted before the history started is not history.
    fn baseline(position: usize, pool: &PoolSource<'_>) -> PoolSeries {
        let mut entry = PoolSeries::new(Reading::of_balancer(pool.stats, pool.latency));
        entry.source = Some((Arc::clone(pool.stats), Arc::clone(pool.latency)));
        entry.presence.position = Some(position);
        for (position, backend) in pool.backends.iter().enumerate() {
            let mut series = BackendSeries::new(Reading::of_backend(backend));
            series.source = Some(Arc::clone(backend));
            series.presence.position = Some(position);
            entry.backends.insert(backend.id.clone(), series);
        }
        entry
    }

    /// Stores `second` of a pool in force at `position`.
    fn sample(&mut self, second: u64, position: usize, pool: &PoolSource<'_>) {
        let now = Reading::of_balancer(pool.stats, pool.latency);
        match &self.source {
            Some((stats, _)) if Arc::ptr_eq(stats, pool.stats) => self.total.record(second, now),
            // Fresh counters under this name (a pool added, or removed and added again).
            _ => {
                let old = self.source.take().map(|(stats, latency)| Reading::of_balancer(&stats, &latency));
                self.total.restart(second, now, old);
                self.source = Some((Arc::clone(pool.stats), Arc::clone(pool.latency)));
            }
        }
        self.idle = false;
        self.presence.seen(second, position);
        self.sample_backends(second, pool.backends);
    }

    /// Stores `second` of a pool no longer in force: read while its requests in flight may
    /// still be answered.
    fn sample_removed(&mut self, second: u64) {
        self.presence.missed(second);
        self.sample_backends(second, &[]);
        if let Some((stats, latency)) = &self.source {
            self.total.record(second, Reading::of_balancer(stats, latency));
            self.presence.last_value = second;
            let idle = self.backends.values().all(|b| b.source.is_none());
            if self.idle {
                self.source = None;
            }
            self.idle = idle;
        }
    }

    /// Stores `second` of each backend: those of `table` (in force), and those that left it.
    fn sample_backends(&mut self, second: u64, table: &[Arc<Backend>]) {
        for (position, backend) in table.iter().enumerate() {
            // Not seen before: a backend made since the last sample, its counters from 0.
            // Looked up before an id is cloned for a new entry: one allocation per new backend,
            // not one per backend each second.
            if !self.backends.contains_key(&backend.id) {
                self.backends.insert(backend.id.clone(), BackendSeries::new(Reading::default()));
            }
            let Some(entry) = self.backends.get_mut(&backend.id) else { continue };
            if entry.source.as_ref().is_some_and(|s| Arc::ptr_eq(s, backend)) {
                entry.series.record_backend(second, backend);
            } else {
                // A fresh backend under this id (re-added, or moved by a DNS change): counted
                // from 0, plus what the one it replaces did since the last reading.
                let old = entry.source.take().map(|old| Reading::of_backend(&old));
                entry.series.restart(second, Reading::of_backend(backend), old);
                entry.source = Some(Arc::clone(backend));
                entry.idle = false;
            }
            entry.presence.seen(second, position);
        }
        for entry in self.backends.values_mut().filter(|e| e.presence.seen != second) {
            entry.presence.missed(second);
            // Requests still in flight to a removed backend finish and are counted: it is read
            // until a sample after the one that found nothing in flight.
            if let Some(backend) = &entry.source {
                let idle = backend.in_flight() == 0;
                entry.series.record_backend(second, backend);
                entry.presence.last_value = second;
                if entry.idle {
                    entry.source = None;
                }
                entry.idle = idle;
            }
        }
        // Removed backends go once their last second left the window.
        self.backends.retain(|_, e| e.presence.kept(second));
    }

    /// Backends of the pool with a value in `stretch` or in the table, read from `start`: those
    /// in the table, in its order, then those removed, by id.
    fn backend_windows(&self, stretch: &Range<u64>, start: u64, end: u64) -> Vec<BackendWindow> {
        let mut backends: Vec<(Option<usize>, BackendWindow)> = self
            .backends
            .iter()
            .filter(|(_, e)| e.presence.position.is_some() || e.series.has_value_in(stretch))
            .map(|(id, e)| {
                let window = BackendWindow {
                    id: id.clone(),
                    in_table: e.presence.position.is_some(),
                    seconds: read(&e.series.seconds, start, end),
                };
                (e.presence.position, window)
            })
            .collect();
        // A BTreeMap gives the removed ones by id; a stable sort keeps that.
        backends.sort_by_key(|(position, _)| position.unwrap_or(usize::MAX));
        backends.into_iter().map(|(_, b)| b).collect()
    }
}

/// The seconds `start..end` of `ring`.
fn read(ring: &SecondRing<Second>, start: u64, end: u64) -> Vec<Option<Second>> {
    (start..end).map(|s| ring.get(s)).collect()
}

#[derive(Debug, Default)]
struct Inner {
    total: Option<Series>,
    pools: BTreeMap<String, PoolSeries>,
    /// The whole second in which the last reading was taken: the next sample counts the
    /// seconds from it on.
    boundary: Option<u64>,
    /// The first second counted.
    first: u64,
}

impl Inner {
    /// The seconds asked for (the last `seconds`, from `since` on) as `(stretch, start, end)`:
    /// the whole stretch a window covers, the first second read, and the end (excluded).
    fn stretch(&self, seconds: usize, since: Option<u64>) -> Option<(Range<u64>, u64, u64)> {
        let boundary = self.boundary?;
        let count = (seconds.min(WINDOW_SECONDS) as u64).min(boundary - self.first);
        let stretch = boundary - count..boundary;
        let start = since.map_or(stretch.start, |t| t.saturating_add(1).clamp(stretch.start, boundary));
        Some((stretch, start, boundary))
    }

    /// Drops the series of retired pools and backends beyond their caps, the ones removed
    /// longest ago first.
    fn cap_retired(&mut self) {
        let retired_pools: Vec<(u64, String)> = self
            .pools
            .iter()
            .filter(|(_, p)| p.presence.position.is_none())
            .map(|(name, p)| (p.presence.left_at, name.clone()))
            .collect();
        if retired_pools.len() > MAX_RETIRED_POOLS {
            let mut by_age = retired_pools;
            by_age.sort();
            let excess = by_age.len() - MAX_RETIRED_POOLS;
            for (_, name) in by_age.into_iter().take(excess) {
                self.pools.remove(&name);
            }
        }
        let retired = |p: &PoolSeries| p.backends.values().filter(|b| b.presence.position.is_none()).count();
        let count: usize = self.pools.values().map(retired).sum();
        if count > MAX_RETIRED_BACKENDS {
            let mut by_age: Vec<(u64, String, String)> = self
                .pools
                .iter()
                .flat_map(|(pool, p)| {
                    p.backends
                        .iter()
                        .filter(|(_, b)| b.presence.position.is_none())
                        .map(move |(id, b)| (b.presence.left_at, pool.clone(), id.clone()))
                })
                .collect();
            by_age.sort();
            for (_, pool, id) in by_age.into_iter().take(count - MAX_RETIRED_BACKENDS) {
                if let Some(p) = self.pools.get_mut(&pool) {
                    p.backends.remove(&id);
                }
            }
        }
    }
}

/// The last [`WINDOW_SECONDS`] seconds of the balancer, of each pool and of each backend,
/// filled by [`sample`](Self::sample) once a second and read by [`window`](Self::window) and
/// [`pool_window_since`](Self::pool_window_since).
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

/// A stretch of seconds read from the history: `total[i]` (and each backend's or pool's
/// `seconds[i]`) is second `start + i` (unix time); `None` where nothing was sampled that
/// second.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The first second.
    pub start: u64,
    /// The whole balancer ([`History::window`]), or one pool ([`History::pool_window_since`]).
    pub total: Vec<Option<Second>>,
    /// Every backend with a value in the stretch, of the `default` pool (or of the pool asked
    /// for): those in the table, in its order, then those removed, by id.
    pub backends: Vec<BackendWindow>,
    /// Each pool's own total, with [`History::window`] (none in a pool's window): the pools in
    /// force, in the order given to [`History::sample`], then those removed with a value in the
    /// stretch, by name.
    pub pools: Vec<PoolWindow>,
}

/// One backend's seconds in a [`Window`].
#[derive(Clone, Debug, PartialEq)]
pub struct BackendWindow {
    /// Its id.
    pub id: String,
    /// Whether it is in the table now.
    pub in_table: bool,
    /// Its seconds, aligned with [`Window::total`].
    pub seconds: Vec<Option<Second>>,
}

/// One pool's total seconds in a [`Window`].
#[derive(Clone, Debug, PartialEq)]
pub struct PoolWindow {
    /// Its name.
    pub name: String,
    /// Whether it is in the config in force.
    pub in_config: bool,
    /// Its seconds, aligned with [`Window::total`].
    pub seconds: Vec<Option<Second>>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the totals now, just after the whole second `boundary` (unix time) began, and
    /// stores what happened since the previous reading as second `boundary - 1`: the whole's
    /// (`stats`, `latency`), and each pool's of `pools` with its backends. The first call only
    /// takes the baseline. A call whose boundary is not after the previous one's (the clock
    /// stepped back) stores nothing: its counts go to the next second stored. When seconds
    /// were skipped (the sampler was held up), the counts since land in the last of them and
    /// the others stay empty, so the seconds always add up to the totals.
    pub fn sample(&self, boundary: u64, stats: &Stats, latency: &Histogram, pools: &[PoolSource<'_>]) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let now = Reading::of_balancer(stats, latency);
        let Some(previous) = inner.boundary else {
            // The baseline: what was counted before the history started is not history.
            inner.total = Some(Series::new(now));
            for (position, pool) in pools.iter().enumerate() {
                inner.pools.insert(pool.name.to_string(), PoolSeries::baseline(position, pool));
            }
            inner.boundary = Some(boundary);
            inner.first = boundary;
            return;
        };
        if boundary <= previous {
            return;
        }
        inner.boundary = Some(boundary);
        let second = boundary - 1;
        if let Some(total) = &mut inner.total {
            total.record(second, now);
        }
        for (position, pool) in pools.iter().enumerate() {
            if !inner.pools.contains_key(pool.name) {
                inner.pools.insert(pool.name.to_string(), PoolSeries::new(Reading::default()));
            }
            if let Some(entry) = inner.pools.get_mut(pool.name) {
                entry.sample(second, position, pool);
            }
        }
        for entry in inner.pools.values_mut().filter(|e| e.presence.seen != second) {
            entry.sample_removed(second);
        }
        // Removed pools go once their last second, and their backends', left the window.
        inner.pools.retain(|_, p| p.presence.kept(second) || !p.backends.is_empty());
        inner.cap_retired();
    }

    /// The last `seconds` complete seconds (at most [`WINDOW_SECONDS`], and none from before
    /// the first sample).
    pub fn window(&self, seconds: usize) -> Window {
        self.window_since(seconds, None)
    }

    /// As [`window`](Self::window), but with `since`, only the seconds after it: a client that
    /// holds the rest reads only what is new. The backends and pools are still those of the
    /// whole stretch (a removed one with no value in the new seconds is listed, its columns all
    /// empty), so a client can drop the ones not listed and be left with what a whole window
    /// would show.
    ///
    /// ```
    /// use lb_sync::metrics::Histogram;
    /// use lb_sync::ops::history::History;
    /// use lb_sync::stats::Stats;
    ///
    /// let (history, stats, latency) = (History::new(), Stats::default(), Histogram::new());
    /// for boundary in 1_000..=1_005 {
    ///     history.sample(boundary, &stats, &latency, &[]); // seconds 1000-1004 complete
    /// }
    /// let newer = history.window_since(900, Some(1_002));
    /// assert_eq!((newer.start, newer.total.len()), (1_003, 2));
    /// assert_eq!(history.window_since(900, Some(1_004)).total.len(), 0);
    /// assert_eq!(history.window_since(900, Some(0)), history.window(900));
    /// ```
    pub fn window_since(&self, seconds: usize, since: Option<u64>) -> Window {
        let inner = self.lock();
        let Some((stretch, start, end)) = inner.stretch(seconds, since) else {
            return Window { start: 0, total: Vec::new(), backends: Vec::new(), pools: Vec::new() };
        };
        let total =
            inner.total.as_ref().map_or_else(|| vec![None; (end - start) as usize], |t| read(&t.seconds, start, end));
        let backends = inner.pools.get(DEFAULT_POOL).map_or_else(Vec::new, |p| p.backend_windows(&stretch, start, end));
        let mut pools: Vec<(Option<usize>, PoolWindow)> = inner
            .pools
            .iter()
            .filter(|(_, p)| p.presence.position.is_some() || p.total.has_value_in(&stretch))
            .map(|(name, p)| {
                let window = PoolWindow {
                    name: name.clone(),
                    in_config: p.presence.position.is_some(),
                    seconds: read(&p.total.seconds, start, end),
                };
                (p.presence.position, window)
            })
            .collect();
        pools.sort_by_key(|(position, _)| position.unwrap_or(usize::MAX));
        Window { start, total, backends, pools: pools.into_iter().map(|(_, p)| p).collect() }
    }

    /// The window of one pool, as [`window_since`](Self::window_since): `total` is the
    /// pool's, `backends` its backends', `pools` empty. `None` when the history holds no
    /// series of that pool (none in force at a sample, and none removed still in the window).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lb_sync::metrics::Histogram;
    /// use lb_sync::ops::history::{History, PoolSource};
    /// use lb_sync::stats::Stats;
    ///
    /// let (history, stats, latency) = (History::new(), Stats::default(), Histogram::new());
    /// let (api_stats, api_latency) = (Arc::new(Stats::default()), Arc::new(Histogram::new()));
    /// let api = PoolSource { name: "api", stats: &api_stats, latency: &api_latency, backends: &[] };
    /// history.sample(1_000, &stats, &latency, &[api]);
    /// api_stats.record(200);
    /// history.sample(1_001, &stats, &latency, &[api]);
    /// let window = history.pool_window_since("api", 900, None).unwrap();
    /// assert_eq!(window.total[0].unwrap().requests, 1);
    /// assert!(history.pool_window_since("web", 900, None).is_none());
    /// ```
    pub fn pool_window_since(&self, pool: &str, seconds: usize, since: Option<u64>) -> Option<Window> {
        let inner = self.lock();
        let entry = inner.pools.get(pool)?;
        let (stretch, start, end) = inner.stretch(seconds, since)?;
        Some(Window {
            start,
            total: read(&entry.total.seconds, start, end),
            backends: entry.backend_windows(&stretch, start, end),
            pools: Vec::new(),
        })
    }

    /// Series kept now (the whole, plus one per pool and one per backend, removed ones
    /// included).
    pub fn series(&self) -> usize {
        let inner = self.lock();
        usize::from(inner.total.is_some()) + inner.pools.values().map(|p| 1 + p.backends.len()).sum::<usize>()
    }

    /// The memory the history holds now: [`SERIES_BYTES`] per series.
    pub fn memory_bytes(&self) -> usize {
        self.series() * SERIES_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;
    use crate::upstream::BackendPolicy;

    fn backend(id: &str, port: u16) -> Arc<Backend> {
        let config = BackendConfig::new("127.0.0.1", port, 1);
        Arc::new(Backend::new(id.into(), &config, &BackendPolicy::default(), Default::default()).unwrap())
    }

    /// `n` answered tries of `status` taking `ms` each, counted as the proxy counts them.
    fn answer(stats: &Stats, latency: &Histogram, backend: &Backend, n: u32, status: u16, ms: u64) {
        for _ in 0..n {
            backend.record_request();
            backend.record_answer(status, Duration::from_millis(ms));
            stats.record(status);
            latency.record(Duration::from_millis(ms));
        }
    }

    /// A pool's counters, as [`crate::pools::Pool`] holds them.
    struct PoolCounts {
        stats: Arc<Stats>,
        latency: Arc<Histogram>,
    }

    impl PoolCounts {
        fn new() -> PoolCounts {
            PoolCounts { stats: Arc::new(Stats::default()), latency: Arc::new(Histogram::new()) }
        }

        fn source<'a>(&'a self, name: &'a str, backends: &'a [Arc<Backend>]) -> PoolSource<'a> {
            PoolSource { name, stats: &self.stats, latency: &self.latency, backends }
        }
    }

    /// The whole balancer with its `default` pool.
    struct Balancer {
        history: History,
        stats: Stats,
        latency: Histogram,
        default: PoolCounts,
    }

    impl Balancer {
        fn new() -> Balancer {
            Balancer {
                history: History::new(),
                stats: Stats::default(),
                latency: Histogram::new(),
                default: PoolCounts::new(),
            }
        }

        /// A sample with only the `default` pool, over `backends`.
        fn sample(&self, boundary: u64, backends: &[Arc<Backend>]) {
            self.history.sample(boundary, &self.stats, &self.latency, &[self.default.source(DEFAULT_POOL, backends)]);
        }

        fn answer(&self, backend: &Backend, n: u32, status: u16, ms: u64) {
            self.answer_in(&self.default, backend, n, status, ms);
        }

        /// As the proxy counts an answer of a backend of `pool`.
        fn answer_in(&self, pool: &PoolCounts, backend: &Backend, n: u32, status: u16, ms: u64) {
            answer(&self.stats, &self.latency, backend, n, status, ms);
            for _ in 0..n {
                pool.stats.record(status);
                pool.latency.record(Duration::from_millis(ms));
            }
        }
    }

    fn requests(seconds: &[Option<Second>]) -> Vec<Option<u32>> {
        seconds.iter().map(|s| s.map(|s| s.requests)).collect()
    }

    fn backend_window<'a>(window: &'a Window, id: &str) -> Option<&'a BackendWindow> {
        window.backends.iter().find(|b| b.id == id)
    }

    #[test]
    fn each_second_holds_what_was_counted_in_it() {
        let lb = Balancer::new();
        let (a, b) = (backend("a", 8001), backend("b", 8002));
        let table = [Arc::clone(&a), Arc::clone(&b)];
        lb.answer(&a, 50, 200, 1); // before the history started: not history
        lb.sample(100, &table);
        lb.answer(&a, 3, 200, 2);
        lb.answer(&b, 2, 502, 40);
        b.record_request();
        b.record_failure();
        lb.stats.record_try_failure(crate::stats::TryFailure::Refused);
        lb.sample(101, &table);
        lb.sample(102, &table);
        lb.answer(&a, 98, 200, 1);
        lb.answer(&a, 2, 200, 900);
        lb.sample(103, &table);

        let window = lb.history.window(WINDOW_SECONDS);
        assert_eq!(window.start, 100);
        assert_eq!(requests(&window.total), [Some(5), Some(0), Some(100)]);
        let first = window.total[0].unwrap();
        assert_eq!((first.status_5xx, first.failures), (2, 1));
        assert_eq!((window.total[1].unwrap().p50(), window.total[1].unwrap().p99()), (None, None));
        let busy = window.total[2].unwrap();
        let near = |d: Option<Duration>, ms: u64| {
            (d.unwrap().as_secs_f64() * 1e3 - ms as f64).abs() <= ms as f64 / 64.0 + 0.001
        };
        assert!(near(busy.p50(), 1) && near(busy.p99(), 900), "{busy:?}");

        let ids: Vec<_> = window.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"], "in the table's order");
        assert_eq!(requests(&backend_window(&window, "a").unwrap().seconds), [Some(3), Some(0), Some(100)]);
        let b_first = backend_window(&window, "b").unwrap().seconds[0].unwrap();
        assert_eq!((b_first.requests, b_first.status_5xx, b_first.failures), (3, 2, 1));
        assert!(near(b_first.p50(), 40));

        let last_two = lb.history.window(2);
        assert_eq!((last_two.start, requests(&last_two.total)), (101, vec![Some(0), Some(100)]));
    }

    #[test]
    fn a_second_without_answers_keeps_its_counts_and_the_next_one_only_its_own_latency() {
        let lb = Balancer::new();
        let a = backend("a", 8001);
        let table = [Arc::clone(&a)];
        lb.answer(&a, 10, 200, 500); // before the history: not in any second
        lb.sample(100, &table);
        // Second 100: two tries that got no answer (the histogram is not read: nothing new).
        for _ in 0..2 {
            a.record_request();
            a.record_failure();
        }
        lb.sample(101, &table);
        // Second 101: idle. Second 102: answers of 3 ms only, whatever came before.
        lb.sample(102, &table);
        lb.answer(&a, 4, 503, 3);
        lb.sample(103, &table);

        let window = lb.history.window(WINDOW_SECONDS);
        let seconds = &backend_window(&window, "a").unwrap().seconds;
        let counts: Vec<_> = seconds.iter().map(|s| s.map(|s| (s.requests, s.status_5xx, s.failures))).collect();
        assert_eq!(counts, [Some((2, 0, 2)), Some((0, 0, 0)), Some((4, 4, 0))]);
        assert_eq!((seconds[0].unwrap().p50(), seconds[1].unwrap().p99()), (None, None));
        let ms = |d: Option<Duration>| d.unwrap().as_secs_f64() * 1e3;
        let busy = seconds[2].unwrap();
        assert!((ms(busy.p50()) - 3.0).abs() < 0.1 && (ms(busy.p99()) - 3.0).abs() < 0.1, "{busy:?}");
    }

    #[test]
    fn the_ring_wraps_and_memory_stays_the_same() {
        let lb = Balancer::new();
        let a = backend("a", 8001);
        let table = [Arc::clone(&a)];
        lb.sample(0, &table);
        let memory = lb.history.memory_bytes();
        for second in 1..=3 * WINDOW_SECONDS as u64 {
            lb.answer(&a, (second % 7) as u32, 200, 1);
            lb.sample(second, &table);
        }
        let window = lb.history.window(WINDOW_SECONDS);
        let end = 3 * WINDOW_SECONDS as u64;
        assert_eq!((window.start, window.total.len()), (end - WINDOW_SECONDS as u64, WINDOW_SECONDS));
        let expected: Vec<_> = (window.start..end).map(|s| Some(((s + 1) % 7) as u32)).collect();
        assert_eq!(requests(&window.total), expected);
        assert_eq!(requests(&window.backends[0].seconds), expected);
        assert_eq!(lb.history.memory_bytes(), memory, "bounded: three series, whatever the time");
        assert_eq!(memory, 3 * SERIES_BYTES, "the whole, the default pool, its backend");
        // The documented size: 24 bytes a second, 900 of them, plus the previous reading.
        assert_eq!(SLOT_BYTES, 24);
        assert_eq!(SERIES_BYTES, 900 * 24 + 1216 * 8 + 256);
    }

    #[test]
    fn a_stalled_sampler_puts_the_counts_in_the_last_second_and_a_clock_step_back_nothing() {
        let lb = Balancer::new();
        let a = backend("a", 8001);
        let table = [Arc::clone(&a)];
        lb.sample(10, &table);
        lb.answer(&a, 4, 200, 1);
        lb.sample(13, &table); // woke three seconds late
        lb.answer(&a, 2, 200, 1);
        lb.sample(12, &table); // the clock went back: nothing stored, nothing lost
        lb.sample(13, &table);
        lb.sample(14, &table);
        let window = lb.history.window(WINDOW_SECONDS);
        assert_eq!(window.start, 10);
        assert_eq!(requests(&window.total), [None, None, Some(4), Some(2)]);
    }

    #[test]
    fn a_removed_backend_keeps_its_seconds_until_they_age_out() {
        let lb = Balancer::new();
        let (a, b) = (backend("a", 8001), backend("b", 8002));
        lb.sample(0, &[Arc::clone(&a), Arc::clone(&b)]);
        lb.answer(&b, 5, 200, 1);
        let in_flight = b.try_begin().unwrap();
        lb.sample(1, &[Arc::clone(&a), Arc::clone(&b)]);
        // Removed with a request in flight: its answer after removal still counts.
        let table = [Arc::clone(&a)];
        lb.answer(&b, 1, 200, 1);
        drop(in_flight);
        drop(b);
        lb.sample(2, &table);
        let window = lb.history.window(WINDOW_SECONDS);
        let removed = backend_window(&window, "b").unwrap();
        assert!(!removed.in_table);
        assert_eq!(requests(&removed.seconds), [Some(5), Some(1)]);
        // Read once more after it had nothing in flight (second 2), then let go.
        lb.sample(3, &table);
        for boundary in 4..=WINDOW_SECONDS as u64 + 2 {
            lb.sample(boundary, &table);
        }
        // The window is seconds 2..=901: its last value (0 at second 2) is still in it.
        let window = lb.history.window(WINDOW_SECONDS);
        assert_eq!(requests(&backend_window(&window, "b").unwrap().seconds)[..2], [Some(0), None]);
        assert_eq!(lb.history.series(), 4);
        lb.sample(WINDOW_SECONDS as u64 + 3, &table);
        assert!(backend_window(&lb.history.window(WINDOW_SECONDS), "b").is_none(), "its last second left");
        assert_eq!(lb.history.series(), 3, "its memory is freed");
    }

    #[test]
    fn churn_in_the_table_never_keeps_more_than_the_cap_of_removed_backends() {
        let lb = Balancer::new();
        let a = backend("a", 8001);
        lb.sample(0, &[Arc::clone(&a)]);
        for i in 0..1000u64 {
            let passing = backend(&format!("passing-{i}"), 9000 + (i % 1000) as u16);
            lb.answer(&passing, 1, 200, 1);
            lb.sample(1 + 2 * i, &[Arc::clone(&a), Arc::clone(&passing)]);
            lb.sample(2 + 2 * i, &[Arc::clone(&a)]);
        }
        assert_eq!(lb.history.series(), 1 + 1 + 1 + MAX_RETIRED_BACKENDS);
        let window = lb.history.window(WINDOW_SECONDS);
        let retired: Vec<_> = window.backends.iter().filter(|b| !b.in_table).map(|b| b.id.as_str()).collect();
        assert_eq!(retired.len(), MAX_RETIRED_BACKENDS);
        assert!(retired.contains(&"passing-999") && !retired.contains(&"passing-935"), "the newest are kept");
        assert!(lb.history.memory_bytes() <= SERIES_BYTES * (1 + 1 + 1 + MAX_RETIRED_BACKENDS));
    }

    #[test]
    fn a_fresh_backend_under_the_same_id_is_counted_from_zero() {
        let lb = Balancer::new();
        let old = backend("a", 8001);
        lb.sample(0, &[Arc::clone(&old)]);
        lb.answer(&old, 7, 200, 1);
        lb.sample(1, &[Arc::clone(&old)]);
        lb.answer(&old, 2, 200, 1); // before the swap, not seen yet
        let new = backend("a", 8002); // a DNS change: same id, a fresh backend
        lb.answer(&new, 3, 200, 1);
        lb.sample(2, &[Arc::clone(&new)]);
        lb.answer(&new, 1, 200, 1);
        lb.sample(3, &[Arc::clone(&new)]);
        let window = lb.history.window(WINDOW_SECONDS);
        assert_eq!(window.backends.len(), 1);
        assert_eq!(requests(&window.backends[0].seconds), [Some(7), Some(5), Some(1)]);
    }

    #[test]
    fn an_empty_history_reads_empty() {
        let lb = Balancer::new();
        assert_eq!(lb.history.window(10).total.len(), 0);
        lb.sample(5, &[]);
        let window = lb.history.window(10);
        assert_eq!((window.start, window.total.len(), window.backends.len()), (5, 0, 0));
    }

    fn pool_window<'a>(window: &'a Window, name: &str) -> Option<&'a PoolWindow> {
        window.pools.iter().find(|p| p.name == name)
    }

    #[test]
    fn each_pool_has_its_total_and_its_backends_apart_from_a_namesake_elsewhere() {
        let lb = Balancer::new();
        let api = PoolCounts::new();
        // The default pool's backend and api's first share an id.
        let (a, api_a, api_b) = (backend("a", 8001), backend("a", 8002), backend("b", 8003));
        let default_table = [Arc::clone(&a)];
        let api_table = [Arc::clone(&api_a), Arc::clone(&api_b)];
        let sample = |boundary| {
            let pools = [lb.default.source(DEFAULT_POOL, &default_table), api.source("api", &api_table)];
            lb.history.sample(boundary, &lb.stats, &lb.latency, &pools);
        };
        sample(100);
        lb.answer(&a, 2, 200, 1);
        lb.answer_in(&api, &api_a, 3, 200, 1);
        lb.answer_in(&api, &api_b, 4, 503, 50);
        api.stats.record_try_failure(crate::stats::TryFailure::Refused);
        sample(101);
        lb.answer_in(&api, &api_a, 1, 200, 1);
        sample(102);

        let window = lb.history.window(WINDOW_SECONDS);
        assert_eq!(requests(&window.total), [Some(9), Some(1)], "the whole: every pool");
        let names: Vec<_> = window.pools.iter().map(|p| (p.name.as_str(), p.in_config)).collect();
        assert_eq!(names, [("default", true), ("api", true)], "in the order given");
        assert_eq!(requests(&pool_window(&window, "default").unwrap().seconds), [Some(2), Some(0)]);
        let api_seconds = &pool_window(&window, "api").unwrap().seconds;
        assert_eq!(requests(api_seconds), [Some(7), Some(1)]);
        let first = api_seconds[0].unwrap();
        assert_eq!((first.status_5xx, first.failures), (4, 1));
        assert!(first.p99().unwrap() >= Duration::from_millis(49), "the pool's own latency: {first:?}");
        // The window's backends stay the default pool's, as before pools.
        let ids: Vec<_> = window.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["a"]);
        assert_eq!(requests(&window.backends[0].seconds), [Some(2), Some(0)]);

        let api_window = lb.history.pool_window_since("api", WINDOW_SECONDS, None).unwrap();
        assert_eq!((api_window.start, requests(&api_window.total)), (100, vec![Some(7), Some(1)]));
        assert!(api_window.pools.is_empty());
        let by_id: Vec<_> = api_window.backends.iter().map(|b| (b.id.as_str(), requests(&b.seconds))).collect();
        assert_eq!(by_id, [("a", vec![Some(3), Some(1)]), ("b", vec![Some(4), Some(0)])]);
        let newer = lb.history.pool_window_since("api", WINDOW_SECONDS, Some(100)).unwrap();
        assert_eq!((newer.start, requests(&newer.total)), (101, vec![Some(1)]));
        assert!(lb.history.pool_window_since("web", WINDOW_SECONDS, None).is_none());
        assert_eq!(lb.history.series(), 1 + 2 + 3, "the whole, two pools, three backends");
    }

    #[test]
    fn a_removed_pool_keeps_its_seconds_until_they_age_out_and_a_new_one_counts_from_zero() {
        let lb = Balancer::new();
        let api = PoolCounts::new();
        let x = backend("x", 8001);
        let api_table = [Arc::clone(&x)];
        let both = |boundary| {
            let pools = [lb.default.source(DEFAULT_POOL, &[]), api.source("api", &api_table)];
            lb.history.sample(boundary, &lb.stats, &lb.latency, &pools);
        };
        both(0);
        lb.answer_in(&api, &x, 5, 200, 1);
        both(1);
        // A reload removes api with an answer still to come: it is counted.
        let in_flight = x.try_begin().unwrap();
        lb.sample(2, &[]);
        lb.answer_in(&api, &x, 1, 200, 1);
        drop(in_flight);
        lb.sample(3, &[]);
        lb.sample(4, &[]);
        let window = lb.history.window(WINDOW_SECONDS);
        let removed = pool_window(&window, "api").unwrap();
        assert!(!removed.in_config);
        assert_eq!(requests(&removed.seconds)[..3], [Some(5), Some(0), Some(1)]);
        let gone = lb.history.pool_window_since("api", WINDOW_SECONDS, None).unwrap();
        assert_eq!((gone.backends.len(), gone.backends[0].in_table), (1, false));
        // Added again under the same name: fresh counters, counted from 0.
        let again = PoolCounts::new();
        let y = backend("y", 8002);
        lb.answer_in(&again, &y, 2, 200, 1);
        let table = [Arc::clone(&y)];
        lb.history.sample(
            5,
            &lb.stats,
            &lb.latency,
            &[lb.default.source(DEFAULT_POOL, &[]), again.source("api", &table)],
        );
        let window = lb.history.window(WINDOW_SECONDS);
        let api_seconds = &pool_window(&window, "api").unwrap().seconds;
        assert!(pool_window(&window, "api").unwrap().in_config);
        assert_eq!(api_seconds[4].unwrap().requests, 2);
        // Removed again; once its last second leaves the window, it goes with its backends.
        for boundary in 6..=WINDOW_SECONDS as u64 + 10 {
            lb.sample(boundary, &[]);
        }
        assert!(pool_window(&lb.history.window(WINDOW_SECONDS), "api").is_none());
        assert!(lb.history.pool_window_since("api", WINDOW_SECONDS, None).is_none());
        assert_eq!(lb.history.series(), 2, "the whole and the default pool");
    }

    #[test]
    fn churn_in_the_pools_never_keeps_more_than_the_cap_of_removed_pools() {
        let lb = Balancer::new();
        lb.sample(0, &[]);
        let counts = PoolCounts::new();
        for i in 0..100u64 {
            let name = format!("p{i:03}");
            let pools = [lb.default.source(DEFAULT_POOL, &[]), counts.source(&name, &[])];
            counts.stats.record(200);
            lb.history.sample(1 + 2 * i, &lb.stats, &lb.latency, &pools);
            lb.sample(2 + 2 * i, &[]);
        }
        let window = lb.history.window(WINDOW_SECONDS);
        let retired: Vec<_> = window.pools.iter().filter(|p| !p.in_config).map(|p| p.name.as_str()).collect();
        assert_eq!(retired.len(), MAX_RETIRED_POOLS);
        assert!(retired.contains(&"p099") && !retired.contains(&"p083"), "the newest are kept: {retired:?}");
        assert_eq!(lb.history.series(), 1 + 1 + MAX_RETIRED_POOLS);
    }
}
