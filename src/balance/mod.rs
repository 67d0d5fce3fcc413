//! Selection algorithms: which backend serves the next request.
//!
//! An algorithm is built from a membership snapshot (`&[Member]`) and picks an
//! index into that slice. It knows nothing of HTTP, health or circuits: the
//! caller passes a `usable` predicate to [`Algorithm::select`], and the
//! algorithm offers members in its own order of preference until one is
//! accepted. Disabled, unhealthy, open-circuit and already-tried backends are
//! therefore skipped (failover) without any code in the algorithms.
//!
//! Six algorithms, one file each, all usable on their own:
//!
//! | kind | type | order of preference |
//! |---|---|---|
//! | `round_robin` | [`RoundRobin`] | next in turn (weights ignored) |
//! | `weighted_round_robin` | [`WeightedRoundRobin`] | nginx's smooth weighted round robin |
//! | `ip_hash` | [`IpHash`] | consistent hashing of the client IP (ketama ring) |
//! | `least_connections` | [`LeastConnections`] | fewest in-flight requests ÷ weight |
//! | `p2c` | [`P2c`] | the less loaded of two random members (power of two choices) |
//! | `peak_ewma` | [`PeakEwma`] | the cheaper of two random members: response time × (in flight + 1) ÷ weight |
//!
//! [`failover::pick`] walks an algorithm's preference with what the caller knows of each
//! member (enabled, healthy, breaker, slow start): the proxy and `lb-sync simulate` both pick
//! through it.
//!
//! A weight of 0 is treated as 1 by every algorithm: a member that should get
//! no traffic is one the caller's `usable` refuses, not one with weight 0.
//!
//! ```
//! use lb_sync::balance::{AlgorithmKind, Member, PickContext};
//!
//! let members = vec![Member::new("a", 1), Member::new("b", 1), Member::new("c", 1)];
//! let algo = AlgorithmKind::RoundRobin.build(&members);
//! let ctx = PickContext::idle();
//! // Member 1 is down: the others alternate.
//! let picks: Vec<_> = (0..4)
//!     .map(|_| algo.select(&ctx, &mut |i| i != 1).unwrap())
//!     .collect();
//! assert_eq!(picks, [0, 2, 0, 2]);
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod failover;
pub mod hash;
mod ip_hash;
mod least_connections;
mod p2c;
pub mod peak_ewma;
pub mod random;
mod round_robin;
mod weighted_round_robin;

pub use ip_hash::{IpHash, MAX_RING_WEIGHT, POINTS_PER_WEIGHT};
pub use least_connections::LeastConnections;
pub use p2c::P2c;
pub use peak_ewma::{PeakEwma, ResponseTime, ResponseTimes};
pub use round_robin::RoundRobin;
pub use weighted_round_robin::{WeightedRoundRobin, MAX_SCHEDULE_LEN};

/// One backend as an algorithm sees it: a stable id (used by ip_hash so
/// membership changes are consistent) and a weight >= 1 (0 is read as 1).
///
/// ```
/// use lb_sync::balance::Member;
///
/// let m = Member::new("backend1", 2);
/// assert_eq!(m, Member { id: "backend1".to_string(), weight: 2 });
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Stable identity of the backend (e.g. its name or `host:port`). Ids
    /// should be unique within a membership.
    pub id: String,
    /// Relative share of traffic; 0 is treated as 1.
    pub weight: u32,
}

impl Member {
    /// A member with the given id and weight.
    #[must_use]
    pub fn new(id: impl Into<String>, weight: u32) -> Self {
        Member { id: id.into(), weight }
    }
}

/// What a pick may look at besides the membership.
///
/// ```
/// use lb_sync::balance::PickContext;
///
/// let loads = [3usize, 1, 2];
/// let ip = [192u8, 0, 2, 7];
/// let ctx = PickContext { hash_key: &ip, in_flight: &|i| loads[i], response_times: None };
/// assert_eq!((ctx.in_flight)(1), 1);
/// ```
pub struct PickContext<'a> {
    /// Bytes hashed by ip_hash (the client IP: 4 bytes for IPv4, 16 for
    /// IPv6). Empty for others.
    pub hash_key: &'a [u8],
    /// In-flight requests of member `i` (read by least_connections, p2c
    /// and peak_ewma).
    pub in_flight: &'a dyn Fn(usize) -> usize,
    /// Each member's response-time estimate (read by peak_ewma, which also
    /// starts an unmeasured one at the median). `None`: nothing measured.
    pub response_times: Option<&'a dyn ResponseTimes>,
}

