//! Access-log lines, built where the response is finished: what the request said is taken
//! before the proxy consumes it ([`PendingAccess`]), what became of it (status, backend, its
//! time) when the handler answers, and the bytes sent and total time when the last byte left,
//! through [`Response::on_finish`]. The line is formatted on that thread and queued to the log
//! thread; nobody waits on the disk. A tunnel's line (a `101`) is written when the tunnel
//! closes, with the bytes it carried each way and its whole life as the request time.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::DEFAULT_POOL;
use crate::logging::{next_request_id, AccessFormat, AccessRecord, LogHandle, RequestId};
use crate::server::field::{self, Sole};
use crate::server::{Finished, Request, Response, TunnelEnd, Version};

/// The access log's sending side and format.
#[derive(Clone, Debug)]
pub struct AccessLog {
    /// Where lines go (a [`LogWriter`](crate::logging::LogWriter)'s thread).
    pub handle: LogHandle,
    /// The line format.
    pub format: AccessFormat,
}

/// Longest `X-Request-Id` taken from a client; longer or odd ones are replaced by ours.
const MAX_INCOMING_ID: usize = 128;

/// A request's id as text: ours is kept in place (no copy per request).
#[derive(Debug)]
enum IdText {
    Ours(RequestId),
    Theirs(String),
}

/// What the access-log line will say of a request, taken before the request is consumed.
#[derive(Debug)]
pub struct PendingAccess {
    client_ip: IpAddr,
    method: String,
    target: String,
    protocol: &'static str,
    referer: Option<String>,
    user_agent: Option<String>,
    /// The request's id: the client's `X-Request-Id` when it sent a sane one, else ours.
    request_id: IdText,
    /// Whether the id came with the request (so it is already in the headers sent upstream).
    pub id_came_in: bool,
    started: Instant,
    /// Whether the line will be written (else nothing is copied).
    logged: bool,
    /// The route that took the request.
    route: Option<Arc<str>>,
    /// The pool it was sent to (`default` borrowed: nothing copied without routes).
    pool: Option<Cow<'static, str>>,
}

impl PendingAccess {
    /// Takes what the line needs from `request` (when `logged`: with the access log off only the
    /// id and the start are kept, and nothing is copied); `client_ip` is the client as the
    /// balancer sees it (after a trusted proxy's `X-Forwarded-For`).
    pub fn new(request: &Request, client_ip: IpAddr, logged: bool) -> PendingAccess {
        // One sane id is taken; several, or an odd one, are replaced by ours (and not sent on).
        let incoming = match field::sole(request.headers(), "x-request-id") {
            Sole::Text(id) if (1..=MAX_INCOMING_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(id)
            }
            _ => None,
        };
        let (request_id, id_came_in) = match incoming {
            Some(id) => (IdText::Theirs(id.to_string()), true),
            None => (IdText::Ours(next_request_id()), false),
        };
        let copy = |text: &str| if logged { text.to_string() } else { String::new() };
        PendingAccess {
            client_ip,
            method: copy(request.method()),
            target: copy(request.sent_target()),
            protocol: match request.version() {
                Version::Http10 => "HTTP/1.0",
                Version::Http11 => "HTTP/1.1",
            },
            referer: request.header("referer").filter(|_| logged).map(str::to_string),
            user_agent: request.header("user-agent").filter(|_| logged).map(str::to_string),
            request_id,
            id_came_in,
            started: Instant::now(),
            logged,
            route: None,
            pool: None,
        }
    }

    /// Names the route that took the request and the pool it went to, for the line (the JSON
    /// format's `route` and `pool`).
    pub fn served_by(&mut self, route: Option<&Arc<str>>, pool: Option<&str>) {
        if !self.logged {
            return;
        }
        self.route = route.map(Arc::clone);
        self.pool = pool.map(|name| match name {
            DEFAULT_POOL => Cow::Borrowed(DEFAULT_POOL),
            other => Cow::Owned(other.to_string()),
        });
    }

    /// The request's id: the client's `X-Request-Id` when it sent a sane one, else ours.
    pub fn request_id(&self) -> &str {
        match &self.request_id {
            IdText::Ours(id) => id.as_str(),
            IdText::Theirs(id) => id,
        }
    }

    /// When the request was taken.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Writes the line when `response` is finished (a tunnel's when the tunnel closes), if the
    /// access log is on. `upstream` is the backend that answered and its time to the response
    /// head.
    pub fn attach(
        self,
        log: Option<&AccessLog>,
        mut response: Response,
        upstream: Option<(SocketAddr, Duration)>,
    ) -> Response {
        let Some(log) = log else { return response };
        let (handle, format, status) = (log.handle.clone(), log.format, response.status);
        if let Some(tunnel) = response.tunnel_mut() {
            tunnel.on_close(move |end: TunnelEnd| {
                let record = self.record(status, end.to_client, upstream, Some(end.from_client));
                handle.send(format.format(&record));
            });
            return response;
        }
        response.on_finish(move |finished: Finished| {
            let record = self.record(status, finished.body_bytes_sent, upstream, None);
            handle.send(format.format(&record));
        })
    }

    /// The line's record, now.
    fn record(
        &self,
        status: u16,
        body_bytes_sent: u64,
        upstream: Option<(SocketAddr, Duration)>,
        bytes_received: Option<u64>,
    ) -> AccessRecord<'_> {
        AccessRecord {
            client_ip: self.client_ip,
            time: SystemTime::now(),
            method: &self.method,
            target: &self.target,
            protocol: self.protocol,
            status,
            body_bytes_sent,
            referer: self.referer.as_deref(),
            user_agent: self.user_agent.as_deref(),
            upstream_addr: upstream.map(|(addr, _)| addr),
            upstream_response_time: upstream.map(|(_, time)| time),
            request_time: self.started.elapsed(),
            request_id: self.request_id(),
            route: self.route.as_deref(),
            pool: self.pool.as_deref(),
            bytes_received,
        }
    }
}

/// The access-log line of a request the front end refused before any handler saw it: its
/// request line as sent when it arrived whole, else `"-"`, as nginx logs a request it could not
/// parse.
pub fn refusal_line(format: AccessFormat, peer: IpAddr, status: u16, request_line: Option<&str>) -> String {
    let id = next_request_id();
    format.format(&AccessRecord {
        client_ip: peer,
        time: SystemTime::now(),
        method: "",
        target: request_line.unwrap_or("-"),
        protocol: "",
        status,
        body_bytes_sent: 0,
        referer: None,
        user_agent: None,
        upstream_addr: None,
        upstream_response_time: None,
        request_time: Duration::ZERO,
        request_id: id.as_str(),
        route: None,
        pool: None,
        bytes_received: None,
    })
}
