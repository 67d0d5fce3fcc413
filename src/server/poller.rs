//! The poller thread, in the shape of Apache's event MPM: it owns the listener and every client
//! connection that is not with a worker. It accepts, reads request heads without blocking, parks
//! idle keep-alive connections (a buffer each, no thread), enforces the head, idle and linger
//! timeouts, and hands each complete head to the worker pool through a bounded queue.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::error::{reason_phrase, RequestError};
use super::head::{parse_head, ParseOutcome};
use super::limits::Limits;
use super::worker::{Job, Next, Returned};

pub(crate) const LISTENER: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;
/// How long accepting pauses after an accept error such as EMFILE, so that a full fd table does
/// not spin the poller; the listener is retried after it, so the port never stops accepting.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Bytes read from a client socket per read call while reading a head or lingering.
const READ_CHUNK: usize = 16 * 1024;
/// Reads of a lingering connection's input per readiness event (64 × 16 KiB = 1 MiB).
const MAX_LINGER_READS_PER_EVENT: usize = 64;
/// Longest a poll waits, so that stop requests and deadlines are looked at regularly.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
/// After the stop deadline, how long in-flight requests whose sockets were shut down get to
/// return before the poller exits anyway.
const STOP_HARD_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for (more of) a request head; `started` once a byte of it has arrived.
    Reading { started: bool },
    /// With a worker.
    Busy,
    /// Our side is shut down; unread input is drained until EOF or the deadline.
    Lingering,
}

struct Connection {
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    buf: Vec<u8>,
    state: State,
    deadline: Instant,
}

/// A stop request: set once by the handle, read by the poller.
pub(crate) struct StopSignal {
    pub requested: AtomicBool,
    pub grace: Mutex<Duration>,
}

pub(crate) struct Poller {
    pub poll: Poll,
    pub listener: Option<TcpListener>,
    pub jobs: Option<Sender<Job>>,
    pub returns: Receiver<Returned>,
    pub limits: Limits,
    pub stop: Arc<StopSignal>,
    pub stopping: Arc<AtomicBool>,
    connections: HashMap<usize, Connection>,
    next_token: usize,
    next_sweep: Instant,
    accept_resume: Option<Instant>,
    stop_deadline: Option<Instant>,
    scratch: Vec<u8>,
}

impl Poller {
    pub fn new(
        poll: Poll,
        listener: TcpListener,
        jobs: Sender<Job>,
        returns: Receiver<Returned>,
        limits: Limits,
        stop: Arc<StopSignal>,
        stopping: Arc<AtomicBool>,
    ) -> io::Result<Poller> {
        poll.registry().register(&mut SourceFd(&listener.as_raw_fd()), LISTENER, Interest::READABLE)?;
        Ok(Poller {
            poll,
            listener: Some(listener),
            jobs: Some(jobs),
            returns,
            limits,
            stop,
            stopping,
            connections: HashMap::new(),
            next_token: FIRST_CONNECTION,
            next_sweep: Instant::now() + MAX_POLL_WAIT,
            accept_resume: None,
            stop_deadline: None,
            scratch: vec![0; READ_CHUNK],
        })
    }

