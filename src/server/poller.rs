//! The poller thread, in the shape of Apache's event MPM: it owns the listeners (plain and
//! HTTPS) and every client connection that is not with a worker. It accepts, runs TLS
//! handshakes (each within the handshake timeout), reads request heads and bodies without
//! blocking (bodies into a spool), parks idle keep-alive connections (a buffer each, no thread),
//! finishes writing responses the client reads slowly, enforces every client timeout, and hands
//! each complete request to the worker pool. Nothing a client does holds a worker. Connections
//! that switched protocols are relayed here too (`tunnel.rs`).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::body::BodyDecoder;
use super::error::{reason_phrase, RequestError};
use super::head::{parse_head, BodyFraming, ParseOutcome, RequestHead};
use super::cpu_idle::CpuIdle;
use super::job_queue::{JobQueue, StallWatch};
use super::limits::Limits;
use super::observe::{Refusal, RefusalHook};
use super::response::{Delivery, Progress};
use super::spool::{RequestBody, SpoolSettings};
use super::stream::ClientStream;
use super::tls::TlsAcceptor;
use super::tunnel::{Switch, TunnelClose, Tunnels, Turn};
use super::upload::{upload, Offer, ResumeLink, UploadFeed};
use super::worker::{Job, Next, Returned};
use super::Tuning;

pub(crate) const LISTENER: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);
pub(crate) const TLS_LISTENER: Token = Token(2);
const FIRST_CONNECTION: usize = 3;
/// How long accepting pauses after an accept error such as EMFILE, so that a full fd table does
/// not spin the poller; the listener is retried after it, so the port never stops accepting.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections accepted per turn. Under a flood of new connections an accept loop that ran
/// until the backlog is empty would starve every open connection: refused ones would not be
/// closed when their clients go (they piled up to the fd limit, 20 000, in the overload test).
const MAX_ACCEPTS_PER_TURN: usize = 64;
/// Bytes read from a client socket per read call while reading a body or lingering.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read per read call while reading a head.
const HEAD_READ: usize = 16 * 1024;
/// Reads of one connection per turn (16 × 64 KiB = 1 MiB), so a fast uploader cannot hold the
/// poller; a connection with more to read is served again in the next turn.
const MAX_READS_PER_TURN: usize = 16;
/// How often the CPUs' idle time is sampled for the worker pool.
const CPU_SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Longest a poll waits, so that stop requests and deadlines are looked at regularly.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
/// After the stop deadline, how long in-flight requests whose sockets were shut down get to
/// return before the poller exits anyway.
pub(crate) const STOP_HARD_WAIT: Duration = Duration::from_secs(5);
/// While stopping, how long a keep-alive connection may stay idle before it is closed. A client
/// that got a keep-alive answer just before the stop sends its next request within this (one
/// that sends at the very moment of a close would have to resend it: RFC 9112 9.3.1); answers
/// sent while stopping say `Connection: close`, so no request follows them.
const STOP_IDLE_DRAIN: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for (more of) a request head; `started` once a byte of it has arrived.
    Reading { started: bool },
    /// Reading a request body into its spool (`Connection::pending`).
    ReadingBody,
    /// With a worker, and still reading its body, which streams to it (`Connection::upload`;
    /// request buffering off).
    Streaming,
    /// With a worker (serving, or refilling a delivery).
    Busy,
    /// Writing a response the client reads slowly (`Connection::delivery`).
    Writing,
    /// Our side is shut down; unread input is drained until EOF or the deadline.
    Lingering,
}

/// A body that streams to a worker while it arrives (request buffering off).
struct Upload {
    feed: UploadFeed,
    decoder: BodyDecoder,
    /// When the body began, moved on by the time it waited for the worker (not the client's
    /// fault): the minimum rate is reckoned from it.
    started: Instant,
    /// When the channel filled and reading stopped, if it is full now.
    stalled_since: Option<Instant>,
    /// The body is complete and its end is held until the channel takes it.
    ended: bool,
}

/// A request whose body is still arriving.
struct Pending {
    head: RequestHead,
    decoder: BodyDecoder,
    body: RequestBody,
}

