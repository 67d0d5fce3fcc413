//! Responses and how they go out: Content-Length when the length is known, chunked when it is
//! not (HTTP/1.1), close-delimited for HTTP/1.0; bodies streamed through one bounded buffer.
//!
//! A [`Delivery`] is a response on its way: the bytes ready to write and the source of the rest.
//! A worker starts it (it may block reading the source, a backend); whenever the client's socket
//! is full the delivery moves to the poller, which writes as the client reads and hands it back
//! to a worker only to refill the buffer from the source. No thread waits for a slow client.

use std::io::{self, Read, Write};

use super::error::reason_phrase;
use super::head::{is_hop_by_hop, Header, Version};
use super::observe::{FinishHook, Finished};
use super::tunnel::{Switch, Tunnel};

/// Most bytes read from a body source per refill; also the delivery buffer's size. A slow
/// reader costs this much memory, not a thread.
const DELIVERY_BUFFER: usize = 64 * 1024;
/// Room kept in front of each chunk for its size line (16 hex digits and CRLF fit).
const CHUNK_PREFIX: usize = 18;

/// A response body.
pub enum Body {
    /// No body (`Content-Length: 0`).
    Empty,
    /// A body held in memory.
    Bytes(Vec<u8>),
    /// A body read from a source as it is written, with its length when known.
    Stream {
        /// Where the bytes come from; an error from it breaks the transfer visibly. It may move
        /// between threads while the client reads.
        reader: Box<dyn Read + Send>,
        /// `Some(n)`: sent with `Content-Length: n`; `None`: chunked (or close-delimited for 1.0).
        length: Option<u64>,
    },
}

/// A response a handler gives the server to write.
///
/// ```
/// use lb_sync::server::Response;
/// let r = Response::text(404, "no such thing").with_header("Cache-Control", "no-store");
/// assert_eq!(r.status, 404);
/// ```
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header fields, in order; several with one name are all sent. Framing fields
    /// (`Content-Length`, `Transfer-Encoding`, `Connection` and other hop-by-hop ones) are
    /// chosen by the server and ignored here.
    pub headers: Vec<Header>,
    /// The body.
    pub body: Body,
    /// Close the connection after this response even if the client would keep it.
    pub close: bool,
    /// Called once when the response has been written completely or its delivery ended early.
    on_finish: Option<FinishHook>,
    /// What the connection becomes after a `101` head (boxed: most responses have none).
    switch: Option<Box<Switch>>,
}

impl Response {
    /// A response with a status and no headers or body.
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Body::Empty, close: false, on_finish: None, switch: None }
    }

    /// A `101 Switching Protocols` answer: its head says `Upgrade: <upgrade>` and
    /// `Connection: upgrade` (with the headers added to it), and once it is out the connection
    /// leaves HTTP: relayed to a [`Tunnel`], or handed to the application.
    ///
    /// ```
    /// use lb_sync::server::{Response, Switch};
    /// let echo = Response::switching_protocols("websocket", Switch::Handoff(Box::new(|_socket, _early| {})))
    ///     .with_header("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /// assert_eq!(echo.status, 101);
    /// ```
    pub fn switching_protocols(upgrade: impl Into<Vec<u8>>, switch: Switch) -> Response {
        let mut response = Response::new(101).with_header("Upgrade", upgrade);
        response.switch = Some(Box::new(switch));
        response
    }

    /// The tunnel this answer switches to, if it is one (to add a close callback).
    pub fn tunnel_mut(&mut self) -> Option<&mut Tunnel> {
        match self.switch.as_deref_mut() {
            Some(Switch::Tunnel(tunnel)) => Some(tunnel),
            _ => None,
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        let mut body = text.into().into_bytes();
        body.push(b'\n');
        Response::new(status).with_header("Content-Type", "text/plain; charset=utf-8").with_body(body)
    }

    /// An `application/json` response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let body = serde_json::to_vec(value).expect("a Value always serializes");
        Response::new(status).with_header("Content-Type", "application/json").with_body(body)
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Response {
        self.headers.push(Header::new(name, value));
        self
    }

    /// Sets an in-memory body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = Body::Bytes(body.into());
        self
    }

    /// Closes the connection after this response.
    pub fn with_close(mut self) -> Response {
        self.close = true;
        self
    }

    /// Calls `f` once the response is out (or its delivery broke off), from whichever thread
    /// finished it: a worker, or the poller for a client that reads slowly. `f` must not block.
    /// Setting it again replaces the earlier one.
    ///
    /// ```
    /// use lb_sync::server::Response;
    /// let r = Response::text(200, "hi").on_finish(|done| println!("{} body bytes", done.body_bytes_sent));
    /// # drop(r);
    /// ```
    pub fn on_finish(mut self, f: impl FnOnce(Finished) + Send + 'static) -> Response {
        self.on_finish = Some(Box::new(f));
        self
    }

    /// Sets a streamed body.
    pub fn with_stream(mut self, reader: impl Read + Send + 'static, length: Option<u64>) -> Response {
        self.body = Body::Stream { reader: Box::new(reader), length };
        self
    }
}

