//! What comes back from the workers, and writing to clients: responses the client reads
//! slowly, the next request of a kept-alive connection, switches to a tunnel, refusals,
//! resets, lingering closes.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};

use crate::server::error::{reason_phrase, RequestError};
use crate::server::fairness::ClientLoads;
use crate::server::job_queue::Job;
use crate::server::observe::Refusal;
use crate::server::response::Progress;
use crate::server::stream::ClientStream;
use crate::server::tunnel::{Switch, Tunnels, Turn};
use crate::server::worker::{Next, Returned};

use super::{Poller, State, MAX_READS_PER_TURN};

impl Poller {
    pub(super) fn take_returns(&mut self) {
        // Before the look: a worker that returns after it wakes the poller again, if it must.
        ClientLoads::looking_at_returns(&self.pollers[self.me].woken_for_held);
        let turn = self.idle_from;
        while let Ok(Returned { token, next, finished }) = self.returns.try_recv() {
            self.idle_from = finished.unwrap_or(turn);
            // A request given back frees a place in its client's share (a refill's return does
            // not: it was never counted).
            let client = self.served(token);
            if self.connections.get(&token).is_some_and(|c| c.upload.is_some()) {
                // Answered before its body was all read (an early answer): the rest is drained
                // by the close, never parsed as a request.
                self.drop_upload(token);
            }
            match next {
                Next::KeepAlive => {
                    let Some(conn) = self.connections.get_mut(&token) else { continue };
                    if conn.close_after {
                        self.finish_response(token, false);
                    } else if conn.input_while_busy.swap(false, Ordering::SeqCst) || !conn.buf.is_empty() {
                        self.finish_response(token, true);
                    } else {
                        // Nothing arrived meanwhile: the next request's readiness event comes.
                        self.expect_next_request(token);
                    }
                }
                Next::Linger => self.finish_response(token, false),
                Next::Reset => self.reset(token),
                Next::Dropped => self.close(token),
                Next::Switch(switch) => self.switch(token, switch),
                Next::Deliver(delivery) => {
                    let Some(conn) = self.connections.get_mut(&token) else { continue };
                    let registered = if conn.watching_writes {
                        Ok(())
                    } else {
                        // Edge-triggered: re-registering for writability reports it if it holds now.
                        self.poll.registry().reregister(
                            &mut SourceFd(&conn.stream.as_raw_fd()),
                            Token(token),
                            Interest::WRITABLE,
                        )
                    };
                    if registered.is_err() {
                        self.reset(token);
                        continue;
                    }
                    conn.watching_writes = true;
                    conn.state = State::Writing;
                    conn.delivery = Some(delivery);
                    conn.deadline = Instant::now() + self.limits.io_timeout;
                    let deadline = conn.deadline;
                    self.note_deadline(deadline);
                    // A refill may have left the socket writable with no new edge to report it.
                    self.write_delivery(token);
                }
            }
            if let Some(client) = client {
                self.release_held(client);
            }
        }
        self.idle_from = turn;
    }

    /// Writes a delivery the client reads slowly; asks a worker to refill it when drained.
    pub(super) fn write_delivery(&mut self, token: usize) {
        let Some(conn) = self.connections.get_mut(&token) else { return };
        let Some(mut delivery) = conn.delivery.take() else { return };
        match delivery.advance(&mut &*conn.stream, false) {
            Progress::Blocked => {
                conn.deadline = Instant::now() + self.limits.io_timeout;
                conn.delivery = Some(delivery);
                let deadline = conn.deadline;
                self.note_deadline(deadline);
            }
            Progress::NeedsRefill => {
                conn.state = State::Busy;
                let poller = self.me;
                self.queue.submit(Job::Refill { poller, token, stream: Arc::clone(&conn.stream), delivery });
            }
            Progress::Done { keep_alive } => {
                let switch = delivery.take_switch();
                // Its access-log line is queued now, before the connection's next request is
                // read, as when a worker ends a delivery: the log follows each connection's order.
                drop(delivery);
                match switch {
                    Some(switch) => self.switch(token, switch),
                    None => self.finish_response(token, keep_alive),
                }
            }
            Progress::Failed => self.reset(token),
        }
    }

