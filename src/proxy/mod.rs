//! The data path of one proxied request, top to bottom:
//!
//! 1. **who**: the client address (the peer, or what a trusted proxy says), and whether the
//!    rate limits let it through (`429` if not);
//! 2. **prepare**: the request as it goes upstream (origin-form target, headers, the body the
//!    front end buffered);
//! 3. **try backends**: pick (a sticky cookie's backend first) → admit (breaker, retry budget)
//!    → send → settle the outcome, and on a failure that allows it, the next backend;
//! 4. **relay**: the backend's answer streamed back (with the sticky cookie when it changed), or
//!    for an upgrade request (a WebSocket) a `101` and a tunnel the front end relays ([`upgrade`]);
//! 5. **account**: statistics now, the access-log line when the last byte has left.
//!
//! With `--debug`, [`explain`] says why each request went where it went.
//!
//! Statuses of our own answers come from [`ProxyError::status`].

mod body;
mod error;
mod explain;
mod headers;
mod leg;
mod policy;
mod relay;
mod routed;
mod upgrade;

pub use error::ProxyError;
pub use leg::Leg;
pub use routed::serve;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client_ip::{canonical, is_trusted, request_client};
use crate::config::UpstreamReuse;
use crate::health::{CircuitBreaker, Ticket};
use crate::ops::PendingAccess;
use crate::pools::Pool;
use crate::server::{BodyFraming, Request, RequestBody, Response};
use crate::state::Shared;
use crate::traffic::Decision;
use crate::upstream::{Backend, ForwardError, Forwarder, PickKind, Prepared};

use body::{TryBody, UpstreamBody};
use headers::{upstream_headers, ForwardedText, Passing};
use policy::{Session, SessionPick};
use relay::{relay, Answer};

/// Who sent a request.
struct Origin {
    /// The address that decides ip_hash and is logged: the peer, or what a trusted proxy says.
    client: IpAddr,
    /// Whether the TCP peer is a trusted proxy (its X-Forwarded-* headers are believed).
    peer_trusted: bool,
}

/// A request ready to be sent to any backend, as many times as its tries need.
struct Outbound<'a> {
    method: String,
    target: String,
    prepared: Prepared,
    body: UpstreamBody,
    is_head: bool,
    hash_key: HashKey,
    /// The sticky cookie's value, when sticky sessions are on and the client sent one.
    sticky_token: Option<String>,
    request_id: &'a str,
    /// The `Upgrade` value of an upgrade request: sent on a connection of its own.
    upgrade: Option<Vec<u8>>,
    /// Sent on a backend connection no other client's request used (`upstream_reuse` safe,
    /// the first request of its client connection).
    own_connection: bool,
}

/// Proxies one request to the `default` pool and answers it: the backend's response, or ours
/// when none could give one.
pub fn forward(shared: &Shared, request: Request) -> Response {
    forward_to(shared, shared.pools.default_pool(), request)
}

/// Proxies one request to `pool` (one of `shared.pools`) and answers it: what a route that
/// chose the pool calls. The balancer-wide steps (client, rate limits, accounting) read
/// `shared`; the pick, the tries and their limits read the pool.
pub fn forward_to(shared: &Shared, pool: &Pool, request: Request) -> Response {
    forward_leg(shared, pool, request, Leg::default())
}