/// What the request asked of the response's framing.
pub(crate) struct ResponseContext {
    pub version: Version,
    pub head_request: bool,
    pub keep_alive: bool,
}

/// Whether a status forbids a body (RFC 9110 6.4.1): 1xx, 204, 304.
///
/// ```
/// use lb_sync::server::status_has_no_body;
/// assert!(status_has_no_body(304) && !status_has_no_body(200));
/// ```
pub fn status_has_no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// How the rest of the body is framed on the wire.
enum Framing {
    /// Nothing more (no body, a HEAD answer, or the body is already in the buffer).
    Done,
    /// Exactly this many more bytes from the source.
    Length(u64),
    /// Chunks until the source ends, then the last chunk.
    Chunked,
    /// Until the source ends, then close (HTTP/1.0 with an unknown length).
    UntilClose,
}

/// How far a delivery got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Everything was written; the connection may be kept when `keep_alive`.
    Done { keep_alive: bool },
    /// The socket takes no more now: wait until it is writable.
    Blocked,
    /// The buffer is written and the source has more: a worker must refill it.
    NeedsRefill,
    /// The socket or the source failed; the transfer is broken and must look broken.
    Failed,
}

/// A response on its way to the client.
pub(crate) struct Delivery {
    buf: Vec<u8>,
    written: usize,
    source: Option<Box<dyn Read + Send>>,
    framing: Framing,
    keep_alive: bool,
    /// Bytes of the head, and bytes written so far (head included), for [`Finished`].
    head_len: u64,
    sent: u64,
    done: bool,
    on_finish: Option<FinishHook>,
    /// What the connection becomes once the (101) head is out.
    switch: Option<Box<Switch>>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(f) = self.on_finish.take() {
            f(Finished { body_bytes_sent: self.sent.saturating_sub(self.head_len), complete: self.done });
        }
    }
}

