//! The request body as it goes upstream. The front end has usually buffered it whole before the
//! proxy runs, so it has a known length (a chunked upload goes upstream with `Content-Length`)
//! and can be read again for a retry. With request buffering off it streams instead: with the
//! client's `Content-Length` if it declared one (else chunked), and once only.
//!
//! Each try reads it through a [`TryBody`], which remembers whether reading it failed: the
//! client broke a streamed body off, or a temp file could not be read back. Whatever the HTTP
//! client then reports (ureq passes the reader's error on as an I/O error, as it would a reset
//! by the backend), the try failed on the request's side, never the backend's.

use std::io::{self, Read};

use crate::server::RequestBody;

/// The request body as it will be sent.
pub(crate) struct UpstreamBody {
    body: Option<RequestBody>,
    /// Whether a retry may send it again (bodies up to `retry_body_max_bytes`).
    replayable: bool,
    /// Why reading it failed during the last try, if it did.
    read_error: Option<String>,
}

impl UpstreamBody {
    /// No body for a bodiless request (or a HEAD request, whose body is meaningless).
    pub fn new(body: RequestBody, send: bool, replay_limit: u64) -> UpstreamBody {
        let replayable = !body.is_streamed() && body.len() <= replay_limit;
        let body = (send && !body.is_empty()).then_some(body);
        UpstreamBody { body, replayable, read_error: None }
    }

    /// The body's length, when there is one to send and it is known.
    pub fn len(&self) -> Option<u64> {
        self.body.as_ref().and_then(RequestBody::known_length)
    }

    /// Whether a streamed body was cut short by the client.
    pub fn cut_short(&self) -> bool {
        self.body.as_ref().is_some_and(RequestBody::cut_short)
    }

    /// Why reading the body failed during the last try, if it did (a cut-short body included).
    pub fn read_error(&self) -> Option<&str> {
        self.read_error.as_deref()
    }

    /// Whether a retry could send the body again.
    pub fn replayable(&self) -> bool {
        self.body.is_none() || self.replayable
    }

    /// The body for one try, read from its start.
    pub fn for_try(&mut self) -> io::Result<Option<TryBody<'_, RequestBody>>> {
        self.read_error = None;
        match &mut self.body {
            Some(body) => {
                body.rewind()?;
                Ok(Some(TryBody { body, read_error: &mut self.read_error }))
            }
            None => Ok(None),
        }
    }
}

/// A body read by one try, noting the first error its source gave.
pub(crate) struct TryBody<'a, R> {
    body: &'a mut R,
    read_error: &'a mut Option<String>,
}

impl<R: Read> Read for TryBody<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted && self.read_error.is_none() {
                *self.read_error = Some(e.to_string());
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives `good` bytes, then fails.
    struct Failing {
        good: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.good == 0 {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.good);
            self.good -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_read_error_of_the_source_is_remembered_whatever_the_reader_makes_of_it() {
        let mut source = Failing { good: 10 };
        let mut read_error = None;
        let mut body = TryBody { body: &mut source, read_error: &mut read_error };
        // io::copy stands for the HTTP client: it passes the error on, as ureq does.
        let copied = io::copy(&mut body, &mut io::sink());
        assert_eq!(copied.unwrap_err().to_string(), "disk on fire");
        assert_eq!(read_error.as_deref(), Some("disk on fire"));
    }

    #[test]
    fn a_body_read_to_its_end_leaves_no_error() {
        let mut source: &[u8] = b"hello";
        let mut read_error = None;
        let mut body = TryBody { body: &mut source, read_error: &mut read_error };
        assert_eq!(io::copy(&mut body, &mut io::sink()).unwrap(), 5);
        assert_eq!(read_error, None);
    }
}
