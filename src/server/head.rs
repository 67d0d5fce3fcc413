//! Parsing and validating a request head (RFC 9112): the request line, the header fields and,
//! above all, the body framing, which is where request smuggling lives.

use std::borrow::Cow;

use super::error::RequestError;
use super::limits::Limits;
use super::target::{absolute_authority, canonical_target, same_authority};

/// The HTTP version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: close after each response unless the client asks for keep-alive.
    Http10,
    /// HTTP/1.1: keep-alive unless the client says `Connection: close`.
    Http11,
}

impl Version {
    /// The version as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// One header field; the value is kept as bytes because obs-text (0x80-0xFF) is legal in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The field name as the peer spelt it.
    pub name: String,
    /// The field value, without surrounding whitespace.
    pub value: Vec<u8>,
}

impl Header {
    /// A header from a name and a value.
    ///
    /// ```
    /// let h = lb_sync::server::Header::new("Content-Type", "text/plain");
    /// assert_eq!(h.value_str(), Some("text/plain"));
    /// ```
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Header {
        Header { name: name.into(), value: value.into() }
    }

    /// The value as text, or `None` when it is not UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// Whether this header is named `name` (case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// Header fields that describe one connection, not the message (RFC 9110 7.6.1): never
/// forwarded, and chosen by the server itself on its own responses.
pub const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Whether `name` is one of [`HOP_BY_HOP`] (case-insensitive).
///
/// ```
/// assert!(lb_sync::server::is_hop_by_hop("Transfer-Encoding"));
/// assert!(!lb_sync::server::is_hop_by_hop("Content-Type"));
/// ```
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, ended by a zero-size chunk.
    Chunked,
}

/// A validated request head.
#[derive(Clone, Debug)]
pub struct RequestHead {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target with its path made canonical (see
    /// [`canonical_target`](super::canonical_target)): what is matched and what is forwarded.
    pub target: String,
    /// The target as the client sent it, when that differs from `target` (for the access log).
    pub sent_target: Option<String>,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// Header fields in the order received.
    pub headers: Vec<Header>,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Whether the client allows the connection to stay open after the response.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending the body.
    pub expects_continue: bool,
}

impl RequestHead {
    /// The first header named `name` (case-insensitive) as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.is(name)).and_then(Header::value_str)
    }

    /// Whether this is a `HEAD` request, whose response never has a body.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// What parsing a buffer gave.
#[derive(Debug)]
pub enum ParseOutcome {
    /// A complete, valid head, and how many bytes of the buffer it used.
    Complete(RequestHead, usize),
    /// More bytes are needed.
    Partial,
}

/// Parses the head at the start of `buf`, enforcing the limits and RFC 9112 framing rules.
///
/// ```
/// use lb_sync::server::{parse_head, BodyFraming, Limits, ParseOutcome};
/// let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
/// match parse_head(raw, &Limits::default()).unwrap() {
///     ParseOutcome::Complete(head, used) => {
///         assert_eq!(head.framing, BodyFraming::Length(3));
///         assert_eq!(&raw[used..], b"abc");
///     }
///     ParseOutcome::Partial => unreachable!(),
/// }
/// ```
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<ParseOutcome, RequestError> {
    // The usual limit's worth of fields on the stack; a larger limit's on the heap.
    let mut on_stack = [httparse::EMPTY_HEADER; FIELDS_ON_STACK];
    let mut on_heap = Vec::new();
    let fields = if limits.max_headers <= FIELDS_ON_STACK {
        &mut on_stack[..limits.max_headers]
    } else {
        on_heap.resize(limits.max_headers, httparse::EMPTY_HEADER);
        &mut on_heap[..]
    };
    let mut request = httparse::Request::new(fields);
    let used = match request.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => {
            check_partial_size(buf, limits)?;
            return Ok(ParseOutcome::Partial);
        }
        Err(e) => return Err(map_parse_error(e, buf, limits)),
    };
    if used > limits.max_head_bytes {
        return Err(RequestError::HeadTooLarge);
    }
    if request_line_length(buf).unwrap_or(used) > limits.max_request_line_bytes {
        return Err(RequestError::UriTooLong);
    }
    let version = match request.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(RequestError::UnsupportedVersion),
    };
    let method = request.method.unwrap_or_default().to_string();
    let target = request.path.unwrap_or_default().to_string();
    let headers: Vec<Header> =
        request.headers.iter().map(|h| Header { name: h.name.to_string(), value: h.value.to_vec() }).collect();
    let head = validate(method, target, version, headers, limits)?;
    Ok(ParseOutcome::Complete(head, used))
}

/// Header fields [`parse_head`] parses into without allocating: the default limit's.
const FIELDS_ON_STACK: usize = 100;

/// An incomplete head that is already over a limit is refused now, not when it completes.
fn check_partial_size(buf: &[u8], limits: &Limits) -> Result<(), RequestError> {
    let skipped = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    match request_line_length(buf) {
        None if buf.len() - skipped > limits.max_request_line_bytes => Err(RequestError::UriTooLong),
        Some(length) if length > limits.max_request_line_bytes => Err(RequestError::UriTooLong),
        _ if buf.len() > limits.max_head_bytes => Err(RequestError::HeadTooLarge),
        _ => Ok(()),
    }
}

