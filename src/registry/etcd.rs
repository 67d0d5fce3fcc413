//! etcd's v3 API through its JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/watch`:
//! JSON over HTTP/1.1), with blocking ureq: no gRPC, no async runtime. Keys and values travel
//! in base64; 64-bit numbers travel as strings (protobuf's JSON mapping), and fields at their
//! zero value are left out (a failed transaction has no `succeeded`, a put event no `type`).
//!
//! Two agents: one for calls, bounded by [`CALL_TIMEOUT`], and one for the watch, whose answer
//! is a stream that lasts as long as the watch and can be broken by [`Etcd::shutdown`].

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::time::Duration;

use serde_json::{json, Value};
use ureq::{Agent, BodyReader};

use super::base64;

/// Connecting to etcd.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole call (range, txn).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A watch with nothing to say for this long is re-opened from where it was (no event is lost:
/// it starts at the next revision): how a silent etcd (stopped, cut off) is noticed.
pub const WATCH_IDLE: Duration = Duration::from_secs(10);
/// Longest line of a watch stream (one message of events).
const MAX_WATCH_MESSAGE: u64 = 64 * 1024 * 1024;

/// Why a call to etcd failed.
#[derive(Debug)]
pub enum EtcdError {
    /// etcd could not be reached: nothing was sent.
    Unreachable(String),
    /// Sent, but no answer came (timeout, reset): a write may or may not have been made.
    NoAnswer(String),
    /// etcd answered with an error.
    Refused {
        /// The HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// The answer is not what the gateway sends.
    BadAnswer(String),
}

impl EtcdError {
    /// Whether the request certainly made no change.
    pub fn nothing_changed(&self) -> bool {
        matches!(self, EtcdError::Unreachable(_) | EtcdError::Refused { .. })
    }

    fn from_ureq(error: ureq::Error) -> EtcdError {
        match error {
            ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Timeout(ureq::Timeout::Connect) => EtcdError::Unreachable(error.to_string()),
            ureq::Error::Io(e)
                if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::AddrNotAvailable) =>
            {
                EtcdError::Unreachable(e.to_string())
            }
            other => EtcdError::NoAnswer(other.to_string()),
        }
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::Unreachable(why) => write!(f, "cannot reach etcd: {why}"),
            EtcdError::NoAnswer(why) => write!(f, "etcd did not answer: {why}"),
            EtcdError::Refused { status, message } => write!(f, "etcd refused the request ({status}): {message}"),
            EtcdError::BadAnswer(why) => write!(f, "unexpected answer from etcd: {why}"),
        }
    }
}

impl std::error::Error for EtcdError {}

/// One key and its value, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a deletion).
    pub value: Vec<u8>,
    /// The revision that created the key.
    pub create_revision: i64,
    /// The revision of its last change.
    pub mod_revision: i64,
}

/// The keys of a range, as of one revision.
#[derive(Debug)]
pub struct Range {
    /// The store's revision the read saw.
    pub revision: i64,
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
}

/// A condition of a transaction.
#[derive(Clone, Debug)]
pub enum Compare {
    /// The key's last change is this revision (0: it does not exist).
    ModRevision(Vec<u8>, i64),
    /// No key in `[key, range_end)` changed after `revision` (a key created since counts).
    Unchanged {
        /// The range's first key.
        key: Vec<u8>,
        /// Its end (excluded).
        range_end: Vec<u8>,
        /// The revision the caller read.
        revision: i64,
    },
}

/// A write of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    /// Sets a key.
    Put(Vec<u8>, Vec<u8>),
    /// Deletes a key.
    Delete(Vec<u8>),
}

/// What a transaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Txn {
    /// Whether every condition held (and the writes were made).
    pub succeeded: bool,
    /// The store's revision after it (the writes' revision when it succeeded).
    pub revision: i64,
}

/// What a watch stream says.
#[derive(Debug)]
pub enum WatchMessage {
    /// The watch is in place.
    Created,
    /// Changes, in revision order.
    Events(Vec<Event>),
    /// The revision asked for is compacted away: read everything again.
    Compacted(i64),
    /// etcd ended the watch for another reason.
    Canceled(String),
}

/// One change seen by a watch.
#[derive(Debug)]
pub struct Event {
    /// A deletion (else a put).
    pub deleted: bool,
    /// The key, its new value (empty for a deletion) and revisions.
    pub kv: KeyValue,
}

/// A client of one etcd's JSON gateway.
pub struct Etcd {
    base: String,
    calls: Agent,
    watch: Agent,
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn number(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        other => other.as_i64().unwrap_or(0),
    }
}

fn bytes(value: &Value) -> Result<Vec<u8>, EtcdError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => base64::decode(s).map_err(EtcdError::BadAnswer),
        other => Err(EtcdError::BadAnswer(format!("expected base64, got {other}"))),
    }
}

