//! The traffic policies of [`crate::traffic`] in the data path: the rate limits decide before
//! anything else, the sticky cookie is read from the request, steers the first pick and is set
//! on the answer. The policies themselves (buckets, tokens, cookie syntax) live in `traffic`;
//! this file only carries their answers to and from requests and responses.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use crate::pools::Pool;
use crate::server::Response;
use crate::traffic::{Decision, StickyCookie, StickyIndex};
use crate::upstream::{Backend, Membership};

use super::ProxyError;

/// Refuses a request its rate-limit decision rejected; the request then reaches no backend.
pub(super) fn admit(quota: &Decision) -> Result<(), ProxyError> {
    if quota.allowed {
        Ok(())
    } else {
        Err(ProxyError::RateLimited { limit: quota.limit, retry_after_secs: quota.retry_after_secs() })
    }
}

/// Adds `X-RateLimit-Limit` and `X-RateLimit-Remaining` to the answer of an allowed request
/// when a limit is on, so a client can pace itself. Not when the backend sent either header:
/// its own limits (an API's) pass through unmixed with ours. A rejected request's `429` has
/// them already ([`ProxyError::response`]).
pub(super) fn with_quota(response: Response, quota: &Decision) -> Response {
    let backend_has_its_own =
        || response.headers.iter().any(|h| h.is("x-ratelimit-limit") || h.is("x-ratelimit-remaining"));
    if !quota.allowed || *quota == Decision::UNLIMITED || backend_has_its_own() {
        return response;
    }
    response
        .with_header("X-RateLimit-Limit", quota.limit.to_string())
        .with_header("X-RateLimit-Remaining", quota.remaining.to_string())
}

/// Takes the sticky cookie out of the headers going upstream (the backend never sees it, as
/// HAProxy's `insert indirect`) and returns its value, when sticky sessions are on.
pub(super) fn take_sticky_cookie(pool: &Pool, headers: &mut Vec<(&str, Cow<'_, [u8]>)>) -> Option<String> {
    let cookie = pool.sticky.as_ref()?;
    let is_cookie = |name: &str| name.eq_ignore_ascii_case("cookie");
    let values = headers.iter().filter(|(name, _)| is_cookie(name)).map(|(_, value)| &value[..]);
    let token = cookie.find_cookie(values).map(str::to_string);
    headers.retain_mut(|(name, value)| {
        if !is_cookie(name) {
            return true;
        }
        match cookie.without_cookie(value) {
            None => true,
            Some(rest) if rest.is_empty() => false,
            Some(rest) => {
                *value = Cow::Owned(rest);
                true
            }
        }
    });
    token
}

/// Where a request's sticky session sends its next try.
pub(super) enum SessionPick<'m> {
    /// To the session's backend.
    Go(&'m Arc<Backend>),
    /// The session's backend is at its connection cap: wait for a slot.
    Wait,
    /// Wherever the algorithm says.
    Balance,
}

/// One request's sticky session over one membership snapshot: the backend its cookie names
/// (if any, and if it still exists), and what to set on the answer.
pub(super) struct Session<'a> {
    cookie: &'a StickyCookie,
    index: &'a StickyIndex,
    /// The index in the membership's backends that the request's cookie names.
    named: Option<usize>,
}

impl<'a> Session<'a> {
    /// The session of a request that sent `token` (or none), when sticky sessions are on.
    pub(super) fn new(pool: &'a Pool, membership: &'a Membership, token: Option<&str>) -> Option<Session<'a>> {
        let cookie = pool.sticky.as_ref()?;
        let index = membership.sticky_index(cookie);
        Some(Session { cookie, index, named: token.and_then(|t| index.resolve(t)) })
    }

    /// Where the request's first try goes: the backend its cookie names while that backend is
    /// usable (enabled, healthy, breaker not open; slow start is not asked: a session stays
    /// where it is), waiting for one of its connection slots rather than leaving it, until
    /// `queue_deadline`. Retries, and a session whose backend is gone, unusable or still full at
    /// the deadline, are balanced as usual.
    pub(super) fn pick<'m>(
        &self,
        membership: &'m Membership,
        first_try: bool,
        queue_deadline: Instant,
    ) -> SessionPick<'m> {
        let named = self.named.filter(|_| first_try).and_then(|i| membership.backends.get(i));
        match named.filter(|b| b.is_usable()) {
            Some(backend) if backend.has_room() => SessionPick::Go(backend),
            Some(_) if Instant::now() < queue_deadline => SessionPick::Wait,
            _ => SessionPick::Balance,
        }
    }

    /// The answer of `backend`: with a `Set-Cookie` naming it unless the request's cookie
    /// already did (a valid cookie is not sent again). Appended after the backend's own
    /// `Set-Cookie` headers, which pass untouched.
    pub(super) fn stamp(&self, membership: &Membership, backend: &Backend, response: Response) -> Response {
        let named = self.named.and_then(|i| membership.backends.get(i));
        if named.is_some_and(|b| std::ptr::eq(Arc::as_ptr(b), backend)) {
            // The common case, without looking for the backend's position.
            return response;
        }
        let Some(position) = membership.position(backend) else { return response };
        match self.index.token_for(position) {
            Some(token) => response.with_header("Set-Cookie", self.cookie.set_cookie(token)),
            None => response,
        }
    }
}