/// The length of the request line, after the empty lines a client may send before it
/// (RFC 9112 2.2); `None` while its end has not arrived.
fn request_line_length(buf: &[u8]) -> Option<usize> {
    let skipped = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    buf[skipped..].iter().position(|&b| b == b'\n')
}

/// What a request line httparse refused for its version deserves: `505` for a well-formed
/// `HTTP/x.y` of a major version above 1 (RFC 9110 15.6.6, as nginx), `400` for anything
/// malformed (`HTTP/1.x`, `http/1.1`, a missing version...). httparse says "version" for both,
/// and for any request line whose spaces are not where it expects them.
fn version_error(buf: &[u8]) -> RequestError {
    let skipped = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    let line = &buf[skipped..];
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    match parts.as_slice() {
        [_, _, version] => match version {
            [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
                if major.is_ascii_digit() && minor.is_ascii_digit() && *major >= b'2' =>
            {
                RequestError::UnsupportedVersion
            }
            _ => RequestError::BadRequest("malformed HTTP version"),
        },
        _ => RequestError::BadRequest("malformed request line"),
    }
}

fn map_parse_error(error: httparse::Error, buf: &[u8], limits: &Limits) -> RequestError {
    match error {
        httparse::Error::TooManyHeaders => RequestError::HeadTooLarge,
        httparse::Error::Version => version_error(buf),
        // A malformed head that is also over a size limit reports the limit: that is the cause.
        _ => match check_partial_size(buf, limits) {
            Err(limit) => limit,
            Ok(()) => RequestError::BadRequest(match error {
                httparse::Error::HeaderName => "invalid header name",
                httparse::Error::HeaderValue => "invalid header value",
                httparse::Error::Token => "invalid method or request target",
                _ => "malformed request head",
            }),
        },
    }
}

fn validate(
    method: String,
    target: String,
    version: Version,
    headers: Vec<Header>,
    limits: &Limits,
) -> Result<RequestHead, RequestError> {
    let mut host_count = 0;
    let mut host: Option<&[u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_codings: Vec<String> = Vec::new();
    let mut saw_transfer_encoding = false;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut expects_continue = false;

    for header in &headers {
        let name = header.name.as_str();
        if name.eq_ignore_ascii_case("host") {
            host_count += 1;
            host = Some(&header.value);
            if !is_valid_authority(&header.value) {
                return Err(RequestError::BadRequest("invalid Host"));
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(RequestError::BadRequest("several Content-Length fields"));
            }
            content_length = Some(parse_content_length(&header.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            saw_transfer_encoding = true;
            for coding in list_elements(&header.value) {
                transfer_codings.push(coding.to_ascii_lowercase());
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for option in list_elements(&header.value) {
                connection_close |= option.eq_ignore_ascii_case("close");
                connection_keep_alive |= option.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            let value = String::from_utf8_lossy(&header.value);
            if value.trim().eq_ignore_ascii_case("100-continue") {
                expects_continue = true;
            } else {
                return Err(RequestError::ExpectationFailed);
            }
        }
    }

    if version == Version::Http11 && host_count == 0 {
        return Err(RequestError::BadRequest("missing Host header"));
    }
    if host_count > 1 {
        return Err(RequestError::BadRequest("several Host fields"));
    }
    let canonical = match canonical_target(&target, &limits.paths) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(canonical)) => Some(canonical),
        Err(why) => return Err(RequestError::BadRequest(why)),
    };
    if let Some((scheme, authority)) = absolute_authority(&target) {
        if !is_valid_authority(authority.as_bytes()) {
            return Err(RequestError::BadRequest("invalid authority in the request target"));
        }
        // RFC 9112 3.2.2 has the target's authority win; two names for one request is how a
        // route and the backend come to read different hosts, so they must agree (as HAProxy).
        if host.is_some_and(|host| !same_authority(scheme, authority, &String::from_utf8_lossy(host))) {
            return Err(RequestError::BadRequest("the request target's authority and Host disagree"));
        }
    }
    let (target, sent_target) = match canonical {
        Some(canonical) => (canonical, Some(target)),
        None => (target, None),
    };

    if saw_transfer_encoding && transfer_codings.is_empty() {
        // An empty Transfer-Encoding: some peers read it as chunked, some ignore it.
        return Err(RequestError::BadRequest("empty Transfer-Encoding"));
    }
    let framing = if transfer_codings.is_empty() {
        match content_length {
            Some(0) | None => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    } else {
        if content_length.is_some() {
            return Err(RequestError::BadRequest("both Content-Length and Transfer-Encoding"));
        }
        if version == Version::Http10 {
            // RFC 9112 6.1: a 1.0 message with Transfer-Encoding is faulty framing.
            return Err(RequestError::BadRequest("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if transfer_codings.iter().any(|c| c != "chunked" && !known_coding(c)) {
            return Err(RequestError::UnsupportedTransferCoding);
        }
        let (last, others) = transfer_codings.split_last().expect("not empty");
        if last != "chunked" {
            // Without a final chunked the body's end is unknowable.
            return Err(RequestError::BadRequest("Transfer-Encoding does not end with chunked"));
        }
        if others.iter().any(|c| c == "chunked") {
            return Err(RequestError::BadRequest("chunked applied more than once"));
        }
        if !others.is_empty() {
            // gzip/deflate/compress before chunked: we do not decode them and will not forward
            // what we cannot frame-check.
            return Err(RequestError::UnsupportedTransferCoding);
        }
        BodyFraming::Chunked
    };
    if let BodyFraming::Length(n) = framing {
        if n > limits.max_body_bytes {
            return Err(RequestError::BodyTooLarge);
        }
    }

    let keep_alive = match version {
        Version::Http11 => !connection_close,
        Version::Http10 => connection_keep_alive && !connection_close,
    };
    // A 1.0 client does not know 100-continue; only 1.1 waits for it.
    let expects_continue = expects_continue && version == Version::Http11;
    Ok(RequestHead { method, target, sent_target, version, headers, framing, keep_alive, expects_continue })
}

/// Whether a `Host` value is an authority `host[:port]` (RFC 9112 3.2, RFC 3986 3.2.2): a
/// non-empty reg-name or IPv4 address (unreserved, sub-delims, `%XX`) or a bracketed IPv6
/// address, then optionally `:` and digits. An empty host is refused too: an `http` URI may not
/// have one (RFC 9110 4.2.1), and nginx answers it with `400`.
///
/// ```
/// use lb_sync::server::is_valid_authority;
/// assert!(is_valid_authority(b"example.com:8080") && is_valid_authority(b"[::1]:80") && is_valid_authority(b"a_b."));
/// assert!(!is_valid_authority(b"") && !is_valid_authority(b"a/b?c") && !is_valid_authority(b"a b"));
/// assert!(!is_valid_authority(b":80") && !is_valid_authority(b"a:8x") && !is_valid_authority(b"[::1"));
/// ```
pub fn is_valid_authority(value: &[u8]) -> bool {
    let (host, port) = match value {
        [b'[', rest @ ..] => match rest.iter().position(|&b| b == b']') {
            Some(end) => {
                let address = &rest[..end];
                if address.is_empty() || !address.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                    return false;
                }
                (&value[..end + 2], &rest[end + 1..])
            }
            None => return false,
        },
        _ => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[value.len()..]),
        },
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    port_ok && !host.is_empty() && (host[0] == b'[' || is_reg_name(host))
}

/// RFC 3986's reg-name (an IPv4 address is one too): unreserved, sub-delims and `%XX`.
fn is_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' if host.len() > i + 2 && host[i + 1].is_ascii_hexdigit() && host[i + 2].is_ascii_hexdigit() => i += 3,
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) => i += 1,
            _ => return false,
        }
    }
    true
}

fn known_coding(coding: &str) -> bool {
    matches!(coding, "gzip" | "x-gzip" | "deflate" | "compress" | "x-compress")
}

/// Content-Length is 1*DIGIT: no sign, no spaces inside, no comma list, no overflow.
fn parse_content_length(value: &[u8]) -> Result<u64, RequestError> {
    let bad = RequestError::BadRequest("invalid Content-Length");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).ok_or(bad)
}

