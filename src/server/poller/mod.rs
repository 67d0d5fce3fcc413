//! A poller thread, in the shape of Apache's event MPM: it owns its listening sockets (plain
//! and HTTPS; each poller has its own on the same address) and every client connection it
//! accepted, whenever that is not with a worker. It accepts, runs TLS
//! handshakes (each within the handshake timeout), reads request heads and bodies without
//! blocking (bodies into a spool), parks idle keep-alive connections (a buffer each, no thread),
//! finishes writing responses the client reads slowly, enforces every client timeout, and hands
//! each complete request to the worker pool. Nothing a client does holds a worker. Connections
//! that switched protocols are relayed here too (`tunnel.rs`).
//!
//! Here: the connections' state, the loop and accepting. By concern: `read.rs` (heads, bodies
//! read whole, dispatch to the workers), `share.rs` (each client's share of the workers: its
//! requests beyond it held back), `streaming.rs` (bodies streamed to a worker), `write.rs`
//! (what the workers give back, writing to slow clients, closing), `stop.rs` (timeouts and
//! stopping).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::body::BodyDecoder;
use super::cpu_idle::CpuIdle;
use super::fairness::{ClientKey, ClientLoads};
use super::head::RequestHead;
use super::job_queue::{JobQueue, StallWatch};
use super::limits::Limits;
use super::observe::RefusalHook;
use super::pollers::{Adopted, IdleSince, PollerLink};
use super::response::Delivery;
use super::spool::{RequestBody, SpoolSettings};
use super::stream::ClientStream;
use super::tls::TlsAcceptor;
use super::tunnel::{Tunnels, Turn};
use super::upload::{ResumeLink, UploadFeed};
use super::worker::Returned;
use super::TokenMap;
use idle::IdleOrder;

mod idle;
mod read;
mod share;
mod stop;
mod streaming;
mod write;

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
/// How often the warning that idle connections are being closed at the connection cap is
/// written (nginx says it once a second; a busy site would see it constantly).
const ROOM_WARNING_EVERY: Duration = Duration::from_secs(10);
/// Times a poller publishes its oldest idle connection again in one turn because workers gave
/// connections back meanwhile; past it, the next turn comes at once.
const PUBLISH_ROUNDS: usize = 4;
/// Times a poller at the cap tries to claim another's idle connection whose published time
/// changed under it (lowered by a worker, claimed or published anew).
const CLAIM_TRIES: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for (more of) a request head; `started` once a byte of it has arrived.
    Reading { started: bool },
    /// Reading a request body into its spool (`Connection::pending`).
    ReadingBody,
    /// With a worker, and still reading its body, which streams to it (`Connection::upload`;
    /// request buffering off).
    Streaming,
    /// With a worker (serving, or refilling a delivery), or held for its client's share of them
    /// (`share.rs`).
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
    /// When the body began: the minimum rate is reckoned from it.
    started: Instant,
    /// The connection's deadline is the minimum rate's (a cut is `BodyTooSlow`), not the
    /// idle timeout's.
    slow: bool,
}

/// When a body being read is cut: `io_timeout` after its last read, or sooner where the
/// minimum rate says so (Apache's mod_reqtimeout `MinRate`): a body gets `io_timeout` from its
/// start (the grace) plus a second per `rate` bytes received, in all. True with it when the
/// rate's deadline is the sooner.
fn body_deadline(limits: &Limits, rate: u64, started: Instant, received: u64, now: Instant) -> (Instant, bool) {
    let idle = now + limits.io_timeout;
    if rate == 0 {
        return (idle, false);
    }
    let earned = Duration::from_secs_f64(received as f64 / rate as f64);
    match started.checked_add(limits.io_timeout + earned) {
        Some(allowed) if allowed < idle => (allowed, true),
        _ => (idle, false),
    }
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
    /// The client of its latest request, and what that request counts as in its load.
    client: share::ClientSlot,
    /// Requests handed to the workers so far (the first one's backend connection may be kept
    /// its own: `upstream_reuse` safe).
    requests: u64,
}

/// A stop request: set once by the handle, read by the poller.
pub(crate) struct StopSignal {
    pub requested: AtomicBool,
    pub grace: Mutex<Duration>,
}

