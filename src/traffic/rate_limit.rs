//! Rate limiting: a lock-free token bucket ([`TokenBucket`]), a bounded table of per-client
//! buckets ([`ClientLimiter`]), and the two together ([`RateLimiter`]).
//!
//! Every bucket is a GCRA (generic cell rate algorithm): instead of a token count and a refill
//! timestamp it keeps one number, the *theoretical arrival time* (TAT) at which the bucket will
//! be full again. A request at `now` moves the TAT one interval (`1 / rate`) forward from
//! `max(TAT, now)` and is allowed when the new TAT is at most `burst` intervals ahead of `now`.
//! That is exactly a token bucket of `burst` tokens refilled at `rate` per second, but the whole
//! state fits in one `u64`, so the global bucket is a single atomic updated by compare-and-swap
//! and a per-client entry costs a few dozen bytes.
//!
//! Time is always passed in (`now: Instant`), never read inside, so the caller reads the clock
//! once per request and tests need no sleeping.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use std::time::Instant;
//! use lb_sync::traffic::rate_limit::{RateLimitConfig, RateLimiter};
//!
//! let config = RateLimitConfig { client_rate: 1.0, client_burst: 2, ..RateLimitConfig::default() };
//! let limiter = RateLimiter::new(&config).unwrap();
//! let now = Instant::now();
//! let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
//! assert!(limiter.check(client, now).allowed);
//! assert!(limiter.check(client, now).allowed);
//! let third = limiter.check(client, now);
//! assert!(!third.allowed);
//! assert_eq!(third.retry_after_secs(), 1);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The answer to one request: allowed or not, and what to tell the client about it (the
/// `RateLimit-*` / `Retry-After` header values).
///
/// ```
/// use std::time::Duration;
/// use lb_sync::traffic::rate_limit::Decision;
///
/// let rejected = Decision { allowed: false, limit: 10, remaining: 0, retry_after: Duration::from_millis(1200) };
/// assert_eq!(rejected.retry_after_secs(), 2, "rounded up");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The burst of the bucket that decided: how many requests it admits at once.
    pub limit: u32,
    /// Requests the bucket would still admit right now, after this one (0 when rejected).
    pub remaining: u32,
    /// Time until the next token is due; zero when allowed.
    pub retry_after: Duration,
}

impl Decision {
    /// The answer when no limit is configured: allowed, with `limit` and `remaining` at
    /// `u32::MAX` (nothing is counted down; send no rate-limit headers for it).
    pub const UNLIMITED: Decision =
        Decision { allowed: true, limit: u32::MAX, remaining: u32::MAX, retry_after: Duration::ZERO };

    /// `Retry-After` in whole seconds: `retry_after` rounded up, and at least 1 (a `0` would
    /// invite an immediate retry that is rejected again).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_sync::traffic::rate_limit::Decision;
    ///
    /// let d = |ms| Decision { allowed: false, limit: 1, remaining: 0, retry_after: Duration::from_millis(ms) };
    /// assert_eq!(d(1).retry_after_secs(), 1);
    /// assert_eq!(d(1000).retry_after_secs(), 1);
    /// assert_eq!(d(1001).retry_after_secs(), 2);
    /// ```
    #[must_use]
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }

    /// Of two answers for the same request, the one that binds: a rejection over an
    /// allowance, the later `retry_after` among rejections, the fewer `remaining` among
    /// allowances.
    fn stricter(self, other: Decision) -> Decision {
        match (self.allowed, other.allowed) {
            (true, false) => other,
            (false, true) => self,
            (false, false) if other.retry_after > self.retry_after => other,
            (false, false) => self,
            (true, true) if other.remaining < self.remaining => other,
            (true, true) => self,
        }
    }
}

/// The largest interval between two tokens: ten years. A smaller rate is read as this one;
/// it keeps `burst × interval` and the TAT arithmetic far from `u64` overflow.
const MAX_INTERVAL_NS: u64 = 10 * 365 * 24 * 3600 * 1_000_000_000;

/// The parameters of a GCRA bucket and its one step. Shared by the atomic [`TokenBucket`] and
/// the per-client entries, which hold their TAT under a shard lock instead.
#[derive(Clone, Copy, Debug)]
struct Gcra {
    /// Nanoseconds between two tokens: `1 / rate`.
    interval_ns: u64,
    /// `burst × interval`: how far the TAT may run ahead of now.
    tolerance_ns: u64,
    /// Tokens in a full bucket.
    burst: u32,
}

impl Gcra {
    /// # Panics
    /// When `rate` is not a finite number > 0 or `burst` is 0.
    fn new(rate: f64, burst: u32) -> Gcra {
        assert!(rate.is_finite() && rate > 0.0, "rate must be a finite number > 0, got {rate}");
        assert!(burst >= 1, "burst must be at least 1");
        // Whole nanoseconds: a rate above 10^9/s is read as 10^9/s.
        let interval_ns = (1e9 / rate).round().clamp(1.0, MAX_INTERVAL_NS as f64) as u64;
        Gcra { interval_ns, tolerance_ns: interval_ns.saturating_mul(u64::from(burst)), burst }
    }

