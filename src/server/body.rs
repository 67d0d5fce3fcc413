//! Reading a request body from the connection: Content-Length or chunked (strict chunk-size
//! parsing), bounded by the body limit, in constant memory, with `100 Continue` sent on demand.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::TcpStream;

use super::error::RequestError;
use super::head::BodyFraming;

/// Bytes read from the socket at a time while reading a body.
const READ_CHUNK: usize = 16 * 1024;
/// A chunk-size line (size and extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// All trailer fields together may not exceed this.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Length { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkEnd,
    Trailers { seen: usize },
    Done,
}

/// The reading state of one request body, kept by the worker so that it can tell, after the
/// handler is done, whether the body was read to its end and which bytes follow it.
#[derive(Debug)]
pub struct BodyState {
    phase: Phase,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    continue_pending: bool,
    /// The final response went out without asking for the body: the client may never send it.
    body_declined: bool,
    received: u64,
    max_body: u64,
    error: Option<RequestError>,
}

impl BodyState {
    /// A body delimited by `framing`; `buffered` holds the bytes already read past the head.
    pub fn new(framing: BodyFraming, buffered: Vec<u8>, expects_continue: bool, max_body: u64) -> BodyState {
        let phase = match framing {
            BodyFraming::None => Phase::Done,
            BodyFraming::Length(n) => Phase::Length { remaining: n },
            BodyFraming::Chunked => Phase::ChunkSize,
        };
        let end = buffered.len();
        BodyState {
            phase,
            buf: buffered,
            start: 0,
            end,
            continue_pending: expects_continue && phase != Phase::Done,
            body_declined: false,
            received: 0,
            max_body,
            error: None,
        }
    }

