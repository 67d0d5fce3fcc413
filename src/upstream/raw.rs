//! A request sent to a backend on a connection of its own, outside the backend's pool: the
//! way of a request that asks to switch protocols (`Connection: upgrade`). Its `101` answer
//! hands the connection over to a tunnel, which ureq cannot do (it reads 1xx answers itself and
//! keeps its connections). Any other answer is read here in the framing it declares
//! (`Content-Length`, chunked, or until the backend closes) and the connection is closed after
//! it, never pooled.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use crate::server::{while_blocked, BodyDecoder, BodyFraming};

use super::answer_framing::framing;
use super::backend::Backend;
use super::client::{ForwardError, Forwarder, Prepared};

/// Largest answer head read (as the agents' input buffer): a larger one is a bad answer.
const MAX_HEAD: usize = 32 * 1024;
/// Most header fields of an answer.
const MAX_HEADERS: usize = 100;
/// Bytes read from the backend at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A backend's answer on a connection of its own: the head, and the connection with what was
/// read past the head.
#[derive(Debug)]
pub struct OwnAnswer {
    /// The status (never an interim 1xx other than 101: those are skipped).
    pub status: u16,
    /// The header fields, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    stream: TcpStream,
    /// Bytes read after the head: the start of the body, or of the new protocol after a 101.
    rest: Vec<u8>,
    /// How the body is delimited (`None`: until the backend closes).
    framing: Option<BodyFraming>,
    /// The body's length when declared (a HEAD answer's included).
    length: Option<u64>,
}

impl OwnAnswer {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| &v[..])
    }

    /// The connection and the bytes read past the head (for a tunnel after a 101).
    pub fn into_connection(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.rest)
    }

    /// The body's length, when its head declares one.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// The body, decoded from the framing its head declares.
    pub fn into_body(self) -> OwnBody {
        let decoder = self.framing.map(|f| BodyDecoder::new(f, u64::MAX));
        OwnBody { stream: self.stream, input: self.rest, at: 0, decoder, decoded: Vec::new(), out: 0 }
    }
}

/// The body of an [`OwnAnswer`], decoded (the chunk framing removed); an end of the connection
/// before the declared end is an error, so a body cut short never looks complete.
pub struct OwnBody {
    stream: TcpStream,
    /// Raw bytes read with the head, used before the socket.
    input: Vec<u8>,
    at: usize,
    /// `None`: the body runs until the backend closes.
    decoder: Option<BodyDecoder>,
    decoded: Vec<u8>,
    out: usize,
}

impl OwnBody {
    /// Raw body bytes: what came with the head first, then the socket.
    fn raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.input.len() {
            let n = buf.len().min(self.input.len() - self.at);
            buf[..n].copy_from_slice(&self.input[self.at..self.at + n]);
            self.at += n;
            if self.at == self.input.len() {
                self.input = Vec::new();
                self.at = 0;
            }
            return Ok(n);
        }
        while_blocked(|| (&self.stream).read(buf))
    }
}

impl Read for OwnBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.decoder.is_none() {
            return self.raw(buf);
        }
        loop {
            if self.out < self.decoded.len() {
                let n = buf.len().min(self.decoded.len() - self.out);
                buf[..n].copy_from_slice(&self.decoded[self.out..self.out + n]);
                self.out += n;
                return Ok(n);
            }
            self.decoded.clear();
            self.out = 0;
            if self.decoder.as_ref().is_some_and(BodyDecoder::is_complete) {
                return Ok(0);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = self.raw(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the backend closed before the end of the body",
                ));
            }
            let decoded = &mut self.decoded;
            let decoder = self.decoder.as_mut().expect("checked above");
            decoder
                .feed(&chunk[..n], &mut |data| {
                    decoded.extend_from_slice(data);
                    Ok(())
                })
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad body framing: {}", e.reason())))?;
        }
    }
}

impl Forwarder {
    /// Sends a prepared request to `backend` on a new connection (connect timeout, then the
    /// request timeout on each write and read) and reads the answer's head; interim 1xx answers
    /// other than `101` are skipped. A `101` must say what it switched to (`Upgrade`), any other
    /// answer how long its body is.
    pub fn send_own(
        &self,
        backend: &Backend,
        prepared: &Prepared,
        body: Option<&mut dyn Read>,
    ) -> Result<OwnAnswer, ForwardError> {
        let (timeouts, _) = self.settings();
        let stream =
            while_blocked(|| TcpStream::connect_timeout(&backend.addr, timeouts.connect)).map_err(|e| {
                match e.kind() {
                    io::ErrorKind::TimedOut => ForwardError::ConnectTimeout,
                    _ => ForwardError::NotSent(e.to_string()),
                }
            })?;
        let setup = stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(timeouts.request)))
            .and_then(|()| stream.set_write_timeout(Some(timeouts.request)));
        setup.map_err(|e| ForwardError::NotSent(e.to_string()))?;
        // A body of unknown length (streamed chunked, request buffering off) goes on chunked:
        // unframed, the backend would read it as the next request.
        let chunked = body.is_some() && !prepared.headers.contains_key(ureq::http::header::CONTENT_LENGTH);
        let head = request_head(prepared, &backend.authority, chunked);
        // Nothing here goes through a pooled transport: a streamed body must not ask
        // about the connection this thread last sent on there (it would take that one's bytes
        // for this backend's early answer and make up the rest of the body with zeros).
        super::transport::forget_sending();
        while_blocked(|| (&stream).write_all(&head)).map_err(io_error)?;
        match body {
            Some(body) if chunked => while_blocked(|| copy_chunked(body, &stream)).map_err(io_error)?,
            Some(body) => {
                while_blocked(|| io::copy(body, &mut &stream)).map_err(io_error)?;
            }
            None => {}
        }
        read_head(stream, prepared.method == ureq::http::Method::HEAD)
    }
}