    /// Runs until a stop request has been carried out.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let mut wake_at = self.next_sweep.min(now + MAX_POLL_WAIT);
            if let Some(at) = self.accept_resume {
                wake_at = wake_at.min(at);
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wake_at.saturating_duration_since(now))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("poll failed: {e}");
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(token) => self.on_readable(token),
                }
            }
            self.take_returns();
            let now = Instant::now();
            if self.accept_resume.is_some_and(|at| now >= at) {
                self.accept_resume = None;
                self.accept();
            }
            if now >= self.next_sweep {
                self.sweep(now);
            }
            if self.stop.requested.load(Ordering::Acquire) && self.carry_out_stop(now) {
                return;
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS...: the pending connection stays in the backlog;
                    // pause and retry rather than spin or give up.
                    log::warn!("accept failed: {e}; retrying in {} ms", ACCEPT_BACKOFF.as_millis());
                    self.accept_resume = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        let timeout = Some(self.limits.io_timeout);
        // Nagle would hold back each keep-alive response's last segment for up to 40 ms.
        let setup = stream
            .set_nodelay(true)
            .and_then(|_| stream.set_nonblocking(true))
            .and_then(|_| stream.set_read_timeout(timeout))
            .and_then(|_| stream.set_write_timeout(timeout));
        if let Err(e) = setup {
            log::debug!("dropping connection from {peer}: {e}");
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) =
            self.poll.registry().register(&mut SourceFd(&stream.as_raw_fd()), Token(token), Interest::READABLE)
        {
            log::warn!("cannot register connection from {peer}: {e}");
            return;
        }
        let over_limit = self.connections.len() >= self.limits.max_connections;
        let deadline = Instant::now() + self.limits.head_timeout;
        self.connections.insert(
            token,
            Connection {
                stream: Arc::new(stream),
                peer,
                buf: Vec::new(),
                state: State::Reading { started: false },
                deadline,
            },
        );
        self.note_deadline(deadline);
        if over_limit {
            log::warn!("{peer}: over {} open connections, refusing", self.limits.max_connections);
            self.refuse(token, 503, "too many open connections", &[("Retry-After", "1")]);
        } else {
            self.advance(token);
        }
    }

    fn on_readable(&mut self, token: usize) {
        match self.connections.get(&token).map(|c| c.state) {
            Some(State::Reading { .. }) => self.advance(token),
            Some(State::Lingering) => self.drain_lingering(token),
            Some(State::Busy) | None => {}
        }
    }

    /// Parses what is buffered and reads until the head is complete or the socket is drained.
    fn advance(&mut self, token: usize) {
        // Whether the buffer may hold a complete head (or be over a limit): a head ends at an
        // empty line, so a trickled head is not parsed again on every byte.
        let mut worth_parsing = true;
        loop {
            let Some(conn) = self.connections.get_mut(&token) else { return };
            if worth_parsing && !conn.buf.is_empty() {
                match parse_head(&conn.buf, &self.limits) {
                    Ok(ParseOutcome::Complete(head, used)) => {
                        let leftover = conn.buf.split_off(used);
                        conn.buf = Vec::new();
                        conn.state = State::Busy;
                        let job =
                            Job { token, stream: Arc::clone(&conn.stream), peer: conn.peer, head, buffered: leftover };
                        self.dispatch(job);
                        return;
                    }
                    Ok(ParseOutcome::Partial) => {}
                    Err(error) => {
                        log::debug!("{}: {error}", conn.peer);
                        self.refuse(token, error.status(), error.reason(), &[]);
                        return;
                    }
                }
            }
            match (&*conn.stream).read(&mut self.scratch) {
                Ok(0) => return self.close(token),
                Ok(n) => {
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

    fn dispatch(&mut self, job: Job) {
        let token = job.token;
        let Some(jobs) = &self.jobs else {
            return self.close(token);
        };
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                log::warn!("all workers busy and the queue is full: answering 503");
                self.refuse(token, 503, "server busy, retry later", &[("Retry-After", "1")]);
            }
            Err(TrySendError::Disconnected(_)) => self.close(token),
        }
    }

    /// Answers a small error response without blocking, then lingers and closes: after a refused
    /// request nothing more on this connection is read as a request.
    fn refuse(&mut self, token: usize, status: u16, reason: &str, extra: &[(&str, &str)]) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
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

    fn linger(&mut self, token: usize) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        let _ = conn.stream.shutdown(Shutdown::Write);
        conn.state = State::Lingering;
        conn.buf = Vec::new();
        conn.deadline = Instant::now() + self.limits.linger_timeout;
        let deadline = conn.deadline;
        self.note_deadline(deadline);
        self.drain_lingering(token);
    }

    fn drain_lingering(&mut self, token: usize) {
        let Some(conn) = self.connections.get(&token) else { return };
        if Instant::now() >= conn.deadline {
            return self.close(token);
        }
        // Bounded per event so a fast sender cannot hold the poller; more input raises another
        // event, and the deadline ends the linger in any case.
        for _ in 0..MAX_LINGER_READS_PER_EVENT {
            match (&*conn.stream).read(&mut self.scratch) {
                Ok(0) => return self.close(token),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(token),
            }
        }
    }

    fn close(&mut self, token: usize) {
        if let Some(conn) = self.connections.remove(&token) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&conn.stream.as_raw_fd()));
        }
    }

    fn take_returns(&mut self) {
        while let Ok(Returned { token, next }) = self.returns.try_recv() {
            let stopping = self.stop_deadline.is_some();
            match next {
                Next::KeepAlive(_) if stopping => self.close(token),
                Next::KeepAlive(leftover) => {
                    let Some(conn) = self.connections.get_mut(&token) else {
                        continue;
                    };
                    let started = !leftover.is_empty();
                    conn.buf = leftover;
                    conn.state = State::Reading { started };
                    conn.deadline = Instant::now()
                        + if started { self.limits.head_timeout } else { self.limits.keep_alive_timeout };
                    let deadline = conn.deadline;
                    self.note_deadline(deadline);
                    // Bytes that arrived while the worker had it raised no new readiness event.
                    self.advance(token);
                }
                Next::Linger => self.linger(token),
                Next::Close => self.close(token),
            }
        }
    }

    fn note_deadline(&mut self, deadline: Instant) {
        self.next_sweep = self.next_sweep.min(deadline);
    }

    fn sweep(&mut self, now: Instant) {
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
        for (token, state) in expired {
            match state {
                State::Reading { started: true } => {
                    let error = RequestError::HeadTimeout;
                    self.refuse(token, error.status(), error.reason(), &[]);
                }
                // nginx closes a connection that never sent a byte without a word, too.
                State::Reading { started: false } | State::Lingering | State::Busy => self.close(token),
            }
        }
    }

    /// Carries out a stop request step by step; true when the poller may exit.
    fn carry_out_stop(&mut self, now: Instant) -> bool {
        let deadline = *self.stop_deadline.get_or_insert_with(|| {
            self.stopping.store(true, Ordering::Release);
            if let Some(listener) = self.listener.take() {
                let _ = self.poll.registry().deregister(&mut SourceFd(&listener.as_raw_fd()));
            }
            now + *self.stop.grace.lock().unwrap_or_else(|e| e.into_inner())
        });
        let idle: Vec<usize> =
            self.connections.iter().filter(|(_, c)| c.state != State::Busy).map(|(&t, _)| t).collect();
        for token in idle {
            self.close(token);
        }
        if self.connections.is_empty() {
            return true;
        }
        if now >= deadline {
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
