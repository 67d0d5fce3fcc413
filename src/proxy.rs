//! The data path, top to bottom: a request arrives → management API or proxy → client IP →
//! pick a backend → forward → on failure maybe the next one → stream the answer back → account.

use std::borrow::Cow;
use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::admin;
use crate::backend::{Backend, InFlight, PickKind};
use crate::balancer::Shared;
use crate::client_ip::{canonical, client_ip, is_trusted};
use crate::forward::ForwardError;
use crate::server::{BodyFraming, Handler, Request, RequestBody, Response};

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
const DROPPED_RESPONSE_HEADERS: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

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
        if path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')) {
            return admin::handle(&self.shared, request);
        }
        forward(&self.shared, request)
    }
}

/// Methods that may be sent twice without a different effect (RFC 9110 9.2.2).
fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// The path and query to send upstream: origin form, or the path of an absolute-form target.
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let rest = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://"))?;
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// A streamed request body (after any bytes already read into `prefix`), counting what was
/// sent, so a retry knows whether it can still be sent.
struct CountingBody<'r> {
    inner: RequestBody<'r>,
    read: u64,
    prefix: Vec<u8>,
}

impl Read for CountingBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if (self.read as usize) < self.prefix.len() {
            let rest = &self.prefix[self.read as usize..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            n
        } else {
            self.inner.read(buf)?
        };
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
/// The headers sent upstream: the client's, less hop-by-hop ones (and a HEAD request's
/// Content-Length, whose body is not sent on), plus the X-Forwarded set. Borrowed from the
/// request where possible: the forwarder copies each once, into its header map.
fn upstream_headers<'a>(request: &'a Request<'_>, client: IpAddr, peer_trusted: bool) -> Vec<(&'a str, Cow<'a, [u8]>)> {
    let named_by_connection =
        connection_options(request.headers().iter().filter(|h| h.is("connection")).map(|h| &h.value[..]));
    let is_head = request.head().is_head();
    let mut headers: Vec<(&str, Cow<[u8]>)> = request
        .headers()
        .iter()
        .filter(|h| !DROPPED_REQUEST_HEADERS.iter().any(|d| h.is(d)))
        .filter(|h| !named_by_connection.iter().any(|n| h.is(n)))
        .filter(|h| !(is_head && h.is("content-length")))
        .map(|h| (h.name.as_str(), Cow::Borrowed(&h.value[..])))
        .collect();
    let peer = canonical(request.peer().ip()).to_string();
    // A trusted proxy's chain is extended; an untrusted client's claims are dropped.
    let forwarded_for = match forwarded_for(request).filter(|_| peer_trusted) {
        Some(chain) if !chain.trim().is_empty() => format!("{}, {peer}", chain.trim()),
        _ => peer,
    };
    headers.push(("X-Forwarded-For", Cow::Owned(forwarded_for.into_bytes())));
    headers.push(("X-Real-IP", Cow::Owned(client.to_string().into_bytes())));
    let proto = request.header("x-forwarded-proto").filter(|_| peer_trusted).unwrap_or("http");
    headers.push(("X-Forwarded-Proto", Cow::Borrowed(proto.as_bytes())));
    let host = request.header("x-forwarded-host").filter(|_| peer_trusted).or(request.header("host"));
    if let Some(host) = host {
        headers.push(("X-Forwarded-Host", Cow::Borrowed(host.as_bytes())));
    }
    headers
}

