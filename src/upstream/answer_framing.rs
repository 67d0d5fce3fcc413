//! Where a backend's answer ends, followed on its bytes as they arrive, beside ureq's own parser
//! (the front end's strict body decoder does the body). ureq waits for a CRLF that a chunked body
//! with bare-LF lines never sends (the exchange hung until the request timeout) and leaves the
//! bytes after an answer's end to its pool's check; following the framing ourselves, a malformed
//! answer fails at once, and a connection on which the backend sent more than its answer is
//! known and never reused.
//!
//! ```text
//!   request sent ─▶ Head ──(1xx)──▶ Head ──▶ Body ──▶ Complete ──(any byte)──▶ Overran
//!                     │                       └──▶ Malformed (bad chunk line, bad length)
//!                     └──▶ Switched (101), UntilClose, Unfollowed: never reused
//! ```

use std::mem::MaybeUninit;

use crate::server::{BodyDecoder, BodyFraming};

/// Most header fields of an answer head we follow (ureq's own limit is higher; an answer with
/// more is left to ureq and its connection not reused).
const MAX_HEADERS: usize = 128;
/// A head still incomplete at this size is left to ureq (its limit is 64 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// The error of an exchange whose answer's framing is broken (why): a bad answer.
#[derive(Debug)]
pub(crate) struct MalformedAnswer(pub String);

impl std::fmt::Display for MalformedAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed answer: {}", self.0)
    }
}

impl std::error::Error for MalformedAnswer {}

/// Where one answer stands.
#[derive(Debug)]
enum Phase {
    /// Its head (or an interim 1xx before it) is arriving: the bytes of it so far.
    Head(Vec<u8>),
    /// Its body is arriving.
    Body(BodyDecoder),
    /// Its body runs until the backend closes.
    UntilClose,
    /// It switched protocols (`101`): what follows is no HTTP answer.
    Switched,
    /// A head we do not follow (too large, too many fields, not HTTP): ureq judges it.
    Unfollowed,
    /// Ended exactly where its framing says, and nothing came after it.
    Complete,
    /// Bytes came after its end: an answer nobody asked for, or the start of one.
    Overran,
    /// Its framing is broken (why).
    Malformed(String),
}

/// One exchange's answer on a backend connection, followed byte by byte (the unit tests below
/// show it on whole answers, glued ones and broken ones).
#[derive(Debug)]
pub(crate) struct AnswerFraming {
    /// The request was a HEAD: its answer has no body whatever its head says.
    head_request: bool,
    phase: Phase,
}

impl AnswerFraming {
    /// Follows the answer to a request just sent (`head_request`: its method was HEAD).
    pub(crate) fn new(head_request: bool) -> AnswerFraming {
        AnswerFraming { head_request, phase: Phase::Head(Vec::new()) }
    }

    /// Takes the next bytes the backend sent. `Err` (why) when they break the answer's framing:
    /// the exchange has failed, and the same answer is refused from then on.
    pub(crate) fn received(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Head(so_far) => {
                    let fresh = so_far.is_empty();
                    bytes = self.head(bytes, fresh);
                }
                Phase::Body(decoder) => match decoder.feed(bytes, &mut |_| Ok(())) {
                    Ok(used) => {
                        bytes = &bytes[used..];
                        if decoder.is_complete() {
                            self.phase = Phase::Complete;
                        }
                    }
                    Err(e) => self.phase = Phase::Malformed(e.reason().to_string()),
                },
                Phase::Complete => self.phase = Phase::Overran,
                Phase::Overran | Phase::UntilClose | Phase::Switched | Phase::Unfollowed => return Ok(()),
                Phase::Malformed(_) => break,
            }
        }
        match &self.phase {
            Phase::Malformed(why) => Err(why.clone()),
            _ => Ok(()),
        }
    }

    /// Goes on with a head: parses what arrived of it (`fresh`: nothing before these bytes, so
    /// they are parsed where they lie, not copied) and moves on when it is complete. Returns the
    /// bytes after the head.
    fn head<'b>(&mut self, bytes: &'b [u8], fresh: bool) -> &'b [u8] {
        let Phase::Head(so_far) = &mut self.phase else { return bytes };
        // Left uninitialized: httparse writes the ones it finds (no 4 KiB to clear per answer).
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let (parsed, had) = if fresh {
            (config.parse_response_with_uninit_headers(&mut response, bytes, &mut fields), 0)
        } else {
            let had = so_far.len();
            so_far.extend_from_slice(bytes);
            (config.parse_response_with_uninit_headers(&mut response, so_far, &mut fields), had)
        };
        let used = match parsed {
            Ok(httparse::Status::Complete(used)) => used - had,
            Ok(httparse::Status::Partial) => {
                if fresh {
                    so_far.extend_from_slice(bytes);
                }
                if so_far.len() > MAX_HEAD {
                    self.phase = Phase::Unfollowed;
                }
                return &[];
            }
            Err(_) => {
                self.phase = Phase::Unfollowed;
                return &[];
            }
        };
        let status = response.code.unwrap_or(0);
        let next = match status {
            101 => Phase::Switched,
            100..=199 => Phase::Head(Vec::new()),
            _ => {
                let named = response.headers.iter().map(|h| (h.name, h.value));
                match framing(status, named, self.head_request) {
                    Ok((Some(BodyFraming::None), _)) => Phase::Complete,
                    Ok((Some(framing), _)) => Phase::Body(BodyDecoder::new(framing, u64::MAX)),
                    Ok((None, _)) => Phase::UntilClose,
                    Err(why) => Phase::Malformed(why),
                }
            }
        };
        self.phase = next;
        &bytes[used..]
    }

    /// Whether the answer ended exactly at its framing and nothing came after it: only then
    /// may its connection carry another request.
    pub(crate) fn is_complete(&self) -> bool {
        matches!(self.phase, Phase::Complete)
    }

    /// Whether bytes came after the answer's end.
    pub(crate) fn overran(&self) -> bool {
        matches!(self.phase, Phase::Overran)
    }

    /// Why the answer's framing is broken, if it is.
    pub(crate) fn malformed(&self) -> Option<&str> {
        match &self.phase {
            Phase::Malformed(why) => Some(why),
            _ => None,
        }
    }
}