/// [`forward_to`] with a route's changes to the request and its answer.
pub fn forward_leg(shared: &Shared, pool: &Pool, request: Request, leg: Leg<'_>) -> Response {
    let origin = who(shared, &request);
    let mut access = PendingAccess::new(&request, origin.client, shared.ops.access_log.is_some());
    access.served_by(leg.route_name(), Some(&pool.name));
    let quota = shared.rate_limiter.check(origin.client, access.started());
    // A route's own limit after the balancer's; the answer shows the one that decided.
    let quota = match leg.limiter() {
        Some(limiter) if quota.allowed => match limiter.check(origin.client, access.started()) {
            route if !route.allowed || quota == Decision::UNLIMITED => route,
            _ => quota,
        },
        _ => quota,
    };
    // Only a rewrite maps a backend's Location back, against the host the client asked for.
    let client_host = leg.rewrites().then(|| routed::request_host(&request).map(str::to_string)).flatten();
    let outcome = policy::admit(&quota).and_then(|()| prepare(shared, pool, request, &origin, &access, leg)).and_then(
        |mut outbound| {
            let (forwarder, max_tries) = (leg.forwarder(pool), leg.max_tries(pool.config.pool.max_tries));
            try_backends(shared, pool, forwarder, &mut outbound, max_tries, access.started())
        },
    );
    let (response, upstream) = match outcome {
        Ok((mut response, backend, upstream_time)) => {
            leg.edit_response(&mut response, client_host.as_deref());
            (response, Some((backend.addr, upstream_time)))
        }
        Err(error) => (error.response(), None),
    };
    let response = policy::with_quota(response, &quota);
    account(shared, pool, access.started(), upstream.is_some(), &response, leg);
    access.attach(shared.ops.access_log.as_ref(), response, upstream)
}

/// Step 1: the client's address, believing X-Forwarded-For only from trusted proxies.
fn who(shared: &Shared, request: &Request) -> Origin {
    let trusted = &shared.config.listener.trusted_proxies;
    let peer = canonical(request.peer().ip());
    Origin { client: request_client(peer, request.headers(), trusted), peer_trusted: is_trusted(peer, trusted) }
}

/// Step 2: the request as it goes upstream; refused here when it cannot be expressed there.
fn prepare<'a>(
    shared: &Shared,
    pool: &Pool,
    request: Request,
    origin: &Origin,
    access: &'a PendingAccess,
    leg: Leg<'_>,
) -> Result<Outbound<'a>, ProxyError> {
    if request.method() == "CONNECT" {
        // A tunnel to wherever the client names: never (lb-sync is not a forward proxy).
        return Err(ProxyError::UnsupportedTarget);
    }
    let target = leg.upstream_target(origin_form(request.target()).ok_or(ProxyError::UnsupportedTarget)?);
    // The head's own target is moved into the request below when it goes up unchanged.
    let rewritten = match target {
        Cow::Borrowed(same) if std::ptr::eq(same, request.target()) => None,
        other => Some(other.into_owned()),
    };
    let upgrade = upgrade::requested(&request, &shared.config.listener.upgrade_protocols);
    let passing =
        Passing { peer_trusted: origin.peer_trusted, underscores: shared.config.listener.underscores_in_headers };
    let mut forwarded = ForwardedText::new();
    let mut headers = upstream_headers(&request, origin.client, passing, &mut forwarded);
    if let Some(value) = &upgrade {
        headers.extend(upgrade::upstream_headers(&request, value));
    }
    leg.edit_request(&mut headers);
    let sticky_token = policy::take_sticky_cookie(pool, &mut headers);
    if !access.id_came_in {
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case("x-request-id"));
        headers.push(("X-Request-Id", access.request_id().as_bytes().into()));
    }
    let mut prepared = leg
        .forwarder(pool)
        .prepare(
            request.method(),
            rewritten.as_deref().unwrap_or(request.target()),
            headers.iter().map(|(n, v)| (*n, &v[..])),
        )
        .map_err(ProxyError::Unforwardable)?;
    drop(headers);
    let is_head = request.head().is_head();
    let own_connection = pool.config.pool.upstream_reuse == UpstreamReuse::Safe && request.is_first_on_connection();
    // A HEAD request's body (allowed, meaningless) is not sent on.
    let send_body = !is_head && request.head().framing != BodyFraming::None;
    let (head, mut request_body) = request.into_parts();
    let (method, target) = (head.method, rewritten.unwrap_or(head.target));
    // A streamed body (request buffering off) waits for its client; meanwhile the backend may
    // answer without reading it (a 413), and that answer is what the client must get.
    request_body.watch_for_early_answer(crate::upstream::early_answer_arrived);
    let body = UpstreamBody::new(request_body, send_body, pool.config.pool.retry_body_max_bytes);
    if let Some(length) = body.len() {
        // Buffered whole: a chunked upload goes upstream with its length.
        prepared.set_content_length(length);
    }
    Ok(Outbound {
        method,
        target,
        prepared,
        body,
        is_head,
        hash_key: HashKey::of(origin.client),
        sticky_token,
        request_id: access.request_id(),
        upgrade,
        own_connection,
    })
}

