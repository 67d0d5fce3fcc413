//! The HTTP/1.1 server that lb-sync and lb-backend stand on.
//!
//! Shape (Apache's event MPM, one listener per core as nginx and HAProxy have): **pollers**
//! own all client I/O that waits on a client: accepting, TLS handshakes, idle keep-alive
//! connections, request heads, request bodies (buffered in memory, then in a temp file), and
//! the rest of any response the client reads slowly. Each poller binds its own listening socket
//! on the address (`SO_REUSEPORT`: the kernel spreads new connections over them) and owns the
//! connections it accepted for their whole life. A complete request goes through one **bounded
//! queue** to one **fixed pool of worker threads**, which run the handler (blocking on a backend
//! is fine there) and write the response with non-blocking writes, handing the connection back
//! to the poller that owns it ([`pollers`]) with what the socket did not take. Only as many
//! workers stay awake as keep the cores busy; one blocked on a backend ([`while_blocked`]) lets
//! another wake (`job_queue.rs`). A slow or idle client costs a buffer, never a thread. A
//! connection that switches protocols (`101`) goes back to its poller too, which relays it as
//! a [`Tunnel`] (see `tunnel.rs`).
//!
//! An HTTPS listener ([`ServerConfig::tls`]) is served by the same pollers and workers: each
//! poller binds one on the HTTPS address too, runs the handshakes of the connections it accepts
//! and decrypts requests as it reads them; workers encrypt the responses they write
//! (`stream.rs`). One connection limit, queue and stop cover all of them.
//!
//! ```no_run
//! use lb_sync::server::{Handler, Request, Response, Server, ServerConfig};
//!
//! struct Hello;
//! impl Handler for Hello {
//!     fn handle(&self, _request: Request) -> Response {
//!         Response::text(200, "hello")
//!     }
//! }
//!
//! let config = ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
//! let server = Server::start(config, Hello).unwrap();
//! println!("listening on {}", server.local_addr());
//! server.stop(std::time::Duration::from_secs(5));
//! ```

mod body;
mod cpu_idle;
mod error;
mod fairness;
pub mod field;
mod head;
mod job_queue;
mod limits;
mod listener;
mod observe;
mod poller;
pub mod pollers;
mod request;
mod response;
mod spool;
mod stream;
mod target;
mod tls;
mod tokens;
mod tunnel;
mod upload;
mod worker;

pub use body::{BodyDecoder, BodySink};
pub use error::{reason_phrase, RequestError};
pub use fairness::ClientKey;
pub use head::{
    is_hop_by_hop, is_valid_authority, parse_head, BodyFraming, Header, ParseOutcome, RequestHead, Version, HOP_BY_HOP,
};
pub use job_queue::while_blocked;
pub(crate) use job_queue::{begin_blocked_phase, end_blocked_phase};
pub use limits::Limits;
pub use listener::{bind, bind_for, bind_twin, listen_error};
pub use observe::{Finished, Refusal, RefusalHook};
pub use pollers::{default_pollers, PollerGauges, PollerStats};
pub use request::Request;
pub use response::{status_has_no_body, Body, Response};
pub use spool::{BodyBuffering, RequestBody};
pub use target::{canonical_target, PathRules};
pub use tls::{Certificate, Certificates, TlsAcceptor};
pub(crate) use tokens::TokenMap;
pub use tunnel::{Handoff, Switch, Tunnel, TunnelClose, TunnelEnd, TUNNEL_BUFFER};
pub use upload::EarlyAnswerCheck;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Poll, Waker};

use poller::{Poller, PollerLinks, StopSignal, STOP_HARD_WAIT, WAKER};
use pollers::{IdleSince, PollerLink};
use spool::SpoolSettings;
use worker::Worker;

