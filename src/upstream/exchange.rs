//! One request and its answer on one backend connection, driven by ureq-proto's `Call`: the
//! state machine under ureq's agent, which writes the request head, frames the body, parses the
//! answer's head and decodes its body. We drive it ourselves instead of through `Agent::run`
//! because everything around it is ours already (the connection, its pool, its timeouts, the
//! TLS connector) and the agent's own bookkeeping (extensions, call timings, redirect and cookie
//! support, a boxed body) was more than half of what a proxied request allocated.
//!
//! The steps are ureq's own (`run.rs`), without what a proxy never does: no redirects followed,
//! no cookies, no decompression, no headers of its own but the body's framing.
//!
//! ```text
//!   Call::new ─▶ head ─▶ body (when the request has one) ─▶ answer head ─▶ AnswerBody::read ...
//!                                                                 └─(no body)─▶ released
//! ```

use std::io::{self, Read};
use std::time::{Duration, Instant};

use ureq::http::{self, header, HeaderValue, Request, Response};
use ureq::unversioned::transport::time::Duration as Wait;
use ureq::unversioned::transport::{NextTimeout, Transport};
use ureq::Timeout;
use ureq_proto::client::state::{RecvBody, RecvResponse, SendBody, SendRequest};
use ureq_proto::client::{Await100Result, Call, RecvBodyResult, RecvResponseResult, SendRequestResult};
use ureq_proto::BodyMode;

use super::pool::PooledTransport;

/// What the transports are told of deadlines: none. Every read and write of a backend
/// connection has its own socket timeout (`transport.rs`), set once per connection; the
/// phases' own limits are kept here ([`Deadline`]).
const NO_DEADLINE: NextTimeout =
    NextTimeout { after: Wait::NotHappening, reason: Timeout::Global, per_read: None, per_write: None };

/// The limits of one exchange.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExchangeLimits {
    /// The longest answer head accepted.
    pub max_head: usize,
    /// Waiting for the answer's head once the request is out (ureq's `timeout_recv_response`):
    /// a backend that trickles its head, or sends interim `1xx` answers forever, is cut off
    /// here although each read is quick.
    pub phase: Duration,
}

/// When a phase of the exchange must be over, looked at before each wait (as ureq looks at
/// its phase timeouts): a read under way ends at its own socket timeout.
struct Deadline {
    at: Instant,
    phase: Timeout,
}

impl Deadline {
    fn from_now(limit: Duration, phase: Timeout) -> Deadline {
        Deadline { at: Instant::now() + limit, phase }
    }

    fn check(&self) -> Result<(), ureq::Error> {
        if Instant::now() >= self.at {
            return Err(ureq::Error::Timeout(self.phase));
        }
        Ok(())
    }
}

