//! A worker thread: takes a complete request from the poller, runs the handler (which may block
//! on a backend), and starts writing the response without ever blocking on the client: the
//! socket stays non-blocking, and when it is full the rest of the response goes back to the
//! poller. A worker also refills a delivery's buffer from its source when the poller asks.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::fairness::ClientLoads;
use super::head::RequestHead;
use super::job_queue::{Job, JobQueue};
use super::pollers::PollerLink;
use super::request::Request;
use super::response::{Delivery, Progress, Response, ResponseContext};
use super::spool::RequestBody;
use super::stream::ClientStream;
use super::tunnel::Switch;
use super::Handler;

/// What becomes of a connection after a worker is done with it.
pub(crate) enum Next {
    /// The response is out: wait for the next request.
    KeepAlive,
    /// The response is out: close after draining unread input, so it is not lost to a reset.
    Linger,
    /// The transfer broke: reset the connection so the client cannot take it for complete.
    Reset,
    /// The client's socket is full: the poller writes the rest as the client reads.
    Deliver(Delivery),
    /// A `101` head is out: the connection switches protocols (the poller relays a tunnel).
    Switch(Switch),
    /// Never served: another poller dropped it from the queue at a stop. Close it.
    Dropped,
}

/// A connection handed back to the poller.
pub(crate) struct Returned {
    pub token: usize,
    pub next: Next,
    /// When the worker was done with a kept-alive connection (it is idle from then).
    pub finished: Option<Instant>,
}

pub(crate) struct Worker {
    pub queue: Arc<JobQueue>,
    /// Serve jobs waiting in the queue (the poller refuses more than the queue capacity).
    pub queued: Arc<AtomicUsize>,
    /// Where each poller takes its connections back (a job names its poller).
    pub pollers: Arc<[PollerLink]>,
    pub handler: Arc<dyn Handler>,
    pub stopping: Arc<AtomicBool>,
    /// Each client's requests: while some are held back for their client's share, a request
    /// given back may be the one they wait for.
    pub loads: Arc<ClientLoads>,
}

impl Worker {
    /// Works until the poller closes the queue.
    pub fn run(self) {
        self.queue.enlist();
        while let Some(job) = self.queue.next() {
            let (poller, token, next, input_while_busy, served) = match job {
                Job::Serve { poller, token, stream, peer, head, body, input_while_busy, first } => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    self.pollers[poller].counters.queued.0.fetch_sub(1, Ordering::Relaxed);
                    let next = self.serve(&stream, peer, head, body, first);
                    (poller, token, next, Some(input_while_busy), true)
                }
                Job::Refill { poller, token, stream, delivery } => {
                    (poller, token, deliver(&stream, delivery), None, false)
                }
            };
            let home = &self.pollers[poller];
            // A kept-alive connection goes back without waking the poller: the client's next
            // request wakes it (and it takes returns first). Unless input already arrived while
            // we had it: then no new readiness event will come, so wake it now. The poller sets
            // the flag before it looks for returns, so one of the two sides sees the other.
            let quiet = matches!(next, Next::KeepAlive);
            let finished = quiet.then(Instant::now);
            let _ = home.returns.send(Returned { token, next, finished });
            std::sync::atomic::fence(Ordering::SeqCst);
            let input_arrived = input_while_busy.is_none_or(|flag| flag.load(Ordering::SeqCst));
            // Idle from now, though its poller may not look for a while: the other pollers
            // compare idle times at the connection cap (with one poller nobody reads it).
            if let Some(at) = finished.filter(|_| !input_arrived && self.pollers.len() > 1) {
                home.lower_oldest_idle(at);
            }
            // While stopping, always wake it: it is waiting for in-flight requests to end. And
            // while requests are held back for their client's share: this may free one.
            if !quiet
                || input_arrived
                || self.stopping.load(Ordering::Relaxed)
                || (served && self.loads.wake_for_held(&home.woken_for_held))
            {
                home.wake();
            }
        }
    }

    fn serve(
        &self,
        stream: &ClientStream,
        peer: SocketAddr,
        head: RequestHead,
        body: RequestBody,
        first: bool,
    ) -> Next {
        let ctx = ResponseContext {
            version: head.version,
            head_request: head.is_head(),
            // Read after the handler ran: a stop during a slow request still says close.
            keep_alive: head.keep_alive,
        };
        let request = Request::new(head, peer, body).with_tls(stream.is_tls()).with_first_on_connection(first);
        let response = catch_unwind(AssertUnwindSafe(|| self.handler.handle(request))).unwrap_or_else(|_| {
            log::error!("handler panicked serving a request from {peer}");
            Response::text(500, "internal error").with_close()
        });
        let ctx = ResponseContext { keep_alive: ctx.keep_alive && !self.stopping.load(Ordering::Relaxed), ..ctx };
        deliver(stream, Delivery::new(response, &ctx))
    }
}

/// Writes as much of `delivery` as the socket takes, reading its source as needed.
fn deliver(stream: &ClientStream, mut delivery: Delivery) -> Next {
    let progress = catch_unwind(AssertUnwindSafe(|| delivery.advance(&mut &*stream, true)));
    if matches!(progress, Ok(Progress::Done { .. })) {
        if let Some(switch) = delivery.take_switch() {
            return Next::Switch(switch);
        }
    }
    match progress {
        Ok(Progress::Done { keep_alive: true }) => Next::KeepAlive,
        Ok(Progress::Done { keep_alive: false }) => Next::Linger,
        Ok(Progress::Blocked | Progress::NeedsRefill) => Next::Deliver(delivery),
        Ok(Progress::Failed) | Err(_) => Next::Reset,
    }
}