/// Serves requests: the application side of the server (lb-sync's proxy, lb-backend's demo).
///
/// A handler runs on a worker thread and may block (on a backend, a delay); the pool size bounds
/// how many run at once. The request's body is complete when it runs; the response's body may
/// be a stream, read by workers as the client takes it.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: Request) -> Response;
}

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on. Default `0.0.0.0:8080`.
    pub bind: SocketAddr,
    /// Worker threads serving requests. Default: twice the CPU count, at least 4.
    pub threads: usize,
    /// Poller threads, each with its own listening socket and the connections it accepted.
    /// Default [`default_pollers`]: one per CPU, at most 16.
    pub pollers: usize,
    /// Reads each poller's counters once the server runs. Default: fresh gauges.
    pub poller_gauges: PollerGauges,
    /// Complete requests that may wait for a worker; more get `503` with `Retry-After` at once.
    /// Default 1024.
    pub queue_capacity: usize,
    /// Listen backlog. Default 1024.
    pub backlog: i32,
    /// Limits and timeouts of client connections.
    pub limits: Limits,
    /// How request bodies are buffered before a worker sees them.
    pub body_buffering: BodyBuffering,
    /// Requests waiting for a worker now; the server counts in it, so a clone kept by the
    /// caller reads the queue's depth. Default: a fresh counter.
    pub queue_depth: Arc<AtomicUsize>,
    /// Told of each request the front end refuses on its own. Default none.
    pub on_refusal: Option<RefusalHook>,
    /// Which client a request comes from, for the per-client limits
    /// ([`Limits::client_max_workers`], [`Limits::client_max_in_flight`]). Default none: the
    /// peer's address.
    pub client_key: Option<ClientKey>,
    /// Idle connections closed to make room for new ones at [`Limits::max_connections`]; the
    /// server counts in it, so a clone kept by the caller reads it. Default: a fresh counter.
    pub idle_closed: Arc<AtomicU64>,
    /// An HTTPS listener beside the plain one, served by the same poller and workers (one
    /// connection limit, one queue, one stop). Default none.
    pub tls: Option<TlsListener>,
}

/// Where an HTTPS listener binds and what it serves.
///
/// ```no_run
/// use lb_sync::server::{Certificates, ServerConfig, TlsAcceptor, TlsListener};
/// let certificates = Certificates::load(&[("cert.pem".into(), "key.pem".into())]).unwrap();
/// let tls = TlsListener { bind: "127.0.0.1:8443".parse().unwrap(), acceptor: TlsAcceptor::new(certificates) };
/// let config = ServerConfig { tls: Some(tls), ..ServerConfig::default() };
/// # drop(config);
/// ```
#[derive(Clone, Debug)]
pub struct TlsListener {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// The TLS configuration and certificates.
    pub acceptor: TlsAcceptor,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        ServerConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            threads: (cpus * 2).max(4),
            pollers: default_pollers(),
            poller_gauges: PollerGauges::default(),
            queue_capacity: 1024,
            backlog: 1024,
            limits: Limits::default(),
            body_buffering: BodyBuffering::default(),
            queue_depth: Arc::new(AtomicUsize::new(0)),
            on_refusal: None,
            client_key: None,
            idle_closed: Arc::new(AtomicU64::new(0)),
            tls: None,
        }
    }
}

/// The settings of a running server that may change without a restart (a reload): they apply
/// from the next request of every connection (limits), the next request queued (the queue
/// capacity) and the next body byte buffered (body buffering; its temp directory stays).
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// Limits and timeouts of client connections.
    pub limits: Limits,
    /// Complete requests that may wait for a worker.
    pub queue_capacity: usize,
    /// How request bodies are buffered.
    pub body_buffering: BodyBuffering,
}

/// Changes a running server's [`Tuning`]; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Tuner {
    pollers: Arc<[PollerLink]>,
    spool: Arc<SpoolSettings>,
    tls: Option<TlsAcceptor>,
}

impl Tuner {
    /// Serves `certificates` on the HTTPS listener from the next handshake on (every poller's);
    /// false (nothing done) when the server has none.
    pub fn replace_certificates(&self, certificates: Certificates) -> bool {
        self.tls.as_ref().map(|tls| tls.replace(certificates)).is_some()
    }

    /// Hands new settings to every poller (each takes them at its next turn) and the body
    /// buffering.
    pub fn apply(&self, tuning: Tuning) {
        self.spool.apply(&tuning.body_buffering);
        for poller in self.pollers.iter() {
            *poller.tuning.lock().unwrap_or_else(|e| e.into_inner()) = Some(tuning.clone());
            poller.wake();
        }
    }
}

impl std::fmt::Debug for Tuner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tuner").finish_non_exhaustive()
    }
}

/// Threads of a server still running, counted down as each ends (however it ends), so that a
/// stop can wait for them with a deadline.
#[derive(Default)]
struct Running {
    count: Mutex<usize>,
    ended: Condvar,
}

/// Held by each thread of a server; its drop counts the thread out.
struct RunningGuard(Arc<Running>);

