//! Turning a backend's response into ours: status and end-to-end headers as they came, the body
//! streamed to the client while the backend's in-flight count is held. The answer came on one
//! of the backend's pooled connections, or on a connection of its own (an upgrade request's, whose `101`
//! becomes a tunnel: `upgrade.rs`).

use std::cell::RefCell;
use std::io::{self, Read};

use crate::health::Ticket;
use crate::server::{status_has_no_body, Response};
use crate::state::Shared;
use crate::upstream::{AnswerBody, ForwardError, InFlight, OwnAnswer};

use super::error::ProxyError;
use super::headers::{connection_options, passes_downstream};
use super::upgrade;

/// The most of a body read before the answer's head is relayed (the head leaves with the first
/// part of the body in any case). Half of what one read of a pooled answer can return (a
/// connection's input buffer): a larger body's next part leaves in the next write.
const FIRST_PIECE: usize = 16 * 1024;

thread_local! {
    /// Where a worker reads the first piece of a body (copied out at its length): zeroed once
    /// per worker, not for every answer.
    static FIRST_PIECE_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; FIRST_PIECE]);
}

/// A backend's answer, as it came.
// The pooled answer carries its exchange's state (about 600 bytes), moved twice on a worker's
// stack: cheaper than the allocation a box would add to every request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    /// On a pooled backend connection (it goes back to the idle ones after the body).
    Pooled(ureq::http::Response<AnswerBody>),
    /// On a connection of its own (an upgrade request's).
    Own(OwnAnswer),
}

impl Answer {
    pub fn status(&self) -> u16 {
        match self {
            Answer::Pooled(response) => response.status().as_u16(),
            Answer::Own(answer) => answer.status,
        }
    }
}

/// A backend's response body on its way to the client; holds the backend's in-flight count
/// until the last byte is written (least_connections counts whole transfers), or, for a body
/// that came whole with its first piece, until that is read.
struct Streamed<B> {
    body: B,
    in_flight: InFlight,
    /// The breaker ticket of the try, when the pick went through the breaker.
    ticket: Option<Ticket>,
    /// Bytes still owed by a declared `Content-Length`.
    owed: Option<u64>,
    failed: bool,
}

impl<B> Streamed<B> {
    /// The body broke (a reset, a close before its end): the answer the backend began is no
    /// answer, and its breaker hears so (once), as it would of a reset before the head.
    fn broke(&mut self, error: io::Error) -> io::Error {
        if !std::mem::replace(&mut self.failed, true) {
            let backend = self.in_flight.backend();
            backend.record_failure();
            match self.ticket {
                Some(ticket) => {
                    backend.breaker().record_failure(ticket);
                }
                None => backend.breaker().count_only(true),
            }
            log::warn!("backend {} ({}): response body cut short: {error}", backend.id, backend.addr);
        }
        error
    }
}