/// Step 3: tries backends until one answers, a failure forbids another try, or tries run out.
/// The wait for a backend's connection slot is counted from `started` (when the request was
/// taken).
fn try_backends(
    shared: &Shared,
    pool: &Pool,
    forwarder: &Forwarder,
    out: &mut Outbound<'_>,
    max_tries: usize,
    started: Instant,
) -> Result<(Response, Arc<Backend>, Duration), ProxyError> {
    pool.retry_budget.record_request();
    let membership = pool.table.snapshot();
    let queue_deadline = started + pool.config.pool.backend_queue_timeout;
    let session = Session::new(pool, &membership, out.sticky_token.as_deref());
    let mut tried = Tried::default();
    let mut tries = 0;
    let mut last_error = None;
    while tries < max_tries {
        let untried = |b: &Backend| !tried.as_slice().contains(&(b as *const Backend));
        let session_pick =
            session.as_ref().map_or(SessionPick::Balance, |s| s.pick(&membership, tried.is_empty(), queue_deadline));
        // The pick and the backend's connection slot in one step (a backend at its cap is
        // passed over), so that concurrent picks see each other's choices.
        let picked = match session_pick {
            SessionPick::Go(backend) => backend.try_begin().map(|in_flight| (backend, in_flight, PickKind::Usable)),
            SessionPick::Wait => None,
            SessionPick::Balance => membership.pick_and_begin(&out.hash_key, untried),
        };
        let Some((backend, mut in_flight, kind)) = picked else {
            // Candidates left (the session's backend among them) but all at their connection
            // cap: wait in the queue for a slot.
            if membership.pick(&out.hash_key, untried).is_none() {
                explain::nothing_left(pool, &membership, out, tried.as_slice());
                break;
            }
            if Instant::now() >= queue_deadline {
                return Err(last_error.map_or(ProxyError::QueueTimeout, ProxyError::BackendFailed));
            }
            pool.table.slots().wait(queue_deadline);
            continue;
        };
        explain::picked(pool, &membership, out, backend, kind, tried.as_slice());
        if out.upgrade.is_some() && !upgrade::can_tunnel_to(backend) {
            // Not sent, so not the backend's failure: its counters and breaker hear nothing.
            return Err(ProxyError::UpgradeUnsupported);
        }
        tried.push(Arc::as_ptr(backend));
        let breaker = match admit(shared, pool, backend, kind, tries, out) {
            Admission::Go(breaker) => breaker,
            Admission::Skip => continue,
            Admission::Stop => break,
        };
        // Before the try counts: a body that cannot be read from its start is not the backend's
        // failure (it was never sent).
        let body = match out.body.for_try() {
            Ok(body) => body,
            Err(e) => {
                release(breaker);
                let unreadable = body_unreadable(shared, &e.to_string());
                // After a failed try, the client hears of that failure.
                return Err(last_error.map_or(unreadable, ProxyError::BackendFailed));
            }
        };
        shared.stats.record_try(tries > 0);
        pool.stats.record_try(tries > 0);
        backend.record_request();
        tries += 1;
        let sent = Instant::now();
        match send_once(forwarder, backend, &out.prepared, out.upgrade.is_some(), out.own_connection, body) {
            Ok(upstream) => {
                let answered = Instant::now();
                let upstream_time = answered.saturating_duration_since(sent);
                in_flight.answered();
                let status = upstream.status();
                settle_answer(pool, backend, breaker, status, upstream_time, answered);
                let ticket = breaker.map(|(_, ticket)| ticket);
                let mut response = relay(shared, upstream, in_flight, ticket, out.is_head);
                if let Some(session) = &session {
                    response = session.stamp(&membership, backend, response);
                }
                return Ok((response, Arc::clone(backend), upstream_time));
            }
            // Reading the request body failed, whatever ureq made of it (an I/O error, as for a
            // reset): the try failed on the request's side. Neither case is the backend's
            // failure: no failure count, no breaker failure, no probe, no retry.
            Err(_) if out.body.cut_short() => {
                // The client broke its streamed body off: counted apart (HAProxy's `cli_abrt`),
                // so a backend's requests stay its failures, answers and client aborts; no
                // warning.
                backend.record_client_abort();
                release(breaker);
                return Err(ProxyError::ClientBodyCutShort);
            }
            Err(_) if out.body.read_error().is_some() => {
                // Our temp file failed while it was being sent (a disk error): counted with the
                // client aborts, as a try that ended on the request's side, so that the
                // backend's requests still add up (`/lb/backends`); the log says what it was.
                backend.record_client_abort();
                release(breaker);
                return Err(body_unreadable(shared, out.body.read_error().unwrap_or_default()));
            }
            Err(error) => {
                let retry = settle_failure(shared, pool, backend, breaker, &error, out);
                last_error = Some(error);
                if !retry {
                    break;
                }
            }
        }
    }
    Err(match last_error {
        Some(error) => ProxyError::BackendFailed(error),
        None => ProxyError::NoBackend,
    })
}