impl Delivery {
    /// Serializes the head (and an in-memory body) into the buffer.
    pub fn new(response: Response, ctx: &ResponseContext) -> Delivery {
        let Response { status, headers, body, close, on_finish, switch } = response;
        // A 101 without a switch would leave the client speaking a protocol nobody serves.
        let status = if status == 101 && switch.is_none() { 500 } else { status };
        let mut keep_alive = ctx.keep_alive && !close;
        let no_body = status_has_no_body(status);
        let (length, chunked) = match &body {
            _ if no_body => (None, false),
            Body::Empty => (Some(0), false),
            Body::Bytes(bytes) => (Some(bytes.len() as u64), false),
            Body::Stream { length: Some(n), .. } => (Some(*n), false),
            Body::Stream { length: None, .. } => match ctx.version {
                Version::Http11 => (None, true),
                Version::Http10 => {
                    keep_alive = false;
                    (None, false)
                }
            },
        };
        // Room for the head (the fields the server adds fit in 256 bytes) and the first part of
        // the body, so that the first refill does not grow it.
        let head_room = 256 + headers.iter().map(|h| h.name.len() + h.value.len() + 4).sum::<usize>();
        let body_room = match &body {
            _ if no_body || ctx.head_request => 0,
            Body::Empty => 0,
            Body::Bytes(bytes) => bytes.len(),
            Body::Stream { length: Some(n), .. } => (*n).min(DELIVERY_BUFFER as u64) as usize,
            Body::Stream { length: None, .. } => CHUNK_PREFIX + DELIVERY_BUFFER + b"\r\n0\r\n\r\n".len(),
        };
        let mut buf = Vec::with_capacity(head_room + body_room);
        // Upgrade is hop-by-hop, so the server writes it only where it belongs: on a 101 (the
        // protocol switched to) and a 426 (the protocols required, RFC 9110 15.5.22), each with
        // the `upgrade` connection option.
        let upgrade = switch.is_some() || (status == 426 && headers.iter().any(|h| h.is("upgrade")));
        let mut connection = Vec::new();
        if upgrade {
            connection.push("upgrade");
        }
        if switch.is_none() {
            if !keep_alive {
                connection.push("close");
            } else if ctx.version == Version::Http10 {
                connection.push("keep-alive");
            }
        }
        let framing = HeadFraming { length, chunked, upgrade, connection: &connection.join(", ") };
        write_head(&mut buf, status, &headers, &framing);
        let head_len = buf.len() as u64;
        let mut delivery = Delivery {
            buf,
            written: 0,
            source: None,
            framing: Framing::Done,
            keep_alive,
            head_len,
            sent: 0,
            done: false,
            on_finish,
            switch,
        };
        if ctx.head_request || no_body {
            return delivery;
        }
        match body {
            Body::Empty => {}
            Body::Bytes(bytes) => delivery.buf.extend_from_slice(&bytes),
            Body::Stream { reader, length } => {
                delivery.source = Some(reader);
                delivery.framing = match length {
                    Some(n) => Framing::Length(n),
                    None if chunked => Framing::Chunked,
                    None => Framing::UntilClose,
                };
            }
        }
        delivery
    }

    /// What the connection becomes now that the response is out, if it switches protocols.
    pub fn take_switch(&mut self) -> Option<Switch> {
        self.switch.take().map(|switch| *switch)
    }

    /// Writes what is buffered; with `may_block_on_source` (a worker) refills from the source
    /// whenever the buffer is written, else (the poller) stops with [`Progress::NeedsRefill`].
    pub fn advance(&mut self, out: &mut impl Write, may_block_on_source: bool) -> Progress {
        // The head and the first part of the body leave in one write.
        if may_block_on_source && self.written == 0 && self.source.is_some() && self.refill().is_err() {
            return Progress::Failed;
        }
        loop {
            while self.written < self.buf.len() {
                match out.write(&self.buf[self.written..]) {
                    Ok(0) => return Progress::Failed,
                    Ok(n) => {
                        self.written += n;
                        self.sent += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Blocked,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Progress::Failed,
                }
            }
            self.buf.clear();
            self.written = 0;
            if matches!(self.framing, Framing::Done) {
                // A TLS stream may still hold records of what it took: done once they are out.
                match out.flush() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Blocked,
                    Err(_) => return Progress::Failed,
                }
                self.source = None;
                self.done = true;
                return Progress::Done { keep_alive: self.keep_alive };
            }
            if !may_block_on_source {
                return Progress::NeedsRefill;
            }
            if self.refill().is_err() {
                return Progress::Failed;
            }
        }
    }