/// Sends `request` (and `body`, streamed, when it has one) on `connection` and reads the
/// answer's head. The answer's body is read from the returned [`AnswerBody`], which gives the
/// connection back to its backend's idle ones once the body has ended (if the answer allows
/// it), and closes it when dropped before.
///
/// A request with a body and no `Content-Length` goes chunked, as ureq sends a reader.
pub(crate) fn exchange(
    mut connection: PooledTransport,
    request: Request<()>,
    body: Option<&mut (dyn Read + '_)>,
    limits: ExchangeLimits,
) -> Result<Response<AnswerBody>, ureq::Error> {
    let mut call = Call::new(request)?;
    call.allow_non_standard_methods(true);
    if body.is_some() {
        // As ureq does for any body it is given, whatever the method.
        call.force_send_body();
        if !has_framing(call.headers()) {
            call.header(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"))?;
        }
    }
    let call = match send_head(call.proceed(), &mut connection)? {
        // Expect is answered by the front end and never sent: nothing to wait for.
        SendRequestResult::Await100(call) => match call.proceed()? {
            Await100Result::SendBody(call) => send_body(call, body, &mut connection)?,
            Await100Result::RecvResponse(call) => call,
        },
        SendRequestResult::SendBody(call) => send_body(call, body, &mut connection)?,
        SendRequestResult::RecvResponse(call) => call,
    };
    let waiting = Deadline::from_now(limits.phase, Timeout::RecvResponse);
    let (head, next) = receive_head(call, &mut connection, limits.max_head, &waiting)?;
    let body = match next {
        RecvResponseResult::RecvBody(call) => {
            AnswerBody { call: Some(call), connection: Some(connection), backend_closed: false }
        }
        RecvResponseResult::Redirect(call) => {
            connection.release(!call.must_close_connection());
            AnswerBody::empty()
        }
        RecvResponseResult::Cleanup(call) => {
            connection.release(!call.must_close_connection());
            AnswerBody::empty()
        }
    };
    let (parts, ()) = head.into_parts();
    Ok(Response::from_parts(parts, body))
}

/// Whether the request says how its body is framed (ureq's test: a `Transfer-Encoding` naming
/// chunked, or a `Content-Length` that is a number).
fn has_framing(headers: &http::HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    text(header::TRANSFER_ENCODING).is_some_and(|v| v.contains("chunked"))
        || text(header::CONTENT_LENGTH).is_some_and(|v| v.parse::<u64>().is_ok())
}

/// Writes the request line and headers, as many lines as fit the output buffer at a time.
/// A head is bounded (the front end's limit plus the proxy's own lines) and the write buffer
/// holds most of one, so it takes a few writes at most, each within its socket timeout: the
/// phase needs no limit of its own.
fn send_head(mut call: Call<SendRequest>, connection: &mut PooledTransport) -> Result<SendRequestResult, ureq::Error> {
    while !call.can_proceed() {
        let amount = call.write(connection.buffers().output())?;
        connection.transmit_output(amount, NO_DEADLINE)?;
    }
    call.proceed()?.ok_or_else(|| stalled("the request head was not written"))
}

/// Streams the body (none: an empty one, for a method that has one by default) in pieces of
/// the output buffer's size, chunked or as it is.
fn send_body(
    mut call: Call<SendBody>,
    mut body: Option<&mut (dyn Read + '_)>,
    connection: &mut PooledTransport,
) -> Result<Call<RecvResponse>, ureq::Error> {
    let mut read = |into: &mut [u8]| match body.as_deref_mut() {
        Some(reader) => reader.read(into),
        None => Ok(0),
    };
    while !call.can_proceed() {
        let (tmp, output) = connection.buffers().tmp_and_output();
        let written = if call.is_chunked() {
            let fits = call.calculate_max_input(output.len()).min(tmp.len());
            let n = read(&mut tmp[..fits])?;
            let (used, written) = call.write(&tmp[..n], output)?;
            // The piece was sized to fit with its chunk framing: all of it went out.
            if used != n {
                return Err(stalled("a body piece did not fit its chunk"));
            }
            written
        } else {
            // A sized body is written straight into the output buffer.
            let n = read(output)?;
            call.consume_direct_write(n)?;
            n
        };
        connection.transmit_output(written, NO_DEADLINE)?;
    }
    call.proceed().ok_or_else(|| stalled("the request body was not finished"))
}

/// Reads until the answer's head is whole (interim `1xx` answers are passed over, as ureq
/// does) or `deadline` passes; a head longer than `max_head` is refused.
fn receive_head(
    mut call: Call<RecvResponse>,
    connection: &mut PooledTransport,
    max_head: usize,
    deadline: &Deadline,
) -> Result<(Response<()>, RecvResponseResult), ureq::Error> {
    let mut first = true;
    let head = loop {
        // The first read needs no look: the wait has just begun.
        if !std::mem::take(&mut first) {
            deadline.check()?;
        }
        let progress = connection.maybe_await_input(NO_DEADLINE)?;
        let input = connection.buffers().input();
        let (used, head) = call.try_response(input, false)?;
        let size = if head.is_some() { used } else { input.len() };
        if size > max_head {
            return Err(ureq::Error::LargeResponseHeader(input.len(), max_head));
        }
        connection.buffers().input_consume(used);
        match head {
            Some(head) => break head,
            None if !progress => return Err(disconnected()),
            None => {}
        }
    };
    let next = call.proceed().ok_or_else(|| stalled("the answer head was not finished"))?;
    Ok((head, next))
}

/// An answer's body as it arrives from its backend connection, decoded from its framing
/// (`Content-Length`, chunked, or until the backend closes). Once it has ended, the connection
/// goes back to its backend's idle ones when the answer allows reuse; dropped before its end,
/// the connection is closed.
///
/// Made by [`Forwarder::send`](super::Forwarder::send); read it as any [`Read`].
#[derive(Debug)]
pub struct AnswerBody {
    call: Option<Call<RecvBody>>,
    connection: Option<PooledTransport>,
    /// The backend closed: nothing more will come, whatever the framing still expects.
    backend_closed: bool,
}

impl AnswerBody {
    /// The body of an answer that has none (its connection already released).
    fn empty() -> AnswerBody {
        AnswerBody { call: None, connection: None, backend_closed: false }
    }

    /// ureq's `BodyHandler::do_read`: decodes what is buffered first, waits for more only
    /// when that gave nothing.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ureq::Error> {
        let (Some(call), Some(connection)) = (&mut self.call, &mut self.connection) else { return Ok(0) };
        loop {
            let fulfilled = match call.body_mode() {
                BodyMode::LengthDelimited(_) | BodyMode::Chunked => call.can_proceed(),
                BodyMode::CloseDelimited | BodyMode::NoBody => false,
            };
            if fulfilled {
                self.ended()?;
                return Ok(0);
            }
            if connection.buffers().can_use_input() {
                let (used, decoded) = call.read(connection.buffers().input(), buf)?;
                connection.buffers().input_consume(used);
                if decoded > 0 {
                    return Ok(decoded);
                }
                if used > 0 {
                    continue;
                }
            }
            if self.backend_closed {
                self.ended()?;
                return Ok(0);
            }
            let progress = match connection.maybe_await_input(NO_DEADLINE) {
                Ok(progress) => progress,
                Err(ureq::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    self.backend_closed = true;
                    true
                }
                Err(e) => return Err(e),
            };
            let input = connection.buffers().input();
            let input_ended = input.is_empty();
            let (used, decoded) = call.read(input, buf)?;
            connection.buffers().input_consume(used);
            if decoded > 0 {
                return Ok(decoded);
            } else if input_ended {
                self.ended()?;
                return Ok(0);
            } else if !progress {
                return Err(ureq::Error::BodyStalled);
            }
        }
    }

    /// The body is over: the connection is released (kept when the answer allows it). A body
    /// that ended before its framing's end is a broken answer.
    fn ended(&mut self) -> Result<(), ureq::Error> {
        let (Some(call), Some(connection)) = (self.call.take(), self.connection.take()) else { return Ok(()) };
        // A backend that sent the last chunk and closed before the blank line after it: the
        // body is whole, the connection is not reusable.
        let ended_chunked = call.is_ended_chunked();
        if !call.can_proceed() && !ended_chunked {
            return Err(disconnected());
        }
        let must_close = match call.proceed() {
            Some(RecvBodyResult::Redirect(call)) => call.must_close_connection(),
            Some(RecvBodyResult::Cleanup(call)) => call.must_close_connection(),
            None => true,
        };
        connection.release(!must_close);
        Ok(())
    }
}

impl Read for AnswerBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Nothing asked, nothing waited for (a read would block on the backend).
        if buf.is_empty() {
            return Ok(0);
        }
        self.read_some(buf).map_err(ureq::Error::into_io)
    }
}

/// The backend closed before the answer was whole (what ureq reports as `Peer disconnected`).
fn disconnected() -> ureq::Error {
    ureq::Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "Peer disconnected"))
}

/// A state the call cannot leave (a ureq-proto invariant broken): the try fails.
fn stalled(what: &str) -> ureq::Error {
    ureq::Error::Io(io::Error::other(format!("upstream exchange stopped: {what}")))
}
