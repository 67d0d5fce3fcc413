//! One backend's idle connections, kept by us rather than by ureq (whose pool is off): checkout
//! and return cost the same with 3 idle connections or 3,000, and no lock is shared with any
//! other backend.
//!
//! As Go's `net/http` Transport keeps them: one list per backend, the most recently used at the
//! end and taken first (LIFO). Under steady load the same few connections stay warm, and the
//! surplus a burst opened sinks to the front, unused, until it is older than the idle timeout
//! and is closed (each return looks at the front). A connection goes back only when ureq read
//! its answer to the end (it then asks [`Transport::is_open`], and we remember the answer);
//! one dropped in the middle of an exchange is closed.
//!
//! ```text
//!   front (oldest)                                back (most recent)
//!   [ idle 3.9 s ] [ idle 2 s ] ... [ idle 1 ms ] [ idle 0.1 ms ]  <- take / put
//!     ^ closed once older than upstream_keepalive_timeout
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// How many idle connections a backend keeps, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleLimits {
    /// Most idle connections kept (nginx's `keepalive N`); beyond it the least recently used
    /// is closed.
    pub max: usize,
    /// An idle connection older than this is closed, not reused (nginx's upstream
    /// `keepalive_timeout`, HAProxy's `pool-purge-delay`).
    pub timeout: Duration,
}

/// How a backend's requests got their connections, across reloads (kept by the backend).
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    opened: AtomicU64,
    reused: AtomicU64,
}

impl ConnectionCounts {
    /// New connections opened.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Requests sent on an idle connection taken again.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }
}

struct Idle {
    transport: Box<dyn Transport>,
    since: Instant,
}

/// A backend's idle connections, most recently used last.
pub(crate) struct IdleConnections {
    idle: Mutex<VecDeque<Idle>>,
    limits: IdleLimits,
    /// After a shutdown nothing is kept and nothing is handed out.
    closed: AtomicBool,
    /// How many are idle now (read without the lock, for statistics).
    count: AtomicUsize,
    counts: Arc<ConnectionCounts>,
}

impl IdleConnections {
    /// An empty set with these limits, counting into `counts`.
    pub(crate) fn new(limits: IdleLimits, counts: Arc<ConnectionCounts>) -> IdleConnections {
        IdleConnections {
            idle: Mutex::new(VecDeque::new()),
            limits,
            closed: AtomicBool::new(false),
            count: AtomicUsize::new(0),
            counts,
        }
    }

    /// How many connections are idle now.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The most recently used idle connection that is still good, if any. Each candidate is
    /// probed outside the lock (a connection the backend closed while it was idle, or one it
    /// sent bytes on unasked, is closed and the next one tried).
    pub(crate) fn take(&self, now: Instant) -> Option<Box<dyn Transport>> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        loop {
            let (candidate, expired) = {
                let mut idle = self.lock();
                let expired = self.expire(&mut idle, now);
                let candidate = idle.pop_back();
                self.count.store(idle.len(), Ordering::Relaxed);
                (candidate, expired)
            };
            // Closing takes a system call each: not under the lock.
            drop(expired);
            let mut candidate = candidate?;
            if candidate.transport.is_open() {
                self.counts.reused.fetch_add(1, Ordering::Relaxed);
                return Some(candidate.transport);
            }
        }
    }

    /// Keeps a connection whose answer was read to the end; the least recently used goes when
    /// more than the limit are idle, and any that waited longer than the timeout.
    pub(crate) fn put(&self, transport: Box<dyn Transport>, now: Instant) {
        if self.closed.load(Ordering::Relaxed) || self.limits.max == 0 {
            return;
        }
        let surplus = {
            let mut idle = self.lock();
            // Again under the lock close() drains with: one put after it would stay forever.
            if self.closed.load(Ordering::Relaxed) {
                drop(idle);
                return;
            }
            idle.push_back(Idle { transport, since: now });
            let mut surplus = self.expire(&mut idle, now);
            while idle.len() > self.limits.max {
                surplus.extend(idle.pop_front());
            }
            self.count.store(idle.len(), Ordering::Relaxed);
            surplus
        };
        drop(surplus);
    }

    /// Closes the connections that have been idle longer than the timeout (a backend that gets
    /// no more requests does not keep its connections open forever).
    pub(crate) fn close_expired(&self, now: Instant) {
        let expired = {
            let mut idle = self.lock();
            let expired = self.expire(&mut idle, now);
            self.count.store(idle.len(), Ordering::Relaxed);
            expired
        };
        drop(expired);
    }

    /// Closes every idle connection, and keeps none from now on.
    pub(crate) fn close(&self) {
        let all = {
            let mut idle = self.lock();
            self.closed.store(true, Ordering::Relaxed);
            std::mem::take(&mut *idle)
        };
        self.count.store(0, Ordering::Relaxed);
        drop(all);
    }

    /// The expired ones, taken from the front: the oldest are there, so this stops at the
    /// first that is young enough (one comparison when none expired).
    fn expire(&self, idle: &mut VecDeque<Idle>, now: Instant) -> Vec<Idle> {
        let mut expired = Vec::new();
        while idle.front().is_some_and(|c| now.saturating_duration_since(c.since) >= self.limits.timeout) {
            expired.extend(idle.pop_front());
        }
        expired
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleConnections").field("idle", &self.len()).field("limits", &self.limits).finish()
    }
}