    /// Reads once from the source and appends it to the buffer, framed. One read, not a full
    /// buffer: a streamed answer (server-sent events) goes out as it arrives.
    fn refill(&mut self) -> io::Result<()> {
        let Some(source) = self.source.as_mut() else { return Ok(()) };
        match self.framing {
            Framing::Done => {}
            Framing::Length(0) => {
                // An empty body: one read to see the source's end (so a pooled client frees
                // its connection), nothing to write.
                let _ = source.read(&mut [0u8; 1]);
                self.framing = Framing::Done;
            }
            Framing::Length(left) => {
                let want = DELIVERY_BUFFER.min(left.min(usize::MAX as u64) as usize);
                let n = read_after(source, &mut self.buf, 0, want)?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body source ended before its length"));
                }
                let left = left - n as u64;
                if left == 0 {
                    // One more read to see the source's end: a pooled client (ureq) returns its
                    // connection to the pool only when a read reports the end of the body.
                    let _ = source.read(&mut [0u8; 1]);
                    self.framing = Framing::Done;
                } else {
                    self.framing = Framing::Length(left);
                }
            }
            Framing::Chunked => {
                let start = self.buf.len();
                let n = read_after(source, &mut self.buf, CHUNK_PREFIX, DELIVERY_BUFFER)?;
                if n == 0 {
                    self.buf.truncate(start);
                    self.buf.extend_from_slice(b"0\r\n\r\n");
                    self.framing = Framing::Done;
                } else {
                    // The size line goes right in front of the data, so each chunk is one write.
                    let mut size_line = [0u8; CHUNK_PREFIX];
                    let written = {
                        let mut room = &mut size_line[..];
                        let _ = write!(room, "{n:x}\r\n");
                        CHUNK_PREFIX - room.len()
                    };
                    let size_line = &size_line[..written];
                    let begin = start + CHUNK_PREFIX - size_line.len();
                    self.buf[begin..start + CHUNK_PREFIX].copy_from_slice(size_line);
                    self.buf.extend_from_slice(b"\r\n");
                    // Close the room left unused in front of the size line.
                    self.buf.drain(start..begin);
                }
            }
            Framing::UntilClose => {
                if read_after(source, &mut self.buf, 0, DELIVERY_BUFFER)? == 0 {
                    self.framing = Framing::Done;
                }
            }
        }
        Ok(())
    }

    /// Writes everything to a writer that never blocks (tests, in-memory targets).
    #[cfg(test)]
    fn write_all_to(mut self, out: &mut Vec<u8>) -> Result<bool, ()> {
        match self.advance(out, true) {
            Progress::Done { keep_alive } => Ok(keep_alive),
            _ => Err(()),
        }
    }
}

