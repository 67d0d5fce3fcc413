//! Who may use the management API.
//!
//! - On its own listener (`--admin-listen`), the operator chose who can connect: anyone who
//!   reaches it, and the bearer of the token when one is configured.
//! - On the data port, with a token configured: every caller must send
//!   `Authorization: Bearer TOKEN`, loopback peers too (a local proxy in front would otherwise
//!   open it to the world). Without a token: only direct loopback peers, and never a request
//!   that carries any field a proxy adds ([`field::is_forwarding`]: `Forwarded`, `X-Forwarded-*`,
//!   `X-Real-IP`, `Via`..., in any spelling, with any value, even one that cannot be read).
//!
//! The token is read from the one `Authorization` field: several, or one with bytes that are not
//! printable ASCII, are refused like a wrong token (fail closed).
//!
//! Tokens are compared in constant time. Refusals are `401` (no or wrong token) or `403` (not
//! allowed from here), with a JSON `error` that says what to do.

use serde_json::json;

use crate::client_ip::canonical;
use crate::server::field::{self, Sole};
use crate::server::{Request, Response};
use crate::state::Shared;

/// Which listener a management request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The data port (the API is served there only without `--admin-listen`).
    Data,
    /// The separate admin listener of `--admin-listen`.
    Admin,
}

/// Whether two byte strings are equal, in time that depends on their lengths only.
///
/// ```
/// use lb_sync::admin::auth::constant_time_eq;
/// assert!(constant_time_eq(b"s3cret", b"s3cret"));
/// assert!(!constant_time_eq(b"s3cret", b"s3creT") && !constant_time_eq(b"s3cret", b"s3cre"));
/// ```
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

fn refuse(status: u16, message: String) -> Response {
    let response = Response::json(status, &json!({ "error": message }));
    if status == 401 {
        response.with_header("WWW-Authenticate", "Bearer realm=\"lb-sync\"")
    } else {
        response
    }
}

/// The token of the request's one `Authorization: Bearer TOKEN` (`None` without one); the
/// refusal when that field is unusable.
fn bearer_token(request: &Request) -> Result<Option<&str>, Response> {
    match field::sole(request.headers(), "authorization") {
        Sole::Absent => Ok(None),
        Sole::Unusable => Err(refuse(
            401,
            "the Authorization header is unusable (sent more than once, or with bytes that are not printable \
             ASCII): send it once, as 'Authorization: Bearer TOKEN'"
                .into(),
        )),
        Sole::Text(value) => Ok(value
            .split_once([' ', '\t'])
            .and_then(|(scheme, rest)| scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim_matches([' ', '\t'])))),
    }
}

/// `Ok` when the request may use the API, else the refusal to answer.
pub fn check(shared: &Shared, request: &Request, listener: Listener) -> Result<(), Response> {
    if let Some(token) = &shared.config.operations.admin_token {
        return match bearer_token(request)? {
            None => Err(refuse(
                401,
                "the management API needs the admin token: send the header 'Authorization: Bearer TOKEN' \
                 with the token given to --admin-token"
                    .into(),
            )),
            Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(refuse(401, "the admin token is wrong: send the one given to --admin-token".into())),
        };
    }
    if listener == Listener::Admin {
        return Ok(());
    }
    if !canonical(request.peer().ip()).is_loopback() {
        return Err(refuse(
            403,
            format!(
                "the management API answers only loopback peers, and {} is not one: set --admin-token TOKEN \
                 and send 'Authorization: Bearer TOKEN', or serve it on its own address with --admin-listen",
                request.peer().ip()
            ),
        ));
    }
    if let Some(name) = request.headers().iter().find(|h| field::is_forwarding(h)).map(|h| &h.name) {
        return Err(refuse(
            403,
            format!(
                "this request came through a proxy (it carries {name}), so it is not from this machine: \
                 set --admin-token TOKEN and send 'Authorization: Bearer TOKEN', or use --admin-listen"
            ),
        ));
    }
    Ok(())
}