    /// One request at `now` against a bucket whose TAT is `tat` (both in nanoseconds since the
    /// bucket's epoch): the answer, and the TAT to store when it is an allowance. A rejection
    /// changes nothing, so it needs no write.
    fn step(&self, tat: u64, now: u64) -> (Decision, Option<u64>) {
        // A TAT in the past is a full bucket: the tokens it would have gained beyond `burst`
        // are not banked.
        let new_tat = tat.max(now).saturating_add(self.interval_ns);
        let ahead = new_tat - now;
        if ahead <= self.tolerance_ns {
            // Whole intervals still fitting under the tolerance: tokens left after this one.
            let remaining = ((self.tolerance_ns - ahead) / self.interval_ns).min(u64::from(self.burst)) as u32;
            let decision = Decision { allowed: true, limit: self.burst, remaining, retry_after: Duration::ZERO };
            (decision, Some(new_tat))
        } else {
            // The request would fit once `now` reaches `new_tat - tolerance`: one token later.
            let retry_after = Duration::from_nanos(ahead - self.tolerance_ns);
            (Decision { allowed: false, limit: self.burst, remaining: 0, retry_after }, None)
        }
    }
}

/// Nanoseconds from `epoch` to `now`; an instant before the epoch counts as the epoch.
fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// A token bucket of `burst` tokens refilled at `rate` tokens per second, shared by any number
/// of threads without a lock: its state is one `AtomicU64` (the GCRA's theoretical arrival
/// time), updated with a compare-and-swap loop.
///
/// Instants before the bucket was created count as its creation time, so read `now` after
/// building it.
///
/// ```
/// use std::time::{Duration, Instant};
/// use lb_sync::traffic::rate_limit::TokenBucket;
///
/// let bucket = TokenBucket::new(10.0, 2); // 10/s, bursts of 2
/// let now = Instant::now();
/// assert_eq!(bucket.try_acquire(now).remaining, 1);
/// assert_eq!(bucket.try_acquire(now).remaining, 0);
/// let rejected = bucket.try_acquire(now);
/// assert!(!rejected.allowed);
/// assert_eq!(rejected.retry_after, Duration::from_millis(100));
/// assert!(bucket.try_acquire(now + Duration::from_millis(100)).allowed);
/// ```
pub struct TokenBucket {
    gcra: Gcra,
    /// The zero of `tat`.
    epoch: Instant,
    /// Theoretical arrival time, in nanoseconds since `epoch`: when the bucket is full again.
    tat: AtomicU64,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` per second.
    ///
    /// # Panics
    /// When `rate` is not a finite number > 0 or `burst` is 0.
    #[must_use]
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket { gcra: Gcra::new(rate, burst), epoch: Instant::now(), tat: AtomicU64::new(0) }
    }

    /// Takes one token at `now` if there is one.
    pub fn try_acquire(&self, now: Instant) -> Decision {
        let now = nanos_since(self.epoch, now);
        // Relaxed is enough: the TAT is the only shared datum, every update is a
        // read-modify-write of that one location (so they are totally ordered), and nothing
        // else is published through it.
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let (decision, new_tat) = self.gcra.step(tat, now);
            let Some(new_tat) = new_tat else { return decision };
            match self.tat.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return decision,
                // Another thread took a token in between: decide again from its TAT.
                Err(current) => tat = current,
            }
        }
    }

    /// What [`try_acquire`](Self::try_acquire) would answer at `now`, taking nothing.
    ///
    /// ```
    /// use std::time::Instant;
    /// use lb_sync::traffic::rate_limit::TokenBucket;
    ///
    /// let bucket = TokenBucket::new(1.0, 1);
    /// let now = Instant::now();
    /// assert!(bucket.peek(now).allowed && bucket.peek(now).allowed);
    /// assert!(bucket.try_acquire(now).allowed);
    /// assert!(!bucket.peek(now).allowed);
    /// ```
    #[must_use]
    pub fn peek(&self, now: Instant) -> Decision {
        self.gcra.step(self.tat.load(Ordering::Relaxed), nanos_since(self.epoch, now)).0
    }

    /// The burst: tokens in a full bucket.
    #[must_use]
    pub fn burst(&self) -> u32 {
        self.gcra.burst
    }
}

impl fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBucket")
            .field("interval_ns", &self.gcra.interval_ns)
            .field("burst", &self.gcra.burst)
            .field("tat_ns", &self.tat.load(Ordering::Relaxed))
            .finish()
    }
}

/// A value alone on its cache line(s), so that threads locking neighbouring shards do not
/// contend on the same line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// One per-client bucket in a shard's ring.
#[derive(Clone, Copy, Debug)]
struct Slot {
    client: IpAddr,
    /// The bucket's TAT in nanoseconds since the limiter's epoch.
    tat_ns: u64,
    /// Seen since the eviction hand last passed (CLOCK's second-chance bit).
    referenced: bool,
}

/// A part of the client table under its own lock: a map from client to its slot, and the slots
/// in a ring that the CLOCK hand walks when the shard is full.
#[derive(Debug)]
struct Shard {
    /// Client → index into `slots`. `u32` keeps the entry small; a shard never holds more.
    index: HashMap<IpAddr, u32>,
    slots: Vec<Slot>,
    /// Next slot the eviction hand looks at.
    hand: usize,
    /// Most slots this shard may hold.
    capacity: usize,
}

impl Shard {
    fn new(capacity: usize) -> Shard {
        Shard { index: HashMap::new(), slots: Vec::new(), hand: 0, capacity }
    }

