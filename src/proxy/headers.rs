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
    texts: &'a mut ForwardedText,
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
    // chain that does not read cleanly.
    let chain = if passing.peer_trusted { forwarded_for(request) } else { None };
    let (forwarded_for, real_ip) = texts.write(chain.as_deref(), canonical(request.peer().ip()), client);
    headers.push(("X-Forwarded-For", Cow::Borrowed(forwarded_for)));
    headers.push(("X-Real-IP", Cow::Borrowed(real_ip)));
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

/// Longest text of two addresses: an IPv6 address is at most 39 characters (45 with an IPv4
/// tail); a longer one would go on the heap.
const ADDRESSES_IN_PLACE: usize = 2 * 45;

/// The values of `X-Forwarded-For` and `X-Real-IP`, written once per request and borrowed by
/// both fields: in place for two addresses, on the heap only to extend a trusted proxy's chain.
pub(crate) struct ForwardedText {
    in_place: [u8; ADDRESSES_IN_PLACE],
    on_heap: String,
}

impl ForwardedText {
    pub(crate) fn new() -> ForwardedText {
        ForwardedText { in_place: [0; ADDRESSES_IN_PLACE], on_heap: String::new() }
    }

    /// `X-Forwarded-For` (the chain, if any, then the peer) and `X-Real-IP` (the client).
    fn write(&mut self, chain: Option<&str>, peer: IpAddr, client: IpAddr) -> (&[u8], &[u8]) {
        if chain.is_none() {
            let mut text = InPlace { buf: &mut self.in_place, len: 0 };
            if write!(text, "{peer}").is_ok() {
                let middle = text.len;
                if write!(text, "{client}").is_ok() {
                    let end = text.len;
                    return (&self.in_place[..middle], &self.in_place[middle..end]);
                }
            }
        }
        self.on_heap.clear();
        if let Some(chain) = chain {
            self.on_heap.push_str(chain);
            self.on_heap.push_str(", ");
        }
        let _ = write!(self.on_heap, "{peer}");
        let middle = self.on_heap.len();
        let _ = write!(self.on_heap, "{client}");
        let text = self.on_heap.as_bytes();
        (&text[..middle], &text[middle..])
    }
}

/// Text written into a fixed buffer; an error when it does not fit.
struct InPlace<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Write for InPlace<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let room = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_text_holds_both_addresses_and_a_chain() {
        let mut text = ForwardedText::new();
        let (peer, client) = ("10.0.0.1".parse().unwrap(), "192.0.2.7".parse().unwrap());
        assert_eq!(text.write(None, peer, client), (&b"10.0.0.1"[..], &b"192.0.2.7"[..]));
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let mapped: IpAddr = "::ffff:255.255.255.255".parse().unwrap();
        let (forwarded_for, real_ip) = text.write(None, longest, mapped);
        assert_eq!((forwarded_for, real_ip), (longest.to_string().as_bytes(), mapped.to_string().as_bytes()));
        let (forwarded_for, real_ip) = text.write(Some("203.0.113.9, 198.51.100.2"), peer, client);
        assert_eq!(forwarded_for, b"203.0.113.9, 198.51.100.2, 10.0.0.1");
        assert_eq!(real_ip, b"192.0.2.7");
    }
}