struct Connection {
    stream: Arc<ClientStream>,
    peer: SocketAddr,
    /// Bytes read and not yet used: a head in progress, or what follows the current request.
    buf: Vec<u8>,
    state: State,
    deadline: Instant,
    pending: Option<Pending>,
    upload: Option<Upload>,
    /// The connection cannot carry another request (an upload cut short or left unread): close
    /// it once the current response is out.
    close_after: bool,
    delivery: Option<Delivery>,
    /// Registered for writability (a delivery in progress) rather than readability.
    watching_writes: bool,
    /// Input arrived while a worker had the connection (a pipelined request): the worker must
    /// wake the poller when it gives the connection back, and the poller must read at once.
    input_while_busy: Arc<AtomicBool>,
    /// The last read filled its buffer, or the peer's FIN was reported: the socket may hold
    /// more than was read, and no new readiness edge would say so.
    maybe_more: bool,
    /// A TLS handshake is under way: its deadline is the handshake timeout.
    handshaking: bool,
}

/// A stop request: set once by the handle, read by the poller.
pub(crate) struct StopSignal {
    pub requested: AtomicBool,
    pub grace: Mutex<Duration>,
}

pub(crate) struct Poller {
    pub poll: Poll,
    pub listener: Option<TcpListener>,
    /// The HTTPS listener and what its connections start from.
    tls_listener: Option<(TcpListener, TlsAcceptor)>,
    /// Where complete requests go to the workers.
    queue: Arc<JobQueue>,
    /// Set once the queue is closed (a stop): nothing more is dispatched.
    queue_closed: bool,
    /// Whether jobs wait with none taken (the queue's safety net).
    stall: StallWatch,
    /// The CPUs' idle time, which decides whether more workers may wake.
    cpu: CpuIdle,
    next_cpu_sample: Instant,
    pub returns: Receiver<Returned>,
    pub limits: Limits,
    pub stop: Arc<StopSignal>,
    pub stopping: Arc<AtomicBool>,
    /// Serve jobs waiting for a worker, against `queue_capacity`.
    queued: Arc<AtomicUsize>,
    queue_capacity: usize,
    spool: Arc<SpoolSettings>,
    on_refusal: Option<RefusalHook>,
    /// New settings from a reload, taken at the start of a turn.
    tuning: Arc<Mutex<Option<Tuning>>>,
    /// Given to each upload: where its reader asks for more.
    resume: ResumeLink,
    /// Uploads whose reader made room in a full channel.
    resumed: Receiver<usize>,
    /// Connections with input left unread at the end of their turn (edge-triggered readiness
    /// would not report it again).
    again: Vec<usize>,
    connections: HashMap<usize, Connection>,
    /// Connections that switched protocols, relayed to their peers.
    tunnels: Tunnels,
    next_token: usize,
    next_sweep: Instant,
    accept_resume: Option<Instant>,
    stop_deadline: Option<Instant>,
    scratch: Vec<u8>,
}

/// The poller's ends of the channels and the shared flags.
pub(crate) struct PollerLinks {
    pub queue: Arc<JobQueue>,
    pub queued: Arc<AtomicUsize>,
    pub queue_capacity: usize,
    pub returns: Receiver<Returned>,
    pub stop: Arc<StopSignal>,
    pub stopping: Arc<AtomicBool>,
    pub spool: Arc<SpoolSettings>,
    pub on_refusal: Option<RefusalHook>,
    pub tuning: Arc<Mutex<Option<Tuning>>>,
    pub resume: ResumeLink,
    pub resumed: Receiver<usize>,
}