    /// Records a bucket for a client that has none, evicting one when the shard is full.
    fn insert(&mut self, client: IpAddr, tat_ns: u64, now_ns: u64) {
        let slot = Slot { client, tat_ns, referenced: false };
        if self.slots.len() < self.capacity {
            if self.slots.len() == self.slots.capacity() {
                // Doubling, but never past the cap: a full shard holds no spare slots.
                let more = self.slots.len().max(8).min(self.capacity - self.slots.len());
                self.slots.reserve_exact(more);
            }
            self.index.insert(client, self.slots.len() as u32);
            self.slots.push(slot);
            return;
        }
        let victim = self.victim(now_ns);
        let evicted = std::mem::replace(&mut self.slots[victim], slot);
        self.index.remove(&evicted.client);
        self.index.insert(client, victim as u32);
    }

    /// CLOCK: walks the ring from the hand to the first slot that is refilled (TAT ≤ now: a full
    /// bucket, exactly equivalent to no entry, so dropping it loses nothing) or not seen since
    /// the hand last passed (the least recently used, approximately); clears the bits it passes.
    /// Ends within one lap plus one slot, and each step either ends or clears a bit that a hit
    /// set, so the cost is amortized O(1) per request.
    fn victim(&mut self, now_ns: u64) -> usize {
        loop {
            let i = self.hand;
            self.hand = if i + 1 == self.slots.len() { 0 } else { i + 1 };
            let slot = &mut self.slots[i];
            if slot.tat_ns <= now_ns || !slot.referenced {
                return i;
            }
            slot.referenced = false;
        }
    }
}

/// One token bucket per client address, all with the same rate and burst, in a table of at
/// most `max_entries` entries.
///
/// The table is split into [`ClientLimiter::SHARDS`] shards, each a `Mutex` over a hash map and
/// a ring of slots; a client's shard is chosen by a keyed hash of its address, so workers
/// contend only when their clients share a shard, and a lookup is one hash-map probe.
///
/// **Bounded memory.** A full shard makes room with a CLOCK hand: the first slot it finds that
/// is either refilled (its bucket is full, which is the same as having no entry) or unused
/// since the hand last passed is reused. A busy client evicted that way starts again with a
/// fresh, full bucket the next time it is seen: the limiter *fails open* for it. That is the
/// chosen trade: under address spoofing (a flood of one-off source addresses) memory stays
/// bounded and the per-request cost stays O(1), at the price of exactness for clients pushed
/// out, which must be seen less than once per lap of the hand to be pushed out at all.
///
/// The bound is kept per shard (`max_entries / SHARDS` each), so under many clients the shards
/// that hashing happens to fill first start evicting while the table as a whole holds slightly
/// fewer than `max_entries` (about 99 % of it with 200 000 clients for 200 000 entries).
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are the IPv4 client they map.
///
/// ```
/// use std::net::IpAddr;
/// use std::time::Instant;
/// use lb_sync::traffic::rate_limit::ClientLimiter;
///
/// let limiter = ClientLimiter::new(5.0, 1, 1000);
/// let now = Instant::now();
/// let a: IpAddr = "192.0.2.1".parse().unwrap();
/// let b: IpAddr = "2001:db8::1".parse().unwrap();
/// assert!(limiter.try_acquire(a, now).allowed);
/// assert!(!limiter.try_acquire(a, now).allowed);
/// assert!(limiter.try_acquire(b, now).allowed, "another client, another bucket");
/// assert_eq!(limiter.entries(), 2);
/// ```
pub struct ClientLimiter {
    gcra: Gcra,
    /// The zero of every entry's TAT.
    epoch: Instant,
    /// Keyed hash choosing a client's shard. Separate from the maps' own keys, so the clients
    /// of one shard are not clustered inside its map.
    shard_hasher: RandomState,
    shards: Box<[Padded<Mutex<Shard>>]>,
    max_entries: usize,
}

impl ClientLimiter {
    /// Shards of the table (fewer when `max_entries` is smaller): enough that 2 to 64 workers
    /// rarely wait on each other.
    pub const SHARDS: usize = 64;

    /// The default bound on entries: 100 000 clients, a few MB.
    pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

    /// Buckets of `burst` tokens refilled at `rate` per second, for at most `max_entries`
    /// clients at a time (0 is read as 1).
    ///
    /// # Panics
    /// When `rate` is not a finite number > 0 or `burst` is 0.
    #[must_use]
    pub fn new(rate: f64, burst: u32, max_entries: usize) -> ClientLimiter {
        let gcra = Gcra::new(rate, burst);
        // At most one shard per entry, so every shard may hold at least one; a power of two.
        let max_entries = max_entries.max(1);
        let shards = if max_entries >= Self::SHARDS { Self::SHARDS } else { 1 << max_entries.ilog2() };
        // The caps add up to exactly `max_entries`: the remainder goes one each to the first shards.
        let cap = |i: usize| (max_entries / shards + usize::from(i < max_entries % shards)).min(u32::MAX as usize);
        let shards = (0..shards).map(|i| Padded(Mutex::new(Shard::new(cap(i))))).collect();
        ClientLimiter { gcra, epoch: Instant::now(), shard_hasher: RandomState::new(), shards, max_entries }
    }

    /// Takes one token from `client`'s bucket at `now` if there is one.
    pub fn try_acquire(&self, client: IpAddr, now: Instant) -> Decision {
        self.decide(client, now, |decision| (decision, true))
    }