/// Every `X-Forwarded-For` line, in order, as one list (RFC 9110 5.3): a proxy in front may add
/// its own line instead of extending the first.
fn forwarded_for(request: &Request<'_>) -> Option<String> {
    let lines: Vec<String> = request
        .headers()
        .iter()
        .filter(|h| h.is("x-forwarded-for"))
        .map(|h| String::from_utf8_lossy(&h.value).trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// The field names a `Connection` header lists as hop-by-hop, except fields that frame or
/// route the message, which a peer may not strip that way.
fn connection_options<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .flat_map(|v| String::from_utf8_lossy(v).split(',').map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|name| !name.is_empty() && !PROTECTED_HEADERS.contains(&name.as_str()))
        .collect()
}

/// Headers a `Connection` option cannot remove.
const PROTECTED_HEADERS: [&str; 4] = ["host", "content-length", "authorization", "content-type"];

fn hash_key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The request body as it will be sent: nothing, kept whole in memory (replayable), or a
/// stream that can be sent once.
enum UpstreamBody<'r> {
    None,
    Kept(Vec<u8>),
    Streamed(CountingBody<'r>),
}

impl<'r> UpstreamBody<'r> {
    /// Keeps bodies whose length is known to be small, or whose chunked form turns out small;
    /// streams the rest. A client error while reading is left in the body for the server.
    fn prepare(mut body: RequestBody<'r>, framing: BodyFraming, keep_limit: u64) -> UpstreamBody<'r> {
        let small = match framing {
            BodyFraming::None => return UpstreamBody::None,
            BodyFraming::Length(n) => n <= keep_limit,
            BodyFraming::Chunked => true,
        };
        if !small {
            return UpstreamBody::Streamed(CountingBody { inner: body, read: 0, prefix: Vec::new() });
        }
        let mut kept = Vec::new();
        match (&mut body).take(keep_limit + 1).read_to_end(&mut kept) {
            Ok(_) if !body.is_pending() => UpstreamBody::Kept(kept),
            // Larger than the limit (chunked) or failed: stream, starting with what was read.
            _ => UpstreamBody::Streamed(CountingBody { inner: body, read: 0, prefix: kept }),
        }
    }

    /// Whether a retry could send the body again.
    fn replayable(&self) -> bool {
        match self {
            UpstreamBody::None | UpstreamBody::Kept(_) => true,
            UpstreamBody::Streamed(body) => body.read == 0 && body.inner.error().is_none(),
        }
    }

    fn client_error(&self) -> bool {
        matches!(self, UpstreamBody::Streamed(body) if body.inner.error().is_some())
    }
}

fn forward<'r>(shared: &Shared, request: Request<'r>) -> Response<'r> {
    let started = Instant::now();
    let config = &shared.config;
    let peer = canonical(request.peer().ip());
    let peer_trusted = is_trusted(peer, &config.trusted_proxies);
    let client = client_ip(peer, forwarded_for(&request).as_deref(), &config.trusted_proxies);
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
    let prepared = shared.forwarder.prepare(&method, &target, headers.iter().map(|(n, v)| (*n, &v[..])));
    drop(headers);
    let mut prepared = match prepared {
        Ok(prepared) => prepared,
        Err(why) => return finish(shared, &method, &target, client, None, started, Response::text(400, why)),
    };
    let is_head = request.head().is_head();
    // A HEAD request's body (allowed, meaningless) is not sent on; the server drains it.
    let framing = if is_head { BodyFraming::None } else { request.head().framing };
    let mut body = UpstreamBody::prepare(request.into_body(), framing, config.retry_body_max_bytes);
    if let UpstreamBody::Kept(kept) = &body {
        // A kept chunked body goes upstream with its length; a kept sized body already has it.
        if framing == BodyFraming::Chunked {
            prepared.set_content_length(kept.len());
        }
    }
    shared.retry_budget.record_request();

    let key = hash_key(client);
    let membership = shared.table.snapshot();
    let mut tried: Vec<*const Backend> = Vec::with_capacity(config.max_tries);
    let mut tries = 0;
    let mut last_error: Option<ForwardError> = None;
    while tries < config.max_tries && !body.client_error() {
        let Some((backend, kind)) = membership.pick(&key, |b| !tried.contains(&(b as *const Backend))) else { break };
        tried.push(Arc::as_ptr(backend));
        // A half-open breaker lets only its trial requests through. Picks that ignored breakers
        // (the last usable ones, panic mode) took no slot, so they report nothing to the breaker.
        let admitted = kind == PickKind::Usable;
        if admitted && !backend.breaker().admit() {
            continue;
        }
        let breaker = admitted.then(|| backend.breaker());
        if tries > 0 && !shared.retry_budget.try_retry() {
            shared.stats.record_budget_denial();
            if let Some(b) = breaker {
                b.record_neutral();
            }
            log::warn!("{method} {target}: retry budget spent, not retrying");
            break;
        }
        shared.stats.record_try(tries > 0);
        tries += 1;
        let in_flight = backend.begin();
        let result = match &mut body {
            UpstreamBody::None => shared.forwarder.send(backend, &prepared, None),
            UpstreamBody::Kept(kept) => {
                let mut replay: &[u8] = kept;
                shared.forwarder.send(backend, &prepared, Some(&mut replay))
            }
            UpstreamBody::Streamed(stream) => shared.forwarder.send(backend, &prepared, Some(stream)),
        };
        match result {
            Ok(upstream) => {
                let status = upstream.status().as_u16();
                let recovered = match breaker {
                    Some(b) if config.breaker_on_5xx && status >= 500 => {
                        b.record_failure();
                        false
                    }
                    Some(b) => b.record_success(),
                    None => false,
                };
                if recovered {
                    log::info!("backend {}: circuit closed again", backend.id);
                    backend.slow_start().begin();
                }
                let response = relay(upstream, in_flight, is_head);
                return finish(shared, &method, &target, client, Some(backend), started, response);
            }
            Err(error) => {
                if body.client_error() {
                    // The client broke its body: not the backend's fault, and nothing to retry.
                    if let Some(b) = breaker {
                        b.record_neutral();
                    }
                    break;
                }
                backend.record_failure();
                if let Some(b) = breaker {
                    b.record_failure();
                }
                shared.stats.record_try_failure(error.reason());
                log::warn!("{method} {target} to {} ({}): {error}", backend.id, backend.addr);
                // Another backend may get the request only if this one certainly did not act
                // on it, or the method allows repeating; and the body can still be sent.
                let retry = body.replayable() && (error.never_sent() || is_idempotent(&method));
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
fn relay<'r>(upstream: ureq::http::Response<ureq::Body>, in_flight: InFlight, is_head: bool) -> Response<'r> {
    let (parts, body) = upstream.into_parts();
    let mut response = Response::new(parts.status.as_u16());
    let named_by_connection = connection_options(parts.headers.get_all("connection").iter().map(|v| v.as_bytes()));
    for (name, value) in &parts.headers {
        let name_str = name.as_str();
        if !DROPPED_RESPONSE_HEADERS.contains(&name_str)
            && name_str != "content-length"
            && !named_by_connection.iter().any(|n| n == name_str)
        {
            response = response.with_header(name.as_str(), value.as_bytes());
        }
    }
    let declared =
        parts.headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = parts.headers.get("transfer-encoding").is_some();
    let status = parts.status.as_u16();
    if is_head || status == 204 || status == 304 || (100..200).contains(&status) {
        // No body follows: read its (empty) end now so ureq pools the connection, and keep the
        // declared length for a HEAD answer.
        let _ = body.into_reader().read(&mut [0u8; 1]);
        drop(in_flight);
        return response.with_stream(io::empty(), declared);
    }
    let length = if chunked { None } else { declared };
    response.with_stream(Streamed { body: body.into_reader(), _in_flight: in_flight }, length)
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
