//! Access-log records and their two line formats: nginx's `combined` with the upstream, timing
//! and request-id fields appended, and JSON (one object per line).
//!
//! A worker fills an [`AccessRecord`] from what it already holds (borrowed, nothing copied),
//! formats it into a `String` with [`AccessFormat::format`] and hands the line to a
//! [`LogHandle`](super::LogHandle); the write happens on the log thread.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::timestamp::UtcTime;

/// What is known of one answered request when its response is finished.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use lb_sync::logging::AccessRecord;
///
/// let record = AccessRecord {
///     client_ip: "203.0.113.7".parse().unwrap(),
///     time: SystemTime::now(),
///     method: "GET",
///     target: "/",
///     protocol: "HTTP/1.1",
///     status: 200,
///     body_bytes_sent: 512,
///     referer: None,
///     user_agent: Some("curl/8.5.0"),
///     upstream_addr: Some("127.0.0.1:8001".parse().unwrap()),
///     upstream_response_time: Some(Duration::from_millis(12)),
///     request_time: Duration::from_millis(13),
///     request_id: "4f2a9c1e0b7d3a58000000000000002a",
///     route: None,
///     pool: None,
///     bytes_received: None,
/// };
/// assert_eq!(record.status, 200);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRecord<'a> {
    /// The client as the balancer sees it (after trusted `X-Forwarded-For`): nginx's `$remote_addr`.
    pub client_ip: IpAddr,
    /// When the response finished (nginx logs the time of logging, `$time_local`).
    pub time: SystemTime,
    /// The request method.
    pub method: &'a str,
    /// The request target as received (path and query).
    pub target: &'a str,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub protocol: &'a str,
    /// The status sent to the client.
    pub status: u16,
    /// Bytes of response body sent to the client, head excluded: nginx's `$body_bytes_sent`.
    pub body_bytes_sent: u64,
    /// The `Referer` header, if sent.
    pub referer: Option<&'a str>,
    /// The `User-Agent` header, if sent.
    pub user_agent: Option<&'a str>,
    /// The backend that answered (the last one tried); `None` when no backend was reached or the
    /// balancer answered itself (`503`, the management API).
    pub upstream_addr: Option<SocketAddr>,
    /// From sending the request to that backend to its response head; `None` without an answer.
    pub upstream_response_time: Option<Duration>,
    /// From the request head read to the last response byte written.
    pub request_time: Duration,
    /// The request's id (see [`RequestIdGenerator`](super::RequestIdGenerator)), also sent
    /// upstream as `X-Request-Id`.
    pub request_id: &'a str,
    /// The route that took the request (JSON format only); `None` without one.
    pub route: Option<&'a str>,
    /// The pool the request was sent to (JSON format only); `None` when none was (our own
    /// answer: a redirect, a `respond`, a refusal).
    pub pool: Option<&'a str>,
    /// For a tunnel (a `101`, logged when it closes): the bytes the client sent through it,
    /// while `body_bytes_sent` counts those it was sent and `request_time` its whole life.
    /// `None` for every other request; written only when set.
    pub bytes_received: Option<u64>,
}

