//! The TCP transport of each backend's connections, ours rather than ureq's for what a proxy pays
//! on every request: socket timeouts are set once per connection (they are per-operation limits,
//! so they never change), and a pooled connection's liveness probe is one
//! `recv(MSG_PEEK | MSG_DONTWAIT)` instead of two `FIONBIO` ioctls around a read.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport};

use super::link::OpenSockets;
use super::pool::IdleConnections;
use crate::server::{begin_blocked_phase, end_blocked_phase, while_blocked};

/// Opens backend connections: connect within the connect timeout, `TCP_NODELAY`, and the
/// per-operation timeout on every read and write.
#[derive(Debug)]
pub(crate) struct BackendConnector {
    pub connect_timeout: Duration,
    /// Longest wait for one read or one write (`request_timeout`).
    pub io_timeout: Duration,
    /// Where each new socket is noted, so that a stop can break it.
    pub sockets: Arc<OpenSockets>,
    /// The backend's idle connections, told when one of its connections carries bytes nobody
    /// asked for (weak: they hold the transports).
    pub idle: Weak<IdleConnections>,
}

impl Connector<()> for BackendConnector {
    type Out = BackendTransport;

    fn connect(&self, details: &ConnectionDetails, _chained: Option<()>) -> Result<Option<Self::Out>, ureq::Error> {
        let mut last_error = None;
        for addr in details.addrs.iter() {
            match open(addr, self.connect_timeout, self.io_timeout) {
                Ok(stream) => {
                    let config = details.config;
                    let buffers = LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size());
                    let stream = Arc::new(stream);
                    self.sockets.register(&stream).map_err(ureq::Error::Io)?;
                    let discard_output = Arc::new(AtomicBool::new(false));
                    let idle = Weak::clone(&self.idle);
                    let transport =
                        BackendTransport { stream, buffers, discard_output, just_read: false, tls: false, idle };
                    return Ok(Some(transport));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(e) if e.kind() == io::ErrorKind::TimedOut => ureq::Error::Timeout(ureq::Timeout::Connect),
            // Refused, unreachable, network down...: whatever it was, nothing was sent, so any
            // method may go to another backend.
            Some(e) => {
                log::debug!("connect to {:?} failed: {e}", details.addrs.first());
                ureq::Error::ConnectionFailed
            }
            None => ureq::Error::ConnectionFailed,
        })
    }
}

fn open(addr: &SocketAddr, connect_timeout: Duration, io_timeout: Duration) -> io::Result<TcpStream> {
    let stream = while_blocked(|| TcpStream::connect_timeout(addr, connect_timeout))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(io_timeout))?;
    stream.set_write_timeout(Some(io_timeout))?;
    Ok(stream)
}

/// One backend connection, blocking, with fixed per-operation timeouts.
#[derive(Debug)]
pub(crate) struct BackendTransport {
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    /// The backend answered before reading the whole request (a `413`, a `401`): the rest of
    /// the request is dropped so that its answer can be read and relayed. Shared with
    /// [`early_answer_arrived`], which a streamed body asks while it waits for its client.
    discard_output: Arc<AtomicBool>,
    /// The last thing done was reading (the end of an answer): ureq's next liveness probe is
    /// the one it makes when it puts the connection back in its pool.
    just_read: bool,
    /// TLS runs over it (an HTTPS backend): bytes waiting on the socket may be TLS's own records
    /// (a TLS 1.3 session ticket comes after the handshake), not an answer, so a streamed body
    /// does not ask [`early_answer_arrived`] about it.
    tls: bool,
    idle: Weak<IdleConnections>,
}

impl BackendTransport {
    /// Its socket, for the TLS connector to set the handshake's timeouts.
    pub(crate) fn socket(&self) -> Arc<TcpStream> {
        Arc::clone(&self.stream)
    }

    /// Marks it as carrying TLS.
    pub(crate) fn carry_tls(&mut self) {
        self.tls = true;
    }
}

thread_local! {
    /// The backend connection this thread last sent on, and its discard flag: a streamed
    /// request body, read on the same thread between two sends, asks about it.
    static SENDING_ON: RefCell<(Weak<TcpStream>, Weak<AtomicBool>)> = const { RefCell::new((Weak::new(), Weak::new())) };
}

/// Forgets the connection this thread last sent on: called as each exchange begins, so that a
/// streamed body only ever asks [`early_answer_arrived`] about a connection of its own exchange
/// (the head is sent before the body is read), never about an idle pooled one of an earlier
/// request, nor about a pooled one while the request goes elsewhere (an upgrade request).
pub(crate) fn forget_sending() {
    SENDING_ON.with(|sending| *sending.borrow_mut() = (Weak::new(), Weak::new()));
}

/// Whether the backend this thread is sending a request to has answered already (it has
/// sent something we have not read). If so, the rest of the request is dropped on the way
/// from now on, so the caller may end the body at once: the backend never sees it completed.
pub(crate) fn early_answer_arrived() -> bool {
    SENDING_ON.with(|sending| {
        let (stream, discard) = &*sending.borrow();
        let (Some(stream), Some(discard)) = (stream.upgrade(), discard.upgrade()) else { return false };
        if has_unread_input(&stream) && final_answer_waits(&stream) {
            discard.store(true, Ordering::Relaxed);
            return true;
        }
        false
    })
}

