//! Responses and how they are written: Content-Length when the length is known, chunked when it
//! is not (HTTP/1.1), close-delimited for HTTP/1.0; bodies streamed in constant memory.

use std::io::{self, Read, Write};

use super::error::reason_phrase;
use super::head::{is_hop_by_hop, Header, Version};

/// Bytes read from a streamed body source per write (and per chunk).
const STREAM_CHUNK: usize = 16 * 1024;
/// Room kept in front of each chunk for its size line (16 hex digits and CRLF fit).
const CHUNK_PREFIX: usize = 18;

/// A response body.
pub enum Body<'r> {
    /// No body (`Content-Length: 0`).
    Empty,
    /// A body held in memory.
    Bytes(Vec<u8>),
    /// A body read from a source as it is written, with its length when known.
    Stream {
        /// Where the bytes come from; an error from it breaks the transfer visibly.
        reader: Box<dyn Read + 'r>,
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
pub struct Response<'r> {
    /// The status code.
    pub status: u16,
    /// Header fields, in order; several with one name are all sent. Framing fields
    /// (`Content-Length`, `Transfer-Encoding`, `Connection`) are chosen by the server and ignored here.
    pub headers: Vec<Header>,
    /// The body.
    pub body: Body<'r>,
    /// Close the connection after this response even if the client would keep it.
    pub close: bool,
}

impl<'r> Response<'r> {
    /// A response with a status and no headers or body.
    pub fn new(status: u16) -> Response<'r> {
        Response { status, headers: Vec::new(), body: Body::Empty, close: false }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, text: impl Into<String>) -> Response<'r> {
        let mut body = text.into().into_bytes();
        body.push(b'\n');
        Response::new(status).with_header("Content-Type", "text/plain; charset=utf-8").with_body(body)
    }

    /// An `application/json` response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response<'r> {
        let body = serde_json::to_vec(value).expect("a Value always serializes");
        Response::new(status).with_header("Content-Type", "application/json").with_body(body)
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Response<'r> {
        self.headers.push(Header::new(name, value));
        self
    }

    /// Sets an in-memory body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response<'r> {
        self.body = Body::Bytes(body.into());
        self
    }

    /// Closes the connection after this response.
    pub fn with_close(mut self) -> Response<'r> {
        self.close = true;
        self
    }

    /// Sets a streamed body.
    pub fn with_stream(mut self, reader: impl Read + 'r, length: Option<u64>) -> Response<'r> {
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

/// Writes `response`; returns whether the connection may be kept open afterwards.
///
/// An error from the body source or the socket leaves the transfer visibly broken (short of its
/// Content-Length or without the final chunk): the caller closes the connection.
pub(crate) fn write_response(out: &mut impl Write, response: Response<'_>, ctx: &ResponseContext) -> io::Result<bool> {
    let Response { status, headers, body, close } = response;
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

    let mut head = Vec::with_capacity(256);
    write!(head, "HTTP/1.1 {} {}\r\n", status, reason_phrase(status))?;
    let mut has_date = false;
    for header in &headers {
        // The server frames the message itself.
        if header.is("content-length") || is_hop_by_hop(&header.name) {
            continue;
        }
        has_date |= header.is("date");
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(&header.value);
        head.extend_from_slice(b"\r\n");
    }
    if !has_date {
        write!(head, "Date: {}\r\n", httpdate::fmt_http_date(std::time::SystemTime::now()))?;
    }
    if let Some(n) = length {
        write!(head, "Content-Length: {n}\r\n")?;
    }
    if chunked {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !keep_alive {
        head.extend_from_slice(b"Connection: close\r\n");
    } else if ctx.version == Version::Http10 {
        head.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    head.extend_from_slice(b"\r\n");

    if ctx.head_request || no_body {
        out.write_all(&head)?;
        out.flush()?;
        return Ok(keep_alive);
    }
    match body {
        Body::Empty => out.write_all(&head)?,
        Body::Bytes(bytes) => {
            // One write for small responses: fewer syscalls and packets.
            if bytes.len() <= STREAM_CHUNK {
                head.extend_from_slice(&bytes);
                out.write_all(&head)?;
            } else {
                out.write_all(&head)?;
                out.write_all(&bytes)?;
            }
        }
        Body::Stream { reader, length: Some(n) } => {
            out.write_all(&head)?;
            copy_exact(reader, out, n)?;
        }
        Body::Stream { reader, length: None } => {
            out.write_all(&head)?;
            out.flush()?;
            if chunked {
                copy_chunked(reader, out)?;
            } else {
                copy_until_end(reader, out)?;
            }
        }
    }
    out.flush()?;
    Ok(keep_alive)
}

fn read_retrying(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Copies exactly `length` bytes; a source that ends early is an error (the client sees a
/// response short of its Content-Length, never a complete-looking one).
fn copy_exact(mut reader: Box<dyn Read + '_>, out: &mut impl Write, length: u64) -> io::Result<()> {
    let mut buf = vec![0u8; STREAM_CHUNK];
    let mut left = length;
    while left > 0 {
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        let n = read_retrying(&mut reader, &mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body source ended before its length"));
        }
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    // One more read to see the source's end: a pooled client (ureq) returns its connection to
    // the pool only when a read reports the end of the body.
    let _ = read_retrying(&mut reader, &mut buf[..1]);
    Ok(())
}

/// Copies to the end of the source, each piece as one chunk, flushed at once so a streamed
/// event is not held back; the final chunk is written only after a clean end.
fn copy_chunked(mut reader: Box<dyn Read + '_>, out: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK_PREFIX + STREAM_CHUNK + 2];
    loop {
        let n = read_retrying(&mut reader, &mut buf[CHUNK_PREFIX..CHUNK_PREFIX + STREAM_CHUNK])?;
        if n == 0 {
            out.write_all(b"0\r\n\r\n")?;
            return Ok(());
        }
        // The size line goes right in front of the data, so each chunk is one write.
        let size_line = format!("{n:x}\r\n");
        let begin = CHUNK_PREFIX - size_line.len();
        buf[begin..CHUNK_PREFIX].copy_from_slice(size_line.as_bytes());
        buf[CHUNK_PREFIX + n..CHUNK_PREFIX + n + 2].copy_from_slice(b"\r\n");
        out.write_all(&buf[begin..CHUNK_PREFIX + n + 2])?;
        out.flush()?;
    }
}

fn copy_until_end(mut reader: Box<dyn Read + '_>, out: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; STREAM_CHUNK];
    loop {
        let n = read_retrying(&mut reader, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(version: Version, head_request: bool) -> ResponseContext {
        ResponseContext { version, head_request, keep_alive: true }
    }

    fn written(response: Response<'_>, ctx: &ResponseContext) -> (String, io::Result<bool>) {
        let mut out = Vec::new();
        let result = write_response(&mut out, response, ctx);
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
}