/// The connector of one backend's agent: an idle connection when there is a good one, else a
/// new one from the chain it wraps (TCP, then TLS for an HTTPS backend).
#[derive(Debug)]
pub(crate) struct PooledConnector<C> {
    pub inner: C,
    pub idle: Arc<IdleConnections>,
}

impl<C: Connector> Connector for PooledConnector<C> {
    type Out = PooledTransport;

    fn connect(&self, details: &ConnectionDetails, _chained: Option<()>) -> Result<Option<Self::Out>, ureq::Error> {
        let transport = match self.idle.take(Instant::now()) {
            Some(transport) => transport,
            None => {
                let made = self.inner.connect(details, None)?.ok_or(ureq::Error::ConnectionFailed)?;
                self.idle.counts.opened.fetch_add(1, Ordering::Relaxed);
                Box::new(made)
            }
        };
        Ok(Some(PooledTransport { inner: Some(transport), home: Arc::clone(&self.idle), reusable: false }))
    }
}

/// A connection on loan from its backend's [`IdleConnections`]: it goes back there when ureq
/// lets go of it after reading an answer to its end, and is closed otherwise.
#[derive(Debug)]
pub(crate) struct PooledTransport {
    inner: Option<Box<dyn Transport>>,
    home: Arc<IdleConnections>,
    /// ureq finished an exchange on it and asked whether it is still open (what it does only
    /// before it would pool a connection), and it was; any I/O since clears it.
    reusable: bool,
}

impl PooledTransport {
    fn inner(&mut self) -> &mut Box<dyn Transport> {
        // Present until drop.
        self.inner.as_mut().expect("a pooled transport is used only before it is dropped")
    }
}

impl Transport for PooledTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner().buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.reusable = false;
        self.inner().transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.reusable = false;
        self.inner().await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        let open = self.inner().is_open();
        self.reusable = open;
        open
    }

    fn is_tls(&self) -> bool {
        self.inner.as_ref().is_some_and(|t| t.is_tls())
    }
}