impl Poller {
    pub fn new(
        poll: Poll,
        listener: TcpListener,
        tls_listener: Option<(TcpListener, TlsAcceptor)>,
        limits: Limits,
        links: PollerLinks,
    ) -> io::Result<Poller> {
        poll.registry().register(&mut SourceFd(&listener.as_raw_fd()), LISTENER, Interest::READABLE)?;
        if let Some((tls, _)) = &tls_listener {
            tls.set_nonblocking(true)?;
            poll.registry().register(&mut SourceFd(&tls.as_raw_fd()), TLS_LISTENER, Interest::READABLE)?;
        }
        Ok(Poller {
            poll,
            listener: Some(listener),
            tls_listener,
            queue: links.queue,
            queue_closed: false,
            stall: StallWatch::default(),
            cpu: CpuIdle::new(),
            next_cpu_sample: Instant::now(),
            returns: links.returns,
            limits,
            stop: links.stop,
            stopping: links.stopping,
            queued: links.queued,
            queue_capacity: links.queue_capacity,
            spool: links.spool,
            on_refusal: links.on_refusal,
            tuning: links.tuning,
            resume: links.resume,
            resumed: links.resumed,
            again: Vec::new(),
            connections: HashMap::new(),
            tunnels: Tunnels::default(),
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
            if now >= self.next_cpu_sample {
                self.queue.sample_cpu(&mut self.cpu);
                self.next_cpu_sample = now + CPU_SAMPLE_EVERY;
            }
            if let Some(at) = self.queue.nudge_if_stalled(&mut self.stall, now) {
                wake_at = wake_at.min(at);
            }
            if !self.again.is_empty() {
                wake_at = now;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wake_at.saturating_duration_since(now))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("poll failed: {e}");
                }
                continue;
            }
            self.take_tuning();
            // Returns first: a worker gives a keep-alive connection back without waking the
            // poller, and the client's next request is what wakes it.
            self.take_returns();
            self.take_resumed();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(false),
                    TLS_LISTENER => self.accept(true),
                    WAKER => {}
                    Token(token) if Tunnels::owns(token) => {
                        self.tunnels.note(token, event);
                        self.on_ready(token)
                    }
                    Token(token) => {
                        if event.is_read_closed() {
                            // The FIN may already be queued behind what we read next.
                            if let Some(conn) = self.connections.get_mut(&token) {
                                conn.maybe_more = true;
                            }
                        }
                        self.on_ready(token)
                    }
                }
            }
            for token in std::mem::take(&mut self.again) {
                self.on_ready(token);
            }
            self.take_returns();
            let now = Instant::now();
            if self.accept_resume.is_some_and(|at| now >= at) {
                self.accept_resume = None;
                self.accept(false);
                self.accept(true);
            }
            if now >= self.next_sweep {
                self.sweep(now);
            }
            if self.stop.requested.load(Ordering::Acquire) && self.carry_out_stop(now) {
                // Close the queue so the workers end once their current jobs are done.
                self.drop_queued_jobs();
                self.queue_closed = true;
                self.queue.close();
                return;
            }
        }
    }

    /// Takes new settings from a reload: the limits apply from each connection's next deadline
    /// and next request head, the queue capacity from the next request dispatched.
    fn take_tuning(&mut self) {
        let tuning = self.tuning.try_lock().ok().and_then(|mut pending| pending.take());
        if let Some(tuning) = tuning {
            self.limits = tuning.limits;
            self.queue_capacity = tuning.queue_capacity.max(1);
        }
    }

    /// Accepts from the plain listener, or the HTTPS one (`tls`).
    fn accept(&mut self, tls: bool) {
        for _ in 0..MAX_ACCEPTS_PER_TURN {
            let listener = if tls { self.tls_listener.as_ref().map(|(l, _)| l) } else { self.listener.as_ref() };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, tls),
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
        // More may be waiting (edge-triggered: no new event will say so): take them in the next
        // turn, after the events of the connections already open.
        self.accept_resume = Some(Instant::now());
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, tls: bool) {
        // Nagle would hold back each keep-alive response's last segment for up to 40 ms. The
        // socket stays non-blocking for its whole life: workers never wait on it either.
        let setup = stream.set_nodelay(true).and_then(|_| stream.set_nonblocking(true));
        if let Err(e) = setup {
            log::debug!("dropping connection from {peer}: {e}");
            return;
        }
        let stream = match self.tls_listener.as_ref().filter(|_| tls) {
            Some((_, acceptor)) => match acceptor.session() {
                Ok(session) => ClientStream::tls(stream, session),
                Err(e) => {
                    log::warn!("dropping TLS connection from {peer}: {e}");
                    return;
                }
            },
            None => ClientStream::Plain(stream),
        };
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) =
            self.poll.registry().register(&mut SourceFd(&stream.as_raw_fd()), Token(token), Interest::READABLE)
        {
            log::warn!("cannot register connection from {peer}: {e}");
            return;
        }
        let over_limit = self.connections.len() + self.tunnels.len() >= self.limits.max_connections;
        let deadline = Instant::now() + if tls { self.limits.handshake_timeout } else { self.limits.head_timeout };
        self.connections.insert(
            token,
            Connection {
                stream: Arc::new(stream),
                peer,
                buf: Vec::new(),
                state: State::Reading { started: false },
                deadline,
                pending: None,
                upload: None,
                close_after: false,
                delivery: None,
                watching_writes: false,
                input_while_busy: Arc::new(AtomicBool::new(false)),
                maybe_more: false,
                handshaking: tls,
            },
        );
        self.note_deadline(deadline);
        if over_limit {
            log::debug!("{peer}: over {} open connections, refusing", self.limits.max_connections);
            self.refuse(token, 503, "too many open connections", &[("Retry-After", "1")]);
        } else {
            self.advance(token);
        }
    }

    fn on_ready(&mut self, token: usize) {
        if Tunnels::owns(token) {
            if let Turn::Again = self.tunnels.ready(self.poll.registry(), token, &mut self.scratch) {
                self.again.push(token);
            }
            return;
        }
        match self.connections.get(&token).map(|c| c.state) {
            Some(State::Reading { .. }) => self.advance(token),
            Some(State::ReadingBody) => self.read_body(token),
            Some(State::Streaming) => self.read_upload(token),
            Some(State::Writing) => self.write_delivery(token),
            Some(State::Lingering) => self.drain_lingering(token),
            Some(State::Busy) => {
                if let Some(conn) = self.connections.get(&token) {
                    conn.input_while_busy.store(true, Ordering::SeqCst);
                    // Pairs with the worker's fence between its return and its look at the flag.
                    std::sync::atomic::fence(Ordering::SeqCst);
                }
            }
            None => {}
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
                        conn.buf.drain(..used);
                        return self.begin_body(token, head);
                    }
                    Ok(ParseOutcome::Partial) => {}
                    Err(error) => {
                        log::debug!("{}: {error}", conn.peer);
                        self.refuse(token, error.status(), error.reason(), &[]);
                        return;
                    }
                }
            }
            let read = (&*conn.stream).read(&mut self.scratch[..HEAD_READ]);
            if conn.handshaking && !conn.stream.is_handshaking() {
                // Handshake done: the request head has its own timeout from now.
                conn.handshaking = false;
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
    fn begin_body(&mut self, token: usize, head: RequestHead) {
        if head.framing == BodyFraming::None {
            return self.dispatch(token, head, RequestBody::empty());
        }
        let Some(conn) = self.connections.get_mut(&token) else { return };
        let expects_continue = head.expects_continue;
        let decoder = BodyDecoder::new(head.framing, self.limits.max_body_bytes);
        conn.pending = Some(Pending { head, decoder, body: RequestBody::spooling(Arc::clone(&self.spool)) });
        conn.state = State::ReadingBody;
        conn.deadline = Instant::now() + self.limits.io_timeout;
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

    /// Request buffering is off and the body is not all here: the request goes to a worker now,
    /// with what arrived of its body, and the rest streams after it.
    fn start_upload(&mut self, token: usize) {
        let Some(conn) = self.connections.get_mut(&token) else { return };
        let Some(Pending { head, decoder, mut body }) = conn.pending.take() else { return };
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
        self.dispatch(token, head, RequestBody::streamed(stream, declared));
        let Some(conn) = self.connections.get_mut(&token) else { return };
        if conn.state != State::Busy {
            return; // refused: the queue is full
        }
        conn.state = State::Streaming;
        conn.upload = Some(Upload { feed, decoder, started: Instant::now(), stalled_since: None, ended: false });
        self.set_upload_deadline(token);
        self.read_upload(token);
    }

    /// Reads a streaming body from the socket and passes it on, until the socket is drained,
    /// the channel is full, the body is complete, or this connection's turn is over.
    fn read_upload(&mut self, token: usize) {
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
    fn take_resumed(&mut self) {
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
    fn set_upload_deadline(&mut self, token: usize) {
        let Some(conn) = self.connections.get_mut(&token) else { return };
        let Some(upload) = conn.upload.as_ref() else { return };
        let now = Instant::now();
        conn.deadline = if upload.stalled_since.is_some() {
            now + Duration::from_secs(24 * 3600)
        } else {
            let mut deadline = now + self.limits.io_timeout;
            let rate = self.spool.min_upload_rate();
            if rate > 0 {
                let allowed = Duration::from_secs_f64(upload.decoder.received() as f64 / rate as f64);
                deadline = deadline.min(upload.started + self.limits.io_timeout + allowed);
            }
            deadline
        };
        let deadline = conn.deadline;
        self.note_deadline(deadline);
    }

    /// The streamed body is complete and the worker has its end: the connection is the
    /// worker's alone until it gives it back.
    fn end_upload(&mut self, token: usize) {
        if let Some(conn) = self.connections.get_mut(&token) {
            conn.upload = None;
            if conn.state == State::Streaming {
                conn.state = State::Busy;
            }
        }
    }

    /// The worker no longer reads the body (it answered early, or failed): the rest of it is
    /// not read as a next request; the connection closes after the response.
    fn drop_upload(&mut self, token: usize) {
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
    fn cut_upload(&mut self, token: usize, error: RequestError) {
        if let Some(conn) = self.connections.get(&token) {
            // Not a refusal of ours: the worker that has the request answers (400) and counts it.
            log::debug!("{}: streamed request body cut short: {error}", conn.peer);
        }
        self.drop_upload(token);
    }

    /// Feeds bytes to the body being read; the bytes after its end stay in the connection's
    /// buffer. True when the request was dispatched or refused (no longer reading its body).
    fn feed_body(&mut self, token: usize, input: &[u8]) -> bool {
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
                let extra: &[(&str, &str)] =
                    if error == RequestError::BodyStorageFull { &[("Retry-After", "1")] } else { &[] };
                self.refuse(token, error.status(), error.reason(), extra);
                true
            }
        }
    }

    /// Reads the body from the socket until it is complete, the socket is drained, or this
    /// connection's turn is over.
    fn read_body(&mut self, token: usize) {
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
                    conn.deadline = Instant::now() + self.limits.io_timeout;
                    let input = std::mem::take(&mut self.scratch);
                    let done = self.feed_body(token, &input[..n]);
                    self.scratch = input;
                    if done {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(token),
            }
        }
        self.again.push(token);
    }

    /// Hands a complete request to the worker pool, or answers 503 when the queue is full.
    fn dispatch(&mut self, token: usize, head: RequestHead, body: RequestBody) {
        let Some(conn) = self.connections.get_mut(&token) else { return };
        if self.queue_closed {
            return self.close(token);
        }
        if self.queued.load(Ordering::Relaxed) >= self.queue_capacity {
            // Told to the refusal hook; a warning per request here would flood the log.
            log::debug!("all workers busy and the queue is full: answering 503");
            return self.refuse(token, 503, "server busy, retry later", &[("Retry-After", "1")]);
        }
        conn.state = State::Busy;
        self.queued.fetch_add(1, Ordering::Relaxed);
        // Bytes of a pipelined request already buffered count as input: the worker must wake
        // the poller, no readiness event will.
        // Input the socket may still hold (a read that filled its buffer, a FIN seen) counts too.
        let more = !conn.buf.is_empty() || std::mem::take(&mut conn.maybe_more);
        conn.input_while_busy.store(more, Ordering::SeqCst);
        let input_while_busy = Arc::clone(&conn.input_while_busy);
        let job = Job::Serve { token, stream: Arc::clone(&conn.stream), peer: conn.peer, head, body, input_while_busy };
        self.queue.submit(job);
    }

    /// Writes a delivery the client reads slowly; asks a worker to refill it when drained.
    fn write_delivery(&mut self, token: usize) {
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
                if self.queue_closed {
                    return self.close(token);
                }
                self.queue.submit(Job::Refill { token, stream: Arc::clone(&conn.stream), delivery });
            }
            Progress::Done { keep_alive } => match delivery.take_switch() {
                Some(switch) => self.switch(token, switch),
                None => self.finish_response(token, keep_alive),
            },
            Progress::Failed => self.reset(token),
        }
    }

    /// A `101` head is out: the connection leaves HTTP, for a tunnel this thread relays or for
    /// the application. What the client sent after its request head goes along.
    fn switch(&mut self, token: usize, switch: Switch) {
        let Some(conn) = self.connections.remove(&token) else { return };
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
    fn expect_next_request(&mut self, token: usize) {
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
    }

    /// The response is out: wait for the next request, or linger and close.
    fn finish_response(&mut self, token: usize, keep_alive: bool) {
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
            return self.linger(token);
        }
        let started = !conn.buf.is_empty();
        conn.state = State::Reading { started };
        conn.deadline =
            Instant::now() + if started { self.limits.head_timeout } else { self.limits.keep_alive_timeout };
        let deadline = conn.deadline;
        self.note_deadline(deadline);
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
    fn reset(&mut self, token: usize) {
        if let Some(conn) = self.connections.get(&token) {
            let _ = socket2::SockRef::from(&*conn.stream).set_linger(Some(Duration::ZERO));
        }
        self.close(token);
    }

    /// Answers a small error response without blocking, then lingers and closes: after a refused
    /// request nothing more on this connection is read as a request.
    fn refuse(&mut self, token: usize, status: u16, reason: &str, extra: &[(&str, &str)]) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        if let Some(hook) = &self.on_refusal {
            hook.call(&Refusal { peer: conn.peer, status, reason });
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

    fn linger(&mut self, token: usize) {
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

    fn drain_lingering(&mut self, token: usize) {
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

    fn close(&mut self, token: usize) {
        if let Some(conn) = self.connections.remove(&token) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&conn.stream.as_raw_fd()));
        }
    }

    fn take_returns(&mut self) {
        while let Ok(Returned { token, next }) = self.returns.try_recv() {
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
                    let error = RequestError::BodyTimeout;
                    self.refuse(token, error.status(), error.reason(), &[]);
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

    /// Drops the jobs still waiting for a worker and closes their connections.
    fn drop_queued_jobs(&mut self) {
        while let Some(job) = self.queue.try_take() {
            let token = match job {
                Job::Serve { token, .. } => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    token
                }
                Job::Refill { token, .. } => token,
            };
            self.close(token);
        }
    }

    /// While stopping: an idle connection is closed after [`STOP_IDLE_DRAIN`] (by the sweep).
    fn drain_idle(&mut self, token: usize) {
        let Some(conn) = self.connections.get_mut(&token) else { return };
        if conn.state == (State::Reading { started: false }) {
            conn.deadline = conn.deadline.min(Instant::now() + STOP_IDLE_DRAIN);
            let deadline = conn.deadline;
            self.note_deadline(deadline);
        }
    }

    /// Connections waiting for a next request that has not begun.
    fn idle_connections(&self) -> Vec<usize> {
        self.connections.iter().filter(|(_, c)| c.state == State::Reading { started: false }).map(|(&t, _)| t).collect()
    }

    /// Carries out a stop request step by step; true when the poller may exit.
    fn carry_out_stop(&mut self, now: Instant) -> bool {
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
                if let Some((listener, _)) = self.tls_listener.take() {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&listener.as_raw_fd()));
                }
                // Only now do answers say `Connection: close`: a client told so reconnects at
                // once, and must find the listener closed (refused: never sent), not a
                // handshake the closing listener resets after the client sent its request.
                self.stopping.store(true, Ordering::Release);
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