/// How an answer's body is delimited (RFC 9112 6.3), and its declared length: no body for a
/// HEAD request's answer, a 1xx, 204 or 304; chunked when it is the last coding; until the
/// close for another last coding or no length; else the length. A malformed length is a bad
/// answer (why): the try failed, and another backend may get the request. Both ways of reading
/// an answer use it: [`AnswerFraming`] for the pooled ones, `raw.rs` for an upgrade request's.
pub(super) fn framing<'h>(
    status: u16,
    headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    head_request: bool,
) -> Result<(Option<BodyFraming>, Option<u64>), String> {
    let no_body = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let mut last_coding: Option<&[u8]> = None;
    let mut declared = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            last_coding = value.rsplit(|&b| b == b',').map(<[u8]>::trim_ascii).find(|c| !c.is_empty()).or(last_coding);
        } else if name.eq_ignore_ascii_case("content-length") {
            if declared.is_some() {
                return Err("several Content-Length fields".into());
            }
            declared = Some(parse_length(value)?);
        }
    }
    let framing = if no_body {
        Some(BodyFraming::None)
    } else if let Some(coding) = last_coding {
        // Chunked last: chunked; any other coding last: the body runs until the close.
        coding.eq_ignore_ascii_case(b"chunked").then_some(BodyFraming::Chunked)
    } else {
        declared.map(BodyFraming::Length)
    };
    let length = if no_body || last_coding.is_none() { declared } else { None };
    Ok((framing, length))
}

fn parse_length(value: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(value).unwrap_or("").trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid Content-Length '{}'", String::from_utf8_lossy(value)));
    }
    text.parse().map_err(|_| "Content-Length too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::AnswerFraming;

    /// The answer fed in pieces of `step` bytes.
    fn follow(head_request: bool, raw: &[u8], step: usize) -> (AnswerFraming, Result<(), String>) {
        let mut answer = AnswerFraming::new(head_request);
        let result = raw.chunks(step).try_for_each(|piece| answer.received(piece));
        (answer, result)
    }

    #[test]
    fn an_answer_is_complete_at_the_end_of_its_framing_in_any_pieces() {
        let answers: [&[u8]; 5] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 40\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        ];
        for raw in answers {
            for step in [1, 3, raw.len()] {
                let (answer, result) = follow(false, raw, step);
                assert_eq!(result, Ok(()), "{}", String::from_utf8_lossy(raw));
                assert!(answer.is_complete(), "{} in pieces of {step}: {answer:?}", String::from_utf8_lossy(raw));
            }
        }
        // A HEAD request's answer has no body, whatever its length says.
        let (answer, _) = follow(true, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 7);
        assert!(answer.is_complete());
    }

    #[test]
    fn bytes_after_the_end_overrun_it() {
        let glued = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra";
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n\r\n";
        for raw in [&glued[..], &chunked[..]] {
            for step in [1, 5, raw.len()] {
                let (answer, result) = follow(false, raw, step);
                assert_eq!(result, Ok(()));
                assert!(answer.overran() && !answer.is_complete(), "{answer:?}");
            }
        }
        // Later, after the end was complete.
        let (mut answer, _) = follow(false, b"HTTP/1.1 204 No Content\r\n\r\n", 100);
        assert!(answer.is_complete());
        answer.received(b"H").unwrap();
        assert!(answer.overran());
    }

    #[test]
    fn broken_framing_is_malformed_at_once() {
        let bare_lf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n";
        let long_line = [&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..], &[b'1'; 5000]].concat();
        let two_lengths = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let no_crlf_after_data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXY";
        for raw in [&bare_lf[..], &long_line, &two_lengths[..], &no_crlf_after_data[..]] {
            let (answer, result) = follow(false, raw, raw.len());
            assert!(result.is_err() && answer.malformed().is_some(), "{answer:?}");
            assert!(!answer.is_complete());
        }
        // Once malformed, always.
        let (mut answer, _) = follow(false, bare_lf, bare_lf.len());
        assert!(answer.received(b"0\r\n\r\n").is_err());
    }

    #[test]
    fn answers_it_does_not_follow_to_an_end_are_never_complete() {
        let cases: [&[u8]; 4] = [
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ];
        for raw in cases {
            let (answer, result) = follow(false, raw, raw.len());
            assert_eq!(result, Ok(()));
            assert!(!answer.is_complete() && !answer.overran(), "{answer:?}");
        }
    }
}