/// A breaker that admitted a try, and the ticket it gave: the try's outcome is reported with it.
type Admitted<'a> = Option<(&'a CircuitBreaker, Ticket)>;

/// Gives back an admitted try's ticket as neither success nor failure: it ended on the request's
/// side (a half-open breaker's trial slot is free again).
fn release(breaker: Admitted<'_>) {
    if let Some((b, ticket)) = breaker {
        b.record_neutral(ticket);
    }
}

/// A kept request body could not be read (a disk error): logged, answered `500`.
fn body_unreadable(shared: &Shared, why: &str) -> ProxyError {
    shared.ops.warnings.warn("request-body-unreadable", format_args!("cannot read a request body back: {why}"));
    ProxyError::BodyUnreadable
}

/// Whether a picked backend gets the try.
enum Admission<'a> {
    /// Send it; the breaker (when the pick went through one) hears of the outcome.
    Go(Admitted<'a>),
    /// The breaker is half-open and its trial slots are taken: pick another.
    Skip,
    /// A retry the budget refuses: stop trying.
    Stop,
}

/// Asks the backend's breaker (a half-open one lets only its trials through) and, for a
/// retry, the retry budget. Picks that ignored breakers (the last usable ones, panic mode) took
/// no trial slot, so they report nothing to the breaker.
fn admit<'a>(
    shared: &Shared,
    pool: &Pool,
    backend: &'a Backend,
    kind: PickKind,
    tries: usize,
    out: &Outbound<'_>,
) -> Admission<'a> {
    let breaker = match kind {
        PickKind::Usable => match backend.breaker().admit() {
            Some(ticket) => Some((backend.breaker(), ticket)),
            None => return Admission::Skip,
        },
        PickKind::BreakersIgnored | PickKind::Panic => None,
    };
    if tries > 0 && !pool.retry_budget.try_retry() {
        shared.stats.record_budget_denial();
        pool.stats.record_budget_denial();
        release(breaker);
        shared.ops.warnings.warn("retry-budget", format_args!("retry budget spent: a failed request was not retried"));
        explain::budget_spent(out);
        return Admission::Stop;
    }
    Admission::Go(breaker)
}

/// Sends the request once to `backend`: on one of its pooled connections, or on a connection of its
/// own for an upgrade request.
fn send_once(
    forwarder: &Forwarder,
    backend: &Backend,
    prepared: &Prepared,
    upgrade: bool,
    own_connection: bool,
    mut body: Option<TryBody<'_, RequestBody>>,
) -> Result<Answer, ForwardError> {
    let body = body.as_mut().map(|b| b as &mut dyn std::io::Read);
    if upgrade {
        return forwarder.send_own(backend, prepared, body).map(Answer::Own);
    }
    forwarder.send(backend, prepared, body, own_connection).map(Answer::Pooled)
}

