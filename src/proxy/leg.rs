//! What a route changes in a request it sends to a pool, and in the answer coming back: the
//! path upstream (`strip_prefix`, `add_prefix`, `replace_prefix`) with the backend's
//! `Location` mapped back the other way (nginx's `proxy_redirect default`), header edits both
//! ways, `max_tries`, and the route's own rate limiter and HTTP clients (timeouts); and where
//! its answer is counted (the route's counters, or those of requests no route took).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::pools::Pool;
use crate::route_policy::RoutePolicy;
use crate::route_stats::RouteStats;
use crate::routing::{HeaderEdits, Rewrite, Route};
use crate::server::{field, Header, Response};
use crate::traffic::RateLimiter;
use crate::upstream::Forwarder;

/// A route's changes to one proxied request; [`Leg::default`] changes nothing and counts
/// nowhere (no route table).
#[derive(Clone, Copy, Default)]
pub struct Leg<'a> {
    rewrite: Option<&'a Rewrite>,
    request_headers: Option<&'a HeaderEdits>,
    response_headers: Option<&'a HeaderEdits>,
    max_tries: Option<usize>,
    /// Where the answer is counted: the route's counters, or the unmatched ones.
    counters: Option<&'a RouteStats>,
    /// Whether a route took the request (its name is logged).
    routed: bool,
    /// The route's own rate limiter and HTTP clients, when it sets them.
    policy: Option<&'a RoutePolicy>,
}

impl<'a> Leg<'a> {
    /// What `route` changes; its answer is counted in `counters` (the route's).
    pub fn of(route: &'a Route, counters: &'a RouteStats, policy: Option<&'a RoutePolicy>) -> Leg<'a> {
        Leg {
            rewrite: route.rewrite.as_ref(),
            request_headers: Some(&route.request_headers),
            response_headers: Some(&route.response_headers),
            max_tries: route.overrides.max_tries,
            counters: Some(counters),
            routed: true,
            policy,
        }
    }

    /// Whether the route rewrites the path (and so maps a backend's `Location` back).
    pub(super) fn rewrites(&self) -> bool {
        self.rewrite.is_some()
    }

    /// The route's own rate limiter, when it sets a rate.
    pub(super) fn limiter(&self) -> Option<&'a RateLimiter> {
        self.policy.and_then(RoutePolicy::limiter)
    }

    /// The HTTP client for `pool`: the route's own when it sets a timeout, else the pool's.
    pub(super) fn forwarder(&self, pool: &'a Pool) -> &'a Forwarder {
        match self.policy {
            Some(policy) => policy.forwarder(pool),
            None => &pool.forwarder,
        }
    }

    /// A request no route took: changed in nothing, counted in `counters` (the unmatched ones).
    pub fn unmatched(counters: &'a RouteStats) -> Leg<'a> {
        Leg { counters: Some(counters), ..Leg::default() }
    }

    /// The name of the route that took the request, if one did.
    pub(super) fn route_name(&self) -> Option<&'a Arc<str>> {
        self.counters.filter(|_| self.routed).map(|c| &c.name)
    }

    /// Counts the answer for the route (nothing without a route table).
    pub(super) fn account(&self, status: u16, from_backend: bool, took: Duration) {
        if let Some(counters) = self.counters {
            counters.record(status, from_backend, took);
        }
    }

    /// The route's `max_tries`, else the pool's.
    pub(super) fn max_tries(&self, pool_max_tries: usize) -> usize {
        self.max_tries.unwrap_or(pool_max_tries)
    }

    /// The origin-form target sent upstream: the path rewritten, the query as it came.
    pub(super) fn upstream_target<'t>(&self, target: &'t str) -> Cow<'t, str> {
        let Some(rewrite) = self.rewrite else { return Cow::Borrowed(target) };
        let (path, query) = target.split_at(target.find('?').unwrap_or(target.len()));
        Cow::Owned(format!("{}{query}", rewrite.apply(path)))
    }

    /// Applies `request_headers` to the fields going upstream. A field removed or set goes in
    /// its underscore spellings too (passed on under `underscores_in_headers`): a CGI/WSGI
    /// backend would read `X_Route` as the `X-Route` the route set.
    pub(super) fn edit_request(&self, headers: &mut Vec<(&'a str, Cow<'a, [u8]>)>) {
        let Some(edits) = self.request_headers else { return };
        headers.retain(|(name, _)| !edits.remove.iter().any(|removed| field::same_for_cgi(name, removed)));
        for (name, value) in &edits.set {
            headers.retain(|(n, _)| !field::same_for_cgi(n, name));
            headers.push((name.as_str(), Cow::Borrowed(value.as_bytes())));
        }
        for (name, value) in &edits.add {
            headers.push((name.as_str(), Cow::Borrowed(value.as_bytes())));
        }
    }

    /// Maps the backend's `Location` back through the rewrite, then applies
    /// `response_headers`. `client_host` is the host the client asked for: an absolute
    /// `Location` on it (or relative to it) is mapped, one on any other host is left alone.
    pub(super) fn edit_response(&self, response: &mut Response, client_host: Option<&str>) {
        if let Some(rewrite) = self.rewrite {
            for header in response.headers.iter_mut().filter(|h| h.is("location")) {
                if let Some(mapped) = map_location(rewrite, &header.value, client_host) {
                    header.value = mapped.into_bytes();
                }
            }
        }
        let Some(edits) = self.response_headers else { return };
        response.headers.retain(|h| !edits.removes(&h.name));
        for (name, value) in &edits.set {
            response.headers.retain(|h| !h.is(name));
            response.headers.push(Header::new(name.clone(), value.as_bytes().to_vec()));
        }
        for (name, value) in &edits.add {
            response.headers.push(Header::new(name.clone(), value.as_bytes().to_vec()));
        }
    }
}