/// Whether the backend has sent something we have not read (its early answer).
fn has_unread_input(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    matches!(socket2::SockRef::from(stream).recv_with_flags(&mut byte, flags), Ok(n) if n > 0)
}

/// Whether what the backend has sent (known to be there) begins a final answer, rather than
/// only interim ones (`1xx`: 103 Early Hints, 102 Processing), which a backend may send before it
/// reads the body and after which it still expects the rest of it (RFC 9110 15.2). Bytes that are
/// no HTTP response at all count as an answer (the exchange is broken either way).
fn final_answer_waits(stream: &TcpStream) -> bool {
    let mut peeked = [0u8; 4096];
    // Does not block: there is input (and only this thread reads this socket).
    match stream.peek(&mut peeked) {
        Ok(n) => begins_final_answer(&peeked[..n]),
        Err(_) => false,
    }
}

/// See [`final_answer_waits`]: complete interim responses are skipped; an incomplete one (or
/// interim ones beyond what was peeked) says "not yet".
fn begins_final_answer(mut input: &[u8]) -> bool {
    const INTERIM: &[u8] = b"HTTP/1.x 1";
    loop {
        if input.len() < INTERIM.len() {
            // Too short to tell, unless it cannot be the start of an interim response.
            let could_be_interim = input.iter().zip(INTERIM).all(|(b, i)| b == i || (*i == b'x' && b.is_ascii_digit()));
            return !could_be_interim;
        }
        let interim =
            input.starts_with(b"HTTP/1.") && input[7].is_ascii_digit() && input[8] == b' ' && input[9] == b'1';
        if !interim {
            return true;
        }
        match input.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => input = &input[end + 4..],
            None => return false,
        }
    }
}

impl Transport for BackendTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, _timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.just_read = false;
        if self.discard_output.load(Ordering::Relaxed) {
            return Ok(());
        }
        SENDING_ON.with(|sending| {
            let mut sending = sending.borrow_mut();
            if self.tls {
                *sending = (Weak::new(), Weak::new());
            } else if !std::ptr::eq(sending.0.as_ptr(), Arc::as_ptr(&self.stream)) {
                *sending = (Arc::downgrade(&self.stream), Arc::downgrade(&self.discard_output));
            }
        });
        let output = &self.buffers.output()[..amount];
        let stream = &*self.stream;
        // The answer's read ends the phase this write begins (one count for both, see
        // begin_blocked_phase); Forwarder::send ends it in any case.
        begin_blocked_phase();
        match (&*stream).write_all(output) {
            Ok(()) => Ok(()),
            // The backend closed while we were still sending. If it answered first, that answer
            // is what the client must get (nginx and HAProxy relay such a 413), not a 502.
            Err(e)
                if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
                    && has_unread_input(&self.stream) =>
            {
                self.discard_output.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(ureq::Error::Io(e)),
        }
    }

    fn await_input(&mut self, _timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let input = self.buffers.input_append_buf();
        let stream = &*self.stream;
        let n = while_blocked(|| loop {
            match (&*stream).read(input) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        });
        end_blocked_phase();
        let n = n.map_err(ureq::Error::Io)?;
        self.buffers.input_appended(n);
        self.just_read = true;
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        // A connection is probed when it goes back to the pool (right after reading the answer's
        // end), when it is taken out for the next request, and right before that request's head
        // is written (pool.rs). The later probes alone decide whether it is used, and see
        // anything the first would have (bytes after the body, a close), so the first is
        // skipped: one recv less per request. Bytes that came with the answer, past its end,
        // are in the buffer, where the pool's answer framing sees them.
        if std::mem::replace(&mut self.just_read, false) {
            return !self.discard_output.load(Ordering::Relaxed);
        }
        // An idle pooled connection must have nothing to read: EOF means the backend closed it,
        // bytes mean an answer nobody asked for (a late second response), which the next request
        // would take for its own. Only "would block" means it is still good.
        let mut byte = [MaybeUninit::<u8>::uninit()];
        let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
        match socket2::SockRef::from(&*self.stream).recv_with_flags(&mut byte, flags) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock && !self.discard_output.load(Ordering::Relaxed),
            Ok(0) => false,
            Ok(_) => {
                // Over TLS the bytes may be TLS's own (an alert before the backend's close).
                if let Some(idle) = self.idle.upgrade().filter(|_| !self.tls) {
                    idle.out_of_step(std::time::Instant::now(), "sent bytes on an idle connection");
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::begins_final_answer;

    #[test]
    fn interim_responses_are_not_an_answer() {
        assert!(begins_final_answer(b"HTTP/1.1 413 Payload Too Large\r\n"));
        assert!(begins_final_answer(b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\nHTTP/1.1 401 "));
        assert!(begins_final_answer(b"garbage"));
        assert!(!begins_final_answer(b""));
        assert!(!begins_final_answer(b"HTTP/1.1 "));
        assert!(!begins_final_answer(b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n"));
        assert!(!begins_final_answer(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n"));
        assert!(!begins_final_answer(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1"));
    }
}