impl<B: Read> Read for Streamed<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.body.read(buf) {
            Ok(0) if !buf.is_empty() && self.owed.is_some_and(|owed| owed > 0) => {
                let owed = self.owed.unwrap_or(0);
                Err(self.broke(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{owed} byte(s) short"))))
            }
            Ok(n) => {
                if let Some(owed) = &mut self.owed {
                    *owed = owed.saturating_sub(n as u64);
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => Err(self.broke(e)),
        }
    }
}

impl<B: Read + Send + 'static> Streamed<B> {
    /// The answer with its body, the first piece of it read already: a body that breaks before
    /// its first byte (a malformed chunked body, a reset) is a `502` (`504` for a timeout) with
    /// nothing of the backend's answer relayed, not a connection reset with no status line. The
    /// head would have waited for that first piece anyway: it leaves with it, in one write.
    fn into_response(mut self, response: Response, length: Option<u64>) -> Response {
        let first = FIRST_PIECE_BUFFER.with_borrow_mut(|buffer| loop {
            match self.read(buffer) {
                Ok(n) => break Ok(buffer[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        });
        match first {
            // The whole body came with the first piece (its declared length is read): its end is
            // read now, which gives the backend connection back, and the answer leaves as it
            // is, with nothing streamed behind it. The backend's part of the transfer is over,
            // so it no longer counts as in flight.
            Ok(first) if self.owed == Some(0) => {
                // Its end is read from the body itself: an error there leaves the answer whole
                // (its connection is not reused), and no failure is the backend's.
                let mut more = [0u8; 1];
                match self.body.read(&mut more) {
                    // More than its declared length (the framing readers never give it): no
                    // answer can be relayed as it came.
                    Ok(n) if n > 0 => ProxyError::BackendFailed(ForwardError::BadResponse(
                        "a body longer than its Content-Length".into(),
                    ))
                    .response(),
                    _ => response.with_body(first),
                }
            }
            Ok(first) => response.with_stream(io::Cursor::new(first).chain(self), length),
            Err(e) => {
                let error = match e.kind() {
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ForwardError::Timeout,
                    _ => ForwardError::BadResponse(e.to_string()),
                };
                ProxyError::BackendFailed(error).response()
            }
        }
    }
}

/// Turns the backend's answer into ours, streaming its body; a `101` becomes a tunnel.
pub(crate) fn relay(
    shared: &Shared,
    answer: Answer,
    in_flight: InFlight,
    ticket: Option<Ticket>,
    is_head: bool,
) -> Response {
    match answer {
        Answer::Pooled(response) => relay_pooled(response, in_flight, ticket, is_head),
        Answer::Own(answer) if answer.status == 101 => upgrade::tunnel(shared, answer, in_flight),
        Answer::Own(answer) => relay_own(answer, in_flight, ticket, is_head),
    }
}

/// An answer on a connection of its own that did not switch protocols: relayed as any other,
/// its body read in the framing it declares.
fn relay_own(answer: OwnAnswer, in_flight: InFlight, ticket: Option<Ticket>, is_head: bool) -> Response {
    let status = answer.status;
    let mut response = Response::new(status);
    let named_by_connection = connection_options(
        answer.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("connection")).map(|(_, v)| &v[..]),
    );
    for (name, value) in &answer.headers {
        if passes_downstream(&name.to_ascii_lowercase(), &named_by_connection) {
            response = response.with_header(name.as_str(), value.as_slice());
        }
    }
    let length = answer.length();
    if is_head || status_has_no_body(status) {
        drop(in_flight);
        return response.with_stream(io::empty(), length);
    }
    let streamed = Streamed { body: answer.into_body(), in_flight, ticket, owed: length, failed: false };
    streamed.into_response(response, length)
}

/// Turns a backend's answer on a pooled connection into ours, streaming its body.
fn relay_pooled(
    upstream: ureq::http::Response<AnswerBody>,
    in_flight: InFlight,
    ticket: Option<Ticket>,
    is_head: bool,
) -> Response {
    let (parts, body) = upstream.into_parts();
    let status = parts.status.as_u16();
    let mut response = Response::new(status);
    let named_by_connection = connection_options(parts.headers.get_all("connection").iter().map(|v| v.as_bytes()));
    for (name, value) in &parts.headers {
        if passes_downstream(name.as_str(), &named_by_connection) {
            response = response.with_header(name.as_str(), value.as_bytes());
        }
    }
    let declared =
        parts.headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = parts.headers.get("transfer-encoding").is_some();
    if is_head || status_has_no_body(status) {
        // No body follows: read its (empty) end now so that its connection goes back to the
        // idle ones, and keep the declared length for a HEAD answer.
        let mut body = body;
        let _ = body.read(&mut [0u8; 1]);
        drop(in_flight);
        return response.with_stream(io::empty(), declared);
    }
    let length = if chunked { None } else { declared };
    let streamed = Streamed { body, in_flight, ticket, owed: length, failed: false };
    streamed.into_response(response, length)
}