    /// Decides for `client` at `now` under its shard's lock and passes the answer to `then`,
    /// which returns the result and whether an allowance is to be recorded. This is how
    /// [`RateLimiter`] makes a client's token and the global one all or nothing.
    fn decide<R>(&self, client: IpAddr, now: Instant, then: impl FnOnce(Decision) -> (R, bool)) -> R {
        let client = client.to_canonical();
        let now_ns = nanos_since(self.epoch, now);
        let mut shard = self.shard(client);
        let found = shard.index.get(&client).copied();
        match found {
            Some(i) => {
                let slot = &mut shard.slots[i as usize];
                // Rejected requests count as use too: a client being held back is the last
                // one to forget.
                slot.referenced = true;
                let (decision, new_tat) = self.gcra.step(slot.tat_ns, now_ns);
                let (result, record) = then(decision);
                if let (true, Some(new_tat)) = (record, new_tat) {
                    slot.tat_ns = new_tat;
                }
                result
            }
            None => {
                // No entry is a full bucket; an entry is made only for an allowance that is
                // recorded, so a rejected request never evicts anyone.
                let (decision, new_tat) = self.gcra.step(0, now_ns);
                let (result, record) = then(decision);
                if let (true, Some(new_tat)) = (record, new_tat) {
                    shard.insert(client, new_tat, now_ns);
                }
                result
            }
        }
    }

    fn shard(&self, client: IpAddr) -> MutexGuard<'_, Shard> {
        let i = self.shard_hasher.hash_one(client) as usize & (self.shards.len() - 1);
        // A panic while a shard was locked cannot leave it inconsistent (no code that can
        // panic runs between its updates), so a poisoned lock is used as it is.
        self.shards[i].0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Clients with an entry now (at most [`max_entries`](Self::max_entries)). Locks each
    /// shard in turn, so it is a snapshot only when nothing else runs.
    #[must_use]
    pub fn entries(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().unwrap_or_else(|e| e.into_inner()).slots.len()).sum()
    }

    /// The bound on entries.
    #[must_use]
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// The burst of every client's bucket.
    #[must_use]
    pub fn burst(&self) -> u32 {
        self.gcra.burst
    }
}

impl fmt::Debug for ClientLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLimiter")
            .field("interval_ns", &self.gcra.interval_ns)
            .field("burst", &self.gcra.burst)
            .field("shards", &self.shards.len())
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

/// Rate-limit settings. A rate of 0 turns that limit off; both are off by default.
///
/// Each field, its default, and what nginx and HAProxy call it:
///
/// - `rate`: 0 (off). nginx: `limit_req_zone` with one key for everyone (`$server_name`) and
///   `rate=`. HAProxy: a one-entry table (`stick-table type integer size 1 store
///   http_req_rate(1s)`, `http-request track-sc0 int(0)`) denying when `sc_http_req_rate(0)`
///   is over the rate.
/// - `burst`: 0, read as `max(1, ceil(rate))`. nginx: `limit_req … burst= nodelay`. HAProxy:
///   none (its rate is a sliding window, which has no burst).
/// - `client_rate`: 0 (off). nginx: `limit_req_zone $binary_remote_addr … rate=`. HAProxy:
///   `stick-table type ip … store http_req_rate(1s)`, `http-request track-sc0 src`,
///   `http-request deny deny_status 429 if { sc_http_req_rate(0) gt N }`.
/// - `client_burst`: 0, read as `max(1, ceil(client_rate))`. nginx: `burst=` as above.
/// - `max_clients`: 100 000. nginx: the zone's size (`zone=name:10m`, about 16 000 clients a
///   MB). HAProxy: `stick-table … size 100k`.
///
/// Rates are requests per second, any finite number ≥ 0 (`0.5` is one request every two
/// seconds; nginx writes it `30r/m`). A burst is the number of requests admitted at once from a
/// full bucket: nginx's `burst=N nodelay` admits N + 1, so it is our `burst = N + 1`. Requests
/// over the limit are rejected at once, never delayed (nginx's `nodelay`). The default burst,
/// one second's worth, lets a client that sends at exactly its rate in bunches of one second
/// through.
///
/// ```
/// use lb_sync::traffic::rate_limit::RateLimitConfig;
///
/// let config: RateLimitConfig = serde_json::from_str(r#"{"client_rate": 2.5}"#).unwrap();
/// assert_eq!(config.rate, 0.0, "no global limit");
/// assert_eq!(config.effective_client_burst(), 3, "ceil(2.5)");
/// assert_eq!(config.max_clients, 100_000);
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second for all clients together. Default 0: no global limit.
    pub rate: f64,
    /// Requests the global bucket admits at once. Default 0: `max(1, ceil(rate))`.
    pub burst: u32,
    /// Requests per second for each client address. Default 0: no per-client limit.
    pub client_rate: f64,
    /// Requests each client's bucket admits at once. Default 0: `max(1, ceil(client_rate))`.
    pub client_burst: u32,
    /// Most client addresses tracked at once (0 is read as 1). Default 100 000.
    pub max_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            rate: 0.0,
            burst: 0,
            client_rate: 0.0,
            client_burst: 0,
            max_clients: ClientLimiter::DEFAULT_MAX_ENTRIES,
        }
    }
}

impl RateLimitConfig {
    /// The global burst in force: `burst`, or `max(1, ceil(rate))` when it is 0.
    #[must_use]
    pub fn effective_burst(&self) -> u32 {
        burst_or_default(self.burst, self.rate)
    }

    /// The per-client burst in force: `client_burst`, or `max(1, ceil(client_rate))` when it is 0.
    #[must_use]
    pub fn effective_client_burst(&self) -> u32 {
        burst_or_default(self.client_burst, self.client_rate)
    }
}