/// `Location` as the client must read it: its path taken back through the rewrite when it is
/// a path (`/x`) or an absolute URL on the client's host (`http://host/x`); `None` to leave it.
fn map_location(rewrite: &Rewrite, location: &[u8], client_host: Option<&str>) -> Option<String> {
    let location = std::str::from_utf8(location).ok()?;
    let path_at = if location.starts_with('/') && !location.starts_with("//") {
        0
    } else {
        let (scheme, rest) = location.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let host = crate::routing::canonical_host(&rest[..authority_end]);
        if client_host.map(crate::routing::canonical_host) != Some(host) {
            return None;
        }
        scheme.len() + 3 + authority_end
    };
    let (before, rest) = location.split_at(path_at);
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (path, after) = rest.split_at(path_end);
    let path = if path.is_empty() { "/" } else { path };
    Some(format!("{before}{}{after}", rewrite.reverse(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip() -> Rewrite {
        Rewrite::Strip("/api".into())
    }

    #[test]
    fn the_upstream_target_rewrites_the_path_and_keeps_the_query() {
        let leg = Leg { rewrite: Some(&Rewrite::Strip("/api".into())), ..Leg::default() };
        assert_eq!(leg.upstream_target("/api/users?id=1"), "/users?id=1");
        assert_eq!(leg.upstream_target("/api"), "/");
        assert_eq!(Leg::default().upstream_target("/api/x?y"), "/api/x?y");
    }

    #[test]
    fn a_set_or_removed_field_goes_in_its_underscore_spellings_too() {
        let edits = HeaderEdits {
            set: [("X-Route".to_string(), "tagged".to_string())].into(),
            add: Default::default(),
            remove: vec!["X-Debug".into()],
        };
        let leg = Leg { request_headers: Some(&edits), ..Leg::default() };
        let mut headers: Vec<(&str, Cow<[u8]>)> = ["X_Route", "x-route", "X_DEBUG", "X-Debug", "X_Other"]
            .into_iter()
            .map(|name| (name, Cow::Borrowed(&b"client"[..])))
            .collect();
        leg.edit_request(&mut headers);
        let left: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, &v[..])).collect();
        assert_eq!(left, [("X_Other", &b"client"[..]), ("X-Route", &b"tagged"[..])]);
    }

    #[test]
    fn locations_map_back_through_the_rewrite_on_the_clients_host_only() {
        let host = Some("api.example.com");
        assert_eq!(map_location(&strip(), b"/users/7", host).as_deref(), Some("/api/users/7"));
        assert_eq!(map_location(&strip(), b"/?a=1#f", host).as_deref(), Some("/api/?a=1#f"));
        assert_eq!(
            map_location(&strip(), b"https://API.example.com:443/users", host).as_deref(),
            Some("https://API.example.com:443/api/users")
        );
        assert_eq!(map_location(&strip(), b"https://elsewhere.example/users", host), None);
        assert_eq!(map_location(&strip(), b"//elsewhere.example/users", host), None);
        assert_eq!(map_location(&strip(), b"users", host), None, "a relative reference resolves by itself");
        let add = Rewrite::Add("/v1".into());
        assert_eq!(map_location(&add, b"/v1/users", host).as_deref(), Some("/users"));
        assert_eq!(map_location(&add, b"/other", host), None, "outside the prefix: left alone");
        let replace = Rewrite::Replace { from: "/old/".into(), to: "/new/".into() };
        assert_eq!(map_location(&replace, b"/new/a", host).as_deref(), Some("/old/a"));
    }
}