fn key_value(kv: &Value) -> Result<KeyValue, EtcdError> {
    Ok(KeyValue {
        key: bytes(&kv["key"])?,
        value: bytes(&kv["value"])?,
        create_revision: number(&kv["create_revision"]),
        mod_revision: number(&kv["mod_revision"]),
    })
}

impl Etcd {
    /// A client of the gateway at `base` (`http://HOST:PORT`). Nothing is sent yet.
    pub fn new(base: &str) -> Etcd {
        let config = |builder: ureq::config::ConfigBuilder<ureq::typestate::AgentScope>| {
            builder.http_status_as_error(false).timeout_connect(Some(CONNECT_TIMEOUT)).max_idle_connections(4)
        };
        let calls = config(Agent::config_builder()).timeout_global(Some(CALL_TIMEOUT)).build().into();
        let watch = config(Agent::config_builder())
            .timeout_recv_response(Some(CALL_TIMEOUT))
            .timeout_per_read(Some(WATCH_IDLE))
            .build()
            .into();
        Etcd { base: base.trim_end_matches('/').to_string(), calls, watch }
    }

    fn post(&self, agent: &Agent, path: &str, body: &Value) -> Result<ureq::http::Response<ureq::Body>, EtcdError> {
        agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(EtcdError::from_ureq)
    }

    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let mut response = self.post(&self.calls, path, body)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(EtcdError::from_ureq)?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| EtcdError::BadAnswer(format!("{path} answered {status} with non-JSON ({e})")))?;
        if status != 200 {
            let message = value["message"].as_str().or(value["error"].as_str()).unwrap_or(&text).to_string();
            return Err(EtcdError::Refused { status, message });
        }
        Ok(value)
    }

    /// Reads the keys in `[key, range_end)`.
    pub fn range(&self, key: &[u8], range_end: &[u8]) -> Result<Range, EtcdError> {
        let answer =
            self.call("/v3/kv/range", &json!({ "key": base64::encode(key), "range_end": base64::encode(range_end) }))?;
        Self::range_answer(&answer)
    }

    /// Reads one key.
    pub fn get(&self, key: &[u8]) -> Result<(i64, Option<KeyValue>), EtcdError> {
        let answer = self.call("/v3/kv/range", &json!({ "key": base64::encode(key) }))?;
        let range = Self::range_answer(&answer)?;
        Ok((range.revision, range.kvs.into_iter().next()))
    }

    fn range_answer(answer: &Value) -> Result<Range, EtcdError> {
        let kvs = match &answer["kvs"] {
            Value::Null => Vec::new(),
            Value::Array(kvs) => kvs.iter().map(key_value).collect::<Result<_, _>>()?,
            other => return Err(EtcdError::BadAnswer(format!("kvs is {other}"))),
        };
        Ok(Range { revision: number(&answer["header"]["revision"]), kvs })
    }

    /// Makes `ops` if every condition of `compare` holds, atomically.
    pub fn txn(&self, compare: &[Compare], ops: &[Op]) -> Result<Txn, EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::ModRevision(key, revision) => json!({
                    "key": base64::encode(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision.to_string(),
                }),
                Compare::Unchanged { key, range_end, revision } => json!({
                    "key": base64::encode(key), "range_end": base64::encode(range_end),
                    "target": "MOD", "result": "LESS", "mod_revision": (revision + 1).to_string(),
                }),
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                Op::Put(key, value) => {
                    json!({ "request_put": { "key": base64::encode(key), "value": base64::encode(value) } })
                }
                Op::Delete(key) => json!({ "request_delete_range": { "key": base64::encode(key) } }),
            })
            .collect();
        let answer = self.call("/v3/kv/txn", &json!({ "compare": compare, "success": success }))?;
        Ok(Txn {
            succeeded: answer["succeeded"].as_bool().unwrap_or(false),
            revision: number(&answer["header"]["revision"]),
        })
    }

    /// Watches `[key, range_end)` from `start_revision` on: a stream of messages until etcd
    /// ends it, it stays silent for [`WATCH_IDLE`], or [`shutdown`](Self::shutdown).
    pub fn watch(&self, key: &[u8], range_end: &[u8], start_revision: i64) -> Result<WatchStream, EtcdError> {
        let request = json!({ "create_request": {
            "key": base64::encode(key), "range_end": base64::encode(range_end), "start_revision": start_revision.to_string(),
        }});
        let response = self.post(&self.watch, "/v3/watch", &request)?;
        let status = response.status().as_u16();
        let mut reader = BufReader::new(response.into_body().into_reader());
        if status != 200 {
            let mut text = String::new();
            let _ = (&mut reader).take(64 * 1024).read_to_string(&mut text);
            return Err(EtcdError::Refused { status, message: text.trim().to_string() });
        }
        Ok(WatchStream { reader })
    }

    /// Breaks the watch stream and any call under way, and refuses later ones: a stop.
    pub fn shutdown(&self) {
        self.watch.clone().shutdown();
        self.calls.clone().shutdown();
    }
}

