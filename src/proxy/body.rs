//! The request body as it goes upstream. The front end has usually buffered it whole before the
//! proxy runs, so it has a known length (a chunked upload goes upstream with `Content-Length`)
//! and can be read again for a retry. With request buffering off it streams instead: with the
//! client's `Content-Length` if it declared one (else chunked), and once only.

use std::io;

use crate::server::RequestBody;

/// The request body as it will be sent.
pub(crate) struct UpstreamBody {
    body: Option<RequestBody>,
    /// Whether a retry may send it again (bodies up to `retry_body_max_bytes`).
    replayable: bool,
}

impl UpstreamBody {
    /// No body for a bodiless request (or a HEAD request, whose body is meaningless).
    pub fn new(body: RequestBody, send: bool, replay_limit: u64) -> UpstreamBody {
        let replayable = !body.is_streamed() && body.len() <= replay_limit;
        let body = (send && !body.is_empty()).then_some(body);
        UpstreamBody { body, replayable }
    }

    /// The body's length, when there is one to send and it is known.
    pub fn len(&self) -> Option<u64> {
        self.body.as_ref().and_then(RequestBody::known_length)
    }

    /// Whether a streamed body was cut short by the client.
    pub fn cut_short(&self) -> bool {
        self.body.as_ref().is_some_and(RequestBody::cut_short)
    }

    /// Whether a retry could send the body again.
    pub fn replayable(&self) -> bool {
        self.body.is_none() || self.replayable
    }

    /// The body for one try, read from its start.
    pub fn for_try(&mut self) -> io::Result<Option<&mut RequestBody>> {
        match &mut self.body {
            Some(body) => {
                body.rewind()?;
                Ok(Some(body))
            }
            None => Ok(None),
        }
    }
}