impl Drop for PooledTransport {
    fn drop(&mut self) {
        if let Some(transport) = self.inner.take().filter(|_| self.reusable) {
            self.home.put(transport, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::unversioned::transport::LazyBuffers;

    /// A connection that knows its number (read back through its `Debug` output) and whether
    /// it still counts as open.
    #[derive(Debug)]
    struct Fake {
        #[allow(dead_code)]
        id: usize,
        open: Arc<AtomicBool>,
        buffers: LazyBuffers,
    }

    impl Transport for Fake {
        fn buffers(&mut self) -> &mut dyn Buffers {
            &mut self.buffers
        }
        fn transmit_output(&mut self, _: usize, _: NextTimeout) -> Result<(), ureq::Error> {
            Ok(())
        }
        fn await_input(&mut self, _: NextTimeout) -> Result<bool, ureq::Error> {
            Ok(false)
        }
        fn is_open(&mut self) -> bool {
            self.open.load(Ordering::Relaxed)
        }
    }

    fn fake(id: usize) -> (Box<dyn Transport>, Arc<AtomicBool>) {
        let open = Arc::new(AtomicBool::new(true));
        (Box::new(Fake { id, open: Arc::clone(&open), buffers: LazyBuffers::new(16, 16) }), open)
    }

    fn id_of(transport: &dyn Transport) -> usize {
        format!("{transport:?}").split("id: ").nth(1).and_then(|s| s.split(',').next()).unwrap().parse().unwrap()
    }

    fn idle(limits: IdleLimits) -> IdleConnections {
        IdleConnections::new(limits, Arc::default())
    }

    const LIMITS: IdleLimits = IdleLimits { max: 8, timeout: Duration::from_secs(4) };

    #[test]
    fn the_most_recently_returned_connection_is_taken_first() {
        let pool = idle(LIMITS);
        let now = Instant::now();
        for id in 1..=3 {
            pool.put(fake(id).0, now);
        }
        assert_eq!(id_of(&*pool.take(now).unwrap()), 3);
        assert_eq!(id_of(&*pool.take(now).unwrap()), 2);
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.counts.reused(), 2);
    }

    #[test]
    fn a_connection_closed_while_idle_is_passed_over() {
        let pool = idle(LIMITS);
        let now = Instant::now();
        pool.put(fake(1).0, now);
        let (second, open) = fake(2);
        pool.put(second, now);
        open.store(false, Ordering::Relaxed);
        assert_eq!(id_of(&*pool.take(now).unwrap()), 1);
        assert!(pool.take(now).is_none());
    }

    #[test]
    fn beyond_the_limit_the_least_recently_used_is_closed() {
        let pool = idle(IdleLimits { max: 2, ..LIMITS });
        let now = Instant::now();
        for id in 1..=5 {
            pool.put(fake(id).0, now);
        }
        assert_eq!(pool.len(), 2);
        assert_eq!(id_of(&*pool.take(now).unwrap()), 5);
        assert_eq!(id_of(&*pool.take(now).unwrap()), 4);
        assert!(pool.take(now).is_none());
    }

    #[test]
    fn under_steady_load_a_bursts_surplus_ages_out() {
        let pool = idle(LIMITS);
        let start = Instant::now();
        // A burst left five idle; then one request at a time uses the most recent only.
        for id in 1..=5 {
            pool.put(fake(id).0, start);
        }
        let mut now = start;
        for _ in 0..100 {
            now += Duration::from_millis(50);
            let in_use = pool.take(now).unwrap();
            assert_eq!(id_of(&*in_use), 5);
            pool.put(in_use, now);
        }
        // Five seconds on: the four never used were older than the timeout and are gone.
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn an_idle_connection_older_than_the_timeout_is_not_reused() {
        let pool = idle(LIMITS);
        let start = Instant::now();
        pool.put(fake(1).0, start);
        assert!(pool.take(start + Duration::from_secs(4)).is_none());
        pool.put(fake(2).0, start);
        pool.close_expired(start + Duration::from_secs(5));
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn after_close_nothing_is_kept_or_handed_out() {
        let pool = idle(LIMITS);
        let now = Instant::now();
        pool.put(fake(1).0, now);
        pool.close();
        pool.put(fake(2).0, now);
        assert!(pool.take(now).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn a_transport_goes_home_only_after_ureq_found_it_open() {
        let home = Arc::new(idle(LIMITS));
        let lent = |id| PooledTransport { inner: Some(fake(id).0), home: Arc::clone(&home), reusable: false };
        // Dropped in the middle of an exchange: closed.
        drop(lent(1));
        assert_eq!(home.len(), 0);
        // Read to the end (ureq asks is_open before it would pool it): kept.
        let mut finished = lent(2);
        assert!(finished.is_open());
        drop(finished);
        assert_eq!(home.len(), 1);
        // Asked, then used again (a later read): not kept unless asked again.
        let mut reused = lent(3);
        assert!(reused.is_open());
        let _ = reused.await_input(NextTimeout::default());
        drop(reused);
        assert_eq!(home.len(), 1);
    }
}