impl RunningGuard {
    fn enter(running: &Arc<Running>) -> RunningGuard {
        *running.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        RunningGuard(Arc::clone(running))
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut count = self.0.count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_sub(1);
        self.0.ended.notify_all();
    }
}

/// Binds the HTTPS listener, saying which one failed.
fn bind_tls(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    bind_for(Some("TLS"), addr, backlog)
}

/// How long a stop waits for the threads after the hard deadline (grace + the poller's hard
/// wait) before it leaves the ones still running behind.
const JOIN_MARGIN: Duration = Duration::from_secs(2);

/// A running server; [`Server::stop`] ends it. Dropping it without `stop` stops it too, with a
/// grace period of zero.
pub struct Server {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    stop: Arc<StopSignal>,
    pollers: Arc<[PollerLink]>,
    threads: Vec<JoinHandle<()>>,
    running: Arc<Running>,
    tuner: Tuner,
}

/// Closes the job queue when dropped armed: a start that fails after some workers were spawned
/// (a later spawn, the poller) must not leave them parked forever, holding the handler.
struct CloseQueueOnError(Option<Arc<job_queue::JobQueue>>);

impl Drop for CloseQueueOnError {
    fn drop(&mut self) {
        if let Some(queue) = self.0.take() {
            queue.close();
        }
    }
}

/// Each poller's listening sockets: the plain one, and the HTTPS one with its acceptor.
type Listeners = (TcpListener, Option<(TcpListener, TlsAcceptor)>);

/// Binds the listening sockets of `pollers` pollers: `first` and twins of it on its address,
/// and the HTTPS listener's likewise.
fn bind_listeners(first: TcpListener, config: &ServerConfig, pollers: usize) -> io::Result<Vec<Listeners>> {
    let tls_first = match &config.tls {
        Some(tls) => Some((bind_tls(tls.bind, config.backlog)?, tls.acceptor.clone())),
        None => None,
    };
    let mut listeners = Vec::with_capacity(pollers);
    for _ in 1..pollers {
        let plain = bind_twin(&first, config.backlog)?;
        let tls = match &tls_first {
            Some((listener, acceptor)) => Some((bind_twin(listener, config.backlog)?, acceptor.clone())),
            None => None,
        };
        listeners.push((plain, tls));
    }
    listeners.insert(0, (first, tls_first));
    Ok(listeners)
}

impl Server {
    /// Binds `config.bind` and starts the pollers and the worker pool.
    pub fn start(config: ServerConfig, handler: impl Handler) -> io::Result<Server> {
        let listener = bind(config.bind, config.backlog)?;
        Server::start_on(listener, config, handler)
    }

    /// Starts on a listener bound with [`bind`] (so its port is known before the handler is
    /// built); `config.bind` is ignored (`config.tls`'s address is bound here). With more than
    /// one poller, the others bind twins of it ([`bind_twin`]), which a listener bound some
    /// other way (without `SO_REUSEPORT`) refuses.
    pub fn start_on(listener: TcpListener, config: ServerConfig, handler: impl Handler) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let poller_count = config.pollers.max(1);
        let listeners = bind_listeners(listener, &config, poller_count)?;
        let tls_addr = listeners[0].1.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
        let mut polls = Vec::with_capacity(poller_count);
        let mut links = Vec::with_capacity(poller_count);
        let mut own_ends = Vec::with_capacity(poller_count);
        let started = IdleSince(Instant::now());
        for _ in 0..poller_count {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (return_tx, return_rx) = crossbeam_channel::unbounded();
            let (adopt_tx, adopt_rx) = crossbeam_channel::unbounded();
            links.push(PollerLink::new(return_tx, Arc::clone(&waker), adopt_tx, started));
            polls.push(poll);
            own_ends.push((return_rx, adopt_rx, waker));
        }
        let pollers: Arc<[PollerLink]> = links.into();
        config.poller_gauges.attach(&pollers);
        let queued = Arc::clone(&config.queue_depth);
        let workers = config.threads.max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let queue = Arc::new(job_queue::JobQueue::new(workers, cores));
        let mut close_on_error = CloseQueueOnError(Some(Arc::clone(&queue)));
        let stop = Arc::new(StopSignal { requested: AtomicBool::new(false), grace: Mutex::new(Duration::ZERO) });
        let stopping = Arc::new(AtomicBool::new(false));
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let running = Arc::new(Running::default());
        let spool = Arc::new(SpoolSettings::new(&config.body_buffering));
        let loads = Arc::new(fairness::ClientLoads::new());
        let open = Arc::new(AtomicUsize::new(0));
        let pollers_left = Arc::new(AtomicUsize::new(poller_count));
        let listening = Arc::new(AtomicUsize::new(poller_count));

