//! Binding the listening socket: what std's `TcpListener::bind` does not let us choose, and a
//! failure worded for the operator (which address, and the likely cause).

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `addr` with `SO_REUSEADDR` (a restart does not wait out TIME_WAIT) and a backlog of
/// `backlog` (std uses 128, too few for a burst of connections), non-blocking for the poller.
/// A failure names the address and the likely cause (see [`listen_error`]).
pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    bind_for(None, addr, backlog)
}

/// [`bind`] for a listener with a role (`"TLS"`, `"the management API"`), named in a failure.
pub fn bind_for(role: Option<&str>, addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    bind_socket(addr, backlog).map_err(|e| listen_error(role, addr, &e))
}

fn bind_socket(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
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
