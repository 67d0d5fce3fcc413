//! The data path, top to bottom: a request arrives → management API or proxy → client IP →
//! pick a backend → forward → on failure maybe the next one → stream the answer back → account.

use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::admin;
use crate::backend::{Backend, InFlight};
use crate::balancer::Shared;
use crate::client_ip::{canonical, client_ip, is_trusted};
use crate::forward::ForwardError;
use crate::server::{Handler, Request, RequestBody, Response};

/// Request headers that describe one connection, not the message (RFC 9110 7.6.1), plus those
/// this proxy sets itself. `Expect` is answered here, so the backend never waits on it.
const DROPPED_REQUEST_HEADERS: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Response headers that describe the backend connection; the front end frames its own.
const DROPPED_RESPONSE_HEADERS: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The balancer's request handler.
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    pub(crate) fn new(shared: Arc<Shared>) -> Proxy {
        Proxy { shared }
    }
}

impl Handler for Proxy {
    fn handle<'r>(&self, request: Request<'r>) -> Response<'r> {
        let prefix = self.shared.config.admin_prefix.as_str();
        let path = request.path();
        if path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        {
            return admin::handle(&self.shared, request);
        }
        forward(&self.shared, request)
    }
}

/// Methods that may be sent twice without a different effect (RFC 9110 9.2.2).
fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// The path and query to send upstream: origin form, or the path of an absolute-form target.
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))?;
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// The request body, counting what was read, so a retry knows whether it can still be sent.
struct CountingBody<'r> {
    inner: RequestBody<'r>,
    read: u64,
}

impl Read for CountingBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// A backend's response body on its way to the client; holds the backend's in-flight count
/// until the last byte is written (least_connections counts whole transfers).
struct Streamed {
    body: ureq::BodyReader<'static>,
    _in_flight: InFlight,
}

impl Read for Streamed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

/// The headers sent upstream: the client's, less hop-by-hop ones, plus the X-Forwarded set.
fn upstream_headers(
    request: &Request<'_>,
    client: IpAddr,
    peer_trusted: bool,
) -> Vec<(String, Vec<u8>)> {
    let named_by_connection: Vec<String> = request
        .headers()
        .iter()
        .filter(|h| h.is("connection"))
        .flat_map(|h| {
            String::from_utf8_lossy(&h.value)
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut headers: Vec<(String, Vec<u8>)> = request
        .headers()
        .iter()
        .filter(|h| !DROPPED_REQUEST_HEADERS.iter().any(|d| h.is(d)))
        .filter(|h| !named_by_connection.iter().any(|n| h.is(n)))
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    let peer = canonical(request.peer().ip()).to_string();
    // A trusted proxy's chain is extended; an untrusted client's claims are dropped.
    let forwarded_for = match request.header("x-forwarded-for").filter(|_| peer_trusted) {
        Some(chain) if !chain.trim().is_empty() => format!("{}, {peer}", chain.trim()),
        _ => peer,
    };
    headers.push(("X-Forwarded-For".into(), forwarded_for.into_bytes()));
    headers.push(("X-Real-IP".into(), client.to_string().into_bytes()));
    let proto = request
        .header("x-forwarded-proto")
        .filter(|_| peer_trusted)
        .unwrap_or("http");
    headers.push(("X-Forwarded-Proto".into(), proto.as_bytes().to_vec()));
    let host = request
        .header("x-forwarded-host")
        .filter(|_| peer_trusted)
        .or(request.header("host"));
    if let Some(host) = host {
        headers.push(("X-Forwarded-Host".into(), host.as_bytes().to_vec()));
    }
    headers
}

fn hash_key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn forward<'r>(shared: &Shared, request: Request<'r>) -> Response<'r> {
    let started = Instant::now();
    let config = &shared.config;
    let peer = canonical(request.peer().ip());
    let peer_trusted = is_trusted(peer, &config.trusted_proxies);
    let client = client_ip(
        peer,
        request.header("x-forwarded-for"),
        &config.trusted_proxies,
    );
    let method = request.method().to_string();
    let Some(target) = origin_form(request.target()).map(str::to_string) else {
        return finish(
            shared,
            &method,
            request.target(),
            client,
            None,
            started,
            Response::text(400, "unsupported request target"),
        );
    };
    let headers = upstream_headers(&request, client, peer_trusted);
    let has_body = request.head().framing != crate::server::BodyFraming::None;
    let is_head = request.head().is_head();
    let mut body = CountingBody {
        inner: request.into_body(),
        read: 0,
    };

    let key = hash_key(client);
    let membership = shared.table.snapshot();
    let mut tried: Vec<*const Backend> = Vec::with_capacity(config.max_tries);
    let mut last_error: Option<ForwardError> = None;
    while tried.len() < config.max_tries {
        let Some(backend) = membership.pick(&key, |b| !tried.contains(&(b as *const Backend)))
        else {
            break;
        };
        tried.push(Arc::as_ptr(backend));
        let in_flight = backend.begin();
        let result = shared.forwarder.send(
            backend,
            &method,
            &target,
            &headers,
            if has_body {
                Some(&mut body as &mut dyn Read)
            } else {
                None
            },
        );
        match result {
            Ok(upstream) => {
                let response = relay(upstream, in_flight, is_head);
                return finish(
                    shared,
                    &method,
                    &target,
                    client,
                    Some(backend),
                    started,
                    response,
                );
            }
            Err(error) => {
                backend.record_failure();
                log::warn!(
                    "{method} {target} to {} ({}): {error}",
                    backend.id,
                    backend.addr
                );
                // Another backend may get the request only if this one certainly did not act on
                // it, or the method allows repeating, and the body has not been consumed.
                let replayable = body.read == 0 && body.inner.error().is_none();
                let retry = replayable && (error.never_sent() || is_idempotent(&method));
                last_error = Some(error);
                if !retry {
                    break;
                }
            }
        }
    }
    let response = match last_error {
        None => Response::text(503, "no backend available").with_header("Retry-After", "1"),
        Some(e) if e.is_timeout() => Response::text(504, "backend timed out"),
        Some(_) => Response::text(502, "backend failed"),
    };
    finish(shared, &method, &target, client, None, started, response)
}

/// Turns the backend's response into ours, streaming its body.
fn relay<'r>(
    upstream: ureq::http::Response<ureq::Body>,
    in_flight: InFlight,
    is_head: bool,
) -> Response<'r> {
    let (parts, body) = upstream.into_parts();
    let mut response = Response::new(parts.status.as_u16());
    for (name, value) in &parts.headers {
        if !DROPPED_RESPONSE_HEADERS.contains(&name.as_str()) && name != "content-length" {
            response = response.with_header(name.as_str(), value.as_bytes());
        }
    }
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = parts.headers.get("transfer-encoding").is_some();
    let length = if is_head || !chunked { declared } else { None };
    response.with_stream(
        Streamed {
            body: body.into_reader(),
            _in_flight: in_flight,
        },
        length,
    )
}

/// Accounts for and logs the request, then hands the response to the server to write.
fn finish<'r>(
    shared: &Shared,
    method: &str,
    target: &str,
    client: IpAddr,
    backend: Option<&Arc<Backend>>,
    started: Instant,
    response: Response<'r>,
) -> Response<'r> {
    let elapsed = started.elapsed();
    shared.stats.record(response.status, elapsed);
    if shared.config.access_log {
        log::info!(
            target: "access",
            "{client} \"{method} {target}\" {} {} {:.1}ms",
            response.status,
            backend.map_or("-", |b| b.id.as_str()),
            elapsed.as_secs_f64() * 1000.0
        );
    }
    response
}