        let mut threads = Vec::with_capacity(workers + poller_count);
        for i in 0..workers {
            let worker = Worker {
                queue: Arc::clone(&queue),
                queued: Arc::clone(&queued),
                pollers: Arc::clone(&pollers),
                handler: Arc::clone(&handler),
                stopping: Arc::clone(&stopping),
                loads: Arc::clone(&loads),
            };
            let guard = RunningGuard::enter(&running);
            let run = move || {
                let _guard = guard;
                worker.run()
            };
            threads.push(std::thread::Builder::new().name(format!("worker-{i}")).spawn(run)?);
        }
        let ends = polls.into_iter().zip(own_ends).zip(listeners).enumerate();
        let mut ready = Vec::with_capacity(poller_count);
        for (me, ((poll, (returns, adopted, waker)), (listener, tls_listener))) in ends {
            let (resume_tx, resume_rx) = crossbeam_channel::unbounded();
            let links = PollerLinks {
                me,
                pollers: Arc::clone(&pollers),
                pollers_left: Arc::clone(&pollers_left),
                listening: Arc::clone(&listening),
                open: Arc::clone(&open),
                queue: Arc::clone(&queue),
                queued: Arc::clone(&queued),
                queue_capacity: config.queue_capacity.max(1),
                returns,
                adopted,
                stop: Arc::clone(&stop),
                stopping: Arc::clone(&stopping),
                spool: Arc::clone(&spool),
                on_refusal: config.on_refusal.clone(),
                client_key: config.client_key.clone(),
                loads: Arc::clone(&loads),
                idle_closed: Arc::clone(&config.idle_closed),
                resume: upload::ResumeLink { tokens: resume_tx, waker },
                resumed: resume_rx,
            };
            ready.push(Poller::new(poll, listener, tls_listener, config.limits.clone(), links)?);
        }
        for (me, poller) in ready.into_iter().enumerate() {
            let guard = RunningGuard::enter(&running);
            let run = move || {
                let _guard = guard;
                poller.run()
            };
            let name = if poller_count == 1 { "poller".to_string() } else { format!("poller-{me}") };
            threads.push(std::thread::Builder::new().name(name).spawn(run)?);
        }
        let tuner = Tuner { pollers: Arc::clone(&pollers), spool, tls: config.tls.map(|t| t.acceptor) };
        close_on_error.0 = None;
        Ok(Server { local_addr, tls_addr, stop, pollers, threads, running, tuner })
    }

    /// A handle that changes this server's settings while it runs.
    pub fn tuner(&self) -> Tuner {
        self.tuner.clone()
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What request bodies may hold in temp files, as sized at start from the free space:
    /// one line for the start log.
    pub fn body_spool(&self) -> String {
        self.tuner.spool.describe()
    }

    /// The HTTPS listener's address, when there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Stops accepting, closes idle connections, lets in-flight requests finish for up to
    /// `grace` (their responses say `Connection: close`), breaks the client sockets of any still
    /// running after it, and joins every thread. Bounded: a thread still busy a few seconds
    /// after the deadline (a handler blocked on something no socket shutdown reaches) is left
    /// behind with a warning rather than waited for forever. Returns how many were left.
    pub fn stop(mut self, grace: Duration) -> usize {
        self.request_stop(grace)
    }

    fn request_stop(&mut self, grace: Duration) -> usize {
        if self.threads.is_empty() {
            return 0;
        }
        *self.stop.grace.lock().unwrap_or_else(|e| e.into_inner()) = grace;
        self.stop.requested.store(true, Ordering::Release);
        for poller in self.pollers.iter() {
            poller.wake();
        }
        let give_up = Instant::now() + grace + STOP_HARD_WAIT + JOIN_MARGIN;
        let mut count = self.running.count.lock().unwrap_or_else(|e| e.into_inner());
        while *count > 0 {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            count = self.running.ended.wait_timeout(count, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        let stuck = *count;
        drop(count);
        for thread in self.threads.drain(..) {
            if thread.is_finished() || stuck == 0 {
                let _ = thread.join();
            }
        }
        if stuck > 0 {
            log::warn!("stop: {stuck} thread(s) still busy after the deadline were left behind");
        }
        stuck
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.request_stop(Duration::ZERO);
    }
}
