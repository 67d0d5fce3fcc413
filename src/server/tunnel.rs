//! Connections that leave HTTP after `101 Switching Protocols` (RFC 9110 7.8; WebSocket's
//! handshake, RFC 6455 4). A handler answers 101 with a [`Switch`], and once the 101 head is out
//! the connection is either
//!
//! - a [`Tunnel`] to another socket, relayed byte for byte by the poller thread (lb-sync's
//!   WebSocket pass-through): a tunnel costs two sockets, and a buffer of at most
//!   [`TUNNEL_BUFFER`] per direction only while one side sends faster than the other reads;
//!   never a thread; or
//! - a [`Handoff`] of the socket to the application, which serves the new protocol itself
//!   (lb-backend's WebSocket echo).
//!
//! The relay, per direction: read what the source has and write it to the destination at once;
//! what the destination does not take waits in the buffer, and the source is not read again
//! until it has gone (backpressure: TCP's window then slows the sender down). An end of stream
//! is passed on as a half close (`shutdown(Write)`) once the buffer is out. Readiness is kept
//! per socket from the poller's (edge-triggered) events, as nginx does: a read shorter than
//! asked means the socket is drained, so a round trip costs one read a direction, not a second
//! one that says "would block" (unless the event also said the peer closed: then reads go on
//! until the end of stream is seen). A client on the HTTPS listener (`wss://`) is relayed in
//! plaintext: its side reads and writes through the TLS session, whose queued records go out
//! before an end of stream is passed on. The tunnel closes
//! when both directions have ended, when a socket fails (both are closed), after its idle
//! timeout without a byte either way, or at the end of a stop's grace period.
//!
//! ```
//! use std::net::{TcpListener, TcpStream};
//! use lb_sync::server::{Response, Switch, Tunnel};
//!
//! # let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//! let upstream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
//! let mut tunnel = Tunnel::new(upstream, Vec::new());
//! tunnel.on_close(|end| println!("{} bytes up, {} down, {}", end.from_client, end.to_client, end.reason.as_str()));
//! let response = Response::switching_protocols("websocket", Switch::Tunnel(tunnel));
//! assert_eq!(response.status, 101);
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::stream::ClientStream;

/// Most bytes read from one side of a tunnel at a time, so also the most a direction buffers
/// while its destination is full.
pub const TUNNEL_BUFFER: usize = 16 * 1024;
/// Bytes one direction of a tunnel moves per poller turn before the other connections get
/// theirs (the tunnel is served again in the next turn).
const TURN_BUDGET: usize = 1024 * 1024;
/// Idle timeout of a tunnel unless set: an hour (HAProxy's `timeout tunnel` is usually set to
/// about that for WebSockets; nginx's `proxy_read_timeout` is raised likewise).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// The high bit marks a tunnel's tokens in the poller's token space; below it, the connection's
/// token shifted left once, and the low bit says which side.
pub(crate) const TUNNEL_TOKEN: usize = 1 << (usize::BITS - 1);

/// How a tunnel ended, as told to its [`Tunnel::on_close`] callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelClose {
    /// Both directions ended with an end of stream, each passed on as a half close.
    Ended,
    /// A read or a write failed (a reset); both sides were closed.
    Broken,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// The server stopped (the end of its grace period).
    Stopped,
    /// The 101 answer never reached the client (it went away first): nothing was relayed.
    NeverOpened,
}

impl TunnelClose {
    /// `ended`, `broken`, `idle_timeout`, `stopped` or `never_opened`.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelClose::Ended => "ended",
            TunnelClose::Broken => "broken",
            TunnelClose::IdleTimeout => "idle_timeout",
            TunnelClose::Stopped => "stopped",
            TunnelClose::NeverOpened => "never_opened",
        }
    }
}

/// What a tunnel carried, given to its [`Tunnel::on_close`] callbacks when it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelEnd {
    /// Bytes the client sent that were written to the other socket (bytes that arrived with the
    /// request, after its head, included).
    pub from_client: u64,
    /// Bytes of the other socket written to the client (after the 101 head).
    pub to_client: u64,
    /// From the start of the relay to its end.
    pub duration: Duration,
    /// Why it ended.
    pub reason: TunnelClose,
}

type CloseHook = Box<dyn FnOnce(TunnelEnd) + Send>;

/// The other end of a connection that switched protocols: after the 101 head, the client's
/// bytes go to `peer` and the peer's to the client, relayed by the poller. Its `on_close`
/// callbacks run exactly once, however it ends (dropped unopened included).
pub struct Tunnel {
    peer: TcpStream,
    /// Bytes of the peer already read (they followed its 101 head): the client gets them first.
    to_client: Vec<u8>,
    idle_timeout: Duration,
    hooks: Vec<CloseHook>,
}