/// The messages of one watch, one JSON object a line.
pub struct WatchStream {
    reader: BufReader<BodyReader<'static>>,
}

/// Why a watch stream ended.
#[derive(Debug)]
pub enum WatchEnd {
    /// Nothing came for [`WATCH_IDLE`].
    Idle,
    /// The stream broke or ended.
    Broken(EtcdError),
}

impl WatchStream {
    /// The next message.
    pub fn next(&mut self) -> Result<WatchMessage, WatchEnd> {
        let mut line = Vec::new();
        let read = (&mut self.reader).take(MAX_WATCH_MESSAGE).read_until(b'\n', &mut line);
        match read {
            Ok(0) => return Err(WatchEnd::Broken(EtcdError::NoAnswer("etcd ended the watch stream".into()))),
            Ok(_) if !line.ends_with(b"\n") && line.len() as u64 >= MAX_WATCH_MESSAGE => {
                return Err(WatchEnd::Broken(EtcdError::BadAnswer("a watch message over 64 MiB".into())))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(match ureq::Error::from(e) {
                    ureq::Error::Timeout(ureq::Timeout::PerRead) => WatchEnd::Idle,
                    ureq::Error::Io(e)
                        if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock =>
                    {
                        WatchEnd::Idle
                    }
                    other => WatchEnd::Broken(EtcdError::NoAnswer(other.to_string())),
                })
            }
        }
        let message: Value = serde_json::from_slice(&line)
            .map_err(|e| WatchEnd::Broken(EtcdError::BadAnswer(format!("a watch message is not JSON: {e}"))))?;
        Self::parse(&message).map_err(WatchEnd::Broken)
    }

    fn parse(message: &Value) -> Result<WatchMessage, EtcdError> {
        if let Some(error) = message.get("error") {
            let text = error["message"].as_str().map_or_else(|| error.to_string(), str::to_string);
            return Err(EtcdError::Refused { status: number(&error["http_code"]) as u16, message: text });
        }
        let result = &message["result"];
        if result.is_null() {
            return Err(EtcdError::BadAnswer(format!("a watch message without result: {message}")));
        }
        if result["canceled"].as_bool() == Some(true) {
            let compacted = number(&result["compact_revision"]);
            return Ok(if compacted > 0 {
                WatchMessage::Compacted(compacted)
            } else {
                WatchMessage::Canceled(result["cancel_reason"].as_str().unwrap_or("no reason given").to_string())
            });
        }
        match &result["events"] {
            Value::Array(events) => {
                let events = events
                    .iter()
                    .map(|e| Ok(Event { deleted: e["type"].as_str() == Some("DELETE"), kv: key_value(&e["kv"])? }))
                    .collect::<Result<Vec<_>, EtcdError>>()?;
                Ok(WatchMessage::Events(events))
            }
            // `created`, or a progress notification: nothing to apply.
            _ => Ok(WatchMessage::Created),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(prefix_end(b"/lb/backends/"), b"/lb/backends0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn watch_messages_as_etcd_3_4_sends_them() {
        let parse = |text: &str| WatchStream::parse(&serde_json::from_str(text).unwrap());
        let created = r#"{"result":{"header":{"revision":"5"},"created":true}}"#;
        assert!(matches!(parse(created), Ok(WatchMessage::Created)));
        let events = r#"{"result":{"header":{"revision":"5"},"events":[
            {"kv":{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}},
            {"type":"DELETE","kv":{"key":"bmV3","mod_revision":"5"}}]}}"#;
        let Ok(WatchMessage::Events(events)) = parse(events) else { panic!("events") };
        assert_eq!(
            (events[0].deleted, &events[0].kv.key[..], &events[0].kv.value[..]),
            (false, &b"foo"[..], &b"baz"[..])
        );
        assert_eq!((events[0].kv.create_revision, events[0].kv.mod_revision), (2, 3));
        assert_eq!((events[1].deleted, &events[1].kv.key[..], events[1].kv.mod_revision), (true, &b"new"[..], 5));
        let compacted = r#"{"result":{"header":{},"canceled":true,"compact_revision":"4"}}"#;
        assert!(matches!(parse(compacted), Ok(WatchMessage::Compacted(4))));
        let error = r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}"#;
        assert!(matches!(parse(error), Err(EtcdError::Refused { status: 503, .. })));
    }
}
