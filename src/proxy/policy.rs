//! The traffic policies of [`crate::traffic`] in the data path: the rate limits decide before
//! anything else. The policies themselves (the buckets) live in `traffic`; this file only
//! carries their answers to requests and responses.

use crate::server::Response;
use crate::traffic::Decision;

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
