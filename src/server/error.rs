//! Why a request was refused, and the one place where each reason gets its status.

use std::fmt;

/// A request the server refuses before (or while) handing it to the handler.
///
/// Every variant closes the connection after its response: after a framing error the server no
/// longer knows where the next request would start, so nothing more is read as a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The request head did not arrive completely within the head timeout.
    HeadTimeout,
    /// No progress reading the request body within the body timeout.
    BodyTimeout,
    /// The request body arrived slower than the minimum upload rate.
    BodyTooSlow,
    /// The request line is longer than the limit.
    UriTooLong,
    /// The head is larger than the limit, or has too many header fields.
    HeadTooLarge,
    /// The body is larger than the limit.
    BodyTooLarge,
    /// Malformed syntax or ambiguous framing; the text says which.
    BadRequest(&'static str),
    /// A transfer coding other than a final `chunked`.
    UnsupportedTransferCoding,
    /// An HTTP version other than 1.0 or 1.1.
    UnsupportedVersion,
    /// An `Expect` other than `100-continue`.
    ExpectationFailed,
    /// The client closed the connection before the body was complete.
    BodyIncomplete,
    /// The body could not be buffered: temp files are over their cap, or cannot be written.
    BodyStorageFull,
    /// The body could not be buffered: this client's temp files are over its share of the cap.
    BodyShareFull,
}

impl RequestError {
    /// The status answered for this error.
    pub fn status(self) -> u16 {
        match self {
            RequestError::HeadTimeout | RequestError::BodyTimeout | RequestError::BodyTooSlow => 408,
            RequestError::UriTooLong => 414,
            RequestError::HeadTooLarge => 431,
            RequestError::BodyTooLarge => 413,
            RequestError::BadRequest(_) | RequestError::BodyIncomplete => 400,
            RequestError::UnsupportedTransferCoding => 501,
            RequestError::UnsupportedVersion => 505,
            RequestError::ExpectationFailed => 417,
            RequestError::BodyStorageFull => 503,
            RequestError::BodyShareFull => 429,
        }
    }

    /// The `Retry-After` of the answer, for a refusal that a later try may not get.
    ///
    /// ```
    /// use lb_sync::server::RequestError;
    /// assert_eq!(RequestError::BodyShareFull.retry_after(), Some("1"));
    /// assert_eq!(RequestError::BodyTooLarge.retry_after(), None);
    /// ```
    pub fn retry_after(self) -> Option<&'static str> {
        matches!(self, RequestError::BodyStorageFull | RequestError::BodyShareFull).then_some("1")
    }

    /// A short human explanation, sent as the response body.
    pub fn reason(self) -> &'static str {
        match self {
            RequestError::HeadTimeout => "request head not received in time",
            RequestError::BodyTimeout => "request body not received in time",
            RequestError::BodyTooSlow => "request body sent too slowly",
            RequestError::UriTooLong => "request line too long",
            RequestError::HeadTooLarge => "request head too large",
            RequestError::BodyTooLarge => "request body too large",
            RequestError::BadRequest(why) => why,
            RequestError::UnsupportedTransferCoding => "unsupported transfer coding",
            RequestError::UnsupportedVersion => "HTTP version not supported",
            RequestError::ExpectationFailed => "unsupported expectation",
            RequestError::BodyIncomplete => "request body ended early",
            RequestError::BodyStorageFull => "no room to buffer the request body, retry later",
            RequestError::BodyShareFull => {
                "this client's request bodies fill its share of the buffer space, retry when they are done"
            }
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for RequestError {}

/// The canonical reason phrase of a status code (RFC 9110), `""` when unknown.
///
/// ```
/// assert_eq!(lb_sync::server::reason_phrase(503), "Service Unavailable");
/// ```
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}