/// The request line and header fields, as validated by [`Forwarder::prepare`]; `Host` is the
/// client's (or the absolute-form target's), else the backend's address.
fn request_head(prepared: &Prepared, authority: &str, chunked: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(1024);
    head.extend_from_slice(prepared.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(prepared.path.as_str().as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if !prepared.headers.contains_key(ureq::http::header::HOST) {
        head.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
    }
    for (name, value) in &prepared.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if chunked {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Sends `body` in the chunked coding, a chunk per read, then the last chunk.
fn copy_chunked(body: &mut dyn Read, mut out: &TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => return out.write_all(b"0\r\n\r\n"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut chunk = Vec::with_capacity(n + 12);
        chunk.extend_from_slice(format!("{n:X}\r\n").as_bytes());
        chunk.extend_from_slice(&buf[..n]);
        chunk.extend_from_slice(b"\r\n");
        out.write_all(&chunk)?;
    }
}

/// What an I/O error with the backend means for the try.
fn io_error(e: io::Error) -> ForwardError {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ForwardError::Timeout,
        _ => ForwardError::NoResponse(e.to_string()),
    }
}

fn read_head(stream: TcpStream, head_request: bool) -> Result<OwnAnswer, ForwardError> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        // Parse what is there (interim answers may be followed by the final one already).
        while !buf.is_empty() {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut fields);
            let used = match response.parse(&buf) {
                Ok(httparse::Status::Complete(used)) => used,
                Ok(httparse::Status::Partial) => break,
                Err(e) => return Err(ForwardError::BadResponse(format!("answer head: {e}"))),
            };
            let status = response.code.unwrap_or(0);
            if (100..200).contains(&status) && status != 101 {
                buf.drain(..used);
                continue;
            }
            let headers: Vec<(String, Vec<u8>)> =
                response.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect();
            let rest = buf.split_off(used);
            let named = headers.iter().map(|(n, v)| (n.as_str(), &v[..]));
            let (framing, length) = framing(status, named, head_request).map_err(ForwardError::BadResponse)?;
            let answer = OwnAnswer { status, headers, stream, rest, framing, length };
            if status == 101 && answer.header("upgrade").is_none_or(|v| v.is_empty()) {
                return Err(ForwardError::BadResponse("101 without an Upgrade header".into()));
            }
            return Ok(answer);
        }
        if buf.len() >= MAX_HEAD {
            return Err(ForwardError::BadResponse(format!("answer head over {} KiB", MAX_HEAD / 1024)));
        }
        let want = READ_CHUNK.min(MAX_HEAD - buf.len());
        match while_blocked(|| (&stream).read(&mut chunk[..want])) {
            Ok(0) => return Err(ForwardError::NoResponse("closed before an answer head".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// An answer as read from a fake backend that sent `raw` and closed.
    fn answer(raw: &'static [u8]) -> Result<OwnAnswer, ForwardError> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            socket.write_all(raw).unwrap();
        });
        let stream = TcpStream::connect(addr).unwrap();
        server.join().unwrap();
        read_head(stream, false)
    }

    fn body(raw: &'static [u8]) -> Result<(Vec<u8>, Option<u64>), String> {
        let answer = answer(raw).map_err(|e| e.to_string())?;
        let length = answer.length();
        let mut body = answer.into_body();
        let mut out = Vec::new();
        body.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok((out, length))
    }

    #[test]
    fn bodies_are_read_as_framed() {
        assert_eq!(body(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap(), (b"abc".to_vec(), Some(3)));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(body(chunked).unwrap(), (b"abcde".to_vec(), None));
        // The last coding decides, over several fields; a length beside a coding is ignored.
        let codings = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 9\r\nTransfer-Encoding: , chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        assert_eq!(body(codings).unwrap(), (b"hi".to_vec(), None));
        let until_close = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nraw";
        assert_eq!(body(until_close).unwrap(), (b"raw".to_vec(), None));
        assert_eq!(body(b"HTTP/1.1 200 OK\r\n\r\nuntil close").unwrap(), (b"until close".to_vec(), None));
        assert_eq!(body(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").unwrap(), (Vec::new(), Some(0)));
        // Interim answers are skipped.
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno";
        assert_eq!(body(interim).unwrap(), (b"no".to_vec(), Some(2)));
    }

    #[test]
    fn a_short_or_malformed_answer_is_an_error() {
        assert!(body(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").unwrap_err().contains("closed before"));
        assert!(body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab").is_err());
        assert!(body(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(body(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(matches!(answer(b"HTTP/1.1 200 OK\r\n"), Err(ForwardError::NoResponse(_))));
        assert!(matches!(answer(b"SSH-2.0-OpenSSH\r\n\r\n"), Err(ForwardError::BadResponse(_))));
        assert!(matches!(answer(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"), Err(ForwardError::BadResponse(_))));
        let switched = answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi").unwrap();
        assert_eq!(switched.into_connection().1, b"\x81\x02hi");
    }
}