pub(crate) struct Poller {
    /// This poller's index among the server's: jobs name it, workers return to it.
    me: usize,
    /// Every poller's ends (this one's at `me`).
    pollers: Arc<[PollerLink]>,
    /// Pollers still running: the last to end closes the queue.
    pollers_left: Arc<AtomicUsize>,
    /// Pollers whose listeners are still open (a stop closes them all before answers say
    /// `Connection: close`).
    listening: Arc<AtomicUsize>,
    /// Open connections of all pollers together, against `max_connections`.
    open: Arc<AtomicUsize>,
    /// What this poller has added to `open`.
    counted_open: usize,
    /// Connections other pollers handed over at the connection cap.
    adopted: Receiver<Adopted>,
    /// What an idle connection is marked with now: when the current turn began (after the
    /// poll), or while a worker's return is handled, when that worker finished (a quiet
    /// return may wait long for the poller's next turn; pollers compare these times at the
    /// connection cap).
    idle_from: Instant,
    pub poll: Poll,
    pub listener: Option<TcpListener>,
    /// The HTTPS listener and what its connections start from.
    tls_listener: Option<TcpListener>,
    /// What HTTPS connections start from; kept after a stop closes the listener, for the
    /// connections other pollers hand over meanwhile.
    tls_acceptor: Option<TlsAcceptor>,
    /// Where complete requests go to the workers.
    queue: Arc<JobQueue>,
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
    /// Which client a request comes from.
    client_key: Option<ClientKey>,
    /// What each client has, and its requests held back for its share.
    loads: Arc<ClientLoads>,
    held: share::HeldRequests,
    /// Given to each upload: where its reader asks for more.
    resume: ResumeLink,
    /// Uploads whose reader made room in a full channel.
    resumed: Receiver<usize>,
    /// Connections with input left unread at the end of their turn (edge-triggered readiness
    /// would not report it again).
    again: Vec<usize>,
    connections: TokenMap<Connection>,
    /// Connections waiting for a request that has not begun, longest idle first: at the
    /// connection cap they make room for new ones.
    idle: IdleOrder,
    /// Idle connections closed to make room, counted for the application.
    idle_closed: Arc<AtomicU64>,
    /// When the next warning about closing idle connections at the cap may be written.
    next_room_warning: Instant,
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
    pub me: usize,
    pub pollers: Arc<[PollerLink]>,
    pub pollers_left: Arc<AtomicUsize>,
    pub listening: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    pub adopted: Receiver<Adopted>,
    pub queue: Arc<JobQueue>,
    pub queued: Arc<AtomicUsize>,
    pub queue_capacity: usize,
    pub returns: Receiver<Returned>,
    pub stop: Arc<StopSignal>,
    pub stopping: Arc<AtomicBool>,
    pub spool: Arc<SpoolSettings>,
    pub on_refusal: Option<RefusalHook>,
    pub client_key: Option<ClientKey>,
    pub loads: Arc<ClientLoads>,
    pub idle_closed: Arc<AtomicU64>,
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
            me: links.me,
            pollers: links.pollers,
            pollers_left: links.pollers_left,
            listening: links.listening,
            open: links.open,
            counted_open: 0,
            adopted: links.adopted,
            idle_from: Instant::now(),
            poll,
            listener: Some(listener),
            tls_acceptor: tls_listener.as_ref().map(|(_, acceptor)| acceptor.clone()),
            tls_listener: tls_listener.map(|(listener, _)| listener),
            queue: links.queue,
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
            client_key: links.client_key,
            loads: links.loads,
            held: share::HeldRequests::default(),
            resume: links.resume,
            resumed: links.resumed,
            again: Vec::new(),
            connections: TokenMap::default(),
            idle: IdleOrder::default(),
            idle_closed: links.idle_closed,
            next_room_warning: Instant::now(),
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
            // One poller sizes the hot set: the CPUs' idle time is the machine's, not its own.
            if self.me == 0 && now >= self.next_cpu_sample {
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
            self.idle_from = Instant::now();
            self.take_tuning();
            // Returns first: a worker gives a keep-alive connection back without waking the
            // poller, and the client's next request is what wakes it.
            self.take_returns();
            self.take_resumed();
            self.look_at_held_again();
            self.take_adopted();
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
                self.count_open();
                // The last poller drops what is still queued and closes the queue, so that the
                // workers end once their current jobs are done. One that ends sooner (its
                // connections all closed) leaves the queue alone: it holds the others' requests,
                // still within their grace period.
                if self.pollers_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.drop_queued_jobs();
                    self.queue.close();
                } else {
                    self.drop_held();
                }
                return;
            }
            self.count_open();
            // While stopping, no connection is handed here at the cap (it stays `STOPPING`);
            // with one poller nobody reads it.
            if self.stop_deadline.is_none() && self.pollers.len() > 1 {
                self.publish_oldest_idle();
            }
        }
    }

    /// Publishes when this poller's longest-idle connection became idle, for the other pollers
    /// at the cap. The store would hide a worker's lowering for a return still in the channel,
    /// so the channel is looked at after it: SeqCst store and fence here, send, fence and
    /// SeqCst update in the worker, so either this look sees the return or the update lands
    /// after the store. Connections handed over meanwhile are taken too: their claims must
    /// not be published again.
    fn publish_oldest_idle(&mut self) {
        for _ in 0..PUBLISH_ROUNDS {
            let oldest = self.oldest_idle();
            let link = self.link();
            let oldest = link.idle_since.encode(oldest);
            // Unchanged: nothing is overwritten, so no lowering can be lost.
            if link.oldest_idle.load(Ordering::SeqCst) == oldest {
                return;
            }
            link.oldest_idle.store(oldest, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.returns.is_empty() && self.adopted.is_empty() {
                return;
            }
            self.take_returns();
            self.take_adopted();
            self.count_open();
        }
        // Workers keep giving connections back: the next turn comes at once and publishes.
        self.link().wake();
    }

    /// When this poller's longest-idle connection became idle. The list holds hints: a
    /// connection that began a request since is taken off here, so that its old mark is not
    /// published as idle (it is listed again when it next becomes idle).
    fn oldest_idle(&mut self) -> Option<Instant> {
        while let Some((token, since)) = self.idle.oldest() {
            if self.connections.get(&token).is_some_and(|c| c.state == (State::Reading { started: false })) {
                return Some(since);
            }
            self.idle.remove(token);
        }
        None
    }

    /// This poller's ends, as the other threads see them.
    fn link(&self) -> &PollerLink {
        &self.pollers[self.me]
    }

    /// Brings this poller's part of the shared connection count up to date (what it closed
    /// since; what it opens is counted as it accepts).
    fn count_open(&mut self) {
        let now = self.connections.len() + self.tunnels.len();
        if now != self.counted_open {
            if now > self.counted_open {
                self.open.fetch_add(now - self.counted_open, Ordering::Relaxed);
            } else {
                self.open.fetch_sub(self.counted_open - now, Ordering::Relaxed);
            }
            self.counted_open = now;
            self.link().counters.connections.store(now, Ordering::Relaxed);
        }
    }

    /// Takes new settings from a reload: the limits apply from each connection's next deadline
    /// and next request head, the queue capacity from the next request dispatched.
    fn take_tuning(&mut self) {
        let tuning = self.link().tuning.try_lock().ok().and_then(|mut pending| pending.take());
        if let Some(tuning) = tuning {
            self.limits = tuning.limits;
            self.queue_capacity = tuning.queue_capacity.max(1);
        }
    }

    /// Accepts from the plain listener, or the HTTPS one (`tls`).
    fn accept(&mut self, tls: bool) {
        for _ in 0..MAX_ACCEPTS_PER_TURN {
            let listener = if tls { self.tls_listener.as_ref() } else { self.listener.as_ref() };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.link().counters.accepted.fetch_add(1, Ordering::Relaxed);
                    self.admit(stream, peer, tls, true)
                }
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

    /// Takes the connections other pollers handed over at the cap.
    fn take_adopted(&mut self) {
        while let Ok(Adopted { stream, peer, tls }) = self.adopted.try_recv() {
            self.admit(stream, peer, tls, false);
        }
    }

    /// At the connection cap, the poller whose longest-idle connection has been idle longer
    /// than this one's, and when that one became idle as it published it (none when this one's
    /// is the oldest, or no poller has any).
    fn older_idle_elsewhere(&mut self) -> Option<(usize, u64)> {
        let mine = self.oldest_idle();
        let mine = self.link().idle_since.encode(mine);
        let (poller, theirs) = (0..self.pollers.len())
            .filter(|&i| i != self.me)
            .map(|i| (i, self.pollers[i].oldest_idle.load(Ordering::SeqCst)))
            .filter(|&(_, since)| since < IdleSince::NONE)
            .min_by_key(|&(_, since)| since)?;
        // `NONE` is above every instant: with no idle connection here, any older one wins.
        (theirs < mine).then_some((poller, theirs))
    }

    /// Takes a new connection: this poller's from now on, unless it is at the cap and another
    /// poller has a connection idle longer to close for it (`may_hand_over`): then it goes
    /// there, so that the connection idle longest makes room whichever poller holds it.
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, tls: bool, may_hand_over: bool) {
        let stream = match self.hand_over_at_cap(stream, peer, tls, may_hand_over) {
            Some(stream) => stream,
            None => return,
        };
        // Nagle would hold back each keep-alive response's last segment for up to 40 ms. The
        // socket stays non-blocking for its whole life: workers never wait on it either.
        let setup = stream.set_nodelay(true).and_then(|_| stream.set_nonblocking(true));
        if let Err(e) = setup {
            log::debug!("dropping connection from {peer}: {e}");
            return;
        }
        let stream = match self.tls_acceptor.as_ref().filter(|_| tls) {
            Some(acceptor) => match acceptor.session() {
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
        // The count is all pollers' together: each brings its own part up to date at the end
        // of every turn, so a connection another poller closed this turn may still count (the
        // cap errs on the safe side), and this one's are exact.
        self.count_open();
        let open = self.open.load(Ordering::Relaxed);
        let over_limit = open >= self.limits.max_connections && !self.make_room(open + 1 - self.limits.max_connections);
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
                requests: 0,
                client: share::ClientSlot::default(),
            },
        );
        self.count_open();
        self.note_deadline(deadline);
        if over_limit {
            log::debug!("{peer}: over {} open connections, none idle: refusing", self.limits.max_connections);
            self.refuse(token, 503, "too many open connections", &[("Retry-After", "1")]);
        } else {
            // Idle until its first byte, as nginx counts it: an accepted connection that never
            // sends may be closed for a newer one too.
            self.idle.mark(token, self.idle_from);
            self.advance(token);
        }
    }

    /// Hands `stream` to another poller when at the cap that one has the connection idle
    /// longest; gives it back when it stays here.
    fn hand_over_at_cap(&mut self, stream: TcpStream, peer: SocketAddr, tls: bool, may: bool) -> Option<TcpStream> {
        if !may || self.pollers.len() == 1 {
            return Some(stream);
        }
        self.count_open();
        if self.open.load(Ordering::Relaxed) < self.limits.max_connections {
            return Some(stream);
        }
        // Answers finished since the turn began may have closed connections, or left them
        // idle here.
        self.take_returns();
        self.count_open();
        if self.open.load(Ordering::Relaxed) < self.limits.max_connections {
            return Some(stream);
        }
        for _ in 0..CLAIM_TRIES {
            let Some((other, since)) = self.older_idle_elsewhere() else { return Some(stream) };
            // One newcomer per idle connection published: claimed, it reads `NONE` until a
            // worker lowers it or that poller publishes anew. A value that changed since it
            // was read is read again. SeqCst: the claim sees a worker's lowering, so the
            // adopted connection reaches that poller after the return it stands for.
            let owner = &self.pollers[other];
            if owner.oldest_idle.compare_exchange(since, IdleSince::NONE, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                continue;
            }
            return match owner.adopt.send(Adopted { stream, peer, tls }) {
                Ok(()) => {
                    owner.wake();
                    None
                }
                // That poller has ended (a stop): keep it.
                Err(unsent) => Some(unsent.into_inner().stream),
            };
        }
        Some(stream)
    }

    /// At the connection cap: closes up to `needed` idle connections, the one idle longest
    /// first, as nginx reuses its reusable connections. A client whose idle keep-alive
    /// connection is closed opens another (RFC 9112 9.3.1). True when that made room.
    fn make_room(&mut self, needed: usize) -> bool {
        // Answers finished since the turn began leave their connections idle.
        self.take_returns();
        let mut freed = 0;
        let mut closed_idle = 0;
        while freed < needed {
            let Some(token) = self.idle.pop_oldest() else { break };
            let Some(conn) = self.connections.get(&token) else { continue };
            // Listed when it became idle; it may have begun a request since.
            if conn.state != (State::Reading { started: false }) {
                continue;
            }
            match conn.stream.tcp().peek(&mut [0; 1]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = conn.stream.shutdown(Shutdown::Write);
                    self.close(token);
                    closed_idle += 1;
                    freed += 1;
                }
                // A request (or the client's close) arrived unread: not idle, read it as usual.
                _ => {
                    self.advance(token);
                    match self.connections.get(&token) {
                        None => freed += 1,
                        Some(conn) if conn.state == (State::Reading { started: false }) => {
                            self.idle.mark(token, self.idle_from)
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        if closed_idle > 0 {
            let total = self.idle_closed.fetch_add(closed_idle, Ordering::Relaxed) + closed_idle;
            let now = Instant::now();
            if now >= self.next_room_warning {
                self.next_room_warning = now + ROOM_WARNING_EVERY;
                log::warn!(
                    "max_connections ({}) reached: closing idle connections to make room ({total} so far)",
                    self.limits.max_connections
                );
            }
        }
        freed >= needed
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

    fn note_deadline(&mut self, deadline: Instant) {
        self.next_sweep = self.next_sweep.min(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_gets_the_grace_plus_a_second_per_rate_bytes_or_the_idle_timeout_if_sooner() {
        let limits = Limits { io_timeout: Duration::from_secs(10), ..Limits::default() };
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        // 30 s in with 5 000 bytes at 500 bytes/s: 10 s of grace and 10 s earned are over.
        assert_eq!(body_deadline(&limits, 500, start, 5_000, at(30)), (at(20), true));
        // 2 s in with nothing yet: the grace ends before the idle timeout would.
        assert_eq!(body_deadline(&limits, 500, start, 0, at(2)), (at(10), true));
        // Far ahead of the rate: the idle timeout from now.
        assert_eq!(body_deadline(&limits, 500, start, 1 << 20, at(30)), (at(40), false));
        assert_eq!(body_deadline(&limits, 0, start, 0, at(30)), (at(40), false), "0: no minimum rate");
    }
}