/// The elements of a comma-separated field value, trimmed, empty ones dropped (RFC 9110 5.6.1).
fn list_elements(value: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(value)
        .unwrap_or("\u{fffd}")
        .split(',')
        .map(|s| s.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<ParseOutcome, RequestError> {
        parse_head(raw.as_bytes(), &Limits::default())
    }

    fn framing(raw: &str) -> Result<BodyFraming, RequestError> {
        match parse(raw)? {
            ParseOutcome::Complete(head, _) => Ok(head.framing),
            ParseOutcome::Partial => panic!("partial"),
        }
    }

    #[test]
    fn content_length_and_chunked_framing() {
        assert_eq!(framing("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(BodyFraming::None));
        assert_eq!(framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"), Ok(BodyFraming::Length(12)));
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        let cases = [
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nBad Name: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: \r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a/b?c\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),
            ("GET / HTTP/1.0\r\nHost: \r\n\r\n", 400),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            ("GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\nContent-Length: 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", 400),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            match parse(raw) {
                Err(e) => assert_eq!(e.status(), status, "{raw:?}"),
                Ok(other) => panic!("accepted {raw:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn limits_give_their_status() {
        let limits = Limits { max_body_bytes: 10, ..Limits::default() };
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(parse_head(raw, &limits).unwrap_err().status(), 413);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(9000));
        assert_eq!(parse(&long).unwrap_err().status(), 414);
        let after_empty_lines = format!("\r\n\r\nGET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse(&after_empty_lines).unwrap_err().status(), 414);
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n", "a".repeat(40_000));
        assert_eq!(parse(&big).unwrap_err().status(), 431);
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(parse(&raw).unwrap_err().status(), 431);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |raw: &str| match parse(raw).unwrap() {
            ParseOutcome::Complete(h, _) => h.keep_alive,
            ParseOutcome::Partial => panic!(),
        };
        assert!(ka("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }
}
