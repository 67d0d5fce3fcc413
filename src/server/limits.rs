//! Every limit and timeout of the front end, with its default, in one place.

use std::time::Duration;

use super::target::PathRules;

/// Limits and timeouts applied to client connections. Defaults follow nginx where it has one.
///
/// ```
/// use lb_sync::server::Limits;
/// let uploads = Limits { max_body_bytes: 100 << 20, ..Limits::default() };
/// assert_eq!((uploads.max_headers, Limits::default().max_body_bytes), (100, 1 << 20));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time from the first byte of a request (or from accept) to its complete head. Default 10 s
    /// (nginx `client_header_timeout` is 60 s; 10 s sheds slowloris clients sooner). On expiry: `408`.
    pub head_timeout: Duration,
    /// Time from accept to a complete TLS handshake on an HTTPS listener; then `head_timeout`
    /// runs for the request head. Default 10 s (nginx counts the handshake in its
    /// `client_header_timeout`, HAProxy has `timeout client-hs`). On expiry the connection is
    /// closed (no HTTP answer can be sent before a handshake); no worker is ever involved.
    pub handshake_timeout: Duration,
    /// Idle time allowed between two requests on a keep-alive connection. Default 60 s
    /// (nginx `keepalive_timeout` 75 s). On expiry the connection is closed quietly.
    pub keep_alive_timeout: Duration,
    /// Time without progress while reading a body or writing a response. Default 60 s
    /// (nginx `client_body_timeout` / `send_timeout`). On expiry: `408` while reading a body; a
    /// reset while writing a response.
    pub io_timeout: Duration,
    /// Longest request line (method, target, version). Default 8 KiB. Over it: `414`.
    pub max_request_line_bytes: usize,
    /// Longest head, request line included. Default 32 KiB. Over it: `431`.
    pub max_head_bytes: usize,
    /// Most header fields. Default 100. Over it: `431`.
    pub max_headers: usize,
    /// Largest request body, counted after chunked decoding. Default 1 MiB (nginx's
    /// `client_max_body_size`), buffered by the poller (memory, then a temp file: see
    /// `BodyBuffering`) before the handler runs. Over it: `413`, at once for a
    /// `Content-Length` over it, when a chunked body crosses it.
    pub max_body_bytes: u64,
    /// Most open client connections. Default 10 000. At it, a new connection closes the one idle
    /// longest (waiting for a request that has not begun: a kept-alive connection, or one that
    /// has sent nothing yet), as nginx reuses idle connections; when none is idle it gets `503`
    /// and is closed.
    pub max_connections: usize,
    /// How long a closing connection's unread input is drained so that our last response is
    /// not destroyed by a TCP reset (nginx `lingering_timeout`). Default 2 s.
    pub linger_timeout: Duration,
    /// Most requests one client (see [`ClientKey`](super::ClientKey)) has with the workers at
    /// once; its requests beyond it wait, unread further, until one of its own comes back, so
    /// other clients' requests go to the workers ahead of them. Default 0: no share (lb-sync
    /// sets half of its workers).
    pub client_max_workers: usize,
    /// Most requests one client may have in process at once (with the workers, waiting for
    /// its share, or open tunnels); more get `429` with `Retry-After` (nginx's `limit_conn`).
    /// Default 0: no limit.
    pub client_max_in_flight: usize,
    /// How request paths are made canonical before anything reads them (see
    /// [`canonical_target`](super::canonical_target)).
    pub paths: PathRules,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(60),
            max_request_line_bytes: 8 * 1024,
            max_head_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 1 << 20,
            max_connections: 10_000,
            linger_timeout: Duration::from_secs(2),
            client_max_workers: 0,
            client_max_in_flight: 0,
            paths: PathRules::default(),
        }
    }
}
