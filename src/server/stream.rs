//! A client connection's byte stream: the TCP socket itself, or the plaintext of a TLS session
//! over it. Both are non-blocking for their whole life: a read or write that would wait says
//! `WouldBlock`, and the poller waits for readiness instead. The poller reads (which drives a
//! TLS handshake and decrypts records); a worker writes a response (encrypting it into records
//! and sending what the socket takes). Both use one connection at once only while a request
//! body streams to a worker (`request_buffering` off: the poller reads the rest of the body as
//! the worker answers); the session's lock is held for one read or write, never across a wait.
//!
//! TLS adds one rule to writing: records the socket did not take stay in the session, so a
//! response is complete only once [`Write::flush`] succeeds (a plain socket's flush is a no-op;
//! `Delivery` flushes before it says done, and a flush that would block hands the connection
//! to the poller like any blocked write).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use rustls::ServerConnection;

/// A client connection, plain or TLS.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    /// The session is boxed: it is a kilobyte, which a plain connection should not carry.
    Tls {
        tcp: TcpStream,
        session: Box<Mutex<ServerConnection>>,
        /// The client's close_notify came with the last bytes a read returned: the end is
        /// already taken off the socket, and no readiness event will announce it.
        end_pending: AtomicBool,
    },
}

impl ClientStream {
    /// A TLS connection: `session` starts its handshake with the first read.
    pub fn tls(tcp: TcpStream, session: ServerConnection) -> ClientStream {
        ClientStream::Tls { tcp, session: Box::new(Mutex::new(session)), end_pending: AtomicBool::new(false) }
    }

    /// Whether requests on it came over TLS (`X-Forwarded-Proto: https`).
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls { .. })
    }

    /// Whether a read that returned less than asked has left the stream's end unread: a TLS
    /// client's close_notify that arrived with its last bytes. The next read returns it at once;
    /// a caller waiting for readiness would wait for nothing (edge-triggered readiness already
    /// reported those bytes). Never on a plain socket, whose FIN stays in the socket.
    pub fn end_pending(&self) -> bool {
        match self {
            ClientStream::Plain(_) => false,
            ClientStream::Tls { end_pending, .. } => end_pending.load(Ordering::Relaxed),
        }
    }

    /// Whether a TLS handshake is still under way (false on a plain connection).
    pub fn is_handshaking(&self) -> bool {
        match self {
            ClientStream::Plain(_) => false,
            ClientStream::Tls { session, .. } => lock(session).is_handshaking(),
        }
    }

    /// A second handle on a plain connection; a TLS session cannot be shared that way.
    pub fn try_clone(&self) -> io::Result<ClientStream> {
        match self {
            ClientStream::Plain(tcp) => tcp.try_clone().map(ClientStream::Plain),
            ClientStream::Tls { .. } => Err(io::Error::other("a TLS session is still in use elsewhere")),
        }
    }

    /// The socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(tcp) | ClientStream::Tls { tcp, .. } => tcp,
        }
    }

    /// Shuts the socket down. Closing our sending side after a complete response first says
    /// `close_notify` (best effort), so a TLS client can tell a clean end from a cut; breaking
    /// a connection (`Both`) does not, for the same reason.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if let (ClientStream::Tls { tcp, session, .. }, Shutdown::Write) = (self, how) {
            let mut session = lock(session);
            session.send_close_notify();
            let _ = send_records(&mut session, tcp);
        }
        self.tcp().shutdown(how)
    }
}

fn lock(session: &Mutex<ServerConnection>) -> MutexGuard<'_, ServerConnection> {
    session.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the session's pending records until none is left or the socket is full.