/// An answer came: the backend counts it; the breaker hears a success (or a failure, for a 5xx
/// when so configured); a breaker that closes again is a recovery ([`Backend::recovered`]). A
/// pick that ignored the breaker still has its outcome counted there, so every try is.
fn settle_answer(pool: &Pool, backend: &Backend, breaker: Admitted<'_>, status: u16, took: Duration, now: Instant) {
    backend.record_answer_at(status, took, now);
    let failed = pool.config.breaker.on_5xx && status >= 500;
    let Some((breaker, ticket)) = breaker else {
        backend.breaker().count_only(failed);
        return;
    };
    if failed {
        breaker.record_failure(ticket);
    } else if breaker.record_success_at(ticket, now) {
        log::info!("backend {}: circuit closed again", backend.id);
        backend.recovered();
    }
}

/// A try failed: counts it where it belongs; returns whether another backend may get the request.
fn settle_failure(
    shared: &Shared,
    pool: &Pool,
    backend: &Backend,
    breaker: Admitted<'_>,
    error: &ForwardError,
    out: &Outbound<'_>,
) -> bool {
    backend.record_failure();
    match breaker {
        Some((b, ticket)) => {
            b.record_failure(ticket);
        }
        None => backend.breaker().count_only(true),
    }
    if matches!(error, ForwardError::NotSent(_) | ForwardError::ConnectTimeout) {
        // It may have died: its health checks look now, not at their next interval.
        pool.table.probe_requests().ask(backend);
    }
    let reason = error.reason();
    shared.stats.record_try_failure(reason);
    pool.stats.record_try_failure(reason);
    shared.ops.warnings.warn(
        &format!("try:{}:{}", backend.id, reason.name()),
        format_args!("backend {} ({}): {error}", backend.id, backend.addr),
    );
    // Another backend may get the request if this one certainly did not act on it (the body,
    // buffered whole, was not sent either), or if the method allows repeating and the body is
    // small enough to be sent again. Never after a response timeout: the backend may still be
    // working on it, and a slow request sent to every backend in turn would multiply the load
    // exactly when the fleet is slow (nginx's proxy_next_upstream leaves timeouts out of
    // non-idempotent retries for the same reason; we leave them out of all).
    let retry = is_retryable(error, &out.method, out.body.replayable());
    explain::failed(out, backend, error, retry);
    retry
}

/// Step 5: counts the answer (by class; a backend's or our own) and its time to the response
/// head, for the balancer, the pool and the route. The access-log line is written when the response is finished (see [`forward`]).
fn account(shared: &Shared, pool: &Pool, started: Instant, from_backend: bool, response: &Response, leg: Leg<'_>) {
    let took = started.elapsed();
    shared.ops.latency.record(took);
    pool.latency.record(took);
    leg.account(response.status, from_backend, took);
    for stats in [&shared.stats, &pool.stats] {
        if from_backend {
            stats.record(response.status);
        } else {
            stats.record_local(response.status);
        }
    }
}

/// Whether a failed try may go to another backend: never sent (any method), or reset or bad
/// before an answer for an idempotent method with a resendable body; never a response timeout.
fn is_retryable(error: &ForwardError, method: &str, body_replayable: bool) -> bool {
    match error {
        ForwardError::NotSent(_) | ForwardError::ConnectTimeout | ForwardError::Tls(_) => true,
        ForwardError::Timeout => false,
        ForwardError::NoResponse(_) | ForwardError::BadResponse(_) => is_idempotent(method) && body_replayable,
    }
}

