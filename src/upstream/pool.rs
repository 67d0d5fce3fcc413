//! One backend's idle connections, kept by us rather than by ureq (whose pool is off): checkout
//! and return cost the same with 3 idle connections or 3,000, and no lock is shared with any
//! other backend.
//!
//! As Go's `net/http` Transport keeps them: one list per backend, the most recently used at the
//! end and taken first (LIFO). Under steady load the same few connections stay warm, and the
//! surplus a burst opened sinks to the front, unused, until it is older than the idle timeout
//! and is closed (each return looks at the front). A connection goes back only when its
//! exchange read the answer to the end (`exchange.rs`, which then releases it) and
//! the answer ended exactly where its framing says ([`AnswerFraming`], which we follow on the
//! bytes as they arrive); one dropped in the middle of an exchange is closed.
//!
//! A backend that sends bytes no request asked for (a second response after an answer, bytes
//! past an answer's end) is out of step with us: whatever it sends next would be taken for the
//! answer to someone else's request. Such a connection is never used again: bytes past the end
//! are seen as they arrive, bytes that come while it is idle by the probe when it is taken and
//! again right before a request's head is written on it (an answer before the request is a
//! backend fault: the request, not sent, goes on another connection). Each is counted
//! ([`ConnectionCounts::unsolicited`]). Seen once, the backend is not trusted with reuse for
//! [`DISTRUST`]: its idle connections are closed and each request gets a connection of its own,
//! closed after its answer. An extra response that comes while a later request already waits on
//! the connection cannot be told from that request's answer; after the first one is seen, no
//! later request is on such a connection.
//!
//! ```text
//!   front (oldest)                                back (most recent)
//!   [ idle 3.9 s ] [ idle 2 s ] ... [ idle 1 ms ] [ idle 0.1 ms ]  <- take / put
//!     ^ closed once older than upstream_keepalive_timeout
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{Buffers, Connector, NextTimeout, Transport};

use super::answer_framing::{AnswerFraming, MalformedAnswer};

/// How long a backend that sent bytes nobody asked for gets no connection reuse: long enough
/// that a backend out of step on every connection poisons at most one answer a minute, short
/// enough that one glitch does not cost its connection reuse for good.
pub(crate) const DISTRUST: Duration = Duration::from_secs(60);

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
    unsolicited: AtomicU64,
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

    /// Connections closed because the backend sent bytes no request asked for: after an
    /// answer's end, or while the connection was idle (a late second response). Each is a
    /// backend fault; none of those bytes reached a client.
    ///
    /// ```
    /// use lb_sync::upstream::ConnectionCounts;
    /// assert_eq!(ConnectionCounts::default().unsolicited(), 0);
    /// ```
    pub fn unsolicited(&self) -> u64 {
        self.unsolicited.load(Ordering::Relaxed)
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
    /// The backend's address, for the log.
    backend: SocketAddr,
    /// Until when (nanoseconds after `epoch`; 0: never) no connection is reused: the backend sent
    /// bytes nobody asked for.
    distrusted_until: AtomicU64,
    epoch: Instant,
}

