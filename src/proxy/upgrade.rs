//! Upgrade requests (`Connection: upgrade` with an `Upgrade` header: a WebSocket handshake).
//! They take the normal path (rate limits, sticky session, pick, breaker, retries) but are sent
//! on a backend connection of their own with `Connection: upgrade` and `Upgrade` kept, since
//! ureq cannot hand a connection over. A `101` answer goes to the client and both connections
//! become a tunnel that the front end's poller relays: the worker is free at once, and the
//! backend's in-flight count (what least_connections reads) holds the tunnel until it closes.
//! Any other answer is relayed as usual (`relay.rs`).
//!
//! Only the protocols of `upgrade_protocols` are asked for (`websocket` by default): a request
//! to switch to any other (`h2c`, which would carry HTTP/2 requests past every per-request
//! policy) goes on as a plain request, without its `Upgrade`, as Envoy does with upgrade types
//! it is not configured for.

use std::borrow::Cow;
use std::sync::Arc;

use crate::config::Scheme;
use crate::server::field::{self, Sole};
use crate::server::{Request, Response, Switch, Tunnel, TunnelEnd, Version};
use crate::state::Shared;
use crate::upstream::{Backend, InFlight, OwnAnswer};

use super::headers::{connection_options, passes_downstream};

/// The `Upgrade` value to send on for an upgrade request: HTTP/1.1 (a server ignores `Upgrade`
/// in a 1.0 request, RFC 9110 7.8), `upgrade` among the `Connection` options (case-insensitive),
/// and the offered protocols of every `Upgrade` line whose names (before any `/version`) are in
/// `allowed`, in the client's order. `None`, so a plain request, when none is allowed or a line
/// does not read cleanly.
pub(super) fn requested(request: &Request, allowed: &[String]) -> Option<Vec<u8>> {
    if request.version() != Version::Http11 {
        return None;
    }
    let options = connection_options(request.headers().iter().filter(|h| h.is("connection")).map(|h| &h.value[..]));
    if !options.iter().any(|o| o == "upgrade") {
        return None;
    }
    let offered = field::list(request.headers(), "upgrade").ok()?;
    let kept: Vec<&str> = offered.into_iter().filter(|protocol| is_allowed(protocol, allowed)).collect();
    (!kept.is_empty()).then(|| kept.join(", ").into_bytes())
}

/// Whether an offered protocol (`name` or `name/version`) is one of `allowed`.
fn is_allowed(protocol: &str, allowed: &[String]) -> bool {
    let name = protocol.split('/').next().unwrap_or_default();
    allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Whether a tunnel can be made to `backend`: not to an `https://` one yet (the poller relays
/// plain sockets; TLS to the backend inside a tunnel is still to come).
pub(super) fn can_tunnel_to(backend: &Backend) -> bool {
    backend.scheme == Scheme::Http
}

/// The hop-by-hop headers an upgrade request sends upstream (all the client's are dropped):
/// `Connection` and `Upgrade`, and for an `h2c` upgrade its one `HTTP2-Settings` (RFC 9113
/// 3.2.1 was RFC 7540's; without it the backend must refuse the upgrade).
pub(super) fn upstream_headers<'a>(request: &'a Request, upgrade: &'a [u8]) -> Vec<(&'static str, Cow<'a, [u8]>)> {
    let h2c = upgrade.split(|&b| b == b',').any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    let settings = match field::sole(request.headers(), "http2-settings") {
        Sole::Text(value) if h2c => Some(value),
        _ => None,
    };
    let mut headers = vec![("Upgrade", Cow::Borrowed(upgrade))];
    match settings {
        Some(value) => {
            headers.push(("Connection", Cow::Borrowed(&b"upgrade, HTTP2-Settings"[..])));
            headers.push(("HTTP2-Settings", Cow::Borrowed(value.as_bytes())));
        }
        None => headers.push(("Connection", Cow::Borrowed(&b"upgrade"[..]))),
    }
    headers
}

/// The tunnel's share of the counters: open while it lives, closed (with the backend's
/// in-flight count released) when it is dropped, however the tunnel ends.
struct OpenTunnel {
    shared_stats: Arc<crate::stats::Stats>,
    in_flight: InFlight,
}

impl OpenTunnel {
    fn new(shared: &Shared, in_flight: InFlight) -> OpenTunnel {
        shared.stats.tunnels.opened();
        in_flight.backend().tunnels().opened();
        OpenTunnel { shared_stats: Arc::clone(&shared.stats), in_flight }
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.shared_stats.tunnels.closed();
        self.in_flight.backend().tunnels().closed();
    }
}

/// A backend's `101`: the same to the client (its end-to-end headers, its `Upgrade`), then a
/// tunnel to the backend's connection, with bytes it sent past its head first.
pub(super) fn tunnel(shared: &Shared, answer: OwnAnswer, in_flight: InFlight) -> Response {
    let upgrade = answer.header("upgrade").unwrap_or_default().to_vec();
    let named_by_connection = connection_options(
        answer.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("connection")).map(|(_, v)| &v[..]),
    );
    let headers: Vec<(String, Vec<u8>)> = answer
        .headers
        .iter()
        .filter(|(name, _)| passes_downstream(&name.to_ascii_lowercase(), &named_by_connection))
        .cloned()
        .collect();
    let backend = Arc::clone(in_flight.backend());
    let (connection, early) = answer.into_connection();
    let idle_timeout = shared.config.listener.tunnel_idle_timeout;
    let mut tunnel = Tunnel::new(connection, early).with_idle_timeout(idle_timeout);
    let open = OpenTunnel::new(shared, in_flight);
    tunnel.on_close(move |end: TunnelEnd| {
        drop(open);
        log::debug!(
            "tunnel to backend {} closed ({}): {} bytes from the client, {} to it, {:.3} s",
            backend.id,
            end.reason.as_str(),
            end.from_client,
            end.to_client,
            end.duration.as_secs_f64()
        );
    });
    let mut response = Response::switching_protocols(upgrade, Switch::Tunnel(tunnel));
    for (name, value) in headers {
        response = response.with_header(name, value);
    }
    response
}
