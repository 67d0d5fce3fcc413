//! Which headers cross the proxy: the client's, less hop-by-hop ones, plus the X-Forwarded set
//! on the way up; the backend's, less hop-by-hop ones, on the way down.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::client_ip::canonical;
use crate::server::{is_hop_by_hop, Request};

/// Request headers this proxy answers or sets itself, so the client's copies are dropped:
/// `Expect` is answered here (the backend never waits on it), the X-Forwarded set is rebuilt.
const SET_BY_PROXY: [&str; 5] = ["expect", "x-forwarded-for", "x-real-ip", "x-forwarded-proto", "x-forwarded-host"];

/// Headers a `Connection` option cannot remove: they frame or route the message.
const PROTECTED_HEADERS: [&str; 4] = ["host", "content-length", "authorization", "content-type"];

/// The headers sent upstream: the client's, less hop-by-hop ones (and a HEAD request's
/// Content-Length, whose body is not sent on), plus the X-Forwarded set. Borrowed from the
/// request where possible: the forwarder copies each once, into its header map.
pub(crate) fn upstream_headers<'a>(
    request: &'a Request,
    client: IpAddr,
    peer_trusted: bool,
) -> Vec<(&'a str, Cow<'a, [u8]>)> {
    let named_by_connection =
        connection_options(request.headers().iter().filter(|h| h.is("connection")).map(|h| &h.value[..]));
    let is_head = request.head().is_head();
    // An absolute-form target names the host itself; the client's Host is ignored (RFC 9112
    // 3.2.2) and the backend gets the target's.
    let target_host = super::target_authority(request.target());
    let mut headers: Vec<(&str, Cow<[u8]>)> = request
        .headers()
        .iter()
        .filter(|h| !is_hop_by_hop(&h.name) && !SET_BY_PROXY.iter().any(|d| h.is(d)))
        .filter(|h| !named_by_connection.iter().any(|n| h.is(n)))
        .filter(|h| !(is_head && h.is("content-length")))
        .filter(|h| !(target_host.is_some() && h.is("host")))
        .map(|h| (h.name.as_str(), Cow::Borrowed(&h.value[..])))
        .collect();
    if let Some(host) = target_host {
        headers.insert(0, ("Host", Cow::Borrowed(host.as_bytes())));
    }
    let peer = canonical(request.peer().ip()).to_string();
    // A trusted proxy's chain is extended; an untrusted client's claims are dropped.
    let forwarded_for = match forwarded_for(request).filter(|_| peer_trusted) {
        Some(chain) if !chain.trim().is_empty() => format!("{}, {peer}", chain.trim()),
        _ => peer,
    };
    headers.push(("X-Forwarded-For", Cow::Owned(forwarded_for.into_bytes())));
    headers.push(("X-Real-IP", Cow::Owned(client.to_string().into_bytes())));
    // A trusted proxy in front says which scheme its client used; else ours does.
    let scheme = if request.is_tls() { "https" } else { "http" };
    let proto = request.header("x-forwarded-proto").filter(|_| peer_trusted).unwrap_or(scheme);
    headers.push(("X-Forwarded-Proto", Cow::Borrowed(proto.as_bytes())));
    let host = request.header("x-forwarded-host").filter(|_| peer_trusted).or(target_host).or(request.header("host"));
    if let Some(host) = host {
        headers.push(("X-Forwarded-Host", Cow::Borrowed(host.as_bytes())));
    }
    headers
}

/// Every `X-Forwarded-For` line, in order, as one list (RFC 9110 5.3): a proxy in front may add
/// its own line instead of extending the first.
pub(crate) fn forwarded_for(request: &Request) -> Option<String> {
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