/// A line format for [`AccessRecord`]s.
///
/// ```
/// use lb_sync::logging::AccessFormat;
/// assert_eq!("json".parse::<AccessFormat>(), Ok(AccessFormat::Json));
/// assert!("apache".parse::<AccessFormat>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    /// nginx's `combined` with four fields appended, in nginx's `log_format` terms:
    ///
    /// ```text
    /// log_format lb_combined '$remote_addr - - [$time_local] "$request" $status $body_bytes_sent '
    ///                        '"$http_referer" "$http_user_agent" '
    ///                        '"$upstream_addr" $upstream_response_time $request_time $request_id';
    /// ```
    ///
    /// For example:
    ///
    /// ```text
    /// 203.0.113.7 - - [01/May/2024:12:34:56 +0000] "GET /a?b=1 HTTP/1.1" 200 512 "-" "curl/8.5.0" "127.0.0.1:8001" 0.012 0.013 4f2a9c1e0b7d3a58000000000000002a
    /// ```
    ///
    /// A tunnel's line (status 101, written when the tunnel closes) has one more field: the
    /// bytes the client sent through it.
    ///
    /// Times are UTC (`+0000`); durations are seconds with millisecond resolution; an absent
    /// value is `-`. As nginx's default escaping does, `"`, `\`, control bytes and bytes from
    /// 0x7F up are written `\xHH`, so a field never holds a quote and the line is ASCII.
    #[default]
    Combined,
    /// One JSON object per line, keys in this order: `time` (RFC 3339 UTC with milliseconds),
    /// `client_ip`, `method`, `target`, `protocol`, `status`, `body_bytes_sent`, `referer`,
    /// `user_agent`, `upstream_addr`, `upstream_response_time`, `request_time` (seconds, to the
    /// millisecond), `request_id`, `route` (the route that took the request), `pool` (the pool
    /// it was sent to); absent values are `null`. A tunnel's line (status 101) has
    /// `bytes_received` last.
    ///
    /// The combined format leaves `route` and `pool` out: its fields are fixed (log parsers
    /// are written against them), and routes change on a reload while the format does not.
    Json,
}

impl FromStr for AccessFormat {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "combined" => Ok(AccessFormat::Combined),
            "json" => Ok(AccessFormat::Json),
            other => Err(format!("unknown access log format '{other}' (combined, json)")),
        }
    }
}

impl AccessFormat {
    /// The record as one line, without the newline.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use lb_sync::logging::{AccessFormat, AccessRecord};
    ///
    /// let record = AccessRecord {
    ///     client_ip: "::1".parse().unwrap(),
    ///     time: UNIX_EPOCH + Duration::from_secs(971_186_136),
    ///     method: "POST",
    ///     target: "/orders",
    ///     protocol: "HTTP/1.1",
    ///     status: 503,
    ///     body_bytes_sent: 0,
    ///     referer: None,
    ///     user_agent: None,
    ///     upstream_addr: None,
    ///     upstream_response_time: None,
    ///     request_time: Duration::from_micros(250),
    ///     request_id: "00ff",
    ///     route: None,
    ///     pool: None,
    ///     bytes_received: None,
    /// };
    /// assert_eq!(
    ///     AccessFormat::Combined.format(&record),
    ///     r#"::1 - - [10/Oct/2000:13:55:36 +0000] "POST /orders HTTP/1.1" 503 0 "-" "-" "-" - 0.000 00ff"#
    /// );
    /// ```
    pub fn format(self, record: &AccessRecord<'_>) -> String {
        let mut line = String::with_capacity(256);
        self.write(record, &mut line);
        line
    }

    /// Appends the record as one line, without the newline, to `out` (to reuse a buffer).
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use lb_sync::logging::{AccessFormat, AccessRecord};
    ///
    /// let record = AccessRecord {
    ///     client_ip: "10.1.2.3".parse().unwrap(),
    ///     time: UNIX_EPOCH,
    ///     method: "GET",
    ///     target: "/",
    ///     protocol: "HTTP/1.0",
    ///     status: 200,
    ///     body_bytes_sent: 2,
    ///     referer: None,
    ///     user_agent: None,
    ///     upstream_addr: None,
    ///     upstream_response_time: None,
    ///     request_time: Duration::from_millis(1500),
    ///     request_id: "ab",
    ///     route: None,
    ///     pool: None,
    ///     bytes_received: None,
    /// };
    /// let mut out = String::new();
    /// AccessFormat::Json.write(&record, &mut out);
    /// assert!(out.starts_with(r#"{"time":"1970-01-01T00:00:00.000Z","client_ip":"10.1.2.3","#));
    /// assert!(out.ends_with(r#""request_time":1.5,"request_id":"ab","route":null,"pool":null}"#));
    /// ```
    pub fn write(self, record: &AccessRecord<'_>, out: &mut String) {
        match self {
            AccessFormat::Combined => write_combined(record, out),
            AccessFormat::Json => write_json(record, out),
        }
    }
}