/// Methods that may be sent twice without a different effect (RFC 9110 9.2.2).
fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// The path and query to send upstream: origin form, or the path of an absolute-form target.
/// An absolute form is `http` or `https` (any case) with a host (RFC 9110 4.2.1) and no
/// userinfo (4.2.4: a recipient should treat it as an error): anything else, `*`, CONNECT's
/// authority form, is refused (`400`), never forwarded.
///
/// ```
/// use lb_sync::proxy::origin_form;
/// assert_eq!(origin_form("http://example.com/lb/stats?x=1"), Some("/lb/stats?x=1"));
/// assert_eq!(origin_form("HTTP://example.com"), Some("/"));
/// assert_eq!(origin_form("*"), None);
/// assert_eq!(origin_form("http://"), None);
/// assert_eq!(origin_form("http:///x"), None);
/// assert_eq!(origin_form("http://user@example.com/"), None);
/// assert_eq!(origin_form("ftp://example.com/"), None);
/// assert_eq!(origin_form("example.com:443"), None);
/// ```
pub fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    absolute_form(target).map(|(_, path)| path)
}

/// The authority of an absolute-form target, which replaces the client's `Host` upstream
/// (RFC 9112 3.2.2: a server receiving an absolute-form target ignores `Host`).
///
/// ```
/// use lb_sync::proxy::target_authority;
/// assert_eq!(target_authority("http://api.example:8080/p?q"), Some("api.example:8080"));
/// assert_eq!(target_authority("/p"), None);
/// ```
pub fn target_authority(target: &str) -> Option<&str> {
    absolute_form(target).map(|(authority, _)| authority)
}

/// An absolute-form target split into its authority and its path (with the query).
fn absolute_form(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.starts_with(':') || authority.contains('@') {
        return None;
    }
    match rest.as_bytes().get(end) {
        None => Some((authority, "/")),
        Some(b'/') => Some((authority, &rest[end..])),
        // A query or fragment straight after the authority: not a target we rewrite.
        Some(_) => None,
    }
}

/// Tries kept in place (a request's tries are few: max_tries and its backends bound them).
const TRIES_IN_PLACE: usize = 8;

/// The backends a request tried, in order: in place, on the heap past [`TRIES_IN_PLACE`].
struct Tried {
    in_place: [*const Backend; TRIES_IN_PLACE],
    len: usize,
    more: Vec<*const Backend>,
}

impl Default for Tried {
    fn default() -> Tried {
        Tried { in_place: [std::ptr::null(); TRIES_IN_PLACE], len: 0, more: Vec::new() }
    }
}

impl Tried {
    fn push(&mut self, backend: *const Backend) {
        if self.more.is_empty() && self.len < TRIES_IN_PLACE {
            self.in_place[self.len] = backend;
            self.len += 1;
        } else {
            if self.more.is_empty() {
                self.more.extend_from_slice(&self.in_place[..self.len]);
            }
            self.more.push(backend);
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn as_slice(&self) -> &[*const Backend] {
        if self.more.is_empty() {
            &self.in_place[..self.len]
        } else {
            &self.more
        }
    }
}

/// ip_hash's key: the client address's bytes (4 or 16), kept in place.
struct HashKey {
    octets: [u8; 16],
    len: usize,
}

impl HashKey {
    fn of(ip: IpAddr) -> HashKey {
        match ip {
            IpAddr::V4(v4) => {
                let mut octets = [0; 16];
                octets[..4].copy_from_slice(&v4.octets());
                HashKey { octets, len: 4 }
            }
            IpAddr::V6(v6) => HashKey { octets: v6.octets(), len: 16 },
        }
    }
}

impl std::ops::Deref for HashKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.octets[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_keeps_every_backend_in_order_past_the_ones_in_place() {
        let backends: Vec<u64> = (0..TRIES_IN_PLACE as u64 + 3).collect();
        let pointers: Vec<*const Backend> = backends.iter().map(|b| (b as *const u64).cast::<Backend>()).collect();
        let mut tried = Tried::default();
        assert!(tried.is_empty() && tried.as_slice().is_empty());
        for (i, &pointer) in pointers.iter().enumerate() {
            tried.push(pointer);
            assert_eq!(tried.as_slice(), &pointers[..=i]);
        }
        assert!(!tried.is_empty());
    }

    #[test]
    fn the_hash_key_is_the_address_bytes() {
        assert_eq!(&*HashKey::of("10.1.2.3".parse().unwrap()), &[10, 1, 2, 3]);
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(&*HashKey::of(IpAddr::V6(v6)), &v6.octets());
    }
}