    /// Whether the whole body has been read.
    pub fn is_complete(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The error that stopped reading, if any.
    pub fn error(&self) -> Option<RequestError> {
        self.error
    }

    /// Body bytes received so far (decoded).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The bytes read past the end of the body: the start of the next pipelined request.
    pub fn into_leftover(mut self) -> Vec<u8> {
        self.buf.truncate(self.end);
        self.buf.drain(..self.start);
        self.buf
    }

    /// Called just before the final response head is written. A client still waiting for
    /// `100 Continue` must get it now if the response may read the body (it must precede the
    /// final head); otherwise the body is declined and the connection will not be reused.
    pub fn before_final_head(&mut self, stream: &TcpStream, may_read_body: bool) -> io::Result<()> {
        if !self.continue_pending {
            return Ok(());
        }
        self.continue_pending = false;
        if may_read_body {
            let mut stream = stream;
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        } else {
            self.body_declined = true;
            Ok(())
        }
    }

    /// Whether the final response went out without asking for the body (so the connection
    /// cannot be reused: the client may or may not send it).
    pub fn body_declined(&self) -> bool {
        self.body_declined
    }

    /// Reads and discards the rest of the body, up to `limit` bytes and until `deadline`; true
    /// when it ended. The socket's read timeout is shortened to the deadline meanwhile, so a
    /// client trickling its body cannot hold the worker (nginx's `lingering_time`); the caller
    /// restores it.
    pub fn drain(&mut self, stream: &TcpStream, limit: u64, deadline: std::time::Instant) -> bool {
        if self.body_declined {
            // The client was never asked for the body: we cannot know whether it will send it.
            return false;
        }
        let mut sink = [0u8; 8192];
        let mut drained = 0u64;
        while !self.is_complete() && self.error.is_none() && drained <= limit {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match self.read_body(stream, &mut sink) {
                Ok(0) => break,
                Ok(n) => drained += n as u64,
                Err(_) => break,
            }
        }
        self.is_complete()
    }

    fn fail(&mut self, error: RequestError) -> io::Error {
        self.error = Some(error);
        let kind = match error {
            RequestError::BodyTimeout => io::ErrorKind::TimedOut,
            RequestError::BodyIncomplete => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, error)
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more bytes from the socket after those buffered; false at end of stream.
    fn fill(&mut self, stream: &TcpStream) -> io::Result<bool> {
        if self.continue_pending {
            self.continue_pending = false;
            let mut stream = stream;
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.end + READ_CHUNK {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        let mut stream = stream;
        loop {
            match stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes sure at least one byte is buffered, mapping socket failures to request errors.
    fn need_bytes(&mut self, stream: &TcpStream, min: usize) -> io::Result<()> {
        while self.end - self.start < min {
            match self.fill(stream) {
                Ok(true) => {}
                Ok(false) => return Err(self.fail(RequestError::BodyIncomplete)),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(self.fail(RequestError::BodyTimeout))
                }
                Err(_) => return Err(self.fail(RequestError::BodyIncomplete)),
            }
        }
        Ok(())
    }

    fn take_data(&mut self, out: &mut [u8], remaining: u64) -> usize {
        let n = out.len().min(self.end - self.start).min(remaining.min(usize::MAX as u64) as usize);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        self.received += n as u64;
        n
    }

    /// Reads decoded body bytes into `out`; `Ok(0)` at the end of the body.
    pub fn read_body(&mut self, stream: &TcpStream, out: &mut [u8]) -> io::Result<usize> {
        if let Some(error) = self.error {
            return Err(io::Error::new(io::ErrorKind::InvalidData, error));
        }
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.phase {
                Phase::Done => return Ok(0),
                Phase::Length { remaining: 0 } => self.phase = Phase::Done,
                Phase::Length { remaining } => {
                    self.need_bytes(stream, 1)?;
                    let n = self.take_data(out, remaining);
                    self.phase = Phase::Length { remaining: remaining - n as u64 };
                    return Ok(n);
                }
                Phase::ChunkSize => self.read_chunk_size(stream)?,
                Phase::ChunkData { remaining: 0 } => self.phase = Phase::ChunkEnd,
                Phase::ChunkData { remaining } => {
                    self.need_bytes(stream, 1)?;
                    let n = self.take_data(out, remaining);
                    self.phase = Phase::ChunkData { remaining: remaining - n as u64 };
                    return Ok(n);
                }
                Phase::ChunkEnd => {
                    self.need_bytes(stream, 2)?;
                    if self.available()[..2] != *b"\r\n" {
                        return Err(self.fail(RequestError::BadRequest("chunk data not followed by CRLF")));
                    }
                    self.start += 2;
                    self.phase = Phase::ChunkSize;
                }
                Phase::Trailers { seen } => self.read_trailer_line(stream, seen)?,
            }
        }
    }

    fn read_chunk_size(&mut self, stream: &TcpStream) -> io::Result<()> {
        loop {
            self.need_bytes(stream, 1)?;
            // httparse accepts a size line with no digits at all; RFC 9112 requires 1*HEXDIG.
            if !self.available()[0].is_ascii_hexdigit() {
                return Err(self.fail(RequestError::BadRequest("invalid chunk size")));
            }
            match httparse::parse_chunk_size(self.available()) {
                Ok(httparse::Status::Complete((used, size))) => {
                    // httparse allows any byte in an extension, a bare LF included: a peer that
                    // ends lines at LF would see two lines where we see one.
                    let line = &self.available()[..used - 2];
                    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                        return Err(self.fail(RequestError::BadRequest("control byte in a chunk size line")));
                    }
                    self.start += used;
                    if self.received.saturating_add(size) > self.max_body {
                        return Err(self.fail(RequestError::BodyTooLarge));
                    }
                    self.phase =
                        if size == 0 { Phase::Trailers { seen: 0 } } else { Phase::ChunkData { remaining: size } };
                    return Ok(());
                }
                Ok(httparse::Status::Partial) => {
                    let have = self.end - self.start;
                    if have > MAX_CHUNK_LINE {
                        return Err(self.fail(RequestError::BadRequest("chunk size line too long")));
                    }
                    self.need_bytes(stream, have + 1)?;
                }
                Err(_) => return Err(self.fail(RequestError::BadRequest("invalid chunk size"))),
            }
        }
    }

    fn read_trailer_line(&mut self, stream: &TcpStream, seen: usize) -> io::Result<()> {
        loop {
            if let Some(pos) = self.available().windows(2).position(|w| w == b"\r\n") {
                // A trailer line is a header line: no bare LF, no control bytes, a name first.
                let line = &self.available()[..pos];
                let bad = line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
                    || (pos > 0 && matches!(line[0], b' ' | b'\t' | b':'));
                if bad {
                    return Err(self.fail(RequestError::BadRequest("malformed trailer")));
                }
                self.start += pos + 2;
                self.phase = if pos == 0 { Phase::Done } else { Phase::Trailers { seen: seen + pos + 2 } };
                if seen + pos > MAX_TRAILER_BYTES {
                    return Err(self.fail(RequestError::HeadTooLarge));
                }
                return Ok(());
            }
            let have = self.end - self.start;
            if seen + have > MAX_TRAILER_BYTES {
                return Err(self.fail(RequestError::HeadTooLarge));
            }
            self.need_bytes(stream, have + 1)?;
        }
    }
}

/// The request body as a [`Read`]er: decoded bytes, `Ok(0)` at its end, an error when the client
/// breaks the framing, exceeds the limit, stalls past the timeout or disconnects early.
///
/// The state sits in a `RefCell` owned by the worker, so that the worker can see how reading
/// went while the handler's response (which may hold this reader) is still being written.
pub struct RequestBody<'r> {
    stream: &'r TcpStream,
    state: &'r RefCell<BodyState>,
}

impl<'r> RequestBody<'r> {
    pub(crate) fn new(stream: &'r TcpStream, state: &'r RefCell<BodyState>) -> RequestBody<'r> {
        RequestBody { stream, state }
    }

    /// Whether the request has a body that has not been read to its end yet.
    pub fn is_pending(&self) -> bool {
        !self.state.borrow().is_complete()
    }

    /// Decoded body bytes read so far.
    pub fn received(&self) -> u64 {
        self.state.borrow().received()
    }

    /// The client's fault that stopped reading (bad framing, too large, too slow), if any.
    pub fn error(&self) -> Option<RequestError> {
        self.state.borrow().error()
    }
}

impl Read for RequestBody<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.state.borrow_mut().read_body(self.stream, out)
    }
}