fn write_combined(record: &AccessRecord<'_>, out: &mut String) {
    let _ = write!(out, "{} - - [", record.client_ip);
    UtcTime::from_system_time(record.time).write_common_log(out);
    out.push_str("] \"");
    if record.method.is_empty() && record.protocol.is_empty() {
        // A request refused before its request line was understood: nginx logs `"-"`.
        push_escaped_or_dash(out, Some(record.target));
    } else {
        push_escaped(out, record.method);
        out.push(' ');
        push_escaped(out, record.target);
        out.push(' ');
        push_escaped(out, record.protocol);
    }
    let _ = write!(out, "\" {} {} \"", record.status, record.body_bytes_sent);
    push_escaped_or_dash(out, record.referer);
    out.push_str("\" \"");
    push_escaped_or_dash(out, record.user_agent);
    out.push_str("\" \"");
    match record.upstream_addr {
        Some(addr) => {
            let _ = write!(out, "{addr}");
        }
        None => out.push('-'),
    }
    out.push_str("\" ");
    match record.upstream_response_time {
        Some(elapsed) => push_seconds(out, elapsed),
        None => out.push('-'),
    }
    out.push(' ');
    push_seconds(out, record.request_time);
    out.push(' ');
    push_escaped_or_dash(out, Some(record.request_id));
    if let Some(received) = record.bytes_received {
        let _ = write!(out, " {received}");
    }
}

/// nginx's default log escaping: `"`, `\`, bytes below 0x20 and from 0x7F up as `\xHH`.
fn push_escaped(out: &mut String, value: &str) {
    for byte in value.bytes() {
        if !(0x20..0x7f).contains(&byte) || byte == b'"' || byte == b'\\' {
            let _ = write!(out, "\\x{byte:02X}");
        } else {
            out.push(byte as char);
        }
    }
}

/// An absent or empty value is `-`, as nginx writes an empty variable.
fn push_escaped_or_dash(out: &mut String, value: Option<&str>) {
    match value {
        Some(value) if !value.is_empty() => push_escaped(out, value),
        _ => out.push('-'),
    }
}

/// Seconds with millisecond resolution, as nginx's `$request_time`: `0.013`, `12.000`.
fn push_seconds(out: &mut String, elapsed: Duration) {
    let millis = elapsed.as_millis();
    let _ = write!(out, "{}.{:03}", millis / 1000, millis % 1000);
}

/// Seconds to the millisecond as a JSON number (`0.012`, not `0.012345`): the same resolution
/// as the combined format.
fn seconds(elapsed: Duration) -> f64 {
    elapsed.as_millis() as f64 / 1000.0
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    time: String,
    client_ip: IpAddr,
    method: &'a str,
    target: &'a str,
    protocol: &'a str,
    status: u16,
    body_bytes_sent: u64,
    referer: Option<&'a str>,
    user_agent: Option<&'a str>,
    upstream_addr: Option<SocketAddr>,
    upstream_response_time: Option<f64>,
    request_time: f64,
    request_id: &'a str,
    route: Option<&'a str>,
    pool: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_received: Option<u64>,
}