/// `in_flight` of a context that has no load information.
const NO_LOAD: &dyn Fn(usize) -> usize = &|_| 0;

impl PickContext<'static> {
    /// A context with an empty hash key and every member idle (0 in flight).
    #[must_use]
    pub fn idle() -> Self {
        PickContext { hash_key: &[], in_flight: NO_LOAD, response_times: None }
    }
}

impl<'a> PickContext<'a> {
    /// A context with the given hash key and every member idle: what ip_hash
    /// needs.
    #[must_use]
    pub fn with_key(hash_key: &'a [u8]) -> Self {
        PickContext { hash_key, in_flight: NO_LOAD, response_times: None }
    }
}

impl fmt::Debug for PickContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickContext").field("hash_key", &self.hash_key).finish_non_exhaustive()
    }
}

/// A selection algorithm over a fixed membership snapshot (rebuilt by the
/// caller whenever membership or weights change).
pub trait Algorithm: Send + Sync {
    /// Walks the members in this algorithm's order of preference and returns
    /// the first index (into the `members` slice it was built from) for which
    /// `usable` returns true; None when no member is usable. `usable` is how
    /// the caller skips disabled/unhealthy/open-circuit/already-tried
    /// backends, so failover needs no code in any algorithm. Each member is
    /// offered at most once per call (bounded work).
    fn select(&self, ctx: &PickContext<'_>, usable: &mut dyn FnMut(usize) -> bool) -> Option<usize>;

    /// The seed's name of the algorithm (`round_robin`, ...).
    fn name(&self) -> &'static str;
}

/// The six algorithms, by name (as written in configuration: snake_case).
///
/// ```
/// use lb_sync::balance::{AlgorithmKind, Member, PickContext};
///
/// let kind: AlgorithmKind = "weighted_round_robin".parse().unwrap();
/// assert_eq!(kind.display_name(), "WeightedRoundRobinBalancer");
/// let algo = kind.build(&[Member::new("a", 1), Member::new("b", 2)]);
/// assert_eq!(algo.name(), "weighted_round_robin");
/// assert_eq!(algo.select(&PickContext::idle(), &mut |_| true), Some(1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmKind {
    /// [`RoundRobin`].
    RoundRobin,
    /// [`WeightedRoundRobin`].
    WeightedRoundRobin,
    /// [`IpHash`].
    IpHash,
    /// [`LeastConnections`].
    LeastConnections,
    /// [`P2c`].
    P2c,
    /// [`PeakEwma`].
    PeakEwma,
}

impl AlgorithmKind {
    /// Every kind, in documentation order.
    pub const ALL: [AlgorithmKind; 6] = [
        AlgorithmKind::RoundRobin,
        AlgorithmKind::WeightedRoundRobin,
        AlgorithmKind::IpHash,
        AlgorithmKind::LeastConnections,
        AlgorithmKind::P2c,
        AlgorithmKind::PeakEwma,
    ];