    /// A `101` head is out: the connection leaves HTTP, for a tunnel this thread relays or for
    /// the application. What the client sent after its request head goes along.
    pub(super) fn switch(&mut self, token: usize, mut switch: Switch) {
        if let (Switch::Tunnel(tunnel), Some(client)) = (&mut switch, self.client_slot(token).and_then(|s| s.key())) {
            self.count_tunnel(client, tunnel);
        }
        let Some(conn) = self.connections.remove(&token) else { return };
        self.idle.remove(token);
        let _ = self.poll.registry().deregister(&mut SourceFd(&conn.stream.as_raw_fd()));
        // The worker let go of its handle when it returned the connection.
        let stream = match Arc::try_unwrap(conn.stream) {
            Ok(stream) => stream,
            Err(shared) => match shared.try_clone() {
                Ok(stream) => stream,
                Err(e) => return log::warn!("{}: cannot switch protocols: {e}", conn.peer),
            },
        };
        match switch {
            Switch::Tunnel(tunnel) => {
                let registry = self.poll.registry();
                if let Some((deadline, turn)) =
                    self.tunnels.open(registry, token, stream, conn.buf, tunnel, &mut self.scratch)
                {
                    self.note_deadline(deadline);
                    if let Turn::Again = turn {
                        self.again.push(Tunnels::token_of(token));
                    }
                }
            }
            Switch::Handoff(handoff) => match stream {
                ClientStream::Plain(stream) => match stream.set_nonblocking(false) {
                    Ok(()) => handoff(stream, conn.buf),
                    Err(e) => log::warn!("{}: cannot hand the connection over: {e}", conn.peer),
                },
                // A handoff takes a bare socket; the TLS session cannot go with it.
                ClientStream::Tls { .. } => log::warn!("{}: a TLS connection cannot be handed over", conn.peer),
            },
        }
    }

    /// A keep-alive response is out and nothing more has arrived: wait for the next request's
    /// readiness event without reading now (a read would only say "would block").
    pub(super) fn expect_next_request(&mut self, token: usize) {
        if self.stop_deadline.is_some() || self.connections.get(&token).is_some_and(|c| c.watching_writes) {
            return self.finish_response(token, true);
        }
        let Some(conn) = self.connections.get_mut(&token) else { return };
        // An idle keep-alive connection keeps no buffer.
        conn.buf = Vec::new();
        conn.state = State::Reading { started: false };
        conn.deadline = Instant::now() + self.limits.keep_alive_timeout;
        let deadline = conn.deadline;
        self.note_deadline(deadline);
        self.idle.mark(token, self.idle_from);
    }

