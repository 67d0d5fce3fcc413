//! Deadlines and stopping: the sweep that enforces every client timeout, and a stop carried
//! out step by step (no new connections, idle ones drained, in-flight requests given the grace
//! period).

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::unix::SourceFd;

use crate::server::error::RequestError;
use crate::server::job_queue::Job;
use crate::server::pollers::IdleSince;
use crate::server::tunnel::TunnelClose;
use crate::server::worker::{Next, Returned};

use super::{Poller, State, MAX_POLL_WAIT, STOP_HARD_WAIT, STOP_IDLE_DRAIN};

impl Poller {
    pub(super) fn sweep(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut next = now + MAX_POLL_WAIT;
        for (&token, conn) in &self.connections {
            if conn.state == State::Busy {
                continue;
            }
            if conn.deadline <= now {
                expired.push((token, conn.state));
            } else {
                next = next.min(conn.deadline);
            }
        }
        self.next_sweep = next;
        if let Some(deadline) = self.tunnels.sweep(self.poll.registry(), now) {
            self.next_sweep = self.next_sweep.min(deadline);
        }
        for (token, state) in expired {
            match state {
                State::Reading { started: true } => {
                    let error = RequestError::HeadTimeout;
                    self.refuse(token, error.status(), error.reason(), &[]);
                }
                State::ReadingBody => {
                    let slow = self.connections.get(&token).and_then(|c| c.pending.as_ref()).is_some_and(|p| p.slow);
                    self.refuse_for(token, if slow { RequestError::BodyTooSlow } else { RequestError::BodyTimeout });
                }
                // The worker has the request: it learns through its read of the body.
                State::Streaming => self.cut_upload(token, RequestError::BodyTimeout),
                // A client that stopped reading its response: nothing more can be said to it.
                State::Writing => self.reset(token),
                // nginx closes a connection that never sent a byte without a word, too.
                State::Reading { started: false } | State::Lingering | State::Busy => self.close(token),
            }
        }
    }

    /// Drops the jobs still waiting for a worker (queued, or held for their client's share)
    /// and closes their connections. The queue is every poller's: a job of another one goes
    /// back to it to be closed there. Called past this poller's deadline (the others', set
    /// from the same stop request, pass within moments of it) or by the last poller to end.
    pub(super) fn drop_queued_jobs(&mut self) {
        // Held ones first: a queued one closed below must not let one of them into the queue.
        self.drop_held();
        while let Some(job) = self.queue.try_take() {
            let (poller, token) = match job {
                Job::Serve { poller, token, .. } => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    self.pollers[poller].counters.queued.0.fetch_sub(1, Ordering::Relaxed);
                    (poller, token)
                }
                Job::Refill { poller, token, .. } => (poller, token),
            };
            if poller == self.me {
                self.close(token);
            } else {
                let owner = &self.pollers[poller];
                let _ = owner.returns.send(Returned { token, next: Next::Dropped, finished: None });
                owner.wake();
            }
        }
    }

    /// While stopping: an idle connection is closed after [`STOP_IDLE_DRAIN`] (by the sweep).
    pub(super) fn drain_idle(&mut self, token: usize) {
        let Some(conn) = self.connections.get_mut(&token) else { return };
        if conn.state == (State::Reading { started: false }) {
            conn.deadline = conn.deadline.min(Instant::now() + STOP_IDLE_DRAIN);
            let deadline = conn.deadline;
            self.note_deadline(deadline);
        }
    }

    /// Connections waiting for a next request that has not begun.
    pub(super) fn idle_connections(&self) -> Vec<usize> {
        self.connections.iter().filter(|(_, c)| c.state == State::Reading { started: false }).map(|(&t, _)| t).collect()
    }

    /// Carries out a stop request step by step; true when the poller may exit.
    pub(super) fn carry_out_stop(&mut self, now: Instant) -> bool {
        let deadline = match self.stop_deadline {
            Some(deadline) => deadline,
            None => {
                // Connections the kernel completed before the stop are taken (their requests
                // are read and served), then the listener is closed: later ones are refused.
                self.accept(false);
                self.accept(true);
                if let Some(listener) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&listener.as_raw_fd()));
                }
                if let Some(listener) = self.tls_listener.take() {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&listener.as_raw_fd()));
                }
                // Only once every poller's listener is closed do answers say `Connection:
                // close`: a client told so reconnects at once, and must find the port closed
                // (refused: never sent), not another poller's listener about to close, which
                // would reset the connection after the client sent its request.
                // Nothing more is handed here at the cap (see the loop's publishing).
                self.pollers[self.me].oldest_idle.store(IdleSince::STOPPING, Ordering::SeqCst);
                if self.listening.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.stopping.store(true, Ordering::Release);
                }
                self.accept_resume = None;
                let deadline = now + *self.stop.grace.lock().unwrap_or_else(|e| e.into_inner());
                self.stop_deadline = Some(deadline);
                // Requests being read (a head begun, a body), served or delivered get the grace
                // period, and so do closing connections (their linger is short and keeps their
                // last response from a reset). Idle ones are closed after a short drain; one
                // whose next request arrived, unread yet, is not idle.
                for token in self.idle_connections() {
                    self.advance(token);
                    self.drain_idle(token);
                }
                // Tunnels too, as idle connections: a tunnel has no end a stop could wait for,
                // so waiting would only hold the stop for the whole grace period.
                let drained = now + STOP_IDLE_DRAIN;
                self.tunnels.close_from(drained);
                self.note_deadline(drained);
                deadline
            }
        };
        if self.connections.is_empty() && self.tunnels.is_empty() {
            return true;
        }
        if now >= deadline {
            self.tunnels.close_all(self.poll.registry(), TunnelClose::Stopped);
            // Requests still queued are given up on unrun: their handlers would act (a POST to a
            // backend) for clients whose connections are being closed.
            self.drop_queued_jobs();
            // In-flight requests past the grace period: break their sockets so the workers'
            // blocking I/O fails now instead of at its timeout.
            for conn in self.connections.values() {
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
            if now >= deadline + STOP_HARD_WAIT {
                return true;
            }
        }
        false
    }
}
