//! The management API as the tests read it: one request on a fresh connection, and the answers
//! of `/lb/backends` and `/lb/stats` as JSON.

use std::net::SocketAddr;

use serde_json::Value;

use super::{Conn, Resp};

/// `METHOD PATH` with `body` (and its `Content-Length`, 0 when empty) on a fresh connection.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Resp {
    let mut conn = Conn::open(addr);
    let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    conn.send(head.as_bytes());
    conn.response()
}

/// Every backend's entry in `/lb/backends`, in the table's order.
pub fn backends(addr: SocketAddr) -> Vec<Value> {
    request(addr, "GET", "/lb/backends", "").json().as_array().cloned().expect("a list of backends")
}

/// The entry of the backend with this id in `/lb/backends`; `None` when it is not listed.
pub fn backend(addr: SocketAddr, id: &str) -> Option<Value> {
    backends(addr).into_iter().find(|b| b["id"] == id)
}

/// `/lb/stats`.
pub fn stats(addr: SocketAddr) -> Value {
    Conn::open(addr).get("/lb/stats").json()
}