impl Tunnel {
    /// A tunnel to `peer` (a connected socket, in any mode); `early` is what the peer sent
    /// after its own 101 head, for the client before anything else. Idle timeout: an hour.
    pub fn new(peer: TcpStream, early: Vec<u8>) -> Tunnel {
        Tunnel { peer, to_client: early, idle_timeout: DEFAULT_IDLE_TIMEOUT, hooks: Vec::new() }
    }

    /// Closes the tunnel after `timeout` without a byte in either direction.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Tunnel {
        self.idle_timeout = timeout;
        self
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Adds a callback run when the tunnel closes (after the ones added before), on the
    /// poller thread or wherever the tunnel is dropped: it must not block.
    pub fn on_close(&mut self, f: impl FnOnce(TunnelEnd) + Send + 'static) {
        self.hooks.push(Box::new(f));
    }

    /// Runs the callbacks, once.
    fn finish(&mut self, end: TunnelEnd) {
        for hook in std::mem::take(&mut self.hooks) {
            hook(end);
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let end =
            TunnelEnd { from_client: 0, to_client: 0, duration: Duration::ZERO, reason: TunnelClose::NeverOpened };
        self.finish(end);
    }
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel").field("peer", &self.peer).field("idle_timeout", &self.idle_timeout).finish()
    }
}

/// Takes over a client's socket after the 101 head: called with the socket (in blocking mode)
/// and the bytes the client sent after its request head. It runs on the poller thread, so it
/// must not block: it should hand the socket to a thread of its own.
pub type Handoff = Box<dyn FnOnce(TcpStream, Vec<u8>) + Send>;

/// What becomes of a connection once its `101 Switching Protocols` head is out.
pub enum Switch {
    /// Relayed both ways to another socket by the poller.
    Tunnel(Tunnel),
    /// Given to the application.
    Handoff(Handoff),
}

impl fmt::Debug for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Switch::Tunnel(tunnel) => tunnel.fmt(f),
            Switch::Handoff(_) => f.write_str("Handoff"),
        }
    }
}

/// What the events say a socket can do without blocking.
struct Ready {
    readable: bool,
    writable: bool,
    /// The peer closed its side (or the socket failed): read on to see it, short reads or not.
    closed: bool,
}

impl Ready {
    /// A fresh socket: try both, and the first would-block says otherwise.
    fn unknown() -> Ready {
        Ready { readable: true, writable: true, closed: false }
    }

    fn note(&mut self, event: &Event) {
        let failed = event.is_error();
        self.closed |= event.is_read_closed() || failed;
        self.readable |= event.is_readable() || self.closed;
        self.writable |= event.is_writable() || event.is_write_closed() || failed;
    }
}

/// What a tunnel needs of the socket it writes to besides `Write`: passing an end of stream on.
trait HalfClose {
    fn shutdown_write(&self) -> io::Result<()>;
}

impl HalfClose for TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// A client over TLS says `close_notify` first (see [`ClientStream::shutdown`]).
impl HalfClose for ClientStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// What a tunnel needs of the socket it reads from besides `Read`: whether a short read left
/// the end of stream unread (see [`ClientStream::end_pending`]).
trait EndPending {
    fn end_pending(&self) -> bool;
}

impl EndPending for TcpStream {
    fn end_pending(&self) -> bool {
        false
    }
}

impl EndPending for ClientStream {
    fn end_pending(&self) -> bool {
        ClientStream::end_pending(self)
    }
}

/// One direction of a tunnel.
#[derive(Default)]
struct Pipe {
    /// Bytes read from the source that the destination has not taken yet (`written` of them
    /// are out). Empty, without an allocation, while the destination keeps up.
    pending: Vec<u8>,
    written: usize,
    /// The source ended its stream.
    eof: bool,
    /// The end of stream was passed on: the destination is shut down for writing.
    shut: bool,
    /// Bytes written to the destination.
    bytes: u64,
}

/// How far one direction got in a turn.
enum Flow {
    /// Waiting for the source to have more, or for the destination to take more: a readiness
    /// event will come.
    Waiting,
    /// Its turn's budget is spent with more to move.
    More,
}

