//! The request body as it goes upstream: nothing, kept whole in memory so a retry can send it
//! again, or streamed once.

use std::io::{self, Read};

use crate::server::{BodyFraming, RequestBody};

/// A streamed request body (after any bytes already read into `prefix`), counting what was
/// sent, so a retry knows whether it can still be sent.
pub(crate) struct CountingBody<'r> {
    inner: RequestBody<'r>,
    read: u64,
    prefix: Vec<u8>,
}

impl Read for CountingBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if (self.read as usize) < self.prefix.len() {
            let rest = &self.prefix[self.read as usize..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            n
        } else {
            self.inner.read(buf)?
        };
        self.read += n as u64;
        Ok(n)
    }
}

/// The request body as it will be sent.
pub(crate) enum UpstreamBody<'r> {
    None,
    Kept(Vec<u8>),
    Streamed(CountingBody<'r>),
}

impl<'r> UpstreamBody<'r> {
    /// Keeps bodies whose length is known to be small, or whose chunked form turns out small;
    /// streams the rest. A client error while reading is left in the body for the server.
    pub fn prepare(mut body: RequestBody<'r>, framing: BodyFraming, keep_limit: u64) -> UpstreamBody<'r> {
        let small = match framing {
            BodyFraming::None => return UpstreamBody::None,
            BodyFraming::Length(n) => n <= keep_limit,
            BodyFraming::Chunked => true,
        };
        if !small {
            return UpstreamBody::Streamed(CountingBody { inner: body, read: 0, prefix: Vec::new() });
        }
        let mut kept = Vec::new();
        match (&mut body).take(keep_limit + 1).read_to_end(&mut kept) {
            Ok(_) if !body.is_pending() => UpstreamBody::Kept(kept),
            // Larger than the limit (chunked) or failed: stream, starting with what was read.
            _ => UpstreamBody::Streamed(CountingBody { inner: body, read: 0, prefix: kept }),
        }
    }

    /// Whether a retry could send the body again.
    pub fn replayable(&self) -> bool {
        match self {
            UpstreamBody::None | UpstreamBody::Kept(_) => true,
            UpstreamBody::Streamed(body) => body.read == 0 && body.inner.error().is_none(),
        }
    }

    /// Whether the client broke its body (framing, limit, timeout) while it was read.
    pub fn client_error(&self) -> bool {
        matches!(self, UpstreamBody::Streamed(body) if body.inner.error().is_some())
    }
}
