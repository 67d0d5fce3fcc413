//! A worker thread: takes one complete request head at a time from the poller, serves it with
//! blocking I/O (socket timeouts bound every read and write), then gives the connection back.

use std::cell::RefCell;
use std::net::{SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use super::body::{BodyState, RequestBody};
use super::head::RequestHead;
use super::limits::Limits;
use super::request::Request;
use super::response::{write_response, Body, Response, ResponseContext};
use super::Handler;

/// A complete request head and its connection, on its way to a worker.
pub(crate) struct Job {
    pub token: usize,
    pub stream: Arc<TcpStream>,
    pub peer: SocketAddr,
    pub head: RequestHead,
    /// Bytes read past the head: the start of the body, or of the next pipelined request.
    pub buffered: Vec<u8>,
}

/// What becomes of a connection after its request was served.
pub(crate) enum Next {
    /// Wait for the next request; the bytes are what was already read of it.
    KeepAlive(Vec<u8>),
    /// Close after draining unread input, so the last response is not lost to a reset.
    Linger,
    /// Close now (the socket already failed).
    Close,
}

/// A connection handed back to the poller.
pub(crate) struct Returned {
    pub token: usize,
    pub next: Next,
}

pub(crate) struct Worker {
    pub jobs: Receiver<Job>,
    pub returns: Sender<Returned>,
    pub waker: Arc<Waker>,
    pub handler: Arc<dyn Handler>,
    pub limits: Limits,
    pub stopping: Arc<AtomicBool>,
}

impl Worker {
    /// Serves jobs until the poller drops the sending side of the queue.
    pub fn run(self) {
        for job in self.jobs.iter() {
            let token = job.token;
            let stream = Arc::clone(&job.stream);
            let next = self.serve(&stream, job);
            if matches!(next, Next::KeepAlive(_) | Next::Linger) && stream.set_nonblocking(true).is_err() {
                let _ = self.returns.send(Returned { token, next: Next::Close });
            } else {
                let _ = self.returns.send(Returned { token, next });
            }
            let _ = self.waker.wake();
        }
    }

    fn serve(&self, stream: &TcpStream, job: Job) -> Next {
        if stream.set_nonblocking(false).is_err() {
            return Next::Close;
        }
        let Job { peer, head, buffered, .. } = job;
        let version = head.version;
        let head_request = head.is_head();
        let client_keeps_alive = head.keep_alive;
        let body =
            RefCell::new(BodyState::new(head.framing, buffered, head.expects_continue, self.limits.max_body_bytes));
        let response = {
            let request = Request::new(head, peer, RequestBody::new(stream, &body));
            catch_unwind(AssertUnwindSafe(|| self.handler.handle(request))).unwrap_or_else(|_| {
                log::error!("handler panicked serving a request from {peer}");
                Response::text(500, "internal error").with_close()
            })
        };
        // A client that broke its body's framing or limit gets that answer, whatever the
        // handler made of the truncated body.
        let body_error = body.borrow().error();
        let response = match body_error {
            Some(error) => {
                drop(response);
                Response::text(error.status(), error.reason()).with_close()
            }
            None => response,
        };
        let may_read_body = matches!(response.body, Body::Stream { .. });
        if body.borrow_mut().before_final_head(stream, may_read_body).is_err() {
            return Next::Close;
        }
        // Read now, not before the handler ran: a stop during a slow request still says close.
        // A body the client was never asked for may or may not come: say close.
        let body_declined = body.borrow().body_declined();
        let ctx = ResponseContext {
            version,
            head_request,
            keep_alive: client_keeps_alive && !body_declined && !self.stopping.load(Ordering::Relaxed),
        };
        let written = catch_unwind(AssertUnwindSafe(|| write_response(&mut &*stream, response, &ctx)));
        let keep_alive = match written {
            Ok(Ok(keep_alive)) => keep_alive,
            Ok(Err(_)) | Err(_) => {
                // Reset rather than close: a close-delimited (HTTP/1.0) body cut short must not
                // look complete to the client.
                let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
                return Next::Close;
            }
        };
        let mut body = body.into_inner();
        if body.error().is_some() || !keep_alive {
            return Next::Linger;
        }
        if !body.is_complete() {
            let drained = body.drain(stream, self.limits.max_drain_bytes, Instant::now() + self.limits.linger_timeout);
            if !drained || stream.set_read_timeout(Some(self.limits.io_timeout)).is_err() {
                return Next::Linger;
            }
        }
        Next::KeepAlive(body.into_leftover())
    }
}
