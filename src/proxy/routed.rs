//! Which route takes a request, and its action carried out: to a pool (or one side of a
//! split) through the proxy, or answered here (`redirect`, `respond`). A request no route
//! takes goes to the `default` pool when it has backends, else gets `404` saying no route
//! matched. Routes read the canonical request: the front end made the path canonical, and the
//! host is the absolute-form target's or the one `Host` field, compared without case, port or
//! a trailing dot.

use crate::client_ip::{canonical, request_client};
use crate::ops::PendingAccess;
use crate::pools::Pool;
use crate::routing::{canonical_host, client_key, split_pool, Action, Redirect, RequestView, Route};
use crate::server::field::{sole, Sole};
use crate::server::{Request, Response};
use crate::state::Shared;

use super::leg::Leg;
use super::{forward_leg, origin_form, target_authority};

/// Serves a request on the data port through the route table.
pub fn serve(shared: &Shared, request: Request) -> Response {
    if shared.routes.is_empty() {
        return forward_leg(shared, shared.pools.default_pool(), request, Leg::default());
    }
    let host = request_host(&request);
    let route = {
        let target = origin_form(request.target()).unwrap_or("");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let canonical = host.map(canonical_host);
        let view = RequestView {
            method: request.method(),
            host: canonical.as_deref(),
            path,
            query,
            headers: request.headers(),
        };
        shared.routes.lookup(&view)
    };
    let Some(route) = route else {
        let default = shared.pools.default_pool();
        let unmatched = Leg::unmatched(shared.route_stats.unmatched());
        if default.table.snapshot().backends.is_empty() && default.config.operations.registry.is_none() {
            return answer(shared, request, no_route(), unmatched);
        }
        return forward_leg(shared, default, request, unmatched);
    };
    let leg = Leg::of(route, shared.route_stats.of(route), shared.route_policies.of(route));
    match &route.action {
        Action::Pool(name) => forward_leg(shared, pool(shared, name), request, leg),
        Action::Split(shares) => {
            let client = request_client(
                canonical(request.peer().ip()),
                request.headers(),
                &shared.config.listener.trusted_proxies,
            );
            let key = client_key(client);
            let usable = |name: &str| {
                shared.pools.get(name).is_some_and(|p| p.table.snapshot().backends.iter().any(|b| b.is_usable()))
            };
            match split_pool(shares, key.as_bytes(), usable) {
                Some(name) => forward_leg(shared, pool(shared, name), request, leg),
                None => answer(shared, request, no_share(route), leg),
            }
        }
        Action::Redirect(redirect) => {
            let response = redirect_to(redirect, &request, host);
            answer(shared, request, response, leg)
        }
        Action::Respond(respond) => {
            let response = Response::new(respond.status).with_body(respond.body.clone().into_bytes());
            let response = if respond.body.is_empty() {
                response
            } else {
                response.with_header("Content-Type", "text/plain; charset=utf-8")
            };
            answer(shared, request, response, leg)
        }
    }
}

/// The pool a route names: checked to exist when the configuration was loaded.
fn pool<'a>(shared: &'a Shared, name: &str) -> &'a Pool {
    shared.pools.get(name).unwrap_or_else(|| shared.pools.default_pool())
}

/// The host the client asked for: the absolute-form target's authority, else the one `Host`
/// field (validated by the front end); `None` when there is none or several.
pub(super) fn request_host(request: &Request) -> Option<&str> {
    if let Some(authority) = target_authority(request.target()) {
        return Some(authority);
    }
    match sole(request.headers(), "host") {
        Sole::Text(value) => Some(value),
        Sole::Absent | Sole::Unusable => None,
    }
}

/// The redirect's `Location`: the request's URL with the parts the route names replaced (a
/// `path` replaces the query too).
fn redirect_to(redirect: &Redirect, request: &Request, host: Option<&str>) -> Response {
    let scheme = if request.is_tls() { "https" } else { "http" };
    let location = redirect.location(scheme, host, origin_form(request.target()).unwrap_or("/"));
    Response::text(redirect.status, format!("moved to {location}")).with_header("Location", location.into_bytes())
}

fn no_route() -> Response {
    Response::text(404, "no route matched this request (and the default pool has no backends)")
}

fn no_share(route: &Route) -> Response {
    Response::text(503, format!("route '{}': every pool of its split has weight 0", route.name))
}

/// Our own answer to a request (no backend involved): counted (for the route in `leg` too),
/// logged.
fn answer(shared: &Shared, request: Request, response: Response, leg: Leg<'_>) -> Response {
    let client =
        request_client(canonical(request.peer().ip()), request.headers(), &shared.config.listener.trusted_proxies);
    let mut access = PendingAccess::new(&request, client, shared.ops.access_log.is_some());
    access.served_by(leg.route_name(), None);
    drop(request);
    let took = access.started().elapsed();
    shared.ops.latency.record(took);
    shared.stats.record_local(response.status);
    leg.account(response.status, false, took);
    access.attach(shared.ops.access_log.as_ref(), response, None)
}