    /// The configuration name: `round_robin`, `weighted_round_robin`,
    /// `ip_hash`, `least_connections`, `p2c` or `peak_ewma`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            AlgorithmKind::RoundRobin => "round_robin",
            AlgorithmKind::WeightedRoundRobin => "weighted_round_robin",
            AlgorithmKind::IpHash => "ip_hash",
            AlgorithmKind::LeastConnections => "least_connections",
            AlgorithmKind::P2c => "p2c",
            AlgorithmKind::PeakEwma => "peak_ewma",
        }
    }

    /// The seed's class name (`RoundRobinBalancer`,
    /// `WeightedRoundRobinBalancer`, `IPHashBalancer`,
    /// `LeastConnectionsBalancer`), and in the same style `P2CBalancer` and
    /// `PeakEWMABalancer`.
    #[must_use]
    pub fn display_name(self) -> &'static str {
        match self {
            AlgorithmKind::RoundRobin => "RoundRobinBalancer",
            AlgorithmKind::WeightedRoundRobin => "WeightedRoundRobinBalancer",
            AlgorithmKind::IpHash => "IPHashBalancer",
            AlgorithmKind::LeastConnections => "LeastConnectionsBalancer",
            AlgorithmKind::P2c => "P2CBalancer",
            AlgorithmKind::PeakEwma => "PeakEWMABalancer",
        }
    }

    /// Builds this algorithm over a membership snapshot (p2c and peak_ewma
    /// draw from each calling thread's own random stream).
    #[must_use]
    pub fn build(self, members: &[Member]) -> Box<dyn Algorithm> {
        match self {
            AlgorithmKind::P2c => Box::new(P2c::new(members)),
            AlgorithmKind::PeakEwma => Box::new(PeakEwma::new(members)),
            _ => self.build_seeded(members, 0),
        }
    }

    /// Builds this algorithm with a fixed seed for its random draws (p2c and
    /// peak_ewma; the others draw nothing): the same seed, the same picks.
    #[must_use]
    pub fn build_seeded(self, members: &[Member], seed: u64) -> Box<dyn Algorithm> {
        match self {
            AlgorithmKind::RoundRobin => Box::new(RoundRobin::new(members)),
            AlgorithmKind::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(members)),
            AlgorithmKind::IpHash => Box::new(IpHash::new(members)),
            AlgorithmKind::LeastConnections => Box::new(LeastConnections::new(members)),
            AlgorithmKind::P2c => Box::new(P2c::with_seed(members, seed)),
            AlgorithmKind::PeakEwma => Box::new(PeakEwma::with_seed(members, seed)),
        }
    }
}

impl fmt::Display for AlgorithmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing an unknown algorithm name.
///
/// ```
/// use lb_sync::balance::AlgorithmKind;
///
/// let err = "random".parse::<AlgorithmKind>().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "unknown algorithm 'random' (expected one of: round_robin, \
///      weighted_round_robin, ip_hash, least_connections, p2c, peak_ewma)"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseAlgorithmError {
    name: String,
}

impl ParseAlgorithmError {
    /// The name that was not recognised.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ParseAlgorithmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown algorithm '{}' (expected one of: ", self.name)?;
        for (i, kind) in AlgorithmKind::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(kind.name())?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for ParseAlgorithmError {}

impl FromStr for AlgorithmKind {
    type Err = ParseAlgorithmError;

    /// Parses a configuration name exactly (`round_robin`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AlgorithmKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| ParseAlgorithmError { name: s.to_string() })
    }
}

/// A weight as the algorithms use it: 0 counts as 1.
fn effective_weight(weight: u32) -> u32 {
    weight.max(1)
}

/// A shared position counter, on its own cache line(s) so that the contended
/// `fetch_add` does not also evict the read-only data next to it.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cursor(AtomicUsize);

impl Cursor {
    /// Takes the next position. Relaxed: only uniqueness of the values
    /// matters, nothing is published through the counter.
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::Relaxed)
    }

    /// Consumes `k` positions at once (those a failed-over pick walked over).
    fn advance(&self, k: usize) {
        self.0.fetch_add(k, Ordering::Relaxed);
    }
}

/// Which members a pick has already offered: a set used only once the first
/// offer was refused. Up to 256 members it lives on the stack, so failover
/// allocates only for large memberships.
struct Offered {
    inline: [u64; 4],
    heap: Vec<u64>,
}

impl Offered {
    fn new(members: usize) -> Self {
        let heap = if members > 256 { vec![0; members.div_ceil(64)] } else { Vec::new() };
        Offered { inline: [0; 4], heap }
    }

    /// Records `i`; true when it was not recorded before.
    fn insert(&mut self, i: usize) -> bool {
        let words = if self.heap.is_empty() { &mut self.inline[..] } else { &mut self.heap[..] };
        let bit = 1u64 << (i % 64);
        let word = &mut words[i / 64];
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_set_small_and_large() {
        for n in [1, 64, 256, 257, 1000] {
            let mut set = Offered::new(n);
            for i in 0..n {
                assert!(set.insert(i));
                assert!(!set.insert(i));
            }
        }
    }

    #[test]
    fn serde_names_are_the_config_names() {
        for kind in AlgorithmKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<AlgorithmKind>(&json).unwrap(), kind);
        }
    }
}