fn send_records(session: &mut ServerConnection, mut tcp: &TcpStream) -> io::Result<()> {
    while session.wants_write() {
        match session.write_tls(&mut tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads records into the session and decrypts them; `Ok(false)` at the socket's end.
fn receive_records(session: &mut ServerConnection, mut tcp: &TcpStream) -> io::Result<bool> {
    let open = loop {
        match session.read_tls(&mut tcp) {
            Ok(n) => break n > 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    if let Err(error) = session.process_new_packets() {
        // rustls has queued an alert saying why: send it, then give up on the connection.
        let _ = send_records(session, tcp);
        log::debug!("TLS with {}: {error}", tcp.peer_addr().map_or("?".to_string(), |a| a.to_string()));
        return Err(io::Error::new(io::ErrorKind::InvalidData, error));
    }
    // Handshake messages, session tickets, key updates: out at once where the socket takes
    // them; what it does not stays queued and goes before the next response.
    match send_records(session, tcp) {
        Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
        _ => {}
    }
    Ok(open)
}

impl Read for &ClientStream {
    /// Plaintext: as much as `buf` holds, or everything until the socket would block. So a read
    /// that returns less than `buf.len()` leaves nothing buffered in the session that a new
    /// readiness event would not announce (the poller's edge-triggered waits rely on it).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (tcp, session, end_pending) = match self {
            ClientStream::Plain(tcp) => return (&*tcp).read(buf),
            ClientStream::Tls { tcp, session, end_pending } => (tcp, session, end_pending),
        };
        let mut session = lock(session);
        let mut got = 0;
        loop {
            match session.reader().read(&mut buf[got..]) {
                // The client's close_notify (or an empty `buf`).
                Ok(0) => {
                    if got > 0 && got < buf.len() {
                        end_pending.store(true, Ordering::Relaxed);
                    }
                    return Ok(got);
                }
                Ok(n) => {
                    got += n;
                    if got == buf.len() {
                        return Ok(got);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A TCP end without close_notify: a truncation, reported once nothing is left.
                Err(e) => return if got > 0 { Ok(got) } else { Err(e) },
            }
            match receive_records(&mut session, tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => return Ok(got),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for &ClientStream {
    /// Encrypts and sends. Records left from an earlier write go first; while any are left no
    /// new plaintext is taken (`WouldBlock`), so a session holds at most one write's records.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (tcp, session) = match self {
            ClientStream::Plain(tcp) => return (&*tcp).write(buf),
            ClientStream::Tls { tcp, session, .. } => (tcp, session),
        };
        let mut session = lock(session);
        send_records(&mut session, tcp)?;
        let n = session.writer().write(buf)?;
        match send_records(&mut session, tcp) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(n),
        }
    }

    /// Sends the records still held: `WouldBlock` while the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(_) => Ok(()),
            ClientStream::Tls { tcp, session, .. } => send_records(&mut lock(session), tcp),
        }
    }
}

impl AsRawFd for ClientStream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

impl AsFd for ClientStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tcp().as_fd()
    }
}

/// A TLS connection over loopback for unit tests: the server side as a [`ClientStream`]
/// (non-blocking, its send buffer as small as asked) and a rustls client (blocking, a small
/// receive buffer, a read timeout), handshake done. The certificate is made with the openssl
/// command line, as the integration tests make theirs.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::server::tls::{Certificate, Certificates, TlsAcceptor};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Duration;

    pub type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

    /// A self-signed certificate for `localhost` and a client that trusts it.
    fn certificate() -> (TlsAcceptor, Arc<rustls::ClientConfig>) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lb-sync-stream-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl on PATH");
        assert!(status.success());
        let loaded = Certificate::load(&cert, &key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&cert).unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let client = rustls::ClientConfig::builder_with_provider(super::super::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (TlsAcceptor::new(Certificates::new(vec![loaded]).unwrap()), Arc::new(client))
    }

    /// The two ends, after the handshake and one byte from the client (so the server has read).
    pub fn tls_pair(server_send_buffer: usize, client_receive_buffer: usize) -> (ClientStream, Client) {
        let (acceptor, client_config) = certificate();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let tcp = TcpStream::connect(addr).unwrap();
            socket2::SockRef::from(&tcp).set_recv_buffer_size(client_receive_buffer).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = rustls::StreamOwned::new(rustls::ClientConnection::new(client_config, name).unwrap(), tcp);
            tls.write_all(b"!").unwrap();
            tls
        });
        let (tcp, _) = listener.accept().unwrap();
        socket2::SockRef::from(&tcp).set_send_buffer_size(server_send_buffer).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let stream = ClientStream::tls(tcp, acceptor.session().unwrap());
        let mut first = [0u8; 1];
        loop {
            match (&stream).read(&mut first) {
                Ok(1) => break,
                Ok(_) => panic!("the client went away"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("server read: {e}"),
            }
        }
        (stream, client.join().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::tls_pair;
    use super::*;
    use crate::server::response::{Delivery, Progress, Response, ResponseContext};
    use crate::server::Version;
    use std::time::Duration;

    #[test]
    fn a_tls_response_is_done_only_once_its_last_records_are_sent() {
        const BODY: usize = 100_000;
        // The smallest send buffer: nearly every write of 64 KiB of records leaves some queued
        // in the session.
        let (stream, mut client) = tls_pair(4096, 4096);
        // The client reads the whole response slowly, with a deadline.
        let reader = std::thread::spawn(move || -> io::Result<usize> {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() < BODY {
                let n = client.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                std::thread::sleep(Duration::from_micros(100));
            }
            let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
            Ok(got.len() - head_end)
        });
        let ctx = ResponseContext { version: Version::Http11, head_request: false, keep_alive: true };
        let mut delivery = Delivery::new(Response::new(200).with_body(vec![b'x'; BODY]), &ctx);
        loop {
            match delivery.advance(&mut &stream, true) {
                Progress::Done { .. } => break,
                Progress::Blocked => std::thread::sleep(Duration::from_millis(1)),
                other => panic!("{other:?}"),
            }
        }
        // Nothing more is written after Done: the client must have had everything by now.
        assert_eq!(reader.join().unwrap().unwrap(), BODY);
    }
}
