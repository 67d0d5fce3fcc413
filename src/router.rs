//! The one handler the front end calls: a path under the admin prefix goes to the management
//! API, everything else is proxied. Neither side knows of the other.

use std::sync::Arc;

use crate::admin;
use crate::proxy;
use crate::server::{Handler, Request, Response};
use crate::state::Shared;

/// Routes each request to the management API or the proxy.
pub struct Router {
    shared: Arc<Shared>,
}

impl Router {
    pub(crate) fn new(shared: Arc<Shared>) -> Router {
        Router { shared }
    }

    /// Whether `path` is the admin prefix or below it (`/lb`, `/lb/stats`; not `/lbx`).
    fn is_admin(&self, path: &str) -> bool {
        let prefix = self.shared.config.admin_prefix.as_str();
        path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl Handler for Router {
    fn handle(&self, request: Request) -> Response {
        if self.is_admin(request.path()) {
            admin::handle(&self.shared, request)
        } else {
            proxy::forward(&self.shared, request)
        }
    }
}