fn burst_or_default(burst: u32, rate: f64) -> u32 {
    if burst > 0 {
        burst
    } else {
        // Saturating float-to-int cast: an enormous rate gets the largest burst.
        (rate.ceil() as u32).max(1)
    }
}

/// A rate in a [`RateLimitConfig`] that is negative, NaN or infinite.
///
/// ```
/// use lb_sync::traffic::rate_limit::{RateLimitConfig, RateLimiter};
///
/// let config = RateLimitConfig { rate: -1.0, ..RateLimitConfig::default() };
/// let err = RateLimiter::new(&config).unwrap_err();
/// assert_eq!(err.to_string(), "rate_limit.rate must be a finite number >= 0, got -1");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidRate {
    /// The field: `rate` or `client_rate`.
    pub field: &'static str,
    /// Its value.
    pub value: f64,
}

impl fmt::Display for InvalidRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate_limit.{} must be a finite number >= 0, got {}", self.field, self.value)
    }
}

impl std::error::Error for InvalidRate {}

/// The counters of a [`RateLimiter`] as the seed reports them:
/// `{"type": "token_bucket", "total_requests": N, "allowed_requests": N, "rejected_requests": N}`.
///
/// ```
/// use lb_sync::traffic::rate_limit::{RateLimitConfig, RateLimiter};
///
/// let limiter = RateLimiter::new(&RateLimitConfig::default()).unwrap();
/// assert_eq!(
///     serde_json::to_string(&limiter.snapshot()).unwrap(),
///     r#"{"type":"token_bucket","total_requests":0,"allowed_requests":0,"rejected_requests":0}"#
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RateLimitSnapshot {
    /// Always `token_bucket`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `allowed_requests + rejected_requests`.
    pub total_requests: u64,
    /// Requests let through.
    pub allowed_requests: u64,
    /// Requests refused (`429`).
    pub rejected_requests: u64,
}

/// A global limit and a per-client limit, each optional, and the counts of what they decided.
///
/// [`check`](Self::check) answers with the stricter of the two limits. They are all or
/// nothing: the client's bucket is decided first, under its shard's lock; the global token is
/// taken only when the client's bucket allows; and the client's token is recorded only when the
/// global one was taken. So a request rejected by either limit consumes no token of the other,
/// and a flood from one client cannot drain the global bucket for everyone. (When the client's
/// bucket rejects, the global one is only looked at, to report the later `retry_after`.)
///
/// ```
/// use std::net::IpAddr;
/// use std::time::Instant;
/// use lb_sync::traffic::rate_limit::{RateLimitConfig, RateLimiter};
///
/// let config = RateLimitConfig { rate: 100.0, client_rate: 1.0, ..RateLimitConfig::default() };
/// let limiter = RateLimiter::new(&config).unwrap();
/// let now = Instant::now();
/// let client: IpAddr = "198.51.100.4".parse().unwrap();
/// let first = limiter.check(client, now);
/// assert!(first.allowed);
/// assert_eq!((first.limit, first.remaining), (1, 0), "the client's limit binds");
/// assert!(!limiter.check(client, now).allowed);
/// assert_eq!((limiter.allowed_requests(), limiter.rejected_requests()), (1, 1));
/// ```
#[derive(Debug)]
pub struct RateLimiter {
    global: Option<TokenBucket>,
    per_client: Option<ClientLimiter>,
    allowed: AtomicU64,
    rejected: AtomicU64,
}