    /// The response is out: wait for the next request, or linger and close.
    pub(super) fn finish_response(&mut self, token: usize, keep_alive: bool) {
        let stopping = self.stop_deadline.is_some();
        let Some(conn) = self.connections.get_mut(&token) else { return };
        if std::mem::replace(&mut conn.watching_writes, false) {
            let _ = self.poll.registry().reregister(
                &mut SourceFd(&conn.stream.as_raw_fd()),
                Token(token),
                Interest::READABLE,
            );
        }
        if !keep_alive || conn.close_after {
            // As nginx: a connection with nothing unread is closed at once (its FIN follows the
            // answer; no reset can destroy it, the receive buffer being empty); one that may
            // hold more input (a body cut short, a pipelined request) lingers to drain it.
            let nothing_unread = !conn.close_after
                && conn.buf.is_empty()
                && !conn.maybe_more
                && conn.pending.is_none()
                && conn.upload.is_none()
                && !conn.input_while_busy.load(Ordering::SeqCst);
            // The flags are as of the last readiness event handled: the socket itself must
            // hold nothing either (a pipelined request may have come in this turn).
            let socket_empty =
                || matches!(conn.stream.tcp().peek(&mut [0; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            if nothing_unread && socket_empty() {
                let _ = conn.stream.shutdown(Shutdown::Write);
                return self.close(token);
            }
            return self.linger(token);
        }
        let started = !conn.buf.is_empty();
        conn.state = State::Reading { started };
        conn.deadline =
            Instant::now() + if started { self.limits.head_timeout } else { self.limits.keep_alive_timeout };
        let deadline = conn.deadline;
        self.note_deadline(deadline);
        if !started {
            self.idle.mark(token, self.idle_from);
        }
        // Bytes that arrived while the request was served raised no new readiness event.
        self.advance(token);
        // Stopping: a keep-alive response sent before the stop may have brought its next
        // request already (read above: it is served); if none came, it may still come for a
        // moment, then the connection is closed.
        if stopping {
            self.drain_idle(token);
        }
    }

    /// Breaks a transfer visibly: a reset, so a close-delimited body cut short cannot look
    /// complete to the client.
    pub(super) fn reset(&mut self, token: usize) {
        if let Some(conn) = self.connections.get(&token) {
            let _ = socket2::SockRef::from(&*conn.stream).set_linger(Some(Duration::ZERO));
        }
        self.close(token);
    }

    /// Answers a small error response without blocking, then lingers and closes: after a refused
    /// request nothing more on this connection is read as a request.
    pub(super) fn refuse(&mut self, token: usize, status: u16, reason: &str, extra: &[(&str, &str)]) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        if let Some(hook) = &self.on_refusal {
            let request_line = match conn.state {
                State::Reading { .. } => whole_request_line(&conn.buf),
                _ => None,
            };
            hook.call(&Refusal { peer: conn.peer, status, reason, request_line: request_line.as_deref() });
        }
        if conn.stream.is_handshaking() {
            // No HTTP answer can be sent before a TLS handshake, and one is not worth its CPU
            // for a connection refused (over the connection limit): closed at once.
            return self.close(token);
        }
        let mut response = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
        for (name, value) in extra {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str(&format!(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}\n",
            reason.len() + 1
        ));
        // Best effort: a small response fits the socket buffer of any live connection.
        let _ = (&*conn.stream).write(response.as_bytes());
        self.linger(token);
    }

    /// Refuses a request for `error`; where the client can do something about it (a smaller
    /// body, a faster upload) the answer says the limit and the setting that sets it.
    pub(super) fn refuse_for(&mut self, token: usize, error: RequestError) {
        let reason = match error {
            RequestError::BodyTooLarge => format!(
                "request body too large: the limit is {} bytes (setting max_body_bytes)",
                self.limits.max_body_bytes
            ),
            RequestError::BodyTooSlow => format!(
                "request body sent too slowly: the minimum is {} bytes/s after the first {} s (setting request_body_min_rate)",
                self.spool.min_upload_rate(),
                self.limits.io_timeout.as_secs()
            ),
            _ => error.reason().to_string(),
        };
        let retry: Vec<(&str, &str)> = error.retry_after().map(|after| ("Retry-After", after)).into_iter().collect();
        self.refuse(token, error.status(), &reason, &retry);
    }

    pub(super) fn linger(&mut self, token: usize) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        let _ = conn.stream.shutdown(Shutdown::Write);
        conn.state = State::Lingering;
        conn.buf = Vec::new();
        // A body being read is given up: its spool (memory or temp file) is freed now.
        conn.pending = None;
        conn.upload = None;
        conn.delivery = None;
        conn.deadline = Instant::now() + self.limits.linger_timeout;
        let deadline = conn.deadline;
        self.note_deadline(deadline);
        self.drain_lingering(token);
    }

    pub(super) fn drain_lingering(&mut self, token: usize) {
        let Some(conn) = self.connections.get(&token) else { return };
        if Instant::now() >= conn.deadline {
            return self.close(token);
        }
        // Bounded per turn so a fast sender cannot hold the poller; the deadline ends the
        // linger in any case.
        for _ in 0..MAX_READS_PER_TURN {
            match (&*conn.stream).read(&mut self.scratch) {
                Ok(0) => return self.close(token),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(token),
            }
        }
        self.again.push(token);
    }

    pub(super) fn close(&mut self, token: usize) {
        if let Some(conn) = self.connections.remove(&token) {
            self.idle.remove(token);
            let _ = self.poll.registry().deregister(&mut SourceFd(&conn.stream.as_raw_fd()));
            self.forget_client(conn.client);
        }
    }
}

/// The request line at the start of `buf` (after the empty lines a client may send first),
/// once it has arrived whole; at most the first 8 KiB of it.
fn whole_request_line(buf: &[u8]) -> Option<String> {
    let skipped = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    let line = &buf[skipped..];
    let end = line.iter().position(|&b| b == b'\n')?;
    let line = line[..end].strip_suffix(b"\r").unwrap_or(&line[..end]);
    Some(String::from_utf8_lossy(&line[..line.len().min(8 << 10)]).into_owned())
}
