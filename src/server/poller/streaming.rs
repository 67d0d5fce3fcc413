//! Request bodies that stream to a worker as they arrive (request buffering off): fed through
//! a bounded channel, paused while it is full, cut short when the client breaks off or is too
//! slow.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::server::error::RequestError;
use crate::server::head::BodyFraming;
use crate::server::spool::RequestBody;
use crate::server::upload::{upload, Offer};

use super::share::{HeldRequest, Verdict};
use super::{body_deadline, Pending, Poller, State, Upload, MAX_READS_PER_TURN};

impl Poller {
    /// Request buffering is off and the body is not all here: the request goes to a worker now,
    /// with what arrived of its body, and the rest streams after it. Unless its client has its
    /// share of the workers: then it is held before the rest of its body is read.
    pub(super) fn start_upload(&mut self, token: usize) {
        let Some(conn) = self.connections.get(&token) else { return };
        let Some(pending) = conn.pending.as_ref() else { return };
        let client = self.client_of(conn.peer, &pending.head);
        match self.admit_request(token, client) {
            Verdict::Go => self.stream_upload(token),
            Verdict::Hold(client) => self.hold(token, client, HeldRequest::Upload),
            Verdict::Refused => {}
        }
    }

    /// An admitted upload goes to a worker, and its body streams after it.
    pub(super) fn stream_upload(&mut self, token: usize) {
        let Some(conn) = self.connections.get_mut(&token) else { return };
        let Some(Pending { head, decoder, mut body, .. }) = conn.pending.take() else { return };
        let mut first = Vec::new();
        if body.finish().and_then(|_| body.read_to_end(&mut first)).is_err() {
            let error = RequestError::BodyStorageFull;
            return self.refuse(token, error.status(), error.reason(), &[]);
        }
        drop(body);
        let declared = match head.framing {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        };
        let (mut feed, stream) = upload(token, self.resume.clone(), declared);
        feed.data(first);
        self.submit(token, head, RequestBody::streamed(stream, declared), false);
        let Some(conn) = self.connections.get_mut(&token) else { return };
        conn.state = State::Streaming;
        conn.upload = Some(Upload { feed, decoder, started: Instant::now(), stalled_since: None, ended: false });
        self.set_upload_deadline(token);
        self.read_upload(token);
    }

    /// Reads a streaming body from the socket and passes it on, until the socket is drained,
    /// the channel is full, the body is complete, or this connection's turn is over.
    pub(super) fn read_upload(&mut self, token: usize) {
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = self.connections.get_mut(&token) else { return };
            let Some(upload) = conn.upload.as_mut() else { return };
            if upload.ended {
                // The body is all read and its end waits for room: what this event brought (a
                // pipelined request, a FIN) comes after the request, and no new edge will say so.
                // As for a busy connection: the worker wakes the poller when it gives it back.
                conn.input_while_busy.store(true, Ordering::SeqCst);
                std::sync::atomic::fence(Ordering::SeqCst);
                return;
            }
            if upload.stalled_since.is_some() {
                return; // the worker's next read resumes it
            }
            let n = match (&*conn.stream).read(&mut self.scratch) {
                Ok(0) => return self.cut_upload(token, RequestError::BodyIncomplete),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.cut_upload(token, RequestError::BodyIncomplete),
            };
            conn.maybe_more |= n == self.scratch.len() || conn.stream.end_pending();
            let mut data = Vec::with_capacity(n);
            let used = match upload.decoder.feed(&self.scratch[..n], &mut |bytes| {
                data.extend_from_slice(bytes);
                Ok(())
            }) {
                Ok(used) => used,
                Err(error) => return self.cut_upload(token, error),
            };
            let mut offer = upload.feed.data(data);
            if upload.decoder.is_complete() {
                conn.buf.extend_from_slice(&self.scratch[used..n]);
                // Said before the end goes: the worker looks at it when it gives the connection
                // back, which may be as soon as it has the end.
                let more = !conn.buf.is_empty() || std::mem::take(&mut conn.maybe_more);
                conn.input_while_busy.store(more, Ordering::SeqCst);
                upload.ended = true;
                if offer != Offer::ReaderGone {
                    offer = upload.feed.end();
                }
            }
            match offer {
                Offer::Sent if upload.ended => return self.end_upload(token),
                Offer::Sent => {}
                Offer::Held => {
                    upload.stalled_since = Some(Instant::now());
                    return self.set_upload_deadline(token);
                }
                Offer::ReaderGone => return self.drop_upload(token),
            }
            self.set_upload_deadline(token);
        }
        self.again.push(token);
    }

    /// The worker made room in a full channel: send what waits, and read on.
    pub(super) fn take_resumed(&mut self) {
        while let Ok(token) = self.resumed.try_recv() {
            let Some(conn) = self.connections.get_mut(&token) else { continue };
            let Some(upload) = conn.upload.as_mut() else { continue };
            match upload.feed.flush() {
                Offer::Held => continue,
                Offer::ReaderGone => {
                    self.drop_upload(token);
                    continue;
                }
                Offer::Sent => {}
            }
            if let Some(since) = upload.stalled_since.take() {
                upload.started += since.elapsed();
            }
            if upload.ended {
                self.end_upload(token);
            } else {
                self.set_upload_deadline(token);
                self.read_upload(token);
            }
        }
    }

    /// A streaming body's deadline: `io_timeout` from now, and no later than the minimum rate
    /// allows for what has arrived. None while the channel is full (the wait is the backend's).
    pub(super) fn set_upload_deadline(&mut self, token: usize) {
        let Some(conn) = self.connections.get_mut(&token) else { return };
        let Some(upload) = conn.upload.as_ref() else { return };
        let now = Instant::now();
        conn.deadline = if upload.stalled_since.is_some() {
            now + Duration::from_secs(24 * 3600)
        } else {
            let rate = self.spool.min_upload_rate();
            body_deadline(&self.limits, rate, upload.started, upload.decoder.received(), now).0
        };
        let deadline = conn.deadline;
        self.note_deadline(deadline);
    }

    /// The streamed body is complete and the worker has its end: the connection is the
    /// worker's alone until it gives it back.
    pub(super) fn end_upload(&mut self, token: usize) {
        if let Some(conn) = self.connections.get_mut(&token) {
            conn.upload = None;
            if conn.state == State::Streaming {
                conn.state = State::Busy;
            }
        }
    }

    /// The worker no longer reads the body (it answered early, or failed): the rest of it is
    /// not read as a next request; the connection closes after the response.
    pub(super) fn drop_upload(&mut self, token: usize) {
        if let Some(conn) = self.connections.get_mut(&token) {
            // A body read whole from the client (only its end still waited for room) leaves the
            // connection at a request boundary: it may carry the next request.
            if !conn.upload.as_ref().is_some_and(|u| u.ended) {
                conn.close_after = true;
            }
        }
        self.end_upload(token);
    }

    /// The client broke its body off (closed, bad framing, too slow): the worker's read fails,
    /// so the backend never takes it for complete, and the connection closes after the answer.
    pub(super) fn cut_upload(&mut self, token: usize, error: RequestError) {
        if let Some(conn) = self.connections.get(&token) {
            // Not a refusal of ours: the worker that has the request answers (400) and counts it.
            log::debug!("{}: streamed request body cut short: {error}", conn.peer);
        }
        self.drop_upload(token);
    }
}
