//! The pollers as the other threads see them: where a worker gives each poller's connections
//! back, how to wake it, what a reload hands it, and what it counts.
//!
//! Each poller owns the connections it accepted for their whole life; every job carries the
//! index of its poller, and a worker returns the connection there ([`PollerLink`]). Counters
//! are per poller ([`PollerStats`]), read by the application through [`PollerGauges`].

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crossbeam_channel::Sender;
use mio::Waker;

use super::worker::Returned;
use super::Tuning;

/// One poller's ends, shared with the workers, the other pollers and the server's handle.
pub(crate) struct PollerLink {
    /// Where workers give this poller's connections back.
    pub returns: Sender<Returned>,
    pub waker: Arc<Waker>,
    /// A worker woke this poller for held requests and it has not looked at its returns since:
    /// the next worker need not (one wake per turn, not one per request).
    pub woken_for_held: AtomicBool,
    /// Another poller gave back a request of a client whose requests this one may hold: look
    /// at the held ones again.
    pub look_at_held: AtomicBool,
    /// New settings from a reload, taken at the start of this poller's next turn.
    pub tuning: Mutex<Option<Tuning>>,
    /// Where another poller at the connection cap hands a connection it just accepted, when
    /// this one has a connection idle longer to close for it.
    pub adopt: Sender<Adopted>,
    /// When this poller's longest-idle connection became idle ([`IdleSince`]): published at the
    /// end of each of its turns, and lowered by a worker that gives a connection back quietly
    /// (before the poller has looked at it).
    pub oldest_idle: AtomicU64,
    /// How `oldest_idle` is written: the same start for every poller and worker.
    pub idle_since: IdleSince,
    pub counters: PollerCounters,
}

/// A connection accepted by one poller and handed to another.
pub(crate) struct Adopted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Instants as every poller compares them: nanoseconds since the server started. The two
/// largest values say there is nothing to hand over: so that a worker's `fetch_min`-like
/// lowering works, "none" is above every instant.
#[derive(Clone, Copy)]
pub(crate) struct IdleSince(pub Instant);

impl IdleSince {
    /// Published by a poller with no idle connection (or whose oldest was just claimed).
    pub const NONE: u64 = u64::MAX - 1;
    /// Published by a stopping poller: nothing is handed to it, and no worker lowers it.
    pub const STOPPING: u64 = u64::MAX;

    pub fn encode(self, at: Option<Instant>) -> u64 {
        at.map_or(Self::NONE, |at| {
            u64::try_from(at.saturating_duration_since(self.0).as_nanos()).unwrap_or(u64::MAX).min(Self::NONE - 1)
        })
    }
}

impl PollerLink {
    pub fn new(
        returns: Sender<Returned>,
        waker: Arc<Waker>,
        adopt: Sender<Adopted>,
        idle_since: IdleSince,
    ) -> PollerLink {
        PollerLink {
            returns,
            waker,
            adopt,
            oldest_idle: AtomicU64::new(IdleSince::NONE),
            idle_since,
            woken_for_held: AtomicBool::new(false),
            look_at_held: AtomicBool::new(false),
            tuning: Mutex::new(None),
            counters: PollerCounters::default(),
        }
    }

    /// A worker gave a connection back quietly, idle since `at`: the other pollers see it at the
    /// cap before this poller's next turn lists it. Never lowers a stopping poller's value.
    /// SeqCst, after the return is sent: either the poller's look at its returns after it
    /// publishes sees this one, or this lands after its publication.
    pub fn lower_oldest_idle(&self, at: Instant) {
        let at = self.idle_since.encode(Some(at));
        let _ = self.oldest_idle.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |published| {
            (at < published && published != IdleSince::STOPPING).then_some(at)
        });
    }

    /// Wakes the poller; a poller that already exited (a stop) ignores it.
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}

/// What one poller counts, written by it (and by workers for `queued`).
#[derive(Default)]
pub(crate) struct PollerCounters {
    /// Connections open now, tunnels included.
    pub connections: AtomicUsize,
    /// Connections accepted so far.
    pub accepted: AtomicU64,
    /// TLS handshakes completed so far.
    pub handshakes: AtomicU64,
    /// Requests given to the workers so far.
    pub requests: AtomicU64,
    /// Requests of its connections waiting for a worker now: workers write it too, so it has
    /// a cache line of its own (the poller's counters are not thrown out of its cache by them).
    pub queued: OwnLine<AtomicUsize>,
}

/// A value on a cache line of its own.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct OwnLine<T>(pub T);

/// One poller's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollerStats {
    /// Client connections it has open now, tunnels included.
    pub connections: usize,
    /// Connections it accepted so far.
    pub accepted: u64,
    /// TLS handshakes it completed so far.
    pub handshakes: u64,
    /// Requests it gave to the workers so far.
    pub requests: u64,
    /// Requests of its connections waiting for a worker now.
    pub queued: usize,
}

/// Reads a running server's per-poller counters; cheap to clone, usable from any thread.
/// Empty until the server it was given to has started.
///
/// ```no_run
/// use lb_sync::server::{PollerGauges, ServerConfig};
/// let gauges = PollerGauges::default();
/// let config = ServerConfig { poller_gauges: gauges.clone(), ..ServerConfig::default() };
/// // ... Server::start(config, handler) ...
/// for (i, poller) in gauges.read().iter().enumerate() {
///     println!("poller {i}: {} connections", poller.connections);
/// }
/// # drop(config);
/// ```
#[derive(Clone, Default)]
pub struct PollerGauges(Arc<OnceLock<Arc<[PollerLink]>>>);

impl PollerGauges {
    /// Each poller's counters now, in poller order.
    pub fn read(&self) -> Vec<PollerStats> {
        let Some(pollers) = self.0.get() else { return Vec::new() };
        pollers
            .iter()
            .map(|link| {
                let c = &link.counters;
                PollerStats {
                    connections: c.connections.load(Ordering::Relaxed),
                    accepted: c.accepted.load(Ordering::Relaxed),
                    handshakes: c.handshakes.load(Ordering::Relaxed),
                    requests: c.requests.load(Ordering::Relaxed),
                    queued: c.queued.0.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Ties the gauges to a server's pollers (once: a second server given the same gauges
    /// keeps them tied to the first).
    pub(crate) fn attach(&self, pollers: &Arc<[PollerLink]>) {
        let _ = self.0.set(Arc::clone(pollers));
    }
}

impl std::fmt::Debug for PollerGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PollerGauges").field(&self.read()).finish()
    }
}

/// How many pollers a server runs by default: one per CPU this process may run on, at most 16.
///
/// ```
/// let n = lb_sync::server::default_pollers();
/// assert!((1..=16).contains(&n));
/// ```
pub fn default_pollers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16)
}