impl IdleConnections {
    /// An empty set with these limits for the backend at `backend`, counting into `counts`.
    pub(crate) fn new(limits: IdleLimits, counts: Arc<ConnectionCounts>, backend: SocketAddr) -> IdleConnections {
        IdleConnections {
            idle: Mutex::new(VecDeque::new()),
            limits,
            closed: AtomicBool::new(false),
            count: AtomicUsize::new(0),
            counts,
            backend,
            distrusted_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The backend sent bytes no request asked for on one of its connections (which the caller
    /// closes): counted, and for [`DISTRUST`] from `now` no connection is reused; the idle
    /// ones are closed now (the backend may be out of step on them too).
    pub(crate) fn out_of_step(&self, now: Instant, what: &str) {
        self.counts.unsolicited.fetch_add(1, Ordering::Relaxed);
        let until = self.nanos(now + DISTRUST).max(1);
        let was_distrusted = self.is_distrusted(now);
        self.distrusted_until.store(until, Ordering::Relaxed);
        if was_distrusted {
            log::debug!("backend {}: {what} (again)", self.backend);
        } else {
            log::warn!("backend {}: {what}; its connections are not reused for {} s", self.backend, DISTRUST.as_secs());
        }
        let all = std::mem::take(&mut *self.lock());
        self.count.store(0, Ordering::Relaxed);
        drop(all);
    }

    /// Whether connections are not reused now ([`IdleConnections::out_of_step`]).
    fn is_distrusted(&self, now: Instant) -> bool {
        let until = self.distrusted_until.load(Ordering::Relaxed);
        until != 0 && self.nanos(now) < until
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// How many connections are idle now.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The most recently used idle connection that is still good, if any. Each candidate is
    /// probed outside the lock (a connection the backend closed while it was idle, or one it
    /// sent bytes on unasked, is closed and the next one tried).
    pub(crate) fn take(&self, now: Instant) -> Option<Box<dyn Transport>> {
        if self.closed.load(Ordering::Relaxed) || self.is_distrusted(now) {
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
        if self.closed.load(Ordering::Relaxed) || self.limits.max == 0 || self.is_distrusted(now) {
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

/// Where one backend's exchanges get their connections: an idle one when there is a good one,
/// else a new one from the connector chain it wraps (TCP, then TLS for an HTTPS backend).
#[derive(Debug)]
pub(crate) struct PooledConnector<C> {
    pub inner: C,
    pub idle: Arc<IdleConnections>,
}

impl<C: Connector> PooledConnector<C> {
    /// A connection on loan for one exchange. With `own_connection` (`upstream_reuse` safe, a
    /// client connection's first request) no idle one is taken. A new one is opened by `open`
    /// with the chain (it makes the chain's `ConnectionDetails`, which only a new connection needs).
    pub(crate) fn lend<O>(&self, own_connection: bool, open: O) -> Result<PooledTransport, ureq::Error>
    where
        O: FnOnce(&C) -> Result<Option<C::Out>, ureq::Error>,
    {
        let idle = if own_connection { None } else { self.idle.take(Instant::now()) };
        let (transport, reused) = match idle {
            Some(transport) => (transport, true),
            None => {
                let made = open(&self.inner)?.ok_or(ureq::Error::ConnectionFailed)?;
                self.idle.counts.opened.fetch_add(1, Ordering::Relaxed);
                (Box::new(made) as Box<dyn Transport>, false)
            }
        };
        Ok(PooledTransport::lent(transport, Arc::clone(&self.idle), reused))
    }
}

/// The error of a request whose connection, taken again from the idle ones, turned out to
/// hold an answer before the request was written on it (a backend fault): nothing was sent, so
/// the request may go on another connection ([`is_answer_before_request`]).
#[derive(Debug)]
struct AnswerBeforeRequest;

impl fmt::Display for AnswerBeforeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the backend sent bytes on an idle connection before the request was written on it")
    }
}

impl std::error::Error for AnswerBeforeRequest {}

/// Whether a try failed because its connection held an answer before the request was written
/// on it: nothing was sent.
pub(crate) fn is_answer_before_request(error: &ureq::Error) -> bool {
    matches!(error, ureq::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<AnswerBeforeRequest>()))
}

/// A connection on loan from its backend's [`IdleConnections`] for one exchange: it goes back
/// there when its exchange releases it after reading an answer to its end, and is closed
/// otherwise.
#[derive(Debug)]
pub(crate) struct PooledTransport {
    inner: Option<Box<dyn Transport>>,
    home: Arc<IdleConnections>,
    /// Taken from the idle ones, not opened for this exchange: checked once more for bytes
    /// nobody asked for right before the request's head is written.
    reused: bool,
    /// The exchange's answer as it arrives; `None` until the request's first bytes are written.
    answer: Option<AnswerFraming>,
}

impl PooledTransport {
    fn lent(inner: Box<dyn Transport>, home: Arc<IdleConnections>, reused: bool) -> PooledTransport {
        PooledTransport { inner: Some(inner), home, reused, answer: None }
    }

    fn inner(&mut self) -> &mut Box<dyn Transport> {
        // Present until drop.
        self.inner.as_mut().expect("a pooled transport is used only before it is dropped")
    }

    /// Ends the loan after an exchange: back to the idle ones when `keep` (the answer allows
    /// reuse), nothing is left unread in the buffer, the answer ended exactly where its framing
    /// says and the socket is still quiet (ureq's pool asks the same before it keeps one);
    /// closed otherwise.
    pub(crate) fn release(mut self, keep: bool) {
        if keep && self.inner().buffers().input().is_empty() && self.is_open() {
            if let Some(transport) = self.inner.take() {
                self.home.put(transport, Instant::now());
            }
        }
    }

    /// Whether nothing waits to be read on it: neither in ureq's buffer nor on the socket (a
    /// backend's close counts as something).
    fn is_quiet(&mut self) -> bool {
        self.inner().buffers().input().is_empty() && self.inner().is_open()
    }
}

impl Transport for PooledTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner().buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        if self.answer.is_none() {
            // The probe when it was taken came a moment ago; what arrived since would be read
            // as this request's answer.
            if self.reused && !self.is_quiet() {
                log::debug!(
                    "backend {}: an idle connection had bytes to read before the request was written on it",
                    self.home.backend
                );
                return Err(ureq::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    AnswerBeforeRequest,
                )));
            }
            let head_request = self.inner().buffers().output()[..amount].starts_with(b"HEAD ");
            self.answer = Some(AnswerFraming::new(head_request));
        }
        self.inner().transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        if let Some(why) = self.answer.as_ref().and_then(AnswerFraming::malformed) {
            return Err(malformed(why));
        }
        let before = self.inner().buffers().input().len();
        let progress = self.inner().await_input(timeout)?;
        // What arrived is appended after what ureq has not used yet.
        let Some(inner) = self.inner.as_mut() else { return Ok(progress) };
        let arrived = &inner.buffers().input()[before..];
        if let Some(answer) = self.answer.as_mut() {
            answer.received(arrived).map_err(|why| malformed(&why))?;
        }
        Ok(progress)
    }

    fn is_open(&mut self) -> bool {
        self.answer.as_ref().is_some_and(AnswerFraming::is_complete) && self.inner().is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.as_ref().is_some_and(|t| t.is_tls())
    }
}

/// The error of an answer whose framing is broken: the try fails at once (ureq would wait for
/// the rest of a line that never comes).
fn malformed(why: &str) -> ureq::Error {
    ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, MalformedAnswer(why.to_string())))
}