fn write_json(record: &AccessRecord<'_>, out: &mut String) {
    let mut time = String::with_capacity(24);
    UtcTime::from_system_time(record.time).write_rfc3339(&mut time);
    let json = JsonRecord {
        time,
        client_ip: record.client_ip,
        method: record.method,
        target: record.target,
        protocol: record.protocol,
        status: record.status,
        body_bytes_sent: record.body_bytes_sent,
        referer: record.referer,
        user_agent: record.user_agent,
        upstream_addr: record.upstream_addr,
        upstream_response_time: record.upstream_response_time.map(seconds),
        request_time: seconds(record.request_time),
        request_id: record.request_id,
        route: record.route,
        pool: record.pool,
        bytes_received: record.bytes_received,
    };
    // serde_json escapes control characters and quotes, so the object stays on one line.
    match serde_json::to_string(&json) {
        Ok(text) => out.push_str(&text),
        Err(e) => {
            let _ = write!(out, "{{\"error\":{:?}}}", e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn sample() -> AccessRecord<'static> {
        AccessRecord {
            client_ip: "203.0.113.7".parse().unwrap(),
            time: UNIX_EPOCH + Duration::from_millis(1_714_566_896_789),
            method: "GET",
            target: "/a?b=1",
            protocol: "HTTP/1.1",
            status: 200,
            body_bytes_sent: 512,
            referer: Some("https://example.com/"),
            user_agent: Some("curl/8.5.0"),
            upstream_addr: Some("127.0.0.1:8001".parse().unwrap()),
            upstream_response_time: Some(Duration::from_micros(12_400)),
            request_time: Duration::from_micros(13_900),
            request_id: "4f2a9c1e0b7d3a58000000000000002a",
            route: None,
            pool: None,
            bytes_received: None,
        }
    }

    #[test]
    fn combined_line_is_exact() {
        assert_eq!(
            AccessFormat::Combined.format(&sample()),
            "203.0.113.7 - - [01/May/2024:12:34:56 +0000] \"GET /a?b=1 HTTP/1.1\" 200 512 \
             \"https://example.com/\" \"curl/8.5.0\" \"127.0.0.1:8001\" 0.012 0.013 4f2a9c1e0b7d3a58000000000000002a"
        );
    }

    #[test]
    fn json_line_is_exact() {
        assert_eq!(
            AccessFormat::Json.format(&sample()),
            r#"{"time":"2024-05-01T12:34:56.789Z","client_ip":"203.0.113.7","method":"GET","target":"/a?b=1","protocol":"HTTP/1.1","status":200,"body_bytes_sent":512,"referer":"https://example.com/","user_agent":"curl/8.5.0","upstream_addr":"127.0.0.1:8001","upstream_response_time":0.012,"request_time":0.013,"request_id":"4f2a9c1e0b7d3a58000000000000002a","route":null,"pool":null}"#
        );
        let awkward = AccessRecord { user_agent: Some("a \"quoted\"\nagent"), upstream_addr: None, ..sample() };
        let line = AccessFormat::Json.format(&awkward);
        assert!(!line.contains('\n'), "one line: {line}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["user_agent"], "a \"quoted\"\nagent");
        assert_eq!(value["upstream_addr"], serde_json::Value::Null);
    }

    #[test]
    fn the_route_and_pool_are_json_keys_and_stay_out_of_the_combined_line() {
        let routed = AccessRecord { route: Some("api"), pool: Some("api-pool"), ..sample() };
        let line = AccessFormat::Json.format(&routed);
        assert!(line.ends_with(r#""request_id":"4f2a9c1e0b7d3a58000000000000002a","route":"api","pool":"api-pool"}"#));
        assert_eq!(AccessFormat::Combined.format(&routed), AccessFormat::Combined.format(&sample()));
    }

    /// The fields of a combined line, unescaped.
    #[derive(Debug, PartialEq)]
    struct Combined {
        client_ip: String,
        user: String,
        time: String,
        request: String,
        status: u16,
        body_bytes_sent: u64,
        referer: String,
        user_agent: String,
        upstream_addr: String,
        upstream_response_time: String,
        request_time: String,
        request_id: String,
    }

    /// A hand parser of the combined grammar (no regex): `token - token [time] "q" num num "q"
    /// "q" "q" token token token`, where a quoted field holds no `"` and `\xHH` is an escape.
    fn parse_combined(line: &str) -> Result<Combined, String> {
        struct Cursor<'a>(&'a str);
        impl<'a> Cursor<'a> {
            fn token(&mut self) -> Result<&'a str, String> {
                let end = self.0.find(' ').unwrap_or(self.0.len());
                let (token, rest) = self.0.split_at(end);
                if token.is_empty() {
                    return Err(format!("empty field before {rest:?}"));
                }
                self.0 = rest.strip_prefix(' ').unwrap_or(rest);
                Ok(token)
            }
            fn delimited(&mut self, open: char, close: char) -> Result<&'a str, String> {
                let inner = self.0.strip_prefix(open).ok_or_else(|| format!("expected {open} at {:?}", self.0))?;
                let end = inner.find(close).ok_or_else(|| format!("no closing {close}"))?;
                let rest = &inner[end + 1..];
                self.0 = match rest.strip_prefix(' ') {
                    Some(rest) => rest,
                    None if rest.is_empty() => rest,
                    None => return Err(format!("no space after {close}")),
                };
                Ok(&inner[..end])
            }
        }
        fn unescape(field: &str) -> Result<String, String> {
            let mut bytes = Vec::new();
            let mut rest = field.as_bytes();
            while let Some((&byte, tail)) = rest.split_first() {
                if byte == b'\\' {
                    let hex = tail.get(1..3).filter(|_| tail[0] == b'x').ok_or("bad escape")?;
                    let hex = std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                    bytes.push(u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?);
                    rest = &tail[3..];
                } else {
                    bytes.push(byte);
                    rest = tail;
                }
            }
            String::from_utf8(bytes).map_err(|e| e.to_string())
        }
        if !line.is_ascii() {
            return Err("not ASCII".into());
        }
        let mut cursor = Cursor(line);
        let client_ip = cursor.token()?.to_string();
        if cursor.token()? != "-" {
            return Err("no - for the ident field".into());
        }
        let user = cursor.token()?.to_string();
        let time = cursor.delimited('[', ']')?.to_string();
        let request = unescape(cursor.delimited('"', '"')?)?;
        let status = cursor.token()?.parse().map_err(|e| format!("status: {e}"))?;
        let body_bytes_sent = cursor.token()?.parse().map_err(|e| format!("bytes: {e}"))?;
        let referer = unescape(cursor.delimited('"', '"')?)?;
        let user_agent = unescape(cursor.delimited('"', '"')?)?;
        let upstream_addr = unescape(cursor.delimited('"', '"')?)?;
        let upstream_response_time = cursor.token()?.to_string();
        let request_time = cursor.token()?.to_string();
        let request_id = cursor.token()?.to_string();
        if !cursor.0.is_empty() {
            return Err(format!("left over: {:?}", cursor.0));
        }
        Ok(Combined {
            client_ip,
            user,
            time,
            request,
            status,
            body_bytes_sent,
            referer,
            user_agent,
            upstream_addr,
            upstream_response_time,
            request_time,
            request_id,
        })
    }

    #[test]
    fn combined_line_parses_back_field_by_field() {
        let awkward = AccessRecord {
            client_ip: "2001:db8::1".parse().unwrap(),
            target: "/search?q=\"x\"\\y",
            referer: Some(""),
            user_agent: Some("Mozilla/5.0 \"quoted\" \\ back\nnewline ünïcode"),
            upstream_addr: Some("[2001:db8::2]:8080".parse().unwrap()),
            upstream_response_time: None,
            request_time: Duration::from_secs(75),
            ..sample()
        };
        for record in [sample(), awkward] {
            let line = AccessFormat::Combined.format(&record);
            let parsed = parse_combined(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(parsed.client_ip, record.client_ip.to_string());
            assert_eq!(parsed.user, "-");
            assert_eq!(parsed.time, "01/May/2024:12:34:56 +0000");
            assert_eq!(parsed.request, format!("{} {} {}", record.method, record.target, record.protocol));
            assert_eq!((parsed.status, parsed.body_bytes_sent), (record.status, record.body_bytes_sent));
            let or_dash = |v: Option<&str>| v.filter(|v| !v.is_empty()).unwrap_or("-").to_string();
            assert_eq!(parsed.referer, or_dash(record.referer));
            assert_eq!(parsed.user_agent, or_dash(record.user_agent));
            assert_eq!(parsed.upstream_addr, record.upstream_addr.map_or("-".into(), |a| a.to_string()));
            let seconds = |d: Duration| format!("{:.3}", d.as_millis() as f64 / 1000.0);
            assert_eq!(parsed.upstream_response_time, record.upstream_response_time.map_or("-".into(), seconds));
            assert_eq!(parsed.request_time, seconds(record.request_time));
            assert_eq!(parsed.request_id, record.request_id);
        }
        assert!(parse_combined("1.2.3.4 - - [x] \"GET / HTTP/1.1\" 200").is_err(), "a short line is refused");
    }

    #[test]
    fn formats_by_name() {
        assert_eq!("combined".parse(), Ok(AccessFormat::Combined));
        assert_eq!(AccessFormat::default(), AccessFormat::Combined);
        assert!("Combined".parse::<AccessFormat>().unwrap_err().contains("combined, json"));
    }
}