/// Reads once from `source` into `buf`, after its current end and `gap` bytes of room, up to
/// `max` bytes; returns how many came. `buf` ends right after them.
fn read_after(source: &mut Box<dyn Read + Send>, buf: &mut Vec<u8>, gap: usize, max: usize) -> io::Result<usize> {
    let end = buf.len();
    let start = end + gap;
    buf.resize(start + max, 0);
    let result = loop {
        match source.read(&mut buf[start..]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match result {
        Ok(n) => buf.truncate(start + n),
        Err(_) => buf.truncate(end),
    }
    result
}

/// The fields of a head the server chooses itself.
struct HeadFraming<'a> {
    length: Option<u64>,
    chunked: bool,
    /// The handler's `Upgrade` header is written.
    upgrade: bool,
    /// The `Connection` options, comma-separated (none: no `Connection` header).
    connection: &'a str,
}

fn write_head(head: &mut Vec<u8>, status: u16, headers: &[Header], framing: &HeadFraming<'_>) {
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
    let mut has_date = false;
    for header in headers {
        // The server frames the message itself.
        let passes = !is_hop_by_hop(&header.name) || (framing.upgrade && header.is("upgrade"));
        if header.is("content-length") || !passes {
            continue;
        }
        has_date |= header.is("date");
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(&header.value);
        head.extend_from_slice(b"\r\n");
    }
    if !has_date {
        let _ = write!(head, "Date: {}\r\n", httpdate::fmt_http_date(std::time::SystemTime::now()));
    }
    if let Some(n) = framing.length {
        let _ = write!(head, "Content-Length: {n}\r\n");
    }
    if framing.chunked {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !framing.connection.is_empty() {
        let _ = write!(head, "Connection: {}\r\n", framing.connection);
    }
    head.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(version: Version, head_request: bool) -> ResponseContext {
        ResponseContext { version, head_request, keep_alive: true }
    }

    fn written(response: Response, ctx: &ResponseContext) -> (String, Result<bool, ()>) {
        let mut out = Vec::new();
        let result = Delivery::new(response, ctx).write_all_to(&mut out);
        (String::from_utf8_lossy(&out).into_owned(), result)
    }

    #[test]
    fn unknown_length_is_chunked_on_1_1_and_close_delimited_on_1_0() {
        let r = Response::new(200).with_stream(&b"hello"[..], None);
        let (text, keep) = written(r, &ctx(Version::Http11, false));
        assert!(text.contains("Transfer-Encoding: chunked\r\n"));
        assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"));
        assert!(keep.unwrap());
        let r = Response::new(200).with_stream(&b"hello"[..], None);
        let (text, keep) = written(r, &ctx(Version::Http10, false));
        assert!(text.contains("Connection: close\r\n") && text.ends_with("\r\n\r\nhello"));
        assert!(!keep.unwrap());
    }

    #[test]
    fn failing_source_never_looks_complete() {
        struct Broken(bool);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if std::mem::replace(&mut self.0, true) {
                    Err(io::Error::other("backend died"))
                } else {
                    buf[..3].copy_from_slice(b"abc");
                    Ok(3)
                }
            }
        }
        let (text, result) = written(Response::new(200).with_stream(Broken(false), None), &ctx(Version::Http11, false));
        assert!(result.is_err());
        assert!(text.ends_with("3\r\nabc\r\n"), "no final chunk: {text:?}");
        let (_, result) = written(Response::new(200).with_stream(&b"ab"[..], Some(5)), &ctx(Version::Http11, false));
        assert!(result.is_err(), "a short source is an error");
    }

    #[test]
    fn head_keeps_length_but_sends_no_body_and_set_cookie_repeats() {
        let r = Response::text(200, "body")
            .with_header("Set-Cookie", "a=1")
            .with_header("Set-Cookie", "b=2")
            .with_header("Content-Length", "999");
        let (text, _) = written(r, &ctx(Version::Http11, true));
        assert!(text.contains("Content-Length: 5\r\n") && !text.contains("999"));
        assert!(text.contains("Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        let (text, _) = written(Response::text(204, "x"), &ctx(Version::Http11, false));
        assert!(!text.contains("Content-Length") && text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_full_socket_hands_the_rest_over_and_the_poller_asks_for_a_refill() {
        /// Takes `room` bytes, then would block.
        struct Narrow {
            got: Vec<u8>,
            room: usize,
        }
        impl Write for Narrow {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.room == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = buf.len().min(self.room);
                self.room -= n;
                self.got.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let body = vec![b'x'; 3 * DELIVERY_BUFFER];
        let response = Response::new(200).with_stream(io::Cursor::new(body), Some(3 * DELIVERY_BUFFER as u64));
        let mut delivery = Delivery::new(response, &ctx(Version::Http11, false));
        let mut out = Narrow { got: Vec::new(), room: 100 };
        assert_eq!(delivery.advance(&mut out, true), Progress::Blocked, "the worker lets go");
        out.room = usize::MAX;
        assert_eq!(delivery.advance(&mut out, false), Progress::NeedsRefill, "the poller never reads the source");
        assert_eq!(delivery.advance(&mut out, true), Progress::Done { keep_alive: true });
        let head_end = out.got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(out.got.len() - head_end, 3 * DELIVERY_BUFFER);
    }
}
