//! Reading requests: heads, bodies read whole into their spool, and handing each complete
//! request to the workers.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::server::body::BodyDecoder;
use crate::server::error::RequestError;
use crate::server::fairness::ClientKey;
use crate::server::head::{parse_head, BodyFraming, ParseOutcome, RequestHead};
use crate::server::job_queue::Job;
use crate::server::spool::RequestBody;

use super::share::{HeldRequest, Verdict};
use super::{body_deadline, Pending, Poller, State, HEAD_READ, MAX_READS_PER_TURN};

impl Poller {
    /// Parses what is buffered and reads until the head is complete or the socket is drained.
    pub(super) fn advance(&mut self, token: usize) {
        // Whether the buffer may hold a complete head (or be over a limit): a head ends at an
        // empty line, so a trickled head is not parsed again on every byte.
        let mut worth_parsing = true;
        loop {
            let Some(conn) = self.connections.get_mut(&token) else { return };
            if worth_parsing && !conn.buf.is_empty() {
                match parse_head(&conn.buf, &self.limits) {
                    Ok(ParseOutcome::Complete(head, used)) => {
                        conn.buf.drain(..used);
                        return self.begin_body(token, head);
                    }
                    Ok(ParseOutcome::Partial) => {}
                    Err(error) => {
                        log::debug!("{}: {error}", conn.peer);
                        self.refuse_for(token, error);
                        return;
                    }
                }
            }
            let read = (&*conn.stream).read(&mut self.scratch[..HEAD_READ]);
            if conn.handshaking && !conn.stream.is_handshaking() {
                // Handshake done: the request head has its own timeout from now.
                conn.handshaking = false;
                self.pollers[self.me].counters.handshakes.fetch_add(1, Ordering::Relaxed);
                conn.deadline = Instant::now() + self.limits.head_timeout;
                let deadline = conn.deadline;
                self.note_deadline(deadline);
                if self.stop_deadline.is_some() {
                    // Stopping: an idle connection gets the short drain, however new.
                    self.drain_idle(token);
                }
            }
            let Some(conn) = self.connections.get_mut(&token) else { return };
            match read {
                Ok(0) => return self.close(token),
                Ok(n) => {
                    conn.maybe_more |= n == HEAD_READ || conn.stream.end_pending();
                    worth_parsing =
                        self.scratch[..n].contains(&b'\n') || conn.buf.len() + n > self.limits.max_request_line_bytes;
                    conn.buf.extend_from_slice(&self.scratch[..n]);
                    if conn.state == (State::Reading { started: false }) {
                        conn.state = State::Reading { started: true };
                        conn.deadline = Instant::now() + self.limits.head_timeout;
                        let deadline = conn.deadline;
                        self.note_deadline(deadline);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if conn.buf.capacity() > 0 && conn.buf.is_empty() {
                        // An idle keep-alive connection keeps no buffer.
                        conn.buf = Vec::new();
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(token),
            }
        }
    }

    /// A head is complete: with no body the request goes to a worker at once, else its body is
    /// read into a spool first (from the bytes already read, then from the socket).
    pub(super) fn begin_body(&mut self, token: usize, head: RequestHead) {
        if head.framing == BodyFraming::None {
            return self.dispatch(token, head, RequestBody::empty());
        }
        let Some(conn) = self.connections.get_mut(&token) else { return };
        let expects_continue = head.expects_continue;
        let decoder = BodyDecoder::new(head.framing, self.limits.max_body_bytes);
        // The temp-file share counts by the client every per-client limit counts by.
        let client = ClientKey::of(self.client_key.as_ref(), conn.peer, &head);
        let body = RequestBody::spooling(Arc::clone(&self.spool), client);
        let now = Instant::now();
        conn.pending = Some(Pending { head, decoder, body, started: now, slow: false });
        conn.state = State::ReadingBody;
        conn.deadline = now + self.limits.io_timeout;
        let deadline = conn.deadline;
        let buffered = std::mem::take(&mut conn.buf);
        self.note_deadline(deadline);
        if !self.feed_body(token, &buffered) && expects_continue {
            // The client waits for our word before it sends the body (RFC 9110 10.1.1).
            if let Some(conn) = self.connections.get(&token) {
                let _ = (&*conn.stream).write(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
        }
        if self.connections.get(&token).is_some_and(|c| c.state == State::ReadingBody) {
            if self.spool.request_buffering() {
                self.read_body(token);
            } else {
                self.start_upload(token);
            }
        }
    }

    /// Feeds bytes to the body being read; the bytes after its end stay in the connection's
    /// buffer. True when the request was dispatched or refused (no longer reading its body).
    pub(super) fn feed_body(&mut self, token: usize, input: &[u8]) -> bool {
        let Some(conn) = self.connections.get_mut(&token) else { return true };
        let Some(pending) = conn.pending.as_mut() else { return true };
        let body = &mut pending.body;
        match pending.decoder.feed(input, &mut |data| body.append(data)) {
            Ok(used) if pending.decoder.is_complete() => {
                conn.buf.extend_from_slice(&input[used..]);
                let Pending { head, mut body, .. } = conn.pending.take().expect("pending above");
                if body.finish().is_err() {
                    let error = RequestError::BodyStorageFull;
                    self.refuse(token, error.status(), error.reason(), &[]);
                    return true;
                }
                self.dispatch(token, head, body);
                true
            }
            Ok(_) => false,
            Err(error) => {
                log::debug!("{}: {error}", conn.peer);
                conn.pending = None;
                self.refuse_for(token, error);
                true
            }
        }
    }

    /// Reads the body from the socket until it is complete, the socket is drained, or this
    /// connection's turn is over.
    pub(super) fn read_body(&mut self, token: usize) {
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = self.connections.get_mut(&token) else { return };
            if conn.state != State::ReadingBody {
                return;
            }
            match (&*conn.stream).read(&mut self.scratch) {
                Ok(0) => {
                    let error = RequestError::BodyIncomplete;
                    return self.refuse(token, error.status(), error.reason(), &[]);
                }
                Ok(n) => {
                    conn.maybe_more |= n == self.scratch.len() || conn.stream.end_pending();
                    let input = std::mem::take(&mut self.scratch);
                    let done = self.feed_body(token, &input[..n]);
                    self.scratch = input;
                    if done {
                        return;
                    }
                    self.set_body_deadline(token);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(token),
            }
        }
        self.again.push(token);
    }

    /// A buffered body's deadline after a read: `io_timeout` from now, and no later than the
    /// minimum rate allows for what has arrived.
    fn set_body_deadline(&mut self, token: usize) {
        let Some(conn) = self.connections.get_mut(&token) else { return };
        let Some(pending) = conn.pending.as_mut() else { return };
        let rate = self.spool.min_upload_rate();
        let (deadline, slow) =
            body_deadline(&self.limits, rate, pending.started, pending.decoder.received(), Instant::now());
        conn.deadline = deadline;
        pending.slow = slow;
        self.note_deadline(deadline);
    }

    /// Hands a complete request to the worker pool, holds it for its client's share
    /// (`share.rs`), or refuses it (`429` at the client's hard limit, `503` when the queue is
    /// full).
    pub(super) fn dispatch(&mut self, token: usize, head: RequestHead, body: RequestBody) {
        let Some(conn) = self.connections.get(&token) else { return };
        let client = self.client_of(conn.peer, &head);
        match self.admit_request(token, client) {
            Verdict::Go => self.submit(token, head, body, false),
            Verdict::Hold(client) => self.hold(token, client, HeldRequest::Whole { head: Box::new(head), body }),
            Verdict::Refused => {}
        }
    }

    /// Queues an admitted request for a worker; `was_held` when it waited for its client's
    /// share (input that arrived meanwhile was only noted).
    pub(super) fn submit(&mut self, token: usize, head: RequestHead, body: RequestBody, was_held: bool) {
        let Some(conn) = self.connections.get_mut(&token) else { return };
        conn.state = State::Busy;
        self.queued.fetch_add(1, Ordering::Relaxed);
        // Bytes of a pipelined request already buffered count as input: the worker must wake
        // the poller, no readiness event will.
        // Input the socket may still hold (a read that filled its buffer, a FIN seen) counts too.
        let noted = was_held && conn.input_while_busy.load(Ordering::SeqCst);
        let more = !conn.buf.is_empty() || std::mem::take(&mut conn.maybe_more) || noted;
        conn.input_while_busy.store(more, Ordering::SeqCst);
        let input_while_busy = Arc::clone(&conn.input_while_busy);
        let first = conn.requests == 0;
        conn.requests += 1;
        let (stream, peer) = (Arc::clone(&conn.stream), conn.peer);
        let counters = &self.pollers[self.me].counters;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        counters.queued.0.fetch_add(1, Ordering::Relaxed);
        let job = Job::Serve { poller: self.me, token, stream, peer, head, body, input_while_busy, first };
        self.queue.submit(job);
    }
}
