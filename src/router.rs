//! The handlers the front ends call. On the data port ([`Router`]) a path under the admin
//! prefix goes to the management API, everything else is proxied; with `--admin-listen` the
//! data port proxies every path and the API is served by [`AdminRouter`] on its own listener.
//! Paths are taken from the target in origin form, so an absolute-form target
//! (`GET http://host/lb/stats`) is routed by its path like any other.
//!
//! Before the API answers, [`admin::auth::check`] decides whether the caller may use it (the
//! dashboard page is served before that check: it holds no data). Refusals are counted, logged
//! and written to the access log like every answer.
//!
//! Each request loads the configuration in force when it arrives ([`Current`]) and keeps it to
//! its end: a reload swaps it for the next request.

use std::sync::Arc;

use crate::admin::{self, auth, Listener};
use crate::client_ip::canonical;
use crate::ops::PendingAccess;
use crate::proxy::{self, origin_form};
use crate::server::{Handler, Request, Response};
use crate::state::{Current, Shared};

/// The request's path (origin form, no query) when it is the admin prefix or below it (`/lb`,
/// `/lb/stats`; not `/lbx`).
fn admin_path(shared: &Shared, request: &Request) -> Option<String> {
    let target = origin_form(request.target())?;
    let path = target.split('?').next().unwrap_or("");
    let prefix = shared.config.operations.admin_prefix.as_str();
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')).then(|| path.to_string())
}

/// Checks access, answers, and writes the access-log line when the answer is out.
fn serve_admin(shared: &Shared, request: Request, path: &str, listener: Listener) -> Response {
    let access = PendingAccess::new(&request, canonical(request.peer().ip()), shared.ops.access_log.is_some());
    let response = if admin::is_dashboard(shared, path) {
        admin::handle(shared, request, path)
    } else {
        match auth::check(shared, &request, listener) {
            Ok(()) => admin::handle(shared, request, path),
            Err(refusal) => {
                if listener == Listener::Data {
                    shared.stats.record_local(refusal.status);
                }
                let peer = request.peer().ip();
                shared.ops.warnings.warn(
                    &format!("admin-refused:{peer}"),
                    format_args!(
                        "management API: refused {} {} from {peer} with {}",
                        request.method(),
                        request.sent_target(),
                        refusal.status
                    ),
                );
                refusal
            }
        }
    };
    access.attach(shared.ops.access_log.as_ref(), response, None)
}

/// The data port's handler: the management API (unless it has a listener of its own) or the
/// proxy.
pub struct Router {
    current: Arc<Current>,
}

impl Router {
    pub(crate) fn new(current: Arc<Current>) -> Router {
        Router { current }
    }
}

impl Handler for Router {
    fn handle(&self, request: Request) -> Response {
        let shared = self.current.load_full();
        if shared.config.operations.admin_listen.is_none() {
            if let Some(path) = admin_path(&shared, &request) {
                return serve_admin(&shared, request, &path, Listener::Data);
            }
        }
        proxy::serve(&shared, request)
    }
}

/// The handler of the `--admin-listen` listener: the management API and nothing else.
pub struct AdminRouter {
    current: Arc<Current>,
}

impl AdminRouter {
    pub(crate) fn new(current: Arc<Current>) -> AdminRouter {
        AdminRouter { current }
    }
}

impl Handler for AdminRouter {
    fn handle(&self, request: Request) -> Response {
        let shared = self.current.load_full();
        match admin_path(&shared, &request) {
            Some(path) => serve_admin(&shared, request, &path, Listener::Admin),
            None => Response::json(
                404,
                &serde_json::json!({
                    "error": format!("this is the admin listener: it serves {}/... only", shared.config.operations.admin_prefix)
                }),
            ),
        }
    }
}