impl Drop for PooledTransport {
    /// Not taken home by [`PooledTransport::release`]: closed. One whose backend sent bytes
    /// past its answer's end makes that backend distrusted.
    fn drop(&mut self) {
        if self.answer.as_ref().is_some_and(AnswerFraming::overran) {
            self.home.out_of_step(Instant::now(), "sent bytes after an answer's end");
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
        IdleConnections::new(limits, Arc::default(), "127.0.0.1:9".parse().unwrap())
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
    fn a_transport_goes_home_only_when_released_after_its_answer() {
        let home = Arc::new(idle(LIMITS));
        // An exchange whose answer arrived whole.
        let lent = |id| {
            let mut answer = AnswerFraming::new(false);
            answer.received(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            let mut lent = PooledTransport::lent(fake(id).0, Arc::clone(&home), false);
            lent.answer = Some(answer);
            lent
        };
        // Dropped in the middle of an exchange: closed.
        drop(lent(1));
        assert_eq!(home.len(), 0);
        // Read to the end and released: kept.
        lent(2).release(true);
        assert_eq!(home.len(), 1);
        // Released by an answer that closes the connection (`Connection: close`): closed.
        lent(3).release(false);
        assert_eq!(home.len(), 1);
        // Found open but never released: closed when dropped.
        let mut reused = lent(4);
        assert!(reused.is_open());
        let _ = reused.await_input(NextTimeout::default());
        drop(reused);
        assert_eq!(home.len(), 1);
    }

    /// A request's first bytes written on a lent connection.
    fn send_head(lent: &mut PooledTransport) -> Result<(), ureq::Error> {
        lent.buffers().output()[..4].copy_from_slice(b"GET ");
        lent.transmit_output(4, NextTimeout::default())
    }

    #[test]
    fn a_reused_connection_with_bytes_before_the_request_is_refused_before_a_byte_is_written() {
        let home = Arc::new(idle(LIMITS));
        let (transport, open) = fake(1);
        open.store(false, Ordering::Relaxed);
        let mut reused = PooledTransport::lent(transport, Arc::clone(&home), true);
        let refused = send_head(&mut reused).unwrap_err();
        assert!(is_answer_before_request(&refused), "{refused}");
        drop(reused);
        assert_eq!(home.len(), 0);
        // Only a connection taken again is checked: a new one is written on at once.
        let mut new = PooledTransport::lent(fake(2).0, Arc::clone(&home), false);
        assert!(send_head(&mut new).is_ok());
        let mut quiet = PooledTransport::lent(fake(3).0, Arc::clone(&home), true);
        assert!(send_head(&mut quiet).is_ok());
    }

    #[test]
    fn an_answer_followed_by_more_bytes_is_not_kept_and_no_connection_is_reused_for_a_while() {
        let home = Arc::new(idle(LIMITS));
        let now = Instant::now();
        home.put(fake(1).0, now);
        let mut lent = PooledTransport::lent(fake(2).0, Arc::clone(&home), false);
        let mut answer = AnswerFraming::new(false);
        answer.received(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n").unwrap();
        lent.answer = Some(answer);
        assert!(!lent.is_open());
        drop(lent);
        // Counted; the idle one closed too; none kept or handed out until DISTRUST has passed.
        assert_eq!((home.counts.unsolicited(), home.len()), (1, 0));
        let later = Instant::now();
        home.put(fake(3).0, later);
        assert!(home.take(later).is_none());
        home.put(fake(4).0, later + DISTRUST);
        assert_eq!(id_of(&*home.take(later + DISTRUST).unwrap()), 4);
    }
}