impl Pipe {
    /// Moves bytes from `src` to `dst` until one of them would block, the stream ends, or the
    /// turn's budget is spent. `moved` is set when a byte moved.
    fn pump<S: EndPending, D: HalfClose>(
        &mut self,
        (src, src_ready): (&S, &mut Ready),
        (dst, dst_ready): (&D, &mut Ready),
        scratch: &mut [u8],
        moved: &mut bool,
    ) -> io::Result<Flow>
    where
        for<'a> &'a S: Read,
        for<'a> &'a D: Write,
    {
        let mut budget = TURN_BUDGET;
        loop {
            // A TLS client may hold records of what it took (a plain socket never does): they
            // go first, and the end of stream only after them.
            let mut flushed = false;
            if dst_ready.writable {
                match (&*dst).flush() {
                    Ok(()) => flushed = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst_ready.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            while self.written < self.pending.len() {
                if !dst_ready.writable {
                    return Ok(Flow::Waiting);
                }
                match (&*dst).write(&self.pending[self.written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.written += n;
                        self.bytes += n as u64;
                        *moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        dst_ready.writable = false;
                        return Ok(Flow::Waiting);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if !self.pending.is_empty() {
                // Drained: a direction that keeps up holds no buffer.
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                if !self.shut && flushed {
                    self.shut = true;
                    // A peer that is gone already fails here; the other direction finds out too.
                    let _ = dst.shutdown_write();
                }
                return Ok(Flow::Waiting);
            }
            if !src_ready.readable || !dst_ready.writable {
                // Nothing to read, or nowhere to put it: the source waits in its socket.
                return Ok(Flow::Waiting);
            }
            if budget == 0 {
                return Ok(Flow::More);
            }
            let n = match (&*src).read(&mut scratch[..TUNNEL_BUFFER]) {
                // UnexpectedEof: a TLS client that closed without close_notify. Passed on as the
                // end of stream its TCP FIN is (the tunnel's protocol frames its own messages).
                Ok(0) => {
                    self.eof = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.eof = true;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    src_ready.readable = false;
                    return Ok(Flow::Waiting);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n < TUNNEL_BUFFER && !src_ready.closed && !src.end_pending() {
                // Drained: whatever arrives later raises a new edge.
                src_ready.readable = false;
            }
            *moved = true;
            budget = budget.saturating_sub(n);
            // Straight on from the scratch buffer; only what the destination refuses is kept.
            let mut out = 0;
            while out < n && dst_ready.writable {
                match (&*dst).write(&scratch[out..n]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(k) => {
                        out += k;
                        self.bytes += k as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst_ready.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if out < n {
                self.pending = scratch[out..n].to_vec();
                return Ok(Flow::Waiting);
            }
        }
    }
}

/// A tunnel being relayed.
struct Relay {
    /// The client, plain or TLS (a WebSocket over `wss://` is relayed in plaintext here).
    client: ClientStream,
    client_ready: Ready,
    peer_ready: Ready,
    tunnel: Tunnel,
    /// Client → peer.
    up: Pipe,
    /// Peer → client.
    down: Pipe,
    opened: Instant,
    last_active: Instant,
}

impl Relay {
    fn deadline(&self) -> Instant {
        self.last_active + self.tunnel.idle_timeout
    }

    fn end(&mut self, reason: TunnelClose) {
        let end = TunnelEnd {
            from_client: self.up.bytes,
            to_client: self.down.bytes,
            duration: self.opened.elapsed(),
            reason,
        };
        self.tunnel.finish(end);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Still open when the poller goes away: a stop.
        self.end(TunnelClose::Stopped);
    }
}

/// What a turn of a tunnel left to do.
pub(crate) enum Turn {
    /// Waiting for readiness events.
    Idle,
    /// A direction spent its budget: serve it again next turn.
    Again,
}

/// The open tunnels of a poller, keyed by the token their client connection had.
#[derive(Default)]
pub(crate) struct Tunnels {
    open: super::TokenMap<Relay>,
    /// While stopping: when every tunnel (those opened later too) is closed.
    close_at: Option<Instant>,
}

fn client_token(id: usize) -> Token {
    Token(TUNNEL_TOKEN | id << 1)
}

fn peer_token(id: usize) -> Token {
    Token(TUNNEL_TOKEN | id << 1 | 1)
}

impl Tunnels {
    /// Whether a poller token belongs to a tunnel.
    pub fn owns(token: usize) -> bool {
        token & TUNNEL_TOKEN != 0
    }

    /// The poller token of a tunnel's client side (to serve it again next turn).
    pub fn token_of(id: usize) -> usize {
        client_token(id).0
    }

    /// Open tunnels.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Starts relaying between `client` (deregistered from the poller already) and the tunnel's
    /// peer; `from_client` is what the client sent after its request head. Returns the tunnel's
    /// idle deadline, or `None` when it could not start or ended at once.
    pub fn open(
        &mut self,
        registry: &Registry,
        id: usize,
        client: ClientStream,
        from_client: Vec<u8>,
        mut tunnel: Tunnel,
        scratch: &mut [u8],
    ) -> Option<(Instant, Turn)> {
        let setup = tunnel.peer.set_nonblocking(true).and_then(|()| tunnel.peer.set_nodelay(true));
        let both = Interest::READABLE | Interest::WRITABLE;
        let registered = setup
            .and_then(|()| registry.register(&mut SourceFd(&client.as_raw_fd()), client_token(id), both))
            .and_then(|()| registry.register(&mut SourceFd(&tunnel.peer.as_raw_fd()), peer_token(id), both));
        let now = Instant::now();
        let to_client = std::mem::take(&mut tunnel.to_client);
        let mut relay = Relay {
            client,
            client_ready: Ready::unknown(),
            peer_ready: Ready::unknown(),
            tunnel,
            up: Pipe { pending: from_client, ..Pipe::default() },
            down: Pipe { pending: to_client, ..Pipe::default() },
            opened: now,
            last_active: now,
        };
        if let Err(e) = registered {
            log::warn!("cannot start a tunnel: {e}");
            let _ = registry.deregister(&mut SourceFd(&relay.client.as_raw_fd()));
            let _ = registry.deregister(&mut SourceFd(&relay.tunnel.peer.as_raw_fd()));
            relay.end(TunnelClose::Broken);
            return None;
        }
        self.open.insert(id, relay);
        // Bytes that came before the switch raised their readiness edges already.
        let turn = self.pump(registry, id, scratch)?;
        let deadline = now + self.open.get(&id)?.tunnel.idle_timeout;
        Some((self.close_at.map_or(deadline, |at| at.min(deadline)), turn))
    }

    /// Takes in what an event says of one of a tunnel's sockets (before [`ready`](Self::ready)).
    pub fn note(&mut self, token: usize, event: &Event) {
        if let Some(relay) = self.open.get_mut(&((token & !TUNNEL_TOKEN) >> 1)) {
            let side = if token & 1 == 0 { &mut relay.client_ready } else { &mut relay.peer_ready };
            side.note(event);
        }
    }

    /// Serves the tunnel a readiness event (or a previous turn) was for.
    pub fn ready(&mut self, registry: &Registry, token: usize, scratch: &mut [u8]) -> Turn {
        self.pump(registry, (token & !TUNNEL_TOKEN) >> 1, scratch).unwrap_or(Turn::Idle)
    }

    /// Both directions, as far as they go; `None` when the tunnel closed.
    fn pump(&mut self, registry: &Registry, id: usize, scratch: &mut [u8]) -> Option<Turn> {
        let relay = self.open.get_mut(&id)?;
        let mut moved = false;
        let client = (&relay.client, &mut relay.client_ready);
        let peer = (&relay.tunnel.peer, &mut relay.peer_ready);
        let up = relay.up.pump(client, peer, scratch, &mut moved);
        let client = (&relay.client, &mut relay.client_ready);
        let peer = (&relay.tunnel.peer, &mut relay.peer_ready);
        let down = relay.down.pump(peer, client, scratch, &mut moved);
        if moved {
            relay.last_active = Instant::now();
        }
        match (up, down) {
            (Err(e), _) | (_, Err(e)) => {
                log::debug!("tunnel closed: {e}");
                self.close(registry, id, TunnelClose::Broken);
                None
            }
            _ if relay.up.shut && relay.down.shut => {
                self.close(registry, id, TunnelClose::Ended);
                None
            }
            (Ok(Flow::More), _) | (_, Ok(Flow::More)) => Some(Turn::Again),
            _ => Some(Turn::Idle),
        }
    }

    fn close(&mut self, registry: &Registry, id: usize, reason: TunnelClose) {
        if let Some(mut relay) = self.open.remove(&id) {
            let _ = registry.deregister(&mut SourceFd(&relay.client.as_raw_fd()));
            let _ = registry.deregister(&mut SourceFd(&relay.tunnel.peer.as_raw_fd()));
            relay.end(reason);
        }
    }

    /// Closes the tunnels idle past their timeout (all of them past a stop's `close_at`);
    /// returns the earliest deadline left.
    pub fn sweep(&mut self, registry: &Registry, now: Instant) -> Option<Instant> {
        if self.close_at.is_some_and(|at| now >= at) {
            self.close_all(registry, TunnelClose::Stopped);
        }
        let expired: Vec<usize> = self.open.iter().filter(|(_, r)| r.deadline() <= now).map(|(&id, _)| id).collect();
        for id in expired {
            self.close(registry, id, TunnelClose::IdleTimeout);
        }
        let next = self.open.values().map(Relay::deadline).min()?;
        Some(self.close_at.map_or(next, |at| at.min(next)))
    }

    /// A stop: every tunnel is closed by the sweep at `at`.
    pub fn close_from(&mut self, at: Instant) {
        self.close_at = Some(at);
    }

    /// Closes every tunnel (a stop's deadline).
    pub fn close_all(&mut self, registry: &Registry, reason: TunnelClose) {
        let ids: Vec<usize> = self.open.keys().copied().collect();
        for id in ids {
            self.close(registry, id, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::stream::testing::tls_pair;
    use std::net::TcpListener;

    /// A TLS client's last bytes and its close_notify, read together, with its TCP still
    /// open (Go's tls.Conn.CloseWrite, an OpenSSL SSL_shutdown that waits for ours): the short read
    /// would mark the client drained while rustls already holds the close_notify, and no readiness
    /// edge comes again: the end of stream must still reach the peer.
    #[test]
    fn a_close_notify_read_with_the_last_bytes_is_passed_on() {
        let (client_side, mut client) = tls_pair(1 << 20, 1 << 20);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut far_peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer_side, _) = listener.accept().unwrap();
        peer_side.set_nonblocking(true).unwrap();
        client.write_all(b"last message").unwrap();
        client.conn.send_close_notify();
        client.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // As the poller does: register (edge-triggered), then pump once, then follow events.
        let mut poll = mio::Poll::new().unwrap();
        let both = Interest::READABLE | Interest::WRITABLE;
        poll.registry().register(&mut SourceFd(&client_side.as_raw_fd()), Token(0), both).unwrap();
        poll.registry().register(&mut SourceFd(&peer_side.as_raw_fd()), Token(1), both).unwrap();
        let (mut client_ready, mut peer_ready) = (Ready::unknown(), Ready::unknown());
        let mut up = Pipe::default();
        let mut scratch = vec![0u8; TUNNEL_BUFFER];
        let mut events = mio::Events::with_capacity(16);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut moved = false;
            up.pump((&client_side, &mut client_ready), (&peer_side, &mut peer_ready), &mut scratch, &mut moved)
                .unwrap();
            if up.shut || Instant::now() > deadline {
                break;
            }
            poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
            for event in events.iter() {
                if event.token() == Token(0) {
                    client_ready.note(event)
                } else {
                    peer_ready.note(event)
                }
            }
        }
        far_peer.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut got = Vec::new();
        let end = far_peer.read_to_end(&mut got);
        assert_eq!(got, b"last message");
        assert!(up.eof && up.shut && end.is_ok(), "the client's close_notify was never passed on: {end:?}");
    }

    #[test]
    fn a_tls_client_gets_every_byte_before_the_end_of_stream() {
        // The peer sends 100 kB and closes; the client reads slowly through a small window, so
        // the TLS session holds records the socket has not taken yet when the peer's end comes:
        // they must reach the client before its close_notify.
        const SIZE: usize = 100_000;
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 241) as u8).collect();
        let (client_side, mut client) = tls_pair(4096, 4096);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            let mut peer = TcpStream::connect(addr).unwrap();
            peer.write_all(&sent).unwrap();
        });
        let (peer_side, _) = listener.accept().unwrap();
        peer_side.set_nonblocking(true).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let end = loop {
                match client.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break Err(e.kind()),
                }
                std::thread::sleep(Duration::from_micros(200));
            };
            (got, end)
        });
        let mut down = Pipe::default();
        let (mut peer_ready, mut client_ready) = (Ready::unknown(), Ready::unknown());
        let mut scratch = vec![0u8; TUNNEL_BUFFER];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !down.shut {
            assert!(Instant::now() < deadline, "the end of stream was never passed on");
            let mut moved = false;
            down.pump((&peer_side, &mut peer_ready), (&client_side, &mut client_ready), &mut scratch, &mut moved)
                .unwrap();
            // No poller here: as if every readiness event had come.
            std::thread::sleep(Duration::from_millis(1));
            peer_ready.readable = true;
            client_ready.writable = true;
        }
        writer.join().unwrap();
        let (got, end) = reader.join().unwrap();
        assert_eq!(end, Ok(()), "a clean end (close_notify) after {} of {SIZE} bytes", got.len());
        assert!(got == data, "{} of {SIZE} bytes, or not the same ones", got.len());
    }
}