impl RateLimiter {
    /// The limits of `config`; a rate of 0 leaves that limit off.
    ///
    /// # Errors
    /// [`InvalidRate`] when `rate` or `client_rate` is negative, NaN or infinite.
    pub fn new(config: &RateLimitConfig) -> Result<RateLimiter, InvalidRate> {
        for (field, value) in [("rate", config.rate), ("client_rate", config.client_rate)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(InvalidRate { field, value });
            }
        }
        let global = (config.rate > 0.0).then(|| TokenBucket::new(config.rate, config.effective_burst()));
        let per_client = (config.client_rate > 0.0)
            .then(|| ClientLimiter::new(config.client_rate, config.effective_client_burst(), config.max_clients));
        Ok(RateLimiter { global, per_client, allowed: AtomicU64::new(0), rejected: AtomicU64::new(0) })
    }

    /// Decides one request from `client` at `now` and counts it. With both limits off every
    /// request is allowed ([`Decision::UNLIMITED`]).
    pub fn check(&self, client: IpAddr, now: Instant) -> Decision {
        let decision = match (&self.global, &self.per_client) {
            (None, None) => Decision::UNLIMITED,
            (Some(global), None) => global.try_acquire(now),
            (None, Some(per_client)) => per_client.try_acquire(client, now),
            (Some(global), Some(per_client)) => per_client.decide(client, now, |mine| {
                if !mine.allowed {
                    return (mine.stricter(global.peek(now)), false);
                }
                let global = global.try_acquire(now);
                (mine.stricter(global), global.allowed)
            }),
        };
        // Relaxed: monotonic counters, read only for reporting.
        let counter = if decision.allowed { &self.allowed } else { &self.rejected };
        counter.fetch_add(1, Ordering::Relaxed);
        decision
    }

    /// Whether any limit is on.
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.global.is_some() || self.per_client.is_some()
    }

    /// Requests checked: always `allowed_requests() + rejected_requests()`, derived rather than
    /// counted, so the identity holds in every snapshot.
    #[must_use]
    pub fn total_requests(&self) -> u64 {
        self.snapshot().total_requests
    }

    /// Requests allowed.
    #[must_use]
    pub fn allowed_requests(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }

    /// Requests rejected.
    #[must_use]
    pub fn rejected_requests(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The counters, read once each.
    #[must_use]
    pub fn snapshot(&self) -> RateLimitSnapshot {
        let allowed_requests = self.allowed_requests();
        let rejected_requests = self.rejected_requests();
        RateLimitSnapshot {
            kind: "token_bucket",
            total_requests: allowed_requests + rejected_requests,
            allowed_requests,
            rejected_requests,
        }
    }

    /// Clients the per-client limit tracks now; 0 when it is off.
    #[must_use]
    pub fn entries(&self) -> usize {
        self.per_client.as_ref().map_or(0, ClientLimiter::entries)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::AtomicU32;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_is_allowed_then_rejected_with_retry_after() {
        let bucket = TokenBucket::new(2.0, 3); // a token every 500 ms
        let now = Instant::now();
        for remaining in [2, 1, 0] {
            let d = bucket.try_acquire(now);
            assert_eq!(d, Decision { allowed: true, limit: 3, remaining, retry_after: Duration::ZERO });
        }
        let rejected = bucket.try_acquire(now);
        assert_eq!(rejected, Decision { allowed: false, limit: 3, remaining: 0, retry_after: ms(500) });
        assert_eq!(rejected.retry_after_secs(), 1);
        // 200 ms later the next token is 300 ms away.
        assert_eq!(bucket.try_acquire(now + ms(200)).retry_after, ms(300));
    }

    #[test]
    fn slow_rate_gives_retry_after_in_whole_seconds_rounded_up() {
        let bucket = TokenBucket::new(0.4, 1); // a token every 2.5 s
        let now = Instant::now();
        assert!(bucket.try_acquire(now).allowed);
        let rejected = bucket.try_acquire(now);
        assert_eq!(rejected.retry_after, ms(2500));
        assert_eq!(rejected.retry_after_secs(), 3);
    }

    #[test]
    fn tokens_refill_as_time_passes_up_to_the_burst() {
        let bucket = TokenBucket::new(10.0, 5);
        let now = Instant::now();
        for _ in 0..5 {
            assert!(bucket.try_acquire(now).allowed);
        }
        assert!(!bucket.try_acquire(now).allowed);
        // 250 ms: two and a half tokens back, two usable.
        let later = now + ms(250);
        assert_eq!(bucket.try_acquire(later).remaining, 1);
        assert_eq!(bucket.try_acquire(later).remaining, 0);
        assert_eq!(bucket.try_acquire(later).retry_after, ms(50));
        // An hour idle refills the bucket to its burst, not beyond.
        let much_later = now + Duration::from_secs(3600);
        assert_eq!(bucket.try_acquire(much_later).remaining, 4);
    }

    #[test]
    fn peek_takes_nothing() {
        let bucket = TokenBucket::new(1.0, 2);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(bucket.peek(now).remaining, 1);
        }
        assert_eq!(bucket.try_acquire(now).remaining, 1);
        assert_eq!(bucket.peek(now).remaining, 0);
    }

    #[test]
    fn instants_before_the_bucket_count_as_its_start() {
        let before = Instant::now();
        let bucket = TokenBucket::new(1.0, 1);
        assert!(bucket.try_acquire(before).allowed);
        assert!(!bucket.try_acquire(before).allowed);
    }

    #[test]
    fn concurrent_acquisition_never_exceeds_the_burst() {
        const BURST: u32 = 1000;
        let bucket = TokenBucket::new(1.0, BURST);
        let clients = ClientLimiter::new(1.0, BURST, 10);
        let now = Instant::now();
        let (from_bucket, from_clients) = (AtomicU32::new(0), AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..500 {
                        if bucket.try_acquire(now).allowed {
                            from_bucket.fetch_add(1, Ordering::Relaxed);
                        }
                        if clients.try_acquire(ip(1), now).allowed {
                            from_clients.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        // 4000 attempts at one instant: exactly the burst gets through, not one more.
        assert_eq!(from_bucket.into_inner(), BURST);
        assert_eq!(from_clients.into_inner(), BURST);
    }

    #[test]
    fn two_clients_have_independent_buckets() {
        let limiter = ClientLimiter::new(1.0, 2, 100);
        let now = Instant::now();
        let (a, b) = (ip(1), ip(2));
        assert!(limiter.try_acquire(a, now).allowed);
        assert!(limiter.try_acquire(a, now).allowed);
        assert!(!limiter.try_acquire(a, now).allowed);
        let d = limiter.try_acquire(b, now);
        assert!(d.allowed);
        assert_eq!(d.remaining, 1, "b's bucket is untouched by a's requests");
        assert!(!limiter.try_acquire(a, now + ms(999)).allowed);
        assert!(limiter.try_acquire(a, now + ms(1000)).allowed);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_same_client() {
        let limiter = ClientLimiter::new(1.0, 1, 100);
        let now = Instant::now();
        let v4 = Ipv4Addr::new(203, 0, 113, 9);
        assert!(limiter.try_acquire(IpAddr::V4(v4), now).allowed);
        assert!(!limiter.try_acquire(IpAddr::V6(v4.to_ipv6_mapped()), now).allowed);
        assert!(limiter.try_acquire(IpAddr::V6(Ipv6Addr::LOCALHOST), now).allowed);
    }

    #[test]
    fn distinct_keys_never_exceed_max_entries() {
        let limiter = ClientLimiter::new(1.0, 1, 100_000);
        let now = Instant::now();
        for n in 0..200_000 {
            assert!(limiter.try_acquire(ip(n), now).allowed, "a new client has a full bucket");
        }
        assert_eq!(limiter.entries(), 100_000, "the table is full and no fuller");
        // A small bound that does not divide among the shards is still exact.
        let small = ClientLimiter::new(1.0, 1, 100);
        for n in 0..1000 {
            small.try_acquire(ip(n), now);
        }
        assert_eq!(small.entries(), 100);
        let tiny = ClientLimiter::new(1.0, 1, 0);
        tiny.try_acquire(ip(1), now);
        tiny.try_acquire(ip(2), now);
        assert_eq!(tiny.entries(), 1);
    }

    /// A shard of `capacity` holding `clients` with the given TATs, as inserted at time 0.
    fn shard_with(capacity: usize, tats: &[u64]) -> Shard {
        let mut shard = Shard::new(capacity);
        for (n, &tat) in tats.iter().enumerate() {
            shard.insert(ip(n as u32), tat, 0);
        }
        shard
    }

    fn holds(shard: &Shard, n: u32) -> bool {
        shard.index.contains_key(&ip(n))
    }

    fn touch(shard: &mut Shard, n: u32) {
        let i = shard.index[&ip(n)] as usize;
        shard.slots[i].referenced = true;
    }

    #[test]
    fn eviction_takes_an_unused_entry_before_a_busy_one() {
        let mut shard = shard_with(3, &[100, 100, 100]);
        touch(&mut shard, 0);
        touch(&mut shard, 1);
        shard.insert(ip(3), 100, 50);
        assert!(holds(&shard, 0) && holds(&shard, 1) && holds(&shard, 3));
        assert!(!holds(&shard, 2), "the one client not seen again was replaced");
        assert_eq!((shard.slots.len(), shard.index.len()), (3, 3));
    }

    #[test]
    fn eviction_takes_a_refilled_entry_even_when_recently_used() {
        let mut shard = shard_with(3, &[100, 10, 100]);
        for n in 0..3 {
            touch(&mut shard, n);
        }
        // At 50 client 1's bucket is full again (TAT 10): replacing it loses nothing, so it goes
        // although it was used since the hand last passed; client 0, used and still owing,
        // only loses its bit.
        shard.insert(ip(3), 100, 50);
        assert!(!holds(&shard, 1));
        assert!(holds(&shard, 0) && holds(&shard, 2) && holds(&shard, 3));
    }

    #[test]
    fn an_evicted_busy_client_comes_back_with_a_full_bucket() {
        // max_entries 1: one shard of one entry.
        let limiter = ClientLimiter::new(1.0, 2, 1);
        let now = Instant::now();
        let (busy, other) = (ip(1), ip(2));
        assert!(limiter.try_acquire(busy, now).allowed);
        assert!(limiter.try_acquire(busy, now).allowed);
        assert!(!limiter.try_acquire(busy, now).allowed, "busy's bucket is empty");
        assert!(limiter.try_acquire(other, now).allowed);
        assert_eq!(limiter.entries(), 1);
        // Fail-open: busy was pushed out, and is let through again.
        assert_eq!(limiter.try_acquire(busy, now).remaining, 1);
    }

    #[test]
    fn busy_clients_survive_a_flood_of_one_off_addresses() {
        let limiter = ClientLimiter::new(1.0, 1000, 64 * 16);
        let now = Instant::now();
        let busy: Vec<IpAddr> = (0..32).map(|n| ip(0xC000_0200 + n)).collect();
        for round in 0..1000u32 {
            for &client in &busy {
                limiter.try_acquire(client, now);
            }
            for n in 0..16 {
                limiter.try_acquire(ip(0x0A00_0000 + round * 16 + n), now);
            }
        }
        // Each busy client sent 1000 requests with a burst of 1000: none was forgotten, so the
        // next one is rejected.
        for &client in &busy {
            assert!(!limiter.try_acquire(client, now).allowed, "{client} was evicted");
        }
    }

    #[test]
    fn limiters_are_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<TokenBucket>();
        send_sync::<ClientLimiter>();
        send_sync::<RateLimiter>();
    }

    #[test]
    fn counters_add_up() {
        let config = RateLimitConfig { client_rate: 1.0, client_burst: 3, ..RateLimitConfig::default() };
        let limiter = RateLimiter::new(&config).unwrap();
        let now = Instant::now();
        for n in 0..10 {
            limiter.check(ip(n % 2), now);
        }
        let s = limiter.snapshot();
        assert_eq!((s.allowed_requests, s.rejected_requests), (6, 4));
        assert_eq!(s.total_requests, s.allowed_requests + s.rejected_requests);
        assert_eq!(limiter.total_requests(), 10);
        assert_eq!(limiter.entries(), 2);
    }

    #[test]
    fn both_limits_off_allows_and_counts_everything() {
        let limiter = RateLimiter::new(&RateLimitConfig::default()).unwrap();
        assert!(!limiter.is_enabled());
        let now = Instant::now();
        for n in 0..100 {
            assert_eq!(limiter.check(ip(n), now), Decision::UNLIMITED);
        }
        assert_eq!(limiter.snapshot().total_requests, 100);
        assert_eq!(limiter.rejected_requests(), 0);
        assert_eq!(limiter.entries(), 0);
    }

    #[test]
    fn snapshot_serializes_as_the_seeds_object() {
        let config = RateLimitConfig { rate: 1.0, burst: 1, ..RateLimitConfig::default() };
        let limiter = RateLimiter::new(&config).unwrap();
        let now = Instant::now();
        limiter.check(ip(1), now);
        limiter.check(ip(1), now);
        assert_eq!(
            serde_json::to_string(&limiter.snapshot()).unwrap(),
            r#"{"type":"token_bucket","total_requests":2,"allowed_requests":1,"rejected_requests":1}"#
        );
    }

    #[test]
    fn global_rejection_consumes_no_client_token() {
        let config = RateLimitConfig { rate: 1.0, burst: 1, client_rate: 1.0, client_burst: 1, max_clients: 10 };
        let limiter = RateLimiter::new(&config).unwrap();
        let now = Instant::now();
        let (a, b) = (ip(1), ip(2));
        assert!(limiter.check(a, now).allowed, "takes the one global token");
        let rejected = limiter.check(b, now);
        assert!(!rejected.allowed, "global bucket empty");
        assert_eq!(rejected.retry_after, ms(1000));
        assert_eq!(limiter.entries(), 1, "b got no entry: its token was not taken");
        // Once the global bucket refills, b still has its own full bucket.
        assert_eq!(
            limiter.check(b, now + ms(1000)),
            Decision { allowed: true, limit: 1, remaining: 0, retry_after: Duration::ZERO }
        );
    }

    #[test]
    fn client_rejection_consumes_no_global_token() {
        let config = RateLimitConfig { rate: 1.0, burst: 2, client_rate: 1.0, client_burst: 1, max_clients: 10 };
        let limiter = RateLimiter::new(&config).unwrap();
        let now = Instant::now();
        let (greedy, polite) = (ip(1), ip(2));
        assert!(limiter.check(greedy, now).allowed);
        for _ in 0..100 {
            assert!(!limiter.check(greedy, now).allowed);
        }
        assert!(limiter.check(polite, now).allowed, "greedy's rejections left the second global token");
    }

    #[test]
    fn the_stricter_answer_is_reported() {
        let config = RateLimitConfig { rate: 1.0, burst: 5, client_rate: 0.25, client_burst: 2, max_clients: 10 };
        let limiter = RateLimiter::new(&config).unwrap();
        let now = Instant::now();
        let d = limiter.check(ip(1), now);
        assert_eq!((d.limit, d.remaining), (2, 1), "the client has fewer left than the global bucket");
        for n in 2..5 {
            limiter.check(ip(n), now);
        }
        let d = limiter.check(ip(5), now);
        assert_eq!((d.limit, d.remaining), (5, 0), "now the global bucket has fewer");
        // The client still has a token, the global bucket none: the global answer.
        let d = limiter.check(ip(1), now);
        assert_eq!((d.allowed, d.limit, d.retry_after), (false, 5, Duration::from_secs(1)));
    }

    #[test]
    fn when_both_reject_the_later_retry_is_reported() {
        for (rate, client_rate, expected) in [(1.0, 0.25, 4), (0.1, 1.0, 10)] {
            let config = RateLimitConfig { rate, burst: 1, client_rate, client_burst: 1, max_clients: 10 };
            let limiter = RateLimiter::new(&config).unwrap();
            let now = Instant::now();
            assert!(limiter.check(ip(1), now).allowed);
            let d = limiter.check(ip(1), now);
            assert!(!d.allowed);
            assert_eq!(d.retry_after, Duration::from_secs(expected), "rate {rate}, client_rate {client_rate}");
        }
    }

    #[test]
    fn invalid_rates_are_refused_and_default_bursts_follow_the_rate() {
        for bad in [f64::NAN, f64::INFINITY, -0.5] {
            let config = RateLimitConfig { client_rate: bad, ..RateLimitConfig::default() };
            assert_eq!(RateLimiter::new(&config).unwrap_err().field, "client_rate");
        }
        let config = RateLimitConfig { rate: 0.1, client_rate: 7.2, ..RateLimitConfig::default() };
        assert_eq!((config.effective_burst(), config.effective_client_burst()), (1, 8));
        let limiter = RateLimiter::new(&config).unwrap();
        assert!(limiter.is_enabled());
    }

    /// Resident memory of this process in bytes, from `/proc/self/status` (Linux).
    fn rss_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    #[test]
    fn memory_per_client_entry_is_small() {
        const CLIENTS: u32 = 200_000;
        let Some(before) = rss_bytes() else { return };
        let limiter = ClientLimiter::new(1.0, 1, CLIENTS as usize);
        let now = Instant::now();
        for n in 0..CLIENTS {
            limiter.try_acquire(ip(n.wrapping_mul(2_654_435_761)), now);
        }
        let after = rss_bytes().unwrap_or(before);
        // Shards fill unevenly, so a few evict before the table as a whole is full.
        let entries = limiter.entries() as u64;
        assert!(entries > u64::from(CLIENTS) * 9 / 10, "{entries} entries");
        let per_entry = after.saturating_sub(before) / entries;
        eprintln!("rate limit: {per_entry} bytes of RSS per client entry ({entries} entries)");
        // About 60 by construction (a 32-byte slot plus a 24-byte map entry at hashbrown's load
        // factor); other tests running at the same time can only add a little noise.
        assert!(per_entry < 512, "{per_entry} bytes per entry");
    }
}
