//! Binding the listening socket: what std's `TcpListener::bind` does not let us choose, and a
//! failure worded for the operator (which address, and the likely cause).

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `addr` with `SO_REUSEADDR` (a restart does not wait out TIME_WAIT) and a backlog of
/// `backlog` (std uses 128, too few for a burst of connections), non-blocking for the poller.
/// A failure names the address and the likely cause (see [`listen_error`]).
///
/// The socket has `SO_REUSEPORT`, so that each poller of a server can bind its own on the same
/// address ([`bind_twin`]) and the kernel spreads new connections over them. An address some
/// other socket listens on is still refused: a second lb-sync on the same port must fail, not
/// quietly take half of the first one's connections.
pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    bind_for(None, addr, backlog)
}

/// [`bind`] for a listener with a role (`"TLS"`, `"the management API"`), named in a failure.
pub fn bind_for(role: Option<&str>, addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    bind_socket(addr, backlog).map_err(|e| listen_error(role, addr, &e))
}

/// Binds another listening socket on the address `first` (from [`bind`]) listens on, for
/// another poller: the kernel spreads new connections over the two (`SO_REUSEPORT`).
pub fn bind_twin(first: &TcpListener, backlog: i32) -> io::Result<TcpListener> {
    let addr = first.local_addr()?;
    shared_socket(addr)
        .and_then(|socket| listen(socket, addr, backlog))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open another listening socket on {addr}: {e}")))
}

fn bind_socket(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    if addr.port() != 0 {
        // A socket without SO_REUSEPORT cannot bind where another one listens, with or without
        // it: this finds a running server that ours would otherwise share the port with.
        let probe = socket_for(addr)?;
        probe.bind(&addr.into())?;
    }
    listen(shared_socket(addr)?, addr, backlog)
}

fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    Ok(socket)
}

fn shared_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = socket_for(addr)?;
    socket.set_reuse_port(true)?;
    Ok(socket)
}

fn listen(socket: Socket, addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// `cannot listen [for ROLE ]on ADDR: CAUSE`, with the likely cause in plain words for the
/// errors an operator meets (the kind is kept).
///
/// ```
/// use std::io::{Error, ErrorKind};
/// use lb_sync::server::listen_error;
/// let taken = listen_error(None, "127.0.0.1:8000".parse().unwrap(), &Error::from(ErrorKind::AddrInUse));
/// assert_eq!(taken.kind(), ErrorKind::AddrInUse);
/// assert_eq!(
///     taken.to_string(),
///     "cannot listen on 127.0.0.1:8000: address already in use (another lb-sync or server? `ss -ltnp 'sport = :8000'` shows which)"
/// );
/// let denied = listen_error(Some("TLS"), "0.0.0.0:443".parse().unwrap(), &Error::from(ErrorKind::PermissionDenied));
/// assert_eq!(
///     denied.to_string(),
///     "cannot listen for TLS on 0.0.0.0:443: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
/// );
/// ```
pub fn listen_error(role: Option<&str>, addr: SocketAddr, error: &io::Error) -> io::Error {
    let cause = match error.kind() {
        io::ErrorKind::AddrInUse => format!(
            "address already in use (another lb-sync or server? `ss -ltnp 'sport = :{}'` shows which)",
            addr.port()
        ),
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_string()
        }
        io::ErrorKind::AddrNotAvailable => {
            "address not available (no network interface of this machine has this address)".to_string()
        }
        _ => error.to_string(),
    };
    let role = role.map_or(String::new(), |role| format!("for {role} "));
    io::Error::new(error.kind(), format!("cannot listen {role}on {addr}: {cause}"))
}
