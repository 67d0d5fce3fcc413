//! What a handler receives: the validated head, the peer address and the complete body.

use std::net::SocketAddr;

use super::head::{Header, RequestHead, Version};
use super::spool::RequestBody;

/// One request, as handed to a [`Handler`](super::Handler): its body has arrived whole (the
/// poller buffered it), so reading it never waits for the client.
pub struct Request {
    head: RequestHead,
    peer: SocketAddr,
    body: RequestBody,
    tls: bool,
    first_on_connection: bool,
}

impl Request {
    /// A request from its parts (the server builds them; also for tests of handlers).
    pub fn new(head: RequestHead, peer: SocketAddr, body: RequestBody) -> Request {
        Request { head, peer, body, tls: false, first_on_connection: false }
    }

    /// Marks the request as received over TLS (or not).
    ///
    /// ```
    /// use lb_sync::server::{parse_head, Limits, ParseOutcome, Request, RequestBody};
    /// let Ok(ParseOutcome::Complete(head, _)) = parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &Limits::default()) else {
    ///     panic!("a complete head")
    /// };
    /// let request = Request::new(head, "127.0.0.1:5000".parse().unwrap(), RequestBody::empty()).with_tls(true);
    /// assert!(request.is_tls());
    /// ```
    pub fn with_tls(mut self, tls: bool) -> Request {
        self.tls = tls;
        self
    }

    /// Marks the request as the first its connection carried (or not).
    pub fn with_first_on_connection(mut self, first: bool) -> Request {
        self.first_on_connection = first;
        self
    }

    /// Whether it is the first request its client connection carried: a proxy that keeps such a
    /// request off connections other clients used (HAProxy's `http-reuse safe`) asks this.
    pub fn is_first_on_connection(&self) -> bool {
        self.first_on_connection
    }

    /// Whether the request came over TLS (the HTTPS listener): its scheme is `https`.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        &self.head.method
    }

    /// The request target with its path made canonical, e.g. `/path?query`: what handlers
    /// match and what is forwarded.
    pub fn target(&self) -> &str {
        &self.head.target
    }

    /// The target exactly as the client sent it (for logs).
    pub fn sent_target(&self) -> &str {
        self.head.sent_target.as_deref().unwrap_or(&self.head.target)
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.head.target.split('?').next().unwrap_or("")
    }

    /// The query part of the target (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.head.target.split_once('?').map(|(_, q)| q)
    }

    /// HTTP/1.0 or HTTP/1.1.
    pub fn version(&self) -> Version {
        self.head.version
    }

    /// All header fields in the order received.
    pub fn headers(&self) -> &[Header] {
        &self.head.headers
    }

    /// The first header named `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The validated head.
    pub fn head(&self) -> &RequestHead {
        &self.head
    }

    /// The TCP peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The body, to read from.
    pub fn body(&mut self) -> &mut RequestBody {
        &mut self.body
    }

    /// The head and the body, owned (to send the body on, or stream it into a response).
    pub fn into_parts(self) -> (RequestHead, RequestBody) {
        (self.head, self.body)
    }

    /// The body, owned.
    pub fn into_body(self) -> RequestBody {
        self.body
    }
}
