//! Which headers cross the proxy: the client's, less hop-by-hop ones, plus the X-Forwarded set
//! on the way up; the backend's, less hop-by-hop ones, on the way down.
//!
//! Up, fail closed: every field that tells the backend who the client is comes from us, or from
//! a trusted proxy and only when it reads cleanly. An untrusted peer's claims (`Forwarded`,
//! `X-Forwarded-*`, `X-Real-IP`, `True-Client-IP`...) are dropped, and so are fields with `_` in
//! their names (unless `underscores_in_headers`), which a CGI/WSGI backend would read as their
//! dashed twins; the underscore spellings of the fields we set are dropped even then.

use std::borrow::Cow;
use std::fmt::Write;
use std::net::IpAddr;

use crate::client_ip::canonical;
use crate::server::field::{self, Sole};
use crate::server::{is_hop_by_hop, is_valid_authority, Request};

/// Request headers this proxy answers or sets itself, so the client's copies are dropped (in
/// any spelling, `_` for `-` too): `Expect` is answered here (the backend never waits on it),
/// the X-Forwarded set is rebuilt, `HTTP2-Settings` belongs to an `h2c` upgrade only.
const SET_BY_PROXY: [&str; 6] =
    ["expect", "x-forwarded-for", "x-real-ip", "x-forwarded-proto", "x-forwarded-host", "http2-settings"];

/// Headers a `Connection` option cannot remove: they frame or route the message.
const PROTECTED_HEADERS: [&str; 4] = ["host", "content-length", "authorization", "content-type"];

/// How the client's headers are passed on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Passing {
    /// The TCP peer is a trusted proxy: its forwarding fields are believed and passed on.
    pub peer_trusted: bool,
    /// Fields with `_` in their names are passed on (`underscores_in_headers`).
    pub underscores: bool,
}

/// The headers sent upstream: the client's, less hop-by-hop ones (and a HEAD request's
/// Content-Length, whose body is not sent on), plus the X-Forwarded set. Borrowed from the
/// request where possible, the addresses from `texts` (written here): the forwarder copies
/// each once, into its header map.
pub(crate) fn upstream_headers<'a>(
    request: &'a Request,
    client: IpAddr,
    passing: Passing,
    texts: &'a mut String,
) -> Vec<(&'a str, Cow<'a, [u8]>)> {
    let named_by_connection =
        connection_options(request.headers().iter().filter(|h| h.is("connection")).map(|h| &h.value[..]));
    let is_head = request.head().is_head();
    // An absolute-form target names the host itself; the client's Host is ignored (RFC 9112
    // 3.2.2) and the backend gets the target's.
    let target_host = super::target_authority(request.target());
    // The client's fields, and room for what the proxy adds (here, a route, an upgrade, the id).
    let mut headers: Vec<(&str, Cow<[u8]>)> = Vec::with_capacity(request.headers().len() + 8);
    let passed = request
        .headers()
        .iter()
        .filter(|h| !is_hop_by_hop(&h.name) && !SET_BY_PROXY.iter().any(|d| field::aliases(h, d)))
        .filter(|h| passing.underscores || !field::has_underscore(&h.name))
        .filter(|h| passing.peer_trusted || !field::claims_client(h))
        .filter(|h| !named_by_connection.iter().any(|n| h.is(n)))
        .filter(|h| !(is_head && h.is("content-length")))
        .filter(|h| !(target_host.is_some() && h.is("host")))
        .map(|h| (h.name.as_str(), Cow::Borrowed(&h.value[..])));
    if let Some(host) = target_host {
        headers.push(("Host", Cow::Borrowed(host.as_bytes())));
    }
    headers.extend(passed);
    // A trusted proxy's chain is extended; an untrusted client's claims are dropped, and so is a
    // chain that does not read cleanly. The chain and both addresses go in one text (an address
    // is at most 39 characters), borrowed by the two fields.
    let chain = forwarded_for(request).filter(|_| passing.peer_trusted);
    texts.clear();
    texts.reserve(chain.as_ref().map_or(0, |chain| chain.len() + 2) + 2 * 39);
    if let Some(chain) = &chain {
        texts.push_str(chain);
        texts.push_str(", ");
    }
    let _ = write!(texts, "{}", canonical(request.peer().ip()));
    let forwarded_for_end = texts.len();
    let _ = write!(texts, "{client}");
    let texts: &'a String = texts;
    headers.push(("X-Forwarded-For", Cow::Borrowed(&texts.as_bytes()[..forwarded_for_end])));
    headers.push(("X-Real-IP", Cow::Borrowed(&texts.as_bytes()[forwarded_for_end..])));
    // A trusted proxy in front says which scheme its client used; else ours does.
    let scheme = if request.is_tls() { "https" } else { "http" };
    let proto = match field::sole(request.headers(), "x-forwarded-proto") {
        Sole::Text(claimed) if passing.peer_trusted && claimed.eq_ignore_ascii_case("https") => "https",
        Sole::Text(claimed) if passing.peer_trusted && claimed.eq_ignore_ascii_case("http") => "http",
        _ => scheme,
    };
    headers.push(("X-Forwarded-Proto", Cow::Borrowed(proto.as_bytes())));
    let claimed_host = match field::sole(request.headers(), "x-forwarded-host") {
        Sole::Text(claimed) if passing.peer_trusted && is_valid_authority(claimed.as_bytes()) => Some(claimed),
        _ => None,
    };
    let own_host = match field::sole(request.headers(), "host") {
        Sole::Text(host) => Some(host),
        _ => None,
    };
    if let Some(host) = claimed_host.or(target_host).or(own_host) {
        headers.push(("X-Forwarded-Host", Cow::Borrowed(host.as_bytes())));
    }
    headers
}

/// Every `X-Forwarded-For` line, in order, as one list (RFC 9110 5.3): a proxy in front may add
/// its own line instead of extending the first. `None` when there is none, or when any line has
/// bytes that are not printable ASCII: then no entry of it can be vouched for, and the client is
/// the peer (as nginx's realip module keeps the peer for an address it cannot read).
fn forwarded_for(request: &Request) -> Option<String> {
    let elements = field::list(request.headers(), "x-forwarded-for").ok()?;
    (!elements.is_empty()).then(|| elements.join(", "))
}

/// The field names a `Connection` header lists as hop-by-hop, except fields that frame or
/// route the message, which a peer may not strip that way.
pub(crate) fn connection_options<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .flat_map(|v| String::from_utf8_lossy(v).split(',').map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|name| !name.is_empty() && !PROTECTED_HEADERS.contains(&name.as_str()))
        .collect()
}

/// Whether a backend's response header is passed to the client: not hop-by-hop, not named by
/// its `Connection`, and not `Content-Length` (the front end frames the body itself).
pub(crate) fn passes_downstream(name: &str, named_by_connection: &[String]) -> bool {
    !is_hop_by_hop(name) && name != "content-length" && !named_by_connection.iter().any(|n| n == name)
}
