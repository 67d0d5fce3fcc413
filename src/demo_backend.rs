//! The demo backend (`lb-backend`): answers every path with JSON naming itself
//! and echoing the request, so scripts and tests can see which backend served them. Query knobs
//! make it slow, fail, or send large bodies for tests and benchmarks. `GET /ws` is a WebSocket
//! echo ([`websocket`]).

pub mod websocket;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::server::{Handler, Request, Response};

/// Longest `?delay_ms=` honoured, so a typo cannot park a worker for hours.
const MAX_DELAY: Duration = Duration::from_secs(120);
/// Request bodies up to this size are returned in the JSON answer as text.
const MAX_SHOWN_BODY: usize = 4096;

/// A demo backend's identity.
///
/// ```
/// use lb_sync::demo_backend::DemoBackend;
/// let backend = DemoBackend::new(8001, "127.0.0.1", None);
/// assert_eq!(backend.id(), "backend-8001");
/// ```
#[derive(Clone, Debug)]
pub struct DemoBackend {
    id: String,
    host: String,
    port: u16,
    /// Added to every request's time (`lb-backend --delay-ms`): a slow backend for benchmarks.
    delay: Duration,
    /// WebSocket echo sessions open now.
    sessions: Arc<AtomicUsize>,
}

impl DemoBackend {
    /// A backend on `port`; its id is `backend-<port>` unless `id` is given.
    pub fn new(port: u16, host: &str, id: Option<String>) -> DemoBackend {
        DemoBackend {
            id: id.unwrap_or_else(|| format!("backend-{port}")),
            host: host.to_string(),
            port,
            delay: Duration::ZERO,
            sessions: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The same backend, slowed by `delay` on every request (health checks included, as a
    /// slow server's are); a `?delay_ms=` knob adds to it. At most 120 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_sync::demo_backend::DemoBackend;
    /// let slow = DemoBackend::new(8003, "127.0.0.1", None).with_delay(Duration::from_millis(50));
    /// assert_eq!(slow.delay(), Duration::from_millis(50));
    /// ```
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> DemoBackend {
        self.delay = delay.min(MAX_DELAY);
        self
    }

    /// The delay every request gets.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The id reported as `server_info.id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn server_info(&self) -> Value {
        json!({ "id": self.id, "host": self.host, "port": self.port })
    }
}

/// Query knobs understood by the demo backend.
#[derive(Debug, Default)]
struct Knobs {
    delay: Option<Duration>,
    status: Option<u16>,
    bytes: Option<u64>,
    chunked: bool,
    echo: bool,
    set_cookies: usize,
    redirect: Option<String>,
}

fn parse_knobs(query: Option<&str>) -> Result<Knobs, String> {
    let mut knobs = Knobs::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |what: &str| value.parse::<u64>().map_err(|_| format!("{what} must be a number, got '{value}'"));
        match key {
            "delay_ms" => knobs.delay = Some(Duration::from_millis(number("delay_ms")?).min(MAX_DELAY)),
            "status" => match value.parse::<u16>() {
                Ok(code @ 200..=599) => knobs.status = Some(code),
                _ => return Err(format!("status must be 200-599, got '{value}'")),
            },
            "bytes" => knobs.bytes = Some(number("bytes")?),
            "chunked" => knobs.chunked = value != "0",
            "echo" => knobs.echo = value != "0",
            "set_cookies" => knobs.set_cookies = number("set_cookies")?.min(20) as usize,
            "redirect" => knobs.redirect = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(knobs)
}

/// A body of `left` bytes of filler, produced as it is sent.
struct Filler {
    left: u64,
}

impl Read for Filler {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        buf[..n].fill(b'x');
        self.left -= n as u64;
        Ok(n)
    }
}

fn unix_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Handler for DemoBackend {
    fn handle(&self, mut request: Request) -> Response {
        let knobs = match parse_knobs(request.query()) {
            Ok(knobs) => knobs,
            Err(message) => return Response::json(400, &json!({ "error": message })),
        };
        let delay = self.delay + knobs.delay.unwrap_or(Duration::ZERO);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if request.path() == "/ws" && knobs.status.is_none() {
            return websocket::answer(&request, &self.sessions).with_header("X-Backend-Id", self.id.as_str());
        }
        let status = knobs.status.unwrap_or(200);
        let mut cookies = Vec::new();
        for i in 0..knobs.set_cookies {
            cookies.push(format!("cookie{i}=value{i}; Path=/"));
        }
        let with_cookies = |mut response: Response| {
            for cookie in &cookies {
                response = response.with_header("Set-Cookie", cookie.as_str());
            }
            response
        };
        if let Some(location) = knobs.redirect {
            return with_cookies(Response::text(302, "redirecting").with_header("Location", location));
        }
        if knobs.echo {
            let content_type = request.header("content-type").unwrap_or("application/octet-stream").to_string();
            return with_cookies(
                Response::new(status).with_header("Content-Type", content_type).with_stream(request.into_body(), None),
            );
        }
        if let Some(bytes) = knobs.bytes {
            let length = if knobs.chunked { None } else { Some(bytes) };
            return with_cookies(
                Response::new(status)
                    .with_header("Content-Type", "application/octet-stream")
                    .with_header("X-Backend-Id", self.id.as_str())
                    .with_stream(Filler { left: bytes }, length),
            );
        }

        // Read (and count) the body so that uploads of any size stream through in constant memory.
        let mut shown = Vec::new();
        let mut body_bytes = 0u64;
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match request.body().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    if shown.len() + n <= MAX_SHOWN_BODY {
                        shown.extend_from_slice(&chunk[..n]);
                    }
                    body_bytes += n as u64;
                }
                // The server answers the client's framing error itself; nothing to add here.
                Err(_) => return Response::new(400),
            }
        }
        if request.path() == "/health" && request.method() == "GET" && knobs.status.is_none() {
            return Response::json(
                200,
                &json!({ "status": "healthy", "server_id": self.id, "timestamp": unix_time() }),
            );
        }
        let headers: BTreeMap<&str, String> = request
            .headers()
            .iter()
            .map(|h| (h.name.as_str(), String::from_utf8_lossy(&h.value).into_owned()))
            .collect();
        let shown_body = if body_bytes as usize == shown.len() { String::from_utf8(shown).ok() } else { None };
        let answer = json!({
            "server_info": self.server_info(),
            "request": {
                "method": request.method(),
                "path": request.path(),
                "query": request.query().unwrap_or(""),
                "headers": headers,
                "client_ip": request.peer().ip().to_string(),
                "body_bytes": body_bytes,
                "body": shown_body,
            },
            "timestamp": unix_time(),
        });
        with_cookies(Response::json(status, &answer).with_header("X-Backend-Id", self.id.as_str()))
    }
}
